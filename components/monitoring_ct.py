"""MonitoringCT: an unprivileged LXC with Debian 12's Prometheus and Alertmanager (and Grafana),
provisioned from monitoring/ and the stack (docs/adr/0013); its proof is the stack output `monitoring`.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import pulumi

from . import grafana_render
from . import monitoring_render as mr
from . import render
from .config import StackConfig
from .container import unprivileged_container
from .media_host import MediaHost
from .remote import Node, run_script


class MonitoringCT(pulumi.ComponentResource):
    monitoring: pulumi.Output[dict[str, Any]]

    def __init__(
        self,
        name: str,
        cfg: StackConfig,
        node: Node,
        host: MediaHost,
        secrets: Mapping[str, pulumi.Input[str] | None],
        scraped: Sequence[pulumi.Resource] = (),
        opts: pulumi.ResourceOptions | None = None,
    ):
        """`secrets`: stack key -> secret Output (alertSmtpPassword, ...); `scraped`: the steps that
        start what Prometheus scrapes (the proof waits for them)."""
        super().__init__("homelab:index:MonitoringCT", name, None, opts)
        mon = cfg.monitoring
        self.vm_id = mon.vm_id
        self.container = unprivileged_container(
            name, mon, cfg, node, host.template_file_id, parent=self, depends_on=[host.recreate_guard]
        )

        files = {
            "prometheus.yml": mr.prometheus_yml(cfg).encode(),
            "alerts.yml": mr.rules_yml().encode(),
            "alertmanager.yml": mr.alertmanager_yml(cfg).encode(),
            "prometheus.default": mr.prometheus_args(cfg).encode(),
            "alertmanager.default": mr.alertmanager_args(cfg).encode(),
        }
        used = mr.used_secrets(cfg)
        missing = [k for k in used if secrets.get(k) is None]
        if missing:  # config validation names them first; this guards the wiring
            raise ValueError(f"monitoring needs the secrets {', '.join(missing)}")
        stdin = None
        if used:
            stdin = pulumi.Output.all(*[secrets[k] for k in used]).apply(
                lambda vals: mr.secrets_stdin(dict(zip(used, vals)))
            )
        self.bootstrap = run_script(
            f"{name}-bootstrap",
            node,
            "ct-bootstrap-monitoring.sh",
            [
                "--prometheus-yml", "prometheus.yml",
                "--rules", "alerts.yml",
                "--alertmanager-yml", "alertmanager.yml",
                "--prometheus-args", "prometheus.default",
                "--alertmanager-args", "alertmanager.default",
                *(["--secrets-stdin"] if used else []),
            ],
            stdin=stdin,
            secret_stdin=bool(used),
            files=files,
            vmid=mon.vm_id,
            parent=self,
            depends_on=[self.container],
            replace_with=[self.container],
        )
        self.steps: list[pulumi.Resource] = [self.bootstrap]

        grafana_port: list[str] = []
        proven = dict(files)  # what the proof proves: it is redone when one changes
        self.grafana = None
        if mon.grafana.enabled:
            self.grafana, proven["grafana"] = self._grafana(name, cfg, node, secrets.get("grafanaAdminPassword"))
            self.steps.append(self.grafana)
            grafana_port = ["--grafana-port", str(mon.grafana.port)]
        self.verify = run_script(
            f"{name}-verify",
            node,
            "verify-monitoring.sh",
            ["--prometheus-port", str(mon.prometheus_port), "--alertmanager-port", str(mon.alertmanager_port),
             *grafana_port, *(["--strict"] if cfg.verify.strict else [])],
            vmid=mon.vm_id,
            parent=self,
            depends_on=[*self.steps, *scraped],
            # the proof is redone when what it proves changed: the files, the packages, the targets
            triggers=[render.sha256(*(f"{k}\0{v!r}" for k, v in sorted(proven.items())))],
            replace_with=[self.container],
        )
        urls = mr.urls(cfg)
        self.monitoring = self.verify.stdout.apply(lambda s: _summary(render.parse_json_output(s, "monitoring"), urls))
        self.register_outputs({"vmId": mon.vm_id, "monitoring": self.monitoring})


    def _grafana(self, name: str, cfg: StackConfig, node: Node, password: pulumi.Input[str] | None):
        """Grafana from its own repository, key pinned (scripts/ct-install-grafana.sh, docs/adr/0013):
        settings, the Prometheus data source and the dashboard as files; the password on secret stdin."""
        mon = cfg.monitoring
        g = mon.grafana
        if password is None:  # config validation names it first
            raise ValueError("monitoring.grafana needs the secret grafanaAdminPassword")
        provisioning = grafana_render.provisioning_files(
            f"http://127.0.0.1:{mon.prometheus_port}", "" if g.bind == "0.0.0.0" else g.bind, g.port
        )
        tar = "grafana-provisioning.tar.gz"
        tar_bytes = render.tarball_of(provisioning)
        step = run_script(
            f"{name}-grafana",
            node,
            "ct-install-grafana.sh",
            ["--admin-password-stdin", "--provisioning-tar", tar,
             "--repo", g.repo, "--key-url", g.key_url, "--fingerprint", g.fingerprint],
            stdin=password,
            secret_stdin=True,
            files={tar: tar_bytes},
            vmid=mon.vm_id,
            parent=self,
            depends_on=[self.bootstrap],  # curl and the apt lists are there; one apt at a time
            replace_with=[self.container],
        )
        return step, tar_bytes


def _summary(proof: dict[str, Any], urls: dict[str, str | None]) -> dict[str, Any]:
    """The output `monitoring`: each service's URL and whether it answers, the targets up."""
    out: dict[str, Any] = {}
    for key in ("prometheus", "alertmanager", "grafana"):
        seen = proof.get(key) or {}
        out[key] = {"url": urls.get(key), "answers": bool(seen.get("answers")), **{
            k: v for k, v in seen.items() if k != "answers"}} if urls.get(key) else None
    out["targetsUp"] = proof.get("targetsUp", 0)
    out["targetsTotal"] = proof.get("targetsTotal", 0)
    out["targets"] = proof.get("targets", [])
    out["ok"] = bool(proof.get("ok"))
    out["reason"] = proof.get("reason")
    return out
