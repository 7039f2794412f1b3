"""Containers that exist before the stack (the plan's hand-made CT 201/202): `make adopt`
(tools/adopt-containers.sh) imports them where the program declares them, then `up` converges
on them instead of failing on "already exists", and a second preview shows no changes.
Needs the real engine (`pulumi import`); see conftest for where it skips.
"""

from __future__ import annotations

import pytest
import yaml

from .lab import NS, STACK_FILE

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3600)]


@pytest.fixture(autouse=True)
def no_hand_made_left(lab, empty_stack):
    """Whatever a test made by hand goes at its end, pass or fail, so no later test finds it."""
    yield
    empty_stack.destroy(timeout=900, check=False)
    lab.remove_all_containers()


def hand_made(lab, vmid: int, *, unprivileged: int = 0) -> None:
    """What the plan's owner typed: `pct create` with the pool bind-mounted, nesting, a static IP."""
    cfg = yaml.safe_load(STACK_FILE.read_text())["config"]
    ct = cfg[f"{NS}:transcoder" if vmid == 201 else f"{NS}:ripper"]
    tpl = cfg[f"{NS}:template"]
    node = lab.node
    volid = f"{tpl['datastore']}:vztmpl/{tpl['fileName']}"
    present = [v["volid"] for v in lab.api("GET", f"/nodes/{node}/storage/{tpl['datastore']}/content")]
    if volid not in present:
        lab.api("POST", f"/nodes/{node}/storage/{tpl['datastore']}/download-url",
                {"content": "vztmpl", "filename": tpl["fileName"], "url": tpl["url"]})
    lab.api("POST", f"/nodes/{node}/lxc", {
        "vmid": vmid, "ostemplate": volid, "ostype": "debian", "hostname": ct["hostname"],
        "cores": ct["cores"], "memory": ct["memory"], "swap": ct["swap"],
        "rootfs": f"{ct['datastore']}:{ct['diskGb']}",
        "net0": f"name=eth0,bridge={cfg[f'{NS}:network']['bridge']},ip={ct['ipv4']},gw={cfg[f'{NS}:network']['gateway']}",
        "features": "nesting=1", "unprivileged": unprivileged, "onboot": 1,
        "mp0": "/mnt/storage,mp=/mnt/storage",
    })
    lab.api("POST", f"/nodes/{node}/lxc/{vmid}/status/start")


def test_existing_containers_are_adopted_then_up_converges(lab, empty_stack, needs_engine):
    deployer = empty_stack
    hand_made(lab, 201)
    hand_made(lab, 202)
    events = len(lab.events())

    adopted = deployer.adopt()
    assert adopted.returncode == 0, adopted.text[-4000:]
    assert "Adopted" in adopted.text
    deployer.up()
    # the adopted ones are kept; the stack's others (jellyfin 203, monitoring 204) are new
    new = [e for e in lab.events()[events:] if e[1] in ("create", "destroy") and e[0] in (201, 202)]
    assert new == [], f"an adopted container was recreated: {new}"
    assert set(lab.containers()) == {201, 202, 203, 204}
    # the program's own changes reached them: the raw device lines, the bootstrap
    assert "lxc.cgroup2.devices.allow: b 11:0 rwm" in lab.conf(202)
    assert "lxc.cgroup2.devices.allow: c 226:128 rwm" in lab.conf(201)
    lab.ssh("pct exec 201 -- id media")
    deployer.check_no_changes()
    # a second adopt has nothing to do
    again = deployer.adopt()
    assert again.returncode == 0 and "already in the stack" in again.text, again.text[-3000:]


def test_adopt_stops_before_a_container_would_be_recreated(lab, empty_stack, needs_engine):
    deployer = empty_stack
    # made unprivileged: the program's privileged container is another container in bpg's
    # schema (unprivileged is ForceNew), so the next up would recreate it and lose its disk
    hand_made(lab, 202, unprivileged=1)
    events = len(lab.events())
    adopted = deployer.adopt()
    assert adopted.returncode != 0
    assert "ripper: would be REPLACED because of unprivileged" in adopted.text, adopted.text[-3000:]
    assert "out of the stack again" in adopted.text
    # refused: the container left the stack again, so neither up nor destroy can touch it
    assert not [u for u in deployer.leftover() if "containerLegacy" in u], deployer.leftover()
    deployer.destroy()
    assert [e for e in lab.events()[events:] if e[1] in ("create", "destroy")] == []
    assert lab.containers()[202]["status"] == "running"


def test_up_refuses_a_hand_made_container_instead_of_taking_it_over(lab, empty_stack):
    """bpg's provider takes PVE's "CT 202 already exists" for a create that worked; without the
    program's vm id guard the stack would silently own the hand-made CT, and the next up would
    recreate it (its disk lost). The up stops before that, naming the key and `make adopt`."""
    deployer = empty_stack
    hand_made(lab, 202, unprivileged=1)
    events = len(lab.events())
    result = deployer.up(check=False)
    assert result.returncode != 0
    assert "CT 202 (ripper.vmId) already exists on node pve1" in result.text and "make adopt" in result.text, \
        result.text[-3000:]
    assert not [u for u in deployer.leftover() if u.endswith("ContainerLegacy::ripper") or u == "container 202"]
    assert lab.containers()[202]["status"] == "running"
    assert str(lab.ct_config(202).get("unprivileged")) == "1", "the hand-made container was changed"
    assert not [e for e in lab.events()[events:] if e[0] == 202 and e[1] in ("create", "destroy")]


def test_an_adopted_container_can_be_destroyed_before_any_up(lab, empty_stack, needs_engine):
    """Adopted, then `pulumi destroy` at once (the owner changes their mind): the stack owns the
    container now, so destroy removes it (files on the pool are bind-mounted, not in its disk)."""
    deployer = empty_stack
    hand_made(lab, 202)
    adopted = deployer.adopt()
    assert adopted.returncode == 0, adopted.text[-4000:]
    gone = deployer.destroy(check=False)
    assert gone.returncode == 0, gone.text[-4000:]
    assert 202 not in lab.containers()
    assert deployer.leftover() == []
