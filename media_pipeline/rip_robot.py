"""MakeMKV's robot mode read: the drive list, a disc scan (`makemkvcon -r info`), a copy's messages.

Parsing only: media_pipeline/ripper.py runs makemkvcon and acts on what these say. Why robot mode,
and where the codes come from: docs/adr/0007-media-rip-makemkv-robot-mode.md.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import signal
from dataclasses import dataclass, field

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
