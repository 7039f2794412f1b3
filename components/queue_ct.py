"""QueueCT: the workers' one queue, Debian 12's PostgreSQL in an unprivileged LXC (docs/adr/0017).

Deployed only when homelab-media:workers is set. No pool: its one mount is queue.backupDir, where a
pg_dump timer writes. pg_hba admits the role from the workers' addresses only (the transcoder and
each worker). The password is homelab-media:queuePassword, or one the container makes at the first
deploy; either way it is a secret the stack hands to each worker as db_password_file, never argv.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import pulumi

from . import render
from .config import StackConfig
from .container import unprivileged_container
from .media_host import MediaHost
from .remote import Node, run_script


@dataclass
class QueueLink:
    """What a worker needs of the queue: its URL (no password), the password (a secret), and the
    step after which PostgreSQL admits the workers."""

    url: str
    password: pulumi.Output[str]
    ready: pulumi.Resource


class QueueCT(pulumi.ComponentResource):
    queue: pulumi.Output[dict[str, Any]]

    def __init__(
        self,
        name: str,
        cfg: StackConfig,
        node: Node,
        host: MediaHost,
        password: pulumi.Input[str] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ):
        """`password`: homelab-media:queuePassword (a secret), or None to let the container make one."""
        super().__init__("homelab:index:QueueCT", name, None, opts)
        q, st = cfg.queue, cfg.storage
        self.vm_id = q.vm_id
        # its backup folder on the pool, owned by the container's root (PVE's idmap), made before the
        # container binds it: only that folder, never the pool's media folders
        self.backup_dir = run_script(
            f"{name}-backup-dir",
            node,
            "host-ct-dir.sh",
            ["--pool", st.pool, "--dir", q.backup_dir, "--not", st.staging, "--not", st.movies, "--not", st.tv],
            parent=self,
            depends_on=[host.pool_check],
        )
        self.container = unprivileged_container(
            name, q, cfg, node, host.template_file_id, parent=self,
            depends_on=[g for g in (host.recreate_guard, host.pool_check, self.backup_dir) if g is not None],
            mount_points=render.queue_mount_points(q, st),
        )
        self.password_step = run_script(
            f"{name}-password",
            node,
            "ct-queue-password.sh",
            ["--from-stdin"] if password is not None else [],
            stdin=password,
            secret_stdin=password is not None,
            secret_stdout=True,  # stdout is the password
            vmid=q.vm_id,
            parent=self,
            depends_on=[self.container],
            replace_with=[self.container],
        )
        self.password = pulumi.Output.secret(self.password_step.stdout.apply(lambda s: (s or "").strip()))
        allowed = [cfg.transcoder.ipv4.split("/")[0]] + [w.ipv4.split("/")[0] for w in cfg.workers]
        self.install = run_script(
            f"{name}-postgresql",
            node,
            "ct-install-queue.sh",
            ["--listen", q.address or "", *[a for ip in allowed for a in ("--allow", ip)],
             "--port", str(q.port), "--database", q.database, "--role", q.user,
             "--backup-dir", render.QUEUE_BACKUP_MOUNT, "--on-calendar", q.backup_on_calendar,
             "--keep", str(q.backup_keep)],
            stdin=self.password,
            secret_stdin=True,
            vmid=q.vm_id,
            parent=self,
            depends_on=[self.password_step],
            replace_with=[self.container],
        )
        self.url = render.queue_url(q)
        self.summary = self.install.stdout.apply(lambda s: render.parse_json_output(s, "queue install"))
        self.register_outputs({"vmId": q.vm_id, "url": self.url, "queue": self.summary})

    @property
    def link(self) -> QueueLink:
        return QueueLink(url=self.url, password=self.password, ready=self.install)


def deliver_queue_password(name: str, cfg: StackConfig, node: Node, vmid: int, queue: QueueLink,
                           parent: pulumi.Resource, after: pulumi.Resource, container: pulumi.Resource):
    """The queue's password into a worker, as db_password_file (0600 media): secret stdin, never argv."""
    return run_script(
        f"{name}-queue-password",
        node,
        "ct-secret-file.sh",
        ["--path", render.QUEUE_PASSWORD_FILE, "--owner", cfg.media.user, "--make-dir"],
        stdin=queue.password,
        secret_stdin=True,
        vmid=vmid,
        parent=parent,
        depends_on=[after, queue.ready],
        replace_with=[container],
    )


def worker_proof(name: str, cfg: StackConfig, node: Node, *, vmid: int, worker_name: str, hostname: str,
                 encoder: str, gpu: pulumi.Input[dict[str, Any]], parent: pulumi.Resource,
                 install: pulumi.Resource, container: pulumi.Resource):
    """A worker's proof that it reaches the queue (verify-queue.sh: listed healthy through pg_hba),
    redone when its install changed; and its entry of the output `workers`. Returns (step, entry)."""
    step = run_script(
        f"{name}-verify-queue",
        node,
        "verify-queue.sh",
        ["--user", cfg.media.user, "--worker-name", worker_name],
        vmid=vmid,
        parent=parent,
        depends_on=[install],
        triggers=[install.stdin.apply(lambda s: render.sha256(s or ""))],
        replace_with=[container],
    )
    entry = pulumi.Output.all(gpu, step.stdout).apply(lambda v: {
        "name": worker_name, "node": node.node_name, "vmId": vmid, "hostname": hostname,
        "encoder": encoder, "gpu": v[0], "queue": render.parse_json_output(v[1], "queue check")})
    return step, entry


def queue_output(cfg: StackConfig, install: dict[str, Any], proofs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The stack output `queue`: where it is, its version, and whether every worker reached it.
    `proofs`: each worker's verify-queue.sh output (worker 1's first)."""
    q = cfg.queue
    reached = [p for p in proofs if (p or {}).get("reachable") is True]
    return {
        "address": f"{q.address}:{q.port}",
        "database": q.database,
        "version": install.get("version"),
        "backupDir": cfg.storage.path(q.backup_dir),
        "lastBackup": install.get("lastBackup"),
        "allowed": install.get("allowed"),
        "reachable": bool(proofs) and len(reached) == len(proofs),
        "workersReaching": len(reached),
        "workers": len(proofs),
    }
