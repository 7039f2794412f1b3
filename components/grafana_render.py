"""Pure rendering of Grafana's settings and provisioning files (scripts/ct-install-grafana.sh installs them).

Formats: Grafana's file provisioning (Grafana 11,
https://grafana.com/docs/grafana/latest/administration/provisioning/): a data source file and a
dashboard provider file are YAML with `apiVersion: 1` and a `datasources:` / `providers:` list.
Values are written as JSON strings, numbers and booleans, which are YAML too, so nothing here needs
a YAML library and no value can change meaning (a "yes", a "0123", a ": ").

Nothing here talks to Pulumi, the network or the disk except reading the committed dashboard.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD_SOURCE = ROOT / "monitoring/grafana/media-pipeline.json"

PROMETHEUS_UID = "prometheus"
PROMETHEUS_NAME = "Prometheus"
# Where the script puts the dashboards' JSON and where the provider points (the docs' example path).
DASHBOARDS_DIR = "/var/lib/grafana/dashboards"
PROVISIONING_DIR = "/etc/grafana/provisioning"
PROVIDER_NAME = "homelab-media"

# ${DS_PROMETHEUS} (an export's import input) or ${datasource} / $datasource (a dashboard variable)
_DS_REF = re.compile(r"^\$\{?(DS_[A-Z0-9_]+|datasource)\}?$")


def _j(v: Any) -> str:
    return json.dumps(v, ensure_ascii=False)


def datasource_yaml(prometheus_url: str) -> str:
    """provisioning/datasources/prometheus.yaml: one Prometheus, uid `prometheus`, the default, queried
    through Grafana's backend (access: proxy: the browser never talks to Prometheus)."""
    if not re.match(r"^https?://[^\s/]+(/\S*)?$", prometheus_url):
        raise ValueError(f"prometheus_url must be an http(s) URL like http://prometheus.lan:9090, got {prometheus_url!r}")
    return (
        "# Managed by homelab-media (components/grafana_render.py); changes here are overwritten.\n"
        "apiVersion: 1\n"
        "datasources:\n"
        f"  - name: {_j(PROMETHEUS_NAME)}\n"
        "    type: \"prometheus\"\n"
        f"    uid: {_j(PROMETHEUS_UID)}\n"
        "    access: \"proxy\"\n"
        f"    url: {_j(prometheus_url.rstrip('/'))}\n"
        "    isDefault: true\n"
        "    editable: false\n"
        "    jsonData:\n"
        "      httpMethod: \"POST\"\n"
        "      timeInterval: \"30s\"\n"
    )


def dashboards_provider_yaml(path: str = DASHBOARDS_DIR) -> str:
    """provisioning/dashboards/homelab-media.yaml: one file provider reading `path`; dashboards are
    neither deleted nor saved from the UI (the JSON in the repository is the source)."""
    if not path.startswith("/"):
        raise ValueError(f"the dashboards path must be absolute, got {path!r}")
    return (
        "# Managed by homelab-media (components/grafana_render.py); changes here are overwritten.\n"
        "apiVersion: 1\n"
        "providers:\n"
        f"  - name: {_j(PROVIDER_NAME)}\n"
        "    orgId: 1\n"
        "    folder: \"Media pipeline\"\n"
        "    type: \"file\"\n"
        "    disableDeletion: true\n"
        "    allowUiUpdates: false\n"
        "    updateIntervalSeconds: 60\n"
        "    options:\n"
        f"      path: {_j(path)}\n"
        "      foldersFromFilesStructure: false\n"
    )


def grafana_ini_settings(http_addr: str = "", http_port: int = 3000) -> str:
    """The settings of /etc/grafana/grafana.ini, without the admin password (the script adds it from
    stdin). Identical to `ct-install-grafana.sh --print-settings` for the same address and port."""
    if not re.match(r"^[A-Za-z0-9.:_-]*$", http_addr):
        raise ValueError(f"http_addr must be an IP address or host name (or empty for all), got {http_addr!r}")
    if not isinstance(http_port, int) or not 1 <= http_port <= 65535:
        raise ValueError(f"http_port must be a port number 1-65535, got {http_port!r}")
    return (
        "# Managed by homelab-media (scripts/ct-install-grafana.sh); changes here are overwritten.\n"
        "[server]\n"
        f"http_addr = {http_addr}\n"
        f"http_port = {http_port}\n"
        "\n"
        "[security]\n"
        "admin_user = admin\n"
        "\n"
        "[auth.anonymous]\n"
        "enabled = false\n"
        "\n"
        "[analytics]\n"
        "reporting_enabled = false\n"
        "check_for_updates = false\n"
        "check_for_plugin_updates = false\n"
        "\n"
        "[paths]\n"
        f"provisioning = {PROVISIONING_DIR}\n"
    )


def _pin(node: Any, uid: str) -> Any:
    """Every {"type": "prometheus", "uid": "${...}"} below node, with the uid pinned."""
    if isinstance(node, dict):
        out = {k: _pin(v, uid) for k, v in node.items()}
        ds = out.get("datasource")
        if isinstance(ds, dict) and isinstance(ds.get("uid"), str) and _DS_REF.match(ds["uid"]):
            out["datasource"] = {**ds, "uid": uid}
        elif isinstance(ds, str) and _DS_REF.match(ds):
            out["datasource"] = {"type": "prometheus", "uid": uid}
        return out
    if isinstance(node, list):
        return [_pin(x, uid) for x in node]
    return node


def provisioned_dashboard(source: str | None = None, uid: str = PROMETHEUS_UID) -> str:
    """The dashboard as file provisioning needs it. The committed JSON is an export for the UI's
    import: `__inputs` (DS_PROMETHEUS) and a `datasource` variable that panels reference as
    `${datasource}`. File provisioning resolves neither import inputs nor a data source chosen at
    import, so this copy drops `__inputs` and the variable and pins every datasource reference to
    the provisioned uid."""
    d = json.loads(DASHBOARD_SOURCE.read_text() if source is None else source)
    d = copy.deepcopy(d)
    d.pop("__inputs", None)
    d.pop("__requires", None)
    templ = d.get("templating", {}).get("list", [])
    d.setdefault("templating", {})["list"] = [v for v in templ if v.get("type") != "datasource"]
    d.pop("id", None)  # provisioning matches dashboards by uid
    d = _pin(d, uid)
    text = json.dumps(d, indent=2, ensure_ascii=False) + "\n"
    left = sorted(set(re.findall(r"\$\{?(?:DS_[A-Z0-9_]+|datasource)\b\}?", text)))
    if left:
        raise ValueError(f"{DASHBOARD_SOURCE.name}: data source references left after pinning: {', '.join(left)}")
    return text


def provisioning_files(prometheus_url: str, http_addr: str = "", http_port: int = 3000) -> dict[str, str]:
    """The --provisioning DIR of ct-install-grafana.sh: relative path -> content."""
    return {
        "grafana.ini": grafana_ini_settings(http_addr, http_port),
        "provisioning/datasources/prometheus.yaml": datasource_yaml(prometheus_url),
        "provisioning/dashboards/homelab-media.yaml": dashboards_provider_yaml(DASHBOARDS_DIR),
        "dashboards/media-pipeline.json": provisioned_dashboard(),
    }
