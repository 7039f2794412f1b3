"""The job queue on PostgreSQL (jobqueue.JobQueue for many workers; docs/adr/0016).

One table of jobs like the SQLite store's (same columns, same states), claimed with
`FOR UPDATE SKIP LOCKED` (highest priority, then oldest); leases in the database's clock, renewed by each worker's heartbeat;
`pg_notify` on every enqueue/requeue wakes idle workers (LISTEN on a connection of its own);
a session advisory lock elects the one worker that scans staging, another on the worker's name
refuses a second run under the same name. psycopg 3.1 (Debian 12's python3-psycopg) is enough:
nothing newer is used.

PostgreSQL unreachable: reads and claims raise QueueUnavailable (the loop waits and asks again);
the writes that record a job's outcome, and the check before a publish, wait for the database
with backoff instead (a job is never failed because the queue was away). The outage and the
recovery are logged once each. After a reconnect, this worker takes over no other worker's job
until it has been connected for a whole lease: the others' heartbeats renew theirs first.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import threading
import time
from contextlib import contextmanager

import psycopg
from psycopg.rows import dict_row

from .jobqueue import LeaseLost, QueueUnavailable, default_worker_name, ident, worker_state
from .jobs import STATES, UPDATABLE, Job

CHANNEL = "media_pipeline_jobs"
# pg_advisory_lock keys (a pair of int4: the application, the purpose)
LOCK_APP = 0x6D70  # "mp"
LOCK_SCANNER, LOCK_SCHEMA = 1, 2
LOCK_WORKER = 3  # with the worker name's hash as a second key (below)
SCHEMA_VERSION = 2  # 2: the state cancelled, priority (to_front); _upgrade() brings a schema 1 queue there
NOW = "extract(epoch from clock_timestamp())::float8"
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS jobs (
    id             bigserial PRIMARY KEY,
    source         text    NOT NULL,
    size           bigint  NOT NULL,
    mtime_ns       bigint  NOT NULL,
    state          text    NOT NULL DEFAULT 'queued'
                           CONSTRAINT jobs_state_check
                           CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled')),
    stage          text    NOT NULL DEFAULT '',
    attempts       integer NOT NULL DEFAULT 0,
    dest           text,
    reason         text    NOT NULL DEFAULT '',
    not_before     float8  NOT NULL DEFAULT 0,
    pid            integer,
    progress       float8  NOT NULL DEFAULT 0,
    created        float8  NOT NULL,
    updated        float8  NOT NULL,
    started        float8,
    finished       float8,
    media_seconds  float8  NOT NULL DEFAULT 0,
    encode_seconds float8  NOT NULL DEFAULT 0,
    fps            float8  NOT NULL DEFAULT 0,
    source_removed integer NOT NULL DEFAULT 0,
    out_stamp      text    NOT NULL DEFAULT '',
    worker         text    NOT NULL DEFAULT '',
    lease_token    text    NOT NULL DEFAULT '',
    lease_until    float8  NOT NULL DEFAULT 0,
    partial        text    NOT NULL DEFAULT '',
    lease_expiries integer NOT NULL DEFAULT 0,
    priority       integer NOT NULL DEFAULT 0,
    UNIQUE (source, size, mtime_ns)
);
CREATE INDEX IF NOT EXISTS jobs_claim ON jobs (state, not_before, id);
CREATE TABLE IF NOT EXISTS workers (
    name      text PRIMARY KEY,
    host      text    NOT NULL DEFAULT '',
    pid       integer,
    encoder   text    NOT NULL DEFAULT '',
    job_id    bigint,
    fps       float8  NOT NULL DEFAULT 0,
    started   float8  NOT NULL DEFAULT 0,
    heartbeat float8  NOT NULL DEFAULT 0,
    stopped   integer NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS media_pipeline_meta (key text PRIMARY KEY, value text NOT NULL);
INSERT INTO media_pipeline_meta VALUES ('schema', '{SCHEMA_VERSION}') ON CONFLICT (key) DO NOTHING;
"""
_JOB_COLUMNS = tuple(Job.__dataclass_fields__)
BACKOFF_MAX = 5.0

log = logging.getLogger("media-pipeline")


def _name_key(name: str) -> int:
    """A stable int4 for the worker name (the advisory lock's second key)."""
    import zlib

    return zlib.crc32(name.encode("utf-8")) - (1 << 31)


def _job(row: dict | None) -> Job | None:
    return Job(**{k: row[k] for k in _JOB_COLUMNS}) if row else None


def safe_url(url: str) -> str:
    """The URL without a password (for logs)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}@{netloc}"))


class PgJobStore:
    """jobqueue.JobQueue on PostgreSQL (thread-safe: one connection behind a lock, plus one for LISTEN)."""

    def __init__(self, url: str, *, password: str | None = None, worker: str = "", lease_seconds: float = 60.0,
                 log: logging.Logger | None = None, connect_timeout: int = 5):
        self.url = url
        self.worker = worker or default_worker_name()
        self.lease_seconds = float(lease_seconds)
        self.log = log or logging.getLogger("media-pipeline")
        self._kwargs = {"autocommit": True, "connect_timeout": connect_timeout, "keepalives": 1,
                        "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3,
                        "application_name": f"media-pipeline {self.worker}"[:63]}
        if password is not None:
            self._kwargs["password"] = password
        self._lock = threading.RLock()
        self._conn: psycopg.Connection | None = None
        self._up_since = 0.0  # monotonic time of the current connection
        self._down_reason = ""  # "" = up (or never tried)
        self.stop = threading.Event()  # set by the service on shutdown: waiting writes give up
        self._scanner = False
        self._registered: str | None = None  # the encoder, once start_worker() ran
        self._listener: threading.Thread | None = None
        self._closing = threading.Event()
        self.backoff_max = min(BACKOFF_MAX, max(0.2, self.lease_seconds / 4))
        self._call(self._create_schema, wait=False)

    # -- connection ------------------------------------------------------------------

    def describe(self) -> str:
        return f"PostgreSQL {safe_url(self.url)} as worker {self.worker}"

    def _connect(self) -> psycopg.Connection:
        conn = psycopg.connect(self.url, row_factory=dict_row, **self._kwargs)
        return conn

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._drop()
            self._conn = self._connect()
            self._up_since = time.monotonic()
            self._scanner = False
            if self._registered is not None:  # a new session: its advisory locks are gone
                try:
                    self._lock_worker_name(self._conn)
                except RuntimeError:
                    pass  # our old session is still closing on the server (a cut network): not fatal mid-run
        return self._conn

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001 - it is broken already
                pass
        self._conn = None
        self._scanner = False

    def _went_down(self, exc: Exception) -> None:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        with self._lock:
            self._drop()
            first = not self._down_reason
            self._down_reason = reason
        if first:  # once per outage, not at every retry
            self.log.warning("the job queue (%s) is unreachable: %s; running encodes go on, retrying the "
                             "connection with backoff (up to %.1f s); no job is failed meanwhile",
                             safe_url(self.url), reason, self.backoff_max)

    def _came_up(self) -> None:
        if self._down_reason:
            self._down_reason = ""
            self.log.info("the job queue (%s) is reachable again: resuming", safe_url(self.url))

    @property
    def available(self) -> bool:
        return not self._down_reason

    def _call(self, fn, *, wait: bool):
        """fn(conn) under the lock. PostgreSQL unreachable: wait (with backoff, until it is back or
        the service stops) or raise QueueUnavailable at once."""
        delay = 0.1
        while True:
            try:
                with self._lock:
                    result = fn(self._connection())
                self._came_up()
                return result
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                if isinstance(exc, psycopg.errors.QueryCanceled):
                    raise
                self._went_down(exc)
                if not wait or self.stop.is_set() or self._closing.is_set():
                    raise QueueUnavailable(f"the job queue is unreachable: {self._down_reason}") from None
                self.stop.wait(delay)
                delay = min(delay * 2, self.backoff_max)

    def _create_schema(self, conn) -> None:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s::int4, %s::int4)", (LOCK_APP, LOCK_SCHEMA))
            row = conn.execute("SELECT to_regclass('media_pipeline_meta') AS t").fetchone()
            if row["t"] is not None:
                version = conn.execute("SELECT value FROM media_pipeline_meta WHERE key='schema'").fetchone()
                if version and int(version["value"]) > SCHEMA_VERSION:
                    raise RuntimeError(f"{safe_url(self.url)}: the job queue is from a newer media-pipeline "
                                       f"(schema {version['value']})")
            conn.execute(_SCHEMA)
            self._upgrade(conn)

    @staticmethod
    def _upgrade(conn) -> None:
        """An older queue's schema brought to SCHEMA_VERSION in place (under the schema lock, in the
        caller's transaction: all of it or nothing). Workers of the old code still running may
        read the table meanwhile: a new column is one they do not ask for."""
        version = int(conn.execute("SELECT value FROM media_pipeline_meta WHERE key='schema'").fetchone()["value"])
        if version < 2:  # the state cancelled, and priority for to_front()
            conn.execute("ALTER TABLE jobs ADD COLUMN IF NOT EXISTS priority integer NOT NULL DEFAULT 0")
            conn.execute("ALTER TABLE jobs DROP CONSTRAINT IF EXISTS jobs_state_check")
            conn.execute("ALTER TABLE jobs ADD CONSTRAINT jobs_state_check "
                         "CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled'))")
        if version < SCHEMA_VERSION:
            conn.execute("UPDATE media_pipeline_meta SET value=%s WHERE key='schema'", (str(SCHEMA_VERSION),))

    def close(self) -> None:
        self._closing.set()
        with self._lock:
            self._drop()

    # -- reading ---------------------------------------------------------------------

    def _all(self, sql, args=(), *, wait=False) -> list[dict]:
        return self._call(lambda c: c.execute(sql, args).fetchall(), wait=wait)

    def _one(self, sql, args=(), *, wait=False) -> dict | None:
        return self._call(lambda c: c.execute(sql, args).fetchone(), wait=wait)

    def get(self, job_id: int) -> Job | None:
        return _job(self._one("SELECT * FROM jobs WHERE id=%s", (job_id,)))

    def list_jobs(self, state: str | None = None, limit: int | None = None) -> list[Job]:
        sql, args = "SELECT * FROM jobs", []
        if state:
            sql += " WHERE state=%s"
            args.append(state)
        sql += " ORDER BY id DESC" if limit else " ORDER BY id"
        if limit:
            sql += f" LIMIT {int(limit)}"
        jobs = [_job(r) for r in self._all(sql, args)]
        return sorted(jobs, key=lambda j: j.id)

    def known_keys(self) -> set[tuple[str, int, int]]:
        return {(r["source"], r["size"], r["mtime_ns"]) for r in self._all("SELECT source, size, mtime_ns FROM jobs")}

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(STATES, 0)
        for r in self._all("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state"):
            out[r["state"]] = r["n"]
        return out

    def totals(self) -> dict[str, float]:
        def read(c):
            a = c.execute("SELECT COALESCE(SUM(media_seconds),0) AS m, COALESCE(SUM(encode_seconds),0) AS w "
                          "FROM jobs WHERE state='done'").fetchone()
            b = c.execute("SELECT fps, media_seconds, encode_seconds FROM jobs WHERE state='done' "
                          "ORDER BY finished DESC NULLS LAST LIMIT 1").fetchone()
            o = c.execute("SELECT MIN(created) AS o FROM jobs WHERE state='queued'").fetchone()
            return a, b, o

        a, b, o = self._call(read, wait=False)
        speed = float(b["media_seconds"]) / float(b["encode_seconds"]) if b and b["encode_seconds"] else 0.0
        return {"media_seconds": float(a["m"]), "encode_seconds": float(a["w"]),
                "last_fps": float(b["fps"]) if b else 0.0, "last_speed": speed,
                "oldest_queued": float(o["o"]) if o["o"] is not None else None}

    def has_claimable(self, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        return self._one("SELECT 1 AS x FROM jobs WHERE state='queued' AND not_before<=%s LIMIT 1", (now,)) is not None

    def workers(self) -> list[dict]:
        rows = self._all(f"SELECT *, {NOW} - heartbeat AS heartbeat_age FROM workers ORDER BY name")
        out = []
        for r in rows:
            d = dict(r)
            d["stopped"] = bool(d["stopped"])
            d["heartbeat_age"] = max(0.0, float(d["heartbeat_age"])) if d["heartbeat"] else None
            d["state"] = worker_state(d["heartbeat_age"], d["stopped"], self.lease_seconds)
            out.append(d)
        return out

    def lease_expiries(self) -> int:
        return int(self._one("SELECT COALESCE(SUM(lease_expiries),0) AS n FROM jobs")["n"])

    # -- writing ---------------------------------------------------------------------

    def enqueue(self, source: str, size: int, mtime_ns: int) -> int | None:
        now = time.time()

        def run(c):
            with c.transaction():
                # NOT EXISTS first: a known rip uses up no id (ON CONFLICT alone would, leaving gaps)
                row = c.execute("INSERT INTO jobs (source, size, mtime_ns, created, updated) "
                                "SELECT %(s)s, %(z)s, %(m)s, %(t)s, %(t)s WHERE NOT EXISTS (SELECT 1 FROM jobs "
                                "  WHERE source=%(s)s AND size=%(z)s AND mtime_ns=%(m)s) "
                                "ON CONFLICT (source, size, mtime_ns) DO NOTHING RETURNING id",
                                {"s": source, "z": size, "m": mtime_ns, "t": now}).fetchone()
                if row:
                    c.execute("SELECT pg_notify(%s, %s)", (CHANNEL, str(row["id"])))
            return row["id"] if row else None

        return self._call(run, wait=False)

    def claim(self, now: float | None = None) -> Job | None:
        now = time.time() if now is None else now
        return _job(self._one(
            "WITH c AS (SELECT id FROM jobs WHERE state='queued' AND not_before<=%(now)s "
            "           ORDER BY priority DESC, id LIMIT 1 FOR UPDATE SKIP LOCKED) "
            "UPDATE jobs j SET state='running', stage='', attempts=j.attempts+1, started=%(now)s, updated=%(now)s, "
            f"  pid=NULL, progress=0, worker=%(w)s, lease_token=gen_random_uuid()::text, "
            f"  lease_until={NOW} + %(lease)s, partial='' "
            "FROM c WHERE j.id=c.id RETURNING j.*",
            {"now": now, "w": self.worker, "lease": self.lease_seconds}))

    @staticmethod
    def _fence(job) -> tuple[str, tuple]:
        job_id, token = ident(job)
        if token is None:
            return "id=%s", (job_id,)
        return "id=%s AND lease_token=%s AND state='running'", (job_id, token)

    def update(self, job, **fields) -> bool:
        """A job's fields. Progress (progress, fps, pid) is best effort: False, not a wait, while the
        queue is away; the stage and the output's stamp wait for it (recovery needs them)."""
        bad = set(fields) - UPDATABLE
        if bad:
            raise ValueError(f"cannot update {sorted(bad)}")
        if not fields:
            return True
        where, args = self._fence(job)
        cols = ", ".join(f"{k}=%s" for k in fields)
        best_effort = set(fields) <= {"progress", "fps", "pid"}
        try:
            row = self._one(f"UPDATE jobs SET {cols}, updated=%s WHERE {where} RETURNING id",
                            (*fields.values(), time.time(), *args), wait=not best_effort)
        except QueueUnavailable:
            if best_effort:
                return False
            raise
        return row is not None

    def finish(self, job, media_seconds: float, encode_seconds: float, fps: float, reason: str = "") -> bool:
        now = time.time()
        where, args = self._fence(job)
        return self._one(
            "UPDATE jobs SET state='done', stage='', finished=%s, updated=%s, media_seconds=%s, encode_seconds=%s, "
            f"fps=%s, reason=%s, pid=NULL, progress=1, lease_token='' WHERE {where} RETURNING id",
            (now, now, media_seconds, encode_seconds, fps, reason, *args), wait=True) is not None

    def fail(self, job, reason: str, *, retry: bool, max_attempts: int, delay: float = 0.0) -> str | None:
        now = time.time()
        where, args = self._fence(job)
        row = self._one(
            "UPDATE jobs SET state=CASE WHEN %(retry)s AND attempts < %(max)s THEN 'queued' ELSE 'failed' END, "
            "  stage='', reason=%(reason)s, updated=%(now)s, pid=NULL, progress=0, lease_token='', "
            "  not_before=CASE WHEN %(retry)s AND attempts < %(max)s THEN %(nb)s ELSE 0 END, "
            "  finished=CASE WHEN %(retry)s AND attempts < %(max)s THEN NULL ELSE %(now)s END "
            f"WHERE {where.replace('%s', '%(id)s', 1).replace('%s', '%(token)s', 1)} RETURNING state",
            {"retry": retry, "max": max_attempts, "reason": reason, "now": now, "nb": now + delay,
             "id": args[0], "token": args[1] if len(args) > 1 else None}, wait=True)
        if row and row["state"] == "queued":
            self._notify()
        return row["state"] if row else None

    def requeue(self, job, reason: str, refund_attempt: bool) -> bool:
        where, args = self._fence(job)
        row = self._one(
            "UPDATE jobs SET state='queued', stage='', reason=%s, pid=NULL, progress=0, not_before=0, "
            f"attempts=GREATEST(attempts-%s, 0), updated=%s, lease_token='' WHERE {where} RETURNING id",
            (reason, 1 if refund_attempt else 0, time.time(), *args), wait=True)
        if row:
            self._notify()
        return row is not None

    def reset_failed(self, job_id: int) -> bool:
        """Operator retry: a failed (or cancelled) job back to queued with fresh attempts."""
        row = self._one("UPDATE jobs SET state='queued', attempts=0, not_before=0, reason='retry requested', "
                        "finished=NULL, updated=%s WHERE id=%s AND state IN ('failed', 'cancelled') RETURNING id",
                        (time.time(), job_id))
        if row:
            self._notify()
        return row is not None

    def cancel(self, job_id: int) -> bool:
        """Operator cancel of a queued job (jobs.JobStore.cancel). A worker claiming it at the same
        moment holds its row: the cancel waits, sees it running, and changes nothing."""
        now = time.time()
        return self._one("UPDATE jobs SET state='cancelled', reason='cancelled by an operator', not_before=0, "
                         "finished=%s, updated=%s WHERE id=%s AND state='queued' RETURNING id",
                         (now, now, job_id)) is not None

    def to_front(self, job_id: int) -> bool:
        """Operator "to the front": claimed next (jobs.JobStore.to_front)."""
        row = self._one("UPDATE jobs SET priority=(SELECT COALESCE(MAX(priority), 0) + 1 FROM jobs "
                        "WHERE state='queued'), not_before=0, updated=%s WHERE id=%s AND state='queued' RETURNING id",
                        (time.time(), job_id))
        if row:
            self._notify()  # ready now (a retry delay it waited out is dropped)
        return row is not None

    def _notify(self) -> None:
        try:
            self._call(lambda c: c.execute("SELECT pg_notify(%s, '')", (CHANNEL,)), wait=False)
        except QueueUnavailable:
            pass  # the next poll finds it

    # -- leases and coordination -----------------------------------------------------

    def _lock_worker_name(self, conn) -> None:
        got = conn.execute("SELECT pg_try_advisory_lock(%s::int4, %s::int4) AS ok",
                           (LOCK_APP * 16 + LOCK_WORKER, _name_key(self.worker))).fetchone()["ok"]
        if not got:
            raise RuntimeError(f"another media-pipeline run is worker {self.worker!r} on {safe_url(self.url)}; "
                               f"give each worker its own worker_name")

    def start_worker(self, encoder: str) -> None:
        """Register this worker (the name is this run's alone: a session advisory lock on it)."""
        def run(c):
            self._lock_worker_name(c)
            c.execute(
                "INSERT INTO workers (name, host, pid, encoder, started, heartbeat, stopped) "
                f"VALUES (%s,%s,%s,%s,{NOW},{NOW},0) ON CONFLICT (name) DO UPDATE SET host=excluded.host, "
                "pid=excluded.pid, encoder=excluded.encoder, started=excluded.started, heartbeat=excluded.heartbeat, "
                "stopped=0, job_id=NULL, fps=0", (self.worker, socket.gethostname(), os.getpid(), encoder))

        self._call(run, wait=False)
        self._registered = encoder

    def stop_worker(self) -> None:
        try:
            self._call(lambda c: c.execute("UPDATE workers SET stopped=1, job_id=NULL, fps=0 WHERE name=%s",
                                           (self.worker,)), wait=False)
        except QueueUnavailable:
            pass
        self._registered = None

    def heartbeat(self, owned: list, status: dict) -> set[int]:
        """Renew this worker's leases; returns the ids of jobs it no longer owns. Raises
        QueueUnavailable while the database is away (the leases are renewed once it is back)."""
        ids = [j.id for j in owned]
        tokens = [j.lease_token for j in owned]

        def run(c):
            kept = set()
            if ids:
                rows = c.execute(
                    f"UPDATE jobs SET lease_until={NOW} + %s WHERE state='running' AND (id, lease_token) IN "
                    "(SELECT * FROM unnest(%s::bigint[], %s::text[])) RETURNING id",
                    (self.lease_seconds, ids, tokens)).fetchall()
                kept = {r["id"] for r in rows}
            c.execute(f"UPDATE workers SET heartbeat={NOW}, job_id=%s, fps=%s, stopped=0 WHERE name=%s",
                      (status.get("job_id"), status.get("fps", 0.0), self.worker))
            return kept

        kept = self._call(run, wait=False)
        return set(ids) - kept

    @contextmanager
    def publishing(self, job):
        """Hold the job's row (FOR UPDATE) with this worker's token checked while the caller
        publishes: a worker taking the job over waits for this transaction, and a worker whose
        lease was taken over gets LeaseLost and publishes nothing. Waits for the database."""
        job_id, token = ident(job)
        delay = 0.1
        while True:
            self._lock.acquire()
            try:
                conn = self._connection()
                conn.execute("BEGIN")
                row = conn.execute("SELECT lease_token, state FROM jobs WHERE id=%s FOR UPDATE", (job_id,)).fetchone()
                break
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                self._lock.release()
                self._went_down(exc)
                if self.stop.is_set():
                    raise QueueUnavailable(f"the job queue is unreachable: {self._down_reason}") from None
                self.stop.wait(delay)
                delay = min(delay * 2, self.backoff_max)
            except BaseException:
                self._lock.release()
                raise
        self._came_up()
        try:
            if row is None or row["state"] != "running" or (token is not None and row["lease_token"] != token):
                conn.execute("ROLLBACK")
                raise LeaseLost(f"job {job_id} is now {row['state'] if row else 'gone'}"
                                + (" and another worker's" if row and row["lease_token"] else ""))
            conn.execute(f"UPDATE jobs SET lease_until={NOW} + %s WHERE id=%s", (self.lease_seconds, job_id))
            try:
                yield
            except BaseException:
                try:
                    conn.execute("ROLLBACK")
                except Exception:  # noqa: BLE001 - a broken connection rolls back by itself
                    pass
                raise
            try:
                conn.execute("COMMIT")
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                self._went_down(exc)  # published; finish() confirms it once the queue is back
        finally:
            self._lock.release()

    def take_over_expired(self, startup: bool = False) -> list[Job]:
        """Jobs whose lease ran out (their worker died, was stopped or cut off), given to this
        worker with a new token; at start-up also its own previous run's (the name is this run's
        alone). Until it has been connected for a whole lease, only the latter: after an outage
        the other workers' heartbeats must get a chance to renew their leases first."""
        def run(c):
            settled = time.monotonic() - self._up_since >= self.lease_seconds
            rows = c.execute(
                "WITH c AS (SELECT id FROM jobs WHERE state='running' AND "
                f"  ((%(settled)s AND lease_until < {NOW}) OR (%(startup)s AND worker=%(w)s)) "
                "  ORDER BY id FOR UPDATE SKIP LOCKED) "
                "UPDATE jobs j SET lease_expiries=j.lease_expiries + CASE WHEN j.worker=%(w)s THEN 0 ELSE 1 END, "
                "  reason=CASE WHEN j.worker=%(w)s THEN j.reason "
                "              ELSE 'lease of worker ' || j.worker || ' expired' END, "
                f"  worker=%(w)s, lease_token=gen_random_uuid()::text, lease_until={NOW} + %(lease)s "
                "FROM c WHERE j.id=c.id RETURNING j.*",
                {"settled": settled, "startup": startup, "w": self.worker, "lease": self.lease_seconds}).fetchall()
            return [_job(r) for r in rows]

        return self._call(run, wait=False)

    def temp_path(self, dest: str, job) -> str:
        """`.NAME.mkv.<token>.partial`: a worker whose lease was taken over, still encoding, writes
        (and removes) its own temp file, never the next worker's."""
        tag = (job.lease_token or "x")[:12]
        return os.path.join(os.path.dirname(dest), f".{os.path.basename(dest)}.{tag}.partial")

    def is_scanner(self) -> bool:
        """Whether this worker scans staging: the one holding the scanner's advisory lock (a session
        lock: it goes with the worker's connection, and another worker takes it at its next poll)."""
        def run(c):
            if not self._scanner:
                self._scanner = c.execute("SELECT pg_try_advisory_lock(%s::int4, %s::int4) AS ok",
                                          (LOCK_APP, LOCK_SCANNER)).fetchone()["ok"]
            else:
                c.execute("SELECT 1")  # the lock is as alive as this session
            return self._scanner

        try:
            return self._call(run, wait=False)
        except QueueUnavailable:
            return False

    def listen(self, callback) -> None:
        """callback() at each notification on CHANNEL (a new or requeued job), from a thread of its own."""
        def loop():
            conn = None
            delay = 0.2
            while not self._closing.is_set():
                try:
                    if conn is None:
                        conn = self._connect()
                        conn.execute(f"LISTEN {CHANNEL}")
                        delay = 0.2
                        callback()  # anything enqueued while we were not listening
                    ready, _, _ = select.select([conn.fileno()], [], [], 1.0)
                    if ready:
                        conn.pgconn.consume_input()
                        got = False
                        while conn.pgconn.notifies() is not None:
                            got = True
                        if got:
                            callback()
                    elif conn.pgconn.status != psycopg.pq.ConnStatus.OK:
                        raise psycopg.OperationalError("listening connection lost")
                except (psycopg.Error, OSError, ValueError):
                    if conn is not None:
                        try:
                            conn.close()
                        except Exception:  # noqa: BLE001
                            pass
                    conn = None
                    self._closing.wait(delay)
                    delay = min(delay * 2, self.backoff_max)
            if conn is not None:
                conn.close()

        self._listener = threading.Thread(target=loop, name="queue-listen", daemon=True)
        self._listener.start()
