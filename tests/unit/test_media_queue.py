"""The queue's config keys, the password file, and what `status`, `workers`, the page and the
metrics show of workers, on the SQLite store (PostgreSQL: tests/queue)."""

from __future__ import annotations

import json
import os
import urllib.request

import pytest

from media_pipeline import config as cfgmod
from media_pipeline import service, web
from media_pipeline.jobqueue import open_store, read_password_file, worker_state
from media_pipeline.metrics import PipelineCollector, new_registry
from prometheus_client import generate_latest


def test_db_url_and_queue_keys():
    cfg = cfgmod.from_dict({"db": "postgresql://media@db.lan:5432/media", "db_password_file": "/etc/mp/db-password",
                            "worker_name": "transcoder-2", "lease_seconds": 30})
    assert cfg.db.startswith("postgresql://") and cfg.worker_name == "transcoder-2" and cfg.lease_seconds == 30.0
    socket_url = "postgresql://media@/media?host=/run/postgresql"
    assert cfgmod.from_dict({"db": socket_url}).db == socket_url
    defaults = cfgmod.from_dict({})
    assert defaults.db.endswith("jobs.sqlite3") and defaults.worker_name == "" and defaults.lease_seconds == 60.0


@pytest.mark.parametrize("raw, words", [
    ({"db": "postgresql://media:secret@db.lan/media"}, ["'db'", "password", "db_password_file"]),
    ({"db": "postgresql://media@db.lan/media?password=x"}, ["'db'", "password="]),
    ({"db": "postgresql:///media"}, ["'db'", "names no host"]),
    ({"db": "relative/jobs.sqlite3"}, ["'db'", "absolute path"]),
    ({"db_password_file": "/etc/pw"}, ["'db_password_file'", "SQLite"]),
    ({"db": "postgresql://m@h/d", "db_password_file": "pw"}, ["'db_password_file'", "absolute"]),
    ({"worker_name": "two words"}, ["'worker_name'"]),
    ({"lease_seconds": 0}, ["'lease_seconds'", ">= 1"]),
    ({"x265_params": "pools=1 frame-threads=1"}, ["'x265_params'"]),
])
def test_bad_queue_keys_name_the_key(raw, words):
    with pytest.raises(cfgmod.ConfigError) as info:
        cfgmod.from_dict(raw)
    assert all(w in str(info.value) for w in words), str(info.value)


def test_x265_params_reach_the_encoder_args():
    from media_pipeline import ffargs

    opts = cfgmod.from_dict({"x265_params": "pools=1:frame-threads=1"}).encode_options()
    assert ffargs._video_codec_args({}, opts)[-1] == "log-level=error:pools=1:frame-threads=1"
    assert ffargs._video_codec_args({}, ffargs.EncodeOptions())[-1] == "log-level=error"


def test_password_file_must_be_private(tmp_path):
    pw = tmp_path / "db-password"
    pw.write_text("s3cret\n")
    pw.chmod(0o640)
    with pytest.raises(RuntimeError, match=r"readable by group or others \(mode 0640\); fix: chmod 600"):
        read_password_file(str(pw))
    pw.chmod(0o600)
    assert read_password_file(str(pw)) == "s3cret"
    with pytest.raises(RuntimeError, match="cannot read it"):
        read_password_file(str(tmp_path / "missing"))


def test_worker_states():
    assert worker_state(1.0, False, 60) == "healthy"
    assert worker_state(61.0, False, 60) == "stale"
    assert worker_state(1.0, True, 60) == "gone"
    assert worker_state(2 * 86400, False, 60) == "gone"


def _cfg(tmp_path, **kw):
    for d in ("staging", "movies", "tv", "state"):
        (tmp_path / d).mkdir(exist_ok=True)
    return cfgmod.from_dict({"staging": str(tmp_path / "staging"), "movies": str(tmp_path / "movies"),
                             "tv": str(tmp_path / "tv"), "db": str(tmp_path / "state" / "jobs.sqlite3"),
                             "metrics_textfile": "", "gpu_proof_file": "", "rip_status_file": "",
                             "worker_name": "alpha", **kw})


def test_status_workers_page_and_metrics_show_the_worker(tmp_path, capsys):
    cfg = _cfg(tmp_path)
    svc = service.Service(cfg)
    svc.store = open_store(cfg)
    s = svc.store
    s.start_worker("libx265")
    s.enqueue(f"{cfg.staging}/Film (2020).mkv", 1, 1)
    s.enqueue(f"{cfg.staging}/Other (2020).mkv", 1, 1)
    job = s.claim()
    s.update(job, dest=f"{cfg.movies}/Film (2020).mkv", stage="encoding")
    s.finish(job, 10.0, 5.0, 25.0)
    running = s.claim()
    s.heartbeat([running], {"job_id": running.id, "fps": 12.5})

    # status --json: each job's worker
    assert service.main(["--config", _write(tmp_path, cfg), "status", "--json"]) == 0
    jobs = json.loads(capsys.readouterr().out)
    assert [j["worker"] for j in jobs] == ["alpha", "alpha"] and "lease_token" not in jobs[0]
    assert service.main(["--config", _write(tmp_path, cfg), "status"]) == 0
    assert "WORKER" in capsys.readouterr().out
    # workers [--json]
    assert service.main(["--config", _write(tmp_path, cfg), "workers", "--json"]) == 0
    (w,) = json.loads(capsys.readouterr().out)
    assert (w["name"], w["encoder"], w["job_id"], w["fps"], w["state"]) == ("alpha", "libx265", running.id, 12.5,
                                                                              "healthy")
    assert w["host"] and w["heartbeat"] > 0
    assert service.main(["--config", _write(tmp_path, cfg), "workers"]) == 0
    table = capsys.readouterr().out
    assert "NAME" in table and "alpha" in table and "healthy" in table

    # the page: a workers table, and which worker did a job
    server = web.serve(svc, "127.0.0.1", 0)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/", timeout=10) as resp:
            html = resp.read().decode()
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/api/status", timeout=10) as resp:
            api = json.loads(resp.read().decode())
    finally:
        server.stop()
    assert 'id="workers"' in html and 'data-worker="alpha"' in html and 'class="worker">alpha<' in html
    assert api["workers"][0]["name"] == "alpha" and api["jobs"]["done"][0]["worker"] == "alpha"

    # metrics: workers by state, the worker of a running job, lease expiries
    with svc._guard:
        svc.running[running.id] = {"id": running.id, "source": running.source, "progress": 0.5, "fps": 12.5}
    text = generate_latest(new_registry(PipelineCollector(svc.snapshot))).decode()
    assert 'media_pipeline_workers{state="healthy"} 1.0' in text
    assert 'media_pipeline_workers{state="stale"} 0.0' in text
    assert f'media_pipeline_job_progress_ratio{{job="{running.id}",source="Other (2020).mkv",worker="alpha"}} 0.5' in text
    assert "media_pipeline_lease_expiries_total 0.0" in text
    s.stop_worker()
    assert s.workers()[0]["state"] == "gone"
    s.close()


def _write(tmp_path, cfg) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg.to_json()))
    return str(path)


def test_a_second_run_on_one_sqlite_file_is_refused(tmp_path):
    cfg = _cfg(tmp_path)
    a, b = open_store(cfg), open_store(cfg)
    a.start_worker("libx265")
    with pytest.raises(RuntimeError, match="another media-pipeline run"):
        b.start_worker("libx265")
    a.stop_worker()
    assert os.path.exists(cfg.db + ".lock")


def test_migrate_refuses_a_password_in_argv(tmp_path, capsys):
    cfg = _cfg(tmp_path)
    rc = service.main(["--config", _write(tmp_path, cfg), "migrate", "--from", cfg.db,
                       "--to", "postgresql://media:secret@db.lan/media"])
    assert rc == 2 and "db_password_file" in capsys.readouterr().err
