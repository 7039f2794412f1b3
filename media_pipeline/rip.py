"""media-rip: rip the disc in the optical drive into staging with MakeMKV, hands-free.

  media-rip once [--device /dev/srN] [--staging DIR] [--min-length SECONDS] [--makemkvcon PATH]
                         rip the disc in the drive now
  media-rip run          the service: poll the drive, rip each new disc once, eject it
  media-rip status [--json]   the rips recorded (state, titles, sizes, time, failure reason)

Every title at least --min-length seconds long is ripped into a hidden working folder
STAGING/.rip-N/; only when every title is saved is the folder published, whole, as
STAGING/<disc name>/ (a second disc with the same name gets "<disc name> (2)/"), each file
with its .done marker, so media-pipeline takes it at once. A failed title publishes nothing.

Exit codes of `once`:
  0  ripped and published
  1  cannot start (makemkvcon missing, database, staging missing)
  2  usage or config error
  3  no disc (the drive is empty or its tray is open)
  4  a title failed (nothing published; the reason is in `status`)
  5  no title is at least --min-length long (nothing ripped)
  6  MakeMKV refuses to work: its beta key expired / version too old (nothing ripped)

MakeMKV is driven in robot mode (`makemkvcon -r`): docs/adr/0007-media-rip-makemkv-robot-mode.md.
"""

from __future__ import annotations

import argparse
import csv
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from . import __version__
from . import config as config_mod
from .jobs import connect
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .metrics import exposition, new_registry, publish_textfile, serve
from .notify import Notifier
from .rips import STATUS_RIPS, rip_record, snapshot, write_status
from .service import MARKER, InstanceLock, _setup_logging, _when
from .transcode import _PREEXEC, fmt_time

EXIT_OK, EXIT_START, EXIT_USAGE, EXIT_NO_DISC, EXIT_FAILED, EXIT_NO_TITLE, EXIT_KEY = 0, 1, 2, 3, 4, 5, 6
EXIT_NAMES = {EXIT_OK: "ripped", EXIT_START: "cannot start", EXIT_USAGE: "usage", EXIT_NO_DISC: "no disc",
              EXIT_FAILED: "title failed", EXIT_NO_TITLE: "no title long enough", EXIT_KEY: "key expired"}
WORK_PREFIX = ".rip-"
CDROMEJECT = 0x5309  # linux/cdrom.h
PROGRESS_LOG_SECONDS = 30.0
INFO_TIMEOUT = 600  # a scratched Blu-ray can take minutes to scan
STATUS_HEARTBEAT_SECONDS = 30.0  # the status file is rewritten at least this often (and every poll)

log = logging.getLogger("media-rip")

# --- robot mode ---------------------------------------------------------------------------
# DRV:index,state,unused,flags,"drive name","disc label","device"   (state: 0 empty, 1 tray open,
#   2 disc inserted, 3 loading, 256 no drive); CINFO:id,code,"value"; TINFO:title,id,code,"value";
#   MSG:code,flags,count,"message","format",params...; PRGV:current,total,max; PRGT/PRGC:code,id,"name".
# Attribute ids (makemkvgui/inc/lgpl/apdefs.h in makemkv-oss): 2 name, 9 duration, 10 size,
# 11 size in bytes, 27 output file name, 32 volume label.
DRIVE_EMPTY, DRIVE_OPEN, DRIVE_INSERTED, DRIVE_LOADING, DRIVE_NONE = 0, 1, 2, 3, 256
AP_NAME, AP_DURATION, AP_SIZE, AP_BYTES, AP_FILE, AP_LABEL = 2, 9, 10, 11, 27, 32
MSG_SAVE_FAILED = 5003     # "Failed to save title %1 to file %2"
MSG_OPEN_FAILED = 5010     # "Failed to open disc"
MSG_COPY_DONE = 5036       # "Copy complete. %1 titles saved."
MSG_COPY_FAILED = 5037     # "Copy complete. %1 titles saved, %2 failed."
# Refusals of an expired beta / too old version (the same set scripts/verify-drive.sh reads).
KEY_EXPIRED_CODES = {5021, 5052, 5055, 5073}
_KEY_EXPIRED_TEXT = re.compile(r"(?i)version is too old|evaluation period has expired|key has expired")
_COPY_COMPLETE = re.compile(r"Copy complete\. (\d+) titles? saved(?:, (\d+) failed)?")


def split_fields(payload: str) -> list[str]:
    """The comma-separated fields of one robot line, quotes removed ("a,b" stays one field)."""
    return next(csv.reader([payload], skipinitialspace=False), [])


def parse_line(line: str) -> tuple[str, list[str]] | None:
    kind, sep, payload = line.rstrip("\r\n").partition(":")
    if not sep or not kind.isupper() or not kind.isalpha():
        return None
    return kind, split_fields(payload)


def duration_seconds(text: str) -> int:
    """'1:52:10' -> 6730; '0:00:59' -> 59; '' -> 0."""
    parts = [p for p in text.strip().split(":") if p != ""]
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        return 0
    total = 0
    for n in nums:
        total = total * 60 + n
    return total


@dataclass
class Drive:
    index: int
    state: int
    name: str
    label: str
    device: str


@dataclass
class Title:
    index: int
    duration: int = 0
    size: int = 0
    file: str = ""
    name: str = ""

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Scan:
    """What `makemkvcon -r info` said: drives, the disc, its titles, messages and the key state."""
    drives: list[Drive] = field(default_factory=list)
    disc_name: str = ""
    label: str = ""
    titles: list[Title] = field(default_factory=list)
    messages: list[tuple[int, str]] = field(default_factory=list)
    version: str = ""

    def drive(self, device: str) -> Drive | None:
        real = os.path.realpath(device)
        for d in self.drives:
            if d.device and (d.device == device or os.path.realpath(d.device) == real):
                return d
        return None

    def key_expired(self) -> str:
        """The refusal message when MakeMKV refuses to work (expired beta key, too old), else ''."""
        for code, text in self.messages:
            if code in KEY_EXPIRED_CODES or _KEY_EXPIRED_TEXT.search(text):
                return text
        return ""

    def fingerprint(self) -> str:
        """A disc's identity across restarts: its names and the shape of every title."""
        shape = [self.disc_name, self.label] + [f"{t.index}:{t.duration}:{t.size}:{t.file}" for t in self.titles]
        return hashlib.sha256("\n".join(shape).encode()).hexdigest()[:20]


def parse_info(text: str) -> Scan:
    scan = Scan()
    titles: dict[int, Title] = {}
    for line in text.splitlines():
        parsed = parse_line(line)
        if parsed is None:
            continue
        kind, f = parsed
        try:
            if kind == "DRV" and len(f) >= 7:
                scan.drives.append(Drive(int(f[0]), int(f[1]), f[4], f[5], f[6]))
            elif kind == "CINFO" and len(f) >= 3:
                code = int(f[0])
                if code == AP_NAME:
                    scan.disc_name = f[2]
                elif code == AP_LABEL:
                    scan.label = f[2]
            elif kind == "TINFO" and len(f) >= 4:
                t = titles.setdefault(int(f[0]), Title(int(f[0])))
                code, value = int(f[1]), f[3]
                if code == AP_DURATION:
                    t.duration = duration_seconds(value)
                elif code == AP_BYTES:
                    t.size = int(value) if value.isdigit() else t.size
                elif code == AP_FILE:
                    t.file = value
                elif code == AP_NAME:
                    t.name = value
            elif kind == "MSG" and len(f) >= 4:
                code = int(f[0])
                scan.messages.append((code, f[3]))
                m = re.search(r"MakeMKV v(\d+\.\d+\.\d+)", f[3])
                if m and not scan.version:
                    scan.version = m[1]
        except ValueError:
            continue  # a line we do not understand is not a reason to stop reading
    scan.titles = [titles[k] for k in sorted(titles)]
    return scan


@dataclass
class CopyResult:
    saved: int | None = None
    failed: int | None = None
    failures: list[str] = field(default_factory=list)  # the "Failed to save title" messages
    errors: list[str] = field(default_factory=list)    # other error messages, newest last

    def ok(self, expected: int) -> bool:
        return not self.failures and self.failed in (0, None) and self.saved == expected


def read_copy_result(lines: list[str]) -> CopyResult:
    """makemkvcon's exit status alone does not tell a failed title: read its messages."""
    res = CopyResult()
    for line in lines:
        parsed = parse_line(line)
        if parsed is None or parsed[0] != "MSG" or len(parsed[1]) < 4:
            continue
        f = parsed[1]
        try:
            code = int(f[0])
        except ValueError:
            continue
        text = f[3]
        m = _COPY_COMPLETE.search(text)
        if code in (MSG_COPY_DONE, MSG_COPY_FAILED) or m:
            if m:
                res.saved, res.failed = int(m[1]), int(m[2] or 0)
        elif code == MSG_SAVE_FAILED or text.startswith("Failed to save title"):
            res.failures.append(text)
        elif code == MSG_OPEN_FAILED or code in KEY_EXPIRED_CODES or re.search(r"(?i)error|fail", text):
            res.errors.append(text)
    return res


def safe_name(name: str) -> str:
    """One folder name whatever a disc label holds: no '/', no control characters, no leading dot."""
    name = "".join(" " if (ord(c) < 32 or c in '/\\:*?"<>|') else c for c in name)
    name = re.sub(r"\s+", " ", name.replace("_", " ")).strip(" .-")
    return name[:100].strip() or "Disc"


def disc_title(scan: Scan) -> str:
    return safe_name(scan.disc_name or scan.label)


# --- the store ------------------------------------------------------------------------------

RIP_STATES = ("ripping", "publishing", "done", "failed", "skipped")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS rips (
    id          INTEGER PRIMARY KEY,
    fingerprint TEXT    NOT NULL,
    label       TEXT    NOT NULL DEFAULT '',
    name        TEXT    NOT NULL DEFAULT '',
    state       TEXT    NOT NULL CHECK (state IN ('ripping', 'publishing', 'done', 'failed', 'skipped')),
    attempts    INTEGER NOT NULL DEFAULT 1,
    workdir     TEXT    NOT NULL DEFAULT '',
    folder      TEXT    NOT NULL DEFAULT '',
    titles      TEXT    NOT NULL DEFAULT '[]',
    bytes       INTEGER NOT NULL DEFAULT 0,
    progress    REAL    NOT NULL DEFAULT 0,
    reason      TEXT    NOT NULL DEFAULT '',
    exit_code   INTEGER,
    created     REAL    NOT NULL,
    updated     REAL    NOT NULL,
    started     REAL,
    finished    REAL
);
CREATE INDEX IF NOT EXISTS rips_fingerprint ON rips (fingerprint, state);
"""


class RipStore:
    """The rips table; the connection settings are media-pipeline's job store's (jobs.connect)."""

    def __init__(self, path: str, readonly: bool = False):
        self._lock = threading.RLock()
        self._db = connect(path, readonly)
        if not readonly:
            self._db.executescript(_SCHEMA)
        self._db.row_factory = sqlite3.Row

    def close(self) -> None:
        self._db.close()

    def _one(self, sql: str, args=()) -> dict | None:
        with self._lock:
            row = self._db.execute(sql, args).fetchone()
        return _row(row) if row else None

    def get(self, rip_id: int) -> dict | None:
        return self._one("SELECT * FROM rips WHERE id=?", (rip_id,))

    def latest(self, fingerprint: str) -> dict | None:
        return self._one("SELECT * FROM rips WHERE fingerprint=? ORDER BY id DESC LIMIT 1", (fingerprint,))

    def unfinished(self) -> list[dict]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM rips WHERE state IN ('ripping','publishing') ORDER BY id").fetchall()
        return [_row(r) for r in rows]

    def list(self, limit: int | None = None) -> list[dict]:
        sql = "SELECT * FROM rips ORDER BY id DESC" + (f" LIMIT {int(limit)}" if limit else "")
        with self._lock:
            rows = self._db.execute(sql).fetchall()
        return sorted((_row(r) for r in rows), key=lambda r: r["id"])

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(RIP_STATES, 0)
        with self._lock:
            for state, n in self._db.execute("SELECT state, COUNT(*) FROM rips GROUP BY state"):
                out[state] = n
        return out

    def totals(self) -> dict[str, float]:
        with self._lock:
            b, secs = self._db.execute(
                "SELECT COALESCE(SUM(bytes),0), COALESCE(SUM(finished-started),0) FROM rips WHERE state='done'"
            ).fetchone()
        return {"bytes": float(b), "seconds": float(secs)}

    def start(self, fingerprint: str, label: str, name: str, titles: list[Title]) -> int:
        now = time.time()
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO rips (fingerprint, label, name, state, titles, created, updated, started) "
                "VALUES (?,?,?,'ripping',?,?,?,?)",
                (fingerprint, label, name, json.dumps([t.to_json() for t in titles]), now, now, now))
            return int(cur.lastrowid)

    def restart(self, rip_id: int) -> None:
        now = time.time()
        with self._lock:
            self._db.execute("UPDATE rips SET state='ripping', attempts=attempts+1, progress=0, reason='', "
                             "folder='', started=?, updated=?, finished=NULL WHERE id=?", (now, now, rip_id))

    def record(self, fingerprint: str, label: str, name: str, state: str, reason: str, code: int,
               titles: list[Title] = ()) -> int:
        """A disc seen and not ripped (no long title, key expired): one finished row."""
        now = time.time()
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO rips (fingerprint, label, name, state, titles, reason, exit_code, created, updated, "
                "started, finished) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (fingerprint, label, name, state, json.dumps([t.to_json() for t in titles]), reason, code,
                 now, now, now, now))
            return int(cur.lastrowid)

    def update(self, rip_id: int, **fields) -> None:
        allowed = {"state", "workdir", "folder", "bytes", "progress", "reason", "exit_code", "finished", "titles"}
        if set(fields) - allowed:
            raise ValueError(f"cannot update {sorted(set(fields) - allowed)}")
        cols = ", ".join(f"{k}=?" for k in fields)
        with self._lock:
            self._db.execute(f"UPDATE rips SET {cols}, updated=? WHERE id=?", (*fields.values(), time.time(), rip_id))


def _row(row: sqlite3.Row) -> dict:
    d = dict(row)
    d["titles"] = json.loads(d.get("titles") or "[]")
    return d


# --- running makemkvcon ---------------------------------------------------------------------

class Ripper:
    """One drive, one staging folder, one store: scan, rip, publish."""

    def __init__(self, cfg: config_mod.RipConfig, store: RipStore | None, notifier: Notifier | None = None):
        self.cfg = cfg
        self.store = store
        self.notifier = notifier or Notifier((), log.warning)
        self.current: dict | None = None  # {"id", "name", "progress", "eta"} while ripping
        self.cancel = threading.Event()
        self.on_change = None  # called after every change of a rip in the store (the status file)
        self.proc: subprocess.Popen | None = None

    def _dev(self) -> str:
        return f"dev:{self.cfg.device}"

    def _run_info(self, source: str, minlength: int | None) -> str:
        argv = [self.cfg.makemkvcon, "-r", "--cache=1"]
        if minlength is not None:
            argv.append(f"--minlength={minlength}")
        argv += ["info", source]
        try:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  errors="replace", timeout=INFO_TIMEOUT, check=False, preexec_fn=_PREEXEC)
        except FileNotFoundError:
            raise RipError(EXIT_START, f"{self.cfg.makemkvcon} not found: install MakeMKV "
                                       f"(ct-bootstrap-ripper.sh builds it) or pass --makemkvcon") from None
        except subprocess.TimeoutExpired:
            raise RipError(EXIT_FAILED, f"makemkvcon info {source} did not finish in {INFO_TIMEOUT} s") from None
        return proc.stdout

    def drive_state(self) -> tuple[int, str, Scan]:
        """(state, disc label, scan) of the configured drive, from the cheap drive list (no disc scan)."""
        scan = parse_info(self._run_info("disc:9999", None))
        drive = scan.drive(self.cfg.device)
        if drive is None:
            return DRIVE_NONE, "", scan
        return drive.state, drive.label, scan

    def scan_disc(self) -> Scan:
        return parse_info(self._run_info(self._dev(), self.cfg.min_length))

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
            state, _label, drives = self.drive_state()
            expired = drives.key_expired()
            if expired:
                raise RipError(EXIT_KEY, key_refusal(expired))
            if state == DRIVE_NONE:
                devices = ", ".join(d.device for d in drives.drives if d.device) or "none"
                raise RipError(EXIT_NO_DISC, f"no drive {cfg.device} in MakeMKV's drive list (drives: {devices})")
            if state in (DRIVE_EMPTY, DRIVE_OPEN):
                raise RipError(EXIT_NO_DISC, f"no disc in {cfg.device}: " +
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
            raise RipError(EXIT_NO_DISC, f"MakeMKV could not open the disc in {cfg.device} "
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
        workdir = os.path.join(cfg.staging, f"{WORK_PREFIX}{rip_id or os.getpid()}")
        _remove_workdir(workdir, cfg.staging)
        os.makedirs(workdir)
        if self.store is not None:
            self.store.update(rip_id, workdir=workdir)
        self.current = {"id": rip_id, "name": name, "progress": 0.0, "eta": 0.0}
        self._changed()
        started = time.monotonic()
        try:
            result, rc = self._mkv(workdir, name)
            expected = [os.path.join(workdir, t.file) if t.file else "" for t in wanted]
            problem = _judge(result, rc, wanted, expected, workdir)
            if self.cancel.is_set():
                problem = "interrupted by shutdown"
            if problem:
                _remove_workdir(workdir, cfg.staging)
                self._finish(rip_id, "failed", problem, EXIT_FAILED)
                raise RipError(EXIT_FAILED, problem)
            files = sorted(os.listdir(workdir))
            for f in files:  # markers first: the folder appears in staging complete and marked
                with open(os.path.join(workdir, f + MARKER), "w"):
                    pass
            total = sum(os.path.getsize(os.path.join(workdir, f)) for f in files)
            if self.store is not None:
                self.store.update(rip_id, state="publishing", bytes=total)
                self._changed()
            folder = publish(workdir, cfg.staging, name)
        except RipError:
            raise
        except OSError as exc:
            _remove_workdir(workdir, cfg.staging)
            reason = f"output problem: {exc}"
            self._finish(rip_id, "failed", reason, EXIT_FAILED)
            raise RipError(EXIT_FAILED, reason) from None
        finally:
            self.current = None
        self._finish(rip_id, "done", "", EXIT_OK, folder=folder)
        elapsed = time.monotonic() - started
        log.info("published %s: %d file(s), %.1f MB in %s", folder, len(files), total / 1e6, fmt_time(elapsed))
        self.notifier.send("Rip finished", f"{name}\n{folder}\n{len(files)} title(s), {total / 1e9:.2f} GB "
                                           f"in {fmt_time(elapsed)}")
        return EXIT_OK

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def _record(self, fp: str, scan: Scan, name: str, state: str, reason: str, code: int) -> None:
        if self.store is not None:
            self.store.record(fp, scan.label, name, state, reason, code, scan.titles)
            self._changed()

    def _finish(self, rip_id: int | None, state: str, reason: str, code: int, folder: str = "") -> None:
        if self.store is None or rip_id is None:
            return
        fields = {"state": state, "reason": reason, "exit_code": code, "finished": time.time()}
        if folder:
            fields.update(folder=folder, progress=1.0)
        self.store.update(rip_id, **fields)
        self._changed()

    def _mkv(self, workdir: str, name: str) -> tuple[CopyResult, int]:
        """`makemkvcon -r --progress=-same mkv dev:DEV all DIR`: every title >= min_length, one disc pass."""
        argv = [self.cfg.makemkvcon, "-r", "--progress=-same", "--cache=1", f"--minlength={self.cfg.min_length}",
                "mkv", self._dev(), "all", workdir]
        log.info("ripping %r: %s", name, " ".join(argv))
        lines: list[str] = []
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1,
                                         preexec_fn=_PREEXEC)
        except FileNotFoundError:
            raise RipError(EXIT_START, f"{self.cfg.makemkvcon} not found") from None
        t0 = time.monotonic()
        next_log = t0
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
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
        rc = self.proc.wait()
        self.proc = None
        return read_copy_result(lines), rc

    def stop(self) -> None:
        self.cancel.set()
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()

    def eject(self) -> bool:
        """Open the tray: the CDROMEJECT ioctl (what eject(1) does), or eject_command when set."""
        if not self.cfg.eject_command:
            try:
                fd = os.open(self.cfg.device, os.O_RDONLY | os.O_NONBLOCK)
                try:
                    fcntl.ioctl(fd, CDROMEJECT)
                finally:
                    os.close(fd)
            except OSError as exc:
                log.warning("could not eject %s: %s", self.cfg.device, exc.strerror or exc)
                return False
            log.info("ejected %s", self.cfg.device)
            return True
        try:
            res = subprocess.run([self.cfg.eject_command, self.cfg.device], stdin=subprocess.DEVNULL,
                                 capture_output=True, text=True, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("could not eject %s: %s", self.cfg.device, exc)
            return False
        if res.returncode != 0:
            log.warning("could not eject %s: %s", self.cfg.device, (res.stderr or res.stdout).strip()[-200:])
            return False
        log.info("ejected %s", self.cfg.device)
        return True


class RipError(Exception):
    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code, self.reason = code, reason


def _judge(result: CopyResult, rc: int, wanted: list[Title], expected: list[str], workdir: str) -> str:
    """Why this rip must not be published, or '' when every wanted title is saved."""
    if result.failures:
        return "; ".join(result.failures)
    if result.failed:
        return f"MakeMKV: {result.saved} title(s) saved, {result.failed} failed"
    if result.saved is None:
        last = result.errors[-1] if result.errors else f"exit status {rc}"
        return f"makemkvcon ended without 'Copy complete' ({last})"
    if result.saved != len(wanted):
        return f"MakeMKV saved {result.saved} title(s), {len(wanted)} were asked for"
    if rc != 0:
        return f"makemkvcon exit status {rc} after 'Copy complete'"
    for path in expected:
        if path and not (os.path.isfile(path) and os.path.getsize(path) > 0):
            return f"MakeMKV reported success but {os.path.basename(path)} is missing or empty"
    if not any(n.lower().endswith(".mkv") for n in os.listdir(workdir)):
        return "MakeMKV reported success but wrote no .mkv file"
    return ""


def publish(workdir: str, staging: str, name: str) -> str:
    """Move the finished working folder to STAGING/<name>/, or '<name> (2)'... when taken.

    mkdir reserves the name atomically (an existing folder is never touched), then rename(2)
    replaces that empty reservation with the working folder in one step: media-pipeline sees
    either nothing or the whole folder with its markers.
    """
    for n in range(1, 1000):
        folder = os.path.join(staging, name if n == 1 else f"{name} ({n})")
        try:
            os.mkdir(folder)
        except FileExistsError:
            continue
        try:
            os.rename(workdir, folder)
        except OSError:
            try:
                os.rmdir(folder)
            except OSError:
                pass
            raise
        return folder
    raise OSError(f"{staging}: 999 folders named {name!r} already")


def _remove_workdir(workdir: str, staging: str) -> None:
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


# --- the service ----------------------------------------------------------------------------

class Service:
    """Poll the drive; rip each newly inserted disc once; eject; record everything."""

    def __init__(self, cfg: config_mod.RipConfig):
        self.cfg = cfg
        self.stop = threading.Event()
        self.store: RipStore | None = None
        self.ripper: Ripper | None = None
        self.last_state: int | None = None
        self.handled_present = False  # the disc now in the drive was handled (or seen at start)
        self.last_poll = 0.0
        self.drive_state_now = -1
        self.resume: dict[str, dict] = {}  # fingerprint -> a rip interrupted by a restart
        self.last_error = ""
        self.status = StatusFile(cfg)
        # media-rip's own registry: a collector that reads the rip store at each scrape
        self.registry = new_registry(RipCollector(self.metrics_families))

    def request_stop(self, *_args) -> None:
        self.stop.set()
        if self.ripper is not None:
            self.ripper.stop()

    def run(self) -> int:
        cfg = self.cfg
        os.makedirs(os.path.dirname(cfg.db), exist_ok=True)
        lock = InstanceLock(cfg.db, "media-rip")
        lock.acquire()
        self.store = RipStore(cfg.db)
        notifier = Notifier(cfg.apprise_urls, log.warning)
        self.ripper = Ripper(cfg, self.store, notifier)
        self.ripper.on_change = self.publish_status
        server = None
        heartbeat = threading.Thread(target=self._heartbeat, daemon=True, name="status-file")
        try:
            if cfg.metrics_port:
                server = serve(self.registry, cfg.metrics_bind, cfg.metrics_port)
                log.info("metrics on http://%s:%d/metrics", cfg.metrics_bind, server.port)
            log.info("media-rip %s: drive %s, staging %s, min length %s, auto-rip %s, eject %s, %s",
                     __version__, cfg.device, cfg.staging, fmt_time(cfg.min_length), cfg.auto_rip, cfg.eject,
                     notifier.describe())
            self.recover()
            if cfg.status_file:
                heartbeat.start()
                log.info("status file %s (the status page reads it)", cfg.status_file)
            while not self.stop.is_set():
                self.poll()
                self.publish_metrics()
                self.publish_status()
                self.stop.wait(cfg.poll_seconds)
        finally:
            if server is not None:
                server.stop()
            self.publish_metrics()
            self.publish_status()
            if heartbeat.is_alive():
                heartbeat.join(timeout=5)
            self.store.close()
            lock.release()
        return 0

    def recover(self) -> None:
        """After a crash: no partial rip stays in staging; a finished folder whose publish was cut
        short is published; an interrupted rip is ripped again when its disc is still there."""
        assert self.store is not None
        for rip in self.store.unfinished():
            work = rip["workdir"]
            if rip["state"] == "publishing" and work and os.path.isdir(work):
                folder = publish(work, self.cfg.staging, rip["name"])
                self.store.update(rip["id"], state="done", folder=folder, progress=1.0, finished=time.time(),
                                  exit_code=EXIT_OK)
                log.info("[rip %d] finished the publish cut short by a restart: %s", rip["id"], folder)
                continue
            if rip["state"] == "publishing":  # the rename happened: the folder is published
                self.store.update(rip["id"], state="done", finished=time.time(), exit_code=EXIT_OK)
                continue
            if work:
                _remove_workdir(work, self.cfg.staging)
            self.store.update(rip["id"], state="failed", reason="interrupted (service restarted); partial files "
                              "removed; the disc is ripped again if it is still in the drive",
                              exit_code=EXIT_FAILED, finished=time.time())
            log.warning("[rip %d] %r was interrupted by a restart: partial files removed", rip["id"], rip["name"])
            self.resume[rip["fingerprint"]] = rip
        # Stray working folders no row points at (a database restored from backup, a manual run).
        for entry in os.listdir(self.cfg.staging) if os.path.isdir(self.cfg.staging) else ():
            if entry.startswith(WORK_PREFIX) and entry[len(WORK_PREFIX):].isdigit():
                row = self.store.get(int(entry[len(WORK_PREFIX):]))
                if row is None or row["state"] not in ("ripping", "publishing"):
                    _remove_workdir(os.path.join(self.cfg.staging, entry), self.cfg.staging)

    def poll(self) -> None:
        assert self.ripper is not None and self.store is not None
        self.last_poll = time.time()
        try:
            state, label, _ = self.ripper.drive_state()
        except RipError as exc:
            if exc.reason != self.last_error:  # once per problem, not once per poll
                log.error("%s", exc.reason)
            self.last_error, self.drive_state_now, self.last_state = exc.reason, -1, None
            return
        self.last_error = ""
        self.drive_state_now = state
        if state != self.last_state:
            log.info("drive %s: %s%s", self.cfg.device, _STATE_NAMES.get(state, str(state)),
                     f" ({label})" if label else "")
        changed = state != self.last_state
        self.last_state = state
        if state != DRIVE_INSERTED:
            self.handled_present = False
            return
        if not changed and self.handled_present:
            return
        self.handled_present = True
        self.handle_disc()

    def handle_disc(self) -> None:
        ripper, store, cfg = self.ripper, self.store, self.cfg
        try:
            scan = ripper.scan_disc()
        except RipError as exc:
            log.error("%s", exc.reason)
            return
        fp, name = scan.fingerprint(), disc_title(scan)
        latest = store.latest(fp)
        resume = self.resume.pop(fp, None)
        if latest is not None and latest["state"] == "done":
            log.info("disc %r was ripped already (rip %d, %s): not ripping it twice", name, latest["id"],
                     latest["folder"])
            self.maybe_eject()
            return
        if not cfg.auto_rip:
            log.info("disc %r is in the drive; auto_rip is off: rip it with `media-rip once`", name)
            return
        try:
            ripper.rip_disc(scan, resume=resume)
        except RipError as exc:
            if self.stop.is_set():
                log.info("rip of %r interrupted by shutdown; partial files removed, ripped again at the next start",
                         name)
                return
            log.error("rip of %r failed (%s): %s", name, EXIT_NAMES.get(exc.code, exc.code), exc.reason)
            if exc.code in (EXIT_FAILED, EXIT_KEY):
                ripper.notifier.send("Rip failed", f"{name}\n{exc.reason}")
        self.maybe_eject()

    def maybe_eject(self) -> None:
        if self.cfg.eject and not self.stop.is_set() and self.ripper.eject():
            # the tray is open now: whatever is in the drive at the next poll was put in after
            self.last_state, self.handled_present, self.drive_state_now = DRIVE_OPEN, False, DRIVE_OPEN
            self.publish_status()

    # -- metrics (media_rip_*; served and written like media-pipeline's) ----------------------

    def metrics_families(self) -> list:
        if self.store is None:
            return []
        return rip_families(self.store.counts(), self.store.totals(),
                            self.ripper.current if self.ripper else None, self.drive_state_now, self.last_poll)

    def metrics_text(self) -> str:
        return exposition(self.registry)

    def publish_metrics(self) -> None:
        if self.store is not None:
            publish_textfile(self.cfg.metrics_textfile, self.registry, log)

    # -- the status file (the transcoder's status page reads it; media_pipeline/rips.py) ------

    def drive_status(self) -> dict:
        return {"device": self.cfg.device, "state": self.drive_state_now,
                "state_name": _STATE_NAMES.get(self.drive_state_now, "unknown"), "error": self.last_error,
                "last_poll": round(self.last_poll, 3), "current": self.ripper.current if self.ripper else None}

    def publish_status(self) -> None:
        if self.store is not None:
            self.status.publish(self.store, self.drive_status())

    def _heartbeat(self) -> None:
        """Rewrite the status file while a rip blocks the poll loop (progress; proof of life)."""
        while not self.stop.wait(min(self.cfg.poll_seconds, STATUS_HEARTBEAT_SECONDS)):
            self.publish_status()


class StatusFile:
    """media-rip's side of the status file: the newest rips and the drive, replaced atomically."""

    def __init__(self, cfg: config_mod.RipConfig):
        self.path = cfg.status_file
        self._lock = threading.Lock()  # the poll loop and the heartbeat: one writer at a time
        self._problem = ""

    def publish(self, store: RipStore, drive: dict) -> None:
        if not self.path:
            return
        with self._lock:
            try:
                rows = store.list(STATUS_RIPS)
                current = drive.get("current")
                current = dict(current) if current else None
                if current is not None:
                    eta = current.get("eta")
                    current["eta"] = round(eta, 1) if isinstance(eta, float) and eta == eta and eta != float("inf") \
                        else None  # JSON has no NaN
                    for row in rows:  # the running rip's live progress (the store has it at the end)
                        if row["id"] == current.get("id"):
                            row["progress"] = round(float(current.get("progress") or 0.0), 4)
                write_status(self.path, snapshot(rows, {**drive, "current": current}, version=__version__))
            except (OSError, sqlite3.Error) as exc:
                problem = f"cannot write the status file {self.path}: {exc}"
                if problem != self._problem:  # once per problem, not once per poll
                    log.warning("%s", problem)
                self._problem = problem
                return
            if self._problem:
                log.info("status file %s written again", self.path)
            self._problem = ""


_STATE_NAMES = {DRIVE_EMPTY: "empty", DRIVE_OPEN: "tray open", DRIVE_INSERTED: "disc inserted",
                DRIVE_LOADING: "loading", DRIVE_NONE: "no such drive"}


class RipCollector:
    """prometheus_client collector of the families a function gives at each scrape."""

    def __init__(self, families):
        self.families = families

    def describe(self):
        return []

    def collect(self):
        return iter(self.families())


def rip_families(counts: dict[str, int], totals: dict[str, float], current: dict | None, drive_state: int,
                 last_poll: float) -> list:
    info = GaugeMetricFamily("media_rip_info", "Version of the running media-rip.", labels=["version"])
    info.add_metric([__version__], 1)
    rips = GaugeMetricFamily("media_rip_rips", "Rips in the database, by state.", labels=["state"])
    for state in RIP_STATES:
        rips.add_metric([state], counts.get(state, 0))
    # finished rips by outcome, for alerting (monitoring/prometheus/alerts.yml: a failed rip)
    outcomes = CounterMetricFamily("media_rip_rips_finished", "Rips that ended, by outcome.", labels=["outcome"])
    outcomes.add_metric(["ripped"], counts.get("done", 0))
    outcomes.add_metric(["failed"], counts.get("failed", 0))
    progress = GaugeMetricFamily("media_rip_progress_ratio", "Progress of the running rip (0-1).", labels=["disc"])
    if current:
        progress.add_metric([current["name"]], round(current.get("progress", 0.0), 4))
    return [
        info, rips, outcomes,
        CounterMetricFamily("media_rip_ripped_bytes", "Bytes published to staging by successful rips.",
                            value=totals["bytes"]),
        CounterMetricFamily("media_rip_rip_wall_seconds", "Wall-clock seconds spent in successful rips.",
                            value=round(totals["seconds"], 3)),
        GaugeMetricFamily("media_rip_drive_state",
                          "MakeMKV drive state: 0 empty, 1 tray open, 2 disc, 3 loading, 256 none, -1 unknown.",
                          value=drive_state),
        progress,
        GaugeMetricFamily("media_rip_last_poll_timestamp_seconds", "When the drive was last polled.",
                          value=round(last_poll, 3)),
    ]


def render_metrics(counts: dict[str, int], totals: dict[str, float], current: dict | None, drive_state: int,
                   last_poll: float) -> str:
    """The exposition text of these values (what /metrics answers)."""
    families = rip_families(counts, totals, current, drive_state, last_poll)
    return exposition(new_registry(RipCollector(lambda: families)))


# --- status ---------------------------------------------------------------------------------

def status_table(rips: list[dict]) -> str:
    if not rips:
        return "no rips yet"
    rows = [("ID", "STATE", "STARTED", "TIME", "TITLES", "SIZE", "DISC", "RESULT")]
    for r in rips:
        took = fmt_time((r["finished"] or time.time()) - r["started"]) if r["started"] else "-"
        when = _when(r["started"])
        result = r["folder"] if r["state"] == "done" else \
            f"{r['progress'] * 100:.0f}%" if r["state"] == "ripping" else r["reason"]
        rows.append((str(r["id"]), r["state"], when, took, str(len(r["titles"])),
                     f"{r['bytes'] / 1e9:.2f} GB" if r["bytes"] else "-", r["name"], result))
    widths = [max(len(row[i]) for row in rows) for i in range(7)]
    return "\n".join(("  ".join(row[i].ljust(widths[i]) for i in range(7)) + "  " + row[7]).rstrip()
                     for row in rows)


# --- command line ---------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="media-rip", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help=f"config file (default ${config_mod.RIP_ENV_VAR} or "
                                         f"{config_mod.RIP_DEFAULT_PATH})")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="cmd", required=True)
    once = sub.add_parser("once", help="rip the disc in the drive now (exit codes: see media-rip --help)",
                          epilog="exit codes: 0 ripped, 1 cannot start, 2 usage, 3 no disc, 4 a title failed, "
                                 "5 no title long enough, 6 MakeMKV key expired")
    once.add_argument("--device", help="the drive, e.g. /dev/sr0 (default from the config)")
    once.add_argument("--staging", help="where the rip is published")
    once.add_argument("--min-length", type=int, metavar="SECONDS", help="shortest title to rip")
    once.add_argument("--makemkvcon", metavar="PATH", help="the makemkvcon program")
    once.add_argument("--eject", action="store_true", help="eject the disc when done")
    run = sub.add_parser("run", help="the service: poll the drive, rip each new disc once")
    run.add_argument("--verbose", action="store_true")
    st = sub.add_parser("status", help="list rips")
    st.add_argument("--json", action="store_true")
    st.add_argument("--limit", type=int)
    for p in (once, run, st):
        p.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0) if exc.code in (0, None) else EXIT_USAGE

    try:
        cfg = config_mod.load_rip(args.config, required=args.cmd == "run")
        if args.cmd == "once":
            over = {k: v for k, v in (("device", args.device), ("staging", args.staging),
                                      ("min_length", args.min_length), ("makemkvcon", args.makemkvcon)) if v is not None}
            if over:
                cfg = config_mod.rip_from_dict({**cfg.to_json(), **over}, where="arguments")
    except config_mod.ConfigError as exc:
        print(f"media-rip: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE

    if args.cmd == "status":
        return _status(cfg, args)
    _setup_logging(getattr(args, "verbose", False))
    if args.cmd == "run":
        service = Service(cfg)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, service.request_stop)
        try:
            return service.run()
        except (RuntimeError, OSError, sqlite3.Error) as exc:
            log.error("cannot start: %s", exc)
            return EXIT_START
    return _once(cfg, args.eject)


def _once(cfg: config_mod.RipConfig, eject: bool) -> int:
    store, lock = None, InstanceLock(cfg.db)
    try:
        os.makedirs(os.path.dirname(cfg.db), exist_ok=True)
        lock.acquire()  # one user of the drive and the store: the service, or this
        store = RipStore(cfg.db)
    except RuntimeError:
        log.error("media-rip run is watching %s and rips new discs itself; to rip by hand, stop it first "
                  "(systemctl stop media-rip)", cfg.device)
        return EXIT_START
    except (OSError, sqlite3.Error) as exc:
        log.warning("not recording this rip (%s: %s)", cfg.db, exc)
    ripper = Ripper(cfg, store, Notifier(cfg.apprise_urls, log.warning))
    if store is not None:  # the page sees a rip by hand too (drive state: unknown, the service is stopped)
        status = StatusFile(cfg)
        drive = {"device": cfg.device, "state": -1, "state_name": "unknown", "error": "", "last_poll": 0.0}
        ripper.on_change = lambda: status.publish(store, {**drive, "current": ripper.current})
    signal.signal(signal.SIGTERM, lambda *_: ripper.stop())
    try:
        code = ripper.rip_disc()
    except RipError as exc:
        log.error("%s: %s", EXIT_NAMES.get(exc.code, exc.code), exc.reason)
        code = exc.code
    finally:
        if store is not None:
            store.close()
        lock.release()
    if eject and code in (EXIT_OK, EXIT_FAILED, EXIT_NO_TITLE):
        ripper.eject()
    return code


def _status(cfg: config_mod.RipConfig, args) -> int:
    rips: list[dict] = []
    if os.path.exists(cfg.db):
        try:
            store = RipStore(cfg.db, readonly=True)
            rips = store.list(args.limit)
            store.close()
        except sqlite3.Error as exc:
            print(f"media-rip: cannot read {cfg.db}: {exc}", file=sys.stderr)
            return EXIT_START
    rips = [rip_record(r) for r in rips]  # the status file's format (media_pipeline/rips.py)
    print(json.dumps(rips, indent=2, ensure_ascii=False) if args.json else status_table(rips))
    return 0


if __name__ == "__main__":
    sys.exit(main())
