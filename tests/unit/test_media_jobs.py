"""The SQLite job table: uniqueness, claiming, retries, requeue."""

import sqlite3
import threading

import pytest

from media_pipeline.jobs import JobStore


def store(tmp_path):
    return JobStore(str(tmp_path / "jobs.sqlite3"))


def test_same_rip_version_is_one_job(tmp_path):
    s = store(tmp_path)
    assert s.enqueue("/s/a b.mkv", 10, 1) == 1
    assert s.enqueue("/s/a b.mkv", 10, 1) is None
    assert s.enqueue("/s/a b.mkv", 11, 2) == 2  # re-ripped: a new version
    s.close()
    s = store(tmp_path)  # survives reopening
    assert s.enqueue("/s/a b.mkv", 10, 1) is None
    assert len(s.list_jobs()) == 2
    assert ("/s/a b.mkv", 10, 1) in s.known_keys()


def test_claim_is_exclusive_and_counts_attempts(tmp_path):
    s = store(tmp_path)
    for i in range(20):
        s.enqueue(f"/s/{i}.mkv", 1, 1)
    claimed, lock = [], threading.Lock()

    def grab():
        while (job := s.claim()) is not None:
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=grab) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == list(range(1, 21))
    assert all(j.state == "running" and j.attempts == 1 for j in s.list_jobs())


def test_fail_retries_until_max_attempts(tmp_path):
    s = store(tmp_path)
    s.enqueue("/s/x.mkv", 1, 1)
    states = []
    while (job := s.claim()) is not None:
        states.append(s.fail(job.id, f"boom {job.attempts}", retry=True, max_attempts=3))
    assert states == ["queued", "queued", "failed"]
    job = s.get(1)
    assert job.attempts == 3 and job.reason == "boom 3" and job.finished


def test_non_retryable_failure_is_final(tmp_path):
    s = store(tmp_path)
    s.enqueue("/s/x.mkv", 1, 1)
    job = s.claim()
    assert s.fail(job.id, "bad input", retry=False, max_attempts=3) == "failed"
    assert s.claim() is None


def test_retry_delay(tmp_path):
    s = store(tmp_path)
    s.enqueue("/s/x.mkv", 1, 1)
    job = s.claim(now=1000.0)
    s.fail(job.id, "disk full", retry=True, max_attempts=3, delay=300)
    assert not s.has_claimable()  # now() is long after 1000, but not_before is now()+300
    import time

    assert s.claim(now=time.time() + 301).id == job.id


def test_requeue_refunds_the_attempt(tmp_path):
    s = store(tmp_path)
    s.enqueue("/s/x.mkv", 1, 1)
    job = s.claim()
    s.requeue(job.id, "shutdown", refund_attempt=True)
    assert s.get(job.id).attempts == 0 and s.get(job.id).state == "queued"
    job = s.claim()
    s.requeue(job.id, "crash", refund_attempt=False)
    assert s.get(job.id).attempts == 1


def test_finish_totals_and_counts(tmp_path):
    s = store(tmp_path)
    s.enqueue("/s/a.mkv", 1, 1)
    s.enqueue("/s/b.mkv", 1, 1)
    a = s.claim()
    s.finish(a.id, media_seconds=60.0, encode_seconds=20.0, fps=75.0)
    assert s.counts() == {"queued": 1, "running": 0, "done": 1, "failed": 0, "cancelled": 0}
    queued = [j for j in s.list_jobs() if j.state == "queued"][0]
    assert s.totals() == {"media_seconds": 60.0, "encode_seconds": 20.0, "last_fps": 75.0, "last_speed": 3.0,
                          "oldest_queued": queued.created}


def test_reset_failed(tmp_path):
    s = store(tmp_path)
    s.enqueue("/s/a.mkv", 1, 1)
    job = s.claim()
    s.fail(job.id, "x", retry=False, max_attempts=1)
    assert s.reset_failed(job.id)
    assert s.get(job.id).state == "queued" and s.get(job.id).attempts == 0
    assert not s.reset_failed(job.id)


def test_readonly_reader(tmp_path):
    s = store(tmp_path)
    s.enqueue("/s/ünï 'q'.mkv", 1, 1)
    r = JobStore(str(tmp_path / "jobs.sqlite3"), readonly=True)
    assert [j.source for j in r.list_jobs()] == ["/s/ünï 'q'.mkv"]
    r.close()
    s.close()


V1_TABLE = """CREATE TABLE jobs (
    id INTEGER PRIMARY KEY, source TEXT NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    state TEXT NOT NULL DEFAULT 'queued', stage TEXT NOT NULL DEFAULT '', attempts INTEGER NOT NULL DEFAULT 0,
    dest TEXT, reason TEXT NOT NULL DEFAULT '', not_before REAL NOT NULL DEFAULT 0, pid INTEGER,
    progress REAL NOT NULL DEFAULT 0, created REAL NOT NULL, updated REAL NOT NULL, started REAL,
    finished REAL, media_seconds REAL NOT NULL DEFAULT 0, encode_seconds REAL NOT NULL DEFAULT 0,
    fps REAL NOT NULL DEFAULT 0, source_removed INTEGER NOT NULL DEFAULT 0, UNIQUE (source, size, mtime_ns));
PRAGMA user_version=1;
INSERT INTO jobs (source, size, mtime_ns, state, stage, created, updated)
    VALUES ('/s/a.mkv', 1, 1, 'running', 'finalizing', 0, 0);"""


def test_schema_1_database_gains_out_stamp(tmp_path):
    path = str(tmp_path / "jobs.sqlite3")
    db = sqlite3.connect(path)
    db.executescript(V1_TABLE)
    db.close()
    old = JobStore(path, readonly=True)  # `status` of an old database with the new code
    assert old.list_jobs()[0].out_stamp == ""
    old.close()
    s = JobStore(path)
    job = s.list_jobs()[0]
    assert job.out_stamp == "" and job.stage == "finalizing"
    s.update(job.id, out_stamp="12:34:56")
    assert s.get(job.id).out_stamp == "12:34:56"
    assert s._db.execute("PRAGMA user_version").fetchone()[0] == 4  # schema 4: cancelled, priority
    s.close()


def _schema_3(sql: str) -> str:
    """The schema 3 table (before cancelled and priority), from today's."""
    old = sql.replace(", 'cancelled'", "").replace("    priority       INTEGER NOT NULL DEFAULT 0,\n", "")
    assert "cancelled" not in old and "priority" not in old
    return old


def test_schema_3_database_is_upgraded_in_place(tmp_path):
    """Schema 4 (cancelled, priority): the old table's CHECK refuses 'cancelled', so it is rebuilt
    with every row and id as it was; `status` (read-only) reads the old one meanwhile."""
    from media_pipeline import jobs

    path = str(tmp_path / "jobs.sqlite3")
    db = sqlite3.connect(path)
    db.executescript(_schema_3(jobs._SCHEMA) + "PRAGMA user_version=3;")
    for i, state in enumerate(("queued", "failed", "done", "queued"), start=3):
        db.execute("INSERT INTO jobs (id, source, size, mtime_ns, state, reason, created, updated) "
                   "VALUES (?, ?, 1, 1, ?, ?, 0, 0)", (i, f"/s/{i}.mkv", state, f"r{i}"))
    db.commit()
    with pytest.raises(sqlite3.IntegrityError):
        db.execute("UPDATE jobs SET state='cancelled' WHERE id=3")
    db.close()
    old = JobStore(path, readonly=True)
    assert [(j.id, j.priority) for j in old.list_jobs()] == [(3, 0), (4, 0), (5, 0), (6, 0)]
    old.close()
    s = JobStore(path)
    assert [(j.id, j.state, j.reason) for j in s.list_jobs()] == [
        (3, "queued", "r3"), (4, "failed", "r4"), (5, "done", "r5"), (6, "queued", "r6")]
    assert s.cancel(3) and s.get(3).state == "cancelled"
    assert s.to_front(6) and s.claim().id == 6
    assert s.enqueue("/s/new.mkv", 1, 1) == 7  # the ids go on after the kept ones
    assert s._db.execute("PRAGMA user_version").fetchone()[0] == 4
    names = [r[0] for r in s._db.execute("SELECT name FROM sqlite_master WHERE name IN ('jobs_state', 'jobs_v4')")]
    assert names == ["jobs_state"]
    s.close()
    again = JobStore(path)  # a second start changes nothing
    assert again.get(3).state == "cancelled" and len(again.list_jobs()) == 5
    again.close()
