"""The program's whole life cycle against the local lab, driven without the Pulumi engine.

lab/run-program.py runs __main__.py under the SDK's mock runtime and performs each
declared resource for real: containers through fakepve's PVE API, every script bundle over
real OpenSSH to the lab node, `pct exec` into real Debian 12 trees, apt installing the real
packages. What the engine adds (provider diffs, replace planning) is covered by
tests/e2e when the toolchain is complete; see docs/adr/0006.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.e2e.lab import LAB_DIR, ROOT, Lab, run, wait_for

RUNNER = ROOT / "lab" / "run-program.py"
STATE = LAB_DIR / "run-program-state.json"
NS = "homelab-media"

pytestmark = pytest.mark.e2e


def program(action: str, *extra: str, check: bool = True, timeout: float = 1800) -> tuple[dict, subprocess.CompletedProcess]:
    proc = run([sys.executable, str(RUNNER), action, *extra], timeout=timeout, check=check)
    out = json.loads(proc.stdout) if proc.returncode == 0 and proc.stdout.strip() else {}
    return out, proc


def stack_file(tmp_path: Path, **changes) -> Path:
    """A copy of Pulumi.lab.yaml with `section.key` values changed."""
    doc = yaml.safe_load((ROOT / "Pulumi.lab.yaml").read_text())
    for dotted, value in changes.items():
        section, key = dotted.split(".")
        doc["config"][f"{NS}:{section}"][key] = value
    path = tmp_path / "Pulumi.lab.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def lab():
    if os.geteuid() != 0:
        pytest.skip("the lab needs root (mount namespaces, mknod, chroot): run as root")
    was_up = (LAB_DIR / "env").exists()
    lab = Lab.up()
    if STATE.exists():
        program("destroy")
    lab.control("POST", "/lab/clear", {})
    yield lab
    program("destroy", check=False)
    if not was_up and not os.environ.get("LAB_KEEP"):
        run(["bash", str(ROOT / "lab/lab-down.sh")], timeout=300, check=False)


@pytest.fixture(scope="module")
def sentinels(lab):
    """Media on the pool before the first up: outside the pipeline dirs and inside movies/."""
    outside = lab.pool / "photos" / "holiday 2019.jpg"
    outside.parent.mkdir(parents=True, exist_ok=True)
    outside.write_bytes(os.urandom(4096))
    os.chown(outside, 4242, 4242)
    os.chmod(outside, 0o640)
    inside = lab.pool / "movies" / "Old Film (1999).mkv"
    inside.parent.mkdir(parents=True, exist_ok=True)
    inside.write_bytes(os.urandom(8192))
    os.chown(inside, 1234, 1234)
    return {p: (digest(p), p.stat().st_uid, p.stat().st_gid, p.stat().st_mode) for p in (outside, inside)}


@pytest.fixture(scope="module")
def first_up(lab, sentinels):
    before = lab.counters()
    out, proc = program("up")
    return {"out": out, "stderr": proc.stderr, "before": before}


def test_up_from_empty_builds_the_pipeline(lab, first_up):
    out = first_up["out"]["outputs"]
    cts = lab.containers()
    assert set(cts) == {201, 202, 203, 204}  # 203 jellyfin, 204 monitoring (enabled in Pulumi.lab.yaml)
    for vmid in (201, 202):
        cfg = lab.ct_config(vmid)
        assert str(cfg.get("unprivileged", 0)) == "0"
        assert cfg["mp0"].startswith("/mnt/storage,mp=/mnt/storage")
        assert "nesting=1" in cfg["features"]
        assert "firewall=1" not in cfg["net0"]  # off: PVE's default when left out, as bpg does
        assert cts[vmid]["status"] == "running"
    t_conf, r_conf = lab.conf(201), lab.conf(202)
    assert "lxc.cgroup2.devices.allow: c 226:128 rwm" in t_conf
    assert "lxc.mount.entry: /dev/dri dev/dri none bind,optional,create=dir" in t_conf
    assert "lxc.cgroup2.devices.allow: b 11:0 rwm" in r_conf
    assert "lxc.cgroup2.devices.allow: c 21:1 rwm" in r_conf  # the discovered sg of the drive, not sg0
    assert "lxc.mount.entry: /dev/sg1 dev/sg1" in r_conf
    assert "c 11:0" not in r_conf
    # the node: media user and group by number, pipeline dirs owned by media
    passwd = (lab.node_root / "etc/passwd").read_text()
    assert any(line.startswith("media:x:1000:1000:") for line in passwd.splitlines())
    for d in ("staging", "movies", "tv"):
        st = (lab.pool / d).stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (1000, 1000, 0o2775)
    # the transcoder really has the tools and the pipeline
    ct = lab.ct_dir / "201" / "rootfs"
    status = (ct / "var/lib/dpkg/status").read_text()
    for pkg in ("ffmpeg", "handbrake-cli", "mediainfo", "mkvtoolnix", "vainfo", "intel-media-va-driver-non-free"):
        assert f"Package: {pkg}\nStatus: install ok installed" in status, pkg
    assert (ct / "usr/local/bin/media-transcode").exists()
    for pkg in ("python3-jinja2", "python3-prometheus-client"):  # what the service imports
        assert f"Package: {pkg}\nStatus: install ok installed" in status, pkg
    mp_cfg = json.loads((ct / "etc/media-pipeline/config.json").read_text())
    assert mp_cfg["languages"] == ["eng", "bul"]
    assert (mp_cfg["web_port"], mp_cfg["web_bind"], mp_cfg["web_password"]) == (8480, "127.0.0.1", "")
    proof = json.loads((ct / "var/lib/media-pipeline/gpu-proof.json").read_text())  # verify-gpu.sh --save
    assert proof["render_node"] == "/dev/dri/renderD128" and proof["checked_at"] > 0
    assert out["statusPage"]["url"] == "http://127.0.0.1:8480/" and "pct exec 201" in out["statusPage"]["reachable"]
    # monitoring.enabled: /metrics on the transcoder's own address, for the monitoring container only
    assert out["metricsUrl"]["url"] == "http://10.99.0.201:9464/metrics"
    assert (mp_cfg["metrics_bind"], mp_cfg["metrics_allow"]) == ("10.99.0.201", ["10.99.0.204/32"])
    # structured, honest outputs: fake device nodes cannot encode
    gpu, drive = out["gpuVerification"], out["driveVerification"]
    assert gpu["ok"] is False and gpu["render_node"] == "/dev/dri/renderD128"
    assert gpu["encode"].startswith("failed: ") and "hevc_qsv" in gpu["qsv_encoders"]
    assert drive["ok"] is False and drive["sr"] == "/dev/sr0" and drive["sg"] == "/dev/sg1"
    assert any("makemkvcon" in r for r in drive["reasons"])
    assert out["devices"]["optical"]["sg"]["path"] == "/dev/sg1"
    assert out["pipeline"]["version"]
    assert out["transcoder"]["rawLines"][-2].startswith("lxc.mount.entry: /dev/dri")
    assert out["transcoder"]["rawLines"][-1] == "lxc.hook.pre-start: /var/lib/homelab-media/hook/homelab-media-lxc-hook.sh"
    # no secret in the outputs or the log
    password = lab.password
    assert password not in json.dumps(first_up["out"]) and password not in first_up["stderr"]


def test_the_services_run_under_systemd_in_their_containers(lab, first_up):
    """The installers' systemctl calls really started the units: systemd is each container's
    init, and the services run as the media user with the groups their units declare."""
    assert first_up["out"]["outputs"]["pipeline"]["service"] == "active"
    assert first_up["out"]["outputs"]["rip"]["service"] == "active"
    for vmid, unit in ((201, "media-pipeline.service"), (202, "media-rip.service")):
        got = lab.ssh(f"pct exec {vmid} -- bash -c 'cat /proc/1/comm; systemctl is-active {unit}; "
                      f"ps -o user=,group=,supgid= -p $(systemctl show -P MainPID {unit})'").stdout.splitlines()
        assert got[0] == "systemd" and got[1] == "active", got
        user, group, *supp = got[2].split()
        assert (user, group) == ("media", "media"), got
        if vmid == 202:
            assert "24" in ",".join(supp).split(","), got  # SupplementaryGroups=24 (cdrom)


def test_each_container_reaches_its_own_devices_and_no_other(lab, first_up):
    """LXC's device cgroup (BPF), built from the raw lines the program wrote: an allowed node
    opens as far as the stand-in allows (ENXIO: no driver behind it), any other gives EPERM,
    even a node made inside the container (mknod is allowed, opening is not)."""
    made = "mknod -m 0666 /tmp/lab-card0 c 226 0; mknod -m 0666 /tmp/lab-sg0 c 21 0; mknod -m 0666 /tmp/lab-sr0 b 11 0"
    for vmid in (201, 202):
        in_ct(lab, vmid, f"rm -f /tmp/lab-*; {made}", check=True)
    assert lab.open_errors(201, "/dev/dri/renderD128", "/dev/dri/card0", "/tmp/lab-sg0", "/tmp/lab-sr0") == {
        "/dev/dri/renderD128": "ENXIO", "/dev/dri/card0": "ENXIO", "/tmp/lab-sg0": "EPERM", "/tmp/lab-sr0": "EPERM"}
    assert lab.open_errors(202, "/dev/sr0", "/dev/sg1", "/tmp/lab-card0", "/tmp/lab-sg0") == {
        "/dev/sr0": "ENXIO", "/dev/sg1": "ENXIO", "/tmp/lab-card0": "EPERM", "/tmp/lab-sg0": "EPERM"}
    assert in_ct(lab, 202, "test -e /dev/dri").returncode != 0  # and it is not given the GPU at all


def test_a_rip_in_staging_becomes_a_library_file_inside_the_transcoder(lab, first_up):
    """media-pipeline.service, installed by TranscoderCT's bootstrap and started by systemd in the
    container, picks a finished rip up by itself and makes a library file as media."""
    title = f"Lab Movie {os.getpid()} (2024)"
    rip = f"/mnt/storage/staging/{title}.mkv"
    make = (
        f"runuser -u media -- ffmpeg -hide_banner -loglevel error -y -f lavfi -i testsrc=d=2:s=160x90:r=24 "
        f"-f lavfi -i sine=d=2 -map 0:v -map 1:a -c:v libx264 -preset ultrafast -c:a aac "
        f"-metadata:s:a:0 language=eng '/tmp/{title}.mkv' && mv '/tmp/{title}.mkv' '{rip}' && touch '{rip}.done'"
    )
    lab.ssh(f"pct exec 201 -- bash -c {shlex.quote(make)}", timeout=120)

    def done():
        jobs = json.loads(lab.ssh("pct exec 201 -- runuser -u media -- media-pipeline status --json").stdout)
        return [j["state"] for j in jobs if j["source"] == rip] == ["done"]
    wait_for(done, 600, what=f"media-pipeline.service to transcode {rip}")
    found = [p for p in (lab.pool / "movies").rglob("*.mkv") if title in p.name]
    assert len(found) == 1, found
    lib = found[0]
    assert lib.stat().st_uid == 1000 and lib.stat().st_size > 0
    in_ct = "/" + str(lib.relative_to(lab.node_root))
    probe = lab.ssh(f"pct exec 201 -- ffprobe -v error -show_entries stream=codec_name -of csv=p=0 {shlex.quote(in_ct)}")
    assert probe.stdout.split() == ["hevc", "aac"]
    assert not [p for p in (lab.pool / "movies").rglob("*partial*")]
    assert (lab.pool / "staging" / f"{title}.mkv").exists()  # keep_source defaults to keep
    # the status page, served by the running service on Debian's python3 and libraries
    fetch = ("python3 -c 'import urllib.request,sys; "
             "sys.stdout.write(urllib.request.urlopen(\"http://127.0.0.1:8480/api/status\").read().decode())'")
    status = json.loads(lab.ssh(f"pct exec 201 -- {fetch}", timeout=120).stdout)
    assert rip in [j["source"] for j in status["jobs"]["done"]]
    assert status["gpu_proof"]["render_node"] == "/dev/dri/renderD128"


def test_second_up_runs_nothing_remote(lab, first_up):
    before = lab.counters()
    out, _ = program("up")
    after = lab.counters()
    assert out["commands_ran"] == []
    # 10 steps + the hookscript install + 2 vm id guards + media-rip's install + the recreate guard,
    # + monitoring's: its vm id guard, bootstrap, Grafana, proof and the node exporter on the node
    # + Jellyfin's: its vm id guard, the template's render gid, install, configure, proof, and its
    # API key into the transcoder
    assert len(out["commands_unchanged"]) == 26
    assert after["ssh"] == before["ssh"] and after["pct"] == before["pct"] and after["events"] == before["events"]


def test_scripts_are_idempotent_when_run_again(lab, first_up):
    """Forcing every step to run again (state dropped) changes nothing on the node."""
    saved = STATE.read_text()
    state = json.loads(saved)
    state["commands"] = {}
    STATE.write_text(json.dumps(state))
    starts = {v: lab.starts(v) for v in (201, 202, 203, 204)}
    out, proc = program("up")
    # 10 steps + the hookscript install + 2 vm id guards + media-rip's install + the recreate guard
    # + monitoring's vm id guard, bootstrap, Grafana, proof and node exporter + Jellyfin's 6 steps
    assert len(out["commands_ran"]) == 26
    assert out["outputs"]["mediaUser"]["changed"] == []
    assert "unchanged" in proc.stderr or "already" in proc.stderr
    assert {v: lab.starts(v) for v in (201, 202, 203, 204)} == starts  # raw lines unchanged: no restart
    # monitoring's scripts again: nothing written, nothing restarted
    boot = proc.stderr.split("==> monitoring-bootstrap:")[1].split("==> monitoring-bootstrap: done")[0]
    assert "wrote /etc" not in boot and "restarted" not in boot, boot
    exporter = proc.stderr.split("==> media-host-node-exporter:")[1].split("==> media-host-node-exporter: done")[0]
    assert "restarted" not in exporter and "already installed" in exporter, exporter


def test_cores_change_updates_in_place(lab, first_up, tmp_path):
    cfg = stack_file(tmp_path, **{"transcoder.cores": 1})
    starts = lab.starts(201)
    out, proc = program("up", "--config-file", str(cfg))
    assert "container 201: updating cores in place" in proc.stderr
    assert int(lab.ct_config(201)["cores"]) == 1
    assert out["commands_ran"] == []
    assert lab.starts(201) == starts
    program("up")  # back to the stack's value
    assert int(lab.ct_config(201)["cores"]) == 2


def test_new_gpu_minor_rewrites_the_conf_and_restarts_only_the_transcoder(lab, first_up, tmp_path):
    lab.add_device("dri/renderD129", "c", 226, 129, 104)
    try:
        starts = {v: lab.starts(v) for v in (201, 202)}
        cfg = stack_file(tmp_path, **{"devices.rediscover": 2})
        out, _ = program("up", "--config-file", str(cfg))
        assert "lxc.cgroup2.devices.allow: c 226:129 rwm" in lab.conf(201)
        assert "transcoder-raw-lines" in out["commands_ran"]
        assert "ripper-raw-lines" not in out["commands_ran"]
        assert lab.starts(201) == starts[201] + 1
        assert lab.starts(202) == starts[202]
        assert "lxc.cgroup2.devices.allow: c 226:129 rwm" in out["outputs"]["transcoder"]["rawLines"]
    finally:
        lab.remove_device("dri/renderD129")
        program("up")


# --- the hookscript at every start (issue 10): pct start / reboot run pre-start as PVE does --

SYSFS = "opt/lab/sysfs"
PCI = "devices/pci0000:00/0000:00:17.0"


def pct(lab, *args, check=True):
    return lab.ssh("pct " + " ".join(shlex.quote(a) for a in args), check=check, timeout=300)


def in_ct(lab, vmid, script, check=False):
    return lab.ssh(f"pct exec {vmid} -- sh -c {shlex.quote(script)}", check=check)


def raw_of(conf: str) -> list[str]:
    return [x for x in conf.split("\n[")[0].splitlines() if x.startswith(("lxc.cgroup2.devices.allow", "lxc.mount.entry"))]


def runtime_raw(lab, vmid) -> list[str]:
    """The device lines of the config LXC read at the last start, without the lab's own mount
    entries (pve-lab.py's lxc_config: the pool's mp0 and the fake sysfs, what PVE mounts elsewhere)."""
    text = (lab.ct_dir / str(vmid) / "config").read_text()
    lab_only = ("lxc.mount.entry = /mnt/storage mnt/storage ", "lxc.mount.entry = /opt/lab/")
    return [x for x in text.splitlines()
            if x.startswith(("lxc.cgroup2.devices.allow", "lxc.mount.entry")) and not x.startswith(lab_only)]


def drive_verification(lab) -> dict:
    from components import render

    bundle = render.bundle("verify-drive.sh", ["--user", "media"])
    return render.parse_json_output(lab.ssh("pct exec 202 -- bash -s", input=bundle).stdout, "drive")


def test_sg_renumbered_then_restart_gives_the_ripper_only_the_drive(lab, first_up):
    """After a reboot a pool disk took sg1 and the drive is sg2: a restart of the ripper must not
    carry c 21:1 (a disk) but c 21:2 (the drive), in the conf and in the container's /dev."""
    s = lab.node_root / SYSFS
    disk = s / PCI / "ata3/host2/target2:0:0/2:0:0:0"
    drive = s / PCI / "ata2/host1/target1:0:0/1:0:0:0"
    try:
        (disk / "scsi_generic/sg1").mkdir(parents=True)
        (disk / "type").write_text("0\n")
        (disk / "scsi_generic/sg1/device").symlink_to("../../../2:0:0:0")
        (drive / "scsi_generic/sg1").rename(drive / "scsi_generic/sg2")
        (drive / "scsi_generic/sg2/dev").write_text("21:2\n")
        (s / "class/scsi_generic/sg1").unlink()
        (s / "class/scsi_generic/sg1").symlink_to(f"../../{PCI}/ata3/host2/target2:0:0/2:0:0:0/scsi_generic/sg1")
        (s / "class/scsi_generic/sg2").symlink_to(f"../../{PCI}/ata2/host1/target1:0:0/1:0:0:0/scsi_generic/sg2")
        lab.add_device("sg2", "c", 21, 2, 24)
        starts = lab.starts(202)
        assert "lxc.cgroup2.devices.allow: c 21:1 rwm" in lab.conf(202)  # from the deploy, before the reboot
        pct(lab, "reboot", "202")
        assert lab.starts(202) == starts + 1
        want = [
            "lxc.cgroup2.devices.allow: b 11:0 rwm",
            "lxc.cgroup2.devices.allow: c 21:2 rwm",
            "lxc.mount.entry: /dev/sr0 dev/sr0 none bind,optional,create=file",
            "lxc.mount.entry: /dev/sg2 dev/sg2 none bind,optional,create=file",
        ]
        assert raw_of(lab.conf(202)) == want
        assert runtime_raw(lab, 202) == [x.replace(": ", " = ", 1) for x in want]
        r = in_ct(lab, 202, "test -c /dev/sg2 && test -b /dev/sr0 && ! test -e /dev/sg1 && echo only-the-drive")
        assert r.stdout.strip() == "only-the-drive", r.stdout + r.stderr
        # LXC read the hook's lines in this start: the drive's new sg opens, the disk's old one does not
        in_ct(lab, 202, "rm -f /tmp/lab-sg1; mknod -m 0666 /tmp/lab-sg1 c 21 1", check=True)
        assert lab.open_errors(202, "/dev/sg2", "/dev/sr0", "/tmp/lab-sg1") == {
            "/dev/sg2": "ENXIO", "/dev/sr0": "ENXIO", "/tmp/lab-sg1": "EPERM"}
        assert (202, "hook pre-start exit=0") in lab.events(202)
    finally:
        (s / "class/scsi_generic/sg2").unlink(missing_ok=True)
        (s / "class/scsi_generic/sg1").unlink(missing_ok=True)
        if (drive / "scsi_generic/sg2").exists():
            (drive / "scsi_generic/sg2/dev").write_text("21:1\n")
            (drive / "scsi_generic/sg2").rename(drive / "scsi_generic/sg1")
        (s / "class/scsi_generic/sg1").symlink_to(f"../../{PCI}/ata2/host1/target1:0:0/1:0:0:0/scsi_generic/sg1")
        subprocess.run(["rm", "-rf", str(s / PCI / "ata3")], check=False)
        lab.remove_device("sg2")
        pct(lab, "reboot", "202")
    assert "lxc.cgroup2.devices.allow: c 21:1 rwm" in lab.conf(202)


def test_pool_unmounted_refuses_the_start(lab, first_up):
    pct(lab, "stop", "202")
    lab.set_pool_mounted(False)
    try:
        r = pct(lab, "start", "202", check=False)
        assert r.returncode != 0
        assert "CT 202 not started: the pool /mnt/storage is not mounted" in r.stderr, r.stderr
        assert "hookscript error for 202 on pre-start" in r.stderr
        assert lab.containers()[202]["status"] == "stopped"
        assert os.listdir(lab.ct_dir / "202/rootfs/mnt/storage") == []  # nothing written under the pool path
        assert in_ct(lab, 202, "true").returncode != 0  # not running: nothing runs in it
    finally:
        lab.set_pool_mounted(True)
    pct(lab, "start", "202")
    assert lab.containers()[202]["status"] == "running"


def test_a_reboot_from_inside_with_the_pool_unmounted_is_refused_by_lxcs_hook(lab, first_up):
    """PVE restarts a container rebooted from inside without vm_start, so without the hookscript
    (pve-container's lxc-pve-poststop-hook); the conf's lxc.hook.pre-start line, which LXC runs at
    every start, still refuses an unmounted pool: the ripper stays down instead of writing rips
    onto the node's root disk."""
    hook = "lxc.hook.pre-start: /var/lib/homelab-media/hook/homelab-media-lxc-hook.sh"
    assert hook in lab.conf(202).split("\n[")[0].splitlines()
    ok = lab.control("POST", "/lab/ct-reboot", {"vmid": 202})  # pool mounted: it comes back
    assert ok["started"] is True, ok
    assert "lxc pre-start: pool ok, devices as in the conf" in " ".join(ok["log"])
    events = len(lab.events(202))
    lab.set_pool_mounted(False)
    try:
        r = lab.control("POST", "/lab/ct-reboot", {"vmid": 202})
        assert r["started"] is False, r
        assert "CT 202 not started: the pool /mnt/storage is not mounted" in r["error"], r
        new = [e for _, e in lab.events(202)[events:]]
        assert not any(e.startswith("hook ") for e in new), f"PVE's hookscript ran on this path: {new}"
        assert lab.containers()[202]["status"] == "stopped"
        assert os.listdir(lab.ct_dir / "202/rootfs/mnt/storage") == []
    finally:
        lab.set_pool_mounted(True)
    pct(lab, "start", "202")
    assert lab.containers()[202]["status"] == "running"


def test_a_project_upgrade_after_the_hook_adapted_does_not_reboot(lab, first_up):
    """Hardware moved (a new render node), a start let the hook adapt the conf; a new release
    re-runs the raw-lines step with the deploy's older discovery: no reboot, the hook's lines stay."""
    lab.add_device("dri/renderD129", "c", 226, 129, 104)
    try:
        pct(lab, "reboot", "201")  # the hook gives it renderD129
        assert "lxc.cgroup2.devices.allow: c 226:129 rwm" in lab.conf(201)
        before, starts = lab.conf(201), lab.starts(201)
        stale = "".join(f"{x}\n" for x in first_up["out"]["outputs"]["transcoder"]["rawLines"])  # the deploy's (no 129)
        assert "226:129" not in stale
        # what the re-run step runs: pve-ct-raw.sh from its bundle, with the program's arguments
        from components import render
        bundle = render.bundle("pve-ct-raw.sh", ["--vmid", "201", "--require-mount", "/mnt/storage",
                                                  "--hook-dir", render.HOOK_DIR], stale, ["pve-lxc-raw.sh"], {})
        r = lab.ssh("bash -s", input=bundle)
        assert r.stdout.strip().splitlines()[-1] == "unchanged", r.stdout + r.stderr
        assert lab.starts(201) == starts, "the upgrade rebooted the transcoder"
        assert lab.conf(201) == before
    finally:
        lab.remove_device("dri/renderD129")
        pct(lab, "reboot", "201")
    assert "226:129" not in lab.conf(201)


def test_drive_removed_the_ripper_starts_without_drive_lines_and_the_proof_says_so(lab, first_up):
    s = lab.node_root / SYSFS
    link = s / "class/scsi_generic/sg1"
    target = os.readlink(link)
    try:
        link.unlink()
        lab.remove_device("sr0")
        lab.remove_device("sg1")
        pct(lab, "reboot", "202")
        assert lab.containers()[202]["status"] == "running"
        assert raw_of(lab.conf(202)) == [] and runtime_raw(lab, 202) == []
        proof = drive_verification(lab)
        assert proof["ok"] is False and proof["sr"] is None and proof["sg"] is None, proof
    finally:
        if not link.is_symlink():
            link.symlink_to(target)
        lab.add_device("sr0", "b", 11, 0, 24)
        lab.add_device("sg1", "c", 21, 1, 24)
        pct(lab, "reboot", "202")
    assert "lxc.cgroup2.devices.allow: b 11:0 rwm" in lab.conf(202)


def test_dri_node_added_reaches_the_transcoder_at_its_next_start_without_rediscover(lab, first_up):
    lab.add_device("dri/renderD129", "c", 226, 129, 104)
    try:
        pct(lab, "stop", "201")
        pct(lab, "start", "201")
        assert "lxc.cgroup2.devices.allow: c 226:129 rwm" in lab.conf(201)
        assert "lxc.cgroup2.devices.allow = c 226:129 rwm" in runtime_raw(lab, 201)
        r = in_ct(lab, 201, "test -c /dev/dri/renderD129 && echo usable")
        assert r.stdout.strip() == "usable", r.stdout + r.stderr
    finally:
        lab.remove_device("dri/renderD129")
        pct(lab, "reboot", "201")
    assert "226:129" not in lab.conf(201)
    out, _ = program("up")  # the stack still agrees: nothing to do
    assert out["commands_ran"] == []


def test_unreachable_node_fails_fast_with_a_clear_message(lab, first_up, tmp_path):
    cfg = stack_file(tmp_path, **{"ssh.port": 1, "devices.rediscover": 7})
    started = time.monotonic()
    _, proc = program("up", "--config-file", str(cfg), check=False, timeout=120)
    elapsed = time.monotonic() - started
    assert proc.returncode == 2, "the program stops itself before any resource (the runner's exit 2)"
    # the program's own pre-flight check (components/preflight.py), before any resource
    assert "cannot reach the node's sshd at 127.0.0.1:1" in proc.stderr and "homelab-media:ssh.port" in proc.stderr
    assert elapsed < 60, f"took {elapsed:.0f}s"


def test_silent_node_times_out_within_the_dial_bounds(lab, first_up, tmp_path):
    """A host that accepts TCP but never speaks SSH: one banner wait of perDialTimeout, then a clear stop."""
    import socket
    import threading

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    held = []
    stop = threading.Event()

    def accept():
        srv.settimeout(0.5)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        port = srv.getsockname()[1]
        cfg = stack_file(tmp_path, **{"ssh.port": port, "devices.rediscover": 8})
        started = time.monotonic()
        _, proc = program("up", "--config-file", str(cfg), check=False, timeout=180)
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        t.join()
        for c in held:
            c.close()
        srv.close()
    assert proc.returncode == 2, "the program stops itself before any resource (the runner's exit 2)"
    assert f"cannot reach the node's sshd at 127.0.0.1:{port}: no SSH banner within 5 s" in proc.stderr
    assert elapsed < 5 + 25, f"took {elapsed:.0f}s"


def test_unmounted_pool_stops_before_containers_bind_it(lab, first_up, tmp_path):
    program("destroy")
    lab.set_pool_mounted(False)
    try:
        _, proc = program("up", check=False, timeout=300)
        assert proc.returncode == 1
        assert "/mnt/storage is not a mount point" in proc.stderr or "not mounted" in proc.stderr
        assert lab.containers() == {}
    finally:
        lab.set_pool_mounted(True)
    program("up")
    assert set(lab.containers()) == {201, 202, 203, 204}


def test_pve_task_failure_surfaces_pves_message_and_the_next_up_converges(lab, first_up):
    program("destroy")
    message = ("unable to create CT 201 - lvcreate 'pve/vm-201-disk-0' error:   Volume group \"pve\" has "
               "insufficient free space (0 extents): 2048 required.")
    lab.control("POST", "/lab/fail-task", {"type": "vzcreate", "id": "201", "message": message, "times": 1})
    _, proc = program("up", check=False, timeout=600)
    assert proc.returncode == 1
    assert "insufficient free space" in proc.stderr and "unable to create CT 201" in proc.stderr
    assert 201 not in lab.containers()
    program("up")
    assert lab.containers()[201]["status"] == "running"


def test_a_killed_up_converges_on_the_next_up(lab, first_up):
    program("destroy")
    log = LAB_DIR / "log" / "killed-up.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, str(RUNNER), "up"], cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        wait_for(lambda: "bootstrap: pct exec" in log.read_text(), timeout=300, what="a bootstrap to start")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    out, _ = program("up")
    assert set(lab.containers()) == {201, 202, 203, 204}
    assert out["outputs"]["pipeline"]["version"]
    again, _ = program("up")
    assert again["commands_ran"] == []


def test_destroy_removes_the_containers_and_nothing_else(lab, first_up, sentinels):
    program("up")
    program("destroy")
    assert lab.containers() == {}
    for p, (sha, uid, gid, mode) in sentinels.items():
        assert digest(p) == sha, f"{p} changed"
        st = p.stat()
        assert (st.st_uid, st.st_gid, st.st_mode) == (uid, gid, mode), f"{p} re-owned"
    assert (lab.pool / "staging").is_dir() and (lab.pool / "movies").is_dir()
    assert any(line.startswith("media:x:1000:") for line in (lab.node_root / "etc/passwd").read_text().splitlines())
