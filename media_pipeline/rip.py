"""media-rip: rip the disc in the optical drive into staging with MakeMKV, hands-free.

  media-rip once [--device /dev/srN | --drive SELECTOR] [--staging DIR] [--min-length SECONDS]
                 [--makemkvcon PATH]
                         rip the disc in the drive now
  media-rip run          the service: poll the drive, rip each new disc once, eject it
  media-rip status [--json]   the rips recorded (state, titles, sizes, time, failure reason)

Every title at least --min-length seconds long is ripped into a hidden working folder
STAGING/.rip-N/; only when every title is saved is the folder published, whole, as
STAGING/<disc name>/ (a second disc with the same name gets "<disc name> (2)/"), each file
with its .done marker, so media-pipeline takes it at once. A failed title publishes nothing.
A complete rip that cannot be published yet (a full pool, a read-only staging) is kept in its
working folder and published by `media-rip run` (at its start, then every minute).

The drive is `device` when set (a fixed node such as /dev/sr0), else the one `drive` names
(auto: the first; or a /dev/disk/by-id name, model or serial), found again at each poll as the
node's hookscript finds it: sr numbers follow the order the kernel found the drives at boot.

Exit codes of `once`:
  0  ripped and published
  1  cannot start (makemkvcon missing, database, staging missing, full or read-only)
  2  usage or config error
  3  no disc (the drive is empty or its tray is open)
  4  a title failed (nothing published; the reason is in `status`)
  5  no title is at least --min-length long (nothing ripped)
  6  MakeMKV refuses to work: its beta key expired / version too old (nothing ripped)
  7  ripped, but not published yet (kept in STAGING/.rip-N; `media-rip run` publishes it)
  8  MakeMKV's disc scan failed or was cut short (nothing recorded; scan it again)

MakeMKV is driven in robot mode (`makemkvcon -r`): docs/adr/0007-media-rip-makemkv-robot-mode.md.
"""

from __future__ import annotations

import argparse
import csv
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import sqlite3
import stat
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
    tcount: int | None = None  # TCOUNT: a disc scan prints it once it has the titles; None: cut short

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
            elif kind == "TCOUNT" and f:
                scan.tcount = int(f[0])
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


def scan_problem(source: str, scan: Scan, rc: int, stderr: str = "") -> str:
    """Why this `makemkvcon -r info SOURCE` output cannot be trusted, or '' when it can.

    A killed run (negative status), a failed disc scan (exit status not 0) or one cut short (no
    TCOUNT line, fewer titles than TCOUNT) says nothing about the disc: it must not be taken for
    "no title long enough", nor start a rip. The drive list (disc:9999) is whole when its DRV
    lines are there (MakeMKV documents no exit status for it; a killed run is caught first).
    """
    last = (scan.messages[-1][1] if scan.messages else "") or stderr.strip()[-200:]
    detail = f" (last message: {last})" if last else ""
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        return f"makemkvcon info {source} was killed by {name} before it finished{detail}"
    if scan.key_expired():
        return ""  # the refusal is reported as such (exit 6, homelab-media:makemkvKey)
    if source == "disc:9999":
        if not scan.drives:
            return f"makemkvcon info disc:9999 listed no drive (exit status {rc}){detail}"
        return ""
    if not scan.titles and any(c == MSG_OPEN_FAILED for c, _ in scan.messages):
        return ""  # no disc to read: told as such (exit 3)
    if rc != 0:
        return f"makemkvcon info {source} failed with exit status {rc}{detail}"
    if scan.tcount is None:
        return f"makemkvcon info {source} ended without its TCOUNT line: the scan was cut short{detail}"
    if scan.tcount != len(scan.titles):
        return (f"makemkvcon info {source} announced {scan.tcount} title(s) but described {len(scan.titles)}: "
                f"the scan was cut short{detail}")
    return ""


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


# --- which drive ----------------------------------------------------------------------------

def _natural(name: str) -> list:
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
            names = sorted((n for n in os.listdir(base) if n.startswith("sg")), key=_natural)
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
            nodes = sorted((n for n in os.listdir(self.dev) if re.fullmatch(r"sr\d+", n)), key=_natural)
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
                                    text=True, errors="replace", preexec_fn=_PREEXEC, start_new_session=True)
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
            self._finish(rip_id, "failed", reason, EXIT_START)
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
                    _remove_workdir(workdir, cfg.staging)  # MakeMKV's own failure: the only case a rip is removed
                except OSError as exc:
                    problem += f"; the partial rip {workdir} could not be removed: {exc}"
                self._finish(rip_id, "failed", problem, EXIT_FAILED)
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
                self._finish(rip_id, "failed", problem, EXIT_FAILED)
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
        step, total = "reading the rip", 0
        try:
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
        self._finish(rip_id, "done", "", EXIT_OK, folder=folder, nbytes=total)
        return folder, len(files), total

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def _record(self, fp: str, scan: Scan, name: str, state: str, reason: str, code: int) -> None:
        if self.store is not None:
            self.store.record(fp, scan.label, name, state, reason, code, scan.titles)
            self._changed()

    def _finish(self, rip_id: int | None, state: str, reason: str, code: int, folder: str = "",
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
                                    preexec_fn=_PREEXEC, start_new_session=True)
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
_WORKDIR_NAME = re.compile(re.escape(WORK_PREFIX) + r"(?:nodb-)?\d+(?:-\d+)?")


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

    def __init__(self, cfg: config_mod.RipConfig, sysfs: str = "/sys", dev: str = "/dev"):
        self.cfg = cfg
        self.sysfs, self.dev = sysfs, dev  # where the drive is looked up (tests: fake trees)
        self.stop = threading.Event()
        self.store: RipStore | None = None
        self.ripper: Ripper | None = None
        self.last_state: int | None = None
        self.handled_present = False  # the disc now in the drive was handled (or seen at start)
        self.last_poll = 0.0
        self.drive_state_now = -1
        self.resume: dict[str, dict] = {}  # fingerprint -> a rip interrupted by a restart
        self.last_error = ""  # what keeps media-rip from ripping now (pool, drive); the status file shows it
        self.scan_error = ""
        self.retry_seconds = RETRY_SECONDS
        self.rescan_at: float | None = None  # monotonic time to scan again the disc whose scan failed
        self.retry_scan: Scan | None = None  # the disc whose rip could not start (pool full): retried, not rescanned
        self.rip_error = ""  # why that rip could not start, said (and notified) once
        self.next_publish = 0.0  # monotonic time of the next try of the rips a file error held back
        self.status = StatusFile(cfg)
        # media-rip's own registry: a collector that reads the rip store at each scrape
        self.registry = new_registry(RipCollector(self.metrics_families))

    def request_stop(self, *_args) -> None:
        self.stop.set()
        if self.ripper is not None:
            self.ripper.stop()

    def run(self) -> int:
        cfg = self.cfg
        os.makedirs(os.path.dirname(cfg.db), exist_ok=True)  # the container's own disk, never the pool
        lock = InstanceLock(cfg.db, "media-rip")
        lock.acquire()
        self.store = RipStore(cfg.db)
        notifier = Notifier(cfg.apprise_urls, log.warning)
        self.ripper = Ripper(cfg, self.store, notifier, self.sysfs, self.dev)
        self.ripper.on_change = self.publish_status
        server = None
        heartbeat = threading.Thread(target=self._heartbeat, daemon=True, name="status-file")
        try:
            if cfg.metrics_port:
                server = serve(self.registry, cfg.metrics_bind, cfg.metrics_port)
                log.info("metrics on http://%s:%d/metrics", cfg.metrics_bind, server.port)
            log.info("media-rip %s: drive %s, staging %s, min length %s, auto-rip %s, eject %s, %s",
                     __version__, cfg.device or f"{cfg.drive!r} (looked up at each poll)", cfg.staging,
                     fmt_time(cfg.min_length), cfg.auto_rip, cfg.eject, notifier.describe())
            self.recover()
            if cfg.status_file:
                heartbeat.start()
                log.info("status file %s (the status page reads it)", cfg.status_file)
            while not self.stop.is_set():
                self.poll()
                self.retry_publishing()
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
        """After a crash: no partial rip stays in staging; a whole rip whose publish failed or was cut
        short is published (or kept for the next try); an interrupted rip is ripped again when its disc
        is still there. A working folder no row claims is never removed: it is reported, once per start."""
        assert self.store is not None
        for rip in self.store.unfinished():
            if rip["state"] == "publishing":
                self.publish_pending(rip, at_start=True)
                continue
            work, removed = rip["workdir"], "partial files removed"
            if work:
                try:
                    _remove_workdir(work, self.cfg.staging)  # the interrupted rip's own partial folder
                except OSError as exc:
                    removed = f"its partial folder {work} could not be removed ({exc}): delete it"
            self.store.update(rip["id"], state="failed", reason=f"interrupted (service restarted); {removed}; the "
                              "disc is ripped again if it is still in the drive",
                              exit_code=EXIT_FAILED, finished=time.time())
            log.warning("[rip %d] %r was interrupted by a restart: %s", rip["id"], rip["name"], removed)
            self.resume[rip["fingerprint"]] = rip
        self.next_publish = time.monotonic() + self.retry_seconds
        self.report_strays()

    def report_strays(self) -> None:
        """Working folders no row claims (a fresh or restored database, a rip by hand without one): they
        may hold whole rips, so they are left as they are and named in the log, once per start. A row's
        workdir column says which folder is its own (a failed rip's kept files stay with its reason)."""
        assert self.store is not None
        try:
            entries = sorted((e for e in os.listdir(self.cfg.staging) if _WORKDIR_NAME.fullmatch(e)), key=_natural)
        except OSError:
            return  # staging missing or unreadable: poll() says so
        # a done row's folder was renamed away: what is at its old workdir path now is not its own
        claimed = {os.path.abspath(r["workdir"]) for r in self.store.list()
                   if r["workdir"] and r["state"] in ("ripping", "publishing", "failed")}
        for entry in entries:
            path = os.path.join(self.cfg.staging, entry)
            if os.path.abspath(path) not in claimed:
                log.warning("%s: not in media-rip's database: left as it is; move it to %s/<name>/ to publish it, "
                            "or delete it", path, self.cfg.staging)

    def _held(self, rip: dict, reason: str, at_start: bool) -> None:
        """A whole rip that cannot be published now: kept (state publishing) with the reason, said once."""
        assert self.store is not None
        if reason != rip["reason"]:
            self.store.update(rip["id"], state="publishing", reason=reason)
            self.publish_status()
        if reason != rip["reason"] or at_start:  # once per problem (and once per start), not per try
            log.error("[rip %d] %r: %s", rip["id"], rip["name"], reason)

    def publish_pending(self, rip: dict, at_start: bool = False) -> None:
        """Publish a whole rip whose publish failed or was cut short; a file error keeps it for the next try."""
        assert self.ripper is not None and self.store is not None
        work = rip["workdir"]
        if not os.path.isdir(self.cfg.staging):
            return  # the pool is not mounted (poll() says so): its rip waits with it
        try:
            if not work:
                raise FileNotFoundError(errno.ENOENT, "no working folder recorded")
            os.stat(work)
        except FileNotFoundError:
            self._published_before(rip, at_start)  # gone: the rename happened before a restart, or not
            return
        except OSError as exc:  # EACCES, EIO, ENOTCONN (a mergerfs branch offline): there, not readable now
            self._held(rip, f"ripped, not published yet: its working folder {work} cannot be read now: {exc}; the "
                            f"whole rip is kept and `media-rip run` publishes it (at its start, then every "
                            f"{RETRY_SECONDS:.0f} s); fix: bring the pool's disk back (is a mergerfs branch offline?)",
                       at_start)
            return
        try:
            folder, count, total = self.ripper.publish_rip(rip["id"], work, rip["name"], reported=rip["reason"])
        except RipError as exc:
            if exc.reason != rip["reason"] or at_start:  # once per problem (and once per start), not per try
                log.error("[rip %d] %r: %s", rip["id"], rip["name"], exc.reason)
            return
        waited = f"it waited: {rip['reason']}" if rip["reason"] else "its publish was cut short by a restart"
        log.info("[rip %d] published %s: %d file(s), %.1f MB (%s)", rip["id"], folder, count, total / 1e6, waited)
        if rip["reason"]:  # the notifier was told it waits: tell it the wait is over
            self.ripper.notifier.send("Rip published", f"{rip['name']}\n{folder}\n{count} title(s), "
                                                       f"{total / 1e9:.2f} GB, kept until staging took it")

    def _published_before(self, rip: dict, at_start: bool) -> None:
        """A publishing row whose working folder is gone: done only when STAGING/<name> or '<name> (N)'
        holds its files (and no other row claims that folder); else failed, saying so, never done."""
        assert self.ripper is not None and self.store is not None
        staging, name, work = self.cfg.staging, rip["name"], rip["workdir"]
        files = [t["file"] for t in rip["titles"] if t.get("file")]
        try:
            entries = os.listdir(staging)
        except OSError as exc:
            self._held(rip, f"ripped, not published yet: staging {staging} cannot be read now: {exc}; `media-rip "
                            f"run` tries again every {RETRY_SECONDS:.0f} s", at_start)
            return
        others = {os.path.abspath(r["folder"]) for r in self.store.list() if r["folder"] and r["id"] != rip["id"]}
        pattern = re.compile(re.escape(name) + r"(?: \((\d+)\))?")
        found = []
        for entry in entries:
            m = pattern.fullmatch(entry)
            folder = os.path.join(staging, entry)
            if not m or os.path.abspath(folder) in others or not os.path.isdir(folder):
                continue
            if all(os.path.isfile(os.path.join(folder, f)) for f in files):
                found.append((int(m[1] or 1), folder))
        if found:
            folder = max(found)[1]  # several: the newest name (publish takes the first free one)
            try:
                total = sum(os.path.getsize(os.path.join(folder, f)) for f in files)
            except OSError:
                total = rip["bytes"]
            self.ripper._finish(rip["id"], "done", "", EXIT_OK, folder=folder, nbytes=total)
            log.info("[rip %d] %r was published before a restart: %s", rip["id"], name, folder)
            return
        reason = (f"its working folder {work or '(none recorded)'} is gone and no folder "
                  f"{os.path.join(staging, name)} (or '{name} (N)') holds its files "
                  f"({', '.join(files) or 'none named'}): "
                  f"it was moved or deleted outside media-rip (or media-pipeline took it already); nothing is left "
                  f"to publish: put the disc in again to rip it again")
        self.ripper._finish(rip["id"], "failed", reason, EXIT_FAILED)
        log.error("[rip %d] %r: %s", rip["id"], name, reason)
        self.ripper.notifier.send("Rip lost", f"{name}\n{reason}")

    def retry_publishing(self) -> None:
        """Every retry_seconds while the service runs: publish the whole rips a file error held back."""
        assert self.store is not None
        now = time.monotonic()
        if now < self.next_publish:
            return
        self.next_publish = now + self.retry_seconds
        for rip in self.store.unfinished():
            if rip["state"] == "publishing":
                self.publish_pending(rip)

    def _report(self, problem: str) -> None:
        """What keeps media-rip from ripping now: logged when it starts and when it ends, not at every poll."""
        if problem and problem != self.last_error:
            log.error("%s", problem)
        elif not problem and self.last_error:
            log.info("problem gone: %s", self.last_error)
        self.last_error = problem

    def poll(self) -> None:
        assert self.ripper is not None and self.store is not None
        self.last_poll = time.time()
        problem = "" if os.path.isdir(self.cfg.staging) else (
            f"staging {self.cfg.staging} does not exist: is the pool mounted? media-rip waits and rips nothing "
            f"until it appears (it never creates it: a rip would fill the container's root disk); fix: mount the "
            f"pool in the ripper container, or set \"staging\" in media-rip's config ({config_mod.RIP_DEFAULT_PATH})")
        before = self.ripper.device
        state, label = DRIVE_NONE, ""
        if not problem:
            problem = self.ripper.find_device()
        if not problem:
            try:
                state, label, _ = self.ripper.drive_state()
            except RipError as exc:
                problem = exc.reason
        if problem:
            if not self.stop.is_set():  # a drive list killed by the stop request is no problem
                self._report(problem)
            self.drive_state_now, self.last_state = -1, None
            return
        self._report("")
        if self.ripper.device != before:  # another node now: what is in it was not handled under this name
            self.last_state = None
        self.drive_state_now = state
        if state != self.last_state:
            log.info("drive %s: %s%s", self.ripper.device, _STATE_NAMES.get(state, str(state)),
                     f" ({label})" if label else "")
        changed = state != self.last_state
        self.last_state = state
        if state != DRIVE_INSERTED:
            self.handled_present, self.rescan_at, self.retry_scan = False, None, None
            return
        rescan = self.rescan_at is not None and time.monotonic() >= self.rescan_at
        if not changed and self.handled_present and not rescan:
            return
        retry = None if changed else self.retry_scan  # another disc (or node) is scanned afresh
        self.handled_present, self.rescan_at, self.retry_scan = True, None, None
        self.handle_disc(retry)

    def handle_disc(self, retry: Scan | None = None) -> None:
        """The disc in the drive: scanned (or `retry`, the scan of the disc whose rip could not start), ripped."""
        ripper, store, cfg = self.ripper, self.store, self.cfg
        try:
            scan = retry if retry is not None else ripper.scan_disc()
        except RipError as exc:
            if self.stop.is_set():
                log.info("scan of the disc in %s interrupted by shutdown: nothing recorded, scanned again at the "
                         "next start", ripper.device)
                return
            if exc.reason != self.scan_error:  # once per problem, not once per try
                log.error("%s", exc.reason)
            self.scan_error = exc.reason
            if exc.code == EXIT_SCAN:  # unrecorded: scanned again, not at every poll
                self.rescan_at = time.monotonic() + self.retry_seconds
            return
        self.scan_error = ""
        fp, name = scan.fingerprint(), disc_title(scan)
        latest = store.latest(fp)
        resume = self.resume.pop(fp, None)
        if latest is not None and latest["state"] == "done":
            log.info("disc %r was ripped already (rip %d, %s): not ripping it twice", name, latest["id"],
                     latest["folder"])
            self.maybe_eject()
            return
        if latest is not None and latest["state"] == "publishing":
            log.info("disc %r was ripped already (rip %d, kept in %s until it is published): not ripping it twice",
                     name, latest["id"], latest["workdir"])
            self.maybe_eject()
            return
        if not cfg.auto_rip:
            log.info("disc %r is in the drive; auto_rip is off: rip it with `media-rip once`", name)
            return
        try:
            ripper.rip_disc(scan, resume=resume)
        except RipError as exc:
            if exc.retry:
                # nothing ripped (the pool refused the working folder): the disc stays in, its row is
                # taken up again at the next try (RETRY_SECONDS), said and notified once per problem
                if exc.reason != self.rip_error:
                    log.error("rip of %r not started: %s", name, exc.reason)
                    ripper.notifier.send("Rip not started", f"{name}\n{exc.reason}")
                self.rip_error = exc.reason
                failed = store.latest(fp)
                if failed is not None and failed["state"] == "failed":
                    self.resume[fp] = failed
                self.retry_scan, self.rescan_at = scan, time.monotonic() + self.retry_seconds
                return
            self.rip_error = ""
            if exc.code == EXIT_PUBLISH:
                log.error("rip of %r: %s", name, exc.reason)
            elif self.stop.is_set():
                log.info("rip of %r interrupted by shutdown; partial files removed, ripped again at the next start",
                         name)
                return
            else:
                log.error("rip of %r failed (%s): %s", name, EXIT_NAMES.get(exc.code, exc.code), exc.reason)
                if exc.code in (EXIT_FAILED, EXIT_KEY):
                    ripper.notifier.send("Rip failed", f"{name}\n{exc.reason}")
        else:
            self.rip_error = ""
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
        return {"device": self.ripper.device if self.ripper else self.cfg.device, "state": self.drive_state_now,
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
                                 "5 no title long enough, 6 MakeMKV key expired, 7 ripped but not published yet, "
                                 "8 the disc scan failed")
    drive = once.add_mutually_exclusive_group()
    drive.add_argument("--device", help="the drive's node, e.g. /dev/sr0 (default from the config)")
    drive.add_argument("--drive", metavar="SELECTOR",
                       help="the drive: auto (the first), or a /dev/disk/by-id name, model or serial")
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
            if args.drive is not None:  # a drive by name: looked up, not the config's fixed node
                over.update(drive=args.drive, device="")
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
                  "(systemctl stop media-rip)", cfg.device or f"drive {cfg.drive!r}")
        return EXIT_START
    except (OSError, sqlite3.Error) as exc:
        log.warning("not recording this rip (%s: %s)", cfg.db, exc)
    ripper = Ripper(cfg, store, Notifier(cfg.apprise_urls, log.warning))
    if store is not None:  # the page sees a rip by hand too (drive state: unknown, the service is stopped)
        status = StatusFile(cfg)
        drive = {"state": -1, "state_name": "unknown", "error": "", "last_poll": 0.0}
        ripper.on_change = lambda: status.publish(store, {**drive, "device": ripper.device, "current": ripper.current})
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
    if eject and code in (EXIT_OK, EXIT_FAILED, EXIT_NO_TITLE, EXIT_PUBLISH):
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
