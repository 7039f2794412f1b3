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
import subprocess

import pytest

from tests.e2e.lab import wait_for
from tests.lab.test_program_on_lab import first_up, lab, program, sentinels, stack_file  # noqa: F401 - fixtures
from tests.media.helpers import make_rip
from tests.media.rip_helpers import FAKE

pytestmark = pytest.mark.e2e

DRIVE_DIR = "/opt/lab-drive"  # inside the ripper container


def ct(lab, vmid: int, command: str, timeout: float = 300, check: bool = True):
    return lab.ssh(f"pct exec {vmid} -- bash -c {shlex.quote(command)}", timeout=timeout, check=check)


def rip_by_hand(lab, args: str) -> "subprocess.CompletedProcess":
    """`media-rip once` in the ripper as media, with the deployed media-rip.service (which
    watches the drive and refuses a rip by hand beside it) stopped meanwhile, as its message says."""
    ct(lab, 202, "systemctl stop media-rip.service")
    try:
        return ct(lab, 202, f"runuser -u media -- {args}", check=False)
    finally:
        ct(lab, 202, "systemctl start media-rip.service")


def pipeline_done(lab, source: str, timeout: float = 600) -> None:
    """Wait for the deployed media-pipeline.service in the transcoder to finish `source`."""
    def done():
        jobs = json.loads(ct(lab, 201, "runuser -u media -- media-pipeline status --json").stdout)
        return [j["state"] for j in jobs if j["source"] == source] == ["done"]
    wait_for(done, timeout, what=f"media-pipeline.service to transcode {source}")


def insert_disc(lab, tmp_path, name: str, device: str, durations: list[str], seconds: int) -> None:
    """The stand-in drive in the ripper (fake makemkvcon replaying robot mode): a disc called `name`
    in `device`, one title per duration, each a real MKV of `seconds` made by ffmpeg here."""
    drive = lab.ct_dir / "202" / "rootfs" / DRIVE_DIR.lstrip("/")
    drive.mkdir(parents=True, exist_ok=True)
    shutil.copy(FAKE, drive / "makemkvcon")
    (drive / "makemkvcon").chmod(0o755)
    make_rip(tmp_path / "main.mkv", duration=seconds, audio=(("eng", "aac"),))
    shutil.copy(tmp_path / "main.mkv", drive / "main.mkv")
    (drive / "main.mkv").chmod(0o644)
    (drive / "disc.json").write_text(json.dumps({
        "drive_state": 2, "device": device, "disc_name": name, "label": name.upper().replace(" ", "_"),
        "titles": [{"duration": d, "source": f"{DRIVE_DIR}/main.mkv"} for d in durations]}))
    (drive / "disc.json").chmod(0o644)


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
    insert_disc(lab, tmp_path, name, "/dev/sr0", ["1:45:00", "0:02:00"], seconds=2)

    # by hand, so the deployed service (watching a drive with no MakeMKV here) steps aside
    rip = rip_by_hand(lab, f"env FAKE_MAKEMKV_DISC={DRIVE_DIR}/disc.json media-rip once --makemkvcon {DRIVE_DIR}/makemkvcon")
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

    # the transcoder's service picks the published rip up by itself
    pipeline_done(lab, f"/mnt/storage/staging/{name}/title_t00.mkv")
    lib = lab.pool / "movies" / f"{name}.mkv"
    assert lib.exists()
    assert (lib.stat().st_uid, lib.stat().st_gid) == (1000, 1000) and lib.stat().st_size > 0
    probe = ct(lab, 201, f"ffprobe -v error -show_entries stream=codec_name -of csv=p=0 "
                         f"{shlex.quote(f'/mnt/storage/movies/{name}.mkv')}")
    assert probe.stdout.split() == ["hevc", "aac"]


# --- issue 14, item 4: device names move after a reboot; nothing is frozen ------------------

SYSFS = "opt/lab/sysfs"
PCI = "devices/pci0000:00"
ATA = f"{PCI}/0000:00:17.0"
WH16 = f"{ATA}/ata2/host1/target1:0:0/1:0:0:0"  # the lab's drive (BD-RE WH16NS60): sr0/sg1 at lab-up
BW16 = f"{ATA}/ata4/host3/target3:0:0/3:0:0:0"  # a second drive, added here
ARC, OTHER = f"{PCI}/0000:03:00.0", f"{PCI}/0000:04:00.0"  # the Arc (card0/renderD128 at lab-up), a second GPU


def _name_drive(s, dev: str, sr: str, sg: str, model: str) -> None:
    """Give the drive at sysfs path `dev` the names sr/sg (what the kernel's probe order decides)."""
    d = s / dev
    for sub in ("block", "scsi_generic"):
        if (d / sub).exists():
            shutil.rmtree(d / sub)
    (d / "block" / sr).mkdir(parents=True)
    (d / "block" / sr / "dev").write_text(f"11:{sr[2:]}\n")
    (d / "scsi_generic" / sg).mkdir(parents=True)
    (d / "scsi_generic" / sg / "dev").write_text(f"21:{sg[2:]}\n")
    (d / "scsi_generic" / sg / "device").symlink_to(f"../../../{d.name}")
    (d / "type").write_text("5\n")
    (d / "vendor").write_text("HL-DT-ST\n")
    (d / "model").write_text(f"{model}  \n")
    for cls, name in (("block", sr), ("scsi_generic", sg)):
        link = s / "class" / cls / name
        link.unlink(missing_ok=True)
        link.symlink_to(f"../../{dev}/{'block' if cls == 'block' else 'scsi_generic'}/{name}")


def _name_gpu(s, dev: str, card: int, render: int) -> None:
    d = s / dev
    if (d / "drm").exists():
        shutil.rmtree(d / "drm")
    d.mkdir(parents=True, exist_ok=True)
    (d / "vendor").write_text("0x8086\n")
    (d / "device").write_text("0x56a0\n")
    for name, minor in ((f"card{card}", card), (f"renderD{render}", render)):
        (d / "drm" / name).mkdir(parents=True)
        (d / "drm" / name / "dev").write_text(f"226:{minor}\n")
        (d / "drm" / name / "device").symlink_to(f"../../../{d.name}")  # as the kernel links it
        link = s / "class/drm" / name
        link.unlink(missing_ok=True)
        link.symlink_to(f"../../{dev}/drm/{name}")


def test_after_a_reboot_swaps_sr_and_dri_names_the_drive_and_the_gpu_are_still_the_chosen_ones(lab, first_up, tmp_path):
    """Two drives and two GPUs. The stack names the drive by model and the GPU by its stable by-path
    name. A reboot of the node swaps sr0/sr1, sg1/sg2 and renderD128/renderD129 (probe order); the
    containers restart (the hook adapts them), and without an `up` media-rip rips from the chosen
    drive under its new name, and the pipeline resolves the chosen GPU to its new render node."""
    s = lab.node_root / SYSFS
    saved = tmp_path / "sysfs"
    shutil.copytree(s, saved, symlinks=True)
    name = f"Swapped Disc {os.getpid()}"
    try:
        lab.add_device("sr1", "b", 11, 1, 24)
        lab.add_device("sg2", "c", 21, 2, 24)
        lab.add_device("dri/card1", "c", 226, 1, 44)
        lab.add_device("dri/renderD129", "c", 226, 129, 104)
        _name_drive(s, BW16, "sr1", "sg2", "BW-16D1HT")  # before the reboot: WH16NS60 is sr0/sg1
        _name_gpu(s, OTHER, 1, 129)  # the Arc is renderD128
        cfg = stack_file(tmp_path, **{"devices.opticalDrive": "BD-RE WH16NS60",
                                      "encoding.qsvDevice": "/dev/dri/by-path/pci-0000:03:00.0-render"})
        program("up", "--config-file", str(cfg))
        rip_cfg = json.loads((lab.ct_dir / "202/rootfs/etc/media-rip/config.json").read_text())
        assert (rip_cfg["drive"], rip_cfg["device"]) == ("BD-RE WH16NS60", "")

        # the node reboots: the probe order swaps the names
        _name_drive(s, WH16, "sr1", "sg2", "BD-RE WH16NS60")
        _name_drive(s, BW16, "sr0", "sg1", "BW-16D1HT")
        _name_gpu(s, ARC, 1, 129)
        _name_gpu(s, OTHER, 0, 128)
        lab.ssh("pct reboot 202 && pct reboot 201", timeout=300)
        conf = lab.conf(202)
        assert "lxc.cgroup2.devices.allow: b 11:1 rwm" in conf and "lxc.cgroup2.devices.allow: c 21:2 rwm" in conf
        assert "b 11:0 rwm" not in conf  # the other drive is not given to the ripper

        # media-rip, as configured by the last up, finds the chosen drive as /dev/sr1
        insert_disc(lab, tmp_path, name, "/dev/sr1", ["1:45:00"], seconds=1)  # MakeMKV lists it only there
        rip = rip_by_hand(lab, f"env FAKE_MAKEMKV_DISC={DRIVE_DIR}/disc.json "
                               f"media-rip once --makemkvcon {DRIVE_DIR}/makemkvcon")
        assert rip.returncode == 0, rip.stderr[-3000:]  # MakeMKV lists the disc only under /dev/sr1
        assert (lab.pool / "staging" / name / "title_t00.mkv").exists()

        # the pipeline's GPU: the stable name resolves to the Arc's new render node, in the container
        got = ct(lab, 201, "cd /opt/media-pipeline && python3 -c 'from media_pipeline import gpu; "
                           "print(gpu.resolve_device(\"/dev/dri/by-path/pci-0000:03:00.0-render\"))'")
        assert got.stdout.strip() == "/dev/dri/renderD129", got.stdout + got.stderr
    finally:
        shutil.rmtree(lab.pool / "staging" / name, ignore_errors=True)
        shutil.rmtree(s)
        shutil.copytree(saved, s, symlinks=True)
        for rel in ("sr1", "sg2", "dri/card1", "dri/renderD129"):
            lab.remove_device(rel)
        program("up")
        lab.ssh("pct reboot 202 && pct reboot 201", timeout=300)
    assert "lxc.cgroup2.devices.allow: b 11:0 rwm" in lab.conf(202)

