"""What media-pipeline (service.py, transcode.py) and media-rip (rip.py and its modules) share:
the marker of a finished rip, logging, the one-run-per-database lock, the children that die with
their service, and how times are written."""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import logging
import os
import signal
import sys

# `Movie.mkv.done` (or `Movie.done`) beside a rip in staging: the ripper's word that it is complete;
# media-pipeline takes a marked file at once (service.markers_for).
MARKER = ".done"


# --- logging ---------------------------------------------------------------------------

def setup_logging(verbose: bool) -> None:
    # journald stamps each line already
    fmt = "%(levelname)s %(message)s" if os.environ.get("JOURNAL_STREAM") else \
        "%(asctime)s %(levelname)s %(message)s"
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=fmt, stream=sys.stderr)


# --- one run per database --------------------------------------------------------------

class InstanceLock:
    """One `run` per database: a second one would reset the first one's running jobs."""

    def __init__(self, db_path: str, program: str = "media-pipeline"):
        self.path = db_path + ".lock"
        self.program = program
        self.fd: int | None = None

    def acquire(self) -> None:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                holder = os.pread(self.fd, 32, 0).decode(errors="replace").strip() or "?"
                os.close(self.fd)
                self.fd = None
                raise RuntimeError(f"another {self.program} run (pid {holder}) uses {self.path[:-5]}") from None
            raise
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


# --- child processes -------------------------------------------------------------------

def _die_with_parent_fn():
    """preexec_fn making a child (ffmpeg, makemkvcon) die with us (PR_SET_PDEATHSIG), so a killed service
    leaves no encoder or rip running."""
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    sigkill = int(signal.SIGKILL)

    def _set() -> None:
        prctl(1, sigkill, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG

    return _set


DIE_WITH_PARENT = _die_with_parent_fn() if sys.platform.startswith("linux") else None


# --- time ------------------------------------------------------------------------------

def fmt_time(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return "?"
    s = int(seconds + 0.5)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def fmt_when(ts: float | None) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M") if ts else "-"
