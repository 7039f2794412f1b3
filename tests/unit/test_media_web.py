"""The status page over a real job store and a real HTTP server: what it shows, retry, and bad requests."""

import base64
import json
import re
import os
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from media_pipeline import config as cfgmod
from media_pipeline import service, web
from media_pipeline.jobs import JobStore


@pytest.fixture
def page(tmp_path):
    def start(**kw):
        for d in ("staging", "movies", "tv"):
            (tmp_path / d).mkdir(exist_ok=True)
        (tmp_path / "state").mkdir(exist_ok=True)
        cfg = cfgmod.from_dict({"staging": str(tmp_path / "staging"), "movies": str(tmp_path / "movies"),
                                "tv": str(tmp_path / "tv"), "db": str(tmp_path / "state" / "jobs.sqlite3"),
                                "metrics_textfile": "", "gpu_proof_file": str(tmp_path / "gpu.json"),
                                "rip_status_file": str(tmp_path / "pool" / ".media-rip" / "status.json"), **kw})
        svc = service.Service(cfg)
        svc.store = JobStore(cfg.db)
        s = svc.store
        for n in range(4):
            s.enqueue(f"{cfg.staging}/Film {n} (2020).mkv", 100 + n, 1)
        done = s.claim()
        s.finish(done.id, 120.0, 60.0, 48.0)
        failed = s.claim()
        s.fail(failed.id, "bad input: truncated rip (no packet after 80% of 7200 s)", retry=False, max_attempts=3)
        running = s.claim()
        s.update(running.id, progress=0.4213, fps=31.5, dest=f"{cfg.movies}/Film 2 (2020).mkv")
        server = web.serve(svc, "127.0.0.1", 0)
        started.append(server)
        return svc, f"http://127.0.0.1:{server.port}", {"done": done.id, "failed": failed.id,
                                                          "running": running.id, "queued": 4}

    started = []
    yield start
    for server in started:
        server.stop()


def get(url, password=None, method="GET", data=None, headers=None):
    req = urllib.request.Request(url, method=method, data=data, headers=dict(headers or {}))
    if password is not None:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"me:{password}".encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode(), resp.headers
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), exc.headers


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args):
        return None


def post_retry(base, job_id, token, password=None, extra=None):
    req = urllib.request.Request(f"{base}/jobs/{job_id}/retry", method="POST",
                                 data=urllib.parse.urlencode({"csrf_token": token}).encode(),
                                 headers={"Content-Type": "application/x-www-form-urlencoded", **(extra or {})})
    if password is not None:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"me:{password}".encode()).decode())
    try:
        with urllib.request.build_opener(NoRedirect).open(req, timeout=10) as resp:
            return resp.status, resp.read().decode(), resp.headers
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), exc.headers


def token_of(html):
    return re.search(r'name="csrf_token" value="([0-9a-f]+)"', html).group(1)


def states(svc):
    return {j.id: (j.state, j.attempts, j.reason) for j in svc.store.list_jobs()}


def test_page_shows_every_state_space_and_absent_extras(page):
    svc, base, ids = page()
    status, html, headers = get(base + "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "truncated rip (no packet after 80% of 7200 s)" in html
    assert "42.1%" in html and "31.5" in html  # running job's progress and fps
    assert 'http-equiv="refresh"' in html
    assert "Film 3 (2020).mkv" in html  # queued
    assert "1 running" in html and "1 queued" in html and "1 done" in html and "1 failed" in html
    assert f'action="/jobs/{ids["failed"]}/retry"' in html
    assert "% free" in html and "staging" in html
    assert "no status file at" in html and "no GPU proof at" in html
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    data = json.loads(get(base + "/api/status")[1])
    assert [j["id"] for j in data["jobs"]["failed"]] == [ids["failed"]]
    assert data["jobs"]["running"][0]["progress"] == pytest.approx(0.4213)
    assert {fs["dir"] for fs in data["filesystems"]} == {"staging", "movies", "tv"}


def test_gpu_proof_and_rips_when_present(page, tmp_path):
    (tmp_path / "gpu.json").write_text(json.dumps({"ok": True, "render_node": "/dev/dri/renderD129",
                                                   "driver": "iHD", "encode": "ok"}))
    status_file = _media_rip_writes(tmp_path)
    _svc, base, _ = page()
    html = get(base + "/")[1]
    assert "proven" in html and "/dev/dri/renderD129" in html and "iHD" in html
    rows = dict(re.findall(r'<tr data-rip="(\d+)">(.*?)</tr>', html, re.S))
    assert "Blade Runner" in rows["1"] and "failed" in rows["1"] and "Failed to save title 1" in rows["1"]
    assert "Heat" in rows["2"] and "/pool/staging/Heat" in rows["2"] and "9.3 GiB" in rows["2"]
    assert "drive /dev/sr0: disc inserted" in html and "stale" not in html
    data = json.loads(get(base + "/api/status")[1])["rips"]
    assert data["state"] == "ok" and [r["name"] for r in data["rips"]] == ["Heat", "Blade Runner"]

    old = time.time() - 600  # media-rip stopped writing ten minutes ago
    os.utime(status_file, (old, old))
    raw = json.loads(open(status_file).read())
    raw["written"] = old
    open(status_file, "w").write(json.dumps(raw))
    html = get(base + "/")[1]
    assert "stale" in html and "is media-rip running" in html and "Blade Runner" in html

    open(status_file, "w").write('{"schema": 1, "written"')  # cut short
    html = get(base + "/")[1]
    assert "is not a media-rip status file" in html and 'data-rip="1"' not in html


def _media_rip_writes(tmp_path) -> str:
    """media-rip's own code writes the status file (its store, its Service.publish_status)."""
    from media_pipeline import rip

    cfg = cfgmod.rip_from_dict({"staging": str(tmp_path / "pool"), "db": str(tmp_path / "rip-state" / "r.sqlite3"),
                                "metrics_textfile": ""})
    (tmp_path / "rip-state").mkdir()
    svc = rip.Service(cfg)
    svc.store = rip.RipStore(cfg.db)
    r1 = svc.store.start("fp1", "BLADE_RUNNER", "Blade Runner", [rip.Title(0, 7000, 1000, "t0.mkv")] * 2)
    svc.store.update(r1, state="failed", reason="Failed to save title 1", finished=time.time(), exit_code=4)
    r2 = svc.store.start("fp2", "HEAT", "Heat", [rip.Title(0, 9000, 10_000_000_000, "t0.mkv")])
    svc.store.update(r2, state="done", folder="/pool/staging/Heat", bytes=10_000_000_000, finished=time.time())
    svc.drive_state_now = rip.DRIVE_INSERTED
    svc.publish_status()
    svc.store.close()
    return cfg.status_file


def test_retry_requeues_a_failed_job(page):
    svc, base, ids = page()
    token = token_of(get(base + "/")[1])
    status, _body, headers = post_retry(base, ids["failed"], token, extra={"Origin": base})
    assert status == 303 and headers["Location"] == f"/?retried={ids['failed']}"
    job = svc.store.get(ids["failed"])
    assert job.state == "queued" and job.attempts == 0
    assert f"Job {ids['failed']} is queued again." in get(base + f"/?retried={ids['failed']}")[1]


@pytest.mark.parametrize("case", ["unknown job", "not failed", "GET", "no token", "stale token",
                                  "cross-site origin", "null origin", "cross-site fetch", "not a form", "unknown page",
                                  "POST to page"])
def test_bad_requests_get_a_clear_error_and_change_nothing(page, case):
    svc, base, ids = page()
    token = token_of(get(base + "/")[1])
    before = states(svc)
    expected = {
        "unknown job": (lambda: post_retry(base, 999, token), 404, "no job 999"),
        "not failed": (lambda: post_retry(base, ids["done"], token), 409, "is done, not failed"),
        "GET": (lambda: get(f"{base}/jobs/{ids['failed']}/retry"), 405, "use POST"),
        "no token": (lambda: post_retry(base, ids["failed"], ""), 403, "CSRF token"),
        "stale token": (lambda: post_retry(base, ids["failed"], "0" * 64), 403, "CSRF token"),
        "cross-site origin": (lambda: post_retry(base, ids["failed"], token, extra={"Origin": "http://evil.example"}),
                              403, "cross-site request refused"),
        "null origin": (lambda: post_retry(base, ids["failed"], token, extra={"Origin": "null"}),
                        403, "cross-site request refused"),
        "cross-site fetch": (lambda: post_retry(base, ids["failed"], token, extra={"Sec-Fetch-Site": "cross-site"}),
                             403, "cross-site request refused"),
        "not a form": (lambda: get(f"{base}/jobs/{ids['failed']}/retry", method="POST", data=b"{}",
                                   headers={"Content-Type": "application/json"}), 415, "x-www-form-urlencoded"),
        "unknown page": (lambda: get(base + "/admin"), 404, "no such page: /admin"),
        "POST to page": (lambda: get(base + "/", method="POST", data=b""), 405, "read-only"),
    }[case]
    status, body, headers = expected[0]()
    assert status == expected[1] and expected[2] in body
    if status == 405:
        assert headers["Allow"]
    assert states(svc) == before


def test_password_required_when_set(page):
    svc, base, ids = page(web_password="s3cret pass", web_port=8480, web_bind="0.0.0.0")
    before = states(svc)
    status, body, headers = get(base + "/")
    assert status == 401 and "needs the password" in body and headers["WWW-Authenticate"].startswith("Basic")
    assert get(base + "/", password="wrong")[0] == 401
    assert get(base + "/api/status")[0] == 401
    assert post_retry(base, ids["failed"], "x")[0] == 401
    assert states(svc) == before
    status, html, _ = get(base + "/", password="s3cret pass")
    assert status == 200
    assert post_retry(base, ids["failed"], token_of(html), password="s3cret pass")[0] == 303
    assert svc.store.get(ids["failed"]).state == "queued"


def test_config_refuses_public_bind_without_password():
    with pytest.raises(cfgmod.ConfigError) as err:
        cfgmod.from_dict({"web_port": 8480, "web_bind": "0.0.0.0"})
    assert "'web_password'" in str(err.value) and "0.0.0.0" in str(err.value)
    cfgmod.from_dict({"web_port": 8480, "web_bind": "0.0.0.0", "web_password": "x"})
    cfgmod.from_dict({"web_port": 8480, "web_bind": "::1"})
    cfgmod.from_dict({"web_port": 0, "web_bind": "0.0.0.0"})  # off: nothing listens
    with pytest.raises(cfgmod.ConfigError, match="'web_bind'"):
        cfgmod.from_dict({"web_bind": "everywhere"})
    with pytest.raises(cfgmod.ConfigError, match="'web_port'"):
        cfgmod.from_dict({"web_port": 9464, "metrics_port": 9464})
