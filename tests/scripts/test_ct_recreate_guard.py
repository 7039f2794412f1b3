"""host-ct-recreate-guard.sh on a pmxcfs-like tree: an edit that bpg's provider applies only by
deleting and recreating a container (the pool's mount point, the root disk's storage, a smaller
disk) is refused unless <key>.allowRecreate opts in; everything else passes. The conf files are
written as PVE writes them (fakepve's print_mount, pve-container's PVE::LXC::Config)."""

from __future__ import annotations

import json

import pytest

from .conftest import run

MARKER = "managed by the homelab-media Pulumi program"
CONF = """#transcoder%3A managed by the homelab-media Pulumi program
arch: amd64
cores: 2
hostname: transcoder
mp0: /mnt/storage,mp=/mnt/storage
rootfs: local-lvm:vm-201-disk-0,size=8G
lxc.cgroup2.devices.allow: c 226:128 rwm

[before-upgrade]
mp0: /mnt/old,mp=/mnt/old
rootfs: other:vm-201-disk-0,size=64G
"""


@pytest.fixture
def pve(tmp_path):
    (tmp_path / "nodes/pve1/lxc").mkdir(parents=True)
    (tmp_path / "nodes/pve1/lxc/201.conf").write_text(CONF)
    return tmp_path


def guard(pve, *cts, pool="/mnt/storage", node="pve1"):
    args = ["--pool", pool, "--node", node, "--marker", MARKER, "--pve-dir", str(pve)]
    for ct in cts:
        args += ["--ct", ct]
    return run("host-ct-recreate-guard.sh", *args)


def test_unchanged_settings_and_a_new_container_pass(pve):
    r = guard(pve, "201:transcoder:transcoder:local-lvm:8:0", "202:ripper:ripper:local-lvm:8:0")
    assert r.rc == 0, r.err
    got = json.loads(r.out)
    assert got == [
        {"vmid": 201, "key": "transcoder", "exists": True, "recreate": [], "allowed": False},
        {"vmid": 202, "key": "ripper", "exists": False, "recreate": [], "allowed": False},
    ]


def test_a_bigger_disk_is_a_resize_and_passes(pve):
    r = guard(pve, "201:transcoder:transcoder:local-lvm:20:0")
    assert r.rc == 0, r.err
    assert json.loads(r.out)[0]["recreate"] == []


@pytest.mark.parametrize("pool,spec,key", [
    ("/mnt/pool", "201:transcoder:transcoder:local-lvm:8:0", "storage.pool"),
    ("/mnt/storage", "201:transcoder:transcoder:zfs-fast:8:0", "transcoder.datastore"),
    ("/mnt/storage", "201:transcoder:transcoder:local-lvm:4:0", "transcoder.diskGb"),
])
def test_a_change_that_recreates_is_refused_naming_the_key_and_the_opt_in(pve, pool, spec, key):
    before = (pve / "nodes/pve1/lxc/201.conf").read_bytes()
    r = guard(pve, spec, pool=pool)
    assert r.rc == 1
    reasons = json.loads(r.out)[0]["recreate"]
    assert len(reasons) == 1 and reasons[0].startswith(f"{key}: CT 201"), reasons
    assert f"✗ {key}: CT 201" in r.err
    assert "pulumi config set --path homelab-media:transcoder.allowRecreate true" in r.err
    assert "Nothing was changed" in r.err
    assert (pve / "nodes/pve1/lxc/201.conf").read_bytes() == before


def test_allow_recreate_lets_it_through_and_says_so(pve):
    r = guard(pve, "201:transcoder:transcoder:zfs-fast:4:1", pool="/mnt/pool")
    assert r.rc == 0, r.err
    got = json.loads(r.out)[0]
    assert got["allowed"] is True and len(got["recreate"]) == 3
    assert "will be recreated, its disk lost (transcoder.allowRecreate is true)" in r.err


def test_sizes_in_other_units_and_snapshots_are_read_as_pve_means_them(pve):
    # 8192M is 8G (not smaller); the snapshot section's values are not the container's
    conf = CONF.replace("size=8G", "size=8192M")
    (pve / "nodes/pve1/lxc/201.conf").write_text(conf)
    assert guard(pve, "201:transcoder:transcoder:local-lvm:8:0").rc == 0
    (pve / "nodes/pve1/lxc/201.conf").write_text(CONF.replace("size=8G", "size=0.5T"))
    r = guard(pve, "201:transcoder:transcoder:local-lvm:100:0")
    assert r.rc == 1 and "transcoder.diskGb" in r.err


@pytest.mark.parametrize("spec", ["201:transcoder:transcoder:local-lvm:8", "x:transcoder:local-lvm:8:0", "201:t:l:8:2"])
def test_a_malformed_spec_is_refused(pve, spec):
    r = guard(pve, spec)
    assert r.rc != 0 and "--ct" in r.err


def test_a_new_vm_id_or_node_is_refused_too(pve):
    """vm_id and node_name are ForceNew in bpg's ContainerLegacy: the old container would be deleted."""
    r = guard(pve, "211:transcoder:transcoder:local-lvm:8:0")
    assert r.rc == 1
    assert "transcoder.vmId: this stack's transcoder is CT 201 and the stack now says 211" in r.err
    (pve / "nodes/pve2/lxc").mkdir(parents=True)
    r = guard(pve, "201:transcoder:transcoder:local-lvm:8:0", node="pve2")
    assert r.rc == 1 and "proxmox.node: CT 201 is on node pve1 and the stack now says pve2" in r.err
    # another stack's or a hand-made container with that hostname is not this stack's
    (pve / "nodes/pve1/lxc/300.conf").write_text("#transcoder%3A my own\narch: amd64\n")
    assert guard(pve, "201:transcoder:transcoder:local-lvm:8:0").rc == 0


# --- a container with its own mount points (Jellyfin: movies and tv, read-only) -------------------

JF_CONF = """#jellyfin%3A managed by the homelab-media Pulumi program
arch: amd64
hostname: jellyfin
dev0: /dev/dri/renderD128,gid=993,mode=0660
mp0: /mnt/storage/movies,mp=/media/movies,ro=1
mp1: /mnt/storage/tv,mp=/media/tv,ro=1
rootfs: local-lvm:vm-203-disk-0,size=16G
unprivileged: 1
"""
JF = "203:jellyfin:jellyfin:local-lvm:16:0"
JF_MPS = ["203:mp0:/mnt/storage/movies:/media/movies:1", "203:mp1:/mnt/storage/tv:/media/tv:1"]


def jf_guard(pve, mps, spec=JF):
    (pve / "nodes/pve1/lxc/203.conf").write_text(JF_CONF)
    args = ["--pool", "/mnt/storage", "--node", "pve1", "--marker", MARKER, "--pve-dir", str(pve), "--ct", spec]
    for m in mps:
        args += ["--mp", m]
    return run("host-ct-recreate-guard.sh", *args)


def test_the_same_read_only_mounts_pass(pve):
    r = jf_guard(pve, JF_MPS)
    assert r.rc == 0, r.err
    assert json.loads(r.out)[0]["recreate"] == []


@pytest.mark.parametrize("mps, needle", [
    (["203:mp0:/mnt/storage/films:/media/movies:1", JF_MPS[1]], "mp0 is /mnt/storage/movies,mp=/media/movies,ro=1 and the stack now says /mnt/storage/films,mp=/media/movies,ro=1"),
    ([JF_MPS[0], "203:mp1:/mnt/storage/tv:/media/tv:0"], "mp1 is /mnt/storage/tv,mp=/media/tv,ro=1 and the stack now says /mnt/storage/tv,mp=/media/tv: the provider"),
    (JF_MPS[:1], "has mount points 'mp0 mp1' and the stack now declares 'mp0'"),
])
def test_a_changed_mount_of_a_container_with_its_own_mounts_is_refused(pve, mps, needle):
    r = jf_guard(pve, mps)
    assert r.rc == 1
    assert needle in r.err, r.err
    assert "homelab-media:jellyfin.allowRecreate true" in r.err


def test_its_own_mounts_opt_in_and_a_malformed_spec(pve):
    r = jf_guard(pve, ["203:mp0:/mnt/storage/films:/media/movies:1", JF_MPS[1]], spec=JF[:-1] + "1")
    assert r.rc == 0 and json.loads(r.out)[0]["allowed"] is True
    r = jf_guard(pve, ["203:mp0:relative:/media/movies:1"])
    assert r.rc == 1 and "--mp '203:mp0:relative:/media/movies:1' must be VMID:mpN:SOURCE:TARGET:RO" in r.err
def test_a_container_without_mount_points_is_checked_for_none(pve):
    """The monitoring container binds nothing (`:none`): its conf without mp0 passes; a conf that
    binds something would be recreated by the provider to drop it, so it is refused."""
    mon = CONF.replace("transcoder", "monitoring").replace("vm-201", "vm-204").split("\n[")[0]
    (pve / "nodes/pve1/lxc/204.conf").write_text(mon.replace("mp0: /mnt/storage,mp=/mnt/storage\n", ""))
    r = guard(pve, "204:monitoring:monitoring:local-lvm:8:0:none")
    assert r.rc == 0, r.err
    (pve / "nodes/pve1/lxc/204.conf").write_text(mon)
    r = guard(pve, "204:monitoring:monitoring:local-lvm:8:0:none")
    assert r.rc == 1 and "monitoring: CT 204 binds /mnt/storage,mp=/mnt/storage and the stack now binds nothing" in r.err
    assert guard(pve, "204:monitoring:monitoring:local-lvm:8:0:other").rc == 2 or \
        "pool or none" in guard(pve, "204:monitoring:monitoring:local-lvm:8:0:other").err
