"""MediaHost: the Proxmox node's side of the pipeline.

Pool check (stops the deployment before any container binds an unmounted pool), the
media user and the pipeline's directories (never the whole pool), discovery of the
GPU and optical drive nodes, the containers' hookscript (the same checks at every start),
and the container template.
"""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_proxmoxve as proxmoxve

from . import render
from .config import StackConfig
from .monitoring_render import node_exporter_listen
from .remote import Node, run_script


def workers_on(cfg: StackConfig, node_name: str) -> list[tuple[str, Any]]:
    """(stack key, WorkerConfig) of the workers homelab-media:workers puts on that node."""
    return [(f"workers[{i}]", w) for i, w in enumerate(cfg.workers) if (w.node or cfg.proxmox.node) == node_name]


class MediaHost(pulumi.ComponentResource):
    pool: pulumi.Output[dict[str, Any]]
    media_user: pulumi.Output[dict[str, Any]]
    discovery: pulumi.Output[dict[str, Any]]
    template_file_id: pulumi.Output[str]

    def __init__(self, name: str, cfg: StackConfig, node: Node, opts: pulumi.ResourceOptions | None = None):
        """On the stack's node (proxmox.node): the transcoder, the ripper and whichever of Jellyfin,
        monitoring, the queue and the workers are there. On another node of homelab-media:nodes: that
        node's workers (and the queue, when queue.node names it)."""
        super().__init__("homelab:index:MediaHost", name, None, opts)
        st = cfg.storage
        main = node.node_name == cfg.proxmox.node
        workers = workers_on(cfg, node.node_name)
        queue_here = bool(cfg.workers) and (cfg.queue.node or cfg.proxmox.node) == node.node_name

        # first of all: a config edit the provider can only apply by deleting a container (its
        # disk: the job and rip databases, MakeMKV's settings) stops the up, naming the key
        # (Jellyfin's container, when enabled, with its own read-only mounts instead of the pool)
        jf = cfg.jellyfin
        guard_args: list[str] = []
        if main:
            guard_args += [a for key, ct in (("transcoder", cfg.transcoder), ("ripper", cfg.ripper))
                           for a in ("--ct", render.recreate_spec(key, ct))]
            if jf.enabled:
                guard_args += ["--ct", render.recreate_spec("jellyfin", jf)]
                guard_args += [a for mp in render.jellyfin_recreate_mps(jf.vm_id, st) for a in ("--mp", mp)]
            if cfg.monitoring.enabled:
                guard_args += ["--ct", render.recreate_spec("monitoring", cfg.monitoring, pool=False)]
        guard_args += [a for key, w in workers for a in ("--ct", render.recreate_spec(key, w))]
        if queue_here:
            guard_args += ["--ct", render.recreate_spec("queue", cfg.queue)]
            guard_args += [a for mp in render.queue_recreate_mps(cfg.queue, st) for a in ("--mp", mp)]
        self.recreate_guard = None
        if guard_args:
            self.recreate_guard = run_script(
                f"{name}-recreate-guard",
                node,
                "host-ct-recreate-guard.sh",
                ["--pool", st.pool, "--node", node.node_name, "--marker", render.MANAGED_MARKER, *guard_args],
                parent=self,
            )

        pool_args = ["--pool", st.pool] + ([] if st.require_mount else ["--no-require-mount"])
        self.pool_check = run_script(
            f"{name}-pool-check", node, "host-check-pool.sh", pool_args, parent=self,
            depends_on=[self.recreate_guard] if self.recreate_guard else [],
        )

        groups = cfg.host_groups
        self.setup = run_script(
            f"{name}-media-user",
            node,
            "host-setup.sh",
            [
                "--user", cfg.media.user,
                "--uid", str(cfg.media.uid),
                "--gid", str(cfg.media.gid),
                "--groups", f"video:{groups.video},render:{groups.render},cdrom:{groups.cdrom}",
                "--pool", st.pool,
                "--dirs", ",".join([st.staging, st.movies, st.tv]),
            ],
            parent=self,
            depends_on=[self.pool_check],
        )

        self.discover = run_script(
            f"{name}-discover",
            node,
            "host-discover.sh",
            ["--optical-drive", cfg.devices.optical_drive],
            parent=self,
            depends_on=[self.pool_check],
            triggers=[str(cfg.devices.rediscover)],
        )

        # every container start checks the pool and resolves the devices anew (docs/adr/0009)
        hooked = ([(cfg.transcoder, "gpu"), (cfg.ripper, "drive")] if main else []) + [
            (w, "none" if w.gpu == "none" else "gpu") for _, w in workers]
        hook_args = [
            "--storage", cfg.node.snippets_storage,
            *[a for ct, role in hooked for a in ("--ct", f"{ct.vm_id}:{role}")],
            "--pool", st.pool,
            "--optical-drive", cfg.devices.optical_drive,
        ] + ([] if st.require_mount else ["--no-require-mount"])
        self.hookscript = None if not hooked else run_script(
            f"{name}-hookscript",
            node,
            "host-hookscript.sh",
            hook_args,
            stdin="".join(f"{ct.vm_id} {line}\n" for ct, _ in hooked for line in ct.extra_raw_lines),
            extra_scripts=["pve-hookscript.sh", "pve-lxc-raw.sh"],
            parent=self,
            depends_on=[self.pool_check],
        )

        # node_exporter for the monitoring container: the node's CPU, memory and disks
        self.node_exporter = None
        if cfg.monitoring.enabled and main:
            self.node_exporter = run_script(
                f"{name}-node-exporter",
                node,
                "host-node-exporter.sh",
                ["--listen", node_exporter_listen(cfg)],
                parent=self,
                depends_on=[self.pool_check],
            )

        tpl = cfg.template
        self.template = proxmoxve.download.File(
            f"{name}-template",
            content_type="vztmpl",
            datastore_id=tpl.datastore,
            node_name=node.node_name,
            url=tpl.url,
            file_name=tpl.file_name,
            checksum=tpl.checksum,
            checksum_algorithm=tpl.checksum_algorithm if tpl.checksum else None,
            overwrite=False,
            overwrite_unmanaged=True,
            opts=pulumi.ResourceOptions(parent=self, provider=node.provider, retain_on_delete=True),
        )

        self.pool = self.pool_check.stdout.apply(lambda s: render.parse_json_output(s, "pool check"))
        self.media_user = self.setup.stdout.apply(lambda s: render.parse_json_output(s, "media user"))
        self.discovery = self.discover.stdout.apply(lambda s: render.parse_json_output(s, "discovery"))
        self.template_file_id = self.template.id
        self.register_outputs(
            {
                "pool": self.pool,
                "mediaUser": self.media_user,
                "discovery": self.discovery,
                "templateFileId": self.template_file_id,
            }
        )
