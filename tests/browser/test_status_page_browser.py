"""The status page in a real browser: Debian's headless Chromium (via chromedriver and selenium)
loads the page from a real `media-pipeline run` (Debian's python3 with python3-jinja2 and
python3-prometheus-client, as in the container) over a real job store whose jobs are in every
state: one done, one failed (a broken rip), one running (a long encode), one queued behind it.
Rips come from the status file real `media-rip once` runs wrote into staging (a stand-in drive,
tests/media/fake_makemkvcon.py), as media-rip in the ripper container writes it on the pool.
It reads what a person sees, presses Retry and sees the job queued again, moves a job to the
front of the queue and cancels another. The screenshot is kept
in bench-results/status-page.png (and tmp_path)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests.media.helpers import ENV, Pipeline, free_port, kill, make_rip, wait_for
from tests.media.rip_helpers import Drive

REPO = Path(__file__).resolve().parents[2]
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
SYSTEM_PYTHON = "/usr/bin/python3"

pytestmark = [pytest.mark.browser, pytest.mark.ffmpeg]


def _debian_python_ready() -> bool:
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import jinja2, prometheus_client"], capture_output=True)
    return probe.returncode == 0


@pytest.fixture
def browser(tmp_path):
    missing = [n for n, p in (("chromium", CHROMIUM), ("chromium-driver", CHROMEDRIVER), ("ffmpeg", shutil.which("ffmpeg")))
               if not p]
    if missing or not _debian_python_ready():
        pytest.fail(f"missing Debian packages: {', '.join(missing) or 'python3-jinja2/python3-prometheus-client'};"
                    f" run `make deps` (tools/deps.sh)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,1500", f"--user-data-dir={tmp_path / 'chromium'}"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def test_status_page_in_chromium(browser, tmp_path):
    from selenium.webdriver.common.by import By

    port, metrics_port = free_port(), free_port()
    p = Pipeline(tmp_path, preset="slow", crf=30, web_port=port, metrics_port=metrics_port,
                 gpu_proof_file=str(tmp_path / "gpu-proof.json"),
                 rip_status_file=str(tmp_path / "staging" / ".media-rip" / "status.json"))
    # scanned in name order, so job 1 is done, 2 fails, 3 runs for a long while, 4 waits
    make_rip(p.staging / "1 Short Film (2001).mkv", duration=2)
    (p.staging / "2 Broken Disc (2002).mkv").write_bytes(os.urandom(64 * 1024))
    make_rip(p.staging / "3 Long Film (2003).mkv", duration=120, size="640x360")
    make_rip(p.staging / "4 Waiting Film (2004).mkv", duration=2)
    env = {**ENV, "PYTHONPATH": str(REPO)}
    service = subprocess.Popen([SYSTEM_PYTHON, "-m", "media_pipeline.service", "--config", str(p.config), "run"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        def states():
            return {j["id"]: j for j in p.jobs()} if p.db.exists() else {}

        wait_for(lambda: (s := states()) and len(s) == 4 and s[3]["state"] == "running" and s[3]["progress"] >= 0.01,
                 timeout=120, interval=0.5, what="job 3 encoding with progress recorded")
        jobs = states()
        assert [jobs[i]["state"] for i in (1, 2, 3, 4)] == ["done", "failed", "running", "queued"], jobs

        # media-rip (its own staging here) writes its status file into the pipeline's staging, hidden
        drive = Drive(tmp_path / "ripper", status_file=str(p.staging / ".media-rip" / "status.json"))
        disc = make_rip(tmp_path / "disc" / "main.mkv", duration=2)
        drive.insert("Blade Runner", [("1:57:00", disc)])
        assert (run := drive.once()).returncode == 0, run.stderr
        drive.insert("Ronin", [("2:01:00", disc, True)])
        assert (run := drive.once()).returncode == 4, run.stderr

        browser.get(f"http://127.0.0.1:{port}/")
        body = browser.find_element(By.TAG_NAME, "body").text
        failed_row = browser.find_element(By.CSS_SELECTOR, "#failed tr[data-job='2']").text
        assert "2 Broken Disc (2002).mkv" in failed_row and "bad input" in failed_row, failed_row
        assert jobs[2]["reason"] in failed_row  # the full reason, as the CLI shows it
        running_row = browser.find_element(By.CSS_SELECTOR, "#running tr[data-job='3']")
        percent = float(running_row.find_element(By.CSS_SELECTOR, ".percent").text.rstrip("%"))
        assert 0 < percent < 100, running_row.text
        assert re.search(r"\d+m\d\ds|\d+s", running_row.find_element(By.CSS_SELECTOR, ".eta").text)
        assert "3 Long Film (2003).mkv" in running_row.text
        assert "4 Waiting Film (2004).mkv" in browser.find_element(By.ID, "queued").text
        assert "1 Short Film (2001).mkv" in browser.find_element(By.ID, "done").text
        assert "1 running" in body and "1 queued" in body and "1 done" in body and "1 failed" in body
        assert "% free" in browser.find_element(By.ID, "space").text
        ripped = browser.find_element(By.CSS_SELECTOR, "#rips tr[data-rip='1']").text
        assert "Blade Runner" in ripped and "done" in ripped and str(drive.staging / "Blade Runner") in ripped
        failed_rip = browser.find_element(By.CSS_SELECTOR, "#rips tr[data-rip='2']").text
        assert "Ronin" in failed_rip and "failed" in failed_rip and drive.status()[1]["reason"] in failed_rip
        rip_status = browser.find_element(By.ID, "rips-status").text
        assert "drive /dev/sr0" in rip_status and "stale" not in rip_status, rip_status
        assert len(states()) == 4  # the hidden .media-rip folder is never taken for a rip
        shot = browser.get_screenshot_as_png()
        (tmp_path / "status-page.png").write_bytes(shot)
        artifacts = REPO / "bench-results"
        artifacts.mkdir(exist_ok=True)
        (artifacts / "status-page.png").write_bytes(shot)
        assert shot.startswith(b"\x89PNG") and len(shot) > 20_000

        browser.find_element(By.ID, "retry-2").click()  # a real form POST with the page's CSRF token
        wait_for(lambda: "/?retried=2" in browser.current_url, timeout=15, what="the redirect after retry")
        assert "Job 2 is queued again." in browser.find_element(By.ID, "notice").text
        assert "2 Broken Disc (2002).mkv" in browser.find_element(By.ID, "queued").text
        assert "no failed jobs" in browser.find_element(By.ID, "failed").text
        job2 = states()[2]
        assert job2["state"] == "queued" and job2["attempts"] == 0 and job2["reason"] == "retry requested"
        assert states()[3]["state"] == "running"  # the encode went on meanwhile

        # job 2 (the lower id) is next; job 4 to the front, then job 2 cancelled: forms with the token
        browser.find_element(By.ID, "front-4").click()
        wait_for(lambda: "/?fronted=4" in browser.current_url, timeout=15, what="the redirect after to front")
        assert "Job 4 is at the front of the queue" in browser.find_element(By.ID, "notice").text
        rows = browser.find_elements(By.CSS_SELECTOR, "#queued tr[data-job]")
        assert [r.get_attribute("data-job") for r in rows] == ["4", "2"]
        browser.find_element(By.ID, "cancel-2").click()
        wait_for(lambda: "/?cancelled=2" in browser.current_url, timeout=15, what="the redirect after cancel")
        assert "Job 2 is cancelled" in browser.find_element(By.ID, "notice").text
        assert "2 Broken Disc (2002).mkv" in browser.find_element(By.CSS_SELECTOR, "#cancelled tr[data-job='2']").text
        assert [r.get_attribute("data-job") for r in browser.find_elements(By.CSS_SELECTOR, "#queued tr[data-job]")] \
            == ["4"]
        jobs = states()
        assert jobs[2]["state"] == "cancelled" and jobs[4]["state"] == "queued" and jobs[4]["priority"] == 1
        assert (p.staging / "2 Broken Disc (2002).mkv").exists()  # a cancelled rip stays in staging
    finally:
        if service.poll() is None:
            service.send_signal(signal.SIGTERM)
            try:
                service.wait(timeout=60)
            except subprocess.TimeoutExpired:
                kill(service)
        log = service.stdout.read() if service.stdout else ""
        print(log[-3000:])
