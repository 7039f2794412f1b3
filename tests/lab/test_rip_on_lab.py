"""From disc to library in the lab: media-rip, installed by RipperCT, rips a disc in the ripper
container into staging, and media-pipeline in the transcoder turns it into a library file.

The drive is the stand-in (tests/media/fake_makemkvcon.py, robot-mode transcripts, a real MKV
made by ffmpeg here); everything else is what the program deployed: the package, the config
from the stack, the media user, the pool bind mount shared by both containers.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil

import pytest

from tests.lab.test_program_on_lab import first_up, lab, program, sentinels  # noqa: F401 - fixtures
from tests.media.helpers import make_rip
from tests.media.rip_helpers import FAKE

pytestmark = pytest.mark.e2e

DRIVE_DIR = "/opt/lab-drive"  # inside the ripper container


def ct(lab, vmid: int, command: str, timeout: float = 300, check: bool = True):
    return lab.ssh(f"pct exec {vmid} -- bash -c {shlex.quote(command)}", timeout=timeout, check=check)


def test_the_ripper_is_deployed_with_media_rip(lab, first_up):
    out = first_up["out"]["outputs"]
    rip = out["rip"]
    assert rip["unit"] == "/etc/systemd/system/media-rip.service" and rip["config"] == "/etc/media-rip/config.json"
    assert (rip["minLength"], rip["autoRip"], rip["eject"]) == (600, True, True)
    # no fixed node: media-rip looks the drive up at every poll (devices.opticalDrive)
    assert (rip["drive"], rip["device"], rip["discovered"]) == ("auto", None, "/dev/sr0")
    root = lab.ct_dir / "202" / "rootfs"
    cfg = json.loads((root / "etc/media-rip/config.json").read_text())
    assert (cfg["staging"], cfg["min_length"], cfg["auto_rip"], cfg["eject"]) == ("/mnt/storage/staging", 600, True, True)
    unit = (root / "etc/systemd/system/media-rip.service").read_text()
    assert "User=media" in unit and "SupplementaryGroups=24" in unit
    assert "4  a title failed" in ct(lab, 202, "media-rip --help").stdout


def test_a_disc_ripped_in_the_ripper_becomes_a_library_file_in_the_transcoder(lab, first_up, tmp_path):
    name = f"Lab Disc {os.getpid()}"
    root = lab.ct_dir / "202" / "rootfs"
    drive = root / DRIVE_DIR.lstrip("/")
    drive.mkdir(parents=True, exist_ok=True)
    shutil.copy(FAKE, drive / "makemkvcon")
    (drive / "makemkvcon").chmod(0o755)
    make_rip(tmp_path / "main.mkv", duration=2, audio=(("eng", "aac"),))
    shutil.copy(tmp_path / "main.mkv", drive / "main.mkv")
    (drive / "main.mkv").chmod(0o644)
    (drive / "disc.json").write_text(json.dumps({
        "drive_state": 2, "device": "/dev/sr0", "disc_name": name, "label": name.upper().replace(" ", "_"),
        "titles": [{"duration": "1:45:00", "source": f"{DRIVE_DIR}/main.mkv"},
                   {"duration": "0:02:00", "source": f"{DRIVE_DIR}/main.mkv"}]}))
    (drive / "disc.json").chmod(0o644)

    # by hand, so the deployed service (watching a drive with no MakeMKV here) steps aside
    ct(lab, 202, "systemctl stop media-rip.service 2>/dev/null || true")
    rip = ct(lab, 202, f"runuser -u media -- env FAKE_MAKEMKV_DISC={DRIVE_DIR}/disc.json "
                       f"media-rip once --makemkvcon {DRIVE_DIR}/makemkvcon", check=False)
    ct(lab, 202, "systemctl start media-rip.service 2>/dev/null || true")
    assert rip.returncode == 0, rip.stderr[-3000:]
    folder = lab.pool / "staging" / name
    assert sorted(p.name for p in folder.iterdir()) == ["title_t00.mkv", "title_t00.mkv.done"]
    published = folder / "title_t00.mkv"
    assert (published.stat().st_uid, published.stat().st_gid) == (1000, 1000)
    assert published.read_bytes() == (tmp_path / "main.mkv").read_bytes()
    assert not list((lab.pool / "staging").glob(".rip-*"))
    [row] = [r for r in json.loads(ct(lab, 202, "runuser -u media -- media-rip status --json").stdout)
             if r["name"] == name]
    assert row["state"] == "done" and row["folder"] == f"/mnt/storage/staging/{name}"

    res = ct(lab, 201, "runuser -u media -- media-pipeline run --once", timeout=600)
    lib = lab.pool / "movies" / f"{name}.mkv"
    assert lib.exists(), res.stderr[-2000:]
    assert (lib.stat().st_uid, lib.stat().st_gid) == (1000, 1000) and lib.stat().st_size > 0
    probe = ct(lab, 201, f"ffprobe -v error -show_entries stream=codec_name -of csv=p=0 "
                         f"{shlex.quote(f'/mnt/storage/movies/{name}.mkv')}")
    assert probe.stdout.split() == ["hevc", "aac"]
