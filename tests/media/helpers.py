"""Synthetic rips made with ffmpeg's lavfi sources, and helpers to run the real commands."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
ENV.pop("MEDIA_PIPELINE_CONFIG", None)

SRT = """1
00:00:00,200 --> 00:00:00,900
Hello

2
00:00:01,000 --> 00:00:01,800
World
"""


def make_rip(path: Path, *, audio=(("eng", "aac"),), subs=(), chapters=True, title="A Test Title",
             duration=2.0, size="160x90", rate=25, audio_titles=None) -> Path:
    """An MKV like a MakeMKV rip: H.264 video, tagged audio in several codecs, SRT subtitles,
    chapters and a title. `audio` items are (language or None, codec); `subs` are languages."""
    path.parent.mkdir(parents=True, exist_ok=True)
    work = path.parent / f".make-{path.stem}"
    work.mkdir(exist_ok=True)
    argv = ["ffmpeg", "-v", "error", "-y",
            "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}:duration={duration}"]
    for n, _ in enumerate(audio):
        argv += ["-f", "lavfi", "-i", f"sine=frequency={300 + 100 * n}:duration={duration}:sample_rate=48000"]
    srt = work / "subs.srt"
    srt.write_text(SRT)
    for _ in subs:
        argv += ["-i", str(srt)]
    meta_input = None
    if chapters or title:
        meta = work / "meta.txt"
        lines = [";FFMETADATA1"]
        if title:
            lines.append(f"title={title}")
        if chapters:
            half = int(duration * 500)
            lines += ["[CHAPTER]", "TIMEBASE=1/1000", "START=0", f"END={half}", "title=Opening",
                      "[CHAPTER]", "TIMEBASE=1/1000", f"START={half}", f"END={int(duration * 1000)}",
                      "title=Ending"]
        meta.write_text("\n".join(lines) + "\n")
        meta_input = 1 + len(audio) + len(subs)
        argv += ["-i", str(meta)]
    argv += ["-map", "0:v"]
    for n in range(len(audio)):
        argv += ["-map", f"{1 + n}:a"]
    for n in range(len(subs)):
        argv += ["-map", f"{1 + len(audio) + n}:s"]
    if meta_input is not None:
        argv += ["-map_metadata", str(meta_input), "-map_chapters", str(meta_input)]
    argv += ["-c:v", "libx264", "-preset", "ultrafast", "-g", str(rate), "-pix_fmt", "yuv420p"]
    for n, (lang, codec) in enumerate(audio):
        argv += [f"-c:a:{n}", {"opus": "libopus"}.get(codec, codec)]
        if lang:
            argv += [f"-metadata:s:a:{n}", f"language={lang}"]
        if audio_titles and audio_titles[n]:
            argv += [f"-metadata:s:a:{n}", f"title={audio_titles[n]}"]
    for n, lang in enumerate(subs):
        argv += [f"-c:s:{n}", "srt"]
        if lang:
            argv += [f"-metadata:s:s:{n}", f"language={lang}"]
    argv += [str(path)]
    subprocess.run(argv, check=True, timeout=120)
    shutil.rmtree(work)
    return path


def probe(path: Path) -> dict:
    out = subprocess.run(["ffprobe", "-v", "error", "-print_format", "json", "-show_format",
                          "-show_streams", "-show_chapters", str(path)],
                         capture_output=True, check=True, timeout=60)
    return json.loads(out.stdout)


def streams(path: Path) -> list[tuple]:
    """[(type, codec, language, title)] of a file, in order."""
    out = []
    for s in probe(path)["streams"]:
        tags = {k.lower(): v for k, v in (s.get("tags") or {}).items()}
        out.append((s["codec_type"], s["codec_name"], tags.get("language"), tags.get("title")))
    return out


def transcode(*args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "media_pipeline.transcode", *map(str, args)],
                          capture_output=True, text=True, env=ENV, timeout=timeout, check=False)


def start_transcode(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "media_pipeline.transcode", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


class Pipeline:
    """A staging/movies/tv tree with a config file, and ways to run media-pipeline on it."""

    def __init__(self, base: Path, **config):
        self.base = base
        self.staging, self.movies, self.tv = base / "staging", base / "movies", base / "tv"
        for d in (self.staging, self.movies, self.tv):
            d.mkdir(parents=True, exist_ok=True)
        self.db = base / "state" / "jobs.sqlite3"
        self.config = base / "config.json"
        self.settings = {
            "staging": str(self.staging), "movies": str(self.movies), "tv": str(self.tv),
            "db": str(self.db), "metrics_textfile": str(base / "state" / "metrics.prom"),
            "languages": ["eng", "bul"], "preset": "ultrafast", "crf": 30,
            "stable_seconds": 0, "poll_seconds": 0.2, "retry_delay_seconds": 0,
        }
        self.configure(**config)

    def configure(self, **config):
        self.settings.update(config)
        self.config.write_text(json.dumps(self.settings, ensure_ascii=False), encoding="utf-8")

    def argv(self, *args):
        return [sys.executable, "-m", "media_pipeline.service", "--config", str(self.config), *args]

    def once(self, timeout=120) -> subprocess.CompletedProcess:
        run = subprocess.run(self.argv("run", "--once"), capture_output=True, text=True, env=ENV,
                             timeout=timeout, check=False)
        assert run.returncode == 0, run.stderr
        return run

    def start(self) -> subprocess.Popen:
        return subprocess.Popen(self.argv("run"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=ENV)

    def jobs(self) -> list[dict]:
        run = subprocess.run(self.argv("status", "--json"), capture_output=True, text=True, env=ENV,
                             timeout=60, check=True)
        return json.loads(run.stdout)

    def library(self) -> list[str]:
        """Every file under movies/ and tv/, hidden ones included, relative to the base."""
        return sorted(str(p.relative_to(self.base)) for d in (self.movies, self.tv)
                      for p in d.rglob("*") if p.is_file())


def wait_for(predicate, timeout=60.0, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def processes_with(text: str) -> list[int]:
    """PIDs whose command line mentions text (to prove no ffmpeg outlives its parent)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read()
            with open(f"/proc/{entry}/stat", "rb") as fh:
                state = fh.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if os.fsencode(text) in cmdline and state != b"Z":
            pids.append(int(entry))
    return pids


def kill(proc: subprocess.Popen, sig=signal.SIGKILL) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
    proc.wait(timeout=60)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
