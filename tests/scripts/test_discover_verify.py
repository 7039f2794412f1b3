"""host-discover.sh, verify-gpu.sh and verify-drive.sh against fake DEV_ROOT/SYSFS_ROOT trees
(real device nodes made with mknod), plus the shared JSON helper."""

from __future__ import annotations

import json
import subprocess

import pytest

from .conftest import SCRIPTS, run


def discover(hw):
    r = run("host-discover.sh", env=hw.env)
    assert r.rc == 0, r.err
    return r.json


def test_igpu_plus_arc(hw):
    hw.gpu(0, 128)  # iGPU
    hw.gpu(1, 129)  # Arc
    d = discover(hw)
    assert d["gpu"]["nodes"] == [
        {"path": "/dev/dri/card0", "type": "card", "major": 226, "minor": 0},
        {"path": "/dev/dri/card1", "type": "card", "major": 226, "minor": 1},
        {"path": "/dev/dri/renderD128", "type": "render", "major": 226, "minor": 128},
        {"path": "/dev/dri/renderD129", "type": "render", "major": 226, "minor": 129},
    ]
    assert d["gpu"]["reason"] is None


def test_arc_only_as_card1_renderd129(hw):
    hw.gpu(1, 129)
    (hw.dev / "dri/by-path").mkdir()  # udev's directory is not a node
    (hw.dev / "dri/renderD200").write_text("")  # a regular file is not a device
    d = discover(hw)
    assert [(n["path"], n["minor"]) for n in d["gpu"]["nodes"]] == [
        ("/dev/dri/card1", 1),
        ("/dev/dri/renderD129", 129),
    ]


def test_optical_sg_index_not_zero(hw):
    # sg0..sg2 are disks (type 0); the optical drive is sg3 -> sr0
    for i in range(3):
        hw.char(f"sg{i}", 21, i)
        hw.scsi_generic(f"sg{i}", 0)
    hw.optical(sr=0, sg=3)
    d = discover(hw)
    assert d["optical"]["sr"] == {"path": "/dev/sr0", "major": 11, "minor": 0}
    assert d["optical"]["sg"] == {"path": "/dev/sg3", "major": 21, "minor": 3}
    assert d["optical"]["reason"] is None


def test_two_optical_drives_sg_matches_the_chosen_sr(hw):
    hw.block("sr1", 11, 1)
    hw.char("sg10", 21, 10)
    hw.scsi_generic("sg10", 5, "sr1")
    hw.optical(sr=0, sg=4)
    d = discover(hw)
    assert d["optical"]["sr"]["path"] == "/dev/sr0"
    assert d["optical"]["sg"]["path"] == "/dev/sg4"


def test_sg_without_block_link_falls_back_to_first_type5(hw):
    hw.block("sr0", 11, 0)
    hw.char("sg2", 21, 2)
    hw.scsi_generic("sg2", 5)
    d = discover(hw)
    assert d["optical"]["sg"] == {"path": "/dev/sg2", "major": 21, "minor": 2}


def test_no_drive_and_no_gpu(hw):
    d = discover(hw)
    assert d["gpu"]["nodes"] == []
    assert "no GPU" in d["gpu"]["reason"]
    assert d["optical"]["sr"] is None and d["optical"]["sg"] is None
    assert "no optical drive" in d["optical"]["reason"]


def test_sr_as_char_device_is_not_an_optical_drive(hw):
    hw.char("sr0", 11, 0)  # the plan's mistake: sr0 is a block device
    d = discover(hw)
    assert d["optical"]["sr"] is None


def test_sysfs_sg_without_dev_node_has_a_reason(hw):
    hw.block("sr0", 11, 0)
    hw.scsi_generic("sg1", 5, "sr0")
    d = discover(hw)
    assert d["optical"]["sr"]["path"] == "/dev/sr0"
    assert d["optical"]["sg"] is None
    assert "sg1" in d["optical"]["reason"]


# ---------------------------------------------------------------------------
# verify-gpu.sh / verify-drive.sh: missing hardware is a state, not a crash


def test_verify_gpu_without_render_node(hw):
    r = run("verify-gpu.sh", "--user", "root", env=hw.env)
    assert r.rc == 0, r.err
    j = r.json
    assert j["ok"] is False
    assert j["render_node"] is None and j["driver"] is None
    assert j["encode"] == "failed: no render node"
    assert "no render node" in j["reason"]
    strict = run("verify-gpu.sh", "--user", "root", "--strict", env=hw.env)
    assert strict.rc == 1 and strict.json == j


def test_verify_gpu_with_a_fake_node_fails_the_encode(hw, tmp_path):
    hw.gpu(1, 129)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    ff = bindir / "ffmpeg"
    ff.write_text(
        "#!/bin/sh\n"
        'case "$*" in *-encoders*) printf " V..... hevc_qsv  HEVC (QSV)\\n V..... libx265  x265\\n"; exit 0;; esac\n'
        'echo "Error creating a MFX session: -9." >&2; exit 1\n'
    )
    ff.chmod(0o755)
    env = {**hw.env, "PATH": f"{bindir}:/usr/bin:/bin:/usr/sbin:/sbin"}
    r = run("verify-gpu.sh", "--user", "root", env=env)
    assert r.rc == 0, r.err
    j = r.json
    assert j["render_node"].endswith("/dri/renderD129")
    assert j["qsv_encoders"] == ["hevc_qsv"]
    assert j["ok"] is False
    assert j["encode"].startswith("failed: ") and "MFX session" in j["encode"]


def test_verify_gpu_saves_the_proof_for_the_status_page(hw, tmp_path):
    save = tmp_path / "state" / "gpu-proof.json"
    r = run("verify-gpu.sh", "--user", "root", "--save", str(save), env=hw.env)
    assert r.rc == 0, r.err
    saved = json.loads(save.read_text())
    checked = saved.pop("checked_at")
    assert saved == r.json and isinstance(checked, int) and checked > 1_700_000_000
    assert save.stat().st_mode & 0o777 == 0o644 and sorted(p.name for p in save.parent.iterdir()) == ["gpu-proof.json"]
    assert run("verify-gpu.sh", "--user", "root", "--save", "relative.json", env=hw.env).rc != 0


MAKEMKV_OK = """#!/bin/sh
echo 'MSG:1005,0,1,"MakeMKV v1.18.4 linux(x64-release) started","%1 started","MakeMKV v1.18.4 linux(x64-release)"'
echo 'DRV:0,2,999,1,"BD-RE HL-DT-ST BD-RE  WH16NS60 1.02","","/dev/sr0"'
echo 'DRV:1,256,999,0,"","",""'
exit 0
"""


def fake_makemkvcon(tmp_path, body):
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    m = bindir / "makemkvcon"
    m.write_text(body)
    m.chmod(0o755)
    return f"{bindir}:/usr/bin:/bin:/usr/sbin:/sbin"


def test_verify_drive_ok(hw, tmp_path):
    hw.optical(sr=0, sg=5)
    env = {**hw.env, "PATH": fake_makemkvcon(tmp_path, MAKEMKV_OK)}
    r = run("verify-drive.sh", "--user", "root", "--strict", env=env)
    assert r.rc == 0, r.err
    j = r.json
    assert j["ok"] is True
    assert j["sr"].endswith("/sr0") and j["sg"].endswith("/sg5")
    assert j["sr_usable"] and j["sg_usable"]
    assert j["drives"] == [
        {"index": 0, "state": 2, "flags": 1, "name": "BD-RE HL-DT-ST BD-RE  WH16NS60 1.02", "disc": "", "device": "/dev/sr0"}
    ]
    assert j["makemkv_version"] == "1.18.4"
    assert j["key_state"] in ("missing", "valid")


def test_verify_drive_expired_beta(hw, tmp_path):
    hw.optical(sr=0, sg=5)
    body = MAKEMKV_OK.replace(
        "exit 0",
        "echo 'MSG:5021,260,1,\"This application version is too old.  Please download the latest version\",\"x\"'\nexit 1",
    )
    env = {**hw.env, "PATH": fake_makemkvcon(tmp_path, body)}
    r = run("verify-drive.sh", "--user", "root", "--strict", env=env)
    assert r.rc == 1
    assert r.json["key_state"] == "expired"
    assert r.json["ok"] is False


def test_verify_drive_nothing_there(hw):
    r = run("verify-drive.sh", "--user", "root", env={**hw.env, "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"})
    assert r.rc == 0, r.err
    j = r.json
    assert j["ok"] is False and j["sr"] is None and j["sg"] is None and j["drives"] == []
    assert j["key_state"] == "unknown"
    assert any("no optical drive" in x for x in j["reasons"])


# ---------------------------------------------------------------------------
# lib-json.sh helpers


@pytest.mark.parametrize(
    "text",
    ['plain', 'quo"te', "back\\slash", "new\nline\ttab\rcr", "bell\x07esc\x1b", "ünïcødé ✓", "", "a'b"],
)
def test_json_str_round_trips(text):
    p = subprocess.run(
        ["bash", "-c", f'source "{SCRIPTS}/lib.sh"; source "{SCRIPTS}/lib-json.sh"; json_obj k "$(json_str "$1")" l "$(json_arr "$1" x)"', "_", text],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == {"k": text, "l": [text, "x"]}


VAINFO = """#!/bin/sh
echo "libva info: VA-API version 1.17.0"
echo "vainfo: Driver version: Intel iHD driver for Intel(R) Gen Graphics - 23.1.1 ()"
echo "vainfo: Supported profile and entrypoints"
printf '      VAProfileHEVCMain               :\\tVAEntrypointVLD\\n'
printf '      VAProfileHEVCMain               :\\tVAEntrypointEncSliceLP\\n'
printf '      VAProfileAV1Profile0            :\\tVAEntrypointVLD\\n'
"""


def test_verify_gpu_ok_when_the_encode_succeeds(hw, tmp_path):
    hw.gpu(1, 129)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "vainfo").write_text(VAINFO)
    (bindir / "ffmpeg").write_text(
        "#!/bin/sh\n"
        'case "$*" in *-encoders*) printf " V..... h264_qsv  H.264 (QSV)\\n V..... hevc_qsv  HEVC (QSV)\\n"; exit 0;; esac\n'
        'case "$*" in *"qsv=hw:"*renderD129*hevc_qsv*) exit 0;; esac\n'
        "exit 1\n"
    )
    for f in bindir.iterdir():
        f.chmod(0o755)
    env = {**hw.env, "PATH": f"{bindir}:/usr/bin:/bin:/usr/sbin:/sbin"}
    r = run("verify-gpu.sh", "--user", "root", "--strict", env=env)
    assert r.rc == 0, r.err
    j = r.json
    assert j["ok"] is True and j["encode"] == "ok" and j["reason"] is None
    assert j["driver"] == "Intel iHD driver for Intel(R) Gen Graphics - 23.1.1 ()"
    assert j["va_profiles"] == [
        "VAProfileHEVCMain:VAEntrypointVLD",
        "VAProfileHEVCMain:VAEntrypointEncSliceLP",
        "VAProfileAV1Profile0:VAEntrypointVLD",
    ]
    assert j["qsv_encoders"] == ["h264_qsv", "hevc_qsv"]


# --- devices.opticalDrive (issue 10, item 8) ------------------------------------------------


def two_drives(hw):
    """sr0/sg1: an LG BD-RE, sr1/sg3: an ASUS; sg0 and sg2 are disks. by-id links and sysfs model/serial."""
    for i in (0, 2):
        hw.char(f"sg{i}", 21, i)
        hw.scsi_generic(f"sg{i}", 0)
    hw.optical(sr=0, sg=1)
    hw.optical(sr=1, sg=3)
    byid = hw.dev / "disk/by-id"
    byid.mkdir(parents=True)
    for sg, sr, model, serial in (("sg1", "sr0", "BD-RE  WH16NS60", "KLZK1234"), ("sg3", "sr1", "BW-16D1HT", "E4D0CL012345")):
        dev = hw.sys / "class/scsi_generic" / sg / "device"
        (dev / "model").write_text(model.ljust(16) + "\n")
        (dev / "vpd_pg80").write_bytes(b"\x05\x80\x00\x0c" + serial.encode())
        (byid / f"ata-{model.replace(' ', '_').replace('__', '_')}_{serial}").symlink_to(f"../../{sr}")


@pytest.mark.parametrize(
    "want,sr,sg",
    [
        ("auto", "sr0", "sg1"),
        ("ata-BW-16D1HT_E4D0CL012345", "sr1", "sg3"),
        ("/dev/disk/by-id/ata-BD-RE_WH16NS60_KLZK1234", "sr0", "sg1"),
        ("BW-16D1HT", "sr1", "sg3"),
        ("bd-re wh16ns60", "sr0", "sg1"),
        ("E4D0CL012345", "sr1", "sg3"),
    ],
)
def test_optical_drive_setting_picks_one_of_two_drives(hw, want, sr, sg):
    two_drives(hw)
    r = run("host-discover.sh", "--optical-drive", want, env=hw.env)
    assert r.rc == 0, r.err
    o = r.json["optical"]
    assert (o["sr"]["path"], o["sg"]["path"]) == (f"/dev/{sr}", f"/dev/{sg}") and o["reason"] is None


def test_optical_drive_that_matches_nothing_gives_no_drive_never_another(hw):
    two_drives(hw)
    r = run("host-discover.sh", "--optical-drive", "NOPE-123", env=hw.env)
    assert r.rc == 0, r.err
    o = r.json["optical"]
    assert o["sr"] is None and o["sg"] is None
    assert "devices.opticalDrive 'NOPE-123'" in o["reason"] and "BW-16D1HT" in o["reason"]


def test_bash_raw_lines_equal_the_programs(hw):
    """lib-devices.sh (the hookscript's lines) and components/render.py (deploy's) agree."""
    from components import render

    two_drives(hw)
    hw.gpu(0, 128)
    hw.gpu(1, 129)
    for want in ("auto", "BW-16D1HT", "nothing-here"):
        d = run("host-discover.sh", "--optical-drive", want, env=hw.env).json
        out = subprocess.run(
            ["bash", "-c", f'source "{SCRIPTS}/lib.sh"; source "{SCRIPTS}/lib-devices.sh"; gpu_raw_lines; drive_raw_lines "$1"',
             "_", want], capture_output=True, text=True, env={**hw.env, "PATH": "/usr/bin:/bin"},
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines() == render.gpu_lines(d) + render.drive_lines(d), want
