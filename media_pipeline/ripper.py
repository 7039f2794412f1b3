"""media-rip's ripper: find the drive, scan the disc and rip it with makemkvcon (robot mode) into a
hidden working folder in staging, then publish that folder whole as STAGING/<disc name>/ with a .done
marker beside each file; eject the disc. One rip at a time; the service and `media-rip once` use it.

Every title is published as title_tNN.mkv (NN: MakeMKV's title number): MakeMKV names its files
after the disc when the disc has a name (DISC_NAME_t03.mkv), which says nothing the folder does
not, and media-pipeline names the library file after the folder (naming.py).

The exit codes are `media-rip once`'s (media_pipeline/rip.py lists them).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import shutil
import signal
import stat
import subprocess
import threading
import time

from . import config as config_mod
from .common import DIE_WITH_PARENT, MARKER, fmt_time
from .notify import Notifier
from .rip_robot import (
    DRIVE_EMPTY, DRIVE_NONE, DRIVE_OPEN, MSG_OPEN_FAILED, CopyResult, Scan, Title, parse_info,
    parse_line, read_copy_result, scan_problem, split_fields,
)
from .rip_store import RipStore

EXIT_OK, EXIT_START, EXIT_USAGE, EXIT_NO_DISC, EXIT_FAILED, EXIT_NO_TITLE, EXIT_KEY = 0, 1, 2, 3, 4, 5, 6
EXIT_PUBLISH, EXIT_SCAN = 7, 8
EXIT_NAMES = {EXIT_OK: "ripped", EXIT_START: "cannot start", EXIT_USAGE: "usage", EXIT_NO_DISC: "no disc",
              EXIT_FAILED: "title failed", EXIT_NO_TITLE: "no title long enough", EXIT_KEY: "key expired",
              EXIT_PUBLISH: "not published yet", EXIT_SCAN: "scan failed"}
WORK_PREFIX = ".rip-"
CDROMEJECT = 0x5309  # linux/cdrom.h
PROGRESS_LOG_SECONDS = 30.0
INFO_TIMEOUT = 600  # a scratched Blu-ray can take minutes to scan
RETRY_SECONDS = 60.0  # a failed publish or disc scan is tried again this often (the pool and drive are not hammered)
STOP_GRACE_SECONDS = 5.0  # a makemkvcon still running this long after SIGTERM is killed

log = logging.getLogger("media-rip")


# --- the folder's name ----------------------------------------------------------------------

def safe_name(name: str) -> str:
    """One folder name whatever a disc label holds: no '/', no control characters, no leading dot."""
    name = "".join(" " if (ord(c) < 32 or c in '/\\:*?"<>|') else c for c in name)
    name = re.sub(r"\s+", " ", name.replace("_", " ")).strip(" .-")
    return name[:100].strip() or "Disc"


def disc_title(scan: Scan) -> str:
    return safe_name(scan.disc_name or scan.label)


# --- which drive ----------------------------------------------------------------------------

def natural_key(name: str) -> list:
    """sg2 before sg10 (the hookscript lists scsi_generic devices with sort -V)."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def _squeeze(text: str) -> str:
    return " ".join(text.split())


class DriveFinder:
    """The /dev/srN of the configured drive now, chosen as the node's hookscript chooses it
    (scripts/lib-devices.sh find_optical): `auto` is the first /dev/sr* block device; any other
    selector is one drive's /dev/disk/by-id name, model or serial, looked up in sysfs. A
    privileged container sees the node's sysfs; its /dev holds the drive the hookscript passed.
    sysfs and dev are the roots (tests point them at fake trees)."""

    def __init__(self, selector: str = "auto", sysfs: str = "/sys", dev: str = "/dev"):
        self.selector, self.sysfs, self.dev = selector or "auto", sysfs, dev
        self._said = ""  # the fallback to the container's only drive, logged once

    def _read(self, sg: str, attr: str) -> bytes:
        try:
            with open(os.path.join(self.sysfs, "class/scsi_generic", sg, "device", attr), "rb") as fh:
                return fh.read()
        except OSError:
            return b""

    def _is_block(self, name: str) -> bool:
        # a node that is not a block device (e.g. the empty file of a bind whose source was missing) is no drive
        try:
            return stat.S_ISBLK(os.stat(os.path.join(self.dev, name)).st_mode)
        except OSError:
            return False

    def drives(self) -> list[tuple[str, str]]:
        """(sg, sr or '') of each optical drive: scsi_generic devices of type 5, in sg order."""
        base = os.path.join(self.sysfs, "class/scsi_generic")
        try:
            names = sorted((n for n in os.listdir(base) if n.startswith("sg")), key=natural_key)
        except OSError:
            return []
        out = []
        for sg in names:
            if self._read(sg, "type").strip() != b"5":
                continue
            try:
                block = sorted(n for n in os.listdir(os.path.join(base, sg, "device", "block")) if n.startswith("sr"))
            except OSError:
                block = []
            out.append((sg, block[0] if block else ""))
        return out

    def model(self, sg: str) -> str:
        return _squeeze(self._read(sg, "model").decode("utf-8", "replace"))

    def serial(self, sg: str) -> str:
        """The unit serial number (VPD page 0x80 after its 4-byte header), printable part."""
        return re.sub(r"[^A-Za-z0-9._-]", "", self._read(sg, "vpd_pg80")[4:].decode("ascii", "replace"))

    def by_id(self, sg: str, sr: str) -> list[str]:
        """The /dev/disk/by-id names that point at this drive's sr or sg node."""
        base = os.path.join(self.dev, "disk", "by-id")
        try:
            links = sorted(os.listdir(base))
        except OSError:
            return []
        out = []
        for name in links:
            try:
                target = os.path.basename(os.readlink(os.path.join(base, name)))
            except OSError:
                continue
            if target in (sg, sr) and target:
                out.append(name)
        return out

    def matches(self, sg: str, sr: str) -> bool:
        want = self.selector.removeprefix("/dev/disk/by-id/")
        ids = self.by_id(sg, sr)
        model, serial = self.model(sg), self.serial(sg)
        if want in ids or (model and model.lower() == _squeeze(want.lower())) or (serial and serial == want):
            return True
        if any(i.endswith("_" + want) for i in ids):  # a by-id name ends in _SERIAL even without vpd_pg80
            return True
        # without udev's links (a container's /dev has none), a by-id name still ends in _SERIAL[-LUN]
        return bool(serial) and not os.path.isdir(os.path.join(self.dev, "disk", "by-id")) and \
            re.sub(r"-\d+:\d+$", "", want).endswith("_" + serial)

    def _nodes(self) -> list[str]:
        """The /dev/srN block devices in this container, in sr order."""
        try:
            nodes = sorted((n for n in os.listdir(self.dev) if re.fullmatch(r"sr\d+", n)), key=natural_key)
        except OSError:
            nodes = []
        return [n for n in nodes if self._is_block(n)]

    def find(self) -> tuple[str, str]:
        """(the drive's device path, '') or ('', why there is none and the fix)."""
        if self.selector == "auto":
            for n in self._nodes():
                return os.path.join(self.dev, n), ""
            return "", (f"no optical drive: no {self.dev}/sr* block device in this container (drive \"auto\"); "
                        f"connect the drive and restart the container (pct reboot), the node's hookscript passes "
                        f"the drive at each start")
        seen = []
        for sg, sr in self.drives():
            if not self.matches(sg, sr):
                seen.append(f"{sg}/{sr or '-'} '{self.model(sg)}' serial '{self.serial(sg)}' "
                            f"by-id: {','.join(self.by_id(sg, sr)) or '-'}")
                continue
            if not sr:
                return "", f"the drive {self.selector!r} ({sg}) has no sr block device in {self.sysfs}"
            if not self._is_block(sr):
                return "", (f"the drive {self.selector!r} is {sr} now, but {self.dev}/{sr} is not in this container: "
                            f"restart the container (pct reboot) so the node's hookscript passes it")
            return os.path.join(self.dev, sr), ""
        nodes = self._nodes()
        if len(nodes) == 1:
            # The node's hookscript passes only the chosen drive into the container, and the selector may not
            # match what this container can read (no /dev/disk/by-id here; a USB bridge's serial in sysfs).
            path = os.path.join(self.dev, nodes[0])
            said = (f"drive {self.selector!r} matches no drive in {self.sysfs} (drives there: "
                    f"{'; '.join(seen) or 'none'}); {path} is the only optical drive in this container (the node's "
                    f"hookscript passes the chosen drive only): using it")
            if said != self._said:
                log.warning("%s", said)
            self._said = said
            return path, ""
        return "", (f"no optical drive matches drive {self.selector!r} (drives here: {'; '.join(seen) or 'none'}); "
                    f"fix: set \"drive\" in media-rip's config ({config_mod.RIP_DEFAULT_PATH}; "
                    f"homelab-media:devices.opticalDrive) to auto or to one drive's /dev/disk/by-id name, model "
                    f"or serial")

# --- running makemkvcon ---------------------------------------------------------------------

class Ripper:
    """One drive, one staging folder, one store: scan, rip, publish."""

    def __init__(self, cfg: config_mod.RipConfig, store: RipStore | None, notifier: Notifier | None = None,
                 sysfs: str = "/sys", dev: str = "/dev"):
        self.cfg = cfg
        self.store = store
        self.notifier = notifier if notifier is not None else Notifier((), log.warning)
        self.current: dict | None = None  # {"id", "name", "progress", "eta"} while ripping
        self.cancel = threading.Event()
        self.on_change = None  # called after every change of a rip in the store (the status file)
        self.proc: subprocess.Popen | None = None  # the running makemkvcon (a scan or a rip): stop() ends it
        self.finder = DriveFinder(cfg.drive, sysfs, dev)
        self.device = cfg.device  # the drive's node now: fixed by `device`, else found again at each poll

    def _dev(self) -> str:
        return f"dev:{self.device}"

    def find_device(self) -> str:
        """Find the drive now (a reboot may have renamed sr0/sr1): '' when found, else why not."""
        if self.cfg.device:
            self.device = self.cfg.device
            return ""
        path, problem = self.finder.find()
        if path != self.device:
            if path and self.device:
                log.warning("drive %r is %s now (was %s)", self.finder.selector, path, self.device)
            elif path:
                log.info("drive %r is %s", self.finder.selector, path)
            self.device = path
        return problem

    def _started(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        if self.cancel.is_set():  # a stop request that came before the process existed
            self.stop()

    def _run_info(self, source: str, minlength: int | None) -> Scan:
        """`makemkvcon -r info SOURCE`, judged: a killed, failed or cut-short run raises RipError(EXIT_SCAN)."""
        argv = [self.cfg.makemkvcon, "-r", "--cache=1"]
        if minlength is not None:
            argv.append(f"--minlength={minlength}")
        argv += ["info", source]
        if self.cancel.is_set():
            raise RipError(EXIT_SCAN, f"makemkvcon info {source} not started: media-rip is stopping")
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True, errors="replace", preexec_fn=DIE_WITH_PARENT, start_new_session=True)
        except FileNotFoundError:
            raise RipError(EXIT_START, f"{self.cfg.makemkvcon} not found: install MakeMKV "
                                       f"(ct-bootstrap-ripper.sh builds it) or pass --makemkvcon") from None
        self._started(proc)
        try:
            out, err = proc.communicate(timeout=INFO_TIMEOUT)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)  # with any child that holds its output
            proc.communicate()
            raise RipError(EXIT_SCAN, f"makemkvcon info {source} did not finish in {INFO_TIMEOUT} s") from None
        finally:
            self.proc = None
        scan = parse_info(out)
        if self.cancel.is_set():
            raise RipError(EXIT_SCAN, f"makemkvcon info {source} stopped: media-rip is stopping")
        problem = scan_problem(source, scan, proc.returncode, err)
        if problem:
            raise RipError(EXIT_SCAN, f"{problem}; nothing recorded, the disc is scanned again")
        return scan

    def drive_state(self) -> tuple[int, str, Scan]:
        """(state, disc label, scan) of the configured drive, from the cheap drive list (no disc scan)."""
        scan = self._run_info("disc:9999", None)
        drive = scan.drive(self.device) if self.device else None
        if drive is None:
            return DRIVE_NONE, "", scan
        return drive.state, drive.label, scan

    def scan_disc(self) -> Scan:
        return self._run_info(self._dev(), self.cfg.min_length)

    def key_state(self, scan: Scan) -> str:
        if scan.key_expired():
            return "expired"
        home = os.path.expanduser("~")
        try:
            with open(os.path.join(home, ".MakeMKV", "settings.conf"), encoding="utf-8", errors="replace") as fh:
                has_key = re.search(r'(?m)^\s*app_Key\s*=\s*"[^"]+"', fh.read()) is not None
        except OSError:
            has_key = False
        return "valid" if has_key else "missing (free beta period)"

    # -- one disc ----------------------------------------------------------------------------

    def rip_disc(self, scan: Scan | None = None, resume: dict | None = None) -> int:
        """Rip the disc in the drive (a fresh scan unless given). Returns an exit code."""
        cfg = self.cfg
        if scan is None:
            problem = self.find_device()
            if problem:
                raise RipError(EXIT_NO_DISC, problem)
            state, _label, drives = self.drive_state()
            expired = drives.key_expired()
            if expired:
                raise RipError(EXIT_KEY, key_refusal(expired))
            if state == DRIVE_NONE:
                devices = ", ".join(d.device for d in drives.drives if d.device) or "none"
                raise RipError(EXIT_NO_DISC, f"no drive {self.device} in MakeMKV's drive list (drives: {devices})")
            if state in (DRIVE_EMPTY, DRIVE_OPEN):
                raise RipError(EXIT_NO_DISC, f"no disc in {self.device}: " +
                               ("the tray is open" if state == DRIVE_OPEN else "the drive is empty"))
            scan = self.scan_disc()
        name = disc_title(scan)
        fp = scan.fingerprint()
        expired = scan.key_expired()
        key = self.key_state(scan)
        log.info("MakeMKV %s, key %s", scan.version or "?", key)
        if expired:
            reason = key_refusal(expired)
            self._record(fp, scan, name, "failed", reason, EXIT_KEY)
            raise RipError(EXIT_KEY, reason)
        if not scan.titles and any(c == MSG_OPEN_FAILED for c, _ in scan.messages):
            raise RipError(EXIT_NO_DISC, f"MakeMKV could not open the disc in {self.device} "
                                         f"({'; '.join(t for _, t in scan.messages[-2:])})")
        wanted = [t for t in scan.titles if t.duration >= cfg.min_length]
        log.info("disc %r (label %r): %d title(s), %d at least %s long", name, scan.label, len(scan.titles),
                 len(wanted), fmt_time(cfg.min_length))
        if not wanted:
            longest = max((t.duration for t in scan.titles), default=0)
            reason = (f"no title is at least {fmt_time(cfg.min_length)} long (longest {fmt_time(longest)}); "
                      f"lower min_length to rip it")
            self._record(fp, scan, name, "skipped", reason, EXIT_NO_TITLE)
            raise RipError(EXIT_NO_TITLE, reason)
        if not os.path.isdir(cfg.staging):
            raise RipError(EXIT_START, f"staging {cfg.staging} does not exist (is the pool mounted?)")

        rip_id = None
        if self.store is not None:
            if resume is not None:
                rip_id = resume["id"]
                self.store.restart(rip_id)
            else:
                rip_id = self.store.start(fp, scan.label, name, wanted)
        # without a store, a name no row ever claims (it may hold a whole rip: recover() only warns of it)
        base = f"{WORK_PREFIX}{rip_id}" if rip_id is not None else f"{WORK_PREFIX}nodb-{os.getpid()}"
        try:
            workdir = _make_workdir(cfg.staging, base)
        except OSError as exc:
            reason = workdir_refusal(cfg.staging, exc)
            self.finish(rip_id, "failed", reason, EXIT_START)
            raise RipError(EXIT_START, reason, retry=True) from None
        if self.store is not None:
            self.store.update(rip_id, workdir=workdir)  # the row's workdir is the truth: recover() reads it
        self.current = {"id": rip_id, "name": name, "progress": 0.0, "eta": 0.0}
        self._changed()
        started = time.monotonic()
        try:
            try:
                result, rc = self._mkv(workdir, name)
                problem = _judge(result, rc, wanted)
            except OSError as exc:  # makemkvcon could not run, or its output cannot be read: no verdict
                result, rc = CopyResult(), None
                problem = f"makemkvcon could not run or its output could not be read: {exc}"
            if problem:
                if self.cancel.is_set():
                    problem = "interrupted by shutdown"
                try:
                    remove_workdir(workdir, cfg.staging)  # MakeMKV's own failure: the only case a rip is removed
                except OSError as exc:
                    problem += f"; the partial rip {workdir} could not be removed: {exc}"
                self.finish(rip_id, "failed", problem, EXIT_FAILED)
                raise RipError(EXIT_FAILED, problem)
            # MakeMKV saved every title it was asked for: from here on the folder is never removed.
            if rc != 0:
                log.warning("makemkvcon exit status %s after 'Copy complete. %d title(s) saved.' with no failure%s: "
                            "the rip is whole, publishing it", rc, result.saved,
                            " (the stop request came after its copy)" if self.cancel.is_set() else "")
            try:
                missing = _missing_files([os.path.join(workdir, t.file) if t.file else "" for t in wanted], workdir)
            except OSError as exc:  # the disk cannot say (EIO, a branch offline): MakeMKV's word stands
                missing = ""
                log.warning("cannot check the files MakeMKV wrote in %s (%s): it reported every title saved, so the "
                            "rip is kept and published (a file error keeps it for a later publish)", workdir, exc)
            if missing:
                problem = (f"MakeMKV reported every title saved, but {missing}: nothing published; the files are "
                           f"kept in {workdir} (never deleted): look at them, then move them to "
                           f"{os.path.join(cfg.staging, name)}/ with an empty <file>{MARKER} next to each file to "
                           f"publish them by hand, or delete them")
                self.finish(rip_id, "failed", problem, EXIT_FAILED)
                raise RipError(EXIT_FAILED, problem)
            # A whole rip from here on: a file error below keeps it (state publishing) for a later publish.
            if self.store is not None:
                self.store.update(rip_id, state="publishing", reason="")
            folder, count, total = self.publish_rip(rip_id, workdir, name)
        finally:
            self.current = None
        elapsed = time.monotonic() - started
        log.info("published %s: %d file(s), %.1f MB in %s", folder, count, total / 1e6, fmt_time(elapsed))
        self.notifier.send("Rip finished", f"{name}\n{folder}\n{count} title(s), {total / 1e9:.2f} GB "
                                           f"in {fmt_time(elapsed)}")
        return EXIT_OK

    def publish_rip(self, rip_id: int | None, workdir: str, name: str, reported: str = "") -> tuple[str, int, int]:
        """Mark the whole rip in workdir and publish it as STAGING/<name>/: (folder, files, bytes).

        A file error (ENOSPC from a full mergerfs branch, EIO, a read-only staging) keeps the rip where
        it is, state publishing with the reason, and raises RipError(EXIT_PUBLISH); the notifier is told
        once (when nothing was `reported` before). MakeMKV's work is never thrown away for it.
        """
        step, total = "naming the titles title_tNN.mkv", 0
        try:
            title_names(workdir)
            step = "reading the rip"
            files = sorted(f for f in os.listdir(workdir) if not f.endswith(MARKER))
            total = sum(os.path.getsize(os.path.join(workdir, f)) for f in files)
            step = "writing the .done markers"
            _mark(workdir, files)
            step = "moving it into staging"
            folder = publish(workdir, self.cfg.staging, name)
        except OSError as exc:
            where = (f"`media-rip run` publishes it (at its start, then every {RETRY_SECONDS:.0f} s)"
                     if self.store is not None and rip_id is not None else
                     f"no database to retry from: move it by hand to {os.path.join(self.cfg.staging, name)} "
                     f"with an empty <file>{MARKER} next to each file")
            reason = (f"ripped, not published yet: {step} failed: {exc}; the whole rip is kept in {workdir} and "
                      f"{where}; fix: free space in {self.cfg.staging} (a mergerfs branch under minfreespace "
                      f"refuses new files) or its permissions")
            if self.store is not None and rip_id is not None:
                self.store.update(rip_id, state="publishing", reason=reason, bytes=total)
                self._changed()
            if not reported:
                self.notifier.send("Rip not published yet", f"{name}\n{reason}")
            raise RipError(EXIT_PUBLISH, reason) from None
        self.finish(rip_id, "done", "", EXIT_OK, folder=folder, nbytes=total)
        return folder, len(files), total

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def _record(self, fp: str, scan: Scan, name: str, state: str, reason: str, code: int) -> None:
        if self.store is not None:
            self.store.record(fp, scan.label, name, state, reason, code, scan.titles)
            self._changed()

    def finish(self, rip_id: int | None, state: str, reason: str, code: int, folder: str = "",
                nbytes: int | None = None) -> None:
        if self.store is None or rip_id is None:
            return
        fields = {"state": state, "reason": reason, "exit_code": code, "finished": time.time()}
        if folder:
            fields.update(folder=folder, progress=1.0)
        if nbytes is not None:
            fields["bytes"] = nbytes
        self.store.update(rip_id, **fields)
        self._changed()

    def _mkv(self, workdir: str, name: str) -> tuple[CopyResult, int]:
        """`makemkvcon -r --progress=-same mkv dev:DEV all DIR`: every title >= min_length, one disc pass."""
        argv = [self.cfg.makemkvcon, "-r", "--progress=-same", "--cache=1", f"--minlength={self.cfg.min_length}",
                "mkv", self._dev(), "all", workdir]
        log.info("ripping %r: %s", name, " ".join(argv))
        lines: list[str] = []
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1,
                                    preexec_fn=DIE_WITH_PARENT, start_new_session=True)
        except FileNotFoundError:
            raise RipError(EXIT_START, f"{self.cfg.makemkvcon} not found") from None
        self._started(proc)
        t0 = time.monotonic()
        next_log = t0
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            lines.append(line)
            if line.startswith("PRGV:"):
                f = split_fields(line[5:])
                try:
                    total, top = int(f[1]), int(f[2])
                except (IndexError, ValueError):
                    continue
                ratio = total / top if top > 0 else 0.0
                elapsed = time.monotonic() - t0
                eta = elapsed * (1 - ratio) / ratio if ratio > 0.001 else float("nan")
                if self.current is not None:
                    self.current.update(progress=ratio, eta=eta)
                if time.monotonic() >= next_log or ratio >= 1.0:
                    next_log = time.monotonic() + PROGRESS_LOG_SECONDS
                    log.info("rip %r: %5.1f%%, ETA %s", name, ratio * 100, fmt_time(eta))
            elif line.startswith("MSG:"):
                parsed = parse_line(line)
                if parsed and len(parsed[1]) >= 4:
                    log.info("makemkv: %s", parsed[1][3])
        rc = proc.wait()
        self.proc = None
        return read_copy_result(lines), rc

    def stop(self) -> None:
        """Stop request (SIGTERM): end the running scan or rip now; no new one starts.

        makemkvcon runs in its own session: the signal goes to its whole process group, so a child
        that inherited its output cannot keep the read loop waiting after makemkvcon itself ended."""
        self.cancel.set()
        proc = self.proc
        if proc is not None:
            _signal_group(proc, signal.SIGTERM)
            # a makemkvcon that ignores SIGTERM is killed: the service must stop within seconds
            timer = threading.Timer(STOP_GRACE_SECONDS, self._kill_group, (proc,))
            timer.daemon = True
            timer.start()

    def _kill_group(self, proc: subprocess.Popen) -> None:
        if self.proc is proc:  # still read from: makemkvcon or a child holding its output is there
            _signal_group(proc, signal.SIGKILL)

    def eject(self) -> bool:
        """Open the tray: the CDROMEJECT ioctl (what eject(1) does), or eject_command when set."""
        device = self.device
        if not device:
            log.warning("could not eject: no drive found (drive %r)", self.finder.selector)
            return False
        if not self.cfg.eject_command:
            try:
                fd = os.open(device, os.O_RDONLY | os.O_NONBLOCK)
                try:
                    fcntl.ioctl(fd, CDROMEJECT)
                finally:
                    os.close(fd)
            except OSError as exc:
                log.warning("could not eject %s: %s", device, exc.strerror or exc)
                return False
            log.info("ejected %s", device)
            return True
        try:
            res = subprocess.run([self.cfg.eject_command, device], stdin=subprocess.DEVNULL,
                                 capture_output=True, text=True, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("could not eject %s: %s", device, exc)
            return False
        if res.returncode != 0:
            log.warning("could not eject %s: %s", device, (res.stderr or res.stdout).strip()[-200:])
            return False
        log.info("ejected %s", device)
        return True


class RipError(Exception):
    def __init__(self, code: int, reason: str, retry: bool = False):
        super().__init__(reason)
        self.code, self.reason = code, reason
        self.retry = retry  # nothing was ripped for a passing cause (the pool refused the working folder): try later


def _judge(result: CopyResult, rc: int | None, wanted: list[Title]) -> str:
    """MakeMKV's own verdict: why it failed this rip, or '' when it reported every wanted title saved
    ('Copy complete', the count asked for, no failure). Only this verdict may discard a working folder;
    an exit status after such a success (a stop request after the copy) is no failure of the rip."""
    if result.failures:
        return "; ".join(result.failures)
    if result.failed:
        return f"MakeMKV: {result.saved} title(s) saved, {result.failed} failed"
    if result.saved is None:
        last = result.errors[-1] if result.errors else f"exit status {rc}"
        return f"makemkvcon ended without 'Copy complete' ({last})"
    if result.saved != len(wanted):
        return f"MakeMKV saved {result.saved} title(s), {len(wanted)} were asked for"
    return ""


def _missing_files(expected: list[str], workdir: str) -> str:
    """After MakeMKV's success: which expected file is missing or empty ('' when none). A file that
    cannot be looked at (EIO, EACCES, ENOTCONN) raises OSError: it is not known to be missing."""
    bad = []
    for path in expected:
        if not path:
            continue
        try:
            st = os.stat(path)
        except FileNotFoundError:
            bad.append(f"{os.path.basename(path)} is missing")
            continue
        if not stat.S_ISREG(st.st_mode):
            bad.append(f"{os.path.basename(path)} is not a file")
        elif st.st_size == 0:
            bad.append(f"{os.path.basename(path)} is empty")
    if bad:
        return "; ".join(bad)
    if not any(n.lower().endswith(".mkv") for n in os.listdir(workdir)):
        return "no .mkv file was written"
    return ""


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    """sig to makemkvcon's process group: its own session (start_new_session), so makemkvcon and
    every child that inherited its output; its group id is its pid, kept while a member lives."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass  # the whole group is gone already
    except PermissionError:
        pass  # never fatal for a stop


_MAKEMKV_FILE = re.compile(r"(?P<base>.*)_t(?P<n>\d{2,3})\.mkv", re.IGNORECASE)


def title_names(workdir: str) -> list[tuple[str, str]]:
    """Rename MakeMKV's DISC_NAME_tNN.mkv (and its marker, when an earlier publish wrote one) to
    title_tNN.mkv in the working folder, before it is published; returns the (old, new) names.
    A name taken already is left alone (nothing is ever overwritten); any other file too."""
    names = set(os.listdir(workdir))
    renamed = []
    for name in sorted(names):
        m = _MAKEMKV_FILE.fullmatch(name)
        if not m or name == f"title_t{m['n']}.mkv":
            continue
        new = f"title_t{m['n']}.mkv"
        if new in names or new + MARKER in names:
            log.warning("%s: keeping MakeMKV's name %s: %s is taken", workdir, name, new)
            continue
        os.rename(os.path.join(workdir, name), os.path.join(workdir, new))
        if name + MARKER in names:
            os.rename(os.path.join(workdir, name + MARKER), os.path.join(workdir, new + MARKER))
        names.discard(name)
        names.add(new)
        renamed.append((name, new))
    return renamed


def _mark(workdir: str, files: list[str]) -> None:
    """An empty FILE.done next to each file (media-pipeline takes a marked file at once); kept when there."""
    for f in files:
        os.close(os.open(os.path.join(workdir, f + MARKER), os.O_WRONLY | os.O_CREAT, 0o644))


def publish(workdir: str, staging: str, name: str) -> str:
    """Move the finished working folder to STAGING/<name>/, or '<name> (2)'... when taken.

    mkdir reserves the name atomically (an existing folder is never touched), then rename(2)
    replaces that empty reservation with the working folder in one step: media-pipeline sees
    either nothing or the whole folder with its markers.
    """
    folder = _reserve(staging, [name if n == 1 else f"{name} ({n})" for n in range(1, 1000)])
    try:
        os.rename(workdir, folder)
    except OSError:
        try:
            os.rmdir(folder)
        except OSError:
            pass
        raise
    return folder


def _reserve(staging: str, names: list[str]) -> str:
    """mkdir the first of STAGING/<names> that is free (an existing folder is never touched); mkdir,
    never makedirs: an unmounted pool's staging is not recreated. Other errors (ENOSPC...) are raised."""
    for name in names:
        path = os.path.join(staging, name)
        try:
            os.mkdir(path)
        except FileExistsError:
            continue
        return path
    raise OSError(errno.EEXIST, f"{len(names)} folders named {names[0]!r}... already", staging)


# A working folder's name: .rip-ID, .rip-ID-N when that was taken (never removed to make room),
# .rip-nodb-PID for a rip without a database.
WORKDIR_NAME = re.compile(re.escape(WORK_PREFIX) + r"(?:nodb-)?\d+(?:-\d+)?")


def _make_workdir(staging: str, base: str) -> str:
    """Create STAGING/BASE, or BASE-2, BASE-3... when taken: an existing folder is never removed to make
    room (it may hold a whole rip of an earlier database). mkdir, never makedirs: an unmounted pool's
    staging is not recreated. Any other error (ENOSPC, EROFS, EACCES) is raised."""
    return _reserve(staging, [base if n == 1 else f"{base}-{n}" for n in range(1, 1000)])


def workdir_refusal(staging: str, exc: OSError) -> str:
    """Why no working folder could be made in staging, and the fix."""
    why = {errno.ENOSPC: "the pool is full", errno.EDQUOT: "the pool is full (quota)",
           errno.EROFS: "staging is read-only", errno.EACCES: "staging is not writable",
           errno.EPERM: "staging is not writable"}.get(exc.errno, "staging refused it")
    return (f"cannot create a working folder in {staging}: {exc.strerror or exc} ({why}); nothing was ripped and "
            f"the disc stays in the drive: `media-rip run` tries it again every {RETRY_SECONDS:.0f} s; fix: free "
            f"space in {staging} (a mergerfs branch under minfreespace refuses new folders) or make it writable")


def remove_workdir(workdir: str, staging: str) -> None:
    """Only media-rip's own hidden working folder, directly under staging, is ever removed."""
    if os.path.dirname(os.path.abspath(workdir)) != os.path.abspath(staging) or \
            not os.path.basename(workdir).startswith(WORK_PREFIX):
        raise ValueError(f"refusing to remove {workdir}: not a media-rip working folder")
    if os.path.isdir(workdir):
        shutil.rmtree(workdir)


def key_refusal(message: str) -> str:
    """Why a rip cannot start when MakeMKV says its key or version expired, and the fix."""
    return (f"MakeMKV refuses to work: {message} (the beta key expired or this version is too old: "
            f"set a current key, homelab-media:makemkvKey, or build a newer pinned MakeMKV)")
