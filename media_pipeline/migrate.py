"""`media-pipeline migrate --from SQLITE --to URL`: a SQLite job store into PostgreSQL, once and idempotently.

Every job is copied in one transaction: queued, failed and done as they are (attempts, reasons,
timings, the output's stamp), a job left `running` (its service was stopped for the move) as
queued, to be redone. A job already in PostgreSQL (same rip version: source, size, mtime) is
left alone, so a second run changes nothing. Ids are kept where they are free, so `retry ID`
and the log still name the same job; the id sequence is moved past them.
"""

from __future__ import annotations

import os
import sqlite3
import sys

from .jobqueue import is_url, read_password_file
from .jobs import Job, JobStore

_COPIED = [f for f in Job.__dataclass_fields__ if f not in ("lease_token", "lease_until", "pid", "partial")]


def migrate(sqlite_path: str, url: str, password: str | None = None) -> dict[str, int]:
    """Copy the jobs; returns {"copied", "present", "renumbered", "requeued"}."""
    import psycopg

    from .pgstore import PgJobStore

    if not os.path.exists(sqlite_path):
        raise RuntimeError(f"{sqlite_path}: no such SQLite job database")
    source = JobStore(sqlite_path, readonly=True)
    try:
        jobs = source.list_jobs()
    finally:
        source.close()
    PgJobStore(url, password=password, worker="migrate").close()  # the schema
    kwargs = {"password": password} if password is not None else {}
    out = {"copied": 0, "present": 0, "renumbered": 0, "requeued": 0}
    with psycopg.connect(url, **kwargs) as conn:
        with conn.transaction():
            conn.execute("LOCK TABLE jobs IN SHARE ROW EXCLUSIVE MODE")  # no worker enqueues meanwhile
            keys = {(r[0], r[1], r[2]): r[3] for r in conn.execute("SELECT source, size, mtime_ns, id FROM jobs")}
            ids = set(keys.values())
            for job in jobs:
                if (job.source, job.size, job.mtime_ns) in keys:
                    out["present"] += 1
                    continue
                row = {f: getattr(job, f) for f in _COPIED}
                if job.state == "running":
                    row.update(state="queued", stage="", progress=0.0,
                               reason="moved to PostgreSQL while running; redoing from scratch")
                    out["requeued"] += 1
                if job.id in ids:
                    del row["id"]
                    out["renumbered"] += 1
                cols = list(row)
                conn.execute(f"INSERT INTO jobs ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))})",
                             [row[c] for c in cols])
                ids.add(job.id)
                out["copied"] += 1
            conn.execute("SELECT setval(pg_get_serial_sequence('jobs', 'id'), "
                         "GREATEST((SELECT COALESCE(MAX(id), 0) FROM jobs), 1))")
    return out


def main(cfg, src: str, dst: str) -> int:
    if not is_url(dst):
        print(f"media-pipeline migrate: --to {dst!r} is not a postgresql:// URL", file=sys.stderr)
        return 2
    from urllib.parse import urlsplit

    if urlsplit(dst).password is not None or "password=" in dst:
        print("media-pipeline migrate: --to has a password in it (argv is visible to every user); put it in "
              "the config's db_password_file (mode 0600) instead", file=sys.stderr)
        return 2
    try:
        password = read_password_file(cfg.db_password_file) if cfg.db_password_file else None
        out = migrate(src, dst, password)
    except (RuntimeError, OSError, sqlite3.Error) as exc:
        print(f"media-pipeline migrate: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - psycopg's errors: the connection, the server
        print(f"media-pipeline migrate: cannot write to PostgreSQL: {exc}", file=sys.stderr)
        return 1
    print(f"migrated {src}: {out['copied']} job(s) copied ({out['requeued']} running ones queued again, "
          f"{out['renumbered']} under a new id), {out['present']} already there")
    return 0
