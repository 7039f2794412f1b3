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
    return post_action(base, job_id, "retry", token, password, extra)


def post_action(base, job_id, action, token, password=None, extra=None):
    req = urllib.request.Request(f"{base}/jobs/{job_id}/{action}", method="POST",
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
    from media_pipeline import rip_robot, rip_service, rip_store

    cfg = cfgmod.rip_from_dict({"staging": str(tmp_path / "pool"), "db": str(tmp_path / "rip-state" / "r.sqlite3"),
                                "metrics_textfile": "", "device": "/dev/sr0"})
    (tmp_path / "rip-state").mkdir()
    (tmp_path / "pool").mkdir()  # staging exists: media-rip never creates it (the pool would be missing)
    svc = rip_service.Service(cfg)
    svc.store = rip_store.RipStore(cfg.db)
    r1 = svc.store.start("fp1", "BLADE_RUNNER", "Blade Runner", [rip_robot.Title(0, 7000, 1000, "t0.mkv")] * 2)
    svc.store.update(r1, state="failed", reason="Failed to save title 1", finished=time.time(), exit_code=4)
    r2 = svc.store.start("fp2", "HEAT", "Heat", [rip_robot.Title(0, 9000, 10_000_000_000, "t0.mkv")])
    svc.store.update(r2, state="done", folder="/pool/staging/Heat", bytes=10_000_000_000, finished=time.time())
    svc.drive_state_now = rip_robot.DRIVE_INSERTED
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


def queue_of(svc):
    return {j.id: (j.state, j.priority, j.reason) for j in svc.store.list_jobs()}


def test_cancel_and_front_from_the_page(page):
    svc, base, ids = page()
    staging = svc.cfg.staging
    five = svc.store.enqueue(f"{staging}/Some Disc/title_t00.mkv", 5, 1)
    six = svc.store.enqueue(f"{staging}/Other Disc/title_t00.mkv", 6, 1)
    html = get(base + "/")[1]
    queued = re.search(r'<table id="queued">.*?</table>', html, re.S).group(0)
    assert [int(i) for i in re.findall(r'<tr data-job="(\d+)">', queued)] == [ids["queued"], five, six]
    for job_id in (ids["queued"], five, six):
        assert f'action="/jobs/{job_id}/cancel"' in queued
    assert f'action="/jobs/{six}/front"' in queued and f'action="/jobs/{ids["queued"]}/front"' not in queued
    assert queued.count('name="csrf_token"') == 5  # every button sends the page's token
    token = token_of(html)

    status, _body, headers = post_action(base, six, "front", token, extra={"Origin": base})
    assert status == 303 and headers["Location"] == f"/?fronted={six}"
    html = get(base + headers["Location"])[1]
    assert f"Job {six} is at the front of the queue" in html
    queued = re.search(r'<table id="queued">.*?</table>', html, re.S).group(0)
    assert [int(i) for i in re.findall(r'<tr data-job="(\d+)">', queued)] == [six, ids["queued"], five]

    status, _body, headers = post_action(base, five, "cancel", token, extra={"Origin": base})
    assert status == 303 and headers["Location"] == f"/?cancelled={five}"
    assert svc.store.get(five).state == "cancelled"
    assert os.path.basename(svc.store.get(five).source) == "title_t00.mkv"
    html = get(base + headers["Location"])[1]
    assert f"Job {five} is cancelled" in html and "its rip stays in staging" in html and "1 cancelled" in html
    cancelled = re.search(r'<table id="cancelled">.*?</table>', html, re.S).group(0)
    assert "Some Disc/title_t00.mkv" in cancelled and f'action="/jobs/{five}/retry"' in cancelled
    data = json.loads(get(base + "/api/status")[1])
    assert [j["id"] for j in data["jobs"]["cancelled"]] == [five] and data["counts"]["cancelled"] == 1
    assert svc.store.claim().id == six and svc.store.claim().id == ids["queued"] and svc.store.claim() is None

    status, _body, headers = post_retry(base, five, token, extra={"Origin": base})  # a cancel can be undone
    assert status == 303 and svc.store.get(five).state == "queued"


@pytest.mark.parametrize("action", ["cancel", "front"])
@pytest.mark.parametrize("case", ["no token", "stale token", "foreign origin", "null origin", "cross-site fetch",
                                  "running", "done", "unknown job", "GET", "not a form"])
def test_cancel_and_front_refuse_bad_requests_and_change_nothing(page, action, case):
    svc, base, ids = page()
    other = svc.store.enqueue(f"{svc.cfg.staging}/Disc/title_t00.mkv", 9, 1)  # so that front would change something
    token = token_of(get(base + "/")[1])
    job = ids["queued"] if case not in ("running", "done") else ids[case]
    job = other if action == "front" and case not in ("running", "done") else job
    before = queue_of(svc)
    expected = {
        "no token": (lambda: post_action(base, job, action, ""), 403, "CSRF token"),
        "stale token": (lambda: post_action(base, job, action, "0" * 64), 403, "CSRF token"),
        "foreign origin": (lambda: post_action(base, job, action, token, extra={"Origin": "http://evil.example"}),
                           403, "cross-site request refused"),
        "null origin": (lambda: post_action(base, job, action, token, extra={"Origin": "null"}),
                        403, "cross-site request refused"),
        "cross-site fetch": (lambda: post_action(base, job, action, token, extra={"Sec-Fetch-Site": "cross-site"}),
                             403, "cross-site request refused"),
        "running": (lambda: post_action(base, job, action, token, extra={"Origin": base}), 409,
                    f"job {job} is running, not queued"),
        "done": (lambda: post_action(base, job, action, token), 409, f"job {job} is done, not queued"),
        "unknown job": (lambda: post_action(base, 999, action, token), 404, "no job 999"),
        "GET": (lambda: get(f"{base}/jobs/{job}/{action}"), 405, "use POST"),
        "not a form": (lambda: get(f"{base}/jobs/{job}/{action}", method="POST", data=b"{}",
                                   headers={"Content-Type": "application/json"}), 415, "x-www-form-urlencoded"),
    }[case]
    status, body, headers = expected[0]()
    assert status == expected[1] and expected[2] in body
    if status == 405:
        assert headers["Allow"] == "POST"
    assert queue_of(svc) == before


def test_a_job_names_its_rip_by_its_folder_in_staging(page, tmp_path):
    """Every rip media-rip publishes is title_tNN.mkv in the disc's folder: the folder tells them apart."""
    svc, base, _ids = page()
    staging = svc.cfg.staging
    svc.store.enqueue(f"{staging}/Heat (1995)/title_t00.mkv", 1, 2)
    svc.store.enqueue(f"{staging}/Ronin/title_t00.mkv", 1, 2)
    svc.store.enqueue(str(tmp_path / "elsewhere" / "odd.mkv"), 1, 2)
    html = get(base + "/")[1]
    assert ">Heat (1995)/title_t00.mkv<" in html and ">Ronin/title_t00.mkv<" in html
    assert ">odd.mkv<" in html and ">Film 0 (2020).mkv<" in html  # not under staging: the file; at its top: the file
    assert f'title="{staging}/Ronin/title_t00.mkv"' in html  # the whole path on hover


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


# --- behind a TLS reverse proxy (issue item 8; docs/reverse-proxy.md) -----------------------

PUBLIC = "https://media.example.lan"
PASSWORD = "s3cret pass"


def proxied_app(tmp_path, **kw):
    """The page's WSGI app over a store with one failed job, as the service runs it behind a proxy
    (web_password set, since a proxy on another machine needs web_bind beyond loopback)."""
    for d in ("staging", "movies", "tv", "state"):
        (tmp_path / d).mkdir(exist_ok=True)
    cfg = cfgmod.from_dict({"staging": str(tmp_path / "staging"), "movies": str(tmp_path / "movies"),
                            "tv": str(tmp_path / "tv"), "db": str(tmp_path / "state" / "jobs.sqlite3"),
                            "metrics_textfile": "", "web_port": 8480, "web_bind": "0.0.0.0",
                            "web_password": PASSWORD, **kw})
    svc = service.Service(cfg)
    svc.store = JobStore(cfg.db)
    svc.store.enqueue(f"{cfg.staging}/Film (2020).mkv", 100, 1)
    job = svc.store.claim()
    svc.store.fail(job.id, "bad input", retry=False, max_attempts=3)
    return svc, web.StatusApp(svc), job.id


def call(app, method, path, headers, remote="127.0.0.1", body=b""):
    """One request as wsgiref's server hands it to the app: headers as HTTP_*, the peer as REMOTE_ADDR."""
    import io
    from wsgiref.util import setup_testing_defaults

    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "REMOTE_ADDR": remote,
               "SERVER_PROTOCOL": "HTTP/1.0", "wsgi.input": io.BytesIO(body), "CONTENT_LENGTH": str(len(body))}
    for name, value in headers.items():
        key = name.upper().replace("-", "_")
        environ[key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + key] = value
    setup_testing_defaults(environ)
    got = {}
    out = b"".join(app(environ, lambda status, hdrs: got.update(status=status, headers=dict(hdrs))))
    return int(got["status"].split()[0]), out.decode(), got["headers"]


def browser_headers(origin, host):
    """What Chromium sends for the page's Retry form (same origin, basic auth already given)."""
    return {"Host": host, "Origin": origin, "Referer": origin + "/", "Sec-Fetch-Site": "same-origin",
            "Sec-Fetch-Mode": "navigate", "Content-Type": "application/x-www-form-urlencoded",
            "Authorization": "Basic " + base64.b64encode(f"me:{PASSWORD}".encode()).decode()}


def retry_via(app, job_id, headers, remote="127.0.0.1"):
    form = urllib.parse.urlencode({"csrf_token": app.csrf_token}).encode()
    return call(app, "POST", f"/jobs/{job_id}/retry", headers, remote, form)


# nginx's proxy_pass by default: HTTP/1.0, Host: the upstream ($proxy_host), Connection: close, the
# browser's other headers unchanged, no X-Forwarded-* at all.
def nginx_default(origin):
    return {**browser_headers(origin, "media.example.lan"), "Host": "127.0.0.1:8480", "Connection": "close"}


# the snippet in docs/reverse-proxy.md adds these
def nginx_snippet(origin, browser_host="media.example.lan"):
    return {**nginx_default(origin), "X-Forwarded-Host": browser_host, "X-Forwarded-Proto": "https",
            "X-Forwarded-For": "192.168.1.20"}


# Caddy's reverse_proxy: the browser's Host passed through, X-Forwarded-For/-Proto/-Host set
def caddy(origin, host="media.example.lan"):
    return {**browser_headers(origin, host), "X-Forwarded-Host": host, "X-Forwarded-Proto": "https",
            "X-Forwarded-For": "192.168.1.20", "Accept-Encoding": "gzip"}


@pytest.mark.parametrize("proxy,config,headers", [
    ("nginx default proxy_pass, public_url", {"public_url": PUBLIC}, nginx_default(PUBLIC)),
    ("nginx snippet, public_url", {"public_url": PUBLIC}, nginx_snippet(PUBLIC)),
    ("nginx snippet, trusted_proxies", {"trusted_proxies": ["127.0.0.1"]}, nginx_snippet(PUBLIC)),
    ("nginx on another host", {"trusted_proxies": ["192.168.1.0/24"], "public_url": ""},
     nginx_snippet(PUBLIC)),
    ("caddy, public_url", {"public_url": PUBLIC}, caddy(PUBLIC)),
    ("caddy, trusted_proxies", {"trusted_proxies": ["127.0.0.1"]}, caddy(PUBLIC)),
    ("caddy, nothing configured", {}, caddy(PUBLIC)),  # it passes Host through: the old rule holds
    ("caddy on a port", {"public_url": PUBLIC + ":8443"},
     caddy(PUBLIC + ":8443", "media.example.lan:8443")),
    ("default port spelt out", {"public_url": PUBLIC + ":443/"}, nginx_default(PUBLIC)),
])
def test_retry_works_behind_a_tls_proxy(tmp_path, proxy, config, headers):
    remote = "192.168.1.5" if proxy == "nginx on another host" else "127.0.0.1"
    svc, app, job_id = proxied_app(tmp_path, **config)
    status, body, hdrs = retry_via(app, job_id, headers, remote)
    assert status == 303, f"{proxy}: {body}"
    assert hdrs["Location"] == f"/?retried={job_id}"  # relative: the browser stays on the proxy's address
    assert svc.store.get(job_id).state == "queued"


@pytest.mark.parametrize("case,config,headers,remote,says", [
    ("nginx default without public_url", {}, nginx_default(PUBLIC), "127.0.0.1", "set public_url"),
    ("another site", {"public_url": PUBLIC}, nginx_default("https://evil.example"), "127.0.0.1",
     "https://evil.example:443"),
    ("plain http", {"public_url": PUBLIC}, nginx_default("http://media.example.lan"), "127.0.0.1",
     "'https://media.example.lan:443'"),
    ("another port", {"public_url": PUBLIC}, nginx_default(PUBLIC + ":8443"), "127.0.0.1", "8443"),
    ("null origin", {"public_url": PUBLIC}, {**nginx_default("null"), "Referer": ""}, "127.0.0.1", "'null'"),
    ("forwarded headers from an untrusted peer", {"trusted_proxies": ["127.0.0.1"]},
     nginx_snippet(PUBLIC), "192.168.1.66", "cross-site"),
    ("forwarded headers with nothing trusted", {}, nginx_snippet(PUBLIC), "127.0.0.1", "cross-site"),
    ("another site through the trusted proxy", {"trusted_proxies": ["127.0.0.1"]},
     nginx_snippet("https://evil.example", "media.example.lan"), "127.0.0.1", "evil.example"),
])
def test_retry_behind_a_proxy_still_refuses_other_origins(tmp_path, case, config, headers, remote, says):
    svc, app, job_id = proxied_app(tmp_path, **config)
    status, body, _ = retry_via(app, job_id, headers, remote)
    assert status == 403 and "cross-site request refused" in body and says in body, f"{case}: {body}"
    assert svc.store.get(job_id).state == "failed"


def test_referer_alone_is_checked_against_public_url(tmp_path):
    svc, app, job_id = proxied_app(tmp_path, public_url=PUBLIC)
    headers = {k: v for k, v in nginx_default(PUBLIC).items() if k != "Origin"}
    assert retry_via(app, job_id, {**headers, "Referer": "https://evil.example/"})[0] == 403
    assert retry_via(app, job_id, {**headers, "Referer": PUBLIC + "/?retried=9"})[0] == 303
    assert svc.store.get(job_id).state == "queued"


def test_page_shows_a_missing_pool(page, tmp_path):
    svc, base, _ = page()
    os.rmdir(tmp_path / "movies")
    svc.check_pool()
    html = get(base + "/")[1]
    assert 'id="pool"' in html and "not mounted" in html and str(tmp_path / "movies") in html
    assert json.loads(get(base + "/api/status")[1])["pool_missing"] == [
        {"dir": "movies", "path": str(tmp_path / "movies")}]
    os.mkdir(tmp_path / "movies")
    svc.check_pool()
    assert 'id="pool"' not in get(base + "/")[1]
