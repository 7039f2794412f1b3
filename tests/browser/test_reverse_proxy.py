"""Retry through a TLS reverse proxy, as docs/reverse-proxy.md sets one up: Debian's nginx-light
and caddy run the snippets from that file (only the port, the certificate and the upstream
changed) in front of a real status page with a password, and headless Chromium presses Retry.
nginx sends `Host: 127.0.0.1:<page port>` (its default), Caddy the browser's Host; the browser
sends `Origin: https://media.example.lan:<port>`; public_url or trusted_proxies make them agree."""

from __future__ import annotations

import base64
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from media_pipeline import config as cfgmod
from media_pipeline import service, web
from media_pipeline.jobs import JobStore
from media_pipeline.metrics import WSGIThreadServer
from tests.media.helpers import free_port, wait_for

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "reverse-proxy.md"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
NGINX, CADDY = shutil.which("nginx") or "/usr/sbin/nginx", shutil.which("caddy")
HOST, PASSWORD = "media.example.lan", "proxy test password"

pytestmark = [pytest.mark.browser]


def snippet(language: str) -> str:
    (block,) = re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), re.S)
    return block


def replace(text: str, old: str, new: str) -> str:
    assert old in text, f"docs/reverse-proxy.md's snippet no longer has {old!r}: update this test with it"
    return text.replace(old, new)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    missing = [n for n, p in (("chromium", CHROMIUM), ("chromium-driver", CHROMEDRIVER), ("caddy", CADDY),
                              ("nginx-light", os.path.exists(NGINX)), ("openssl", shutil.which("openssl"))) if not p]
    if missing:
        pytest.fail(f"missing Debian packages: {', '.join(missing)}; run `make deps` (tools/deps.sh)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--no-proxy-server", "--ignore-certificate-errors",
                f"--host-resolver-rules=MAP {HOST} 127.0.0.1",  # the proxy's name, without DNS
                f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    # the password the person would type into the basic-auth prompt, on every request
    driver.execute_cdp_cmd("Network.enable", {})
    token = base64.b64encode(f"me:{PASSWORD}".encode()).decode()
    driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}})
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", f"/CN={HOST}", "-addext", f"subjectAltName=DNS:{HOST}",
                    "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")],
                   check=True, capture_output=True, timeout=60)
    return d / "cert.pem", d / "key.pem"


def page_with_a_failed_job(tmp_path, **config):
    """The status page (password set) over a store with one failed job; records what reaches it."""
    for d in ("staging", "movies", "tv", "state"):
        (tmp_path / d).mkdir()
    cfg = cfgmod.from_dict({"staging": str(tmp_path / "staging"), "movies": str(tmp_path / "movies"),
                            "tv": str(tmp_path / "tv"), "db": str(tmp_path / "state" / "jobs.sqlite3"),
                            "metrics_textfile": "", "web_port": 8480, "web_password": PASSWORD, **config})
    svc = service.Service(cfg)
    svc.store = JobStore(cfg.db)
    svc.store.enqueue(f"{cfg.staging}/Broken Disc (2002).mkv", 100, 1)
    job = svc.store.claim()
    svc.store.fail(job.id, "bad input: not a readable media file", retry=False, max_attempts=3)
    app, posts = web.StatusApp(svc), []

    def recording(environ, start_response):
        if environ["REQUEST_METHOD"] == "POST":
            posts.append({k: v for k, v in environ.items() if k.startswith("HTTP_") or k == "REMOTE_ADDR"})
        return app(environ, start_response)

    return svc, job.id, WSGIThreadServer("127.0.0.1", 0, recording, "status-page").start(), posts


def start_nginx(tmp_path, port, upstream, cert, key) -> subprocess.Popen:
    site = snippet("nginx")
    site = replace(site, "listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;")
    site = replace(site, "/etc/ssl/certs/media.example.lan.pem", str(cert))
    site = replace(site, "/etc/ssl/private/media.example.lan.key", str(key))
    site = replace(site, "proxy_pass http://127.0.0.1:8480;", f"proxy_pass http://127.0.0.1:{upstream};")
    run = tmp_path / "nginx"
    run.mkdir()
    temps = "\n".join(f"  {kind}_temp_path {run / kind};"
                      for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf = run / "nginx.conf"
    conf.write_text(f"{'user root;' if os.geteuid() == 0 else ''}\ndaemon off;\npid {run / 'nginx.pid'};\n"
                    f"error_log {run / 'error.log'} info;\nevents {{}}\n"
                    f"http {{\n  access_log off;\n{temps}\n{site}\n}}\n")
    return subprocess.Popen([NGINX, "-p", str(run), "-c", str(conf)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def start_caddy(tmp_path, port, upstream, cert, key) -> subprocess.Popen:
    site = snippet("caddyfile")
    site = replace(site, f"{HOST} {{", f"https://{HOST}:{port} {{\n    bind 127.0.0.1")
    site = replace(site, "/etc/ssl/certs/media.example.lan.pem", str(cert))
    site = replace(site, "/etc/ssl/private/media.example.lan.key", str(key))
    site = replace(site, "reverse_proxy 127.0.0.1:8480", f"reverse_proxy 127.0.0.1:{upstream}")
    run = tmp_path / "caddy"
    run.mkdir()
    conf = run / "Caddyfile"
    conf.write_text(f"{{\n  admin off\n  auto_https disable_redirects\n"
                    f"  storage file_system {run / 'data'}\n}}\n{site}")
    env = {**os.environ, "HOME": str(run), "XDG_DATA_HOME": str(run / "data"), "XDG_CONFIG_HOME": str(run / "config")}
    return subprocess.Popen([CADDY, "run", "--config", str(conf), "--adapter", "caddyfile"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.mark.parametrize("proxy,config,retried", [
    ("nginx", {"public_url": "https://{host}:{port}"}, True),
    ("nginx", {"trusted_proxies": ["127.0.0.1"]}, True),
    ("nginx", {}, False),  # what the issue saw: nginx's Host is the upstream, so the page refused
    ("caddy", {"public_url": "https://{host}:{port}"}, True),
])
def test_retry_through_a_tls_proxy(browser, certificate, tmp_path, proxy, config, retried):
    from selenium.webdriver.common.by import By

    port = free_port()
    public = f"https://{HOST}:{port}"
    config = {k: v.format(host=HOST, port=port) if isinstance(v, str) else v for k, v in config.items()}
    svc, job_id, page, posts = page_with_a_failed_job(tmp_path, **config)
    start = start_nginx if proxy == "nginx" else start_caddy
    proc = start(tmp_path, port, page.port, *certificate)
    try:
        wait_for(lambda: proc.poll() is not None or listening(port), timeout=30, what=f"{proxy} to listen")
        assert proc.poll() is None, proc.stdout.read()
        browser.get(public + "/")
        assert "media-pipeline" in browser.title, browser.page_source[:500]
        browser.find_element(By.ID, f"retry-{job_id}").click()  # a real form POST, Origin set by Chromium
        if retried:
            wait_for(lambda: f"/?retried={job_id}" in browser.current_url, timeout=15, what="the redirect after retry")
            assert browser.current_url.startswith(public + "/")  # the relative Location kept it on the proxy
            assert f"Job {job_id} is queued again." in browser.find_element(By.ID, "notice").text
            assert svc.store.get(job_id).state == "queued"
        else:
            wait_for(lambda: "cross-site request refused" in browser.page_source, timeout=15, what="the refusal")
            assert "set public_url" in browser.page_source
            assert svc.store.get(job_id).state == "failed"
        (post,) = posts
        assert post["HTTP_ORIGIN"] == public
        # the headers the unit tests (tests/unit/test_media_web.py) model for each proxy
        expected_host = f"127.0.0.1:{page.port}" if proxy == "nginx" else f"{HOST}:{port}"
        assert post["HTTP_HOST"] == expected_host
        assert post["HTTP_X_FORWARDED_HOST"] == f"{HOST}:{port}" and post["HTTP_X_FORWARDED_PROTO"] == "https"
        assert post["REMOTE_ADDR"] == "127.0.0.1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        page.stop()
