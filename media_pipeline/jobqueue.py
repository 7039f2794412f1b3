"""The job queue's one interface, which both stores implement (docs/adr/0016-job-queue-on-postgresql.md).

    jobs.JobStore     SQLite, the embedded default: one worker, the file only it opens
    pgstore.PgJobStore PostgreSQL: many workers on many hosts, talking only to it and to the pool

The service, `status`, `workers`, the page and the metrics call `open_store(cfg)` and the methods
of `JobQueue` below; none of them asks which store it has.

Leases. `claim()` gives the job to this worker with a fresh `lease_token` and a `lease_until`
that `heartbeat()` renews. Every write a worker makes for a job it claimed passes the Job (with
its token): when the token no longer matches (the lease expired and another worker took the
job over), the write changes nothing and returns False, and `publishing(job)` raises LeaseLost,
so a fenced worker never publishes. `take_over_expired()` hands a worker the jobs whose lease
ran out (their worker died, was stopped, or lost the network), each with a new token, for the
service's recovery (finish an interrupted publish, else remove the partial output and requeue).
Writes given a bare job id (an operator's retry, old callers) are not fenced.

Operators (the page, the CLI) change only jobs that no worker holds: `reset_failed()` (retry) puts a
failed or cancelled job back in the queue, `cancel()` takes a queued job out of it for good (state
cancelled: never claimed, its rip left in staging, its key still known so the scan does not queue
it again), `to_front()` has a queued job claimed next. Each returns False, changing nothing, when
the job is not in the state it needs (or unknown).
"""

from __future__ import annotations

import os
import socket
from typing import Iterator, Protocol

WORKER_STATES = ("healthy", "stale", "gone")
# A worker whose heartbeat is older than its lease is stale; one that signed off (a clean stop),
# or has said nothing for a day, is gone.
GONE_AFTER_SECONDS = 86400.0


class QueueUnavailable(Exception):
    """The queue's database cannot be reached now (PostgreSQL down, network cut). Never a job's
    fault: the service keeps its encodes, waits, and asks again."""


class LeaseLost(Exception):
    """This worker no longer owns the job: its lease expired and another worker took it over."""


def is_url(db: str) -> bool:
    return db.startswith(("postgresql://", "postgres://"))


def default_worker_name() -> str:
    return socket.gethostname() or "worker"


def worker_state(heartbeat_age: float | None, stopped: bool, lease_seconds: float) -> str:
    if stopped or heartbeat_age is None or heartbeat_age > GONE_AFTER_SECONDS:
        return "gone"
    return "healthy" if heartbeat_age <= lease_seconds else "stale"


def ident(job) -> tuple[int, str | None]:
    """(id, lease token) of a Job; (id, None) for a bare id (an unfenced write)."""
    if isinstance(job, int):
        return job, None
    return job.id, (job.lease_token or None)


class JobQueue(Protocol):
    """What the service, the CLI, the page and the metrics use. Both stores implement all of it."""

    worker: str
    lease_seconds: float

    # reading
    def get(self, job_id: int): ...
    def list_jobs(self, state: str | None = None, limit: int | None = None) -> list: ...
    def known_keys(self) -> set[tuple[str, int, int]]: ...
    def counts(self) -> dict[str, int]: ...
    def totals(self) -> dict[str, float]: ...
    def has_claimable(self, now: float | None = None) -> bool: ...
    def workers(self) -> list[dict]: ...
    def lease_expiries(self) -> int: ...

    # writing
    def enqueue(self, source: str, size: int, mtime_ns: int) -> int | None: ...
    def claim(self, now: float | None = None): ...
    def update(self, job, **fields) -> bool: ...
    def finish(self, job, media_seconds: float, encode_seconds: float, fps: float, reason: str = "") -> bool: ...
    def fail(self, job, reason: str, *, retry: bool, max_attempts: int, delay: float = 0.0) -> str | None: ...
    def requeue(self, job, reason: str, refund_attempt: bool) -> bool: ...
    def reset_failed(self, job_id: int) -> bool: ...
    def cancel(self, job_id: int) -> bool: ...
    def to_front(self, job_id: int) -> bool: ...

    # leases and coordination
    def start_worker(self, encoder: str) -> None: ...
    def stop_worker(self) -> None: ...
    def heartbeat(self, owned: list, status: dict) -> set[int]: ...
    def publishing(self, job) -> Iterator[None]: ...
    def take_over_expired(self, startup: bool = False) -> list: ...
    def temp_path(self, dest: str, job) -> str: ...
    def is_scanner(self) -> bool: ...
    def listen(self, callback) -> None: ...
    def describe(self) -> str: ...
    def close(self) -> None: ...


def read_password_file(path: str) -> str:
    """db_password_file: the first line; refused when group or others may read it."""
    try:
        st = os.stat(path)
        if st.st_mode & 0o077:
            raise RuntimeError(
                f"db_password_file {path} is readable by group or others (mode {st.st_mode & 0o777:04o}); "
                f"fix: chmod 600 {path} (owned by the service user)")
        with open(path, encoding="utf-8") as fh:
            return fh.readline().rstrip("\r\n")
    except OSError as exc:
        raise RuntimeError(f"db_password_file {path}: cannot read it: {exc.strerror or exc}") from None


def open_store(cfg, readonly: bool = False, *, log=None):
    """The store the config names: a SQLite path (jobs.JobStore) or a postgresql:// URL
    (pgstore.PgJobStore, password from db_password_file)."""
    if is_url(cfg.db):
        from .pgstore import PgJobStore  # psycopg is needed only with a URL

        password = read_password_file(cfg.db_password_file) if cfg.db_password_file else None
        return PgJobStore(cfg.db, password=password, worker=cfg.worker_name or default_worker_name(),
                          lease_seconds=cfg.lease_seconds, log=log)
    from .jobs import JobStore

    return JobStore(cfg.db, readonly=readonly, worker=cfg.worker_name or default_worker_name(),
                    lease_seconds=cfg.lease_seconds)
