"""The lab itself, without the program: the node, its fake hardware, the pmxcfs stand-in, pct.
Needs root only (not the Pulumi toolchain), so it also checks a lab by hand: LAB_KEEP=1.
"""

from __future__ import annotations

import time
import urllib.error

import pytest

from .lab import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

VMID = 299
TEMPLATE = "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst"


def create_ct(lab, vmid=VMID, **extra):
    params = {
        "vmid": vmid, "ostemplate": TEMPLATE, "hostname": "labtest", "cores": 1, "memory": 512,
        "rootfs": "local-lvm:4", "mp0": "/mnt/storage,mp=/mnt/storage", "features": "nesting=1",
        "unprivileged": 0, "net0": "name=eth0,bridge=vmbr0,firewall=0,ip=10.99.0.99/24,gw=10.99.0.1",
        "start": 1, **extra,
    }
    upid = lab.api("POST", f"/nodes/{lab.node}/lxc", params)
    return lab.api("GET", f"/nodes/{lab.node}/tasks/{upid}/status")


def destroy_ct(lab, vmid=VMID):
    if vmid not in lab.containers():
        return
    if lab.containers()[vmid]["status"] == "running":
        lab.api("POST", f"/nodes/{lab.node}/lxc/{vmid}/status/stop")
    lab.api("DELETE", f"/nodes/{lab.node}/lxc/{vmid}")


@pytest.fixture
def ct(lab):
    destroy_ct(lab)
    lab.control("POST", "/lab/clear", {})
    yield VMID
    lab.control("POST", "/lab/clear", {})
    destroy_ct(lab)


def test_node_is_a_debian_12_of_its_own(lab):
    got = lab.ssh("hostname; . /etc/os-release; echo $VERSION_ID; findmnt -n -o TARGET /; "
                  "findmnt -n -o TARGET /mnt/storage; echo $SYSFS_ROOT; getent group render video cdrom").stdout
    lines = got.splitlines()
    assert lines[:5] == ["pve1", "12", "/", "/mnt/storage", "/opt/lab/sysfs"]
    assert [line.split(":")[2] for line in lines[5:]] == ["104", "44", "24"]
    # the node's users are its own
    lab.ssh("useradd -M labprobe && getent passwd labprobe && userdel labprobe")
    assert "labprobe" not in open("/etc/passwd").read()


def test_fake_hardware(lab):
    got = lab.ssh("stat -c '%n %F %t:%T %G' /dev/dri/card0 /dev/dri/renderD128 /dev/sr0 /dev/sg0 /dev/sg1; "
                  "cat $SYSFS_ROOT/class/scsi_generic/sg0/device/type $SYSFS_ROOT/class/scsi_generic/sg1/device/type; "
                  "ls $SYSFS_ROOT/class/scsi_generic/sg1/device/block").stdout.splitlines()
    assert got == [
        "/dev/dri/card0 character special file e2:0 video",
        "/dev/dri/renderD128 character special file e2:80 render",
        "/dev/sr0 block special file b:0 cdrom",
        "/dev/sg0 character special file 15:0 disk",
        "/dev/sg1 character special file 15:1 cdrom",
        "0", "5", "sr0",
    ]


def test_pool_can_be_unmounted_and_mounted_again(lab):
    try:
        lab.set_pool_mounted(False)
        assert lab.ssh("findmnt -n -o TARGET -T /mnt/storage").stdout.strip() == "/"
    finally:
        lab.set_pool_mounted(True)
    assert lab.ssh("findmnt -n -o TARGET -T /mnt/storage").stdout.strip() == "/mnt/storage"


def test_conf_file_follows_the_api_and_keeps_raw_lines(lab, ct):
    assert create_ct(lab)["exitstatus"] == "OK"
    conf = lab.conf(ct)
    assert "mp0: /mnt/storage,mp=/mnt/storage" in conf and "features: nesting=1" in conf
    assert "firewall=0" in conf and "lock:" not in conf
    raw = ["lxc.cgroup2.devices.allow: c 226:128 rwm",
           "lxc.mount.entry: /dev/dri dev/dri none bind,optional,create=dir",
           "lxc.cgroup2.devices.allow: c 11:0 rwm",
           "lxc.mount.entry: /dev/sr0 dev/sr0 none bind,optional,create=file"]
    lab.ssh(f"cat >> /etc/pve/lxc/{ct}.conf", input="".join(f"{line}\n" for line in raw))
    lab.api("PUT", f"/nodes/{lab.node}/lxc/{ct}/config", {"cores": 2})
    conf = lab.conf(ct)
    assert "cores: 2" in conf
    assert [line for line in conf.splitlines() if line.startswith("lxc.")] == raw, "raw lines must survive"
    assert lab.ct_config(ct)["lxc"] == [line.split(": ", 1) for line in raw]
    # raw lines take effect at the next start only
    assert lab.ssh(f"pct exec {ct} -- test -e /dev/dri/renderD128", check=False).returncode != 0
    starts = lab.starts(ct)
    lab.ssh(f"pct reboot {ct}")
    assert lab.starts(ct) == starts + 1
    lab.ssh(f"pct exec {ct} -- test -c /dev/dri/renderD128")
    # card0 has no allow rule, and `c 11:0` does not allow the block device sr0
    assert lab.ssh(f"pct exec {ct} -- test -c /dev/dri/card0", check=False).returncode == 1
    assert lab.ssh(f"pct exec {ct} -- test -b /dev/sr0", check=False).returncode == 1
    assert "has no lxc.cgroup2.devices.allow rule" in (lab.node_root / "var/log/pct.log").read_text()
    destroy_ct(lab)
    assert not (lab.conf_dir / f"{ct}.conf").exists()
    wait_for(lambda: not (lab.ct_dir / str(ct)).exists() and not list(lab.ct_dir.glob(f".destroyed-{ct}-*")), 60,
             what="the container tree to go")


def test_pct_exec_forwards_stdin_and_exit_code(lab, ct):
    create_ct(lab)
    got = lab.ssh(f"pct exec {ct} -- bash -c 'tr a-z A-Z; hostname; findmnt -n -o TARGET /mnt/storage; exit 7'",
                  input="hello\n", check=False)
    assert got.returncode == 7
    assert got.stdout.splitlines() == ["HELLO", "labtest", "/mnt/storage"]
    # a file written in the container is on the node's pool
    lab.ssh(f"pct exec {ct} -- bash -c 'echo from-ct > /mnt/storage/.lab-probe'")
    try:
        assert (lab.pool / ".lab-probe").read_text() == "from-ct\n"
    finally:
        (lab.pool / ".lab-probe").unlink()
    # stopped: pct exec refuses as PVE does
    lab.ssh(f"pct stop {ct}")
    got = lab.ssh(f"pct exec {ct} -- true", check=False)
    assert got.returncode == 255 and f"CT {ct} not running" in got.stderr
    assert lab.ssh(f"pct status {ct}").stdout.strip() == "status: stopped"


def test_fail_task_surfaces_as_pve_task_error(lab, ct):
    lab.control("POST", "/lab/fail-task", {"type": "vzcreate", "id": str(ct), "message": "unable to create CT {vmid} - boom", "times": 1})
    status = create_ct(lab)
    assert status["exitstatus"] == f"unable to create CT {ct} - boom"
    assert ct not in lab.containers()
    time.sleep(0.6)  # a mirror pass
    assert not (lab.conf_dir / f"{ct}.conf").exists()
    assert create_ct(lab)["exitstatus"] == "OK"


def test_fail_injects_pves_own_errors(lab, ct):
    """POST /lab/fail answers with an error from fakepve's catalogue of PVE's real errors."""
    lab.control("POST", "/lab/fail", {"method": "POST", "suffix": f"/nodes/{lab.node}/lxc",
                                      "error": "only_root_can_pass_arbitrary", "times": 1})
    with pytest.raises(urllib.error.HTTPError) as err:
        create_ct(lab)
    assert err.value.code == 500
    assert "Only root can pass arbitrary filesystem paths" in err.value.read().decode()
