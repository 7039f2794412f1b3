"""The job table (SQLite): one row per rip version, so nothing is lost or done twice.

A rip version is (source path, size, mtime): the same file seen again is the same job;
a re-ripped file under the same name is a new one. States:

    queued -> running -> done
                      -> queued   (retry after a failure, or a restart while running)
                      -> failed   (bad input, or max_attempts used up)

`stage` records how far a running job got ("encoding", "finalizing") so a restart
can tell an interrupted encode (redo it) from an interrupted publish (finish it).
`out_stamp` ("inode:size:mtime_ns" of the finished temp file, written together with
stage=finalizing) lets a restart tell the file this job wrote from any other file
under the library name before it marks the job done or deletes a source.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from dataclasses import dataclass

STATES = ("queued", "running", "done", "failed")
SCHEMA_VERSION = 2
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id             INTEGER PRIMARY KEY,
    source         TEXT    NOT NULL,
    size           INTEGER NOT NULL,
    mtime_ns       INTEGER NOT NULL,
    state          TEXT    NOT NULL DEFAULT 'queued'
                           CHECK (state IN ('queued', 'running', 'done', 'failed')),
    stage          TEXT    NOT NULL DEFAULT '',
    attempts       INTEGER NOT NULL DEFAULT 0,
    dest           TEXT,
    reason         TEXT    NOT NULL DEFAULT '',
    not_before     REAL    NOT NULL DEFAULT 0,
    pid            INTEGER,
    progress       REAL    NOT NULL DEFAULT 0,
    created        REAL    NOT NULL,
    updated        REAL    NOT NULL,
    started        REAL,
    finished       REAL,
    media_seconds  REAL    NOT NULL DEFAULT 0,
    encode_seconds REAL    NOT NULL DEFAULT 0,
    fps            REAL    NOT NULL DEFAULT 0,
    source_removed INTEGER NOT NULL DEFAULT 0,
    out_stamp      TEXT    NOT NULL DEFAULT '',
    UNIQUE (source, size, mtime_ns)
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, not_before, id);
"""


@dataclass(frozen=True)
class Job:
    id: int
    source: str
    size: int
    mtime_ns: int
    state: str
    stage: str
    attempts: int
    dest: str | None
    reason: str
    not_before: float
    pid: int | None
    progress: float
    created: float
    updated: float
    started: float | None
    finished: float | None
    media_seconds: float
    encode_seconds: float
    fps: float
    source_removed: int
    out_stamp: str = ""  # absent in a schema-1 database opened read-only

    def to_json(self) -> dict:
        return dict(self.__dict__)


class JobStore:
    """Thread-safe access to the job table (one connection, one lock, WAL for readers)."""

    def __init__(self, path: str, readonly: bool = False):
        self.path = path
        self._lock = threading.RLock()
        self._db = connect(path, readonly)
        if not readonly:
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RuntimeError(f"{path}: job database is from a newer media-pipeline (schema {version})")
            self._db.executescript(_SCHEMA)
            columns = {r[1] for r in self._db.execute("PRAGMA table_info(jobs)")}
            if "out_stamp" not in columns:  # schema 1 -> 2
                self._db.execute("ALTER TABLE jobs ADD COLUMN out_stamp TEXT NOT NULL DEFAULT ''")
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self._db.row_factory = sqlite3.Row

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- reading ---------------------------------------------------------------------

    def get(self, job_id: int) -> Job | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        return Job(**dict(row)) if row else None

    def list_jobs(self, state: str | None = None, limit: int | None = None) -> list[Job]:
        sql, args = "SELECT * FROM jobs", []
        if state:
            sql += " WHERE state=?"
            args.append(state)
        sql += " ORDER BY id DESC" if limit else " ORDER BY id"
        if limit:
            sql += f" LIMIT {int(limit)}"
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        jobs = [Job(**dict(r)) for r in rows]
        return sorted(jobs, key=lambda j: j.id)

    def known_keys(self) -> set[tuple[str, int, int]]:
        with self._lock:
            rows = self._db.execute("SELECT source, size, mtime_ns FROM jobs").fetchall()
        return {(r[0], r[1], r[2]) for r in rows}

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(STATES, 0)
        with self._lock:
            for state, n in self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state"):
                out[state] = n
        return out

    def totals(self) -> dict[str, float]:
        """Seconds of media and wall-clock seconds of successful encodes; last finished fps."""
        with self._lock:
            media, wall = self._db.execute(
                "SELECT COALESCE(SUM(media_seconds),0), COALESCE(SUM(encode_seconds),0) "
                "FROM jobs WHERE state='done'").fetchone()
            row = self._db.execute(
                "SELECT fps, media_seconds, encode_seconds FROM jobs WHERE state='done' "
                "ORDER BY finished DESC LIMIT 1").fetchone()
            oldest = self._db.execute("SELECT MIN(created) FROM jobs WHERE state='queued'").fetchone()[0]
        speed = float(row[1]) / float(row[2]) if row and row[2] else 0.0
        return {"media_seconds": float(media), "encode_seconds": float(wall),
                "last_fps": float(row[0]) if row else 0.0, "last_speed": speed,
                "oldest_queued": float(oldest) if oldest is not None else None}

    def has_claimable(self, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM jobs WHERE state='queued' AND not_before<=? LIMIT 1", (now,)).fetchone()
        return row is not None

    # -- writing ---------------------------------------------------------------------

    def enqueue(self, source: str, size: int, mtime_ns: int) -> int | None:
        """Queue a rip version; None when it is already known (any state)."""
        now = time.time()
        with self._lock:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO jobs (source, size, mtime_ns, created, updated) VALUES (?,?,?,?,?)",
                (source, size, mtime_ns, now, now))
            return cur.lastrowid if cur.rowcount == 1 else None

    def claim(self, now: float | None = None) -> Job | None:
        """Atomically take the oldest ready queued job: it becomes running, one more attempt."""
        now = time.time() if now is None else now
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT id FROM jobs WHERE state='queued' AND not_before<=? ORDER BY id LIMIT 1",
                    (now,)).fetchone()
                if row is None:
                    self._db.execute("COMMIT")
                    return None
                self._db.execute(
                    "UPDATE jobs SET state='running', stage='', attempts=attempts+1, started=?, "
                    "updated=?, pid=NULL, progress=0 WHERE id=?", (now, now, row[0]))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return self.get(row[0])

    def update(self, job_id: int, **fields) -> None:
        allowed = {"stage", "dest", "pid", "progress", "reason", "source_removed", "fps", "out_stamp"}
        bad = set(fields) - allowed
        if bad:
            raise ValueError(f"cannot update {sorted(bad)}")
        if not fields:
            return
        cols = ", ".join(f"{k}=?" for k in fields)
        with self._lock:
            self._db.execute(f"UPDATE jobs SET {cols}, updated=? WHERE id=?",
                             (*fields.values(), time.time(), job_id))

    def finish(self, job_id: int, media_seconds: float, encode_seconds: float, fps: float,
               reason: str = "") -> None:
        now = time.time()
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET state='done', stage='', finished=?, updated=?, media_seconds=?, "
                "encode_seconds=?, fps=?, reason=?, pid=NULL, progress=1 WHERE id=?",
                (now, now, media_seconds, encode_seconds, fps, reason, job_id))

    def fail(self, job_id: int, reason: str, *, retry: bool, max_attempts: int,
             delay: float = 0.0) -> str:
        """Record a failure; requeue while attempts remain and `retry`. Returns the new state."""
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                attempts = self._db.execute("SELECT attempts FROM jobs WHERE id=?", (job_id,)).fetchone()[0]
                state = "queued" if retry and attempts < max_attempts else "failed"
                self._db.execute(
                    "UPDATE jobs SET state=?, stage='', reason=?, not_before=?, updated=?, finished=?, "
                    "pid=NULL, progress=0 WHERE id=?",
                    (state, reason, now + delay if state == "queued" else 0, now,
                     now if state == "failed" else None, job_id))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return state

    def requeue(self, job_id: int, reason: str, refund_attempt: bool) -> None:
        """Back to the queue without a verdict (shutdown, restart); optionally not counting the try."""
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET state='queued', stage='', reason=?, pid=NULL, progress=0, not_before=0, "
                "attempts=MAX(attempts-?, 0), updated=? WHERE id=?",
                (reason, 1 if refund_attempt else 0, time.time(), job_id))

    def reset_failed(self, job_id: int) -> bool:
        """Operator retry: a failed job back to queued with fresh attempts."""
        with self._lock:
            cur = self._db.execute(
                "UPDATE jobs SET state='queued', attempts=0, not_before=0, reason='retry requested', "
                "updated=? WHERE id=? AND state='failed'", (time.time(), job_id))
            return cur.rowcount == 1


def connect(path: str, readonly: bool = False) -> sqlite3.Connection:
    """The store's connection settings, shared by media-pipeline's jobs and media-rip's rips:
    autocommit (explicit BEGIN IMMEDIATE where it matters), WAL so `status` reads while the
    service writes, synchronous=FULL so a power cut loses no committed state."""
    if readonly:
        uri = "file:" + _quote_uri(path) + "?mode=ro"
        return sqlite3.connect(uri, uri=True, timeout=30, isolation_level=None, check_same_thread=False)
    db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    return db


def _quote_uri(path: str) -> str:
    from urllib.parse import quote

    return quote(os.path.abspath(path))
