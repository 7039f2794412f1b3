"""JellyfinCT: an unprivileged LXC with Jellyfin from its own apt repository, the libraries
read-only, the GPU through PVE's own device passthrough (devN), and a proof.

Unlike the transcoder and the ripper (privileged, raw `lxc.*` lines, docs/adr/0004), this
container is unprivileged and has no raw lines: movies and tv are bind mounts with
`ro=1` (bpg `mount_points[].read_only`), the render node is `dev0: <node>,gid=<gid>,mode=0660`
(bpg `device_passthroughs`), which PVE resolves at every start (docs/adr/0014). The gid is
the render group's gid in the container's OS, read from the template before the container
exists (scripts/host-template-group.sh); ct-install-jellyfin.sh makes the container's group
match it.
"""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_proxmoxve as proxmoxve

from . import render
from .config import StackConfig
from .container import unprivileged_container
from .media_host import MediaHost
from .remote import Node, run_script

API_KEY_FILE = "/etc/homelab-media/jellyfin-api-key"


def pve_release_problem(cfg: StackConfig, provider: pulumi.ProviderResource) -> str | None:
    """Before JellyfinCT is declared (an up, not a preview): can the node pass devN through?

    Reads the node's release through the API (bpg's `proxmoxve.get_version`, GET /version).
    None when jellyfin.gpu is none: without a GPU no devN is written.
    """
    if not cfg.jellyfin.enabled or cfg.jellyfin.gpu == "none":
        return None
    v = proxmoxve.get_version(opts=pulumi.InvokeOptions(provider=provider))
    return render.pve_release_problem(v.release, v.version, cfg.proxmox.endpoint)


class JellyfinCT(pulumi.ComponentResource):
    render_node: pulumi.Output[str | None]
    render_gid: pulumi.Output[int | None]
    install: pulumi.Output[dict[str, Any]]
    verification: pulumi.Output[dict[str, Any]]
    api_key: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        cfg: StackConfig,
        node: Node,
        host: MediaHost,
        admin_password: pulumi.Input[str] | None,
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("homelab:index:JellyfinCT", name, None, opts)
        jf = cfg.jellyfin
        self.vm_id = jf.vm_id

        # the render node: jellyfin.gpu, checked against what the node has (a bad one fails the up here)
        self.render_node = host.discovery.apply(
            lambda d: render.jellyfin_render_node(d, jf.gpu, cfg.encoding.qsv_device)
        )

        # the render group's gid as the container's OS has it: from the template's /etc/group
        self.template_group = run_script(
            f"{name}-render-gid",
            node,
            "host-template-group.sh",
            ["--volume", host.template_file_id, "--group", "render", "--key", "jellyfin.gpu"],
            parent=self,
            depends_on=[host.template],
        )
        group = self.template_group.stdout.apply(lambda s: render.parse_json_output(s, "template render group"))
        self.render_gid = pulumi.Output.all(self.render_node, group).apply(
            lambda v: int(v[1]["gid"]) if v[0] and v[1].get("gid") is not None else None
        )
        devices = pulumi.Output.all(self.render_node, group).apply(
            lambda v: render.jellyfin_devices(v[0], v[1].get("gid")) if v[0] else []
        )

        # never privileged: Jellyfin needs neither host UIDs nor raw device lines; movies and tv
        # only, read-only (PVE mpN ...,ro=1): never staging, never the whole pool; the GPU as PVE's
        # devN (pve-container >= 5.0.7, PVE 8.1): dev0: <render node>,gid=<render gid>,mode=0660
        self.container = unprivileged_container(
            name, jf, cfg, node, host.template_file_id, parent=self,
            # the movies/tv directories exist (host-setup.sh) and the pool was checked
            depends_on=[host.recreate_guard, host.setup],
            mount_points=render.jellyfin_mount_points(cfg.storage),
            device_passthroughs=devices,
        )

        # Jellyfin's repository and key unless the stack names another (the lab's stand-in): only
        # then on the command line, so the default step's inputs stay what they were
        defaults = type(jf).model_fields
        repo_args = [a for flag, key in (("--repo", "repo"), ("--key-url", "key_url"), ("--fingerprint", "fingerprint"))
                     if getattr(jf, key) != defaults[key].default for a in (flag, getattr(jf, key))]
        gid_args = self.render_gid.apply(
            lambda g: (["--render-gid", str(g)] if g is not None else []) + repo_args)
        self.install_step = run_script(
            f"{name}-install",
            node,
            "ct-install-jellyfin.sh",
            gid_args,
            vmid=jf.vm_id,
            parent=self,
            depends_on=[self.container],
            replace_with=[self.container],
        )

        hw = self.render_node.apply(
            lambda n: ["--render-node", n, "--hwaccel", "vaapi"] if n else ["--hwaccel", "none"]
        )
        configure_args = hw.apply(lambda h: [
            "--tarball", render.PIPELINE_TARBALL,
            "--port", str(jf.port),
            "--admin-user", "admin",
            *h,
            "--key-file", API_KEY_FILE,
            "--password-stdin",
        ])
        # the admin password travels like makemkvKey and statusPassword: secret stdin, never argv;
        # the API key comes back on stdout, which is a secret and never logged
        self.configure = run_script(
            f"{name}-configure",
            node,
            "ct-jellyfin-configure.sh",
            configure_args,
            stdin=admin_password,
            secret_stdin=True,
            secret_stdout=True,
            files={render.PIPELINE_TARBALL: render.pipeline_tarball()},
            vmid=jf.vm_id,
            parent=self,
            depends_on=[self.install_step],
            replace_with=[self.container],
        )

        host_name = jf.ipv4.split("/")[0] if jf.ipv4 != "dhcp" else jf.hostname
        verify_args = hw.apply(lambda h: [
            "--port", str(jf.port),
            "--url-host", host_name,
            *h,
            "--key-file", API_KEY_FILE,
            *(["--strict"] if cfg.verify.strict else []),
        ])
        self.verify = run_script(
            f"{name}-verify",
            node,
            "verify-jellyfin.sh",
            verify_args,
            extra_scripts=[],
            vmid=jf.vm_id,
            parent=self,
            depends_on=[self.configure],
            # the proof is redone when what it proves changed: the install or the configuration
            triggers=[self.install_step.stdin.apply(lambda s: render.sha256(s or "")),
                      self.configure.triggers.apply(lambda t: render.sha256(*(t or [])))],
            replace_with=[self.container],
        )

        self.install = self.install_step.stdout.apply(lambda s: render.parse_json_output(s, "Jellyfin install"))
        self.verification = self.verify.stdout.apply(lambda s: render.parse_json_output(s, "Jellyfin verification"))
        self.api_key = pulumi.Output.secret(
            self.configure.stdout.apply(lambda s: render.parse_json_output(s, "Jellyfin configure").get("apiKey") or "")
        )
        self.register_outputs({
            "vmId": jf.vm_id,
            "renderNode": self.render_node,
            "renderGid": self.render_gid,
            "install": self.install,
            "verification": self.verification,
            "apiKey": self.api_key,
        })
