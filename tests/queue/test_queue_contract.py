"""The job queue's interface (media_pipeline/jobqueue.py), one contract run against both stores:
SQLite (the embedded default, one worker) and PostgreSQL (many workers; a real server, conftest.py).

`queue` is a factory of workers: queue("a") is the store as worker "a" sees it. On SQLite every
worker is a new connection to the same file (as successive runs of the one service are).
"""

from __future__ import annotations

import threading
import time

import pytest

from media_pipeline.jobqueue import LeaseLost, QueueUnavailable
from media_pipeline.jobs import JobStore

LEASE = 1.0


@pytest.fixture(params=["sqlite", "postgresql"])
def queue(request, tmp_path):
    yield from _queue(request, tmp_path, request.param)


@pytest.fixture
def pg_queue(request, tmp_path):
    """The PostgreSQL store only: what a single-worker SQLite file has no use for (other workers)."""
    yield from _queue(request, tmp_path, "postgresql")


def _queue(request, tmp_path, kind):
    opened = []
    if kind == "sqlite":
        path = str(tmp_path / "jobs.sqlite3")

        def make(worker="w1", lease=LEASE):
            store = JobStore(path, worker=worker, lease_seconds=lease)
            opened.append(store)
            return store
    else:
        url = request.getfixturevalue("pg_url")
        from media_pipeline.pgstore import PgJobStore

        def make(worker="w1", lease=LEASE):
            store = PgJobStore(url, worker=worker, lease_seconds=lease)
            opened.append(store)
            return store
    make.kind = kind
    yield make
    for store in opened:
        try:
            store.close()
        except Exception:  # noqa: BLE001
            pass


def take_over(queue, job_worker="w1"):
    """Another worker takes the jobs over: on PostgreSQL once their lease ran out; on SQLite as
    the next run of the one worker does at start-up (the file is only ever one worker's)."""
    if queue.kind == "sqlite":
        return queue(job_worker).take_over_expired(startup=True)
    time.sleep(LEASE + 0.3)
    other = queue("w2")
    other._up_since -= 10 * LEASE  # connected for longer than a lease (see take_over_expired)
    return other.take_over_expired()


def test_a_rip_version_is_one_job(queue):
    q = queue()
    assert q.enqueue("/s/a b.mkv", 10, 1) == 1
    assert q.enqueue("/s/a b.mkv", 10, 1) is None
    assert q.enqueue("/s/a b.mkv", 11, 2) == 2
    assert queue("w2").enqueue("/s/a b.mkv", 10, 1) is None  # whoever asks
    assert ("/s/a b.mkv", 10, 1) in q.known_keys() and len(q.list_jobs()) == 2
    assert q.counts() == {"queued": 2, "running": 0, "done": 0, "failed": 0, "cancelled": 0}


def test_claims_are_exclusive_across_workers(queue):
    q = queue()
    for i in range(30):
        q.enqueue(f"/s/{i}.mkv", 1, 1)
    claimed, lock = [], threading.Lock()

    def grab(name):
        store = queue(name) if queue.kind == "postgresql" else q  # SQLite: one worker, threads
        while (job := store.claim()) is not None:
            with lock:
                claimed.append((job.id, job.worker))

    threads = [threading.Thread(target=grab, args=(f"w{n}",)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(i for i, _ in claimed) == list(range(1, 31))
    jobs = q.list_jobs()
    assert all(j.state == "running" and j.attempts == 1 and j.lease_token for j in jobs)
    assert len({j.lease_token for j in jobs}) == 30
    assert {j.worker for j in jobs} == {w for _, w in claimed}


def test_fail_retries_until_max_attempts_and_operator_retry(queue):
    q = queue()
    q.enqueue("/s/x.mkv", 1, 1)
    states = []
    while (job := q.claim()) is not None:
        states.append(q.fail(job, f"boom {job.attempts}", retry=True, max_attempts=3))
    assert states == ["queued", "queued", "failed"]
    job = q.get(1)
    assert job.attempts == 3 and job.reason == "boom 3" and job.finished
    assert q.reset_failed(1) and not q.reset_failed(1)
    assert q.get(1).state == "queued" and q.get(1).attempts == 0



def test_cancel_takes_a_queued_job_out_for_good(queue):
    """Only a queued job; a cancelled one is never claimed, its key stays known (the scan does not
    queue the rip again), and the operator's retry puts it back."""
    q = queue()
    for name in ("a", "b", "c"):
        q.enqueue(f"/s/{name}.mkv", 1, 1)
    running = q.claim()
    assert running.id == 1
    assert q.cancel(2) and not q.cancel(2)  # the second time it is no longer queued
    assert not q.cancel(running.id) and q.get(running.id).state == "running"  # a worker's job: untouched
    assert not q.cancel(999)
    job = q.get(2)
    assert job.state == "cancelled" and job.reason == "cancelled by an operator" and job.finished
    assert ("/s/b.mkv", 1, 1) in queue("w2").known_keys() and q.enqueue("/s/b.mkv", 1, 1) is None
    assert queue("w2").claim().id == 3 and q.claim() is None and not q.has_claimable()
    assert q.counts() == {"queued": 0, "running": 2, "done": 0, "failed": 0, "cancelled": 1}
    assert [j.id for j in q.list_jobs(state="cancelled")] == [2]
    assert q.finish(running, 1.0, 1.0, 1.0) and not q.cancel(running.id)  # done: no cancel either
    assert q.reset_failed(2) and q.get(2).state == "queued" and q.get(2).attempts == 0 and not q.get(2).finished
    assert q.claim().id == 2


def test_to_front_is_claimed_next(queue):
    q = queue()
    for n in range(1, 6):
        q.enqueue(f"/s/{n}.mkv", 1, 1)
    assert q.to_front(4)
    assert q.claim().id == 4
    assert q.to_front(5) and q.to_front(3)  # the last one moved is the first: 3, 5, then the oldest
    assert [queue("w2").claim().id for _ in range(3)] == [3, 5, 1]
    assert not q.to_front(3) and not q.to_front(999)  # running, unknown
    job = q.claim()
    assert job.id == 2 and job.priority == 0  # never moved
    # a job waiting out a retry delay: moved to the front, it is ready now
    assert q.fail(job, "later", retry=True, max_attempts=3, delay=3600) == "queued"
    assert q.claim() is None and q.to_front(2)
    assert q.has_claimable() and q.claim().id == 2


def test_retry_delay_and_requeue(queue):
    q = queue()
    q.enqueue("/s/x.mkv", 1, 1)
    job = q.claim()
    assert q.fail(job, "later", retry=True, max_attempts=3, delay=3600) == "queued"
    assert q.claim() is None and not q.has_claimable()
    assert q.has_claimable(now=time.time() + 3601)
    job = q.claim(now=time.time() + 3601)
    assert q.requeue(job, "interrupted by shutdown", refund_attempt=True)
    job = q.get(1)
    assert job.state == "queued" and job.attempts == 1 and job.reason == "interrupted by shutdown"


def test_finish_and_totals(queue):
    q = queue()
    q.enqueue("/s/x.mkv", 1, 1)
    job = q.claim()
    assert q.update(job, dest="/m/x.mkv", stage="encoding", partial="/m/.x.mkv.partial")
    assert q.update(job, progress=0.5, fps=12.5)
    assert q.finish(job, 100.0, 50.0, 24.0)
    done = q.get(1)
    assert done.state == "done" and done.worker == "w1" and done.progress == 1
    totals = q.totals()
    assert totals["media_seconds"] == 100.0 and totals["last_speed"] == 2.0 and totals["oldest_queued"] is None
    assert "lease_token" not in done.to_json() and done.to_json()["worker"] == "w1"


def test_a_worker_whose_lease_was_taken_over_is_fenced(queue):
    q = queue("w1")
    q.enqueue("/s/x.mkv", 1, 1)
    job = q.claim()
    q.update(job, dest="/m/x.mkv", stage="encoding")
    (taken,) = take_over(queue)
    assert taken.id == job.id and taken.lease_token != job.lease_token
    # every write of the old owner changes nothing, and it may not publish
    assert q.update(job, stage="finalizing", out_stamp="1:2:3") is False
    assert q.finish(job, 1.0, 1.0, 1.0) is False
    assert q.fail(job, "x", retry=True, max_attempts=3) is None
    assert q.requeue(job, "x", refund_attempt=True) is False
    assert q.heartbeat([job], {}) == {job.id}
    published = []
    with pytest.raises(LeaseLost):
        with q.publishing(job):
            published.append(1)
    assert not published
    row = q.get(job.id)
    assert row.state == "running" and row.stage == "encoding" and row.out_stamp == ""
    # the new owner's writes count
    owner = queue("w1") if queue.kind == "sqlite" else queue("w2")
    with owner.publishing(taken):
        pass
    assert owner.finish(taken, 1.0, 1.0, 1.0) and owner.get(job.id).state == "done"


def test_a_bare_id_is_not_fenced(queue):
    q = queue()
    q.enqueue("/s/x.mkv", 1, 1)
    job = q.claim()
    assert q.update(job.id, source_removed=1)
    assert q.requeue(job.id, "operator", refund_attempt=True)


def test_heartbeat_keeps_the_lease(pg_queue):
    q = pg_queue("w1")
    q.start_worker("libx265")
    q.enqueue("/s/x.mkv", 1, 1)
    job = q.claim()
    for _ in range(8):  # two leases' worth of heartbeats
        assert q.heartbeat([job], {"job_id": job.id, "fps": 5.0}) == set()
        time.sleep(LEASE / 4)
    other = pg_queue("w2")
    other._up_since -= 10 * LEASE
    assert other.take_over_expired() == []
    time.sleep(LEASE + 0.3)  # no heartbeat: the lease runs out
    (taken,) = other.take_over_expired()
    assert taken.worker == "w2" and taken.lease_expiries == 1 and "lease of worker w1 expired" in taken.reason
    assert other.lease_expiries() == 1


def test_a_fresh_connection_waits_a_lease_before_taking_over(pg_queue):
    q = pg_queue("w1")
    q.enqueue("/s/x.mkv", 1, 1)
    q.claim()
    time.sleep(LEASE + 0.3)
    other = pg_queue("w2")  # just (re)connected: the others' heartbeats get a lease to renew first
    assert other.take_over_expired() == []
    time.sleep(LEASE)
    assert len(other.take_over_expired()) == 1


def test_start_up_takes_back_its_own_previous_runs_jobs_at_once(queue):
    q = queue("w1", lease=600)
    q.enqueue("/s/x.mkv", 1, 1)
    old = q.claim()
    q.close()
    again = queue("w1", lease=600)
    (job,) = again.take_over_expired(startup=True)
    assert job.id == old.id and job.lease_token != old.lease_token
    assert queue("w2", lease=600).take_over_expired() == []


def test_workers_are_listed_with_their_state(queue):
    a = queue("alpha")
    a.start_worker("libx265")
    a.enqueue("/s/x.mkv", 1, 1)
    job = a.claim()
    a.heartbeat([job], {"job_id": job.id, "fps": 42.5})
    (w,) = [w for w in a.workers() if w["name"] == "alpha"]
    assert w["state"] == "healthy" and w["encoder"] == "libx265" and w["job_id"] == job.id and w["fps"] == 42.5
    assert w["host"] and w["heartbeat_age"] < LEASE
    time.sleep(LEASE + 0.2)
    assert [w["state"] for w in a.workers() if w["name"] == "alpha"] == ["stale"]
    a.stop_worker()
    assert [w["state"] for w in a.workers() if w["name"] == "alpha"] == ["gone"]


def test_one_run_per_worker(queue):
    a = queue("alpha")
    a.start_worker("libx265")
    with pytest.raises(RuntimeError, match="another media-pipeline run"):
        queue("alpha").start_worker("libx265")
    a.stop_worker()
    a.close()
    b = queue("alpha")
    b.start_worker("libx265")  # free again
    b.stop_worker()


def test_exactly_one_scanner(queue):
    a = queue("alpha")
    assert a.is_scanner()
    if queue.kind == "sqlite":
        return  # the only worker always scans
    b = queue("beta")
    assert not b.is_scanner() and a.is_scanner()
    a.close()  # the scanner's session ends (it died): a later poll of another takes over
    # the server drops a closed session's advisory locks a moment after the client closes it
    deadline = time.monotonic() + 5
    while not b.is_scanner():
        assert time.monotonic() < deadline, "no other worker became the scanner within 5 s"
        time.sleep(0.05)


def test_an_idle_worker_is_woken_by_an_enqueue(queue):
    a = queue("alpha")
    woke = threading.Event()
    a.listen(woke.set)
    if queue.kind == "sqlite":
        return  # the only worker enqueues itself and dispatches right after
    time.sleep(0.5)
    woke.clear()
    started = time.monotonic()
    queue("beta").enqueue("/s/x.mkv", 1, 1)
    assert woke.wait(2), "no notification within 2 s"
    assert time.monotonic() - started < 2


def test_temp_paths_of_two_leases_differ_on_a_shared_queue(queue):
    q = queue()
    q.enqueue("/s/x.mkv", 1, 1)
    job = q.claim()
    path = q.temp_path("/m/x.mkv", job)
    assert path.startswith("/m/.x.mkv") and path.endswith(".partial")
    if queue.kind == "postgresql":
        (taken,) = take_over(queue)
        assert q.temp_path("/m/x.mkv", taken) != path


def test_unreachable_queue_raises_for_reads_and_waits_for_outcomes(pg_server, pg_url):
    """PostgreSQL down: reads and claims raise QueueUnavailable (said once in the log); the
    outcome of a job waits for the server and lands once it is back."""
    import logging

    from media_pipeline.pgstore import PgJobStore

    records = []

    class Catch(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logger = logging.getLogger("test-queue-down")
    logger.addHandler(Catch())
    logger.setLevel(logging.INFO)
    q = PgJobStore(pg_url, worker="w1", lease_seconds=2, log=logger)
    q.enqueue("/s/x.mkv", 1, 1)
    job = q.claim()
    pg_server.stop()
    try:
        for _ in range(3):
            with pytest.raises(QueueUnavailable):
                q.claim()
        assert q.update(job, progress=0.5) is False  # progress: best effort, no wait
        finished = []
        t = threading.Thread(target=lambda: finished.append(q.finish(job, 1.0, 1.0, 1.0)))
        t.start()
        time.sleep(1.5)
        assert not finished  # waiting for the server, not failing
    finally:
        pg_server.start()
    t.join(timeout=30)
    assert finished == [True] and q.get(job.id).state == "done"
    down = [m for m in records if "unreachable" in m]
    back = [m for m in records if "reachable again" in m]
    assert len(down) == 1 and len(back) == 1, records


def test_a_schema_1_queue_is_upgraded_in_place(pg_url):
    """PostgreSQL schema 1 -> 2 (the state cancelled, priority): the table altered in place, its
    rows and ids kept; a second start changes nothing."""
    import psycopg

    from media_pipeline import pgstore

    old = (pgstore._SCHEMA.replace(", 'cancelled'", "")
           .replace("    priority       integer NOT NULL DEFAULT 0,\n", "")
           .replace("CONSTRAINT jobs_state_check\n                           ", "")
           .replace(f"('schema', '{pgstore.SCHEMA_VERSION}')", "('schema', '1')"))
    assert "cancelled" not in old and "priority" not in old and "jobs_state_check" not in old
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(old)
        for i in (1, 2):
            conn.execute("INSERT INTO jobs (source, size, mtime_ns, created, updated) VALUES (%s, 1, 1, 0, 0)",
                         (f"/s/{i}.mkv",))
    from media_pipeline.pgstore import PgJobStore

    q = PgJobStore(pg_url, worker="w1", lease_seconds=LEASE)
    try:
        assert [(j.id, j.state, j.priority) for j in q.list_jobs()] == [(1, "queued", 0), (2, "queued", 0)]
        assert q.cancel(1) and q.get(1).state == "cancelled"
        assert q.enqueue("/s/3.mkv", 1, 1) == 3 and q.to_front(3) and q.claim().id == 3
        assert q._one("SELECT value FROM media_pipeline_meta WHERE key='schema'")["value"] == "2"
    finally:
        q.close()
    again = PgJobStore(pg_url, worker="w1", lease_seconds=LEASE)
    try:
        assert [(j.id, j.state) for j in again.list_jobs()] == [(1, "cancelled"), (2, "queued"), (3, "running")]
        with pytest.raises(psycopg.errors.CheckViolation):  # the check is still there, with cancelled in it
            again._one("UPDATE jobs SET state='paused' WHERE id=2 RETURNING id")
    finally:
        again.close()


def test_migrate_carries_priority_and_cancelled(tmp_path, pg_url):
    """migrate.py copies a SQLite store's jobs as they are: the queue's order (priority) and a
    cancelled job, still cancelled (never transcoded after the move)."""
    from media_pipeline.migrate import migrate
    from media_pipeline.pgstore import PgJobStore

    path = str(tmp_path / "jobs.sqlite3")
    src = JobStore(path)
    for n in range(1, 5):
        src.enqueue(f"/s/{n}.mkv", 1, 1)
    assert src.cancel(2) and src.to_front(4)
    src.close()
    assert migrate(path, pg_url)["copied"] == 4
    q = PgJobStore(pg_url, worker="w1", lease_seconds=LEASE)
    try:
        assert q.get(2).state == "cancelled" and q.get(4).priority == 1
        assert [q.claim().id for _ in range(3)] == [4, 1, 3] and q.claim() is None
    finally:
        q.close()
