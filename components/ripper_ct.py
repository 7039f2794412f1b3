"""RipperCT: privileged LXC with the optical drive, MakeMKV, and drive proof."""

from __future__ import annotations

from typing import Any

import pulumi

from . import render
from .config import StackConfig
from .container import privileged_container, raw_lines_step, verify_step
from .media_host import MediaHost
from .monitoring_render import metrics_endpoints
from .remote import Node, run_script


class RipperCT(pulumi.ComponentResource):
    raw_lines: pulumi.Output[list[str]]
    drive: pulumi.Output[dict[str, Any]]
    rip: pulumi.Output[dict[str, Any]]

    def __init__(
        self,
        name: str,
        cfg: StackConfig,
        node: Node,
        host: MediaHost,
        makemkv_key: pulumi.Input[str] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("homelab:index:RipperCT", name, None, opts)
        ct = cfg.ripper
        self.vm_id = ct.vm_id
        self.container = privileged_container(
            name, ct, cfg, node, host.template_file_id, parent=self, depends_on=[host.recreate_guard, host.setup, host.hookscript]
        )
        # the user's own lines (extraRawLines) and the LXC hook line ride along; the hookscript keeps them at every start
        self.raw_lines = host.discovery.apply(lambda d: render.container_lines(render.drive_lines(d), ct.extra_raw_lines))
        self.raw = raw_lines_step(name, ct.vm_id, self.raw_lines, node, cfg, self, self.container)

        m, mk = cfg.media, cfg.makemkv
        args = [
            "--user", m.user, "--uid", str(m.uid), "--gid", str(m.gid),
            "--cdrom-gid", str(cfg.host_groups.cdrom),
            "--staging", cfg.storage.staging_path,
            "--makemkv-version", mk.version,
            "--makemkv-url", mk.base_url,
        ]
        if not mk.install:
            args.append("--skip-makemkv")
        stdin = None
        if makemkv_key is not None:
            args.append("--makemkv-key-stdin")
            stdin = makemkv_key
        self.bootstrap = run_script(
            f"{name}-bootstrap",
            node,
            "ct-bootstrap-ripper.sh",
            args,
            stdin=stdin,
            extra_scripts=["ct-media-user.sh", "makemkv-versions.txt"],
            vmid=ct.vm_id,
            parent=self,
            depends_on=[self.raw],
            secret_stdin=makemkv_key is not None,
            replace_with=[self.container],
        )

        self.verify = verify_step(
            f"{name}-verify-drive", "verify-drive.sh", ct.vm_id, cfg, node, self, self.raw, self.bootstrap,
            self.container,
        )
        self.drive = self.verify.stdout.apply(lambda s: render.parse_json_output(s, "drive verification"))

        # media-rip: the same package and installer as media-pipeline in the transcoder (docs/adr/0007)
        # media-rip looks the drive up at every poll by the hook's rule (devices.opticalDrive): a
        # reboot that swaps sr0/sr1 changes nothing; ripper.device pins a fixed node instead
        discovered = host.discovery.apply(lambda d: render.rip_device(d, None))
        rip_metrics = metrics_endpoints(cfg)["rip"]
        self.install_rip = run_script(
            f"{name}-media-rip",
            node,
            "ct-install-pipeline.sh",
            [
                "--role", "ripper",
                "--tarball", render.PIPELINE_TARBALL,
                "--user", m.user,
                "--staging", cfg.storage.staging_path,
                "--drive", cfg.devices.optical_drive,
                *(["--device", ct.device] if ct.device else []),
                "--min-length", str(ct.min_length),
                "--auto-rip", "true" if ct.auto_rip else "false",
                "--eject", "true" if ct.eject else "false",
                "--drive-gid", str(cfg.host_groups.cdrom),
                "--metrics-port", str(rip_metrics.port),
                "--metrics-bind", rip_metrics.bind,
                # only the monitoring container may scrape it beyond loopback (monitoring.enabled)
                *(["--metrics-allow", ",".join(rip_metrics.allow)] if rip_metrics.allow else []),
                "--rip-status", cfg.storage.rip_status_path,  # the transcoder's status page reads it
            ],
            files={render.PIPELINE_TARBALL: render.pipeline_tarball()},
            vmid=ct.vm_id,
            parent=self,
            depends_on=[self.bootstrap],
            replace_with=[self.container],
        )
        settings = {"minLength": ct.min_length, "autoRip": ct.auto_rip, "eject": ct.eject}
        self.rip = pulumi.Output.all(self.install_rip.stdout, discovered).apply(
            lambda v: {**render.parse_json_output(v[0], "media-rip install"), "drive": cfg.devices.optical_drive,
                       "device": ct.device, "discovered": v[1], **settings}
        )
        self.register_outputs({"vmId": ct.vm_id, "rawLines": self.raw_lines, "drive": self.drive, "rip": self.rip})
