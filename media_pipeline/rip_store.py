"""media-rip's store: the rips table in SQLite, one row per disc seen (ripping, publishing, done,
failed, skipped), which media-rip reads back after a restart and `media-rip status` lists."""

from __future__ import annotations

import json
import sqlite3
import threading
import time

from .jobs import connect
from .rip_robot import Title

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
