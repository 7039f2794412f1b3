"""WorkerCT: one extra transcode worker of homelab-media:workers (docs/adr/0017).

A privileged LXC like the transcoder (the pool bind-mounted at the same path, the node's GPU
through raw device lines unless gpu is none), on any node of the stack, running media-pipeline
on the shared PostgreSQL queue: no status page of its own (worker 1's shows every worker), its
/metrics like the transcoder's. Its GPU proof (verify-gpu.sh) is part of the output `workers`.
"""

from __future__ import annotations

from typing import Any

import pulumi

from . import render
from .config import StackConfig, WorkerConfig
from .container import privileged_container, raw_lines_step, verify_step
from .media_host import MediaHost
from .monitoring_render import worker_metrics_endpoint
from .queue_ct import QueueLink, deliver_queue_password, worker_proof
from .remote import Node, run_script
from .transcoder_ct import transcode_bootstrap


class WorkerCT(pulumi.ComponentResource):
    raw_lines: pulumi.Output[list[str]]
    gpu: pulumi.Output[dict[str, Any]]
    pipeline: pulumi.Output[dict[str, Any]]

    def __init__(
        self,
        name: str,
        cfg: StackConfig,
        worker: WorkerConfig,
        node: Node,
        host: MediaHost,
        queue: QueueLink,
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("homelab:index:WorkerCT", name, None, opts)
        w = worker
        self.vm_id = w.vm_id
        self.name = w.name
        self.node_name = node.node_name
        self.container = privileged_container(
            name, w, cfg, node, host.template_file_id, parent=self,
            depends_on=[g for g in (host.recreate_guard, host.setup, host.hookscript) if g is not None],
        )
        use_gpu = w.gpu != "none"
        self.raw_lines = host.discovery.apply(
            lambda d: render.container_lines(render.gpu_lines(d) if use_gpu else [], w.extra_raw_lines))
        self.raw = raw_lines_step(name, w.vm_id, self.raw_lines, node, cfg, self, self.container)

        self.bootstrap = transcode_bootstrap(name, cfg, node, w.vm_id, w.render_node, self, self.raw, self.container)
        self.queue_password = deliver_queue_password(name, cfg, node, w.vm_id, queue, self, self.bootstrap,
                                                     self.container)
        enc = cfg.encoding
        self.install_pipeline = run_script(
            f"{name}-pipeline",
            node,
            "ct-install-pipeline.sh",
            render.pipeline_args(
                cfg, encoder=w.encoder, preset=w.preset if w.preset is not None else enc.preset,
                crf=w.crf if w.crf is not None else enc.crf,
                qsv_device=w.render_node or (enc.qsv_device if w.gpu == "auto" else None),
                metrics=worker_metrics_endpoint(cfg, w), web=False, queue_url=queue.url, worker_name=w.name),
            files={render.PIPELINE_TARBALL: render.pipeline_tarball()},
            vmid=w.vm_id,
            parent=self,
            depends_on=[self.bootstrap, self.queue_password],
            replace_with=[self.container],
        )
        self.gpu: pulumi.Output[dict[str, Any]]
        if use_gpu:
            args = ["--render-node", w.render_node] if w.render_node else []
            self.verify = verify_step(
                f"{name}-verify-gpu", "verify-gpu.sh", w.vm_id, cfg, node, self, self.raw, self.bootstrap,
                self.container, extra_args=[*args, "--save", render.GPU_PROOF],
            )
            self.gpu = self.verify.stdout.apply(lambda s: render.parse_json_output(s, "GPU verification"))
        else:
            self.gpu = pulumi.Output.from_input({"ok": None, "reason": "gpu none: this worker encodes with libx265"})
        # the worker's proof: it reaches the queue (media-pipeline workers --json), and its GPU's above
        self.verify_queue, self.summary = worker_proof(
            name, cfg, node, vmid=w.vm_id, worker_name=w.name, hostname=w.hostname, encoder=w.encoder,
            gpu=self.gpu, parent=self, install=self.install_pipeline, container=self.container)
        self.register_outputs({"vmId": w.vm_id, "rawLines": self.raw_lines, "worker": self.summary})
