"""media-rip against a stand-in drive (tests/media/fake_makemkvcon.py) writing real MKV files,
and media-pipeline (real ffmpeg) turning the published rip into a library file.

What this proves and what it cannot: docs/adr/0007-media-rip-makemkv-robot-mode.md.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import sqlite3
import threading
import time

import pytest

from media_pipeline import config as config_mod
from media_pipeline import rip_service, rip_store
from tests.media.helpers import Pipeline, kill, make_rip, processes_with, streams, wait_for
from tests.media.rip_helpers import Drive

pytestmark = pytest.mark.ffmpeg

FEATURE = "1:52:10"
EXTRA = "0:03:05"


@pytest.fixture(scope="module")
def titles(tmp_path_factory):
    d = tmp_path_factory.mktemp("disc")
    return {"main": make_rip(d / "main.mkv", duration=2, audio=(("eng", "aac"),)),
            "other": make_rip(d / "other.mkv", duration=3, audio=(("eng", "ac3"),))}


def test_a_disc_is_ripped_published_marked_and_becomes_a_library_file(titles, tmp_path):
    drive = Drive(tmp_path)
    drive.insert("Big Buck Bunny", [(FEATURE, titles["main"]), (EXTRA, titles["other"]), ("1:01:00", titles["other"])])
    run = drive.once()
    assert run.returncode == 0, run.stderr
    # the two long titles, each with its marker, under the disc's name; the short extra left out
    assert drive.published() == {"Big Buck Bunny": ["title_t00.mkv", "title_t00.mkv.done",
                                                    "title_t01.mkv", "title_t01.mkv.done"]}
    folder = drive.staging / "Big Buck Bunny"
    assert (folder / "title_t00.mkv").read_bytes() == titles["main"].read_bytes()
    assert (folder / "title_t01.mkv").read_bytes() == titles["other"].read_bytes()
    assert "key missing" in run.stderr and "ETA" in run.stderr and "100.0%" in run.stderr
    [rip] = drive.status()
    assert rip["state"] == "done" and rip["exit_code"] == 0 and rip["folder"] == str(folder)
    assert [t["duration"] for t in rip["titles"]] == [6730, 3660]
    assert rip["bytes"] == titles["main"].stat().st_size + titles["other"].stat().st_size
    # the same --minlength for the scan and the rip, so MakeMKV numbers the titles the same way
    info, mkv = [c for c in drive.calls() if "info" in c and "dev:/dev/sr0" in c], [c for c in drive.calls() if "mkv" in c]
    assert "--minlength=600" in info[0] and "--minlength=600" in mkv[0] and mkv[0][-2] == "all"
    table = drive.rip("status")
    assert "Big Buck Bunny" in table.stdout and "done" in table.stdout

    # media-pipeline takes it at once (marker), with a stability wait that would otherwise hold it
    pipe = Pipeline(tmp_path / "pipe", stable_seconds=3600, require_marker=True)
    pipe.configure(staging=str(drive.staging))
    pipe.once(timeout=300)
    lib = pipe.movies / "Big Buck Bunny.mkv"
    assert lib.exists(), pipe.library()
    assert [s[:2] for s in streams(lib)][0] == ("video", "hevc")


def test_makemkvs_disc_named_files_are_published_as_title_tNN(titles, tmp_path):
    """A disc with a name: MakeMKV writes Blade Runner_t00.mkv; media-rip publishes title_t00.mkv in
    the disc's folder, so every rip in staging is <disc>/title_tNN.mkv."""
    drive = Drive(tmp_path)
    drive.insert("Blade Runner", [(FEATURE, titles["main"]), ("1:01:00", titles["other"])])
    drive.set(titles=[{**t, "file": f"Blade Runner_t{n:02d}.mkv"} for n, t in enumerate(drive.disc()["titles"])])
    run = drive.once()
    assert run.returncode == 0, run.stderr
    assert drive.published() == {"Blade Runner": ["title_t00.mkv", "title_t00.mkv.done",
                                                  "title_t01.mkv", "title_t01.mkv.done"]}
    folder = drive.staging / "Blade Runner"
    assert (folder / "title_t00.mkv").read_bytes() == titles["main"].read_bytes()
    assert (folder / "title_t01.mkv").read_bytes() == titles["other"].read_bytes()
    [rip] = drive.status()  # what MakeMKV named them, as its scan said
    assert [t["file"] for t in rip["titles"]] == ["Blade Runner_t00.mkv", "Blade Runner_t01.mkv"]


def test_no_disc_and_tray_open_exit_3_and_rip_nothing(tmp_path):
    drive = Drive(tmp_path)
    run = drive.once()
    assert run.returncode == 3 and "the drive is empty" in run.stderr
    drive.set(drive_state=1)
    run = drive.once()
    assert run.returncode == 3 and "tray is open" in run.stderr
    assert drive.mkv_calls() == 0 and drive.published() == {}


def test_a_failed_title_publishes_nothing_although_makemkvcon_exits_0(titles, tmp_path):
    drive = Drive(tmp_path)
    drive.insert("Scratched", [(FEATURE, titles["main"]), ("1:40:00", titles["other"], "fail")])
    run = drive.once()
    assert run.returncode == 4, run.stderr
    assert "Failed to save title 1" in run.stderr
    assert drive.published() == {}  # neither the good title nor the partial one, no working folder
    [rip] = drive.status()
    assert rip["state"] == "failed" and "Failed to save title 1" in rip["reason"] and rip["exit_code"] == 4


def test_no_title_long_enough_exits_5_without_ripping(titles, tmp_path):
    drive = Drive(tmp_path)
    drive.insert("Bonus Disc", [(EXTRA, titles["main"]), ("0:09:59", titles["other"])])
    run = drive.once()
    assert run.returncode == 5 and "no title is at least 0:10:00 long" in run.stderr
    assert drive.mkv_calls() == 0 and drive.published() == {}
    assert drive.once("--min-length", "500").returncode == 0  # the override reaches makemkvcon
    assert drive.published() == {"Bonus Disc": ["title_t00.mkv", "title_t00.mkv.done"]}


def test_two_discs_with_the_same_name_get_their_own_folders(titles, tmp_path):
    drive = Drive(tmp_path)
    drive.insert("Disc 1", [(FEATURE, titles["main"])], label="DISC/../1")
    assert drive.once().returncode == 0
    first = drive.staging / "Disc 1" / "title_t00.mkv"
    before = (first.stat().st_ino, first.stat().st_mtime_ns, first.read_bytes())
    drive.insert("Disc 1", [(FEATURE, titles["other"])])
    assert drive.once().returncode == 0
    assert drive.published() == {"Disc 1": ["title_t00.mkv", "title_t00.mkv.done"],
                                 "Disc 1 (2)": ["title_t00.mkv", "title_t00.mkv.done"]}
    assert (first.stat().st_ino, first.stat().st_mtime_ns, first.read_bytes()) == before
    assert (drive.staging / "Disc 1 (2)" / "title_t00.mkv").read_bytes() == titles["other"].read_bytes()
    # a label that is all punctuation still gives one safe folder name
    drive.insert("", [(FEATURE, titles["main"])], label="../..")
    assert drive.once().returncode == 0
    assert "Disc" in drive.published()


def test_expired_key_is_reported_before_any_rip(titles, tmp_path):
    drive = Drive(tmp_path)
    drive.insert("Big Buck Bunny", [(FEATURE, titles["main"])], expired=True)
    run = drive.once()
    assert run.returncode == 6, run.stderr
    assert "version is too old" in run.stderr and "makemkvKey" in run.stderr
    assert drive.mkv_calls() == 0 and drive.published() == {}


def test_usage_errors_exit_2_and_help_lists_the_exit_codes(tmp_path):
    drive = Drive(tmp_path)
    assert drive.rip("once", "--min-length", "ten").returncode == 2
    assert drive.rip("frobnicate").returncode == 2
    bad = Drive(tmp_path / "bad", min_length=-1)
    run = bad.once()
    assert run.returncode == 2 and "min_length" in run.stderr
    helptext = drive.rip("--help").stdout
    for line in ("3  no disc", "4  a title failed", "5  no title is at least", "6  MakeMKV refuses"):
        assert line in helptext


def test_the_service_rips_each_new_disc_once_and_ejects_it(titles, tmp_path):
    drive = Drive(tmp_path)
    drive.insert("Heat", [(FEATURE, titles["main"])])
    svc = drive.start()
    try:
        wait_for(lambda: drive.disc()["drive_state"] == 1, timeout=60, what="eject after the rip")
        assert drive.published() == {"Heat": ["title_t00.mkv", "title_t00.mkv.done"]}
        drive.set(drive_state=2)  # the same disc back in: not ripped again, ejected again
        wait_for(lambda: drive.disc()["drive_state"] == 1, timeout=60, what="second eject")
        assert drive.mkv_calls() == 1
        drive.insert("Ronin", [(FEATURE, titles["other"])])  # a new disc
        wait_for(lambda: "Ronin" in drive.published(), timeout=60, what="second disc")
        metrics = (tmp_path / "state" / "rip.prom").read_text()
        assert 'media_rip_rips{state="done"} 2.0' in metrics or wait_for(
            lambda: 'media_rip_rips{state="done"} 2.0' in (tmp_path / "state" / "rip.prom").read_text())
    finally:
        kill(svc, signal.SIGTERM)
    assert svc.returncode == 0
    # a restart with the same disc in the drive does not rip it twice
    drive.set(drive_state=2)
    svc = drive.start()
    try:
        wait_for(lambda: drive.disc()["drive_state"] == 1, timeout=60, what="eject of a known disc")
    finally:
        kill(svc, signal.SIGTERM)
    assert drive.mkv_calls() == 2
    assert [r["name"] for r in drive.status()] == ["Heat", "Ronin"]
    # the status page's file: the same rips, newest first, and the drive as last polled
    status = drive.status_file()
    assert [(r["name"], r["state"]) for r in status["rips"]] == [("Ronin", "done"), ("Heat", "done")]
    assert status["rips"] == sorted(drive.status(), key=lambda r: -r["id"])
    assert status["drive"]["device"] == "/dev/sr0" and status["drive"]["state_name"] == "tray open"


def test_once_refuses_while_the_service_watches_the_drive(titles, tmp_path):
    drive = Drive(tmp_path, auto_rip=False)
    drive.insert("Heat", [(FEATURE, titles["main"])])
    svc = drive.start()
    try:
        wait_for(lambda: drive.calls(), timeout=30, what="the service polling")
        run = drive.once()
    finally:
        kill(svc, signal.SIGTERM)
    assert run.returncode == 1 and "systemctl stop media-rip" in run.stderr
    assert drive.mkv_calls() == 0
    assert drive.once().returncode == 0  # the service is gone: the hand rip works


def test_auto_rip_off_only_watches(titles, tmp_path):
    drive = Drive(tmp_path, auto_rip=False)
    drive.insert("Heat", [(FEATURE, titles["main"])])
    svc = drive.start()
    try:
        wait_for(lambda: any("info" in c and "dev:/dev/sr0" in c for c in drive.calls()), timeout=30, what="scan")

        def polled_after_the_scan():  # the next poll of the drive list: the scan's poll, with its log line, is over
            calls = drive.calls()
            first = next(i for i, c in enumerate(calls) if "dev:/dev/sr0" in c)
            return any("disc:9999" in c for c in calls[first + 1:])

        wait_for(polled_after_the_scan, timeout=30, what="the next poll")
    finally:
        kill(svc, signal.SIGTERM)
    assert drive.mkv_calls() == 0 and drive.disc()["drive_state"] == 2
    assert "auto_rip is off" in svc.stderr.read()


def test_kill_9_mid_rip_leaves_no_partial_and_the_restart_rips_once(titles, tmp_path):
    drive = Drive(tmp_path)
    drive.insert("Long Rip", [(FEATURE, titles["main"])], chunks=40, chunk_delay=0.1)
    svc = drive.start()
    try:
        work = wait_for(lambda: [p for p in drive.staging.glob(".rip-*/title_t00.mkv") if p.stat().st_size > 0],
                        timeout=60, what="a rip in progress")[0]
        # the status page sees the rip's progress while makemkvcon runs (the heartbeat; the poll loop waits)
        live = wait_for(lambda: (f := drive.status_file())["rips"] and 0 < f["rips"][0]["progress"] < 1 and f,
                        timeout=30, what="live progress in the status file")
        assert live["rips"][0]["state"] == "ripping" and live["drive"]["current"]["name"] == "Long Rip"
        kill(svc, signal.SIGKILL)
        # the stand-in makemkvcon died with media-rip (PR_SET_PDEATHSIG): nothing writes any more
        wait_for(lambda: not processes_with(str(work.parent)), timeout=10, what="makemkvcon to die")
        assert work.parent.exists() and drive.published().keys() == {work.parent.name}  # only the hidden folder
        drive.set(chunk_delay=0.0)
        svc = drive.start()
        wait_for(lambda: drive.disc()["drive_state"] == 1, timeout=60, what="eject after the second rip")
    finally:
        kill(svc, signal.SIGTERM)
    assert drive.published() == {"Long Rip": ["title_t00.mkv", "title_t00.mkv.done"]}
    assert (drive.staging / "Long Rip" / "title_t00.mkv").read_bytes() == titles["main"].read_bytes()
    [rip] = drive.status()
    assert rip["state"] == "done" and rip["attempts"] == 2 and drive.mkv_calls() == 2


def test_status_json_of_an_empty_store(tmp_path):
    drive = Drive(tmp_path)
    assert drive.status() == []
    assert drive.rip("status").stdout.strip() == "no rips yet"
    assert json.loads(drive.rip("status", "--json").stdout) == []


def test_sigterm_during_a_long_scan_stops_the_service_at_once_and_records_nothing(titles, tmp_path):
    drive = Drive(tmp_path)
    drive.insert("Heat", [(FEATURE, titles["main"])], scan_delay=120)  # a slow Blu-ray scan
    svc = drive.start()
    try:
        wait_for(lambda: any("dev:/dev/sr0" in c for c in drive.calls()), timeout=30, what="the disc scan")
        time.sleep(0.3)
        started = time.monotonic()
        svc.send_signal(signal.SIGTERM)
        svc.wait(timeout=30)
        took = time.monotonic() - started
    finally:
        kill(svc)
    assert svc.returncode == 0 and took < 5, took
    assert "interrupted by shutdown: nothing recorded" in svc.stderr.read()
    assert not processes_with(str(drive.bin / "makemkvcon"))  # the scan ended with the service
    assert drive.status() == [] and drive.mkv_calls() == 0 and drive.published() == {}
    # the next start scans the disc again and rips it
    drive.set(scan_delay=0)
    svc = drive.start()
    try:
        wait_for(lambda: "Heat" in drive.published(), timeout=60, what="the rip after the restart")
    finally:
        kill(svc, signal.SIGTERM)
    assert [(r["name"], r["state"]) for r in drive.status()] == [("Heat", "done")]


@pytest.mark.parametrize("scan,why", [({"scan_end": "killed"}, "killed by SIGTERM"),
                                      ({"scan_exit": 1}, "failed with exit status 1"),
                                      ({"scan_end": "cut"}, "without its TCOUNT line")])
def test_once_refuses_a_scan_that_failed_or_was_cut_short(titles, tmp_path, scan, why):
    drive = Drive(tmp_path)
    drive.insert("Heat", [(FEATURE, titles["main"])], **scan)
    run = drive.once()
    assert run.returncode == 8 and why in run.stderr, run.stderr
    assert drive.status() == [] and drive.mkv_calls() == 0 and drive.published() == {}


def test_the_service_waits_for_a_missing_staging_and_never_creates_it(titles, tmp_path):
    pool = tmp_path / "pool"
    pool.mkdir()
    staging = pool / "staging"
    drive = Drive(tmp_path / "ct", staging=str(staging))
    drive.insert("Heat", [(FEATURE, titles["main"])])
    svc = drive.start()
    try:
        wait_for(lambda: (tmp_path / "ct" / "state" / "rip.prom").exists(), timeout=30, what="the first poll")
        time.sleep(1.0)  # ten more polls at poll_seconds 0.1
        assert list(pool.iterdir()) == []  # not staging, not its .media-rip folder
        assert drive.calls() == []  # the drive is not even asked while the pool is missing
        staging.mkdir()  # the pool is mounted
        wait_for(lambda: (staging / "Heat" / "title_t00.mkv.done").exists(), timeout=60, what="the rip")
    finally:
        kill(svc, signal.SIGTERM)
    log = svc.stderr.read()
    said = [line for line in log.splitlines() if f"ERROR staging {staging} does not exist: is the pool mounted" in line]
    assert len(said) == 1, log  # once, not once per poll
    assert "INFO problem gone: staging" in log
    assert (staging / "Heat" / "title_t00.mkv").read_bytes() == titles["main"].read_bytes()


def test_a_full_pool_keeps_the_rip_until_the_running_service_or_a_restart_publishes_it(titles, tmp_path,
                                                                                          monkeypatch):
    """In-process (a fault can only be injected here): the service's own loop in a thread, and
    the publish's rename failing with ENOSPC until space returns; then the real process."""
    drive = Drive(tmp_path)
    monkeypatch.setenv("FAKE_MAKEMKV_DISC", str(drive.disc_file))
    monkeypatch.setenv("HOME", str(tmp_path))
    full = {"on": True}
    real_rename = os.rename

    def rename(src, dst, *a, **k):
        if full["on"] and os.path.basename(str(src)).startswith(".rip-"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(src))
        return real_rename(src, dst, *a, **k)

    monkeypatch.setattr(os, "rename", rename)

    def service():
        svc = rip_service.Service(config_mod.load_rip(str(drive.config)))
        svc.retry_seconds = 0.3
        thread = threading.Thread(target=svc.run)
        thread.start()
        return svc, thread

    def row(name):
        try:  # the service may not have created its database yet
            store = rip_store.RipStore(str(drive.db), readonly=True)
            try:
                return next((r for r in store.list() if r["name"] == name), None)
            finally:
                store.close()
        except sqlite3.Error:
            return None

    drive.insert("Heat", [(FEATURE, titles["main"])])
    svc, thread = service()
    try:
        wait_for(lambda: (r := row("Heat")) and r["state"] == "publishing", timeout=60, what="the publish error")
        time.sleep(1.0)  # a few tries of the timer, all failing
        [work] = drive.staging.glob(".rip-*")
        assert (work / "title_t00.mkv").read_bytes() == titles["main"].read_bytes()
        assert "No space left on device" in row("Heat")["reason"] and drive.status_file()["rips"][0]["state"] == \
            "publishing"
        full["on"] = False  # space returns: the running service's timer publishes it
        wait_for(lambda: row("Heat")["state"] == "done", timeout=30, what="the publish by the timer")
        # a second disc, and the pool full again: kept over a restart of the real service
        full["on"] = True
        drive.insert("Ronin", [(FEATURE, titles["other"])])
        wait_for(lambda: (r := row("Ronin")) and r["state"] == "publishing", timeout=60, what="the second error")
    finally:
        svc.request_stop()
        thread.join(timeout=30)
    assert not thread.is_alive()
    full["on"] = False
    proc = drive.start()
    try:
        wait_for(lambda: row("Ronin")["state"] == "done", timeout=60, what="the publish at the start")
    finally:
        kill(proc, signal.SIGTERM)
    assert drive.published() == {"Heat": ["title_t00.mkv", "title_t00.mkv.done"],
                                 "Ronin": ["title_t00.mkv", "title_t00.mkv.done"]}
    assert (drive.staging / "Heat" / "title_t00.mkv").read_bytes() == titles["main"].read_bytes()
    assert (drive.staging / "Ronin" / "title_t00.mkv").read_bytes() == titles["other"].read_bytes()
    assert drive.mkv_calls() == 2  # each disc ripped once
