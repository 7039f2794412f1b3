"""Benchmark the job queue on PostgreSQL (run by `make bench`; docs/adr/0016).

1. Throughput of 1, 2 and 3 worker processes on the same short rips, each encode on one thread
   (x265 `pools=1:frame-threads=1`), in files/s and as a speed-up over one worker.
2. Enqueue-to-start latency on an idle worker (median of N): LISTEN/NOTIFY, with a poll of 30 s.
3. Queue overhead per job, PostgreSQL vs SQLite: (a) the store alone, enqueue + claim + progress +
   publish check + finish per job; (b) `media-pipeline run --once` on tiny rips, per job.
4. Recovery after kill -9: the worker encoding a job killed; seconds until another worker runs it
   (lease_seconds + a poll, by design) and until it is done.

Starts its own PostgreSQL 15 (tests/queue/pgserver.py: initdb/pg_ctl as `postgres` when root).
Prints a table and writes bench-results/queue.json. No thresholds: figures to read.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from media_pipeline import __version__  # noqa: E402
from tests.media.helpers import make_rip  # noqa: E402
from tests.queue import pgserver  # noqa: E402

ENV = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
ENV.pop("MEDIA_PIPELINE_CONFIG", None)
ONE_THREAD = "pools=1:frame-threads=1"


class Tree:
    def __init__(self, base: Path, db: str, **settings):
        self.base = base
        self.staging, self.movies, self.tv = base / "staging", base / "movies", base / "tv"
        for d in (self.staging, self.movies, self.tv, base / "state"):
            d.mkdir(parents=True, exist_ok=True)
        self.settings = {"staging": str(self.staging), "movies": str(self.movies), "tv": str(self.tv), "db": db,
                         "metrics_textfile": "", "languages": ["eng"], "preset": "fast", "crf": 30,
                         "stable_seconds": 0, "poll_seconds": 0.2, "retry_delay_seconds": 0,
                         "x265_params": ONE_THREAD, "rip_status_file": "", "gpu_proof_file": "", **settings}
        self.procs: dict[str, subprocess.Popen] = {}

    def config(self, name: str) -> Path:
        path = self.base / f"{name}.json"
        path.write_text(json.dumps({**self.settings, "worker_name": name}))
        return path

    def argv(self, name: str, *args) -> list[str]:
        return [sys.executable, "-m", "media_pipeline.service", "--config", str(self.config(name)), *args]

    def start(self, name: str) -> subprocess.Popen:
        log = open(self.base / f"{name}.log", "a")
        self.procs[name] = subprocess.Popen(self.argv(name, "run"), stdout=subprocess.DEVNULL, stderr=log, env=ENV)
        log.close()
        return self.procs[name]

    def put(self, src: Path, name: str) -> None:
        shutil.copyfile(src, self.staging / name)
        (self.staging / (name + ".done")).write_text("")

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()


def wait_for(predicate, timeout: float, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError("benchmark step timed out")


def store(url: str, name: str = "bench", lease: float = 60):
    from media_pipeline.pgstore import PgJobStore

    return PgJobStore(url, worker=name, lease_seconds=lease)


def bench_throughput(server, work: Path, rip: Path, files: int, preset: str) -> dict:
    out = {}
    for workers in (1, 2, 3):
        url = server.new_database()
        tree = Tree(work / f"tp{workers}", url, preset=preset)
        watcher = store(url)
        try:
            for n in range(workers):
                tree.start(f"w{n + 1}")
            wait_for(lambda: len(watcher.workers()) == workers, 30)
            started = time.monotonic()
            for n in range(files):
                tree.put(rip, f"Film {n:02d} (2024).mkv")
            wait_for(lambda: watcher.counts()["done"] == files, 1800, 0.1)
            wall = time.monotonic() - started
        finally:
            tree.stop()
        jobs = watcher.list_jobs()
        watcher.close()
        assert all(j.state == "done" and j.attempts == 1 for j in jobs)
        assert len(list(tree.movies.glob("*.mkv"))) == files
        out[workers] = {"wall_s": round(wall, 2), "files_per_s": round(files / wall, 3),
                        "by_worker": {w: sum(1 for j in jobs if j.worker == w) for w in sorted({j.worker for j in jobs})}}
    for workers in out:
        out[workers]["speedup"] = round(out[1]["wall_s"] / out[workers]["wall_s"], 2)
    return out


def bench_latency(server, work: Path, rip: Path, runs: int) -> dict:
    url = server.new_database()
    tree = Tree(work / "latency", url, poll_seconds=30, preset="ultrafast")
    s = store(url)
    samples = []
    try:
        tree.start("idle")
        wait_for(lambda: len(s.workers()) == 1, 30)
        time.sleep(1.0)  # its first (scanning) poll is over: from now on it sleeps 30 s between polls
        for n in range(runs):
            name = f"Latency {n:02d}.mkv"
            shutil.copyfile(rip, tree.staging / name)  # no marker: the worker's scan would not take it anyway
            st = os.stat(tree.staging / name)
            t0 = time.time()
            job_id = s.enqueue(str(tree.staging / name), st.st_size, st.st_mtime_ns)
            job = wait_for(lambda: (j := s.get(job_id)) and j.started and j, 30, 0.005)
            samples.append(job.started - t0)
            wait_for(lambda: s.get(job_id).state == "done", 120, 0.05)
    finally:
        tree.stop()
        s.close()
    return {"runs": runs, "median_s": round(statistics.median(samples), 4), "max_s": round(max(samples), 4),
            "min_s": round(min(samples), 4), "poll_seconds": 30}


def _store_cycle(make, jobs: int) -> float:
    s = make()
    t0 = time.perf_counter()
    for n in range(jobs):
        s.enqueue(f"/pool/staging/f{n}.mkv", n, n)
    for n in range(jobs):
        job = s.claim()
        s.update(job, dest=f"/pool/movies/f{n}.mkv", stage="encoding", partial="/x")
        s.update(job, progress=0.5, fps=10.0)
        s.update(job, stage="finalizing", out_stamp="1:2:3")
        with s.publishing(job):
            pass
        s.finish(job, 1.0, 1.0, 1.0)
    per_job = (time.perf_counter() - t0) / jobs
    s.close()
    return per_job


def bench_overhead(server, work: Path, tiny: Path, jobs: int, files: int) -> dict:
    from media_pipeline.jobs import JobStore

    url = server.new_database()
    sqlite_path = work / "overhead.sqlite3"
    pg_cycle = _store_cycle(lambda: store(url), jobs)
    sqlite_cycle = _store_cycle(lambda: JobStore(str(sqlite_path)), jobs)
    once = {}
    for kind in ("sqlite", "postgresql"):
        db = str(work / "once" / "jobs.sqlite3") if kind == "sqlite" else server.new_database()
        tree = Tree(work / f"once-{kind}", db, preset="ultrafast", x265_params="")
        for n in range(files):
            tree.put(tiny, f"Tiny {n:02d}.mkv")
        t0 = time.monotonic()
        run = subprocess.run(tree.argv("once", "run", "--once"), capture_output=True, text=True, env=ENV, timeout=600)
        once[kind] = (time.monotonic() - t0) / files
        if run.returncode != 0 or len(list(tree.movies.glob("*.mkv"))) != files:
            raise RuntimeError(f"run --once on {kind} failed: {run.stderr[-2000:]}")
    return {"store_cycle_ms": {"sqlite": round(sqlite_cycle * 1000, 3), "postgresql": round(pg_cycle * 1000, 3)},
            "store_jobs": jobs,
            "run_once_per_job_s": {k: round(v, 3) for k, v in once.items()},
            "run_once_files": files,
            "extra_per_job_ms": round((once["postgresql"] - once["sqlite"]) * 1000, 1)}


def bench_recovery(server, work: Path, slow: Path, lease: float, runs: int) -> dict:
    samples = []
    for n in range(runs):
        url = server.new_database()
        tree = Tree(work / f"recovery{n}", url, lease_seconds=lease, preset="slow")
        s = store(url)
        try:
            tree.start("w1")
            tree.start("w2")
            wait_for(lambda: len(s.workers()) == 2, 30)
            tree.put(slow, "Killed (2024).mkv")
            job = wait_for(lambda: (j := (s.list_jobs(state="running") or [None])[0]) and j.partial
                           and os.path.exists(j.partial) and j, 60)
            victim = job.worker
            os.kill(tree.procs[victim].pid, signal.SIGKILL)
            t0 = time.monotonic()
            wait_for(lambda: (j := s.get(job.id)).state == "running" and j.worker != victim, 120)
            resumed = time.monotonic() - t0
            wait_for(lambda: s.get(job.id).state == "done", 600, 0.1)
            done = time.monotonic() - t0
            assert len(list(tree.movies.glob("*"))) == 1
            samples.append((resumed, done))
        finally:
            tree.stop()
            s.close()
    return {"lease_seconds": lease, "poll_seconds": 0.2, "runs": runs,
            "kill_to_running_elsewhere_s": round(statistics.median(r for r, _ in samples), 2),
            "kill_to_done_s": round(statistics.median(d for _, d in samples), 2)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=12, help="rips for the throughput runs")
    p.add_argument("--seconds", type=float, default=6.0, help="length of each rip")
    p.add_argument("--size", default="320x180")
    p.add_argument("--preset", default="slow", help="x265 preset of the throughput runs")
    p.add_argument("--latency-runs", type=int, default=15)
    p.add_argument("--store-jobs", type=int, default=300)
    p.add_argument("--once-files", type=int, default=20)
    p.add_argument("--lease", type=float, default=3.0)
    p.add_argument("--recovery-runs", type=int, default=3)
    p.add_argument("--out", default=str(REPO / "bench-results" / "queue.json"))
    args = p.parse_args()
    reason = pgserver.missing()
    if reason:
        print(f"bench_queue: skipped: {reason}", file=sys.stderr)
        return 0
    work = Path(tempfile.mkdtemp(prefix="bench-queue-"))
    server = pgserver.start_server()
    try:
        rips = work / "rips"
        rip = make_rip(rips / "short.mkv", duration=args.seconds, size=args.size)
        tiny = make_rip(rips / "tiny.mkv", duration=1, size="64x36", chapters=False, title=None)
        slow = make_rip(rips / "slow.mkv", duration=10, size="320x180")
        result = {"version": __version__, "cpus": os.cpu_count(), "python": platform.python_version(),
                  "throughput": bench_throughput(server, work, rip, args.files, args.preset),
                  "latency": bench_latency(server, work, tiny, args.latency_runs),
                  "overhead": bench_overhead(server, work, tiny, args.store_jobs, args.once_files),
                  "recovery": bench_recovery(server, work, slow, args.lease, args.recovery_runs)}
    finally:
        pgserver.remove(server)
        shutil.rmtree(work, ignore_errors=True)
    tp, lat, ov, rec = result["throughput"], result["latency"], result["overhead"], result["recovery"]
    print(f"queue on PostgreSQL 15, {result['cpus']} CPUs, rips of {args.seconds:g} s {args.size}, "
          f"x265 {args.preset} on one thread")
    print(f"  throughput, {args.files} rips:")
    for workers, r in tp.items():
        print(f"    {workers} worker(s): {r['wall_s']:7.2f} s  {r['files_per_s']:.3f} files/s  x{r['speedup']:.2f}  {r['by_worker']}")
    print(f"  enqueue-to-start on an idle worker (poll 30 s): median {lat['median_s'] * 1000:.1f} ms, "
          f"max {lat['max_s'] * 1000:.1f} ms over {lat['runs']}")
    print(f"  store cycle per job (enqueue, claim, 3 updates, publish check, finish): SQLite "
          f"{ov['store_cycle_ms']['sqlite']:.2f} ms, PostgreSQL {ov['store_cycle_ms']['postgresql']:.2f} ms")
    print(f"  run --once per tiny job: SQLite {ov['run_once_per_job_s']['sqlite']:.3f} s, PostgreSQL "
          f"{ov['run_once_per_job_s']['postgresql']:.3f} s ({ov['extra_per_job_ms']:+.1f} ms a job)")
    print(f"  kill -9 mid-encode (lease {rec['lease_seconds']:g} s): running on another worker after "
          f"{rec['kill_to_running_elsewhere_s']:.2f} s, done after {rec['kill_to_done_s']:.2f} s (median of {rec['runs']})")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
