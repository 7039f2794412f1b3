"""The lab itself, without the program: the node, its fake hardware, the pmxcfs stand-in, real LXC, pct.
Needs root only (not the Pulumi toolchain), so it also checks a lab by hand: LAB_KEEP=1.
"""

from __future__ import annotations

import os
import signal
import time
import urllib.error
from pathlib import Path

import pytest

from .lab import LAB_DIR, ROOT, run, wait_for

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
    # raw lines take effect at the next start only: LXC reads them then
    assert lab.ssh(f"pct exec {ct} -- test -e /dev/dri/renderD128", check=False).returncode != 0
    starts = lab.starts(ct)
    lab.ssh(f"pct reboot {ct}")
    assert lab.starts(ct) == starts + 1
    generated = (lab.ct_dir / str(ct) / "config").read_text().splitlines()
    assert [line for line in generated if line.startswith(("lxc.cgroup2.devices", "lxc.mount.entry = /dev"))] == [
        line.replace(": ", " = ", 1) for line in raw]
    # LXC's device cgroup (BPF) decides: an allowed node opens (ENXIO: no driver behind the
    # stand-in node), card0 in the same bound directory has no rule, and `c 11:0` does not
    # allow the block device sr0
    assert lab.open_errors(ct, "/dev/dri/renderD128", "/dev/dri/card0", "/dev/sr0", "/dev/null") == {
        "/dev/dri/renderD128": "ENXIO", "/dev/dri/card0": "EPERM", "/dev/sr0": "EPERM", "/dev/null": "OK"}
    destroy_ct(lab)
    assert not (lab.conf_dir / f"{ct}.conf").exists()
    wait_for(lambda: not (lab.ct_dir / str(ct)).exists() and not list(lab.ct_dir.glob(f".destroyed-{ct}-*")), 60,
             what="the container tree to go")


def test_the_second_node_is_a_node_of_the_same_cluster(lab):
    """pve2 (lab-up.sh): its own sshd, tree and namespaces; the same fakepve cluster; the first node's
    pool directory at /mnt/storage and its /etc/pve/nodes (as pmxcfs shows every node's configs);
    its vmbr0 linked to pve1's, so containers of both nodes share one network."""
    vmid = 298
    assert lab.node2 == "pve2"
    got = lab.ssh("hostname; findmnt -n -o TARGET /mnt/storage; readlink /etc/pve/lxc; ls /etc/pve/nodes",
                  node="pve2").stdout.split()
    assert got == ["pve2", "/mnt/storage", "nodes/pve2/lxc", "pve1", "pve2"], got
    assert lab.ssh("hostname").stdout.strip() == "pve1"  # the other sshd
    probe = lab.pool / f".node2-probe-{os.getpid()}"
    probe.write_text("one pool\n")
    try:
        assert lab.ssh(f"cat /mnt/storage/{probe.name}", node="pve2").stdout == "one pool\n"
    finally:
        probe.unlink()
    assert sorted(n["node"] for n in lab.api("GET", "/nodes")) == ["pve1", "pve2"]
    if vmid in lab.containers():
        lab.api("DELETE", f"/nodes/{lab.node_of(vmid)}/lxc/{vmid}?force=1")
    params = {"vmid": vmid, "ostemplate": TEMPLATE, "hostname": "labtest2", "cores": 1, "memory": 256,
              "rootfs": "local-lvm:4", "unprivileged": 1,
              "net0": "name=eth0,bridge=vmbr0,ip=10.99.0.98/24,gw=10.99.0.1", "start": 1}
    upid = lab.api("POST", "/nodes/pve2/lxc", params)
    assert lab.api("GET", f"/nodes/pve2/tasks/{upid}/status")["exitstatus"] == "OK"
    try:
        assert lab.node_of(vmid) == "pve2"
        conf = lab.node_root / "etc/pve/nodes/pve2/lxc" / f"{vmid}.conf"
        assert "hostname: labtest2" in conf.read_text()
        assert (lab.node2_root / f"var/lib/lxc/{vmid}/rootfs/etc").is_dir()
        assert not (lab.ct_dir / str(vmid)).exists()
        # LXC of pve2 runs it; pve1's knows nothing of it
        assert lab.ssh(f"lxc-info -n {vmid} -s -H", node="pve2").stdout.strip() == "RUNNING"
        assert lab.ssh(f"lxc-info -n {vmid} -s -H", check=False).stdout.strip() != "RUNNING"
        assert lab.ssh(f"pct exec {vmid} -- hostname", node="pve2").stdout.strip() == "labtest2"
        # one network: pve1's bridge (the gateway) over the link, and apt's way out through pve1's NAT
        lab.ssh(f"pct exec {vmid} -- ping -c1 -W5 10.99.0.1", node="pve2")
        lab.ssh(f"pct exec {vmid} -- getent hosts deb.debian.org", node="pve2")
    finally:
        lab.api("POST", f"/nodes/pve2/lxc/{vmid}/status/stop")
        lab.api("DELETE", f"/nodes/pve2/lxc/{vmid}")
    assert not conf.exists()
    wait_for(lambda: not (lab.node2_root / f"var/lib/lxc/{vmid}").exists(), 60, what="pve2's container tree to go")


def node_pid(lab, vmid):
    """The container init's pid in the node (what fakepve reports, from lxc-info)."""
    return int(lab.containers()[vmid]["pid"])


def test_a_container_boots_systemd_under_lxc(lab, ct):
    assert create_ct(lab)["exitstatus"] == "OK"
    pid = node_pid(lab, ct)
    assert lab.ssh(f"lxc-info -n {ct} -s -H; lxc-info -n {ct} -p -H").stdout.split() == ["RUNNING", str(pid)]
    assert lab.ssh(f"cat /proc/{pid}/comm").stdout.strip() == "systemd"
    got = lab.ssh(f"pct exec {ct} -- bash -c 'cat /proc/1/comm; systemd-detect-virt; "
                  "systemctl is-system-running --wait; hostname; ip -4 -o addr show dev eth0'").stdout.split("\n")
    assert got[:4] == ["systemd", "lxc", "running", "labtest"], got
    assert "10.99.0.99/24" in got[4]
    # its network: the node's bridge, and apt's way out through the node's NAT
    lab.ssh(f"pct exec {ct} -- ping -c1 -W5 10.99.0.1")
    lab.ssh(f"pct exec {ct} -- getent hosts deb.debian.org")
    # a clean shutdown is systemd's; the container is stopped for PVE and for LXC
    lab.ssh(f"pct shutdown {ct} --timeout 60")
    assert lab.containers()[ct]["status"] == "stopped"
    assert lab.ssh(f"lxc-info -n {ct} -s -H").stdout.strip() == "STOPPED"
    # powered off from inside: the API sees it stopped within the mirror's half second
    lab.ssh(f"pct start {ct}")
    lab.ssh(f"pct exec {ct} -- systemctl poweroff", check=False)
    wait_for(lambda: lab.containers()[ct]["status"] == "stopped", 30, what="the API to see the power-off")


def test_a_reboot_from_inside_rereads_the_conf(lab, ct):
    """As on PVE (lxc-pve-poststop-hook): LXC stops the container, and it starts again from a
    config generated again from the conf, so a line added meanwhile takes effect."""
    create_ct(lab)
    lab.ssh(f"cat >> /etc/pve/lxc/{ct}.conf", input="lxc.environment: LAB_PROBE=rebooted\n")
    starts = lab.starts(ct)
    lab.ssh(f"pct exec {ct} -- systemctl reboot", check=False)
    wait_for(lambda: lab.starts(ct) == starts + 1 and lab.containers()[ct]["status"] == "running", 60,
             what="the container to come back")
    assert (ct, "stop (reboot from inside)") in lab.events(ct)
    pid = node_pid(lab, ct)
    assert "LAB_PROBE=rebooted" in lab.ssh(f"tr '\\0' '\\n' < /proc/{pid}/environ").stdout


def test_a_line_lxc_refuses_fails_the_start(lab, ct):
    assert create_ct(lab, start=0)["exitstatus"] == "OK"
    lab.ssh(f"cat >> /etc/pve/lxc/{ct}.conf", input="lxc.mount.entry: /nonexistent/lab dev/lab none bind,create=file 0 0\n")
    upid = lab.api("POST", f"/nodes/{lab.node}/lxc/{ct}/status/start")
    status = lab.api("GET", f"/nodes/{lab.node}/tasks/{upid}/status")
    assert status["exitstatus"].startswith(f"startup for container '{ct}' failed"), status
    assert 'Failed to mount "/nonexistent/lab"' in status["exitstatus"]
    assert lab.containers()[ct]["status"] == "stopped"
    assert lab.ssh(f"lxc-info -n {ct} -s -H").stdout.strip() == "STOPPED"


def test_an_unprivileged_container_is_really_unprivileged(lab, ct):
    probe = lab.pool / ".lab-unpriv-probe"
    probe.write_text("x")
    os.chown(probe, 1000, 1000)
    try:
        assert create_ct(lab, unprivileged=1)["exitstatus"] == "OK"
        pid = node_pid(lab, ct)
        # root inside is 100000 outside
        assert lab.ssh(f"stat -c %u:%g /proc/{pid}").stdout.strip() == "100000:100000"
        got = lab.ssh(f"pct exec {ct} -- bash -c 'id -u; cat /proc/self/uid_map; "
                      "stat -c %U:%G /mnt/storage/.lab-unpriv-probe; touch /mnt/storage/.lab-unpriv-probe'",
                      check=False)
        lines = got.stdout.splitlines()
        assert lines[0] == "0" and lines[1].split() == ["0", "100000", "65536"]
        assert lines[2] == "nobody:nogroup"
        assert got.returncode != 0 and "Permission denied" in got.stderr
        # and it boots systemd (degraded at most: no debugfs for an unprivileged container)
        state = lab.ssh(f"pct exec {ct} -- systemctl is-system-running --wait", check=False).stdout.strip()
        assert state in ("running", "degraded"), state
    finally:
        probe.unlink()


def test_pct_exec_forwards_stdin_and_exit_code(lab, ct):
    create_ct(lab)
    got = lab.ssh(f"pct exec {ct} -- bash -c 'tr a-z A-Z; hostname; findmnt -n -o TARGET /mnt/storage; exit 7'",
                  input="hello\n", check=False)
    assert got.returncode == 7
    assert got.stdout.splitlines() == ["HELLO", "labtest", "/mnt/storage"]
    # lxc-attach's codes: a missing command is 127, a signal 128+N; keep-env keeps the caller's
    # variables, minus the lab node's own
    assert lab.ssh(f"pct exec {ct} -- /nonexistent", check=False).returncode == 127
    assert lab.ssh(f"pct exec {ct} -- sh -c 'kill -TERM $$'", check=False).returncode == 143
    env = lab.ssh(f"LAB_X=1 pct exec {ct} -- env").stdout.splitlines()
    assert "LAB_X=1" in env and "container=lxc" in env and not [e for e in env if e.startswith("SYSFS_ROOT=")]
    env = lab.ssh(f"LAB_X=1 pct exec {ct} --keep-env 0 -- env").stdout.splitlines()
    assert "LAB_X=1" not in env
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


def lab_processes(lab) -> list[str]:
    """Processes of this lab still alive (as `pid cmdline`): anything in the lab's cgroup (the
    node, its sshd, LXC's monitors, containers, slirp4netns), any lxc-start or lxc-attach, the API."""
    out = []
    name = Path(lab.env["LAB_CGROUP"]).name
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            cgroups = (p / "cgroup").read_text()
        except OSError:
            continue
        if f"/{name}" in cgroups or cmd.startswith(("lxc-start", "lxc-attach", "slirp4netns")) \
                or "lab/pve-lab.py" in cmd or "node-boot.sh" in cmd:
            out.append(f"{p.name} {cmd}")
    return out


def test_a_killed_run_and_lab_down_leave_nothing_behind(lab, ct):
    """A test run killed halfway leaves the API or the node running alone: the next lab-up ends
    that half-dead lab by its pid files and cgroup, containers included; lab-down then leaves no
    process, container or cgroup. (Runs last here: it restarts the lab.)"""
    assert create_ct(lab)["exitstatus"] == "OK"
    cgroup = Path(lab.env["LAB_CGROUP"])
    old = {int(x) for x in (cgroup / "lxc" / str(ct) / "cgroup.procs").read_text().split()} | \
        {int(x) for x in (cgroup / "init.scope" / "cgroup.procs").read_text().split()}
    assert old and all(Path(f"/proc/{pid}").exists() for pid in old)
    pve = int((LAB_DIR / "run" / "pve.pid").read_text())
    os.kill(pve, signal.SIGKILL)  # what a killed run can leave: the node without its API
    wait_for(lambda: not Path(f"/proc/{pve}/cmdline").exists() or not Path(f"/proc/{pve}/cmdline").read_bytes(),
             10, what="the API to die")
    try:
        run(["bash", str(ROOT / "lab/lab-up.sh")], timeout=600)
        lab._ticket = None  # a new API: new tickets
        assert not [pid for pid in old if Path(f"/proc/{pid}/cmdline").exists() and Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert ct not in lab.containers()  # the new API starts empty, and LXC runs nothing of the old one
        assert not (cgroup / "lxc" / str(ct)).exists()
        assert lab.ssh("hostname").stdout.strip() == "pve1"
        # lab-down (keeping .lab to look at): nothing of the lab runs, no cgroup is left
        assert create_ct(lab)["exitstatus"] == "OK"
        run(["bash", str(ROOT / "lab/lab-down.sh"), "--keep"], timeout=300)
        assert lab_processes(lab) == []
        assert not cgroup.exists()
    finally:
        run(["bash", str(ROOT / "lab/lab-up.sh")], timeout=600)
        lab._ticket = None
    assert lab.ssh("hostname").stdout.strip() == "pve1"
