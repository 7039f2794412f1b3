"""Pure rendering for the monitoring container (docs/adr/0015): who scrapes whom, Prometheus'
and Alertmanager's files. No resources here; components/monitoring_ct.py wires them.

Formats: Prometheus 2.42 and Alertmanager 0.25, the versions Debian 12 ships
(https://prometheus.io/docs/prometheus/2.42/configuration/configuration/,
https://prometheus.io/docs/alerting/0.25/configuration/). Alertmanager 0.25 reads a Telegram bot
token or an SMTP password only inline (`bot_token_file`/`auth_password_file` came later), so
alertmanager.yml carries placeholders that ct-bootstrap-monitoring.sh fills from its secret stdin
and writes 0640 root:prometheus.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .config import StackConfig

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "monitoring" / "prometheus" / "alerts.yml"
DEFAULT_RIP_METRICS_PORT = 9465

# placeholder -> the stack secret that fills it (a JSON string on the script's stdin)
SECRET_PLACEHOLDERS = {
    "alertSmtpPassword": "__SECRET_alertSmtpPassword__",
    "alertTelegramToken": "__SECRET_alertTelegramToken__",
    "alertWebhookToken": "__SECRET_alertWebhookToken__",
}


@dataclass(frozen=True)
class MetricsEndpoint:
    """Where one service's /metrics listens and who may scrape it (media_pipeline metrics_allow)."""

    port: int
    bind: str
    allow: tuple[str, ...]
    address: str | None  # the container's own address, as Prometheus scrapes it

    @property
    def target(self) -> str | None:
        return f"{self.address}:{self.port}" if self.port and self.address else None


def _address(ipv4: str) -> str | None:
    return None if ipv4 == "dhcp" else ipv4.split("/")[0]


def metrics_endpoints(cfg: StackConfig) -> dict[str, MetricsEndpoint]:
    """media-pipeline's and media-rip's /metrics. With monitoring on, each binds its container's own
    address (not 0.0.0.0) and answers only the monitoring container beyond loopback."""
    mon = cfg.monitoring
    on = mon.enabled
    allow = (f"{mon.address}/32",) if on and mon.address else ()
    out = {}
    for key, ct, port, bind in (
        ("pipeline", cfg.transcoder, cfg.pipeline.metrics_port, cfg.pipeline.metrics_bind),
        ("rip", cfg.ripper, cfg.ripper.metrics_port or (DEFAULT_RIP_METRICS_PORT if on else 0), cfg.pipeline.metrics_bind),
    ):
        addr = _address(ct.ipv4)
        if on and ipaddress.ip_address(bind).is_loopback and addr:
            bind = addr
        out[key] = MetricsEndpoint(port=port, bind=bind, allow=allow if on else (), address=addr)
    return out


def worker_metrics_endpoint(cfg: StackConfig, worker) -> MetricsEndpoint:
    """An extra worker's /metrics (homelab-media:workers): the transcoder's port and bind rule."""
    mon = cfg.monitoring
    on = mon.enabled
    addr = _address(worker.ipv4)
    bind = cfg.pipeline.metrics_bind
    if on and ipaddress.ip_address(bind).is_loopback and addr:
        bind = addr
    allow = (f"{mon.address}/32",) if on and mon.address else ()
    return MetricsEndpoint(port=cfg.pipeline.metrics_port, bind=bind, allow=allow, address=addr)


def node_target(cfg: StackConfig) -> str:
    """The node's node_exporter as the monitoring container reaches it."""
    mon = cfg.monitoring
    host = mon.node_address or cfg.ssh.host
    return f"{host}:{mon.node_exporter_port}"


def node_exporter_listen(cfg: StackConfig) -> str:
    """node_exporter on the node listens on nodeAddress when it is an IP, else on every address."""
    mon = cfg.monitoring
    try:
        ipaddress.ip_address(mon.node_address or "")
        return f"{mon.node_address}:{mon.node_exporter_port}"
    except ValueError:
        return f":{mon.node_exporter_port}"


def scrape_targets(cfg: StackConfig) -> dict[str, list[str]]:
    """Job name -> targets. The job names are the ones monitoring/prometheus/alerts.yml expects."""
    mon = cfg.monitoring
    eps = metrics_endpoints(cfg)
    jobs: dict[str, list[str]] = {
        # worker 1 (the transcoder) and every worker of homelab-media:workers
        "media-pipeline": [t for t in [eps["pipeline"].target] + [
            worker_metrics_endpoint(cfg, w).target for w in cfg.workers] if t],
        "media-rip": [t for t in [eps["rip"].target] if t],
        "node": [node_target(cfg)],
        "prometheus": [f"127.0.0.1:{mon.prometheus_port}"],
        "alertmanager": [f"127.0.0.1:{mon.alertmanager_port}"],
    }
    return {job: targets for job, targets in jobs.items() if targets}


def prometheus_yml(cfg: StackConfig) -> str:
    mon = cfg.monitoring
    doc: dict[str, Any] = {
        "global": {
            "scrape_interval": mon.scrape_interval,
            "evaluation_interval": mon.evaluation_interval,
            "external_labels": {"stack": "homelab-media"},
        },
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{mon.alertmanager_port}"]}]}]},
        "rule_files": ["/etc/prometheus/rules/*.yml"],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": targets}]}
            for job, targets in scrape_targets(cfg).items()
        ],
    }
    return "# Written by the homelab-media stack (components/monitoring_render.py); edits are overwritten.\n" + yaml.safe_dump(
        doc, sort_keys=False
    )


def prometheus_args(cfg: StackConfig) -> str:
    """/etc/default/prometheus: Debian's unit runs `prometheus $ARGS`."""
    mon = cfg.monitoring
    args = [
        f"--storage.tsdb.retention.time={mon.retention}",
        f"--web.listen-address=0.0.0.0:{mon.prometheus_port}",
    ]
    return f'# Written by the homelab-media stack.\nARGS="{" ".join(args)}"\n'


def alertmanager_args(cfg: StackConfig) -> str:
    """/etc/default/prometheus-alertmanager: one instance, no gossip cluster (it would look for peers)."""
    mon = cfg.monitoring
    args = [f"--web.listen-address=0.0.0.0:{mon.alertmanager_port}", "--cluster.listen-address="]
    if mon.address:
        args.append(f"--web.external-url=http://{mon.address}:{mon.alertmanager_port}/")
    return f'# Written by the homelab-media stack.\nARGS="{" ".join(args)}"\n'


class _Placeholder(str):
    """A placeholder written bare (unquoted) into YAML: the script puts a JSON string there."""


def _placeholder_representer(dumper: yaml.SafeDumper, data: _Placeholder):
    return dumper.represent_scalar("tag:yaml.org,2002:str", str(data), style="")


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(_Placeholder, _placeholder_representer)


def receivers(cfg: StackConfig) -> dict[str, Any]:
    """Alertmanager's one receiver, `homelab`, with what monitoring.receivers sets."""
    r = cfg.monitoring.receivers
    out: dict[str, Any] = {"name": "homelab"}
    if r.email:
        e: dict[str, Any] = {"to": r.email.to, "from": r.email.from_, "smarthost": r.email.smarthost,
                             "require_tls": r.email.require_tls, "send_resolved": True}
        if r.email.username:
            e["auth_username"] = r.email.username
            e["auth_password"] = _Placeholder(SECRET_PLACEHOLDERS["alertSmtpPassword"])
        out["email_configs"] = [e]
    if r.telegram:
        out["telegram_configs"] = [{
            "bot_token": _Placeholder(SECRET_PLACEHOLDERS["alertTelegramToken"]),
            "chat_id": r.telegram.chat_id,
            "parse_mode": "HTML",
            "send_resolved": True,
        }]
    if r.webhook:
        w: dict[str, Any] = {"url": r.webhook.url, "send_resolved": True}
        if cfg.secrets.alert_webhook_token:
            w["http_config"] = {"authorization": {
                "type": "Bearer", "credentials": _Placeholder(SECRET_PLACEHOLDERS["alertWebhookToken"])}}
        out["webhook_configs"] = [w]
    return out


def alertmanager_yml(cfg: StackConfig) -> str:
    """Grouped per alert and instance; a homelab wants one message per problem, repeated rarely."""
    mon = cfg.monitoring
    doc = {
        "route": {
            "receiver": "homelab",
            "group_by": ["alertname", "instance"],
            "group_wait": mon.group_wait,
            "group_interval": mon.group_interval,
            "repeat_interval": mon.repeat_interval,
        },
        # a critical alert mutes the warnings of the same instance (MediaPipelineDown vs its symptoms)
        "inhibit_rules": [{
            "source_matchers": ['severity="critical"'],
            "target_matchers": ['severity="warning"'],
            "equal": ["instance"],
        }],
        "receivers": [receivers(cfg)],
    }
    return "# Written by the homelab-media stack (components/monitoring_render.py); edits are overwritten.\n" + yaml.dump(
        doc, Dumper=_Dumper, sort_keys=False
    )


def used_secrets(cfg: StackConfig) -> list[str]:
    """The secrets alertmanager.yml needs, by stack key."""
    text = alertmanager_yml(cfg)
    return [key for key, mark in SECRET_PLACEHOLDERS.items() if mark in text]


def secrets_stdin(values: dict[str, str]) -> str:
    """KEY=<JSON string> lines: what ct-bootstrap-monitoring.sh puts in place of each placeholder
    (a JSON string is a valid YAML scalar whatever the token holds)."""
    return "".join(f"{key}={json.dumps(value)}\n" for key, value in sorted(values.items()))


def rules_yml() -> str:
    return RULES.read_text()


def urls(cfg: StackConfig) -> dict[str, str | None]:
    mon = cfg.monitoring
    host = mon.address or mon.hostname
    g = mon.grafana
    grafana = None
    if g.enabled:
        grafana_host = "127.0.0.1" if ipaddress.ip_address(g.bind).is_loopback else host
        grafana = f"http://{grafana_host}:{g.port}/"
    return {
        "prometheus": f"http://{host}:{mon.prometheus_port}/",
        "alertmanager": f"http://{host}:{mon.alertmanager_port}/",
        "grafana": grafana,
    }
