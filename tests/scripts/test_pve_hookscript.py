"""pve-hookscript.sh (pre-start) and host-hookscript.sh on real conf files and fake device trees.

The hook runs the way PVE runs it: as `<file> <vmid> pre-start`, after PVE wrote the generated
LXC config from the conf, while the caller holds the container's config lock.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from pathlib import Path

import pytest

from components import render

from .conftest import POOL_MOUNTS, SCRIPTS, fake_findmnt, run
from .test_discover_verify import two_drives

CONF = """\
#ripper%3A managed by the homelab-media Pulumi program
arch: amd64
hookscript: local:snippets/homelab-media-hook.sh
hostname: ripper
mp0: /mnt/storage,mp=/mnt/storage
lxc.cgroup2.devices.allow: b 11:0 rwm
lxc.cgroup2.devices.allow: c 21:1 rwm
lxc.mount.entry: /dev/sr0 dev/sr0 none bind,optional,create=file
lxc.mount.entry: /dev/sg1 dev/sg1 none bind,optional,create=file

[snap1]
lxc.cgroup2.devices.allow: c 21:1 rwm
"""


def generated(conf_text: str) -> str:
    """What PVE's update_lxc_config writes: its own lxc.* keys, then the conf's raw lines as `key = value`."""
    out = ["lxc.arch = amd64", "lxc.include = /usr/share/lxc/config/debian.common.conf", "lxc.uts.name = ripper"]
    for line in conf_text.split("\n[")[0].splitlines():
        if line.startswith("lxc."):
            k, _, v = line.partition(":")
            out.append(f"{k} = {v.strip()}")
    out.append("lxc.rootfs.path = /var/lib/lxc/202/rootfs")
    return "\n".join(out) + "\n"


class Node:
    def __init__(self, tmp: Path, hw):
        self.hw = hw
        self.conf_dir = tmp / "etc/pve/lxc"
        self.lxc = tmp / "var/lib/lxc"
        self.hook = tmp / "hook"
        self.lock = tmp / "run/lock/lxc"
        self.extra_env = {}
        for d in (self.conf_dir, self.lxc / "202", self.lxc / "201", self.hook, self.lock):
            d.mkdir(parents=True)
        for f in render.bundle_files("pve-hookscript.sh", ["pve-lxc-raw.sh"]):  # what the hookscript's step ships
            shutil.copy(SCRIPTS / f, self.hook / f)

    def setup(self, vmid, conf_text, role, pool="/", require_mount=1, drive="auto", extra=""):
        (self.conf_dir / f"{vmid}.conf").write_text(conf_text)
        (self.lxc / str(vmid) / "config").write_text(generated(conf_text))
        (self.hook / f"ct-{vmid}.conf").write_text(
            f"role={role}\npool={pool}\nrequire_mount={require_mount}\noptical_drive={drive}\n")
        (self.hook / f"ct-{vmid}.extra").write_text(extra)

    def start(self, vmid, hold_lock=True):
        """pre-start as PVE runs it: inside the container's config lock."""
        f = open(self.lock / f"pve-config-{vmid}.lock", "a")
        if hold_lock:
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            env = {**self.hw.env, "PVE_CONF_DIR": str(self.conf_dir), "LXC_CONF_DIR": str(self.lxc),
                   "PVE_LOCK_DIR": str(self.lock), "PVE_LOCK_TIMEOUT": "20", **self.extra_env}
            t = time.monotonic()
            r = run("../" + os.path.relpath(self.hook / "pve-hookscript.sh", SCRIPTS.parent), str(vmid), "pre-start",
                    env=env)
            r.secs = time.monotonic() - t
            return r
        finally:
            f.close()

    def conf(self, vmid):
        return (self.conf_dir / f"{vmid}.conf").read_text()

    def gen(self, vmid):
        return (self.lxc / str(vmid) / "config").read_text()


@pytest.fixture
def node(tmp_path, hw):
    return Node(tmp_path, hw)


def raw(text, sep=":"):
    return [x for x in text.split("\n[")[0].splitlines() if x.startswith(("lxc.cgroup2", "lxc.mount.entry"))]


def test_sg_renumbered_the_start_and_the_conf_get_only_the_drive(node):
    """A disk took sg1 and the drive is sg2 now (the conf still says sg1, from before the reboot)."""
    node.hw.char("sg0", 21, 0)
    node.hw.scsi_generic("sg0", 0)
    node.hw.char("sg1", 21, 1)
    node.hw.scsi_generic("sg1", 0)  # a disk of the pool
    node.hw.optical(sr=0, sg=2)
    node.setup(202, CONF, "drive")
    r = node.start(202)
    assert r.rc == 0, r.err
    assert r.secs < 10  # did not wait for the lock its caller holds
    want = [
        "lxc.cgroup2.devices.allow: b 11:0 rwm",
        "lxc.cgroup2.devices.allow: c 21:2 rwm",
        "lxc.mount.entry: /dev/sr0 dev/sr0 none bind,optional,create=file",
        "lxc.mount.entry: /dev/sg2 dev/sg2 none bind,optional,create=file",
    ]
    assert raw(node.conf(202)) == want
    gen = node.gen(202)
    assert "c 21:1" not in gen and "/dev/sg1" not in gen
    assert [x.replace(" = ", ": ", 1) for x in gen.splitlines() if x.startswith(("lxc.cgroup2", "lxc.mount.entry"))] == want
    assert gen.startswith("lxc.arch = amd64\nlxc.include = ") and "lxc.rootfs.path = /var/lib/lxc/202/rootfs" in gen
    # the snapshot section and everything else of the conf are untouched
    assert node.conf(202).split("\n[")[1] == CONF.split("\n[")[1]
    assert "removed [allow c 21:1 rwm,mount /dev/sg1" in r.err and "added [allow c 21:2 rwm,mount /dev/sg2" in r.err
    again = node.start(202)
    assert again.rc == 0 and "unchanged (4 raw lines)" in again.err


def test_drive_removed_starts_without_drive_lines(node):
    node.setup(202, CONF, "drive")
    r = node.start(202)
    assert r.rc == 0, r.err
    assert raw(node.conf(202)) == [] and "21:" not in node.gen(202) and "11:0" not in node.gen(202)
    assert "no optical drive" in r.err


def test_a_chosen_drive_that_is_gone_gives_no_lines_never_the_other_drive(node):
    two_drives(node.hw)
    node.setup(202, CONF, "drive", drive="ata-SOMETHING_ELSE_123")
    r = node.start(202)
    assert r.rc == 0, r.err
    assert raw(node.conf(202)) == []
    node.setup(202, CONF, "drive", drive="BW-16D1HT")
    assert node.start(202).rc == 0
    assert "lxc.cgroup2.devices.allow: c 21:3 rwm" in raw(node.conf(202))
    assert "lxc.cgroup2.devices.allow: b 11:1 rwm" in raw(node.conf(202))


def test_dri_node_added_is_in_this_start_and_extra_lines_are_kept(node):
    conf = CONF.replace("ripper", "transcoder").split("lxc.cgroup2")[0] + (
        "lxc.cgroup2.devices.allow: c 226:0 rwm\nlxc.cgroup2.devices.allow: c 226:128 rwm\n"
        "lxc.mount.entry: /dev/dri dev/dri none bind,optional,create=dir\n")
    node.hw.gpu(0, 128)
    node.hw.char("dri/renderD129", 226, 129)
    extra = "lxc.cgroup2.devices.allow: c 10:200 rwm\nlxc.mount.entry: /dev/net/tun dev/net/tun none bind,create=file\n"
    node.setup(201, conf, "gpu", extra=extra)
    r = node.start(201)
    assert r.rc == 0, r.err
    assert raw(node.conf(201)) == [
        "lxc.cgroup2.devices.allow: c 226:0 rwm",
        "lxc.cgroup2.devices.allow: c 226:128 rwm",
        "lxc.cgroup2.devices.allow: c 226:129 rwm",
        "lxc.mount.entry: /dev/dri dev/dri none bind,optional,create=dir",
        *extra.splitlines(),
    ]
    assert "lxc.cgroup2.devices.allow = c 226:129 rwm" in node.gen(201)
    assert "lxc.mount.entry = /dev/net/tun dev/net/tun none bind,create=file" in node.gen(201)


def test_pool_not_mounted_refuses_the_start_in_one_line_and_changes_nothing(node, tmp_path):
    pool = tmp_path / "mnt/storage"
    pool.mkdir(parents=True)
    node.hw.optical(sr=0, sg=2)
    node.setup(202, CONF, "drive", pool=str(pool))
    before_conf, before_gen = node.conf(202), node.gen(202)
    r = node.start(202)
    assert r.rc == 1
    lines = [x for x in r.err.splitlines() if x.strip()]
    assert len(lines) == 1 and f"the pool {pool} is not mounted" in lines[0] and "CT 202 not started" in lines[0]
    assert node.conf(202) == before_conf and node.gen(202) == before_gen


@pytest.mark.parametrize("mount", POOL_MOUNTS, ids=list(POOL_MOUNTS))
def test_the_hook_and_host_check_pool_judge_a_mount_alike(node, tmp_path, mount):
    """One rule (lib-pool.sh) for the deploy's pool check and the check at every start."""
    line, usable = POOL_MOUNTS[mount]
    env = fake_findmnt(tmp_path / "fakebin", tmp_path, line)
    fstype = line.splitlines()[-1].split()[0]  # the top mount

    check = run("host-check-pool.sh", "--pool", str(tmp_path), env=env)
    assert (check.rc == 0) is usable, check.err
    assert check.json["fstype"] == fstype and check.json["ok"] is usable
    assert check.json["allow_other"] is (usable if fstype.startswith("fuse") else None)

    node.hw.optical(sr=0, sg=1)
    node.setup(202, CONF, "drive", pool=str(tmp_path))
    node.extra_env = env
    r = node.start(202)
    assert (r.rc == 0) is usable, r.err
    if not usable:
        assert f"{fstype} mount without allow_other" in r.err
        assert node.conf(202) == CONF


def test_other_phases_do_nothing_and_bad_settings_refuse(node):
    node.setup(202, CONF, "drive")
    env = {**node.hw.env, "PVE_CONF_DIR": str(node.conf_dir), "LXC_CONF_DIR": str(node.lxc)}
    hook = os.path.relpath(node.hook / "pve-hookscript.sh", SCRIPTS.parent)
    for phase in ("post-start", "pre-stop", "post-stop"):
        assert run("../" + hook, "202", phase, env=env).rc == 0
    assert node.conf(202) == CONF
    (node.hook / "ct-202.conf").write_text("role=everything\n")
    r = run("../" + hook, "202", "pre-start", env=env)
    assert r.rc == 1 and "role must be gpu, drive or none" in r.err
    (node.hook / "ct-202.conf").unlink()
    r = run("../" + hook, "202", "pre-start", env=env)
    assert r.rc == 1 and "settings were not installed" in r.err


# --- host-hookscript.sh ----------------------------------------------------------------------

STORAGE_CFG = """\
dir: local
\tpath {path}
\tcontent {content}

lvmthin: local-lvm
\tthinpool data
\tvgname pve
\tcontent rootdir,images
"""


def install(tmp_path, content="iso,vztmpl,backup,snippets", storage="local", extra=""):
    cfg = tmp_path / "storage.cfg"
    cfg.write_text(STORAGE_CFG.format(path=tmp_path / "vz", content=content))
    return run("host-hookscript.sh", "--storage", storage, "--ct", "201:gpu", "--ct", "202:drive",
               "--pool", "/mnt/storage", "--optical-drive", "BW-16D1HT", "--dir", str(tmp_path / "hook"),
               input=extra, env={"PVE_STORAGE_CFG": str(cfg)})


def test_install_puts_an_executable_snippet_and_the_settings(tmp_path):
    r = install(tmp_path, extra="201 lxc.cgroup2.devices.allow: c 10:200 rwm\n")
    assert r.rc == 0, r.err
    assert r.json["volume"] == "local:snippets/homelab-media-hook.sh"
    snippet = tmp_path / "vz/snippets/homelab-media-hook.sh"
    assert os.access(snippet, os.X_OK) and f"exec /bin/bash {tmp_path}/hook/pve-hookscript.sh" in snippet.read_text()
    hook = tmp_path / "hook"
    assert (hook / "ct-202.conf").read_text() == "role=drive\npool=/mnt/storage\nrequire_mount=1\noptical_drive=BW-16D1HT\n"
    assert (hook / "ct-201.extra").read_text() == "lxc.cgroup2.devices.allow: c 10:200 rwm\n"
    assert {p.name for p in hook.glob("*.sh")} >= {"pve-hookscript.sh", "pve-lxc-raw.sh", "lib.sh", "lib-devices.sh", "lib-json.sh", "lib-pool.sh"}
    again = install(tmp_path, extra="201 lxc.cgroup2.devices.allow: c 10:200 rwm\n")
    assert again.rc == 0 and again.json["changed"] == []


def test_install_refuses_a_storage_without_snippets_naming_the_fix(tmp_path):
    r = install(tmp_path, content="iso,vztmpl,backup")
    assert r.rc == 1
    assert "pvesm set local --content iso,vztmpl,backup,snippets" in r.err and "node.snippetsStorage" in r.err
    assert not (tmp_path / "hook").exists() and not (tmp_path / "vz/snippets").exists()
    r = install(tmp_path, storage="local-lvm")
    assert r.rc == 1 and "no directory path" in r.err
    r = install(tmp_path, storage="nas")
    assert r.rc == 1 and "is not in" in r.err


# --- the LXC-level guard: every start, a reboot from inside the container too (issue 14, item 3) ---

def lxc_hook_line(node):
    return f"lxc.hook.pre-start: {node.hook}/homelab-media-lxc-hook.sh"


def lxc_start(node, vmid, env=None):
    """What LXC does with the conf's lxc.hook.pre-start line: the project's wrapper with LXC_NAME
    set and (name, section, type) as arguments, no config lock held (pve-container's
    lxc-pve-poststop-hook restarts pve-container@VMID for a reboot from inside: no vm_start)."""
    wrapper = node.hook / "homelab-media-lxc-hook.sh"
    wrapper.write_text(f'#!/bin/sh\nexec /bin/bash {node.hook}/pve-hookscript.sh "${{LXC_NAME:-$1}}" lxc-pre-start\n')
    wrapper.chmod(0o755)
    full = {**node.hw.env, "PVE_CONF_DIR": str(node.conf_dir), "LXC_CONF_DIR": str(node.lxc),
            "LXC_NAME": str(vmid), "LXC_CONFIG_FILE": str(node.lxc / str(vmid) / "config"), **(env or {})}
    return run("../" + os.path.relpath(wrapper, SCRIPTS.parent), str(vmid), "lxc", "pre-start", env=full)


def test_pre_start_puts_the_lxc_hook_line_in_the_conf_and_lines_prints_what_it_writes(node):
    node.hw.optical(sr=0, sg=2)
    node.setup(202, CONF, "drive", extra="lxc.cgroup2.devices.allow: c 10:200 rwm\n")
    assert node.start(202).rc == 0
    main = node.conf(202).split("\n[")[0].splitlines()
    managed = [x for x in main if x.startswith(("lxc.cgroup2", "lxc.mount.entry", "lxc.hook"))]
    assert managed[-1] == lxc_hook_line(node) and main.count(lxc_hook_line(node)) == 1
    env = {**node.hw.env, "PVE_CONF_DIR": str(node.conf_dir)}
    r = run("../" + os.path.relpath(node.hook / "pve-hookscript.sh", SCRIPTS.parent), "202", "lines", env=env)
    assert r.rc == 0, r.err
    assert r.out.splitlines() == managed  # devices, extra lines, the hook line: what pve-ct-raw.sh writes
    assert node.start(202).rc == 0 and node.conf(202).count("lxc.hook.pre-start") == 1


def test_a_reboot_from_inside_with_the_pool_unmounted_is_refused_by_lxcs_hook(node, tmp_path):
    pool = tmp_path / "mnt/storage"
    pool.mkdir(parents=True)
    node.hw.optical(sr=0, sg=2)
    node.setup(202, CONF, "drive", pool="/")
    assert node.start(202).rc == 0  # started by PVE with the pool mounted ("/": a mount point)
    assert lxc_start(node, 202).rc == 0  # a reboot from inside, pool still there: it starts
    (node.hook / "ct-202.conf").write_text(f"role=drive\npool={pool}\nrequire_mount=1\noptical_drive=auto\n")
    before = node.conf(202)
    r = lxc_start(node, 202)  # the pool went away: no PVE hookscript on this path, LXC's hook holds
    assert r.rc == 1
    # on stdout: LXC logs a hook's stdout and drops its stderr
    assert r.out.splitlines() == [f"homelab-media: CT 202 not started: the pool {pool} is not mounted (the container "
                                  "would bind the empty directory and write to the node's root disk); mount it "
                                  f"(mount {pool}), then start the container again"]
    assert node.conf(202) == before


def test_lxcs_hook_refuses_devices_that_changed_since_pve_started_it(node):
    node.hw.optical(sr=0, sg=2)
    node.setup(202, CONF, "drive", pool="/")
    assert node.start(202).rc == 0
    # the drive moved to sg3 (hot-plug) without a start through PVE
    shutil.rmtree(node.hw.sys / "class/scsi_generic/sg2")
    (node.hw.dev / "sg2").unlink()
    node.hw.char("sg3", 21, 3)
    node.hw.scsi_generic("sg3", 5, "sr0")
    before = node.conf(202)
    r = lxc_start(node, 202)
    assert r.rc == 1 and "devices changed since it was last started by PVE" in r.out
    assert "pct start 202" in r.out and node.conf(202) == before and r.err == ""
