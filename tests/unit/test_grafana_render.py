"""components/grafana_render.py: the provisioning files parse as YAML and follow Grafana's documented
format; the provisioned dashboard has no unresolved data source.

The format is Grafana 11's "Provision Grafana" page
(https://grafana.com/docs/grafana/latest/administration/provisioning/, source
grafana/grafana docs/sources/administration/provisioning/index.md @0025f37, the version that
documents `prune` as "available in Grafana v11.1 and higher"): `apiVersion: 1`; a data source
has `name`, `type` and `access` ("<string, required>"), `access` is proxy or direct, the other keys
have the types the example's comments give; a dashboard provider has a required `name` and, for the
`file` type, a required `options.path`; `folder`/`folderUid` must be empty for
`foldersFromFilesStructure`. Prometheus' jsonData keys are from the page's "JSON Data" table.
"""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import yaml

from components import grafana_render as gr

# key -> allowed type(s), from the documented example's "<type>" comments
DS_KEYS = {
    "name": str, "type": str, "access": str, "orgId": int, "uid": str, "url": str, "user": str,
    "database": str, "basicAuth": bool, "basicAuthUser": str, "withCredentials": bool, "isDefault": bool,
    "jsonData": dict, "secureJsonData": dict, "version": int, "editable": bool,
}
DS_REQUIRED = ("name", "type", "access")
DS_TOP = {"apiVersion": int, "deleteDatasources": list, "prune": bool, "datasources": list}
PROMETHEUS_JSONDATA = {"httpMethod": str, "timeInterval": str, "customQueryParameters": str, "manageAlerts": bool,
                       "alertmanagerUid": str, "prometheusVersion": str, "prometheusType": str, "cacheLevel": str,
                       "tlsSkipVerify": bool, "timeout": str}
PROVIDER_KEYS = {"name": str, "orgId": int, "folder": str, "folderUid": str, "type": str, "disableDeletion": bool,
                 "updateIntervalSeconds": int, "allowUiUpdates": bool, "options": dict}
PROVIDER_OPTIONS = {"path": str, "foldersFromFilesStructure": bool}


def _typed(where: str, d: dict, schema: dict) -> list[str]:
    out = []
    for k, v in d.items():
        if k not in schema:
            out.append(f"{where}: unknown key {k!r}")
        elif type(v) is not schema[k]:  # bool is not int here: `orgId: true` is wrong
            out.append(f"{where}.{k}: {type(v).__name__}, the docs say {schema[k].__name__}")
    return out


def datasource_problems(text: str) -> list[str]:
    doc = yaml.safe_load(text)
    if not isinstance(doc, dict):
        return ["not a YAML mapping"]
    out = _typed("file", doc, DS_TOP)
    if doc.get("apiVersion") != 1:
        out.append(f"apiVersion is {doc.get('apiVersion')!r}, not 1")
    dss = doc.get("datasources")
    if not isinstance(dss, list) or not dss:
        return out + ["no datasources list"]
    defaults = 0
    for i, ds in enumerate(dss):
        w = f"datasources[{i}]"
        if not isinstance(ds, dict):
            out.append(f"{w}: not a mapping")
            continue
        out += _typed(w, ds, DS_KEYS)
        out += [f"{w}: {k} is required" for k in DS_REQUIRED if not ds.get(k)]
        if ds.get("access") not in ("proxy", "direct"):
            out.append(f"{w}.access: {ds.get('access')!r}, not proxy or direct")
        if ds.get("type") == "prometheus":
            out += _typed(f"{w}.jsonData", ds.get("jsonData") or {}, PROMETHEUS_JSONDATA)
            if (ds.get("jsonData") or {}).get("httpMethod", "POST") not in ("GET", "POST"):
                out.append(f"{w}.jsonData.httpMethod: not GET or POST")
        defaults += ds.get("isDefault") is True
    if defaults > 1:
        out.append("more than one isDefault data source (one per organization)")
    return out


def provider_problems(text: str) -> list[str]:
    doc = yaml.safe_load(text)
    if not isinstance(doc, dict):
        return ["not a YAML mapping"]
    out = _typed("file", doc, {"apiVersion": int, "providers": list})
    if doc.get("apiVersion") != 1:
        out.append(f"apiVersion is {doc.get('apiVersion')!r}, not 1")
    provs = doc.get("providers")
    if not isinstance(provs, list) or not provs:
        return out + ["no providers list"]
    for i, p in enumerate(provs):
        w = f"providers[{i}]"
        out += _typed(w, p, PROVIDER_KEYS)
        if not p.get("name"):
            out.append(f"{w}: name is required")
        if p.get("type", "file") == "file":
            opts = p.get("options") or {}
            out += _typed(f"{w}.options", opts, PROVIDER_OPTIONS)
            if not opts.get("path"):
                out.append(f"{w}.options.path is required for the file type")
            if opts.get("foldersFromFilesStructure") and (p.get("folder") or p.get("folderUid")):
                out.append(f"{w}: folder/folderUid must be empty with foldersFromFilesStructure")
    return out


def dashboard_problems(text: str, uid: str = gr.PROMETHEUS_UID) -> list[str]:
    d = json.loads(text)
    out = []
    if "__inputs" in d:
        out.append("__inputs left (file provisioning does not resolve import inputs)")
    for m in sorted(set(re.findall(r"\$\{[^}]*\}", text))):
        if m.startswith(("${DS_", "${datasource")):
            out.append(f"unresolved data source {m}")

    def walk(node, where):
        if isinstance(node, dict):
            ds = node.get("datasource")
            if ds is not None and not (isinstance(ds, dict) and ds.get("uid") == uid and ds.get("type") == "prometheus"):
                out.append(f"{where}: datasource {ds!r}, not the provisioned {uid!r}")
            for k, v in node.items():
                walk(v, f"{where}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{where}[{i}]")

    walk(d.get("panels", []), "panels")
    walk(d.get("templating", {}), "templating")
    return out


# --- the rendered files ---------------------------------------------------------------------------


def test_datasource_follows_the_documented_format():
    text = gr.datasource_yaml("http://prometheus.lan:9090/")
    assert datasource_problems(text) == []
    ds = yaml.safe_load(text)["datasources"]
    assert ds == [{"name": "Prometheus", "type": "prometheus", "uid": "prometheus", "access": "proxy",
                   "url": "http://prometheus.lan:9090", "isDefault": True, "editable": False,
                   "jsonData": {"httpMethod": "POST", "timeInterval": "30s"}}]


def test_dashboards_provider_follows_the_documented_format():
    text = gr.dashboards_provider_yaml("/var/lib/grafana/dashboards")
    assert provider_problems(text) == []
    (p,) = yaml.safe_load(text)["providers"]
    assert p["type"] == "file" and p["disableDeletion"] is True and p["allowUiUpdates"] is False
    assert p["options"]["path"] == gr.DASHBOARDS_DIR


def test_the_provisioned_dashboard_uses_only_the_provisioned_datasource():
    text = gr.provisioned_dashboard()
    assert dashboard_problems(text) == []
    d = json.loads(text)
    src = json.loads(gr.DASHBOARD_SOURCE.read_text())
    assert d["uid"] == src["uid"] and len(d["panels"]) == len(src["panels"])
    targets = [t for p in d["panels"] for t in p.get("targets", [])]
    assert targets and all(t["datasource"] == {"type": "prometheus", "uid": "prometheus"} for t in targets)
    assert [v["name"] for v in d["templating"]["list"]] == ["instance"]  # the data source picker is gone
    # the queries themselves are untouched
    assert [t["expr"] for t in targets] == [t["expr"] for p in src["panels"] for t in p.get("targets", [])]


def test_the_committed_export_is_what_needed_the_pinning():
    """If the export stops using ${datasource}/__inputs the pinning is moot, not wrong: this says so."""
    assert dashboard_problems(gr.DASHBOARD_SOURCE.read_text()) != []


def test_ini_settings_match_the_script():
    for addr, port in (("", 3000), ("10.99.0.40", 3001)):
        p = subprocess.run(["bash", "scripts/ct-install-grafana.sh", "--print-settings", "--http-addr", addr,
                            "--http-port", str(port)], capture_output=True, text=True, cwd=gr.ROOT)
        assert p.returncode == 0, p.stderr
        assert p.stdout == gr.grafana_ini_settings(addr, port)


def test_ini_settings_lock_down_grafana():
    ini = gr.grafana_ini_settings("10.99.0.40", 3000)
    import configparser

    c = configparser.ConfigParser(interpolation=None)
    c.read_string(ini)
    assert c["server"]["http_addr"] == "10.99.0.40" and c["server"]["http_port"] == "3000"
    assert c["auth.anonymous"]["enabled"] == "false"
    assert c["security"]["admin_user"] == "admin" and "admin_password" not in c["security"]
    assert c["analytics"]["reporting_enabled"] == "false" and c["analytics"]["check_for_updates"] == "false"
    assert c["paths"]["provisioning"] == "/etc/grafana/provisioning"


def test_provisioning_files_layout():
    files = gr.provisioning_files("http://prometheus.lan:9090")
    assert sorted(files) == ["dashboards/media-pipeline.json", "grafana.ini",
                             "provisioning/dashboards/homelab-media.yaml", "provisioning/datasources/prometheus.yaml"]


@pytest.mark.parametrize("bad", ["prometheus.lan:9090", "ftp://x", "http://a b", ""])
def test_bad_prometheus_url_is_refused(bad):
    with pytest.raises(ValueError, match="prometheus_url must be an http"):
        gr.datasource_yaml(bad)


@pytest.mark.parametrize("addr,port", [("a b", 3000), ("", 0), ("", 70000), ("", "3000")])
def test_bad_ini_arguments_are_refused(addr, port):
    with pytest.raises(ValueError):
        gr.grafana_ini_settings(addr, port)


# --- the checks fail on broken files ------------------------------------------------------------


@pytest.mark.parametrize("edit,problem", [
    (lambda t: t.replace("apiVersion: 1", "apiVersion: 2"), "apiVersion is 2, not 1"),
    (lambda t: t.replace('    access: "proxy"\n', ""), "access is required"),
    (lambda t: t.replace('"proxy"', '"server"'), "not proxy or direct"),
    (lambda t: t.replace("isDefault: true", "isDefault: \"yes\""), "isDefault: str, the docs say bool"),
    (lambda t: t.replace("editable:", "editabel:"), "unknown key 'editabel'"),
    (lambda t: t.replace('httpMethod: "POST"', 'httpMethod: "PUT"'), "httpMethod: not GET or POST"),
])
def test_a_broken_datasource_file_is_caught(edit, problem):
    broken = edit(gr.datasource_yaml("http://prometheus.lan:9090"))
    assert any(problem in p for p in datasource_problems(broken)), datasource_problems(broken)


@pytest.mark.parametrize("edit,problem", [
    (lambda t: t.replace('      path: "/var/lib/grafana/dashboards"\n', ""), "options.path is required"),
    (lambda t: t.replace("disableDeletion: true", "disableDeletion: 1"), "disableDeletion: int, the docs say bool"),
    (lambda t: t.replace("foldersFromFilesStructure: false", "foldersFromFilesStructure: true"), "folder/folderUid must be empty"),
    (lambda t: t.replace('name: "homelab-media"', 'name: ""'), "name is required"),
])
def test_a_broken_provider_file_is_caught(edit, problem):
    broken = edit(gr.dashboards_provider_yaml())
    assert any(problem in p for p in provider_problems(broken)), provider_problems(broken)


def test_a_broken_dashboard_is_caught():
    d = json.loads(gr.provisioned_dashboard())
    d["panels"][3]["targets"][0]["datasource"] = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    d["panels"][5]["datasource"] = {"type": "prometheus", "uid": "someone-elses"}
    problems = dashboard_problems(json.dumps(d))
    assert "unresolved data source ${DS_PROMETHEUS}" in problems
    assert any(p.startswith("panels[5]: datasource") for p in problems), problems


def test_pinning_also_resolves_import_inputs():
    src = json.dumps({"__inputs": [{"name": "DS_PROMETHEUS"}], "uid": "x", "panels": [
        {"datasource": "${DS_PROMETHEUS}", "targets": [{"datasource": {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}}]}]})
    out = gr.provisioned_dashboard(src)
    assert dashboard_problems(out) == []
