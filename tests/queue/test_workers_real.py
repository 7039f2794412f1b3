"""Three media-pipeline worker processes on one staging dir and one PostgreSQL, with real ffmpeg:
exactly one library file per rip whatever dies when (kill -9, SIGSTOP past the lease, PostgreSQL
stopped), the scanner's succession, and migrate from SQLite."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time

import pytest

from tests.media.helpers import ENV, Pipeline, kill, make_rip, wait_for

pytestmark = pytest.mark.ffmpeg
LEASE = 2
SLOW = {"preset": "slow", "x265_params": "pools=1:frame-threads=1"}


@pytest.fixture(scope="session")
def rips(tmp_path_factory):
    if not (shutil.which("ffmpeg") and shutil.which("ffprobe")):
        pytest.skip("ffmpeg/ffprobe not installed")
    d = tmp_path_factory.mktemp("queue-rips")
    return {
        "short": make_rip(d / "short.mkv", audio=(("eng", "aac"),), duration=2, size="160x90"),
        "slow": make_rip(d / "slow.mkv", audio=(("eng", "aac"),), duration=10, size="320x180"),
    }


class Cluster:
    """A staging/movies/tv tree and N worker configs on one PostgreSQL database."""

    def __init__(self, base, url, **settings):
        self.p = Pipeline(base, db=url, lease_seconds=LEASE, poll_seconds=0.2, **settings)
        self.base = base
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, object] = {}

    def config(self, name):
        path = self.base / f"{name}.json"
        path.write_text(json.dumps({**self.p.settings, "worker_name": name,
                                    "metrics_textfile": str(self.base / "state" / f"{name}.prom")}))
        return path

    def start(self, name):
        argv = [*self.p.argv("run")[:3], "--config", str(self.config(name)), "run"]
        log = open(self.base / f"{name}.log", "a")
        self.logs[name] = log
        self.procs[name] = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log, text=True, env=ENV)
        return self.procs[name]

    def log(self, name) -> str:
        return (self.base / f"{name}.log").read_text()

    def jobs(self):
        return self.p.jobs()

    def workers(self):
        run = subprocess.run(self.p.argv("workers", "--json"), capture_output=True, text=True, env=ENV,
                             timeout=60, check=True)
        return {w["name"]: w for w in json.loads(run.stdout)}

    def stop_all(self):
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                kill(proc, signal.SIGTERM)
        for log in self.logs.values():
            log.close()

    def put(self, src, name):
        dest = self.p.staging / name
        shutil.copyfile(src, dest)
        (self.p.staging / (name + ".done")).write_text("")
        return dest

    def partials(self):
        return sorted(str(p) for d in (self.p.movies, self.p.tv) for p in d.rglob("*.partial"))


def running_job(c: Cluster):
    """The first running job with its partial file on disk (an encode in progress)."""
    for j in c.jobs():
        if j["state"] == "running" and j["partial"] and os.path.exists(j["partial"]):
            return j
    return None


def test_three_workers_twelve_rips_one_file_each(rips, tmp_path, pg_url):
    c = Cluster(tmp_path, pg_url)
    try:
        for name in ("w1", "w2", "w3"):
            c.start(name)
        wait_for(lambda: len(c.workers()) == 3, timeout=30, what="three workers")
        for n in range(12):
            c.put(rips["short"], f"Film {n:02d} (2024).mkv")
        wait_for(lambda: [j["state"] for j in c.jobs()] == ["done"] * 12, timeout=240, interval=0.5,
                 what="12 jobs done")
        jobs = c.jobs()
        assert c.p.library() == [f"movies/Film {n:02d} (2024).mkv" for n in range(12)]
        assert all(j["attempts"] == 1 and j["worker"] in ("w1", "w2", "w3") for j in jobs)
        # no job ran on two workers: each job started in exactly one worker's log, by the worker the queue names
        logs = {name: c.log(name) for name in ("w1", "w2", "w3")}
        for j in jobs:
            starters = [name for name, text in logs.items() if f"[job {j['id']}] start" in text]
            assert starters == [j["worker"]], (j["id"], starters)
        assert len({j["worker"] for j in jobs}) >= 2  # the work was shared
        scanners = [name for name, text in logs.items() if "scans staging" in text]
        assert len(scanners) == 1  # one scanner, elected once
        workers = c.workers()
        assert {w["state"] for w in workers.values()} == {"healthy"}
        assert all(w["encoder"] == "libx265" and w["host"] for w in workers.values())
    finally:
        c.stop_all()
    assert all(p.returncode == 0 for p in c.procs.values())
    assert {w["state"] for w in c.workers().values()} == {"gone"}  # signed off


def test_kill_9_mid_encode_the_job_completes_on_another_worker(rips, tmp_path, pg_url):
    c = Cluster(tmp_path, pg_url, **SLOW)
    try:
        c.start("w1")
        c.start("w2")
        c.put(rips["slow"], "Killed (2024).mkv")
        job = wait_for(lambda: running_job(c), timeout=60, interval=0.1, what="an encode in progress")
        victim, partial = job["worker"], job["partial"]
        killed_at = time.monotonic()
        kill(c.procs[victim])
        survivor = "w2" if victim == "w1" else "w1"
        done = wait_for(lambda: [j for j in c.jobs() if j["state"] == "done"], timeout=180, interval=0.2,
                        what="the job done by the other worker")
        print(f"kill -9 to done on {survivor}: {time.monotonic() - killed_at:.1f} s")
        (job,) = done
        assert job["worker"] == survivor and job["attempts"] == 2 and job["lease_expiries"] == 1
        assert c.p.library() == ["movies/Killed (2024).mkv"]  # one file, nothing partial, nothing doubled
        assert not os.path.exists(partial) and c.partials() == []
        text = c.log(survivor)
        assert f"lease of worker {victim} expired" in text and f"removed the partial output {partial}" in text
        assert c.workers()[victim]["state"] in ("stale", "gone")
    finally:
        c.stop_all()


def test_a_stopped_worker_past_its_lease_is_fenced_and_discards_its_output(rips, tmp_path, pg_url):
    c = Cluster(tmp_path, pg_url, **SLOW)
    try:
        c.start("w1")
        c.start("w2")
        c.put(rips["slow"], "Paused (2024).mkv")
        job = wait_for(lambda: running_job(c), timeout=60, interval=0.1, what="an encode in progress")
        frozen = job["worker"]
        other = "w2" if frozen == "w1" else "w1"
        c.procs[frozen].send_signal(signal.SIGSTOP)
        # the lease runs out; the other worker takes the job over and encodes it
        wait_for(lambda: c.jobs()[0]["worker"] == other, timeout=60, interval=0.2, what="the take-over")
        c.procs[frozen].send_signal(signal.SIGCONT)
        wait_for(lambda: "no longer owns the job" in c.log(frozen), timeout=120, interval=0.2,
                 what="the fenced worker to say it discarded its output")
        wait_for(lambda: c.jobs()[0]["state"] == "done", timeout=180, interval=0.2, what="the job done")
        (job,) = c.jobs()
        assert job["worker"] == other and job["attempts"] == 2
        assert c.p.library() == ["movies/Paused (2024).mkv"] and c.partials() == []
        text = c.log(frozen)
        assert "its output is discarded, nothing published" in text
        assert "done: " not in text  # the fenced worker never published
        assert c.procs[frozen].poll() is None  # and it goes on working
    finally:
        c.stop_all()


def test_postgresql_stopped_mid_run_nothing_fails_nothing_doubles(rips, tmp_path, pg_server, pg_url):
    c = Cluster(tmp_path, pg_url, preset="medium", x265_params="pools=1:frame-threads=1")
    try:
        for name in ("w1", "w2", "w3"):
            c.start(name)
        for n in range(6):
            c.put(rips["slow"], f"Outage {n} (2024).mkv")
        wait_for(lambda: running_job(c), timeout=60, interval=0.1, what="encodes in progress")
        pg_server.stop()
        try:
            time.sleep(3 * LEASE)  # longer than a lease: the leases run out in the database's clock meanwhile
            assert all(p.poll() is None for p in c.procs.values())
        finally:
            pg_server.start()
        wait_for(lambda: [j["state"] for j in c.jobs()] == ["done"] * 6, timeout=300, interval=0.5,
                 what="every job done after the outage")
        jobs = c.jobs()
        assert c.p.library() == sorted(f"movies/Outage {n} (2024).mkv" for n in range(6))
        assert c.partials() == [] and all(j["state"] == "done" for j in jobs)
        done_lines = sum(c.log(name).count("] done: ") for name in ("w1", "w2", "w3"))
        assert done_lines == 6  # each job published once
        for name in ("w1", "w2", "w3"):
            text = c.log(name)
            assert text.count("is unreachable") == 1, text[-3000:]  # said once, not once a second
            assert text.count("reachable again") == 1
            assert "] failed" not in text and "giving up" not in text  # no job failed for the outage
    finally:
        c.stop_all()


def test_when_the_scanner_dies_another_worker_scans(rips, tmp_path, pg_url):
    c = Cluster(tmp_path, pg_url)
    try:
        c.start("w1")
        wait_for(lambda: "scans staging" in c.log("w1"), timeout=30, what="w1 to scan")
        c.start("w2")
        wait_for(lambda: "w2" in c.workers(), timeout=30, what="w2 registered")
        c.put(rips["short"], "Before (2024).mkv")
        wait_for(lambda: [j["state"] for j in c.jobs()] == ["done"], timeout=60, what="the first job")
        assert "scans staging" not in c.log("w2")
        kill(c.procs["w1"])
        killed_at = time.monotonic()
        c.put(rips["short"], "After (2024).mkv")
        wait_for(lambda: "scans staging" in c.log("w2"), timeout=30, interval=0.05, what="w2 to take the scanning over")
        print(f"scanner killed -> successor scanning: {time.monotonic() - killed_at:.2f} s")
        wait_for(lambda: [j["state"] for j in c.jobs()] == ["done", "done"], timeout=60, what="the second job")
        assert c.jobs()[1]["worker"] == "w2"
        assert c.p.library() == ["movies/After (2024).mkv", "movies/Before (2024).mkv"]
    finally:
        c.stop_all()


def test_an_idle_worker_starts_a_new_job_on_notify_not_on_the_next_poll(rips, tmp_path, pg_url):
    c = Cluster(tmp_path, pg_url)
    c.p.configure(poll_seconds=30)  # a poll would take 30 s; NOTIFY wakes the idle worker at once
    try:
        c.start("scanner")
        wait_for(lambda: "scans staging" in c.log("scanner"), timeout=30, what="the scanner")
        c.start("idle")
        wait_for(lambda: "idle" in c.workers(), timeout=30, what="the idle worker")
        time.sleep(1)
        # a job enqueued by someone else (the scanner's poll is 30 s away too): enqueue it directly
        from media_pipeline.pgstore import PgJobStore

        src = c.put(rips["short"], "Notify (2024).mkv")
        st = os.stat(src)
        store = PgJobStore(pg_url, worker="test")
        enqueued = time.time()
        store.enqueue(str(src), st.st_size, st.st_mtime_ns)
        job = wait_for(lambda: [j for j in c.jobs() if j["started"]], timeout=10, interval=0.05, what="a start")[0]
        store.close()
        print(f"enqueue-to-start: {job['started'] - enqueued:.3f} s on worker {job['worker']}")
        assert job["started"] - enqueued < 2.0
    finally:
        c.stop_all()


def _sqlite_with_jobs(path, n):
    from media_pipeline.jobs import JobStore

    s = JobStore(str(path))
    states = ("queued", "failed", "done", "running")
    for i in range(n):
        s.enqueue(f"/pool/staging/Film {i:04d}.mkv", 1000 + i, 10**18 + i)
    db = sqlite3.connect(str(path))
    for i in range(1, n + 1):
        state = states[i % 4]
        db.execute("UPDATE jobs SET state=?, attempts=?, reason=?, dest=?, media_seconds=?, finished=? WHERE id=?",
                   (state, i % 3, f"reason {i}", f"/pool/movies/Film {i:04d}.mkv", float(i),
                    1.7e9 + i if state in ("done", "failed") else None, i))
    db.commit()
    db.close()
    s.close()


def test_migrate_a_sqlite_store_of_1000_jobs_once_and_idempotently(tmp_path, pg_url):
    pytest.importorskip("psycopg")
    src = tmp_path / "jobs.sqlite3"
    _sqlite_with_jobs(src, 1000)
    p = Pipeline(tmp_path, db=pg_url)
    run = subprocess.run(p.argv("migrate", "--from", str(src), "--to", pg_url), capture_output=True, text=True,
                         env=ENV, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "1000 job(s) copied (250 running ones queued again, 0 under a new id), 0 already there" in run.stdout
    before = p.jobs()
    assert len(before) == 1000 and [j["id"] for j in before] == list(range(1, 1001))
    from media_pipeline.jobs import JobStore

    old = {j.id: j for j in JobStore(str(src), readonly=True).list_jobs()}
    for j in before:
        o = old[j["id"]]
        assert (j["source"], j["size"], j["mtime_ns"], j["attempts"], j["dest"], j["media_seconds"]) == \
            (o.source, o.size, o.mtime_ns, o.attempts, o.dest, o.media_seconds)
        assert j["state"] == ("queued" if o.state == "running" else o.state)
        if o.state != "running":
            assert j["reason"] == o.reason and j["finished"] == o.finished
    again = subprocess.run(p.argv("migrate", "--from", str(src), "--to", pg_url), capture_output=True, text=True,
                           env=ENV, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "0 job(s) copied" in again.stdout and "1000 already there" in again.stdout
    assert p.jobs() == before  # a second migrate changes nothing
    # new jobs get ids after the migrated ones
    from media_pipeline.pgstore import PgJobStore

    store = PgJobStore(pg_url, worker="t")
    assert store.enqueue("/pool/staging/New.mkv", 1, 1) == 1001
    store.close()
