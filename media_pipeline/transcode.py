"""media-transcode IN OUT: one rip -> one HEVC Matroska file with the wanted languages.

The output is written to a hidden temporary file beside OUT (`.OUT.partial`) and
hard-linked to OUT when complete and verified, so a library never shows a half-written
file and an OUT that appears meanwhile is never overwritten (see publish()).

Exit codes:
  0    ok
  1    internal error (a bug: please report the traceback)
  2    usage or config error
  3    bad input: missing, not a video, truncated or corrupt rip
  4    encode failed (ffmpeg error)
  5    output problem: directory missing or not writable, disk full, OUT exists
  130  interrupted (SIGINT/SIGTERM); nothing was written
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, ContextManager

from . import __version__, ffargs, gpu
from . import config as config_mod
from .common import DIE_WITH_PARENT, fmt_time

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_INPUT, EXIT_ENCODE, EXIT_OUTPUT = 0, 1, 2, 3, 4, 5
EXIT_INTERRUPTED = 130
EXIT_NAMES = {
    EXIT_OK: "ok", EXIT_INTERNAL: "internal error", EXIT_USAGE: "usage/config error",
    EXIT_INPUT: "bad input", EXIT_ENCODE: "encode failed", EXIT_OUTPUT: "output problem",
    EXIT_INTERRUPTED: "interrupted",
}
# A rip whose video stops before this share of the declared duration is truncated.
MIN_COVERAGE = 0.90
PROBE_TIMEOUT = 120


class TranscodeError(Exception):
    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass
class Progress:
    percent: float
    out_seconds: float
    duration: float
    fps: float
    speed: float
    eta: float | None
    frame: int
    elapsed: float
    done: bool = False


@dataclass
class Result:
    output: str
    media_seconds: float
    elapsed: float
    frames: int
    fps: float
    notes: list[str] = field(default_factory=list)


def temp_path(dst: str) -> str:
    """Hidden, same directory (so the final rename is atomic), not a video extension."""
    head, name = os.path.split(os.path.abspath(dst))
    return os.path.join(head, f".{name}.partial")


# --- probing ---------------------------------------------------------------------------

def probe(path: str, ffprobe: str = "ffprobe") -> dict:
    """ffprobe's JSON (format, streams, chapters). Raises TranscodeError(3) if unreadable."""
    argv = [ffprobe, "-v", "error", "-print_format", "json",
            "-show_format", "-show_streams", "-show_chapters", path]
    try:
        run = subprocess.run(argv, capture_output=True, timeout=PROBE_TIMEOUT, check=False)
    except FileNotFoundError:
        raise TranscodeError(EXIT_ENCODE, f"{ffprobe} not found: install ffmpeg") from None
    except subprocess.TimeoutExpired:
        raise TranscodeError(EXIT_INPUT, f"ffprobe took over {PROBE_TIMEOUT}s; unreadable input") from None
    err = run.stderr.decode("utf-8", "replace").strip()
    if run.returncode != 0:
        detail = err.splitlines()[-1] if err else f"ffprobe exit {run.returncode}"
        raise TranscodeError(EXIT_INPUT, f"not a readable media file: {_strip_path(detail, path)}")
    try:
        return json.loads(run.stdout.decode("utf-8", "replace") or "{}")
    except json.JSONDecodeError:
        raise TranscodeError(EXIT_INPUT, "ffprobe returned no usable information") from None


def _strip_path(message: str, path: str) -> str:
    return message.replace(f"{path}: ", "")


def tail_check_argv(path: str, start: float, duration: float, ffprobe: str = "ffprobe") -> list[str]:
    """Read only the packets around MIN_COVERAGE of the declared duration (a seek, no decoding)."""
    target = start + duration * MIN_COVERAGE
    return [ffprobe, "-v", "error",
            "-show_entries", "packet=stream_index,pts_time,dts_time,duration_time", "-of", "csv=p=0",
            "-read_intervals", f"{target:.3f}%{target + 1:.3f}", path]


@dataclass
class TailCheck:
    reason: str | None  # None: the rip reaches MIN_COVERAGE of its declared duration
    end: float | None  # latest packet end seen (any stream), in input timestamps
    video_end: float | None  # latest packet end of the video stream


def tail_check_verdict(stdout: str, stderr: str, returncode: int, start: float,
                       duration: float, video_index: int) -> TailCheck:
    """Judge the packets read by tail_check_argv (rows: stream_index,pts,dts,duration)."""
    target = start + duration * MIN_COVERAGE
    end = video_end = None
    for line in stdout.splitlines():
        cells = line.strip().split(",")
        if len(cells) < 3:
            continue
        when = _to_float(cells[1])
        if when is None:
            when = _to_float(cells[2])
        if when is None:
            continue
        pkt_end = when + max(_to_float(cells[3]) or 0.0, 0.0) if len(cells) > 3 else when
        end = pkt_end if end is None else max(end, pkt_end)
        if _to_int(cells[0]) == video_index:
            video_end = pkt_end if video_end is None else max(video_end, pkt_end)
    errors = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    damaged = [e for e in errors if any(w in e.lower() for w in ("prematurely", "truncat", "invalid data"))]
    declared = fmt_time(duration)
    reason = None
    if end is None or end < target:
        where = "before the end" if end is None else f"at {fmt_time(end - start)}"
        reason = (f"truncated rip: the streams stop {where} of the declared {declared} "
                  f"(needs at least {MIN_COVERAGE:.0%})")
    elif damaged:
        reason = f"truncated or damaged rip near the end (declared {declared}): {damaged[0]}"
    elif returncode != 0 and errors:
        reason = f"cannot read the end of the rip: {errors[-1]}"
    return TailCheck(reason, end, video_end)


# --- progress --------------------------------------------------------------------------

class ProgressParser:
    """Turns ffmpeg `-progress` key=value blocks into Progress records."""

    def __init__(self, duration: float, clock: Callable[[], float] = time.monotonic):
        self.duration = duration
        self.clock = clock
        self.started = clock()
        self.block: dict[str, str] = {}
        self.last: Progress | None = None

    def feed(self, line: str) -> Progress | None:
        key, sep, value = line.strip().partition("=")
        if not sep:
            return None
        self.block[key] = value.strip()
        if key != "progress":
            return None
        block, self.block = self.block, {}
        elapsed = max(self.clock() - self.started, 1e-6)
        out_s = _parse_out_time(block)
        if out_s is None:
            out_s = self.last.out_seconds if self.last else 0.0
        frame = _to_int(block.get("frame")) or 0
        fps = _to_float(block.get("fps")) or 0.0
        if fps <= 0 and frame:
            fps = frame / elapsed
        speed = _to_float(block.get("speed", "").rstrip("x")) or 0.0
        if speed <= 0 and out_s > 0:
            speed = out_s / elapsed
        remaining = max(self.duration - out_s, 0.0)
        eta = remaining / speed if speed > 0 else None
        pct = min(100.0, 100.0 * out_s / self.duration) if self.duration > 0 else 0.0
        done = value.strip() == "end"
        if done:
            eta = 0.0
        self.last = Progress(pct, out_s, self.duration, fps, speed, eta, frame, elapsed, done)
        return self.last


def _to_float(text: str | None) -> float | None:
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return value if value == value else None


def _to_int(text: str | None) -> int | None:
    try:
        return int(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _parse_out_time(block: dict[str, str]) -> float | None:
    us = _to_int(block.get("out_time_us"))
    if us is not None and us >= 0:
        return us / 1e6
    text = block.get("out_time", "")
    try:
        h, m, s = text.split(":")
        value = int(h) * 3600 + int(m) * 60 + float(s)
    except ValueError:
        return None
    return value if value >= 0 else None


def format_progress(p: Progress) -> str:
    return (f"{p.percent:5.1f}% {fmt_time(p.out_seconds)}/{fmt_time(p.duration)} "
            f"fps {p.fps:.1f} speed {p.speed:.2f}x ETA {fmt_time(p.eta)}")


# --- running ffmpeg --------------------------------------------------------------------

_DISK_FULL = ("no space left on device", "disk quota exceeded", "file too large")
_NOT_WRITABLE = ("permission denied", "read-only file system")


def _classify_failure(rc: int, errors: list[str], tmp: str) -> TranscodeError:
    text = "\n".join(errors)
    lower = text.lower()
    last = errors[-1] if errors else f"ffmpeg exit {rc}"
    last = last.replace(tmp, os.path.basename(tmp))
    if any(w in lower for w in _DISK_FULL):
        return TranscodeError(EXIT_OUTPUT, f"disk full writing the output: {last}")
    if any(w in lower for w in _NOT_WRITABLE) and os.path.basename(tmp) in text:
        return TranscodeError(EXIT_OUTPUT, f"cannot write the output: {last}")
    if "invalid data found when processing input" in lower or "ended prematurely" in lower:
        return TranscodeError(EXIT_INPUT, f"corrupt input: {last}")
    return TranscodeError(EXIT_ENCODE, f"ffmpeg failed (exit {rc}): {last}")


def _fsync_path(path: str, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_stamp(st: os.stat_result) -> str:
    """Identity of a finished output: "inode:size:mtime_ns".

    link(2) and rename(2) keep all three, so the published library file has the stamp
    its temp file had; a different file under that name (a hand copy, another job) does
    not. No st_dev: device numbers of NFS/ZFS mounts may change across a reboot.
    """
    return f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


def stamp_of(path: str) -> str | None:
    """file_stamp of path itself (a symlink is not followed), None when it does not exist."""
    try:
        return file_stamp(os.lstat(path))
    except FileNotFoundError:
        return None


# link(2) is refused with these on filesystems without hard links (vfat, some FUSE/SMB mounts).
_NO_HARDLINKS = {errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS}


def publish(tmp: str, dst: str) -> str:
    """Give the finished temp file its library name without ever replacing an existing file.

    link(2) fails with EEXIST when dst exists, so there is no check-then-rename window;
    the temp name is dropped afterwards (a leftover second link is harmless: same inode).
    Only on filesystems that refuse hard links does this fall back to a re-check and
    rename(2): a file created between that check and the rename would be replaced (a
    window of microseconds, and only on such filesystems). Returns "link" or "rename".
    Raises TranscodeError(EXIT_OUTPUT) when dst exists; other OSErrors propagate.
    """
    try:
        os.link(tmp, dst)
    except FileExistsError:
        raise TranscodeError(EXIT_OUTPUT, f"output appeared while encoding: {dst} (left untouched)") from None
    except OSError as exc:
        if exc.errno not in _NO_HARDLINKS:
            raise
        if os.path.lexists(dst):
            raise TranscodeError(EXIT_OUTPUT, f"output appeared while encoding: {dst} (left untouched)") from None
        os.rename(tmp, dst)
        return "rename"
    _remove(tmp)
    return "link"


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError:
        pass  # leave it: the next run for the same output removes it


def transcode(
    src: str,
    dst: str,
    opts: ffargs.EncodeOptions,
    *,
    progress: Callable[[Progress], None] | None = None,
    log: Callable[[str], None] | None = None,
    cancel: threading.Event | None = None,
    before_commit: Callable[[os.stat_result], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    overwrite: bool = False,
    max_decode_errors: int = 0,
    ffprobe: str = "ffprobe",
    publish_guard: Callable[[], ContextManager] | None = None,
    tmp: str | None = None,
) -> Result:
    """Transcode src to dst atomically. Raises TranscodeError with an exit code and reason.

    `tmp` names the temp file (default temp_path(dst)); `publish_guard()` is a context manager
    the publish runs inside (the job queue's lease check: it raises to stop the publish)."""
    log = log or (lambda _msg: None)
    cancel = cancel or threading.Event()
    src, dst = os.path.abspath(src), os.path.abspath(dst)
    tmp = os.path.abspath(tmp) if tmp else temp_path(dst)

    if not os.path.exists(src):
        raise TranscodeError(EXIT_INPUT, f"input not found: {src}")
    if not os.path.isfile(src):
        raise TranscodeError(EXIT_INPUT, f"input is not a regular file: {src}")
    out_dir = os.path.dirname(dst)
    if not os.path.isdir(out_dir):
        raise TranscodeError(EXIT_OUTPUT, f"output directory does not exist: {out_dir}")
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise TranscodeError(EXIT_OUTPUT, f"output directory is not writable: {out_dir}")
    if os.path.lexists(dst) and not overwrite:
        raise TranscodeError(EXIT_OUTPUT, f"output already exists: {dst} (remove it or pass --overwrite)")
    if os.path.realpath(src) == os.path.realpath(dst):
        raise TranscodeError(EXIT_USAGE, "input and output are the same file")

    try:
        opts, device_note = gpu.resolve(opts)  # at every job: a by-path qsv_device follows its GPU's minor
    except gpu.DeviceError as exc:
        raise TranscodeError(EXIT_USAGE, str(exc)) from None
    if device_note:
        log(f"note: {device_note}")
    info = probe(src, ffprobe)
    try:
        sel = ffargs.select_streams(info, opts.languages)
        argv, notes = ffargs.build_args(info, opts, src, tmp)
    except ffargs.InputError as exc:
        raise TranscodeError(EXIT_INPUT, str(exc)) from None
    for note in notes:
        log(f"note: {note}")

    _remove(tmp)  # a stale temp from a killed run
    committed = False
    proc: subprocess.Popen | None = None
    check_argv = tail_check_argv(src, sel.start, sel.duration, ffprobe)
    try:
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, preexec_fn=DIE_WITH_PARENT)
        except FileNotFoundError:
            raise TranscodeError(EXIT_ENCODE, f"{opts.ffmpeg} not found: install ffmpeg") from None
        if on_start:
            on_start(proc.pid)
        errors: deque[str] = deque(maxlen=200)
        error_count = [0]
        verdict: list[TailCheck | None] = [None]

        def read_stderr() -> None:
            for raw in proc.stderr:  # type: ignore[union-attr]
                line = raw.decode("utf-8", "replace").rstrip()
                if line:
                    errors.append(line)
                    error_count[0] += 1

        def tail_check() -> None:
            # Runs beside the encode: a truncated rip stops ffmpeg; a good one costs no wall time.
            try:
                run = subprocess.run(check_argv, capture_output=True, timeout=PROBE_TIMEOUT, check=False)
                verdict[0] = tail_check_verdict(run.stdout.decode("utf-8", "replace"),
                                                run.stderr.decode("utf-8", "replace"), run.returncode,
                                                sel.start, sel.duration, int(sel.video["index"]))
            except subprocess.TimeoutExpired:
                verdict[0] = TailCheck("cannot read the end of the rip (ffprobe timed out)", None, None)
            if verdict[0].reason:
                _terminate(proc)

        def watch_cancel() -> None:
            while proc.poll() is None:
                if cancel.wait(0.2):
                    _terminate(proc)
                    return

        threads = [threading.Thread(target=t, daemon=True) for t in (read_stderr, tail_check)]
        for t in threads:
            t.start()
        threading.Thread(target=watch_cancel, daemon=True).start()  # ends by itself; not joined
        parser = ProgressParser(sel.duration)
        for raw in proc.stdout:  # type: ignore[union-attr]
            update = parser.feed(raw.decode("utf-8", "replace"))
            if update and progress:
                progress(update)
        rc = proc.wait()
        for t in threads:
            t.join(timeout=PROBE_TIMEOUT)

        if cancel.is_set():
            raise TranscodeError(EXIT_INTERRUPTED, "interrupted; the partial output was removed")
        tail = verdict[0] or TailCheck("the end of the rip was not checked", None, None)
        if tail.reason:
            raise TranscodeError(EXIT_INPUT, tail.reason)
        if rc != 0:
            raise _classify_failure(rc, list(errors), tmp)
        # ffmpeg 5.1 exits 0 even when writing the trailer fails (disk full): read what it said.
        output_errors = [e for e in errors if tmp in e or any(w in e.lower() for w in _DISK_FULL)]
        if output_errors:
            failure = _classify_failure(rc, output_errors, tmp)
            raise TranscodeError(EXIT_OUTPUT, failure.reason if failure.code == EXIT_OUTPUT
                                 else f"cannot write the output: {output_errors[-1].replace(tmp, os.path.basename(tmp))}")
        input_errors = error_count[0] - len(output_errors)
        if input_errors > max_decode_errors:
            sample = "; ".join(list(errors)[:3])
            raise TranscodeError(EXIT_INPUT, f"the input has {input_errors} read/decode error(s): {sample}")
        last = parser.last
        encoded = last.out_seconds if last else 0.0
        # ffmpeg must get as far as the tail check saw video (a second of slack for frame timing)
        seen = tail.video_end if tail.video_end is not None else tail.end
        required = min(seen if seen is not None else float("inf"),
                       sel.start + sel.duration * MIN_COVERAGE) - sel.start - 1.0
        if encoded < required:
            raise TranscodeError(
                EXIT_INPUT,
                f"damaged rip: ffmpeg stopped at {fmt_time(encoded)} of the declared {fmt_time(sel.duration)}",
            )
        try:
            if os.path.getsize(tmp) == 0:
                raise TranscodeError(EXIT_OUTPUT, "ffmpeg wrote an empty file")
            mode = os.stat(tmp).st_mode & 0o7777
            if mode & 0o644 != 0o644:  # readable by a library server reading as "other" (Jellyfin's container)
                os.chmod(tmp, mode | 0o644)
            _fsync_path(tmp)
            if before_commit:
                before_commit(os.stat(tmp))
            with publish_guard() if publish_guard else contextlib.nullcontext():
                if overwrite:
                    os.replace(tmp, dst)
                else:
                    publish(tmp, dst)  # never replaces a file that appeared while we encoded
                committed = True
            _fsync_path(out_dir, directory=True)
        except OSError as exc:
            raise TranscodeError(EXIT_OUTPUT, f"cannot finish the output: {exc.strerror or exc}") from None
        elapsed = parser.clock() - parser.started
        frames = last.frame if last else 0
        return Result(dst, encoded, elapsed, frames, frames / elapsed if elapsed > 0 else 0.0, notes)
    finally:
        if not committed:
            if proc is not None and proc.poll() is None:
                _terminate(proc)
                proc.wait()
            _remove(tmp)


def _terminate(proc: subprocess.Popen) -> None:
    try:
        proc.terminate()
    except ProcessLookupError:
        pass


# --- command line ----------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="media-transcode",
        description="Transcode one rip to HEVC Matroska, keeping the wanted audio/subtitle "
                    "languages, chapters and titles. Defaults come from the deployed config "
                    f"({config_mod.DEFAULT_PATH}) when present.",
        epilog="exit codes: 0 ok, 2 usage/config, 3 bad input (missing, not video, truncated, "
               "corrupt), 4 encode failed, 5 output problem (not writable, disk full, exists), "
               "130 interrupted",
    )
    p.add_argument("input", metavar="IN", help="the rip (any container ffmpeg reads)")
    p.add_argument("output", metavar="OUT", help="the output file; must end in .mkv")
    p.add_argument("--languages", help="audio/subtitle languages to keep, e.g. eng,bul (2 or 3 letters)")
    p.add_argument("--encoder", choices=ffargs.ENCODERS)
    p.add_argument("--crf", type=int, help="quality: libx265 -crf / hevc_qsv -global_quality")
    p.add_argument("--preset")
    p.add_argument("--qsv-device", help="render node for hevc_qsv (default from config, else auto: the first "
                   f"render node driven by i915/xe, else {ffargs.DEFAULT_QSV_DEVICE})")
    p.add_argument("--config", help=f"config file (default ${config_mod.ENV_VAR} or {config_mod.DEFAULT_PATH})")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--dry-run", action="store_true", help="print the ffmpeg command and the notes; encode nothing")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.add_argument("--max-decode-errors", type=int, help="tolerated read/decode errors (default from config: 0)")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


class _StderrProgress:
    """One updating line on a terminal; a line every `every` seconds in a log."""

    def __init__(self, every: float = 10.0):
        self.tty = sys.stderr.isatty()
        self.every = every
        self.next = 0.0

    def __call__(self, p: Progress) -> None:
        text = f"media-transcode: {format_progress(p)}"
        if self.tty:
            sys.stderr.write(f"\r\033[K{text}" + ("\n" if p.done else ""))
            sys.stderr.flush()
        elif p.done or time.monotonic() >= self.next:
            self.next = time.monotonic() + self.every
            print(text, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    def say(msg: str) -> None:
        print(f"media-transcode: {msg}", file=sys.stderr, flush=True)

    try:
        cfg = config_mod.load(args.config)
    except config_mod.ConfigError as exc:
        say(f"config error: {exc}")
        return EXIT_USAGE
    from . import languages as lang

    opts = ffargs.EncodeOptions(
        languages=tuple(lang.parse_list(args.languages)) if args.languages is not None else cfg.languages,
        encoder=args.encoder or cfg.encoder,
        crf=args.crf if args.crf is not None else cfg.crf,
        preset=args.preset or (cfg.preset if (args.encoder or cfg.encoder) == cfg.encoder else "medium"),
        qsv_device=args.qsv_device or cfg.qsv_device,
    )
    problems = opts.problems()
    if not args.output.lower().endswith(".mkv"):
        problems.append("OUT must end in .mkv (the output is Matroska, which holds every audio/subtitle format)")
    if problems:
        for problem in problems:
            say(f"usage error: {problem}")
        return EXIT_USAGE
    max_errors = args.max_decode_errors if args.max_decode_errors is not None else cfg.max_decode_errors

    if args.dry_run:
        try:
            opts, device_note = gpu.resolve(opts)
        except gpu.DeviceError as exc:
            say(f"usage error: {exc}")
            return EXIT_USAGE
        if device_note:
            say(f"note: {device_note}")
        try:
            info = probe(args.input)
            cmd, notes = ffargs.build_args(info, opts, os.path.abspath(args.input),
                                           temp_path(args.output))
        except TranscodeError as exc:
            say(f"failed ({EXIT_NAMES[exc.code]}): {exc.reason}")
            return exc.code
        except ffargs.InputError as exc:
            say(f"failed (bad input): {exc}")
            return EXIT_INPUT
        for note in notes:
            say(f"note: {note}")
        print(" ".join(_shell_quote(a) for a in cmd))
        return EXIT_OK

    cancel = threading.Event()

    def on_signal(signum, _frame):
        cancel.set()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    try:
        result = transcode(
            args.input, args.output, opts,
            progress=None if args.quiet else _StderrProgress(),
            log=say, cancel=cancel, overwrite=args.overwrite, max_decode_errors=max_errors,
        )
    except TranscodeError as exc:
        say(f"failed ({EXIT_NAMES.get(exc.code, exc.code)}): {exc.reason}")
        return exc.code
    say(f"wrote {result.output} ({fmt_time(result.media_seconds)} of media in "
        f"{fmt_time(result.elapsed)}, {result.fps:.1f} fps)")
    return EXIT_OK


def _shell_quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


if __name__ == "__main__":
    sys.exit(main())
