"""Wiring helper: run one of scripts/ on the node (or inside a container) as a remote Command.

Every step is `bash -s` over SSH to the node as root, with a bundle (components.render)
on stdin; inside a container it is `pct exec <vmid> -- bash -s` (containers need no sshd).
The content hash of the bundled scripts is a trigger, so a step re-runs only when its
script or inputs change, and never during preview.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import pulumi
import pulumi_command as command

from . import render


@dataclass(frozen=True)
class Node:
    """How to reach the Proxmox node: SSH connection (secret key) and the API provider."""

    connection: command.remote.ConnectionArgs
    provider: pulumi.ProviderResource
    node_name: str


def content_hash(script: str, extra_scripts: Iterable[str] = (), files: Mapping[str, bytes] | None = None) -> str:
    """A step's trigger: the files it ships from scripts/ (the script, its siblings and only the
    helpers they source) and its extra files."""
    return render.sha256(
        render.scripts_hash(*extra_scripts, script), *(render.sha256(k, v) for k, v in sorted((files or {}).items()))
    )


def run_script(
    name: str,
    node: Node,
    script: str,
    args: pulumi.Input[Sequence[str]] = (),
    stdin: pulumi.Input[str] | None = None,
    extra_scripts: Iterable[str] = (),
    files: Mapping[str, bytes] | None = None,
    vmid: int | None = None,
    parent: pulumi.Resource | None = None,
    depends_on: Sequence[pulumi.Resource] = (),
    triggers: Sequence[pulumi.Input[str]] = (),
    secret_stdin: bool = False,
    replace_with: Sequence[pulumi.Resource] = (),
    ignore_changes: Sequence[str] = (),
    secret_stdout: bool = False,
) -> command.remote.Command:
    extra = tuple(extra_scripts)
    files = dict(files or {})

    def _render(values: list) -> str:
        a, s = values
        return render.bundle(script, list(a), s, extra, files)

    text = pulumi.Output.all(args, stdin).apply(_render)
    if secret_stdin:
        text = pulumi.Output.secret(text)
    where = "bash -s" if vmid is None else f"pct exec {vmid} -- bash -s"
    content = content_hash(script, extra, files)
    return command.remote.Command(
        name,
        connection=node.connection,
        create=where,
        stdin=text,
        triggers=[content, *triggers],
        # a step whose stdout carries a secret (an API key): kept as a secret, never logged
        logging=command.remote.Logging.STDERR if secret_stdout else None,
        opts=pulumi.ResourceOptions(
            additional_secret_outputs=["stdout"] if secret_stdout else None,
            parent=parent,
            depends_on=list(depends_on),
            # a replaced container has a fresh conf and rootfs: its steps must run again
            replace_with=list(replace_with) or None,
            ignore_changes=list(ignore_changes) or None,
        ),
    )
