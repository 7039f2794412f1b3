"""media-rip's service against the stand-in drive (tests/media/fake_makemkvcon.py), in-process:
a publish error keeps the whole rip and publishes it later; a failed, killed or cut-short scan
records nothing; a stop request ends a scan or a rip at once; a missing staging is waited for,
never created; the drive is looked up again at each poll (a reboot renames sr0/sr1); a whole
rip is never lost (an unreadable or vanished working folder, old folders of another database, an
exit status or a stop after "Copy complete", a file missing after MakeMKV's success); a staging
that refuses the working folder is retried without a crash; a stop ends makemkvcon's process group."""

from __future__ import annotations

import builtins
import errno
import json
import logging
import os
import shutil
import signal
import stat
import sys
import threading
import time
from pathlib import Path

import pytest

from media_pipeline import config as config_mod
from media_pipeline import rip_robot, rip_service, rip_store
from media_pipeline import ripper as ripper_mod  # `ripper` is a Ripper in these tests
from tests.media.rip_helpers import Drive

FEATURE = "1:52:10"


class Sent(list):
    """A notifier that keeps what it was asked to send."""

    def send(self, title: str, body: str) -> None:
        self.append((title, body))

    def describe(self) -> str:
        return "test notifier"


def _service(cfg: config_mod.RipConfig, **roots) -> tuple[rip_service.Service, Sent]:
    """A Service set up as run() sets it up (store, ripper, status file), without its loop."""
    svc = rip_service.Service(cfg, **roots)
    os.makedirs(os.path.dirname(cfg.db), exist_ok=True)
    svc.store = rip_store.RipStore(cfg.db)
    sent = Sent()
    svc.ripper = ripper_mod.Ripper(cfg, svc.store, sent, **roots)
    svc.ripper.on_change = svc.publish_status
    return svc, sent


def _live(tmp_path: Path, monkeypatch, roots=None, **config) -> tuple[rip_service.Service, Drive, Sent]:
    drive = Drive(tmp_path, **config)
    monkeypatch.setenv("FAKE_MAKEMKV_DISC", str(drive.disc_file))
    monkeypatch.setenv("HOME", str(tmp_path))
    svc, sent = _service(config_mod.load_rip(str(drive.config)), **(roots or {}))
    return svc, drive, sent


def _source(tmp_path: Path, name: str, size: int = 300_000) -> Path:
    path = tmp_path / "disc" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(os.urandom(size))
    return path


def _errors(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR and text in r.getMessage()]


# --- 1. a publish error never costs the rip ------------------------------------------------

def _fail_publish(monkeypatch, step: str, err: int, staging: Path) -> dict:
    """Make one publish step fail with `err` while fault["on"]: the marker's creation, the
    mkdir that reserves the folder name, or the rename. Everything else passes through."""
    fault = {"on": True, "hits": 0}
    real_open, real_os_open, real_mkdir, real_rename = builtins.open, os.open, os.mkdir, os.rename

    def hit(path):
        fault["hits"] += 1
        raise OSError(err, os.strerror(err), str(path))

    def marker(path) -> bool:
        return fault["on"] and step == "marker" and str(path).endswith(".done")

    def fake_open(path, *a, **k):
        if marker(path):
            hit(path)
        return real_open(path, *a, **k)

    def fake_os_open(path, *a, **k):
        if marker(path):
            hit(path)
        return real_os_open(path, *a, **k)

    def fake_mkdir(path, *a, **k):
        if fault["on"] and step == "mkdir" and os.path.dirname(str(path)) == str(staging) and \
                not os.path.basename(str(path)).startswith("."):
            hit(path)
        return real_mkdir(path, *a, **k)

    def fake_rename(src, dst, *a, **k):
        if fault["on"] and step == "rename" and os.path.basename(str(src)).startswith(ripper_mod.WORK_PREFIX):
            hit(src)
        return real_rename(src, dst, *a, **k)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(os, "open", fake_os_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)
    monkeypatch.setattr(os, "rename", fake_rename)
    return fault


@pytest.mark.parametrize("how", ["timer", "restart"])
@pytest.mark.parametrize("step", ["marker", "mkdir", "rename"])
@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EIO])
def test_a_publish_error_keeps_the_whole_rip_and_publishes_it_later(tmp_path, monkeypatch, caplog, how, step, err):
    caplog.set_level(logging.INFO, logger="media-rip")
    svc, drive, sent = _live(tmp_path, monkeypatch)
    src = _source(tmp_path, "feature.mkv")
    drive.insert("Heat", [(FEATURE, src)])
    fault = _fail_publish(monkeypatch, step, err, drive.staging)

    svc.poll()  # rips; the publish fails after MakeMKV is done
    [row] = svc.store.list()
    work = Path(row["workdir"])
    assert row["state"] == "publishing" and fault["hits"] == 1
    assert os.strerror(err) in row["reason"] and str(work) in row["reason"] and "fix: free space" in row["reason"]
    assert (work / "title_t00.mkv").read_bytes() == src.read_bytes()  # MakeMKV's work, byte for byte
    assert set(drive.published()) == {work.name}  # nothing half-published, no reservation left
    assert drive.disc()["drive_state"] == 1  # the disc is out: the drive is free for the next one
    # reported once: the log, the notifier, the status file and the metrics say it
    assert len(_errors(caplog, "not published yet")) == 1
    assert [t for t, _ in sent] == ["Rip not published yet"]
    status = drive.status_file()["rips"][0]
    assert status["state"] == "publishing" and status["reason"] == row["reason"]
    assert 'media_rip_rips{state="publishing"} 1.0' in svc.metrics_text()

    svc.retry_seconds = 0.0
    for _ in range(3):  # still no space: tried again, quietly, and kept
        svc.retry_publishing()
        svc.poll()
    assert fault["hits"] == 4 and svc.store.get(row["id"])["state"] == "publishing"
    assert len(_errors(caplog, "not published yet")) == 1 and len(sent) == 1
    assert drive.mkv_calls() == 1 and (work / "title_t00.mkv").read_bytes() == src.read_bytes()

    if how == "restart":
        svc.store.close()
        svc, sent = _service(svc.cfg)
        svc.recover()  # the retry at the start fails too: the service goes on, the rip is kept
        assert svc.store.get(row["id"])["state"] == "publishing" and work.is_dir()
        assert len(_errors(caplog, "not published yet")) == 2 and sent == []  # once per start; notified once
        svc.store.close()
        fault["on"] = False  # space returns
        svc, sent = _service(svc.cfg)
        svc.recover()
    else:
        svc.retry_seconds = 60.0
        svc.retry_publishing()  # sets the next try a minute away
        fault["on"] = False  # space returns
        svc.retry_publishing()
        assert svc.store.get(row["id"])["state"] == "publishing"  # not before its time
        svc.next_publish = 0.0  # the minute is over
        svc.retry_publishing()

    done = svc.store.get(row["id"])
    assert done["state"] == "done" and done["folder"] == str(drive.staging / "Heat") and done["reason"] == ""
    assert drive.published() == {"Heat": ["title_t00.mkv", "title_t00.mkv.done"]}
    assert (drive.staging / "Heat" / "title_t00.mkv").read_bytes() == src.read_bytes()
    assert done["bytes"] == src.stat().st_size and drive.mkv_calls() == 1  # published once, ripped once
    assert [t for t, _ in sent] == (["Rip not published yet", "Rip published"] if how == "timer" else ["Rip published"])


def test_a_disc_waiting_to_be_published_is_not_ripped_again(tmp_path, monkeypatch):
    svc, drive, sent = _live(tmp_path, monkeypatch)
    drive.insert("Heat", [(FEATURE, _source(tmp_path, "f.mkv"))])
    _fail_publish(monkeypatch, "rename", errno.ENOSPC, drive.staging)
    svc.poll()
    drive.set(drive_state=2)  # the same disc back in
    svc.poll()
    assert drive.mkv_calls() == 1 and [r["state"] for r in svc.store.list()] == ["publishing"]
    assert drive.disc()["drive_state"] == 1  # ejected again


def test_only_makemkvs_own_failure_removes_the_working_folder(tmp_path, monkeypatch):
    svc, drive, sent = _live(tmp_path, monkeypatch)
    drive.insert("Scratched", [(FEATURE, _source(tmp_path, "a.mkv")), ("1:40:00", _source(tmp_path, "b.mkv"), "fail")])
    svc.poll()
    [row] = svc.store.list()
    assert row["state"] == "failed" and "Failed to save title 1" in row["reason"]
    assert drive.published() == {}  # the partial rip is gone, nothing was published
    assert [t for t, _ in sent] == ["Rip failed"]


# --- 2. a scan that failed, was killed or cut short is no scan -----------------------------

@pytest.mark.parametrize("scan", [{"scan_end": "killed"}, {"scan_exit": 1}, {"scan_end": "cut"},
                                  {"scan_end": "cut", "scan_exit": 1}])
def test_a_failed_or_cut_short_scan_records_nothing_and_rips_nothing(tmp_path, monkeypatch, caplog, scan):
    svc, drive, sent = _live(tmp_path, monkeypatch)
    drive.insert("Heat", [(FEATURE, _source(tmp_path, "f.mkv"))], **scan)
    svc.retry_seconds = 3600.0  # no retry falls due by itself, however slow this machine is
    before = time.monotonic()
    svc.poll()
    svc.poll()  # not scanned again at every poll
    assert svc.rescan_at is not None and svc.rescan_at >= before + 3600.0  # the next scan is an hour away
    scans = [c for c in drive.calls() if "info" in c and "dev:/dev/sr0" in c]
    assert len(scans) == 1 and drive.mkv_calls() == 0
    assert svc.store.list() == [] and drive.published() == {}  # no "skipped", no rip: the disc is unknown
    [error] = _errors(caplog, "makemkvcon info dev:/dev/sr0")
    assert ("killed by SIGTERM" if scan.get("scan_end") == "killed" else
            "exit status 1" if scan.get("scan_exit") else "without its TCOUNT line") in error
    assert drive.disc()["drive_state"] == 2 and sent == []  # not ejected: it waits for a good scan

    drive.set(scan_end="full", scan_exit=0)
    svc.poll()
    assert len([c for c in drive.calls() if "info" in c and "dev:/dev/sr0" in c]) == 1  # not before its time
    svc.rescan_at = time.monotonic()  # the retry time has come
    svc.poll()  # scanned again, and ripped
    assert [(r["name"], r["state"]) for r in svc.store.list()] == [("Heat", "done")]


def test_scan_problem_reads_a_whole_scan_as_whole():
    whole = rip_robot.parse_info('TCOUNT:1\nTINFO:0,9,0,"1:00:00"\nTINFO:0,27,0,"t.mkv"\n')
    assert rip_robot.scan_problem("dev:/dev/sr0", whole, 0) == ""
    short = rip_robot.parse_info('TCOUNT:2\nTINFO:0,9,0,"1:00:00"\n')
    assert "announced 2 title(s) but described 1" in rip_robot.scan_problem("dev:/dev/sr0", short, 0)
    assert rip_robot.scan_problem("dev:/dev/sr0", rip_robot.parse_info("TCOUNT:0\n"), 0) == ""  # a disc of short titles
    no_disc = rip_robot.parse_info('MSG:5010,0,0,"Failed to open disc","x"\nTCOUNT:0\n')
    assert rip_robot.scan_problem("dev:/dev/sr0", no_disc, 1) == ""  # told as "no disc", exit 3
    assert "listed no drive" in rip_robot.scan_problem("disc:9999", rip_robot.parse_info(""), 0)
    assert "killed by SIGKILL" in rip_robot.scan_problem("disc:9999", rip_robot.parse_info('DRV:0,2,999,1,"a","b","/dev/sr0"'), -9)


def test_stop_ends_a_running_scan_at_once(tmp_path, monkeypatch):
    svc, drive, _ = _live(tmp_path, monkeypatch)
    drive.insert("Heat", [(FEATURE, _source(tmp_path, "f.mkv"))], scan_delay=60)
    got = {}

    def scan():
        try:
            svc.ripper.scan_disc()
        except ripper_mod.RipError as exc:
            got["error"] = exc

    t = threading.Thread(target=scan)
    t.start()
    deadline = time.monotonic() + 30
    while svc.ripper.proc is None and time.monotonic() < deadline:
        time.sleep(0.02)
    started = time.monotonic()
    svc.request_stop()
    t.join(timeout=10)
    assert not t.is_alive() and time.monotonic() - started < 3
    assert got["error"].code == ripper_mod.EXIT_SCAN and "stopping" in got["error"].reason


def _hanging_makemkvcon(tmp_path, setup: str, value: str):
    """A makemkvcon that runs `setup`, then writes `value` (a Python expression) to a mark file whole
    (a rename: the test waits for it), says it started and hangs. Returns (ripper, mark)."""
    mark = tmp_path / "mark"
    stub = tmp_path / "makemkvcon"
    stub.write_text(f"#!{sys.executable}\nimport os, signal, subprocess, sys, time\n{setup}\n"
                    f"open({str(mark)!r} + '.tmp', 'w').write({value})\n"
                    f"os.replace({str(mark)!r} + '.tmp', {str(mark)!r})\n"
                    "print('MSG:1005,0,1,\"MakeMKV v1.18.4 started\",\"x\"', flush=True)\ntime.sleep(60)\n")
    stub.chmod(0o755)
    return ripper_mod.Ripper(config_mod.rip_from_dict({"makemkvcon": str(stub), "device": "/dev/sr0"}), None), mark


def test_a_makemkvcon_that_ignores_sigterm_is_killed(tmp_path):
    # SIGTERM is ignored from the mark on
    ripper, ready = _hanging_makemkvcon(tmp_path, "signal.signal(signal.SIGTERM, signal.SIG_IGN)", "'ready'")
    got = {}

    def scan():
        try:
            ripper.scan_disc()
        except ripper_mod.RipError as exc:
            got["error"] = exc

    t = threading.Thread(target=scan)
    t.start()
    deadline = time.monotonic() + 30
    while not (ripper.proc is not None and ready.exists()) and time.monotonic() < deadline:
        time.sleep(0.02)
    proc = ripper.proc
    assert proc is not None and ready.read_text() == "ready"
    started = time.monotonic()
    ripper.stop()
    t.join(timeout=30)
    took = time.monotonic() - started
    assert not t.is_alive()
    assert proc.returncode == -9  # SIGTERM did nothing: it was killed, after the grace time
    assert ripper_mod.STOP_GRACE_SECONDS - 0.5 <= took < 20, took
    assert got["error"].code == ripper_mod.EXIT_SCAN and "stopping" in got["error"].reason


def test_a_stop_request_before_makemkvcon_starts_ends_the_rip(tmp_path, monkeypatch, caplog):
    svc, drive, _ = _live(tmp_path, monkeypatch)
    drive.insert("Heat", [(FEATURE, _source(tmp_path, "f.mkv"))], chunks=20, chunk_delay=0.2)
    scan = svc.ripper.scan_disc()
    svc.request_stop()  # SIGTERM between the scan and the rip
    started = time.monotonic()
    with pytest.raises(ripper_mod.RipError) as exc:
        svc.ripper.rip_disc(scan)
    assert time.monotonic() - started < 3 and exc.value.reason == "interrupted by shutdown"
    [row] = svc.store.list()
    assert row["state"] == "failed" and drive.published() == {}  # ripped again at the next start


# --- 3. staging missing: the pool is not mounted; wait, never create it ---------------------

def test_a_missing_staging_is_waited_for_and_never_created(tmp_path, monkeypatch, caplog):
    pool = tmp_path / "pool"
    pool.mkdir()
    staging = pool / "staging"
    svc, drive, _ = _live(tmp_path / "ct", monkeypatch, staging=str(staging))
    drive.insert("Heat", [(FEATURE, _source(tmp_path, "f.mkv"))])
    svc.recover()
    for _ in range(4):
        svc.poll()
        svc.retry_publishing()
        svc.publish_status()
        svc.publish_metrics()
    assert list(pool.iterdir()) == []  # neither staging nor its .media-rip folder
    assert len(_errors(caplog, f"staging {staging} does not exist: is the pool mounted?")) == 1
    assert svc.drive_status()["error"].startswith(f"staging {staging} does not exist")
    assert not any("dev:/dev/sr0" in c for c in drive.calls()) and drive.mkv_calls() == 0  # not even scanned

    staging.mkdir()  # the pool is mounted
    svc.poll()
    assert sorted(p.name for p in staging.iterdir()) == [".media-rip", "Heat"]
    assert svc.drive_status()["error"] == "" and svc.store.list()[0]["state"] == "done"


def test_the_status_file_creates_its_own_folder_only(tmp_path):
    from media_pipeline import rips

    missing = tmp_path / "staging" / ".media-rip" / "status.json"
    with pytest.raises(FileNotFoundError):
        rips.write_status(str(missing), rips.snapshot([], {}))
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "staging").mkdir()
    rips.write_status(str(missing), rips.snapshot([], {}))
    assert json.loads(missing.read_text())["rips"] == []


# --- 4. the drive is looked up at each poll -------------------------------------------------

class Node:
    """A node's sysfs and /dev as the container sees them: optical drives by sg/sr name."""

    def __init__(self, root: Path):
        self.sys, self.dev = root / "sys", root / "dev"
        self.dev.mkdir(parents=True)

    def drive(self, sg: str, sr: str, model: str, serial: str, by_id: str | None = None, node: bool = True) -> None:
        d = self.sys / "class" / "scsi_generic" / sg / "device"
        (d / "block" / sr).mkdir(parents=True)
        (d / "type").write_text("5\n")
        (d / "model").write_text(f"{model:<16}\n")  # sysfs pads the SCSI model with blanks
        (d / "vpd_pg80").write_bytes(b"\x05\x80\x00" + bytes([len(serial)]) + serial.encode())
        if node:
            os.mknod(self.dev / sr, stat.S_IFBLK | 0o660, os.makedev(11, int(sr[2:])))
        if by_id:
            (self.dev / "disk" / "by-id").mkdir(parents=True, exist_ok=True)
            (self.dev / "disk" / "by-id" / by_id).symlink_to(f"../../{sr}")

    def disk(self, sg: str) -> None:
        """A SCSI device that is no optical drive (type 0)."""
        d = self.sys / "class" / "scsi_generic" / sg / "device"
        d.mkdir(parents=True)
        (d / "type").write_text("0\n")

    def reboot(self) -> None:
        shutil.rmtree(self.sys)
        shutil.rmtree(self.dev)
        self.dev.mkdir()


BD = ("BD-RE WH16NS60", "KLZK1234", "ata-HL-DT-ST_BD-RE_WH16NS60_KLZK1234")
DVD = ("DVD-RW DH16NS40", "AAA111", "ata-ASUS_DVD-RW_DH16NS40_AAA111")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mknod of block devices needs root")


@needs_root
@pytest.mark.parametrize("selector", ["BD-RE WH16NS60", "bd-re  wh16ns60", "KLZK1234", BD[2],
                                      f"/dev/disk/by-id/{BD[2]}"])
def test_a_selector_finds_its_drive_as_the_hookscript_does(tmp_path, selector):
    node = Node(tmp_path)
    node.disk("sg0")
    node.drive("sg1", "sr0", *DVD)
    node.drive("sg2", "sr1", *BD)
    assert ripper_mod.DriveFinder(selector, str(node.sys), str(node.dev)).find() == (str(node.dev / "sr1"), "")
    assert ripper_mod.DriveFinder("auto", str(node.sys), str(node.dev)).find() == (str(node.dev / "sr0"), "")


@needs_root
def test_drive_lookup_problems_name_the_fix(tmp_path):
    node = Node(tmp_path)
    node.drive("sg0", "sr0", *DVD[:2], node=False)
    (node.dev / "sr0").write_text("")  # a bind whose source was missing leaves an empty file
    node.drive("sg1", "sr1", *BD[:2])
    finder = lambda sel: ripper_mod.DriveFinder(sel, str(node.sys), str(node.dev)).find()  # noqa: E731
    assert finder("auto") == (str(node.dev / "sr1"), "")  # the first block device, not the file
    # a container's /dev has no udev links: a by-id name still finds its drive by its serial
    assert finder(BD[2]) == (str(node.dev / "sr1"), "")
    assert finder("usb-HL-DT-ST_BD-RE_WH16NS60_KLZK1234-0:0") == (str(node.dev / "sr1"), "")
    path, why = finder(DVD[0])  # in sysfs, not passed into this container
    assert path == "" and "sr0 now" in why and "pct reboot" in why
    node.drive("sg2", "sr2", "DVD-ROM", "CCC333")  # two drives in the container: no guess
    path, why = finder("NoSuchDrive")
    assert path == "" and "no optical drive matches drive 'NoSuchDrive'" in why and "'BD-RE WH16NS60'" in why
    assert 'set "drive" in media-rip\'s config' in why
    empty = Node(tmp_path / "empty")
    path, why = ripper_mod.DriveFinder("auto", str(empty.sys), str(empty.dev)).find()
    assert path == "" and "no optical drive" in why and "pct reboot" in why


@needs_root
def test_the_drive_is_followed_when_a_reboot_renames_it(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="media-rip")
    node = Node(tmp_path / "node")
    node.drive("sg0", "sr0", *DVD)
    node.drive("sg1", "sr1", *BD)
    roots = {"sysfs": str(node.sys), "dev": str(node.dev)}
    svc, drive, _ = _live(tmp_path, monkeypatch, roots, device="", drive=BD[0])
    drive.insert("Heat", [(FEATURE, _source(tmp_path, "a.mkv"))], device=str(node.dev / "sr1"))
    svc.poll()
    assert "Heat" in drive.published() and svc.drive_status()["device"] == str(node.dev / "sr1")
    assert [c for c in drive.calls() if "mkv" in c][-1][-3] == f"dev:{node.dev / 'sr1'}"

    node.reboot()  # the kernel finds the drives the other way round
    node.drive("sg0", "sr0", *BD)
    node.drive("sg1", "sr1", *DVD)
    drive.insert("Ronin", [(FEATURE, _source(tmp_path, "b.mkv"))], device=str(node.dev / "sr0"))
    svc.poll()
    assert "Ronin" in drive.published() and svc.drive_status()["device"] == str(node.dev / "sr0")
    assert [c for c in drive.calls() if "mkv" in c][-1][-3] == f"dev:{node.dev / 'sr0'}"
    assert f"drive '{BD[0]}' is {node.dev / 'sr0'} now (was {node.dev / 'sr1'})" in caplog.text

    node.reboot()  # the drive is gone: said once, nothing ripped
    for _ in range(3):
        svc.poll()
    assert len(_errors(caplog, f"no optical drive matches drive '{BD[0]}'")) == 1
    assert svc.drive_status()["device"] == "" and drive.mkv_calls() == 2


def test_a_fixed_device_is_not_looked_up(tmp_path):
    ripper = ripper_mod.Ripper(config_mod.rip_from_dict({"device": "/dev/sr7", "drive": BD[0]}), None,
                        sysfs=str(tmp_path / "none"), dev=str(tmp_path / "none"))
    assert ripper.find_device() == "" and ripper.device == "/dev/sr7"


# --- 5. a whole rip is never lost: a working folder is only removed for MakeMKV's own failure ----

def _stat_fault(monkeypatch, match, err: int) -> dict:
    """os.stat (and so os.path.isdir/isfile/getsize) fails with `err` for the paths match() accepts
    while fault["on"]: an unreadable disk, a mergerfs branch gone offline."""
    fault = {"on": True, "hits": 0}
    real_stat = os.stat

    def fake_stat(path, *a, **k):
        if fault["on"] and isinstance(path, (str, os.PathLike)) and match(os.fspath(path)):
            fault["hits"] += 1
            raise OSError(err, os.strerror(err), os.fspath(path))
        return real_stat(path, *a, **k)

    monkeypatch.setattr(os, "stat", fake_stat)
    return fault


def _publishing_rip(svc: rip_service.Service, staging: Path, name: str, data: bytes = b"mkv") -> tuple[int, Path]:
    """A whole rip whose publish is pending (as a file error or a restart leaves it)."""
    rid = svc.store.start(f"fp-{name}", name.upper(), name, [rip_robot.Title(0, 6000, len(data), "title_t00.mkv")])
    work = staging / f".rip-{rid}"
    work.mkdir()
    (work / "title_t00.mkv").write_bytes(data)
    svc.store.update(rid, state="publishing", workdir=str(work))
    return rid, work


def _plain_service(tmp_path: Path) -> tuple[rip_service.Service, Path, Sent]:
    staging = tmp_path / "staging"
    staging.mkdir()
    svc, sent = _service(config_mod.rip_from_dict({"staging": str(staging), "db": str(tmp_path / "db" / "r.sqlite3"),
                                                   "metrics_textfile": ""}))
    return svc, staging, sent


@pytest.mark.parametrize("err", [errno.ENOTCONN, errno.EIO, errno.EACCES])
def test_a_working_folder_that_cannot_be_read_keeps_its_rip(tmp_path, monkeypatch, caplog, err):
    svc, staging, sent = _plain_service(tmp_path)
    rid, work = _publishing_rip(svc, staging, "Heat")
    fault = _stat_fault(monkeypatch, lambda p: p == str(work), err)
    svc.recover()  # a branch of the pool is offline: the folder is there, it cannot be read
    row = svc.store.get(rid)
    assert row["state"] == "publishing" and row["folder"] == "" and fault["hits"] >= 1
    assert os.strerror(err) in row["reason"] and str(work) in row["reason"]
    svc.retry_seconds = 0.0
    for _ in range(3):
        svc.retry_publishing()
    assert svc.store.get(rid)["state"] == "publishing"
    assert len(_errors(caplog, str(work))) == 1  # said once, not at every try
    svc.store.close()
    svc, sent = _service(svc.cfg)
    svc.recover()  # a restart: nothing claims it is gone, nothing removes it
    assert (work / "title_t00.mkv").read_bytes() == b"mkv" and svc.store.get(rid)["state"] == "publishing"
    fault["on"] = False  # the branch is back
    svc.next_publish = 0.0
    svc.retry_publishing()
    done = svc.store.get(rid)
    assert done["state"] == "done" and done["folder"] == str(staging / "Heat")
    assert (staging / "Heat" / "title_t00.mkv").read_bytes() == b"mkv"


def test_a_gone_working_folder_is_done_only_when_its_published_folder_is_there(tmp_path, caplog):
    svc, staging, sent = _plain_service(tmp_path)
    earlier = svc.store.start("fp-old", "HEAT", "Heat", [rip_robot.Title(0, 6000, 3, "title_t00.mkv")])
    (staging / "Heat").mkdir()  # an earlier disc of the same name, published and recorded
    (staging / "Heat" / "title_t00.mkv").write_text("old")
    svc.store.update(earlier, state="done", folder=str(staging / "Heat"))
    heat, work = _publishing_rip(svc, staging, "Heat")
    os.rename(work, staging / "Heat (2)")  # the rename happened, the restart came before the row said so
    ronin, gone = _publishing_rip(svc, staging, "Ronin")
    shutil.rmtree(gone)  # gone, and published nowhere
    svc.recover()
    done = svc.store.get(heat)
    assert done["state"] == "done" and done["folder"] == str(staging / "Heat (2)") and done["reason"] == ""
    lost = svc.store.get(ronin)
    assert lost["state"] == "failed" and lost["folder"] == ""
    assert str(gone) in lost["reason"] and "Ronin" in lost["reason"] and "gone" in lost["reason"]
    assert len(_errors(caplog, str(gone))) == 1
    assert (staging / "Heat" / "title_t00.mkv").read_text() == "old"


def test_recover_leaves_working_folders_no_row_claims(tmp_path, caplog):
    """A fresh or restored database: old working folders hold whole rips media-rip knows nothing of."""
    svc, staging, sent = _plain_service(tmp_path)
    kept = {}
    for name in (".rip-1", ".rip-7", ".rip-3-2", ".rip-nodb-77"):
        (staging / name).mkdir()
        (staging / name / "title_t00.mkv").write_text(name)
        kept[name] = name
    failed = svc.store.start("fp-f", "F", "Failed", [])  # row 1: a new rip that reused the id 1
    svc.store.update(failed, state="failed", workdir=str(staging / ".rip-1-2"), reason="files kept")
    (staging / ".rip-1-2").mkdir()
    (staging / ".rip-1-2" / "title_t00.mkv").write_text("kept")
    kept[".rip-1-2"] = "kept"
    done = svc.store.start("fp-d", "D", "Done", [])  # published long ago from .rip-7: not its folder now
    svc.store.update(done, state="done", workdir=str(staging / ".rip-7"), folder=str(staging / "Done"))
    svc.recover()
    svc.recover()  # a second start
    for name, text in kept.items():
        assert (staging / name / "title_t00.mkv").read_text() == text, name
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
              and "not in media-rip's database" in r.getMessage()]
    for name in (".rip-1", ".rip-7", ".rip-3-2", ".rip-nodb-77"):
        said = [w for w in warned if str(staging / name) + ":" in w]
        assert len(said) == 2, (name, warned)  # once per start
        assert "left as it is" in said[0] and f"move it to {staging}/<name>/ to publish it, or delete it" in said[0]
    assert not any(str(staging / ".rip-1-2") in w for w in warned)  # its row says why it is kept


def test_a_new_rip_never_removes_an_existing_working_folder(tmp_path, monkeypatch):
    svc, drive, sent = _live(tmp_path, monkeypatch)
    old = drive.staging / ".rip-1"  # left by an earlier database: row 1 is a new rip now
    old.mkdir()
    (old / "title_t00.mkv").write_text("a whole rip of another disc")
    src = _source(tmp_path, "f.mkv")
    drive.insert("Heat", [(FEATURE, src)])
    svc.poll()
    [row] = svc.store.list()
    assert row["id"] == 1 and row["state"] == "done" and row["workdir"] == str(drive.staging / ".rip-1-2")
    assert (old / "title_t00.mkv").read_text() == "a whole rip of another disc"
    assert (drive.staging / "Heat" / "title_t00.mkv").read_bytes() == src.read_bytes()
    svc.store.close()
    svc, sent = _service(svc.cfg)
    svc.recover()
    assert (old / "title_t00.mkv").read_text() == "a whole rip of another disc"


def test_a_nonzero_exit_after_copy_complete_publishes_the_rip(tmp_path, monkeypatch, caplog):
    svc, drive, sent = _live(tmp_path, monkeypatch)
    src = _source(tmp_path, "f.mkv")
    drive.insert("Heat", [(FEATURE, src)], mkv_exit=2)
    svc.poll()
    [row] = svc.store.list()
    assert row["state"] == "done" and (drive.staging / "Heat" / "title_t00.mkv").read_bytes() == src.read_bytes()
    assert any(r.levelno == logging.WARNING and "exit status 2 after 'Copy complete" in r.getMessage()
               for r in caplog.records)
    assert [t for t, _ in sent] == ["Rip finished"]


def test_a_stop_request_after_copy_complete_publishes_the_rip(tmp_path, monkeypatch, caplog):
    svc, drive, sent = _live(tmp_path, monkeypatch)
    src = _source(tmp_path, "f.mkv")
    flag = tmp_path / "copied"
    drive.insert("Heat", [(FEATURE, src)], copied_flag=str(flag), after_copy_delay=60)
    scan = svc.ripper.scan_disc()
    got = {}

    def run():
        try:
            got["code"] = svc.ripper.rip_disc(scan)
        except ripper_mod.RipError as exc:
            got["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    deadline = time.monotonic() + 60
    while not flag.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert flag.exists()
    svc.request_stop()  # SIGTERM lands after 'Copy complete': makemkvcon ends with -15
    t.join(timeout=30)
    assert not t.is_alive() and got == {"code": ripper_mod.EXIT_OK}, got
    [row] = svc.store.list()
    assert row["state"] == "done" and (drive.staging / "Heat" / "title_t00.mkv").read_bytes() == src.read_bytes()
    assert any("exit status -15 after 'Copy complete" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("write", ["missing", "empty"])
def test_a_file_missing_after_reported_success_is_kept_not_deleted(tmp_path, monkeypatch, caplog, write):
    svc, drive, sent = _live(tmp_path, monkeypatch)
    src = _source(tmp_path, "a.mkv")
    drive.insert("Heat", [(FEATURE, src), ("1:40:00", _source(tmp_path, "b.mkv"), False)])
    disc = drive.disc()
    disc["titles"][1]["write"] = write
    drive.set(titles=disc["titles"])
    svc.poll()
    [row] = svc.store.list()
    work = Path(row["workdir"])
    assert row["state"] == "failed" and row["exit_code"] == ripper_mod.EXIT_FAILED
    assert f"title_t01.mkv is {write}" in row["reason"] and f"kept in {work}" in row["reason"]
    assert "never deleted" in row["reason"]
    assert (work / "title_t00.mkv").read_bytes() == src.read_bytes()  # MakeMKV's work stays
    assert set(drive.published()) == {work.name}  # nothing published, nothing removed
    assert [t for t, _ in sent] == ["Rip failed"]
    svc.store.close()
    svc, sent = _service(svc.cfg)
    svc.recover()  # a restart keeps it too
    assert (work / "title_t00.mkv").read_bytes() == src.read_bytes()


def test_a_file_check_error_keeps_the_rip_for_a_later_publish(tmp_path, monkeypatch, caplog):
    svc, drive, sent = _live(tmp_path, monkeypatch)
    src = _source(tmp_path, "f.mkv")
    drive.insert("Heat", [(FEATURE, src)])
    fault = _stat_fault(monkeypatch, lambda p: p.endswith("title_t00.mkv") and "/.rip-" in p, errno.EIO)
    svc.poll()  # MakeMKV says every title is saved; the disk cannot say what is there
    [row] = svc.store.list()
    work = Path(row["workdir"])
    assert row["state"] == "publishing" and fault["hits"] >= 1 and os.strerror(errno.EIO) in row["reason"]
    fault["on"] = False
    assert (work / "title_t00.mkv").read_bytes() == src.read_bytes()
    svc.next_publish = 0.0
    svc.retry_publishing()
    assert svc.store.get(row["id"])["state"] == "done"
    assert (drive.staging / "Heat" / "title_t00.mkv").read_bytes() == src.read_bytes()


# --- 6. a pool that refuses the working folder: no crash, tried again later -----------------

@pytest.mark.parametrize("err,why", [(errno.ENOSPC, "full"), (errno.EROFS, "read-only")])
def test_a_working_folder_that_cannot_be_made_fails_the_rip_without_a_crash(tmp_path, monkeypatch, caplog, err, why):
    svc, drive, sent = _live(tmp_path, monkeypatch)
    src = _source(tmp_path, "f.mkv")
    drive.insert("Heat", [(FEATURE, src)])
    fault = {"on": True}
    real_mkdir = os.mkdir

    def mkdir(path, *a, **k):
        if fault["on"] and os.path.basename(str(path)).startswith(ripper_mod.WORK_PREFIX):
            raise OSError(err, os.strerror(err), str(path))
        return real_mkdir(path, *a, **k)

    monkeypatch.setattr(os, "mkdir", mkdir)
    svc.retry_seconds = 3600.0
    svc.poll()  # no exception: the service goes on
    [row] = svc.store.list()
    assert row["state"] == "failed" and os.strerror(err) in row["reason"] and why in row["reason"]
    assert drive.mkv_calls() == 0 and drive.disc()["drive_state"] == 2  # not ejected: tried again later
    assert [t for t, _ in sent] == ["Rip not started"]
    for _ in range(3):
        svc.poll()  # not before its time
    svc.rescan_at = time.monotonic()
    svc.poll()  # tried again, still refused: the same row, no second notice, no second error line
    [row] = svc.store.list()
    assert row["state"] == "failed" and row["attempts"] == 2 and len(sent) == 1
    assert len(_errors(caplog, os.strerror(err))) == 1
    fault["on"] = False  # space returns
    svc.rescan_at = time.monotonic()
    svc.poll()
    [row] = svc.store.list()
    assert row["state"] == "done" and (drive.staging / "Heat" / "title_t00.mkv").read_bytes() == src.read_bytes()
    assert drive.mkv_calls() == 1 and len([c for c in drive.calls() if "dev:/dev/sr0" in c and "info" in c]) == 1


# --- 7. a stop request ends makemkvcon's whole process group -------------------------------

@pytest.mark.parametrize("what", ["scan", "rip"])
def test_stop_ends_a_child_that_holds_makemkvcons_output(tmp_path, what):
    # a child that inherits makemkvcon's output; the mark holds its pid
    ripper, pidfile = _hanging_makemkvcon(
        tmp_path, "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])", "str(child.pid)")
    got = {}

    def run():
        try:
            got["result"] = ripper.scan_disc() if what == "scan" else ripper._mkv(str(tmp_path), "x")
        except ripper_mod.RipError as exc:
            got["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 30
        while not (ripper.proc is not None and pidfile.exists()) and time.monotonic() < deadline:
            time.sleep(0.02)
        started = time.monotonic()
        ripper.stop()
        t.join(timeout=15)
        assert not t.is_alive() and time.monotonic() - started < 3  # the read loop is not held by the child
        if what == "scan":
            assert got["error"].code == ripper_mod.EXIT_SCAN and "stopping" in got["error"].reason
        else:
            assert got["result"][1] == -signal.SIGTERM
    finally:
        try:
            os.kill(int(pidfile.read_text()), 9)
        except (OSError, ValueError):
            pass


# --- 8. the drive the hookscript passed, when the selector names it otherwise --------------

@needs_root
def test_a_selector_matching_nothing_uses_the_only_drive_in_the_container(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="media-rip")
    node = Node(tmp_path)
    # a USB enclosure: the bridge's serial in sysfs, no /dev/disk/by-id in the container
    node.drive("sg0", "sr0", "BD-RE BU40N", "BRIDGE0001")
    selector = "usb-ASUS_BW-16D1X-U_E5D0CL123456-0:0"
    finder = ripper_mod.DriveFinder(selector, str(node.sys), str(node.dev))
    assert finder.find() == (str(node.dev / "sr0"), "")
    assert finder.find() == (str(node.dev / "sr0"), "")
    said = [r.getMessage() for r in caplog.records if "the only optical drive in this container" in r.getMessage()]
    assert len(said) == 1 and selector in said[0] and str(node.dev / "sr0") in said[0]
    # no sysfs at all (an unprivileged view): the same
    assert ripper_mod.DriveFinder(selector, str(tmp_path / "nosys"), str(node.dev)).find() == (str(node.dev / "sr0"), "")
    node.drive("sg1", "sr1", *DVD)  # two drives, neither matches: which one is meant is unknown
    path, why = ripper_mod.DriveFinder(selector, str(node.sys), str(node.dev)).find()
    assert path == "" and f"no optical drive matches drive {selector!r}" in why
