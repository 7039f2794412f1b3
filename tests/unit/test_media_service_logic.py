"""media-pipeline without ffmpeg: readiness rule, crash recovery of the job table, status, metrics."""

import json
import os
import time

import pytest

from media_pipeline import config as cfgmod
from media_pipeline import service
from media_pipeline.jobs import JobStore
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from media_pipeline.metrics import JobEvents, PipelineCollector, Snapshot, new_registry, serve, write_textfile
from media_pipeline.transcode import file_stamp, temp_path


def touch(path, data=b"x" * 100, age=0.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    t = time.time() - age
    os.utime(path, (t, t))
    return path


def test_scan_readiness(tmp_path):
    st = tmp_path / "staging"
    touch(st / "old.mkv", age=600)
    touch(st / "fresh.mkv", age=5)
    touch(st / "marked.mkv", age=1)
    touch(st / "marked.mkv.done", b"")
    touch(st / "marked2.m2ts", age=1)
    touch(st / "marked2.done", b"")
    touch(st / ".hidden.mkv", age=600)
    touch(st / ".partial" / "x.mkv", age=600)
    touch(st / "notes.txt", age=600)
    touch(st / "empty.mkv", b"", age=600)
    touch(st / "Disc (2001)" / "title_t00.MKV", age=600)
    found = {os.path.relpath(p, st) for p, _, _ in service.scan(str(st), 120, False)}
    assert found == {"old.mkv", "marked.mkv", "marked2.m2ts", "Disc (2001)/title_t00.MKV"}
    only_marked = {os.path.relpath(p, st) for p, _, _ in service.scan(str(st), 120, True)}
    assert only_marked == {"marked.mkv", "marked2.m2ts"}
    size_mtime = {os.path.basename(p): (size, m) for p, size, m in service.scan(str(st), 0, False)}
    assert size_mtime["old.mkv"] == (100, os.stat(st / "old.mkv").st_mtime_ns)


def make_cfg(tmp_path, **kw):
    for d in ("staging", "movies", "tv"):
        (tmp_path / d).mkdir(exist_ok=True)
    raw = {"staging": str(tmp_path / "staging"), "movies": str(tmp_path / "movies"),
           "tv": str(tmp_path / "tv"), "db": str(tmp_path / "state" / "jobs.sqlite3"),
           "metrics_textfile": str(tmp_path / "state" / "metrics.prom"), "stable_seconds": 0, **kw}
    return cfgmod.from_dict(raw)


def running_job(cfg, source, dest, stage, attempts=1):
    os.makedirs(os.path.dirname(cfg.db), exist_ok=True)
    s = JobStore(cfg.db)
    st = os.stat(source)
    s.enqueue(source, st.st_size, st.st_mtime_ns)
    for _ in range(attempts):
        job = s.claim()
        if _ < attempts - 1:
            s.requeue(job.id, "x", refund_attempt=False)
    s.update(job.id, dest=dest, stage=stage)
    s.close()
    return job.id


def recover(cfg):
    svc = service.Service(cfg)
    svc.store = JobStore(cfg.db)
    svc.recover()
    return svc.store


def test_recovery_redoes_an_interrupted_encode(tmp_path):
    cfg = make_cfg(tmp_path)
    src = touch(tmp_path / "staging" / "Film.mkv")
    dest = str(tmp_path / "movies" / "Film.mkv")
    job_id = running_job(cfg, str(src), dest, "encoding")
    touch(tmp_path / "movies" / ".Film.mkv.partial", b"half")
    store = recover(cfg)
    job = store.get(job_id)
    assert job.state == "queued" and "redoing" in job.reason and job.attempts == 1
    assert not os.path.exists(temp_path(dest)) and not os.path.exists(dest)


def stamp_job(cfg, job_id, path):
    """What transcode's before_commit records: the finished temp's inode:size:mtime."""
    s = JobStore(cfg.db)
    s.update(job_id, out_stamp=file_stamp(os.stat(path)))
    s.close()


def finalizing_job(tmp_path, cfg, output=b"complete output"):
    """A job that crashed in `finalizing`: source + marker in staging, its verified temp beside dest."""
    src = touch(tmp_path / "staging" / "Film.mkv")
    touch(tmp_path / "staging" / "Film.mkv.done", b"")
    dest = tmp_path / "movies" / "Film.mkv"
    job_id = running_job(cfg, str(src), str(dest), "finalizing")
    tmp = touch(tmp_path / "movies" / ".Film.mkv.partial", output)
    stamp_job(cfg, job_id, tmp)
    return job_id, src, dest, tmp


def test_recovery_finishes_an_interrupted_publish(tmp_path):
    cfg = make_cfg(tmp_path, keep_source=False)
    job_id, src, dest, tmp = finalizing_job(tmp_path, cfg)
    store = recover(cfg)
    job = store.get(job_id)
    assert job.state == "done" and job.source_removed == 1
    assert dest.read_bytes() == b"complete output" and not tmp.exists()
    assert not os.path.exists(src) and not os.path.exists(str(src) + ".done")


def test_recovery_after_publish_before_done(tmp_path):
    cfg = make_cfg(tmp_path, keep_source=False)
    job_id, src, dest, tmp = finalizing_job(tmp_path, cfg)
    os.link(tmp, dest)  # crashed between link() and unlink(): both names, one inode
    store = recover(cfg)
    job = store.get(job_id)
    assert job.state == "done" and job.source_removed == 1 and not tmp.exists()
    assert dest.read_bytes() == b"complete output"


def test_recovery_after_rename_keeps_source_by_default(tmp_path):
    cfg = make_cfg(tmp_path)
    job_id, src, dest, tmp = finalizing_job(tmp_path, cfg)
    os.rename(tmp, dest)
    store = recover(cfg)
    assert store.get(job_id).state == "done"
    assert os.path.exists(src)  # keep_source defaults to true


def test_recovery_never_takes_someone_elses_file_for_ours(tmp_path):
    # The temp vanished and a different file now has the library name: not done, source kept.
    cfg = make_cfg(tmp_path, keep_source=False)
    job_id, src, dest, tmp = finalizing_job(tmp_path, cfg)
    tmp.unlink()
    touch(dest, b"complete output", age=60)  # same size and content, another file (inode numbers may be reused)
    store = recover(cfg)
    job = store.get(job_id)
    assert job.state == "failed" and "is not the file this job wrote" in job.reason
    assert job.source_removed == 0 and os.path.exists(src) and os.path.exists(str(src) + ".done")
    assert dest.read_bytes() == b"complete output"


def test_recovery_with_a_foreign_file_and_our_temp_keeps_both_sources(tmp_path):
    cfg = make_cfg(tmp_path, keep_source=False)
    job_id, src, dest, tmp = finalizing_job(tmp_path, cfg)
    touch(dest, b"somebody else's film")
    store = recover(cfg)
    job = store.get(job_id)
    assert job.state == "failed" and "is not the file this job wrote" in job.reason
    assert dest.read_bytes() == b"somebody else's film" and not tmp.exists()
    assert os.path.exists(src)


def test_recovery_with_a_changed_temp_redoes_the_encode(tmp_path):
    cfg = make_cfg(tmp_path, keep_source=False)
    job_id, src, dest, tmp = finalizing_job(tmp_path, cfg)
    tmp.write_bytes(b"not what was verified")
    store = recover(cfg)
    job = store.get(job_id)
    assert job.state == "queued" and not dest.exists() and not tmp.exists() and os.path.exists(src)


def test_recovery_of_a_row_without_a_stamp_is_redone(tmp_path):
    # A `finalizing` row from before out_stamp existed: nothing proves the library file is ours.
    cfg = make_cfg(tmp_path, keep_source=False)
    src = touch(tmp_path / "staging" / "Film.mkv")
    dest = touch(tmp_path / "movies" / "Film.mkv", b"complete output")
    job_id = running_job(cfg, str(src), str(dest), "finalizing")
    store = recover(cfg)
    assert store.get(job_id).state == "queued" and os.path.exists(src)
    assert dest.read_bytes() == b"complete output"


def test_after_success_deletes_the_source_only_for_our_file(tmp_path):
    cfg = make_cfg(tmp_path, keep_source=False)
    job_id, src, dest, tmp = finalizing_job(tmp_path, cfg)
    touch(dest, b"complete output")  # same bytes, another inode
    svc = service.Service(cfg)
    svc.store = JobStore(cfg.db)
    svc.after_success(svc.store.get(job_id))
    assert os.path.exists(src) and svc.store.get(job_id).source_removed == 0
    dest.unlink()
    os.link(tmp, dest)
    svc.after_success(svc.store.get(job_id))
    assert not os.path.exists(src) and svc.store.get(job_id).source_removed == 1


def test_recovery_gives_up_after_max_attempts(tmp_path):
    cfg = make_cfg(tmp_path, max_attempts=2)
    src = touch(tmp_path / "staging" / "Crashy.mkv")
    job_id = running_job(cfg, str(src), str(tmp_path / "movies" / "Crashy.mkv"), "encoding", attempts=2)
    store = recover(cfg)
    job = store.get(job_id)
    assert job.state == "failed" and "interrupted 2 time(s)" in job.reason
    assert os.path.exists(src)


def test_second_instance_refused(tmp_path):
    cfg = make_cfg(tmp_path)
    os.makedirs(os.path.dirname(cfg.db), exist_ok=True)
    first = service.InstanceLock(cfg.db)
    first.acquire()
    with pytest.raises(RuntimeError, match=f"another media-pipeline run \\(pid {os.getpid()}\\)"):
        service.InstanceLock(cfg.db).acquire()
    first.release()
    service.InstanceLock(cfg.db).acquire()


def test_missing_staging_is_a_clear_error(tmp_path):
    cfg = make_cfg(tmp_path)
    os.rmdir(cfg.staging)
    with pytest.raises(RuntimeError, match="staging directory .* does not exist .*mounted"):
        service.Service(cfg).preflight()


def test_status_table_and_json(tmp_path, capsys):
    cfg = make_cfg(tmp_path)
    src = touch(tmp_path / "staging" / "Amélie \"q\" 'x'.mkv")
    running_job(cfg, str(src), str(tmp_path / "movies" / "Amélie \"q\" 'x'.mkv"), "encoding")
    cfg_file = tmp_path / "config.json"
    cfg_file.write_text(json.dumps(cfg.to_json()))
    assert service.main(["--config", str(cfg_file), "status"]) == 0
    out = capsys.readouterr().out
    assert "running" in out and "staging/Amélie \"q\" 'x'.mkv" in out and "1/3" in out
    assert service.main(["status", "--json", "--config", str(cfg_file)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data[0]["state"] == "running" and data[0]["source"] == str(src)


def test_status_without_database(tmp_path, capsys):
    cfg = make_cfg(tmp_path)
    cfg_file = tmp_path / "config.json"
    cfg_file.write_text(json.dumps(cfg.to_json()))
    assert service.main(["--config", str(cfg_file), "status"]) == 0
    assert "no jobs yet" in capsys.readouterr().out


def test_run_with_bad_config_exits_2(tmp_path, capsys):
    cfg_file = tmp_path / "config.json"
    cfg_file.write_text('{"concurency": 2}')
    assert service.main(["--config", str(cfg_file), "run", "--once"]) == 2
    assert "did you mean 'concurrency'" in capsys.readouterr().err


def test_metrics_render():
    snap = Snapshot({"queued": 2, "running": 1, "done": 5, "failed": 1}, 3600.5, 1200.0, 87.25, 1.5,
                    [{"id": 7, "source": '/s/Amélie "q"\\.mkv', "progress": 0.4213, "fps": 80}],
                    1700000000.0, 42.0, {"staging": (10, 100), "movies": (5, 1000)})
    registry = new_registry(PipelineCollector(lambda: snap))
    events = JobEvents(registry)
    events.observe("done", 45.0)
    events.observe("failed", 3.0)
    text = generate_latest(registry).decode()
    assert 'media_pipeline_jobs{state="queued"} 2.0' in text
    assert 'media_pipeline_jobs{state="failed"} 1.0' in text
    assert "media_pipeline_queue_length 2.0" in text
    assert "media_pipeline_oldest_queued_job_age_seconds 42.0" in text
    assert "media_pipeline_encoded_seconds_total 3600.5" in text
    assert "media_pipeline_encode_fps 87.25" in text
    assert "media_pipeline_encode_speed_ratio 1.5" in text
    assert 'media_pipeline_job_progress_ratio{job="7",source="Amélie \\"q\\"\\\\.mkv",worker=""} 0.4213' in text
    assert 'media_pipeline_filesystem_free_bytes{dir="staging"} 10.0' in text
    assert 'media_pipeline_filesystem_size_bytes{dir="movies"} 1000.0' in text
    assert "# TYPE media_pipeline_encoded_seconds_total counter" in text
    assert 'media_pipeline_jobs_finished_total{outcome="done"} 1.0' in text
    assert 'media_pipeline_jobs_finished_total{outcome="retry"} 0.0' in text
    assert 'media_pipeline_job_duration_seconds_bucket{le="60.0",outcome="done"} 1.0' in text
    assert 'media_pipeline_job_duration_seconds_bucket{le="30.0",outcome="done"} 0.0' in text
    assert 'media_pipeline_job_duration_seconds_count{outcome="failed"} 1.0' in text
    families = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert families["media_pipeline_job_duration_seconds"] == "histogram"
    assert families["media_pipeline_jobs_finished"] == "counter"


def test_metrics_textfile_and_server(tmp_path):
    import urllib.error
    import urllib.request

    snap = Snapshot({"queued": 3})
    registry = new_registry(PipelineCollector(lambda: snap))
    path = tmp_path / "prom" / "m.prom"
    write_textfile(str(path), registry)
    assert 'media_pipeline_jobs{state="queued"} 3.0' in path.read_text() and len(os.listdir(path.parent)) == 1
    server = serve(registry, "127.0.0.1", 0)
    try:
        snap.counts["queued"] = 4  # read at scrape time, not at start
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics") as resp:
            assert 'media_pipeline_jobs{state="queued"} 4.0' in resp.read().decode()
            assert resp.headers["Content-Type"].startswith("text/plain")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/nope")
        assert err.value.code == 404
    finally:
        server.stop()


def test_undecodable_names_are_skipped_not_fatal(tmp_path, caplog):
    cfg = make_cfg(tmp_path)
    good = touch(tmp_path / "staging" / "good.mkv", age=10)
    bad = os.path.join(os.fsencode(cfg.staging), b"bad \xff name.mkv")
    with open(bad, "wb") as fh:
        fh.write(b"x" * 10)
    os.makedirs(os.path.dirname(cfg.db), exist_ok=True)
    svc = service.Service(cfg)
    svc.store = JobStore(cfg.db)
    svc.enqueue_ready()
    svc.enqueue_ready()
    assert [j.source for j in svc.store.list_jobs()] == [str(good)]
    assert sum("not valid UTF-8" in r.message for r in caplog.records) == 1


def test_publish_textfile_and_exposition_shared_by_both_services(tmp_path, caplog):
    import logging

    from media_pipeline import rip_service, rip_store
    from media_pipeline.metrics import exposition, publish_textfile

    registry = new_registry(PipelineCollector(lambda: Snapshot({"failed": 2})))
    assert 'media_pipeline_jobs{state="failed"} 2.0' in exposition(registry)
    publish_textfile("", registry, logging.getLogger("t"))  # off: nothing written, nothing raised
    blocker = tmp_path / "file"
    blocker.write_text("x")
    publish_textfile(str(blocker / "m.prom"), registry, logging.getLogger("t"))  # cannot write: logged
    assert "cannot write" in caplog.text and blocker.read_text() == "x"
    # media-rip goes through the same two helpers
    cfg = cfgmod.rip_from_dict({"staging": str(tmp_path), "db": str(tmp_path / "r.sqlite3"),
                                "metrics_textfile": str(tmp_path / "rip.prom"), "status_file": ""})
    svc = rip_service.Service(cfg)
    svc.store = rip_store.RipStore(cfg.db)
    svc.publish_metrics()
    assert "media_rip_rips{state=\"done\"} 0.0" in (tmp_path / "rip.prom").read_text()
    assert "media_rip_info" in svc.metrics_text()


# --- the HTTP server of /metrics and the status page (issue item 6) ----------------------

def _hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello\n"]


def _closed_by_server(sock, timeout):
    """True when the server closed this connection (EOF, or a reset) within timeout seconds."""
    import socket

    sock.settimeout(timeout)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False
    return True


def test_http_server_caps_connections_and_drops_stalled_ones():
    import socket
    import threading
    import urllib.request

    from media_pipeline.metrics import WSGIThreadServer

    server = WSGIThreadServer("127.0.0.1", 0, _hello, "t", max_connections=4, request_timeout=1.0).start()
    threads_before = threading.active_count()
    clients = []
    try:
        for n in range(4):  # hold every slot: two send nothing, two half a request line
            c = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            if n % 2:
                c.sendall(b"GET /met")
            clients.append(c)
        wait = time.monotonic() + 5
        while server.httpd.active() < 4 and time.monotonic() < wait:
            time.sleep(0.01)
        assert server.httpd.active() == 4
        started = time.monotonic()
        extra = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        clients.append(extra)
        answer = extra.recv(4096)
        assert answer.startswith(b"HTTP/1.0 503 ") and b"too many connections" in answer
        assert time.monotonic() - started < 2.0  # refused at once (not after the 1 s request timeout), not queued
        assert threading.active_count() <= threads_before + 4  # one thread per admitted connection, no more
        # the stalled ones lose their slot after request_timeout; the server closes them
        assert all(_closed_by_server(c, 6.0) for c in clients[:4])
        assert time.monotonic() - started < 8.0  # bounded by request_timeout, not held for ever
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/", timeout=1) as resp:
            assert resp.read() == b"hello\n"
    finally:
        for c in clients:
            c.close()
        server.stop()


def test_http_server_cuts_a_client_that_dribbles_its_request():
    import socket

    from media_pipeline.metrics import WSGIThreadServer

    server = WSGIThreadServer("127.0.0.1", 0, _hello, "t", max_connections=2, request_timeout=1.0).start()
    try:
        c = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        started, cut = time.monotonic(), False
        for byte in b"GET / HTTP/1.0\r\nX-Slow: " + b"a" * 40:  # a byte every 0.1 s: each read is quick
            try:
                c.sendall(bytes([byte]))
            except OSError:
                cut = True
                break
            if _closed_by_server(c, 0.1):
                cut = True
                break
        assert cut and time.monotonic() - started < 2.0  # the whole request had 1 s, not 1 s per byte
        c.close()
    finally:
        server.stop()


def test_http_server_survives_a_thread_that_cannot_start(monkeypatch, caplog):
    import socket
    import threading
    import urllib.request

    from media_pipeline import metrics

    server = metrics.WSGIThreadServer("127.0.0.1", 0, _hello, "t", max_connections=2, request_timeout=1.0).start()
    real_start = threading.Thread.start

    def start(self):
        if self.name.endswith("-conn"):
            raise RuntimeError("can't start new thread")
        real_start(self)

    try:
        monkeypatch.setattr(threading.Thread, "start", start)
        for _ in range(3):  # more than the cap: a failed start must give its slot back
            c = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            c.sendall(b"GET / HTTP/1.0\r\n\r\n")
            assert _closed_by_server(c, 2.0)
            c.close()
        assert "cannot serve 127.0.0.1: can't start new thread" in caplog.text
        monkeypatch.setattr(threading.Thread, "start", real_start)
        assert server.thread.is_alive()
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/", timeout=2) as resp:
            assert resp.read() == b"hello\n"
    finally:
        monkeypatch.setattr(threading.Thread, "start", real_start)
        server.stop()


def test_dispatch_survives_a_worker_thread_that_cannot_start(tmp_path, monkeypatch, caplog):
    import threading

    cfg = make_cfg(tmp_path)
    src = touch(tmp_path / "staging" / "Film.mkv", age=10)
    os.makedirs(os.path.dirname(cfg.db), exist_ok=True)
    svc = service.Service(cfg)
    svc.store = JobStore(cfg.db)
    svc.enqueue_ready()

    def cannot_start(self):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", cannot_start)
    svc.dispatch()  # before: the RuntimeError left the loop and the service exited
    (job,) = svc.store.list_jobs()
    assert job.source == str(src) and job.state == "queued" and job.attempts == 0
    assert "could not start a thread" in job.reason and not svc.workers
    assert "cannot start a worker thread" in caplog.text


# --- the pool's top-level folders are never created (issue item 3b) ----------------------

def test_make_dirs_below_never_creates_the_root(tmp_path):
    tv = tmp_path / "tv"
    with pytest.raises(FileNotFoundError):
        service.make_dirs_below(str(tv), str(tv / "Show" / "Season 01"))
    assert not tv.exists()
    tv.mkdir()
    service.make_dirs_below(str(tv), str(tv / "Show" / "Season 01"))
    assert (tv / "Show" / "Season 01").is_dir()
    service.make_dirs_below(str(tv), str(tv / "Show" / "Season 01"))  # already there: fine
    (tv / "Other").write_text("a file where a folder should be")
    with pytest.raises(NotADirectoryError):
        service.make_dirs_below(str(tv), str(tv / "Other" / "Season 01"))
    with pytest.raises(ValueError):
        service.make_dirs_below(str(tv), str(tmp_path / "elsewhere"))


def test_missing_output_root_defers_the_job_and_creates_nothing(tmp_path, caplog):
    caplog.set_level("INFO", logger="media-pipeline")
    cfg = make_cfg(tmp_path, max_attempts=1)
    src = touch(tmp_path / "staging" / "Film.mkv", age=10)
    os.rmdir(cfg.movies)  # the pool's movies/ is gone: not mounted
    os.makedirs(os.path.dirname(cfg.db), exist_ok=True)
    svc = service.Service(cfg)
    svc.store = JobStore(cfg.db)
    svc.enqueue_ready()
    job = svc.store.claim()  # as if claimed just before movies/ went away
    svc.process(job)
    job = svc.store.get(job.id)
    assert not os.path.exists(cfg.movies)
    assert job.state == "queued" and job.attempts == 0  # not failed, the attempt not counted (max_attempts=1)
    assert "waiting for the pool" in job.reason and cfg.movies in job.reason and "mounted" in job.reason
    assert os.path.exists(src)
    for _ in range(3):  # polls: said once, and nothing is claimed while it is missing
        assert svc.check_pool() == ["movies"]
        svc.dispatch()
    assert not svc.workers and svc.store.get(job.id).state == "queued"
    said = [r.message for r in caplog.records if "does not exist" in r.message and "waiting for it" in r.message]
    assert len(said) == 1 and f"movies {cfg.movies}" in said[0]
    os.mkdir(cfg.movies)
    assert svc.check_pool() == [] and "storage pool is back" in caplog.text


def test_missing_staging_is_reported_once_and_fails_no_job(tmp_path, caplog):
    cfg = make_cfg(tmp_path, max_attempts=1)
    touch(tmp_path / "staging" / "Film.mkv", age=10)
    os.makedirs(os.path.dirname(cfg.db), exist_ok=True)
    svc = service.Service(cfg)
    svc.store = JobStore(cfg.db)
    svc.enqueue_ready()
    job = svc.store.claim()
    os.rename(cfg.staging, str(tmp_path / "unmounted"))  # the source is "gone" only because the pool is
    svc.process(job)
    assert svc.store.get(job.id).state == "queued" and svc.store.get(job.id).attempts == 0
    for _ in range(3):
        svc.check_pool()
    assert sum("does not exist" in r.message and "waiting for it" in r.message for r in caplog.records) == 1
    assert not os.path.exists(cfg.staging)  # never created either


def test_status_warns_when_the_pool_is_missing(tmp_path, capsys):
    cfg = make_cfg(tmp_path)
    cfg_file = tmp_path / "config.json"
    cfg_file.write_text(json.dumps(cfg.to_json()))
    os.rmdir(cfg.tv)
    assert service.main(["--config", str(cfg_file), "status", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == [] and f"tv {cfg.tv} does not exist" in err and "mounted" in err


def test_http_server_stop_never_hangs_when_the_server_thread_starts_late():
    """stop() right after start(), before the thread reaches serve_forever (a port clash of the next
    server, a failing recover()): shutdown() must not wait for a loop that never runs."""
    import threading

    from media_pipeline.metrics import WSGIThreadServer

    for _ in range(5):
        server = WSGIThreadServer("127.0.0.1", 0, _hello, "t")
        late = server._serve
        server.thread = threading.Thread(target=lambda: (time.sleep(0.05), late()), daemon=True)
        server.start()
        stopper = threading.Thread(target=server.stop, daemon=True)
        stopper.start()
        stopper.join(10)
        assert not stopper.is_alive(), "stop() hung"
        server.thread.join(10)
        assert not server.thread.is_alive()
    never = WSGIThreadServer("127.0.0.1", 0, _hello, "t")  # never started
    stopper = threading.Thread(target=never.stop, daemon=True)
    stopper.start()
    stopper.join(10)
    assert not stopper.is_alive()


def test_a_cancelled_job_stays_cancelled_and_its_rip_stays(tmp_path, capsys):
    """Cancel: the scan never queues the rip again (its key stays known), the file is left as it
    is, no worker claims it; status, --state, --json and the metrics count it; retry puts it back."""
    cfg = make_cfg(tmp_path)
    rip = touch(tmp_path / "staging" / "Some Disc" / "title_t00.mkv", age=10)
    other = touch(tmp_path / "staging" / "Other Disc" / "title_t00.mkv", age=10)
    os.makedirs(os.path.dirname(cfg.db), exist_ok=True)
    svc = service.Service(cfg)
    svc.store = JobStore(cfg.db)
    svc.enqueue_ready()
    (job,) = [j for j in svc.store.list_jobs() if j.source == str(rip)]
    assert svc.cancel(job.id) and not svc.cancel(job.id)
    svc.enqueue_ready()
    svc.enqueue_ready()
    assert len(svc.store.list_jobs()) == 2 and svc.store.get(job.id).state == "cancelled"
    assert rip.exists() and rip.read_bytes() == b"x" * 100
    claimed = svc.store.claim()
    assert claimed.source == str(other) and svc.store.claim() is None
    snap = svc.snapshot()
    assert snap.counts["cancelled"] == 1
    text = generate_latest(new_registry(PipelineCollector(lambda: snap))).decode()
    assert 'media_pipeline_jobs{state="cancelled"} 1.0' in text and "media_pipeline_queue_length 0.0" in text
    cfg_file = tmp_path / "config.json"
    cfg_file.write_text(json.dumps(cfg.to_json()))
    svc.store.close()
    assert service.main(["--config", str(cfg_file), "status", "--state", "cancelled"]) == 0
    out = capsys.readouterr().out
    assert "cancelled" in out and "staging/Some Disc/title_t00.mkv" in out and "Other Disc" not in out
    assert service.main(["--config", str(cfg_file), "status", "--json"]) == 0
    data = {j["id"]: j for j in json.loads(capsys.readouterr().out)}
    assert data[job.id]["state"] == "cancelled" and data[job.id]["priority"] == 0
    assert service.main(["--config", str(cfg_file), "retry", str(job.id)]) == 0  # a cancel can be undone
    assert "queued again" in capsys.readouterr().out
    store = JobStore(cfg.db)
    assert store.get(job.id).state == "queued" and store.get(job.id).attempts == 0
    store.close()


def test_cancel_and_front_from_the_command_line(tmp_path, capsys):
    """`media-pipeline cancel ID...` and `front ID...` do what the page's buttons do, for queued jobs
    only; a job in another state, or none, is named with why, and the exit code is 1."""
    cfg = make_cfg(tmp_path)
    os.makedirs(os.path.dirname(cfg.db), exist_ok=True)
    store = JobStore(cfg.db)
    a, b, c = (store.enqueue(str(tmp_path / "staging" / f"D{i}" / "title_t00.mkv"), 100, 1) for i in range(3))
    store.close()
    cfg_file = tmp_path / "config.json"
    cfg_file.write_text(json.dumps(cfg.to_json()))
    assert service.main(["--config", str(cfg_file), "front", str(c)]) == 0
    assert f"job {c}: at the front of the queue" in capsys.readouterr().out
    assert service.main(["--config", str(cfg_file), "cancel", str(a)]) == 0
    assert f"job {a}: cancelled" in capsys.readouterr().out
    assert service.main(["--config", str(cfg_file), "cancel", str(a), "999"]) == 1
    err = capsys.readouterr().err
    assert f"job {a}: not a queued job (it is cancelled)" in err and "job 999: not a queued job (there is no such job)" in err
    store = JobStore(cfg.db)
    assert store.get(a).state == "cancelled"
    assert store.claim().id == c and store.claim().id == b and store.claim() is None  # c went first
    store.close()
    assert service.main(["--config", str(cfg_file), "front", str(b)]) == 1
    assert f"job {b}: not a queued job (it is running)" in capsys.readouterr().err
