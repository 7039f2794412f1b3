"""TranscoderCT: privileged LXC with the GPU, ffmpeg/HandBrake, the media pipeline, GPU proof."""

from __future__ import annotations

from typing import Any

import pulumi

from . import render
from .config import StackConfig
from .container import privileged_container, raw_lines_step, verify_step
from .media_host import MediaHost
from .monitoring_render import metrics_endpoints
from .queue_ct import QueueLink, deliver_queue_password, worker_proof
from .remote import Node, run_script

GPU_PROOF = render.GPU_PROOF


class TranscoderCT(pulumi.ComponentResource):
    raw_lines: pulumi.Output[list[str]]
    gpu: pulumi.Output[dict[str, Any]]
    pipeline: pulumi.Output[dict[str, Any]]

    def __init__(
        self,
        name: str,
        cfg: StackConfig,
        node: Node,
        host: MediaHost,
        status_password: pulumi.Input[str] | None = None,
        queue: QueueLink | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ):
        """`queue`: the shared PostgreSQL queue (QueueCT.link) when homelab-media:workers is set."""
        super().__init__("homelab:index:TranscoderCT", name, None, opts)
        ct = cfg.transcoder
        self.vm_id = ct.vm_id
        self.container = privileged_container(
            name, ct, cfg, node, host.template_file_id, parent=self, depends_on=[host.recreate_guard, host.setup, host.hookscript]
        )
        # the user's own lines (extraRawLines) and the LXC hook line ride along; the hookscript keeps them at every start
        self.raw_lines = host.discovery.apply(lambda d: render.container_lines(render.gpu_lines(d), ct.extra_raw_lines))
        self.raw = raw_lines_step(name, ct.vm_id, self.raw_lines, node, cfg, self, self.container)

        # the GPU the pipeline will use: its kernel driver decides if Debian 12's stack can drive it
        self.bootstrap = transcode_bootstrap(name, cfg, node, ct.vm_id, cfg.encoding.qsv_device, self, self.raw,
                                             self.container)

        enc = cfg.encoding
        metrics = metrics_endpoints(cfg)["pipeline"]
        # with homelab-media:workers, worker 1 too takes its jobs from the shared queue (docs/adr/0017)
        self.queue_password = None
        pre: list[pulumi.Resource] = [self.bootstrap]
        if queue is not None:
            self.queue_password = deliver_queue_password(name, cfg, node, ct.vm_id, queue, self, self.bootstrap,
                                                         self.container)
            pre.append(self.queue_password)
        self.install_pipeline = run_script(
            f"{name}-pipeline",
            node,
            "ct-install-pipeline.sh",
            [
                *render.pipeline_args(cfg, encoder=enc.encoder, preset=enc.preset, crf=enc.crf,
                                      qsv_device=enc.qsv_device, metrics=metrics, web=True,
                                      queue_url=queue.url if queue else None, worker_name=ct.hostname),
                # the page's password travels like makemkvKey: secret stdin, never argv
                *(["--web-password-stdin"] if status_password is not None else []),
            ],
            stdin=status_password,
            secret_stdin=status_password is not None,
            files={render.PIPELINE_TARBALL: render.pipeline_tarball()},
            vmid=ct.vm_id,
            parent=self,
            depends_on=pre,
            replace_with=[self.container],
        )

        qsv = ["--render-node", enc.qsv_device] if enc.qsv_device else []
        qsv += ["--save", GPU_PROOF]
        self.verify = verify_step(
            f"{name}-verify-gpu", "verify-gpu.sh", ct.vm_id, cfg, node, self, self.raw, self.bootstrap, self.container,
            extra_args=qsv,
        )
        self.gpu = self.verify.stdout.apply(lambda s: render.parse_json_output(s, "GPU verification"))
        self.worker = None
        if queue is not None:
            self.verify_queue, self.worker = worker_proof(
                name, cfg, node, vmid=ct.vm_id, worker_name=ct.hostname, hostname=ct.hostname,
                encoder=enc.encoder, gpu=self.gpu, parent=self, install=self.install_pipeline,
                container=self.container)
        self.pipeline = self.install_pipeline.stdout.apply(
            lambda s: render.parse_json_output(s, "pipeline install")
        )
        self.register_outputs({"vmId": ct.vm_id, "rawLines": self.raw_lines, "gpu": self.gpu, "pipeline": self.pipeline})


def transcode_bootstrap(name: str, cfg: StackConfig, node: Node, vmid: int, render_node: str | None,
                        parent: pulumi.Resource, raw: pulumi.Resource, container: pulumi.Resource):
    """ct-bootstrap-transcoder.sh in a transcode worker (the transcoder or a WorkerCT): the media user
    with the node's ids, the device groups, ffmpeg and the GPU's media stack for `render_node`."""
    g, m = cfg.host_groups, cfg.media
    return run_script(
        f"{name}-bootstrap",
        node,
        "ct-bootstrap-transcoder.sh",
        ["--user", m.user, "--uid", str(m.uid), "--gid", str(m.gid),
         "--video-gid", str(g.video), "--render-gid", str(g.render),
         *(["--render-node", render_node] if render_node else [])],
        extra_scripts=["ct-media-user.sh"],
        vmid=vmid,
        parent=parent,
        depends_on=[raw],
        replace_with=[container],
    )


def deliver_jellyfin_key(name: str, cfg: StackConfig, node: Node, transcoder: pulumi.ComponentResource,
                         api_key: pulumi.Input[str], after: pulumi.Resource):
    """Jellyfin's API key (made by JellyfinCT's configure step) into a transcode worker (the
    transcoder or a WorkerCT), where media-pipeline reads it at each library refresh: secret stdin
    to a 0600 file of the media user."""
    return run_script(
        f"{name}-jellyfin-key",
        node,
        "ct-secret-file.sh",
        ["--path", "/etc/media-pipeline/jellyfin.key", "--owner", cfg.media.user],
        stdin=api_key,
        secret_stdin=True,
        vmid=transcoder.vm_id,
        parent=transcoder,
        depends_on=[transcoder.install_pipeline, after],
        replace_with=[transcoder.container],
    )
