"""media-rip's status file (media_pipeline/rips.py): media-rip writes it on the pool, the
transcoder's status page reads it. Writer: atomic, right contents, nothing else touched; reader:
off, missing, corrupt, stale, ok."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from media_pipeline import config as config_mod
from media_pipeline import rip, rip_robot, rip_service, rip_store, ripper, rips


def _service(tmp_path, **over):
    staging = tmp_path / "staging"
    staging.mkdir(exist_ok=True)
    cfg = config_mod.rip_from_dict({"staging": str(staging), "db": str(tmp_path / "state" / "r.sqlite3"),
                                    "metrics_textfile": "", **over})
    os.makedirs(tmp_path / "state", exist_ok=True)
    svc = rip_service.Service(cfg)
    svc.store = rip_store.RipStore(cfg.db)
    return svc, staging


def _rips_in(svc, n_done=1):
    s = svc.store
    for n in range(n_done):
        rid = s.start(f"fp{n}", f"DISC_{n}", f"Disc {n}", [rip_robot.Title(0, 6000, 10, "t.mkv")])
        s.update(rid, state="done", folder=f"/pool/staging/Disc {n}", bytes=10 * (n + 1), progress=1.0,
                 finished=time.time(), exit_code=0)
    s.record("fpx", "SHORT", "Short", "skipped", "no title is at least 10m00s long", ripper.EXIT_NO_TITLE)


def test_default_path_follows_staging_on_both_sides():
    assert config_mod.rip_from_dict({"staging": "/pool/st"}).status_file == "/pool/st/.media-rip/status.json"
    assert config_mod.rip_from_dict({}).status_file == config_mod.RipConfig().status_file
    page = config_mod.from_dict({"staging": "/pool/st", "movies": "/pool/m", "tv": "/pool/tv"})
    assert page.rip_status_file == "/pool/st/.media-rip/status.json"
    assert config_mod.rip_from_dict({"status_file": ""}).status_file == ""  # off
    with pytest.raises(config_mod.ConfigError, match="status_file.*absolute"):
        config_mod.rip_from_dict({"status_file": "status.json"})
    with pytest.raises(config_mod.ConfigError, match="rip_status_file"):
        config_mod.from_dict({"rip_status_file": "x.json"})
    with pytest.raises(config_mod.ConfigError, match="rip_db.*fix: remove rip_db"):
        config_mod.from_dict({"rip_db": "/var/lib/media-rip/rips.sqlite3"})


def test_the_service_writes_the_newest_rips_and_the_drive(tmp_path):
    svc, staging = _service(tmp_path, device="/dev/sr0")
    _rips_in(svc, n_done=rips.STATUS_RIPS + 4)
    svc.drive_state_now, svc.last_poll = rip_robot.DRIVE_INSERTED, time.time()
    before = time.time()
    svc.publish_status()
    path = staging / ".media-rip" / "status.json"
    data = json.loads(path.read_text())
    assert data["schema"] == rips.SCHEMA and before - 1 <= data["written"] <= time.time() + 1
    assert data["drive"]["device"] == "/dev/sr0" and data["drive"]["state_name"] == "disc inserted"
    assert data["drive"]["current"] is None
    assert len(data["rips"]) == rips.STATUS_RIPS
    ids = [r["id"] for r in data["rips"]]
    assert ids == sorted(ids, reverse=True) and ids[0] == rips.STATUS_RIPS + 5  # newest first
    newest = data["rips"][0]
    assert newest["state"] == "skipped" and newest["reason"].startswith("no title")
    # the same fields as `media-rip status --json` (both come from rips.rip_record)
    assert set(newest) == set(rips.RIP_FIELDS)
    assert data["rips"][1]["folder"].startswith("/pool/staging/Disc") and data["rips"][1]["titles"][0]["file"] == "t.mkv"
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert sorted(p.name for p in path.parent.iterdir()) == ["status.json"]  # no temp file left behind


def test_status_json_and_the_file_share_one_format(tmp_path, capsys):
    svc, staging = _service(tmp_path)
    _rips_in(svc, 2)
    svc.publish_status()
    cfg_file = tmp_path / "rip.json"
    cfg_file.write_text(json.dumps(svc.cfg.to_json()))
    assert rip.main(["--config", str(cfg_file), "status", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    in_file = json.loads((staging / ".media-rip" / "status.json").read_text())["rips"]
    assert sorted(printed, key=lambda r: r["id"]) == sorted(in_file, key=lambda r: r["id"])


def test_live_progress_of_the_running_rip(tmp_path):
    svc, staging = _service(tmp_path)
    rid = svc.store.start("fp", "HEAT", "Heat", [rip_robot.Title(0, 6000, 3, "t.mkv")])
    svc.ripper = ripper.Ripper(svc.cfg, svc.store)
    svc.ripper.current = {"id": rid, "name": "Heat", "progress": 0.4213, "eta": float("nan")}
    svc.publish_status()
    data = json.loads((staging / ".media-rip" / "status.json").read_text())  # strict JSON: no NaN
    assert data["rips"][0]["state"] == "ripping" and data["rips"][0]["progress"] == 0.4213
    assert data["drive"]["current"]["name"] == "Heat" and data["drive"]["current"]["eta"] is None


def test_replacement_is_atomic_for_a_concurrent_reader(tmp_path):
    svc, staging = _service(tmp_path)
    _rips_in(svc, 3)
    path = str(staging / ".media-rip" / "status.json")
    svc.publish_status()
    stop, seen, bad = threading.Event(), [], []

    def reader():
        while not stop.is_set():
            got = rips.read_status(path)
            (seen if got["state"] == "ok" else bad).append(got["state"])

    t = threading.Thread(target=reader)
    t.start()
    try:
        for _ in range(200):
            svc.publish_status()
    finally:
        stop.set()
        t.join()
    assert seen and not bad  # never a missing or half-written file
    assert sorted(os.listdir(os.path.dirname(path))) == ["status.json"]


def test_write_problems_are_logged_once_and_touch_nothing_else(tmp_path, caplog):
    svc, staging = _service(tmp_path)
    (staging / "Heat").mkdir()
    (staging / "Heat" / "title_t00.mkv").write_text("rip")
    blocker = staging / ".media-rip"
    blocker.write_text("a file where the folder should be")  # the write cannot succeed
    for _ in range(3):
        svc.publish_status()
    warnings = [r for r in caplog.records if "cannot write the status file" in r.getMessage()]
    assert len(warnings) == 1
    assert blocker.read_text() == "a file where the folder should be"
    assert (staging / "Heat" / "title_t00.mkv").read_text() == "rip"
    assert sorted(p.name for p in staging.iterdir()) == [".media-rip", "Heat"]


def test_status_file_off_writes_nothing(tmp_path):
    svc, staging = _service(tmp_path, status_file="")
    _rips_in(svc, 1)
    svc.publish_status()
    assert list(staging.iterdir()) == []


def test_failed_write_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "s" / "status.json"
    rips.write_status(str(path), rips.snapshot([], {"device": "/dev/sr0"}, now=1.0))
    old = path.read_text()

    def boom(*_a, **_k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rips.os, "fsync", boom)
    with pytest.raises(OSError, match="No space"):
        rips.write_status(str(path), rips.snapshot([{"id": 1}], {}, now=2.0))
    assert path.read_text() == old and os.listdir(path.parent) == ["status.json"]


# -- the reader -----------------------------------------------------------------------------

def _written(tmp_path, age=0.0, rows=({"id": 3, "name": "Heat", "state": "done", "folder": "/p/Heat"},)):
    path = tmp_path / "status.json"
    rips.write_status(str(path), rips.snapshot(list(rows), {"device": "/dev/sr0", "state_name": "empty"},
                                               now=time.time() - age, version="9.9"))
    return str(path)


def test_reader_ok(tmp_path):
    got = rips.read_status(_written(tmp_path))
    assert got["state"] == "ok" and got["problem"] == "" and got["age"] < 5 and got["version"] == "9.9"
    assert got["drive"]["state_name"] == "empty"
    [r] = got["rips"]
    assert r["name"] == "Heat" and r["folder"] == "/p/Heat" and r["titles"] == [] and r["bytes"] == 0


def test_reader_stale_keeps_the_last_rips(tmp_path):
    got = rips.read_status(_written(tmp_path, age=rips.STALE_SECONDS + 60))
    assert got["state"] == "stale" and "is media-rip running" in got["problem"]
    assert [r["name"] for r in got["rips"]] == ["Heat"]
    assert rips.read_status(_written(tmp_path, age=rips.STALE_SECONDS - 30))["state"] == "ok"


def test_reader_missing_and_off(tmp_path):
    got = rips.read_status(str(tmp_path / "nope" / "status.json"))
    assert got["state"] == "missing" and "no status file at" in got["problem"] and got["rips"] == []
    assert rips.read_status("")["state"] == "off"


@pytest.mark.parametrize("content, why", [
    (b"{\"schema\": 1, \"written\": 1", "not a media-rip status file"),  # cut short
    (b"[1, 2]", "not an object"),
    (b"\xff\xfe", "not a media-rip status file"),
    (b'{"schema": 7, "written": 1, "rips": []}', "schema 7"),
    (b'{"schema": 1, "rips": []}', "no 'written'"),
    (b'{"schema": 1, "written": 1, "rips": "x"}', "'rips' is not a list"),
    (b'{"schema": 1, "written": 1, "rips": [], "drive": []}', "'drive' is not an object"),
])
def test_reader_corrupt_names_the_file_and_the_problem(tmp_path, content, why):
    path = tmp_path / "status.json"
    path.write_bytes(content)
    got = rips.read_status(str(path))
    assert got["state"] == "corrupt" and str(path) in got["problem"] and why in got["problem"], got
    assert got["rips"] == []


def test_reader_tolerates_odd_rows(tmp_path):
    path = _written(tmp_path, rows=[{"id": 1, "name": 5, "titles": "x", "bytes": True, "progress": 0.5}])
    [r] = rips.read_status(path)["rips"]
    assert r["name"] == "" and r["titles"] == [] and r["bytes"] == 0 and r["progress"] == 0.5
