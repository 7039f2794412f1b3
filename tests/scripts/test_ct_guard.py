"""host-ct-guard.sh on a pmxcfs-like tree: a vm id that is free, ours, someone else's, adopted, a VM."""

from __future__ import annotations

import json

import pytest

from .conftest import run

MARKER = "managed by the homelab-media Pulumi program"


@pytest.fixture
def pve(tmp_path):
    for kind in ("lxc", "qemu-server"):
        (tmp_path / "nodes/pve1" / kind).mkdir(parents=True)
        (tmp_path / "nodes/pve2" / kind).mkdir(parents=True)
    return tmp_path


def guard(pve, *extra):
    return run("host-ct-guard.sh", "--vmid", "201", "--key", "transcoder.vmId", "--marker", MARKER,
               "--pve-dir", str(pve), *extra)


def test_a_free_id_passes(pve):
    r = guard(pve)
    assert r.rc == 0, r.err
    assert json.loads(r.out) == {"vmid": 201, "exists": False, "node": None, "kind": None, "managed": False,
                                    "adopted": False}


def test_a_container_the_program_made_passes(pve):
    # as PVE writes the description: `#` lines first (an interrupted up made it)
    (pve / "nodes/pve1/lxc/201.conf").write_text(f"#transcoder: {MARKER}\narch: amd64\nhostname: transcoder\n")
    r = guard(pve)
    assert r.rc == 0, r.err
    assert json.loads(r.out)["managed"] is True


def test_a_hand_made_container_is_refused_naming_the_key_and_make_adopt(pve):
    (pve / "nodes/pve2/lxc/201.conf").write_text("#my old transcoder\narch: amd64\nhostname: transcoder\n"
                                                  f"\n[snap1]\n#{MARKER}\n")
    r = guard(pve)
    assert r.rc == 1
    assert json.loads(r.out)["node"] == "pve2"
    assert "CT 201 (transcoder.vmId) already exists on node pve2" in r.err
    assert "make adopt" in r.err and "pulumi config set --path homelab-media:transcoder.vmId" in r.err


def test_an_adopted_container_passes(pve):
    (pve / "nodes/pve1/lxc/201.conf").write_text("arch: amd64\nhostname: transcoder\n")
    r = guard(pve, "--adopt")
    assert r.rc == 0, r.err
    assert json.loads(r.out)["adopted"] is True


def test_a_vm_with_that_id_is_refused_even_when_adopting(pve):
    (pve / "nodes/pve1/qemu-server/201.conf").write_text("name: windows\n")
    r = guard(pve, "--adopt")
    assert r.rc == 1
    assert "vm id 201 (transcoder.vmId) is a VM on node pve1" in r.err


def test_bad_arguments(pve):
    r = run("host-ct-guard.sh", "--vmid", "x", "--key", "k", "--marker", "m")
    assert r.rc == 1 and "--vmid must be a number" in r.err
