"""Wiring helper shared by TranscoderCT and RipperCT: one privileged LXC (after its vm id guard)
plus its raw lines.

Privileged (the plan's choice: device nodes and the pool keep host UIDs/GIDs), the pool
bind-mounted at the same path, nesting on, firewall off on the interface (not the plan's
`firewall: 0`, which is no container key). A fixed vm id means a replacement must delete
the old container first. Raw `lxc.*` lines cannot go through the API, so they are written
into /etc/pve/lxc/<id>.conf by scripts/pve-ct-raw.sh, which restarts the container only
when they changed.
"""

from __future__ import annotations

import os
from typing import Sequence

import pulumi
import pulumi_proxmoxve as proxmoxve

from . import render
from .config import ContainerConfig, StackConfig
from .remote import Node, run_script


MANAGED_MARKER = render.MANAGED_MARKER
# vm ids (comma-separated) tools/adopt-containers.sh is importing: their guard accepts them
ADOPT_ENV = "HOMELAB_MEDIA_ADOPT"


def privileged_container(
    name: str,
    ct: ContainerConfig,
    cfg: StackConfig,
    node: Node,
    template_file_id: pulumi.Input[str],
    parent: pulumi.Resource,
    depends_on: Sequence[pulumi.Resource],
) -> proxmoxve.ContainerLegacy:
    return _container(
        name, ct, cfg, node, template_file_id, parent, depends_on,
        unprivileged=False,
        mount_points=[{"volume": cfg.storage.pool, "path": cfg.storage.pool}],
        # pre-start checks the pool and resolves the devices at every start (scripts/pve-hookscript.sh)
        hook_script_file_id=render.hookscript_volume(cfg.node.snippets_storage),
    )


def unprivileged_container(
    name: str,
    ct: ContainerConfig,
    cfg: StackConfig,
    node: Node,
    template_file_id: pulumi.Input[str],
    parent: pulumi.Resource,
    depends_on: Sequence[pulumi.Resource],
    mount_points: Sequence[dict] = (),
    device_passthroughs: pulumi.Input[list] | None = None,
) -> proxmoxve.ContainerLegacy:
    """An unprivileged container (monitoring, Jellyfin): no pool bind mount and no raw lines,
    only the given mount points and PVE's own device passthrough (devN); no hookscript. Nesting
    is on, as PVE sets it for unprivileged containers with a systemd of Debian 12's age."""
    return _container(
        name, ct, cfg, node, template_file_id, parent, depends_on,
        unprivileged=True, mount_points=list(mount_points), hook_script_file_id=None,
        device_passthroughs=device_passthroughs,
    )


def _container(
    name: str,
    ct: ContainerConfig,
    cfg: StackConfig,
    node: Node,
    template_file_id: pulumi.Input[str],
    parent: pulumi.Resource,
    depends_on: Sequence[pulumi.Resource],
    *,
    unprivileged: bool,
    mount_points: list[dict],
    hook_script_file_id: str | None,
    device_passthroughs: pulumi.Input[list] | None = None,
) -> proxmoxve.ContainerLegacy:
    ip = {"address": ct.ipv4}
    if ct.ipv4 != "dhcp" and cfg.network.gateway:
        ip["gateway"] = cfg.network.gateway
    # bpg's provider takes PVE's "CT N already exists" for a create that worked: without this
    # guard an up would silently take over a guest made by hand (tools/adopt-containers.sh)
    adopting = str(ct.vm_id) in os.environ.get(ADOPT_ENV, "").split(",")
    guard = run_script(
        f"{name}-vmid-guard",
        node,
        "host-ct-guard.sh",
        ["--vmid", str(ct.vm_id), "--key", f"{name}.vmId", "--marker", MANAGED_MARKER,
         *(["--adopt"] if adopting else [])],
        parent=parent,
        triggers=[str(ct.vm_id)],
        # it runs once, before the first create; --adopt (or not) later must not re-run it
        ignore_changes=["stdin"],
    )
    init: dict = {"hostname": ct.hostname, "ip_configs": [{"ipv4": ip}]}
    if cfg.network.dns:
        init["dns"] = {"servers": list(cfg.network.dns)}
    return proxmoxve.ContainerLegacy(
        name,
        node_name=node.node_name,
        vm_id=ct.vm_id,
        description=f"{ct.hostname}: {MANAGED_MARKER}",
        unprivileged=unprivileged,
        started=True,
        start_on_boot=ct.start_on_boot,
        cpu={"cores": ct.cores},
        memory={"dedicated": ct.memory, "swap": ct.swap},
        disk={"datastore_id": ct.datastore, "size": ct.disk_gb},
        features={"nesting": True},
        mount_points=mount_points,
        device_passthroughs=device_passthroughs,
        network_interfaces=[{"name": "eth0", "bridge": cfg.network.bridge, "firewall": False}],
        initialization=init,
        operating_system={"template_file_id": template_file_id, "type": "debian"},
        hook_script_file_id=hook_script_file_id,
        opts=pulumi.ResourceOptions(
            parent=parent,
            provider=node.provider,
            delete_before_replace=True,
            depends_on=[*depends_on, guard],
            # a mount point, datastore or smaller disk change replaces the container (bpg's provider),
            # and the old one is deleted first: MediaHost's recreate guard refuses that unless
            # <key>.allowRecreate is set (scripts/host-ct-recreate-guard.sh)
            # the template matters only at create; a newer one must not wipe a running
            # container (rebuild on purpose with `pulumi up --replace <urn>`)
            ignore_changes=["operatingSystem"],
        ),
    )


def raw_lines_step(
    name: str,
    vmid: int,
    lines: pulumi.Input[list[str]],
    node: Node,
    cfg: StackConfig,
    parent: pulumi.Resource,
    container: pulumi.Resource,
):
    """Write the wanted raw lines into the main section of the conf; restart only on change."""
    stdin = pulumi.Output.from_input(lines).apply(lambda ls: "".join(f"{line}\n" for line in ls))
    # a restart with the pool unmounted would bind the empty directory under it
    mount = ["--require-mount", cfg.storage.pool] if cfg.storage.require_mount else []
    return run_script(
        f"{name}-raw-lines",
        node,
        "pve-ct-raw.sh",
        # lines come from the hookscript when it has this container: a re-run never undoes it
        ["--vmid", str(vmid), *mount, "--hook-dir", render.HOOK_DIR],
        stdin=stdin,
        extra_scripts=["pve-lxc-raw.sh"],
        parent=parent,
        depends_on=[container],
        replace_with=[container],
    )


def verify_step(
    name: str,
    script: str,
    vmid: int,
    cfg: StackConfig,
    node: Node,
    parent: pulumi.Resource,
    raw: pulumi.Resource,
    bootstrap: pulumi.Resource,
    container: pulumi.Resource,
    extra_args: Sequence[str] = (),
):
    """Run a verification script in the container as the media user; `strict` fails the deployment.

    The proof is redone when what it proves changed: the device lines or the bootstrap.
    """
    args = ["--user", cfg.media.user, *extra_args] + (["--strict"] if cfg.verify.strict else [])
    return run_script(
        name,
        node,
        script,
        args,
        vmid=vmid,
        parent=parent,
        depends_on=[bootstrap],
        # (stdin is None for a step an `up --target` leaves out: tools/adopt-containers.sh)
        triggers=[raw.stdin.apply(lambda s: render.sha256(s or "")),
                  bootstrap.stdin.apply(lambda s: render.sha256(s or ""))],
        replace_with=[container],
    )
