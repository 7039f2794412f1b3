"""homelab-media: a Proxmox VE node as a Blu-ray rip-and-transcode pipeline.

Wiring only: config is validated first (components.config), then the node's side
(MediaHost), then the two privileged containers. See README for the outputs.
"""

import sys

import pulumi
import pulumi_command as command
import pulumi_proxmoxve as proxmoxve

from components.config import ConfigError, page_urls
from components.jellyfin_ct import JellyfinCT, pve_release_problem
from components.media_host import MediaHost
from components.monitoring_ct import MonitoringCT
from components.preflight import ssh_problem
from components.queue_ct import QueueCT, queue_output
from components.remote import Node
from components.ripper_ct import RipperCT
from components.stack import load
from components.transcoder_ct import TranscoderCT, deliver_jellyfin_key
from components.worker_ct import WorkerCT

try:
    inputs = load()
except ConfigError as exc:
    # Refused before any resource is declared: one line per problem, naming the key.
    for message in exc.messages:
        pulumi.log.error(message)
    sys.exit(1)

cfg = inputs.cfg
if not pulumi.runtime.is_dry_run():
    # Before any remote step: a node that does not answer fails now, naming ssh.host/ssh.port
    # (pulumi-command's dial timeout does not cover a silent SSH handshake). Preview stays offline.
    problem = ssh_problem(cfg.ssh.host, cfg.ssh.port, cfg.ssh.per_dial_timeout, cfg.ssh.dial_error_limit)
    for i, extra in enumerate(cfg.nodes):  # homelab-media:nodes: each by its own key
        problem = problem or ssh_problem(extra.ssh.host, extra.ssh.port, extra.ssh.per_dial_timeout,
                                         extra.ssh.dial_error_limit, key=f"nodes[{i}].ssh")
    if problem:
        pulumi.log.error(problem)
        sys.exit(1)
provider = proxmoxve.Provider(
    "pve",
    endpoint=cfg.proxmox.endpoint,
    insecure=cfg.proxmox.insecure,
    username=cfg.proxmox.username,
    password=inputs.proxmox_password,
)
if cfg.jellyfin.enabled and not pulumi.runtime.is_dry_run():
    # Jellyfin's GPU is PVE's devN (8.1+): the node's release, asked of the API before anything is
    # declared on the node (a preview stays offline, like the SSH check)
    problem = pve_release_problem(cfg, provider)
    if problem:
        pulumi.log.error(problem)
        sys.exit(1)


def node_of(name: str, ssh) -> Node:
    """A node of the cluster: SSH to it, and the one API (any node answers for the cluster)."""
    return Node(
        connection=command.remote.ConnectionArgs(
            host=ssh.host,
            port=ssh.port,
            user=ssh.user,
            private_key=inputs.ssh_private_key,
            dial_error_limit=ssh.dial_error_limit,
            per_dial_timeout=ssh.per_dial_timeout,
        ),
        provider=provider,
        node_name=name,
    )


node = node_of(cfg.proxmox.node, cfg.ssh)
host = MediaHost("media-host", cfg, node)
# homelab-media:nodes: each gets what the stack's node gets, for the workers put there
nodes = {cfg.proxmox.node: (node, host)}
for extra in cfg.nodes:
    extra_node = node_of(extra.name, extra.ssh)
    nodes[extra.name] = (extra_node, MediaHost(f"media-host-{extra.name}", cfg, extra_node))

queue = None
if cfg.workers:  # many workers, one queue (docs/adr/0017); none: exactly what a single worker had
    q_node, q_host = nodes[cfg.queue.node or cfg.proxmox.node]
    queue = QueueCT("queue", cfg, q_node, q_host, password=inputs.queue_password)
transcoder = TranscoderCT("transcoder", cfg, node, host, status_password=inputs.status_password,
                          queue=queue.link if queue else None)
workers = []
for w in cfg.workers:
    w_node, w_host = nodes[w.node or cfg.proxmox.node]
    workers.append(WorkerCT(f"worker-{w.name}", cfg, w, w_node, w_host, queue.link))
ripper = RipperCT("ripper", cfg, node, host, makemkv_key=inputs.makemkv_key)
jellyfin = None
if cfg.jellyfin.enabled:
    jellyfin = JellyfinCT("jellyfin", cfg, node, host, admin_password=inputs.jellyfin_admin_password)
    deliver_jellyfin_key("transcoder", cfg, node, transcoder, jellyfin.api_key, jellyfin.configure)
    for worker in workers:  # every worker publishes, so every worker tells Jellyfin
        deliver_jellyfin_key(f"worker-{worker.name}", cfg, nodes[worker.node_name][0], worker, jellyfin.api_key,
                             jellyfin.configure)

pulumi.export("pool", host.pool)
pulumi.export("mediaUser", host.media_user)
pulumi.export("devices", host.discovery)
pulumi.export("transcoder", {"vmId": transcoder.vm_id, "hostname": cfg.transcoder.hostname, "rawLines": transcoder.raw_lines})
pulumi.export("ripper", {"vmId": ripper.vm_id, "hostname": cfg.ripper.hostname, "rawLines": ripper.raw_lines})
pulumi.export("gpuVerification", transcoder.gpu)
pulumi.export("driveVerification", ripper.drive)
pulumi.export("pipeline", transcoder.pipeline)
pulumi.export("rip", ripper.rip)
if cfg.monitoring.enabled:
    monitoring = MonitoringCT(
        "monitoring", cfg, node, host,
        secrets={"grafanaAdminPassword": inputs.grafana_admin_password, **inputs.alert_secrets},
        # the proof counts targets up: after what they scrape is (re)started
        scraped=[transcoder.install_pipeline, ripper.install_rip, *[w.install_pipeline for w in workers],
                 *([host.node_exporter] if host.node_exporter else [])],
    )
    pulumi.export("monitoring", monitoring.monitoring)
urls = page_urls(cfg)
pulumi.export("statusPage", urls["page"])
pulumi.export("metricsUrl", urls["metrics"])
if jellyfin is not None:
    pulumi.export("jellyfinVerification", jellyfin.verification)
    pulumi.export("jellyfinApiKey", jellyfin.api_key)  # a secret: `pulumi stack output --show-secrets jellyfinApiKey`
if queue is not None:
    # worker 1 proves it reaches the queue like the others (its page lists every worker)
    pulumi.export("workers", pulumi.Output.all(transcoder.worker, *[w.summary for w in workers]))
    pulumi.export("queue", pulumi.Output.all(queue.summary, transcoder.worker, *[w.summary for w in workers]).apply(
        lambda v: queue_output(cfg, v[0], [x["queue"] for x in v[1:]])))
