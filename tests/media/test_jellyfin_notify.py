"""media-pipeline tells Jellyfin (the stand-in, tests/standins/jellyfin.py) about each file it publishes,
with real ffmpeg: the container-side path arrives within 2 s of the publish; a refusing or absent
Jellyfin never fails a job, is retried and counted; the status page and `status --jellyfin` show it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import time
import urllib.request

import pytest

from media_pipeline import jellyfin as jf
from tests.media.helpers import ENV, Pipeline, free_port, kill, wait_for
from tests.standins.jellyfin import JellyfinStandIn

pytestmark = pytest.mark.ffmpeg


@pytest.fixture
def jellyfin(tmp_path):
    with JellyfinStandIn() as server:
        jf.configure(server.url, "admin", "a-password")
        key_file = tmp_path / "jellyfin.key"
        key_file.write_text(server.api_keys[0]["AccessToken"] + "\n")
        key_file.chmod(0o600)
        server.key_file = key_file
        yield server
        assert server.unknown == [] and server.rejected == [], (server.unknown, server.rejected)


def pipeline(tmp_path, server, **config) -> Pipeline:
    p = Pipeline(tmp_path / "pool")
    p.configure(jellyfin_url=server.url, jellyfin_api_key_file=str(server.key_file),
                jellyfin_path_map={str(p.movies): "/media/movies", str(p.tv): "/media/tv"}, **config)
    return p


def put(src, dest):
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    (dest.parent / (dest.name + ".done")).write_text("")


def metric(p: Pipeline, outcome: str) -> float:
    prom = (p.base / "state" / "metrics.prom").read_text()
    line = f'media_pipeline_jellyfin_refreshes_total{{outcome="{outcome}"}} '
    return float(next(row for row in prom.splitlines() if row.startswith(line)).split()[-1])


def jellyfin_state(p: Pipeline) -> dict:
    run = subprocess.run(p.argv("status", "--jellyfin", "--json"), capture_output=True, text=True, env=ENV,
                         timeout=60, check=True)
    return json.loads(run.stdout)


def test_published_files_reach_jellyfin_with_container_paths(rips, tmp_path, jellyfin):
    p = pipeline(tmp_path, jellyfin)
    put(rips["four"], p.staging / "Heat (1995).mkv")
    put(rips["no_subs"], p.staging / "Show.Name.S01E02.mkv")
    old = os.umask(0o077)  # the strictest umask: published files must still be readable by "other"
    try:
        p.once()
    finally:
        os.umask(old)
    assert [j["state"] for j in p.jobs()] == ["done", "done"]
    movie, episode = p.movies / "Heat (1995).mkv", p.tv / "Show Name" / "Season 01" / "Show.Name.S01E02.mkv"
    arrivals = {u["path"]: u["time"] for u in jellyfin.media_updates}
    assert set(arrivals) == {"/media/movies/Heat (1995).mkv", "/media/tv/Show Name/Season 01/Show.Name.S01E02.mkv"}
    assert {u["type"] for u in jellyfin.media_updates} == {"Created"}
    for dest, path in ((movie, "/media/movies/Heat (1995).mkv"),
                       (episode, "/media/tv/Show Name/Season 01/Show.Name.S01E02.mkv")):
        published = dest.stat().st_ctime  # link(2) into the library sets it
        assert 0 <= arrivals[path] - published < 2.0, (path, arrivals[path] - published)
        assert stat.S_IMODE(dest.stat().st_mode) & 0o644 == 0o644
    for folder in (p.tv / "Show Name", p.tv / "Show Name" / "Season 01"):
        assert stat.S_IMODE(folder.stat().st_mode) & 0o755 == 0o755
    assert metric(p, "ok") >= 1 and metric(p, "failed") == 0
    state = jellyfin_state(p)
    assert state["enabled"] and state["url"] == jellyfin.url
    assert state["last"]["ok"] is True and state["last"]["path"] in arrivals
    text = subprocess.run(p.argv("status"), capture_output=True, text=True, env=ENV, check=True).stdout
    assert "jellyfin: last refresh" in text and ": ok" in text
    for call in jellyfin.calls_to("POST", "/Library/Media/Updated"):
        assert call["status"] == 204


@pytest.mark.parametrize("failure", ["refusing", "down"])
def test_a_failing_jellyfin_never_fails_the_job(rips, tmp_path, jellyfin, failure):
    p = pipeline(tmp_path, jellyfin, jellyfin_retry_seconds=[0.2, 0.2])
    put(rips["four"], p.staging / "Heat (1995).mkv")
    if failure == "refusing":
        jellyfin.refuse(500)
    else:
        jellyfin.go_away()
    run = p.once()
    (job,) = p.jobs()
    assert job["state"] == "done" and job["attempts"] == 1 and (p.movies / "Heat (1995).mkv").exists()
    if failure == "refusing":
        calls = jellyfin.calls_to("POST", "/Library/Media/Updated")
        assert len(calls) == 3 and all(c["refused"] and c["status"] == 500 for c in calls)  # tried, retried twice
    assert metric(p, "failed") == 3 and metric(p, "ok") == 0
    assert run.stderr.count("Jellyfin refresh failed") == 1  # once per failure streak
    assert jellyfin.server_id not in run.stderr
    last = jellyfin_state(p)["last"]
    assert last["ok"] is False and last["attempt"] == 3 and last["path"] == "/media/movies/Heat (1995).mkv"
    assert ("answered 500" if failure == "refusing" else "cannot reach Jellyfin") in last["reason"]
    key = jellyfin.key_file.read_text().strip()
    assert key not in run.stderr and key not in json.dumps(last)
    if failure == "down":
        jellyfin.come_back()


def test_status_page_and_metrics_show_the_refresh(rips, tmp_path, jellyfin):
    web, metrics = free_port(), free_port()
    p = pipeline(tmp_path, jellyfin, web_port=web, metrics_port=metrics)
    service = p.start()
    try:
        def scrape():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5) as resp:
                    return resp.read().decode()
            except OSError:
                return None

        first = wait_for(scrape, timeout=30, what="/metrics")
        assert 'media_pipeline_jellyfin_refreshes_total{outcome="ok"} 0.0' in first  # present from the start
        assert 'media_pipeline_jellyfin_refreshes_total{outcome="failed"} 0.0' in first
        def get_page():
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{web}/", timeout=10).read().decode()
            except OSError:
                return None

        page = wait_for(get_page, timeout=30, what="the status page")
        assert 'id="jellyfin"' in page and "no refresh yet" in page

        put(rips["four"], p.staging / "Heat (1995).mkv")

        def refreshed():
            data = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{web}/api/status", timeout=10).read())
            return data["jellyfin"] if data["jellyfin"]["last"] else None

        state = wait_for(refreshed, timeout=90, interval=0.2, what="a Jellyfin refresh on the page")
        assert state["enabled"] and state["last"]["ok"] is True and state["totals"] == {"ok": 1, "failed": 0}
        assert state["last"]["path"] == "/media/movies/Heat (1995).mkv"
        page = urllib.request.urlopen(f"http://127.0.0.1:{web}/", timeout=10).read().decode()
        assert "/media/movies/Heat (1995).mkv" in page and '<span class="ok">ok</span>' in page
        assert 'media_pipeline_jellyfin_refreshes_total{outcome="ok"} 1.0' in scrape()
    finally:
        kill(service, signal.SIGTERM)
    assert jellyfin.updated_paths() == ["/media/movies/Heat (1995).mkv"]
