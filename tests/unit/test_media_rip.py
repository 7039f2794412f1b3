"""media-rip's pure parts: robot-mode parsing, the copy verdict, folder names, publish, config, metrics.

Transcript lines follow real makemkvcon output (sources cited in tests/media/fake_makemkvcon.py).
"""

from __future__ import annotations

import json
import os

import pytest

from media_pipeline import config as config_mod
from media_pipeline import rip, rip_robot, rip_service, rip_store, ripper

# DRV lines as ARM issue #720 shows them: a drive with a disc, then absent indexes (state 256).
INFO = r'''MSG:1005,0,1,"MakeMKV v1.18.4 linux(x64-release) started","%1 started","MakeMKV v1.18.4 linux(x64-release)"
DRV:0,2,999,12,"BD-RE HL-DT-ST BD-RE WH16NS60 1.02","BIG_BUCK_BUNNY","/dev/sr0"
DRV:1,256,999,0,"","",""
MSG:3007,0,0,"Using direct disc access mode","Using direct disc access mode"
MSG:3025,0,3,"Title #00801.mpls has length of 185 seconds which is less than minimum title length of 600 seconds and was therefore skipped","Title #%1 has length of %2 seconds which is less than minimum title length of %3 seconds and was therefore skipped","00801.mpls","185","600"
MSG:3307,0,2,"File 00800.mpls was added as title #0","File %1 was added as title #%2","00800.mpls","0"
TCOUNT:2
CINFO:1,6209,"Blu-ray disc"
CINFO:2,0,"Big Buck Bunny, Director's Cut"
CINFO:32,0,"BIG_BUCK_BUNNY"
TINFO:0,2,0,"Big Buck Bunny"
TINFO:0,9,0,"1:52:10"
TINFO:0,10,0,"31.4 GB"
TINFO:0,11,0,"33715453952"
TINFO:0,27,0,"title_t00.mkv"
TINFO:1,9,0,"0:59:59"
TINFO:1,11,0,"1000"
TINFO:1,27,0,"title_t01.mkv"
SINFO:0,0,1,6201,"Video"
'''


def test_parse_info_reads_drive_disc_and_titles():
    scan = rip_robot.parse_info(INFO)
    assert scan.version == "1.18.4"
    drive = scan.drive("/dev/sr0")
    assert (drive.state, drive.label, drive.name) == (2, "BIG_BUCK_BUNNY", "BD-RE HL-DT-ST BD-RE WH16NS60 1.02")
    assert scan.drive("/dev/sr1") is None
    assert scan.disc_name == "Big Buck Bunny, Director's Cut"  # the comma inside quotes is not a separator
    assert scan.label == "BIG_BUCK_BUNNY"
    assert [(t.index, t.duration, t.size, t.file) for t in scan.titles] == [
        (0, 6730, 33715453952, "title_t00.mkv"), (1, 3599, 1000, "title_t01.mkv")]
    assert scan.key_expired() == ""


def test_fields_keep_commas_inside_quotes():
    assert rip_robot.split_fields('0,2,999,12,"Drive, with comma","LABEL","/dev/sr0"')[4] == "Drive, with comma"
    assert rip_robot.parse_line("not robot output") is None
    assert rip_robot.parse_line("PRGV:1,2,65536") == ("PRGV", ["1", "2", "65536"])


@pytest.mark.parametrize("text,secs", [("1:52:10", 6730), ("0:00:59", 59), ("12:03", 723), ("", 0), ("x:y", 0)])
def test_duration(text, secs):
    assert rip_robot.duration_seconds(text) == secs


def test_fingerprint_tells_discs_apart_and_is_stable():
    a, b = rip_robot.parse_info(INFO), rip_robot.parse_info(INFO)
    assert a.fingerprint() == b.fingerprint()
    other = rip_robot.parse_info(INFO.replace('"33715453952"', '"33715453953"'))
    assert other.fingerprint() != a.fingerprint()


@pytest.mark.parametrize("line", [
    'MSG:5021,260,1,"This application version is too old. Please download the latest version at http://www.makemkv.com/ or enter a registration key to continue using the current version.","x","y"',
    'MSG:5055,0,0,"Evaluation period has expired. Please purchase an activation key","x"',
])
def test_expired_key_is_recognised(line):
    assert rip_robot.parse_info(line).key_expired()


SUCCESS = [
    'MSG:5014,0,2,"Saving 1 titles into directory file:///x","Saving %1 titles into directory %2","1","file:///x"',
    "PRGV:65536,65536,65536",
    'MSG:5036,516,1,"Copy complete. 1 titles saved.","Copy complete. %1 titles saved.","1"',
]
FAILED = [
    'MSG:2003,0,3,"Error \'Scsi error - MEDIUM ERROR:1090\' occurred while reading \'/VIDEO_TS/VTS_01_1.VOB\' at offset \'1183580160\'","x","y","z","w"',
    'MSG:5003,0,2,"Failed to save title 1 to file /x/title_t01.mkv","Failed to save title %1 to file %2","1","/x/title_t01.mkv"',
    'MSG:5037,516,2,"Copy complete. 1 titles saved, 1 failed.","Copy complete. %1 titles saved, %2 failed.","1","1"',
]


def test_copy_result_success_and_failure():
    ok = rip_robot.read_copy_result(SUCCESS)
    assert (ok.saved, ok.failed, ok.failures) == (1, 0, []) and ok.ok(1)
    bad = rip_robot.read_copy_result(FAILED)
    assert (bad.saved, bad.failed) == (1, 1) and bad.failures == ["Failed to save title 1 to file /x/title_t01.mkv"]
    assert not bad.ok(2)
    assert rip_robot.read_copy_result(["MSG:5010,0,0,\"Failed to open disc\",\"x\""]).saved is None


def test_judge_discards_only_for_makemkvs_own_failure(tmp_path):
    titles = [rip_robot.Title(0, 6000, 10, "title_t00.mkv")]
    good = rip_robot.read_copy_result(SUCCESS)
    assert ripper._judge(good, 0, titles) == ""
    assert "Failed to save title" in ripper._judge(rip_robot.read_copy_result(FAILED), 0, titles)
    assert "without 'Copy complete'" in ripper._judge(rip_robot.read_copy_result([]), 0, titles)
    assert "exit status -15" in ripper._judge(rip_robot.read_copy_result([]), -15, titles)
    assert "2 were asked for" in ripper._judge(good, 0, titles * 2)
    # MakeMKV said every title is saved: an exit status is no reason to throw the rip away
    assert ripper._judge(good, 1, titles) == "" and ripper._judge(good, -15, titles) == ""


def test_missing_files_after_makemkvs_success(tmp_path):
    path = str(tmp_path / "title_t00.mkv")
    assert ripper._missing_files([path], str(tmp_path)) == "title_t00.mkv is missing"
    (tmp_path / "title_t00.mkv").write_bytes(b"")
    assert ripper._missing_files([path], str(tmp_path)) == "title_t00.mkv is empty"
    (tmp_path / "title_t00.mkv").write_bytes(b"x" * 10)
    assert ripper._missing_files([path], str(tmp_path)) == ""
    assert ripper._missing_files([""], str(tmp_path)) == ""  # no file name: what is in the folder counts
    (tmp_path / "nothing").mkdir()
    assert ripper._missing_files([""], str(tmp_path / "nothing")) == "no .mkv file was written"
    with pytest.raises(OSError):  # cannot be looked at: not known to be missing
        ripper._missing_files([""], str(tmp_path / "unreadable"))


@pytest.mark.parametrize("raw,safe", [
    ("BIG_BUCK_BUNNY", "BIG BUCK BUNNY"), ("Heat / Director's Cut", "Heat Director's Cut"),
    ("../../etc", "etc"), ("..", "Disc"), ("", "Disc"), ("a\nb\tc", "a b c"), (".hidden", "hidden"),
    ("x" * 300, "x" * 100), ('Con: "A*B?"', "Con A B"),
])
def test_safe_name(raw, safe):
    assert ripper.safe_name(raw) == safe
    assert "/" not in ripper.safe_name(raw) and not ripper.safe_name(raw).startswith(".")


def test_publish_never_touches_an_existing_folder(tmp_path):
    staging = tmp_path
    (staging / "Heat").mkdir()
    (staging / "Heat" / "keep.mkv").write_text("first disc")
    (staging / "Heat (2)").mkdir()  # even an empty folder of that name is someone's
    work = staging / ".rip-7"
    work.mkdir()
    (work / "title_t00.mkv").write_text("second")
    folder = ripper.publish(str(work), str(staging), "Heat")
    assert folder == str(staging / "Heat (3)")
    assert (staging / "Heat" / "keep.mkv").read_text() == "first disc"
    assert list((staging / "Heat (2)").iterdir()) == [] and not work.exists()


def test_titles_are_published_as_title_tNN(tmp_path):
    """MakeMKV names a title after the disc when it has a name: media-rip publishes title_tNN.mkv
    (the folder names the disc; naming.py takes the library name from it)."""
    from media_pipeline import naming

    work = tmp_path / ".rip-3"
    work.mkdir()
    (work / "BLADE_RUNNER_t00.mkv").write_text("feature")
    (work / "Blade Runner_t01.mkv").write_text("extra")
    (work / "Blade Runner_t01.mkv.done").write_text("")  # an earlier publish marked it, then failed
    (work / "title_t02.mkv").write_text("already so")
    (work / "notes.txt").write_text("left alone")
    assert ripper.title_names(str(work)) == [("BLADE_RUNNER_t00.mkv", "title_t00.mkv"),
                                             ("Blade Runner_t01.mkv", "title_t01.mkv")]
    assert sorted(p.name for p in work.iterdir()) == ["notes.txt", "title_t00.mkv", "title_t01.mkv",
                                                      "title_t01.mkv.done", "title_t02.mkv"]
    assert (work / "title_t00.mkv").read_text() == "feature"
    assert ripper.title_names(str(work)) == []  # again: nothing to do
    (work / "X_t02.mkv").write_text("a second t02")  # never overwrites
    assert ripper.title_names(str(work)) == [] and (work / "title_t02.mkv").read_text() == "already so"
    staging = "/pool/staging"
    assert naming.library_stem(staging, f"{staging}/Blade Runner/title_t00.mkv") == "Blade Runner"
    assert naming.library_stem(staging, f"{staging}/Blade Runner/title_t01.mkv") == "Blade Runner - t01"


def test_publish_rip_names_the_titles_before_marking(tmp_path):
    svc, staging = _service(tmp_path)
    rid = svc.store.start("fp", "HEAT", "Heat", [rip_robot.Title(0, 6000, 3, "HEAT_t00.mkv")])
    work = staging / f".rip-{rid}"
    work.mkdir()
    (work / "HEAT_t00.mkv").write_text("mkv")
    folder, count, total = svc.ripper.publish_rip(rid, str(work), "Heat")
    assert sorted(p.name for p in (staging / "Heat").iterdir()) == ["title_t00.mkv", "title_t00.mkv.done"]
    assert (folder, count, total) == (str(staging / "Heat"), 1, 3)


def test_remove_workdir_refuses_anything_else(tmp_path):
    (tmp_path / "Heat").mkdir()
    with pytest.raises(ValueError):
        ripper.remove_workdir(str(tmp_path / "Heat"), str(tmp_path))
    with pytest.raises(ValueError):
        ripper.remove_workdir(str(tmp_path / "x" / ".rip-1"), str(tmp_path))
    assert (tmp_path / "Heat").exists()


def test_store_records_and_lists(tmp_path):
    store = rip_store.RipStore(str(tmp_path / "r.sqlite3"))
    rid = store.start("fp", "LABEL", "Name", [rip_robot.Title(0, 6000, 10, "t.mkv")])
    assert store.unfinished()[0]["id"] == rid
    store.update(rid, state="done", folder="/s/Name", bytes=10, finished=store.get(rid)["started"] + 5)
    assert store.latest("fp")["state"] == "done" and store.counts()["done"] == 1
    assert store.totals() == {"bytes": 10.0, "seconds": 5.0}
    store.record("fp2", "L2", "Other", "skipped", "too short", ripper.EXIT_NO_TITLE)
    assert [r["state"] for r in store.list()] == ["done", "skipped"]
    assert "Name" in rip.status_table(store.list())
    with pytest.raises(ValueError):
        store.update(rid, fingerprint="x")


def test_metrics_use_their_own_names():
    from prometheus_client.parser import text_string_to_metric_families

    text = rip_service.render_metrics({"done": 2, "failed": 1}, {"bytes": 1e9, "seconds": 60.0},
                              {"name": 'A "B"', "progress": 0.5}, 2, 0)
    assert 'media_rip_rips{state="done"} 2.0' in text
    assert 'media_rip_progress_ratio{disc="A \\"B\\""} 0.5' in text and "media_rip_drive_state 2.0" in text
    assert all(line.startswith(("# ", "media_rip_")) for line in text.splitlines())
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("media_rip_ripped_bytes_total", ())] == 1e9
    assert samples[("media_rip_rips_finished_total", (("outcome", "failed"),))] == 1
    assert samples[("media_rip_rips_finished_total", (("outcome", "ripped"),))] == 2


def test_rip_config_validation_names_the_key():
    cfg = config_mod.rip_from_dict({"min_length": 900, "eject": False, "device": "/dev/sr1"})
    assert (cfg.min_length, cfg.eject, cfg.device, cfg.auto_rip) == (900, False, "/dev/sr1", True)
    # no fixed node by default: the drive is looked up at each poll, as the node's hookscript does
    assert (config_mod.rip_from_dict({}).device, config_mod.rip_from_dict({}).drive) == ("", "auto")
    for selector in ("BD-RE WH16NS60", "KLZK1234", "/dev/disk/by-id/ata-HL-DT-ST_BD-RE_WH16NS60_KLZK1234",
                     "usb-ASUS_BW-16D1X-U_1234-0:0"):
        assert config_mod.rip_from_dict({"drive": selector, "device": ""}).drive == selector
    for raw, key in (({"min_length": "long"}, "min_length"), ({"device": "sr0"}, "device"),
                     ({"eject": "yes"}, "eject"), ({"minlength": 5}, "did you mean 'min_length'"),
                     ({"drive": "/dev/sr0"}, "key 'drive' must be auto or one drive's"),
                     ({"drive": " BD-RE"}, "drive"), ({"drive": ""}, "drive"), ({"drive": 0}, "drive")):
        with pytest.raises(config_mod.ConfigError, match=key):
            config_mod.rip_from_dict(raw)


def test_rip_config_render_keeps_other_keys(tmp_path):
    base = tmp_path / "config.json"
    base.write_text(json.dumps({"apprise_urls": ["tgram://t/c"], "min_length": 100}))
    out = json.loads(config_mod.render(["min_length=1200", "eject=false", "staging=/mnt/storage/staging"],
                                       str(base), rip=True))
    assert out["min_length"] == 1200 and out["eject"] is False and out["apprise_urls"] == ["tgram://t/c"]
    with pytest.raises(config_mod.ConfigError, match="auto_rip"):
        config_mod.render(["auto_rip=maybe"], None, rip=True)


def test_load_rip_from_env(tmp_path, monkeypatch):
    path = tmp_path / "rip.json"
    path.write_text(json.dumps({"min_length": 42}))
    monkeypatch.setenv(config_mod.RIP_ENV_VAR, str(path))
    assert config_mod.load_rip().min_length == 42
    monkeypatch.setenv(config_mod.RIP_ENV_VAR, str(tmp_path / "missing.json"))
    with pytest.raises(config_mod.ConfigError, match="MEDIA_RIP_CONFIG"):
        config_mod.load_rip()
    assert os.environ[config_mod.RIP_ENV_VAR]


def _service(tmp_path):
    staging = tmp_path / "staging"
    staging.mkdir()
    cfg = config_mod.rip_from_dict({"staging": str(staging), "db": str(tmp_path / "r.sqlite3"), "metrics_textfile": ""})
    svc = rip_service.Service(cfg)
    svc.store = rip_store.RipStore(cfg.db)
    svc.ripper = ripper.Ripper(cfg, svc.store)
    return svc, staging


def test_recover_finishes_a_publish_cut_short(tmp_path):
    svc, staging = _service(tmp_path)
    rid = svc.store.start("fp", "HEAT", "Heat", [rip_robot.Title(0, 6000, 3, "title_t00.mkv")])
    work = staging / f".rip-{rid}"
    work.mkdir()
    (work / "title_t00.mkv").write_text("mkv")
    (work / "title_t00.mkv.done").write_text("")
    svc.store.update(rid, state="publishing", workdir=str(work))
    svc.recover()
    assert sorted(p.name for p in (staging / "Heat").iterdir()) == ["title_t00.mkv", "title_t00.mkv.done"]
    assert svc.store.get(rid)["state"] == "done" and not work.exists()


def test_recover_removes_an_interrupted_rip_and_remembers_its_disc(tmp_path):
    svc, staging = _service(tmp_path)
    rid = svc.store.start("fp", "HEAT", "Heat", [])
    work = staging / f".rip-{rid}"
    work.mkdir()
    (work / "title_t00.mkv").write_text("half")
    svc.store.update(rid, workdir=str(work))
    stray = staging / ".rip-999"  # a working folder no row owns
    stray.mkdir()
    mine = staging / ".something-else"
    mine.mkdir()
    svc.recover()
    assert not work.exists() and mine.exists()
    assert stray.exists()  # no row claims it (a database restored from backup): it may hold a whole rip
    row = svc.store.get(rid)
    assert row["state"] == "failed" and "interrupted" in row["reason"] and "fp" in svc.resume


def test_eject_failure_is_reported_not_raised(tmp_path, caplog):
    cfg = config_mod.rip_from_dict({"device": "/dev/null"})
    assert ripper.Ripper(cfg, None).eject() is False  # CDROMEJECT on a non-drive
    assert "could not eject /dev/null" in caplog.text
