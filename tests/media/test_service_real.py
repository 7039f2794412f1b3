"""media-pipeline against real ffmpeg: queue, library layout, failures, restarts, crashes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import urllib.request

import pytest

from tests.media.helpers import ENV, Pipeline, free_port, kill, probe, processes_with, streams, wait_for

pytestmark = pytest.mark.ffmpeg

ODD_NAME = "Amélie 'Le Fabuleux' \"Destin\" — 日本語 (2001).mkv"


def put(src, dest, age=None):
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    if age is not None:
        t = time.time() - age
        os.utime(dest, (t, t))
    return dest


def by_source(jobs):
    return {os.path.basename(j["source"]): j for j in jobs}


def test_once_sorts_finished_rips_into_the_library(rips, tmp_path):
    p = Pipeline(tmp_path, stable_seconds=60)
    put(rips["full"], p.staging / ODD_NAME, age=600)
    put(rips["two_letter"], p.staging / "Show.Name.S01E02.mkv", age=600)
    put(rips["four"], p.staging / "Heat (1995)" / "title_t00.mkv", age=600)
    put(rips["four"], p.staging / "still ripping.mkv")  # fresh and unmarked: not yet
    put(rips["no_subs"], p.staging / "marked.mkv")  # fresh but the ripper says it is done
    (p.staging / "marked.mkv.done").write_text("")
    (p.staging / "readme.txt").write_text("not media")

    run = p.once()
    assert p.library() == [
        "movies/Amélie 'Le Fabuleux' \"Destin\" — 日本語 (2001).mkv",
        "movies/Heat (1995).mkv",
        "movies/marked.mkv",
        "tv/Show Name/Season 01/Show.Name.S01E02.mkv",
    ]
    jobs = by_source(p.jobs())
    assert set(jobs) == {ODD_NAME, "Show.Name.S01E02.mkv", "title_t00.mkv", "marked.mkv"}
    assert all(j["state"] == "done" and j["attempts"] == 1 for j in jobs.values())
    odd = p.movies / ODD_NAME
    assert [s[:3] for s in streams(odd)] == [
        ("video", "hevc", None), ("audio", "aac", "eng"), ("audio", "ac3", "bul"),
        ("subtitle", "subrip", "eng"), ("subtitle", "subrip", "bul")]
    assert len(probe(odd)["chapters"]) == 2
    assert (p.staging / ODD_NAME).exists()  # keep_source defaults to true
    assert "queued" in run.stderr and "done" in run.stderr

    status = subprocess.run(p.argv("status"), capture_output=True, text=True, check=True,
                            env=ENV).stdout
    assert "4 done" in status and "movies/Heat (1995).mkv" in status
    prom = (tmp_path / "state" / "metrics.prom").read_text()
    assert 'media_pipeline_jobs{state="done"} 4' in prom
    assert "media_pipeline_encoded_seconds_total 1" in prom  # 2+2+4+2 s = 10.x s


def test_no_duplicates_across_restarts(rips, tmp_path):
    p = Pipeline(tmp_path)
    put(rips["four"], p.staging / "Film.mkv", age=10)
    p.once()
    out = p.movies / "Film.mkv"
    first = out.stat().st_mtime_ns
    for _ in range(2):
        p.once()
    assert len(p.jobs()) == 1 and out.stat().st_mtime_ns == first
    assert p.library() == ["movies/Film.mkv"]
    # a re-rip of the same name is a new version: queued, and refused because the film is there
    put(rips["no_subs"], p.staging / "Film.mkv", age=5)
    p.once()
    jobs = p.jobs()
    assert [j["state"] for j in jobs] == ["done", "failed"]
    assert "already exists in the library" in jobs[1]["reason"]
    assert out.stat().st_mtime_ns == first


def test_bad_inputs_fail_with_reasons_and_keep_sources(rips, tmp_path):
    p = Pipeline(tmp_path, keep_source=False)
    data = rips["four"].read_bytes()
    (p.staging / "cut off.mkv").write_bytes(data[: len(data) // 2])
    (p.staging / "notes.mkv").write_text("this is not a video\n")
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=d=1", "-c:a", "flac",
                    str(p.staging / "album.mkv")], check=True)
    put(rips["four"], p.staging / "good.mkv")
    (p.staging / "good.mkv.done").write_text("")
    p.once()
    jobs = by_source(p.jobs())
    assert jobs["cut off.mkv"]["state"] == "failed" and "truncated" in jobs["cut off.mkv"]["reason"]
    assert jobs["notes.mkv"]["state"] == "failed" and "not a readable media file" in jobs["notes.mkv"]["reason"]
    assert jobs["album.mkv"]["state"] == "failed" and "no video stream" in jobs["album.mkv"]["reason"]
    for name in ("cut off.mkv", "notes.mkv", "album.mkv"):
        assert jobs[name]["attempts"] == 1  # bad input is not retried
        assert (p.staging / name).exists()  # never deleted
    assert jobs["good.mkv"]["state"] == "done" and jobs["good.mkv"]["source_removed"] == 1
    assert not (p.staging / "good.mkv").exists() and not (p.staging / "good.mkv.done").exists()
    assert p.library() == ["movies/good.mkv"]


def test_output_failures_are_retried_a_bounded_number_of_times(rips, tmp_path):
    p = Pipeline(tmp_path, max_attempts=3, keep_source=False)
    put(rips["four"], p.staging / "Broken Show S02E03.mkv")
    (p.tv / "Broken Show").write_text("a file where the show folder should be")
    p.once()
    (job,) = p.jobs()
    assert job["state"] == "failed" and job["attempts"] == 3
    assert "output problem" in job["reason"] and "Broken Show" in job["reason"]
    assert (p.staging / "Broken Show S02E03.mkv").exists()
    # the operator fixes it and asks again
    (p.tv / "Broken Show").unlink()
    subprocess.run(p.argv("retry", str(job["id"])), check=True, capture_output=True)
    p.once()
    (job,) = p.jobs()
    assert job["state"] == "done" and job["attempts"] == 1
    assert p.library() == ["tv/Broken Show/Season 02/Broken Show S02E03.mkv"]


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tiny tmpfs needs root")
def test_full_disk_fails_keeps_source_and_leaves_no_temp(rips, tmp_path):
    p = Pipeline(tmp_path, max_attempts=2, keep_source=False,
                 languages=["eng", "bul", "fre", "jpn", "und"])
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(p.movies)],
                             capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount tmpfs: {mounted.stderr.decode().strip()}")
    try:
        put(rips["full"], p.staging / "Big Film.mkv")
        p.once()
        (job,) = p.jobs()
        assert job["state"] == "failed" and job["attempts"] == 2
        assert "disk full" in job["reason"]
        assert os.listdir(p.movies) == []
        assert (p.staging / "Big Film.mkv").exists()
    finally:
        subprocess.run(["umount", str(p.movies)], check=False)


def _wait_running(p):
    def running_with_partial():
        jobs = p.jobs() if p.db.exists() else []
        active = [j for j in jobs if j["state"] == "running" and j["dest"]]
        if not active:
            return None
        tmp = os.path.join(os.path.dirname(active[0]["dest"]), "." + os.path.basename(active[0]["dest"]) + ".partial")
        return (active[0], tmp) if os.path.exists(tmp) else None

    return wait_for(running_with_partial, timeout=60, interval=0.1, what="an encode in progress")


def test_crash_mid_encode_is_redone_after_restart(rips, tmp_path):
    port = free_port()
    p = Pipeline(tmp_path, preset="slow", metrics_port=port, metrics_bind="127.0.0.1")
    put(rips["slow"], p.staging / "Crash Test (2024).mkv")
    service = p.start()
    try:
        job, tmp = _wait_running(p)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        assert 'media_pipeline_jobs{state="running"} 1' in text
        assert 'media_pipeline_job_progress_ratio{job="1",source="Crash Test (2024).mkv",worker="' in text
        kill(service)  # kill -9: no chance to clean up
    finally:
        kill(service)
    wait_for(lambda: not processes_with(tmp), timeout=10, what="ffmpeg to die with the service")
    assert not (p.movies / "Crash Test (2024).mkv").exists()  # the library never shows a half file

    run = p.once()
    assert "redoing from scratch" in run.stderr or "queued again" in run.stderr
    (job,) = p.jobs()
    assert job["state"] == "done" and job["attempts"] == 2
    assert p.library() == ["movies/Crash Test (2024).mkv"]  # exactly one file, no temp
    assert float(probe(p.movies / "Crash Test (2024).mkv")["format"]["duration"]) == pytest.approx(10, abs=0.2)


def test_sigterm_requeues_without_spending_an_attempt(rips, tmp_path):
    p = Pipeline(tmp_path, preset="slow")
    put(rips["slow"], p.staging / "Graceful.mkv")
    service = p.start()
    try:
        _wait_running(p)
        service.send_signal(signal.SIGTERM)
        assert service.wait(timeout=30) == 0
    finally:
        kill(service)
    (job,) = p.jobs()
    assert job["state"] == "queued" and job["attempts"] == 0 and job["reason"] == "interrupted by shutdown"
    assert p.library() == []
    p.configure(preset="ultrafast")
    p.once()
    assert p.jobs()[0]["state"] == "done" and p.library() == ["movies/Graceful.mkv"]


def test_second_run_is_refused_while_one_is_active(rips, tmp_path):
    p = Pipeline(tmp_path)
    service = p.start()
    try:
        wait_for(lambda: (tmp_path / "state" / "jobs.sqlite3.lock").exists(), what="the lock")
        time.sleep(0.2)
        second = subprocess.run(p.argv("run", "--once"), capture_output=True, text=True,
                                env=ENV, timeout=60)
        assert second.returncode == 1 and "another media-pipeline run" in second.stderr
    finally:
        kill(service, signal.SIGTERM)


def test_concurrency_two(rips, tmp_path):
    p = Pipeline(tmp_path, concurrency=2)
    for n in range(4):
        put(rips["four"], p.staging / f"Film {n}.mkv")
    p.once()
    jobs = p.jobs()
    assert [j["state"] for j in jobs] == ["done"] * 4
    assert jobs[1]["started"] < jobs[0]["finished"]  # the first two ran side by side
    assert len(p.library()) == 4


def test_two_rips_for_one_library_name(rips, tmp_path):
    p = Pipeline(tmp_path, concurrency=2)
    put(rips["four"], p.staging / "Film.mkv")
    put(rips["no_subs"], p.staging / "Film" / "title_t00.mkv")
    p.once()
    states = sorted(j["state"] for j in p.jobs())
    assert states == ["done", "failed"]
    assert p.library() == ["movies/Film.mkv"]  # one file, no temp, nothing overwritten


# --- a flood of stalled connections (issue item 6) -------------------------------------------

STALLED = 500


def _threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return int(next(line.split()[1] for line in fh if line.startswith("Threads:")))


def _get(url: str, timeout: float) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.status, resp.read().decode()


def _answers(*urls: str) -> bool:
    try:
        return all(_get(url, 2)[0] == 200 for url in urls)
    except OSError:  # not listening yet
        return False


def _all_closed_by_server(clients, timeout: float) -> bool:
    """Every connection got EOF (after a 503, or after its request timed out) within timeout seconds."""
    import select

    pending, deadline = set(clients), time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        readable, _, _ = select.select(list(pending), [], [], 0.5)
        for c in readable:
            try:
                data = c.recv(65536)
            except ConnectionResetError:
                data = b""
            if not data:
                pending.discard(c)
    return not pending


def _small_address_space():
    """Thread stacks of 8 MiB in 1.5 GiB of address space: room for the service, its encode and its
    capped servers, not for a thread per connection (before the fix, 500 threads could not be
    started, the job's thread failed to start and the service exited)."""
    import resource

    resource.setrlimit(resource.RLIMIT_STACK, (8 << 20, 8 << 20))
    resource.setrlimit(resource.RLIMIT_AS, (1536 << 20, 1536 << 20))


def test_stalled_connections_neither_stop_encoding_nor_the_page(rips, tmp_path):
    import resource
    import socket

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4 * STALLED:  # our end of every connection is a file descriptor
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4 * STALLED, hard), hard))
    web_port, metrics_port = free_port(), free_port()
    p = Pipeline(tmp_path, web_port=web_port, metrics_port=metrics_port)
    log = tmp_path / "service.log"  # a file, not a pipe nobody reads while the flood goes on
    with open(log, "w") as err:
        service = subprocess.Popen(p.argv("run"), stdout=subprocess.DEVNULL, stderr=err, text=True,
                                   env={**ENV, "MALLOC_ARENA_MAX": "2"}, preexec_fn=_small_address_space)
    clients = []
    try:
        page, metrics = f"http://127.0.0.1:{web_port}/", f"http://127.0.0.1:{metrics_port}/metrics"
        wait_for(lambda: _answers(page, metrics), timeout=30, interval=0.2, what="the page and /metrics")
        idle_threads = _threads(service.pid)
        for n in range(STALLED):  # half to each server; half of those send half a request line, then stall
            c = socket.create_connection(("127.0.0.1", web_port if n % 2 else metrics_port), timeout=10)
            if n % 4 < 2:
                c.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1")
            clients.append(c)
        time.sleep(0.5)
        flood_threads = _threads(service.pid)

        # the service keeps encoding while they are open
        put(rips["four"], p.staging / "During The Flood.mkv", age=5)
        wait_for(lambda: service.poll() is not None or [j["state"] for j in p.jobs()] == ["done"], timeout=90,
                 interval=0.2, what="a job to finish during the flood")
        assert service.poll() is None, log.read_text()[-3000:]
        assert p.library() == ["movies/During The Flood.mkv"]
        # one thread per admitted connection (16 a server) at most: before, one for each of the 500
        assert flood_threads <= idle_threads + 2 * 16 + 2

        # the servers drop what they refused at once and the stalled ones after 10 s; nothing waits for ever
        assert _all_closed_by_server(clients, timeout=15), "stalled connections still held by the service"
        for c in clients:
            c.close()
        clients.clear()
        for url, expect in ((page, "media-pipeline"), (metrics, 'media_pipeline_jobs{state="done"} 1.0')):
            started = time.monotonic()
            status, body = _get(url, 1)
            assert status == 200 and expect in body and time.monotonic() - started < 1.0
        assert service.poll() is None
    finally:
        for c in clients:
            c.close()
        kill(service, signal.SIGTERM)
    err = log.read_text()
    assert service.returncode == 0 and "Traceback" not in err, err[-3000:]
    assert "more than 16 connections at once" in err  # said, once a minute at most


# --- the pool's top-level folders (issue item 3b) ------------------------------------------

def _api(port: int) -> dict:
    import json

    return json.loads(_get(f"http://127.0.0.1:{port}/api/status", 5)[1])


def test_pool_gone_mid_encode_job_waits_and_movies_is_never_created(rips, tmp_path):
    web_port = free_port()
    p = Pipeline(tmp_path, preset="slow", web_port=web_port, max_attempts=1)
    put(rips["slow"], p.staging / "Unmounted (2024).mkv")
    service = p.start()
    try:
        _job, tmp = _wait_running(p)
        shutil.rmtree(p.movies)  # the pool goes away under the encode (its temp file with it)

        def deferred():
            (job,) = p.jobs()
            return job if job["state"] == "queued" and "waiting for the pool" in job["reason"] else None

        job = wait_for(deferred, timeout=120, interval=0.2, what="the job back in the queue")
        time.sleep(2)  # ten polls: nothing is claimed, failed or created meanwhile
        (job,) = p.jobs()
        assert job["state"] == "queued" and job["attempts"] == 0  # max_attempts=1: a counted try would fail it
        assert not p.movies.exists() and not os.path.exists(tmp)
        assert _api(web_port)["pool_missing"] == [{"dir": "movies", "path": str(p.movies)}]
        assert (p.staging / "Unmounted (2024).mkv").exists()

        p.movies.mkdir()  # mounted again
        wait_for(lambda: p.jobs()[0]["state"] == "done", timeout=180, interval=0.5,
                 what="the job after the pool is back")
        assert p.library() == ["movies/Unmounted (2024).mkv"] and _api(web_port)["pool_missing"] == []
    finally:
        kill(service, signal.SIGTERM)
    err = service.stderr.read()
    assert err.count("waiting for it") == 1 and err.count("storage pool is back") == 1, err[-3000:]


def test_missing_staging_is_said_once_and_the_service_waits(rips, tmp_path):
    web_port = free_port()
    p = Pipeline(tmp_path, web_port=web_port)
    service = p.start()
    away = tmp_path / "staging-unmounted"
    try:
        wait_for(lambda: _answers(f"http://127.0.0.1:{web_port}/"), timeout=30, interval=0.2, what="the page")
        p.staging.rename(away)
        wait_for(lambda: _api(web_port)["pool_missing"] == [{"dir": "staging", "path": str(p.staging)}],
                 timeout=10, interval=0.2, what="the page to show staging missing")
        time.sleep(2)  # ten polls
        assert service.poll() is None and not p.staging.exists()
        put(rips["four"], away / "Back Again.mkv", age=5)
        away.rename(p.staging)
        wait_for(lambda: p.db.exists() and [j["state"] for j in p.jobs()] == ["done"], timeout=90,
                 interval=0.2, what="the rip found once staging is back")
        assert _api(web_port)["pool_missing"] == []
    finally:
        kill(service, signal.SIGTERM)
    err = service.stderr.read()
    assert service.returncode == 0
    assert err.count(f"staging {p.staging} does not exist (is the storage pool mounted?)") == 1, err[-3000:]
    assert err.count("storage pool is back") == 1


# --- GPU engine usage: the pids sampled are the running encoder's --------------------------

def test_gpu_usage_reads_the_running_ffmpeg_and_says_why_there_is_no_figure(rips, tmp_path):
    """A real encode (libx265, no GPU here): the sampler reads the ffmpeg the service started
    (its pid, not a stale one), the page says why there is no figure, and /metrics declares the
    GPU families without a sample. The figures themselves: tests/unit/test_gpu_usage.py."""
    import re

    web_port, metrics_port = free_port(), free_port()
    p = Pipeline(tmp_path, preset="slow", web_port=web_port, metrics_port=metrics_port)
    put(rips["slow"], p.staging / "Busy (2024).mkv")
    service = p.start()
    try:
        job, tmp = _wait_running(p)
        gpu = _api(web_port)["gpu_usage"]
        assert gpu["pids"] == processes_with(tmp) == [job["pid"]]
        assert gpu["reason"].startswith("encodes run on the CPU (encoder libx265)"), gpu
        assert gpu["engines"] == {} and gpu["memory_bytes"] is None and gpu["clients"] == 0
        text = _get(f"http://127.0.0.1:{metrics_port}/metrics", 5)[1]
        assert "# TYPE media_pipeline_gpu_engine_busy_ratio gauge" in text
        assert "# TYPE media_pipeline_gpu_memory_bytes gauge" in text
        assert not re.search(r"^media_pipeline_gpu_\w+(\{.*\})? ", text, re.M)  # no sample
        wait_for(lambda: [j["state"] for j in p.jobs()] == ["done"], timeout=120, interval=0.5, what="the encode")
        assert _api(web_port)["gpu_usage"]["reason"] == "no encode is running"
    finally:
        kill(service, signal.SIGTERM)
    assert "Traceback" not in service.stderr.read()
