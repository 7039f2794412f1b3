"""The job table (SQLite): one row per rip version, so nothing is lost or done twice.

A rip version is (source path, size, mtime): the same file seen again is the same job;
a re-ripped file under the same name is a new one. States:

    queued -> running -> done
                      -> queued   (retry after a failure, or a restart while running)
                      -> failed   (bad input, or max_attempts used up)
    queued -> cancelled           (an operator's cancel: never claimed, its rip stays in staging,
                                   and the scan does not queue it again: its key stays known)
    failed, cancelled -> queued   (an operator's retry, reset_failed)

`priority` orders the queue: claim() takes the highest first, then the oldest (to_front() puts a
queued job ahead of every other).

`stage` records how far a running job got ("encoding", "finalizing") so a restart
can tell an interrupted encode (redo it) from an interrupted publish (finish it).
`out_stamp` ("inode:size:mtime_ns" of the finished temp file, written together with
stage=finalizing) lets a restart tell the file this job wrote from any other file
under the library name before it marks the job done or deletes a source.

This is the embedded store of jobqueue.JobQueue: one worker (common.InstanceLock), so its leases
never pass to another worker; `worker`, `lease_token` and `lease_until` are kept all the same so
that `status --json`, `workers` and the page read the same fields from either store
(pgstore.PgJobStore is the one for many workers).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass

from .jobqueue import LeaseLost, default_worker_name, ident, worker_state

STATES = ("queued", "running", "done", "failed", "cancelled")
SCHEMA_VERSION = 4
# The jobs table ({name}: jobs, or the new table of a schema 3 -> 4 rebuild: SQLite cannot
# change a CHECK constraint in place).
_JOBS_TABLE = """
CREATE TABLE IF NOT EXISTS {name} (
    id             INTEGER PRIMARY KEY,
    source         TEXT    NOT NULL,
    size           INTEGER NOT NULL,
    mtime_ns       INTEGER NOT NULL,
    state          TEXT    NOT NULL DEFAULT 'queued'
                           CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled')),
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
    worker         TEXT    NOT NULL DEFAULT '',
    lease_token    TEXT    NOT NULL DEFAULT '',
    lease_until    REAL    NOT NULL DEFAULT 0,
    partial        TEXT    NOT NULL DEFAULT '',
    lease_expiries INTEGER NOT NULL DEFAULT 0,
    priority       INTEGER NOT NULL DEFAULT 0,
    UNIQUE (source, size, mtime_ns)
);
"""
_SCHEMA = _JOBS_TABLE.format(name="jobs") + """
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, not_before, id);
CREATE TABLE IF NOT EXISTS workers (
    name      TEXT PRIMARY KEY,
    host      TEXT NOT NULL DEFAULT '',
    pid       INTEGER,
    encoder   TEXT NOT NULL DEFAULT '',
    job_id    INTEGER,
    fps       REAL NOT NULL DEFAULT 0,
    started   REAL NOT NULL DEFAULT 0,
    heartbeat REAL NOT NULL DEFAULT 0,
    stopped   INTEGER NOT NULL DEFAULT 0
);
"""
# Columns added after schema 1, with their definitions (ALTER TABLE on an older database).
_ADDED = {
    "out_stamp": "TEXT NOT NULL DEFAULT ''",  # schema 2
    "worker": "TEXT NOT NULL DEFAULT ''",  # schema 3: leases (jobqueue.py)
    "lease_token": "TEXT NOT NULL DEFAULT ''",
    "lease_until": "REAL NOT NULL DEFAULT 0",
    "partial": "TEXT NOT NULL DEFAULT ''",
    "lease_expiries": "INTEGER NOT NULL DEFAULT 0",
    "priority": "INTEGER NOT NULL DEFAULT 0",  # schema 4: to_front() (and the state cancelled)
}
UPDATABLE = {"stage", "dest", "pid", "progress", "reason", "source_removed", "fps", "out_stamp", "partial"}


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
    worker: str = ""  # who claimed it last (the one that did it, once done)
    lease_token: str = ""
    lease_until: float = 0.0
    partial: str = ""  # the temp file of the current attempt ("" = temp_path(dest))
    lease_expiries: int = 0  # times a worker's lease on it ran out and another took it over
    priority: int = 0  # claim() takes the highest first (to_front); absent before schema 4

    def to_json(self) -> dict:
        out = dict(self.__dict__)
        out.pop("lease_token", None)  # the fence, not information
        return out


class JobStore:
    """Thread-safe access to the job table (one connection, one lock, WAL for readers)."""

    def __init__(self, path: str, readonly: bool = False, *, worker: str = "", lease_seconds: float = 60.0):
        self.path = path
        self.worker = worker or default_worker_name()
        self.lease_seconds = float(lease_seconds)
        self._lock = threading.RLock()
        self._db = connect(path, readonly)
        self._instance = None
        if not readonly:
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RuntimeError(f"{path}: job database is from a newer media-pipeline (schema {version})")
            self._db.executescript(_SCHEMA)
            columns = {r[1] for r in self._db.execute("PRAGMA table_info(jobs)")}
            for name, definition in _ADDED.items():  # schema 1 -> 2 -> 3 -> 4
                if name not in columns:
                    self._db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {definition}")
            self._allow_cancelled()  # schema 4
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self._db.row_factory = sqlite3.Row

    def _allow_cancelled(self) -> None:
        """Schema 3 -> 4: the state check of an older table refuses 'cancelled'. SQLite changes no
        CHECK in place, so the table is rebuilt (its rows copied as they are, in one transaction:
        all of it or nothing, the ids kept)."""
        sql = self._db.execute("SELECT sql FROM sqlite_master WHERE type='table' AND name='jobs'").fetchone()[0]
        if "'cancelled'" in sql:
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute("DROP TABLE IF EXISTS jobs_v4")
            self._db.execute(_JOBS_TABLE.format(name="jobs_v4"))
            cols = ", ".join(r[1] for r in self._db.execute("PRAGMA table_info(jobs)"))
            self._db.execute(f"INSERT INTO jobs_v4 ({cols}) SELECT {cols} FROM jobs")
            self._db.execute("DROP TABLE jobs")
            self._db.execute("ALTER TABLE jobs_v4 RENAME TO jobs")
            self._db.execute("CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, not_before, id)")
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        with self._lock:
            self._db.close()
        if self._instance is not None:
            self._instance.release()
            self._instance = None

    def describe(self) -> str:
        return f"SQLite {self.path}"

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
        """Atomically take the ready queued job of the highest priority, the oldest of those: it
        becomes running, one more attempt."""
        now = time.time() if now is None else now
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT id FROM jobs WHERE state='queued' AND not_before<=? ORDER BY priority DESC, id LIMIT 1",
                    (now,)).fetchone()
                if row is None:
                    self._db.execute("COMMIT")
                    return None
                self._db.execute(
                    "UPDATE jobs SET state='running', stage='', attempts=attempts+1, started=?, "
                    "updated=?, pid=NULL, progress=0, worker=?, lease_token=?, lease_until=?, partial='' "
                    "WHERE id=?", (now, now, self.worker, uuid.uuid4().hex, time.time() + self.lease_seconds,
                                   row[0]))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return self.get(row[0])

    @staticmethod
    def _fence(job) -> tuple[str, tuple]:
        """The WHERE clause of a write for `job`: its id, and its lease token when it has one."""
        job_id, token = ident(job)
        if token is None:
            return "id=?", (job_id,)
        return "id=? AND lease_token=? AND state='running'", (job_id, token)

    def update(self, job, **fields) -> bool:
        bad = set(fields) - UPDATABLE
        if bad:
            raise ValueError(f"cannot update {sorted(bad)}")
        if not fields:
            return True
        cols = ", ".join(f"{k}=?" for k in fields)
        where, args = self._fence(job)
        with self._lock:
            cur = self._db.execute(f"UPDATE jobs SET {cols}, updated=? WHERE {where}",
                                   (*fields.values(), time.time(), *args))
        return cur.rowcount == 1

    def finish(self, job, media_seconds: float, encode_seconds: float, fps: float,
               reason: str = "") -> bool:
        now = time.time()
        where, args = self._fence(job)
        with self._lock:
            cur = self._db.execute(
                "UPDATE jobs SET state='done', stage='', finished=?, updated=?, media_seconds=?, "
                f"encode_seconds=?, fps=?, reason=?, pid=NULL, progress=1, lease_token='' WHERE {where}",
                (now, now, media_seconds, encode_seconds, fps, reason, *args))
        return cur.rowcount == 1

    def fail(self, job, reason: str, *, retry: bool, max_attempts: int,
             delay: float = 0.0) -> str | None:
        """Record a failure; requeue while attempts remain and `retry`. Returns the new state
        (None: the lease was lost, nothing written)."""
        now = time.time()
        where, args = self._fence(job)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(f"SELECT attempts FROM jobs WHERE {where}", args).fetchone()
                if row is None:
                    self._db.execute("COMMIT")
                    return None
                state = "queued" if retry and row[0] < max_attempts else "failed"
                self._db.execute(
                    "UPDATE jobs SET state=?, stage='', reason=?, not_before=?, updated=?, finished=?, "
                    f"pid=NULL, progress=0, lease_token='' WHERE {where}",
                    (state, reason, now + delay if state == "queued" else 0, now,
                     now if state == "failed" else None, *args))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return state

    def requeue(self, job, reason: str, refund_attempt: bool) -> bool:
        """Back to the queue without a verdict (shutdown, restart); optionally not counting the try."""
        where, args = self._fence(job)
        with self._lock:
            cur = self._db.execute(
                "UPDATE jobs SET state='queued', stage='', reason=?, pid=NULL, progress=0, not_before=0, "
                f"attempts=MAX(attempts-?, 0), updated=?, lease_token='' WHERE {where}",
                (reason, 1 if refund_attempt else 0, time.time(), *args))
        return cur.rowcount == 1

    def reset_failed(self, job_id: int) -> bool:
        """Operator retry: a failed (or cancelled) job back to queued with fresh attempts."""
        with self._lock:
            cur = self._db.execute(
                "UPDATE jobs SET state='queued', attempts=0, not_before=0, reason='retry requested', "
                "finished=NULL, updated=? WHERE id=? AND state IN ('failed', 'cancelled')", (time.time(), job_id))
            return cur.rowcount == 1

    def cancel(self, job_id: int) -> bool:
        """Operator cancel: a queued job becomes cancelled (False: it is not queued, or unknown).
        It is never claimed; its rip stays in staging and its key stays known, so the scan does not
        queue it again; reset_failed (retry) puts it back in the queue."""
        now = time.time()
        with self._lock:
            cur = self._db.execute(
                "UPDATE jobs SET state='cancelled', reason='cancelled by an operator', not_before=0, "
                "finished=?, updated=? WHERE id=? AND state='queued'", (now, now, job_id))
            return cur.rowcount == 1

    def to_front(self, job_id: int) -> bool:
        """Operator "to the front": a queued job is claimed next, before every other queued job
        (a priority above theirs; a retry delay it was waiting out is dropped). False: not queued."""
        with self._lock:
            cur = self._db.execute(
                "UPDATE jobs SET priority=(SELECT COALESCE(MAX(priority), 0) + 1 FROM jobs WHERE state='queued'), "
                "not_before=0, updated=? WHERE id=? AND state='queued'", (time.time(), job_id))
            return cur.rowcount == 1

    # -- leases and coordination (one worker: jobqueue.JobQueue's single-worker case) ---

    def start_worker(self, encoder: str) -> None:
        """Claim the database for this run (common.InstanceLock: a second run is refused) and
        register the worker for `workers` and the page."""
        from .common import InstanceLock

        lock = InstanceLock(self.path)
        lock.acquire()
        self._instance = lock
        now = time.time()
        with self._lock:
            self._db.execute(
                "INSERT INTO workers (name, host, pid, encoder, started, heartbeat, stopped) VALUES (?,?,?,?,?,?,0) "
                "ON CONFLICT (name) DO UPDATE SET host=excluded.host, pid=excluded.pid, encoder=excluded.encoder, "
                "started=excluded.started, heartbeat=excluded.heartbeat, stopped=0, job_id=NULL, fps=0",
                (self.worker, _host(), os.getpid(), encoder, now, now))

    def stop_worker(self) -> None:
        with self._lock:
            self._db.execute("UPDATE workers SET stopped=1, job_id=NULL, fps=0 WHERE name=?", (self.worker,))
        if self._instance is not None:
            self._instance.release()
            self._instance = None

    def heartbeat(self, owned: list, status: dict) -> set[int]:
        """Renew the leases of the jobs this worker runs; the ids of those it no longer owns."""
        now = time.time()
        lost = set()
        with self._lock:
            for job in owned:
                cur = self._db.execute(
                    "UPDATE jobs SET lease_until=? WHERE id=? AND lease_token=? AND state='running'",
                    (now + self.lease_seconds, job.id, job.lease_token))
                if cur.rowcount != 1:
                    lost.add(job.id)
            self._db.execute("UPDATE workers SET heartbeat=?, job_id=?, fps=? WHERE name=?",
                             (now, status.get("job_id"), status.get("fps", 0.0), self.worker))
        return lost

    @contextmanager
    def publishing(self, job):
        """Publish only while this worker still owns the job (the token checked in the
        transaction that is open during the publish). Raises LeaseLost."""
        job_id, token = ident(job)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT lease_token, state FROM jobs WHERE id=?", (job_id,)).fetchone()
                if row is None or row[1] != "running" or (token is not None and row[0] != token):
                    raise LeaseLost(f"job {job_id} is no longer this worker's")
                self._db.execute("UPDATE jobs SET lease_until=? WHERE id=?",
                                 (time.time() + self.lease_seconds, job_id))
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def take_over_expired(self, startup: bool = False) -> list:
        """At start-up, every job left `running` (the file is this worker's alone, so they are
        its previous run's); later none: nobody else can hold a lease here."""
        if not startup:
            return []
        out = []
        with self._lock:
            for row in self._db.execute("SELECT id FROM jobs WHERE state='running' ORDER BY id").fetchall():
                self._db.execute("UPDATE jobs SET worker=?, lease_token=?, lease_until=? WHERE id=?",
                                 (self.worker, uuid.uuid4().hex, time.time() + self.lease_seconds, row[0]))
                out.append(self.get(row[0]))
        return out

    def temp_path(self, dest: str, job) -> str:
        """The encode's temp file: the classic `.NAME.mkv.partial` (one worker per database)."""
        from .transcode import temp_path

        return temp_path(dest)

    def is_scanner(self) -> bool:
        return True  # the only worker

    def listen(self, callback) -> None:
        pass  # the only worker enqueues: its loop dispatches right after the scan

    def workers(self) -> list[dict]:
        now = time.time()
        try:
            with self._lock:
                rows = self._db.execute("SELECT * FROM workers ORDER BY name").fetchall()
        except sqlite3.OperationalError:  # a database older than schema 3, opened read-only
            return []
        out = []
        for r in rows:
            d = dict(r)
            d["stopped"] = bool(d["stopped"])
            d["heartbeat_age"] = max(0.0, now - d["heartbeat"]) if d["heartbeat"] else None
            d["state"] = worker_state(d["heartbeat_age"], d["stopped"], self.lease_seconds)
            out.append(d)
        return out

    def lease_expiries(self) -> int:
        try:
            with self._lock:
                return int(self._db.execute("SELECT COALESCE(SUM(lease_expiries),0) FROM jobs").fetchone()[0])
        except sqlite3.OperationalError:  # older than schema 3, read-only
            return 0


def _host() -> str:
    import socket

    return socket.gethostname()


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
