"""Monitoring that runs, in the lab: MonitoringCT's unprivileged container with Debian's Prometheus
and Alertmanager as their systemd units, scraping what the stack deployed; a failed job's alert
delivered to a webhook receiver this test runs on the node; every dashboard query answered by the
live Prometheus.

What only real hardware proves: the GPU panel (the lab encodes with libx265, no GPU: the busy
ratio is absent and the status page says why). Grafana is installed from the lab's stand-in of
its repository (a stand-in server that answers /api/health only); the README says what only a
real Grafana proves.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import time
import urllib.parse

import pytest
import yaml

from tests.e2e.lab import ROOT, wait_for
from tests.lab.test_program_on_lab import first_up, lab, program, sentinels  # noqa: F401 - fixtures
from tests.monitoring.test_monitoring import dashboard_exprs

pytestmark = pytest.mark.e2e

MON = 204
RECEIVER_PORT = 19093  # Pulumi.lab.yaml: monitoring.receivers.webhook.url
RECEIVED = "/tmp/lab-alerts.jsonl"  # on the node

RECEIVER = f"""
import http.server, json, sys, time
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with open({RECEIVED!r}, "a") as fh:
            fh.write(json.dumps({{"at": time.time(), "path": self.path, "body": json.loads(body)}}) + "\\n")
        self.send_response(200); self.end_headers()
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("10.99.0.1", {RECEIVER_PORT}), H).serve_forever()
"""


def ct(lab, vmid: int, command: str, timeout: float = 120, check: bool = True):
    return lab.ssh(f"pct exec {vmid} -- bash -c {shlex.quote(command)}", timeout=timeout, check=check)


def http_code(lab, vmid: int, url: str) -> str:
    """The HTTP status of a GET from inside a container (Debian's python3: no curl in the pipeline's
    containers); "refused" when nothing listens there."""
    code = ("import sys, urllib.request, urllib.error\n"
            "try:\n    print(urllib.request.urlopen(sys.argv[1], timeout=5).status)\n"
            "except urllib.error.HTTPError as e:\n    print(e.code)\n"
            "except OSError:\n    print('refused')\n")
    return lab.ssh(f"pct exec {vmid} -- python3 -c {shlex.quote(code)} {shlex.quote(url)}").stdout.strip()


def prom(lab, path: str, **params) -> dict:
    url = f"http://127.0.0.1:9090{path}?{urllib.parse.urlencode(params)}"
    return json.loads(ct(lab, MON, f"curl -fsS {shlex.quote(url)}").stdout)


@pytest.fixture(scope="module")
def receiver(lab, first_up):
    """A webhook receiver on the node's bridge address (Alertmanager's only route in the lab)."""
    lab.ssh(f"rm -f {RECEIVED}")
    proc = subprocess.Popen(
        ["ssh", "-i", lab.key, "-p", str(lab.ssh_port), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
         "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", f"root@{lab.env['LAB_SSH_HOST']}",
         "exec python3 -c " + shlex.quote(RECEIVER)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    wait_for(lambda: ct(lab, MON, f"curl -s -o /dev/null -X POST -d {{}} http://10.99.0.1:{RECEIVER_PORT}/ping",
                        check=False).returncode == 0, 30, what="the webhook receiver on the node")
    lab.ssh(f"rm -f {RECEIVED}")
    yield lambda: [json.loads(x) for x in lab.ssh(f"cat {RECEIVED} 2>/dev/null || true").stdout.splitlines() if x]
    proc.kill()
    lab.ssh("pkill -f 'lab-alerts.jsonl' || true", check=False)


def test_monitoring_output_says_every_service_answers_and_every_target_is_up(lab, first_up):
    mon = first_up["out"]["outputs"]["monitoring"]
    assert mon["prometheus"]["answers"] and mon["alertmanager"]["answers"], mon
    assert mon["prometheus"]["url"] == "http://10.99.0.204:9090/"
    assert mon["alertmanager"]["url"] == "http://10.99.0.204:9093/"
    # Grafana from the lab's stand-in of its repository: its stand-in server answers /api/health
    assert mon["grafana"]["url"] == "http://10.99.0.204:3000/" and mon["grafana"]["answers"]
    assert mon["grafana"]["version"] == "0.1+standin1"
    jobs = {t["job"]: t for t in mon["targets"]}
    assert set(jobs) == {"media-pipeline", "media-rip", "node", "prometheus", "alertmanager"}, mon["targets"]
    assert jobs["media-pipeline"]["instance"] == "10.99.0.201:9464"
    assert jobs["media-rip"]["instance"] == "10.99.0.202:9465"
    assert jobs["node"]["instance"] == "10.99.0.1:9100"
    assert mon["targetsUp"] == mon["targetsTotal"] == 5, mon
    assert mon["ok"] is True and mon["reason"] is None
    rules = yaml.safe_load((ROOT / "monitoring/prometheus/alerts.yml").read_text())
    assert mon["prometheus"]["rules"] == sum(len(g["rules"]) for g in rules["groups"])


def test_the_container_is_unprivileged_and_runs_debians_units(lab, first_up):
    conf = lab.conf(MON)
    assert "unprivileged: 1" in conf and "mp0" not in conf and "lxc." not in conf.split("\n[")[0]
    got = ct(lab, MON, "cat /proc/1/comm; for u in prometheus prometheus-alertmanager prometheus-node-exporter; "
                       "do systemctl is-active $u; done; cat /proc/self/uid_map").stdout.split()
    assert got[:4] == ["systemd", "active", "active", "active"], got
    assert got[4:7] == ["0", "100000", "65536"], got  # root in the container is 100000 on the node


def test_metrics_answer_the_monitoring_container_only(lab, first_up):
    """/metrics binds the transcoder's own address and refuses any peer but the monitoring container."""
    def from_mon(url):
        return ct(lab, MON, f"curl -s -o /dev/null -w '%{{http_code}}' {url}").stdout

    url = "http://10.99.0.201:9464/metrics"
    assert (from_mon(url), http_code(lab, 202, url)) == ("200", "403")
    assert http_code(lab, 201, "http://127.0.0.1:9464/metrics") == "refused"  # bound to 10.99.0.201 only
    assert from_mon("http://10.99.0.202:9465/metrics") == "200"  # media-rip's, the same rule
    assert http_code(lab, 201, "http://10.99.0.202:9465/metrics") == "403"


def test_a_failed_job_fires_the_alert_and_reaches_the_webhook(lab, first_up, receiver):
    """MediaPipelineJobFailed (no `for`) fires within an evaluation interval of the scrape that
    sees the failure, and Alertmanager delivers it after group_wait (Pulumi.lab.yaml: 5 s, 5 s, 1 s)."""
    name = f"Broken Rip {int(time.time())} (2024)"
    ct(lab, 201, f"runuser -u media -- sh -c 'head -c 200000 /dev/urandom > \"/mnt/storage/staging/{name}.mkv\" && "
                 f"touch \"/mnt/storage/staging/{name}.mkv.done\"'")

    def failed():
        jobs = json.loads(ct(lab, 201, "runuser -u media -- media-pipeline status --json").stdout)
        return [j for j in jobs if name in j["source"] and j["state"] == "failed"]
    wait_for(failed, 300, what="media-pipeline to fail the broken rip")
    failed_at = time.time()

    def delivered():
        return [r for r in receiver() if any(a["labels"]["alertname"] == "MediaPipelineJobFailed"
                                            and a["status"] == "firing" for a in r["body"]["alerts"])]
    wait_for(delivered, 60, what="MediaPipelineJobFailed at the webhook")
    took = time.time() - failed_at
    print(f"MediaPipelineJobFailed delivered {took:.1f} s after the job failed")
    # a scrape (5 s) + an evaluation (5 s) + group_wait (1 s), plus the delivery itself
    assert took < 5 + 5 + 1 + 10, took
    alert = [a for r in delivered() for a in r["body"]["alerts"] if a["labels"]["alertname"] == "MediaPipelineJobFailed"][0]
    assert alert["labels"]["instance"] == "10.99.0.201:9464" and alert["labels"]["severity"] == "warning"
    # Prometheus agrees it is firing
    firing = prom(lab, "/api/v1/alerts")["data"]["alerts"]
    assert any(a["labels"]["alertname"] == "MediaPipelineJobFailed" and a["state"] == "firing" for a in firing)


def test_every_dashboard_query_returns_data_from_the_live_prometheus(lab, first_up):
    """Each query of monitoring/grafana/media-pipeline.json, Grafana's variables filled in, over the
    last 15 minutes (the panels' time range), after a real transcode ran through a scrape."""
    title = f"Dash Film {int(time.time())} (2024)"
    rip = f"/mnt/storage/staging/{title}.mkv"
    make = (f"runuser -u media -- ffmpeg -hide_banner -loglevel error -y -f lavfi -i testsrc=d=40:s=320x180:r=24 "
            f"-f lavfi -i sine=d=40 -map 0:v -map 1:a -c:v libx264 -preset ultrafast -c:a aac "
            f"-metadata:s:a:0 language=eng '/tmp/{title}.mkv' && mv '/tmp/{title}.mkv' '{rip}' && touch '{rip}.done'")
    ct(lab, 201, make, timeout=300)

    def done():
        jobs = json.loads(ct(lab, 201, "runuser -u media -- media-pipeline status --json").stdout)
        return [j["state"] for j in jobs if j["source"] == rip] == ["done"]
    wait_for(done, 600, what="the transcode")
    time.sleep(6)  # one more scrape after it
    end = time.time()
    empty, gpu = [], []
    for expr in dashboard_exprs():
        if expr.startswith("label_values("):
            series = expr[len("label_values("):].split(",")[0]
            got = prom(lab, "/api/v1/series", **{"match[]": series, "start": end - 900, "end": end})["data"]
            if not got:
                empty.append(expr)
            continue
        q = expr.replace("$__rate_interval", "1m").replace("$instance", ".*")
        got = prom(lab, "/api/v1/query_range", query=q, start=end - 900, end=end, step=5)["data"]["result"]
        if not got:
            (gpu if "gpu_engine_busy" in expr else empty).append(expr)
    assert not empty, f"dashboard queries with no data in the lab's Prometheus: {empty}"
    # the queries only a GPU can feed: absent with a CPU encoder, and the status page says why
    if gpu:
        fetch = ("python3 -c 'import urllib.request,sys; "
                 "sys.stdout.write(urllib.request.urlopen(\"http://127.0.0.1:8480/api/status\").read().decode())'")
        status = json.loads(lab.ssh(f"pct exec 201 -- {fetch}").stdout)
        assert status["gpu_usage"]["reason"], status["gpu_usage"]
