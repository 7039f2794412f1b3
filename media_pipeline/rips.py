"""media-rip's status file: one JSON format, written by media-rip, read by the status page.

media-rip (the ripper container) keeps its rips in a SQLite store of its own; the status page
runs in the transcoder container and cannot open it. Both containers mount the pool at the
same path, so media-rip publishes a snapshot on the pool (status_file, by default
STAGING/.media-rip/status.json; media-pipeline's scan skips hidden folders) after every
change of a rip and at least every poll, and the page reads it (rip_status_file):

  {"schema": 1, "version": "...", "written": <unix time>,
   "drive": {"device", "state", "state_name", "error", "current": {"id", "name", "progress", "eta"} | null},
   "rips": [rip_record(row), ...]}          # the newest STATUS_RIPS, newest first

rip_record() is also what `media-rip status --json` prints, so the two never drift apart.
The file is replaced atomically (a temp file in the same directory, then rename(2)): a
reader sees the old snapshot or the new one, never half of one. Nothing else on the pool is
touched. The reader is tolerant: a missing, corrupt or old file is shown as such on the page,
never an error.
"""

from __future__ import annotations

import json
import os
import tempfile
import time

SCHEMA = 1
STATUS_RIPS = 25          # rips in the file: the newest ones
STALE_SECONDS = 180.0     # older than this: media-rip is not running (it writes at least every 30 s)
MAX_BYTES = 4 * 1024 * 1024  # a status file larger than this is not ours

# The fields of one rip, with their type and the value when a row lacks it.
RIP_FIELDS: dict[str, tuple[type | tuple[type, ...], object]] = {
    "id": (int, 0),
    "fingerprint": (str, ""),
    "label": (str, ""),
    "name": (str, ""),
    "state": (str, ""),
    "attempts": (int, 0),
    "workdir": (str, ""),
    "folder": (str, ""),
    "titles": (list, []),
    "bytes": (int, 0),
    "progress": ((int, float), 0.0),
    "reason": (str, ""),
    "exit_code": ((int, type(None)), None),
    "created": ((int, float, type(None)), None),
    "updated": ((int, float, type(None)), None),
    "started": ((int, float, type(None)), None),
    "finished": ((int, float, type(None)), None),
}


def rip_record(row: dict) -> dict:
    """One rip as `media-rip status --json` prints it and the status file holds it: exactly the
    RIP_FIELDS, each of its type (a missing or mistyped value takes the default)."""
    out = {}
    for key, (kind, default) in RIP_FIELDS.items():
        value = row.get(key, default)
        if isinstance(value, bool) or not isinstance(value, kind):
            value = list(default) if isinstance(default, list) else default
        out[key] = value
    out["titles"] = [t for t in out["titles"] if isinstance(t, dict)]
    return out


def snapshot(rows: list[dict], drive: dict, now: float | None = None, version: str = "") -> dict:
    """The status file's contents: the newest STATUS_RIPS rips (newest first) and the drive."""
    newest = sorted(rows, key=lambda r: r.get("id") or 0, reverse=True)[:STATUS_RIPS]
    return {"schema": SCHEMA, "version": version, "written": round(time.time() if now is None else now, 3),
            "drive": dict(drive), "rips": [rip_record(r) for r in newest]}


def write_status(path: str, data: dict) -> None:
    """Replace `path` with `data` as JSON, atomically: a temp file in the same directory, fsync,
    rename(2). Creates that directory only, never its parents: STAGING/.media-rip is made when
    STAGING exists; an unmounted pool's staging is not recreated on the container's root disk
    (media-rip's "pool mounted" check would pass, and rips would fill that disk). Raises OSError
    (the caller logs it)."""
    directory = os.path.dirname(path)
    try:
        os.mkdir(directory)
    except FileExistsError:
        if not os.path.isdir(directory):
            raise
    fd, tmp = tempfile.mkstemp(prefix=".status-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, ensure_ascii=False, indent=1)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # the page runs as the same user in another container; readable anyway
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)  # only our own temp file
        except OSError:
            pass
        raise


def read_status(path: str, now: float | None = None, stale_after: float = STALE_SECONDS) -> dict:
    """What the page shows about rips. Always a dict:

      {"path", "state": "off" | "missing" | "corrupt" | "stale" | "ok", "problem": str,
       "written": float | None, "age": float | None, "version": str, "drive": dict, "rips": [...]}

    "stale" keeps the last rips and drive seen (media-rip stopped writing: the service is down
    or the pool is not mounted in the ripper); "corrupt" names what is wrong with the file.
    """
    out = {"path": path, "state": "off", "problem": "", "written": None, "age": None, "version": "",
           "drive": {}, "rips": []}
    if not path:
        out["problem"] = "rip_status_file is off"
        return out
    now = time.time() if now is None else now
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
    except FileNotFoundError:
        return {**out, "state": "missing", "problem": f"no status file at {path} (media-rip has not written it: "
                                                       f"is media-rip installed and the pool mounted in the ripper?)"}
    except OSError as exc:
        return {**out, "state": "missing", "problem": f"cannot read {path}: {exc.strerror or exc}"}
    try:
        if len(raw) > MAX_BYTES:
            raise ValueError(f"larger than {MAX_BYTES} bytes")
        data = json.loads(raw.decode("utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"a JSON {type(data).__name__}, not an object")
        if data.get("schema") != SCHEMA:
            raise ValueError(f"schema {data.get('schema')!r}, this page reads schema {SCHEMA}")
        written = data.get("written")
        if isinstance(written, bool) or not isinstance(written, (int, float)):
            raise ValueError("no 'written' time")
        rips, drive = data.get("rips"), data.get("drive", {})
        if not isinstance(rips, list) or not all(isinstance(r, dict) for r in rips):
            raise ValueError("'rips' is not a list of objects")
        if not isinstance(drive, dict):
            raise ValueError("'drive' is not an object")
    except (UnicodeDecodeError, ValueError) as exc:
        return {**out, "state": "corrupt", "problem": f"{path} is not a media-rip status file: {exc}"}
    age = max(0.0, now - float(written))
    out.update(written=float(written), age=age, version=str(data.get("version", "")), drive=drive,
               rips=[rip_record(r) for r in rips])
    if age > stale_after:
        out.update(state="stale", problem=f"media-rip last wrote {path} {int(age)} s ago: is media-rip running "
                                          f"in the ripper (systemctl status media-rip)?")
    else:
        out["state"] = "ok"
    return out
