"""MonitoringCT under Pulumi's mocks, its config and its rendered files (Prometheus 2.42 and
Alertmanager 0.25 formats, checked by Debian's promtool and amtool where the machine has them)."""

from __future__ import annotations

import json
import shutil
import subprocess

import pulumi
import pytest
import yaml

from components import monitoring_render as mr
from components.config import ConfigError, Secrets, parse
from tests.unit.test_program import NS, SECRET_SIG, _call_line, homelab_config, plain, program  # noqa: F401

MON = {
    "enabled": True, "ipv4": "192.168.1.204/24", "nodeAddress": "192.168.1.10",
    "receivers": {"telegram": {"chatId": -100123}, "webhook": {"url": "http://ntfy.lan/alerts"}},
    "grafana": {"enabled": False},
}
STATIC = {"transcoder": "192.168.1.201/24", "ripper": "192.168.1.202/24"}


def stack(**mon_overrides) -> dict[str, str]:
    doc = yaml.safe_load(open("Pulumi.homelab.yaml"))["config"]
    over = {f"{NS}:monitoring": json.dumps({**MON, **mon_overrides}), f"{NS}:alertTelegramToken": "tg-token-not-real"}
    for key, ip in STATIC.items():
        over[f"{NS}:{key}"] = json.dumps({**doc[f"{NS}:{key}"], "ipv4": ip})
    over[f"{NS}:network"] = json.dumps({**doc.get(f"{NS}:network", {}), "gateway": "192.168.1.1"})
    return homelab_config(**over)


def cfg_of(config: dict[str, str], **secrets):
    raw = {k.split(":", 1)[1]: json.loads(v) for k, v in config.items()
           if k.startswith(NS + ":") and k.split(":", 1)[1] not in (
               "proxmoxPassword", "sshPrivateKey", "makemkvKey", "alertTelegramToken", "statusPassword")}
    return parse(raw, Secrets(proxmox_password=True, ssh_private_key=True, **secrets), require_secrets=True)


def done(g):
    outs = [g["transcoder"].gpu, g["ripper"].rip]
    if "monitoring" in g and g["monitoring"] is not None:
        outs.append(g["monitoring"].monitoring)
    return pulumi.Output.all(*outs)


@pulumi.runtime.test
def test_disabled_declares_nothing_of_monitoring(program):
    mocks, g = program(homelab_config())

    def check(_):
        assert not [n for n in mocks.resources if "monitoring" in n or "node-exporter" in n]
        line = _call_line(mocks.resources["transcoder-pipeline"].inputs["stdin"])
        assert "--metrics-bind 127.0.0.1" in line and "--metrics-allow" not in line

    return done(g).apply(check)


@pulumi.runtime.test
def test_enabled_is_an_unprivileged_container_without_pool_devices_or_hook(program):
    mocks, g = program(stack())

    def check(_):
        ct = mocks.resources["monitoring"]
        assert ct.typ == "proxmoxve:index/containerLegacy:ContainerLegacy"
        i = ct.inputs
        assert i["unprivileged"] is True and i["vmId"] == 204
        assert not i.get("mountPoints") and not i.get("hookScriptFileId")
        assert i["initialization"]["ipConfigs"][0]["ipv4"]["address"] == "192.168.1.204/24"
        assert not [n for n in mocks.resources if n.startswith("monitoring-raw")]  # no raw lxc lines
        # the recreate guard covers it, the node exporter runs on the node (not in a container)
        assert "204:monitoring:monitoring:local-lvm:8:0:none" in _call_line(mocks.resources["media-host-recreate-guard"].inputs["stdin"])
        ne = _call_line(mocks.resources["media-host-node-exporter"].inputs["stdin"])
        assert "host-node-exporter.sh" in ne and "--listen 192.168.1.10:9100" in ne and "pct exec" not in \
            mocks.resources["media-host-node-exporter"].inputs["create"]
        assert mocks.resources["monitoring-bootstrap"].inputs["create"] == "pct exec 204 -- bash -s"

    return done(g).apply(check)


@pulumi.runtime.test
def test_metrics_bind_the_containers_address_and_allow_only_the_monitoring_container(program):
    mocks, g = program(stack())

    def check(_):
        line = _call_line(mocks.resources["transcoder-pipeline"].inputs["stdin"])
        assert "--metrics-bind 192.168.1.201 --metrics-allow 192.168.1.204/32" in line
        rip = _call_line(mocks.resources["ripper-media-rip"].inputs["stdin"])
        assert "--metrics-port 9465 --metrics-bind 192.168.1.202 --metrics-allow 192.168.1.204/32" in rip
        assert g["urls"]["metrics"]["url"] == "http://192.168.1.201:9464/metrics"

    return done(g).apply(check)


@pulumi.runtime.test
def test_receiver_tokens_travel_only_as_secret_stdin(program):
    mocks, g = program(stack())

    def check(_):
        boot = mocks.resources["monitoring-bootstrap"]
        raw = mocks.raw_inputs["monitoring-bootstrap"]["stdin"]
        assert isinstance(raw, dict) and raw.get(SECRET_SIG), "the bundle with the token must be a secret"
        stdin = boot.inputs["stdin"]
        line = _call_line(stdin)
        assert "--secrets-stdin" in line and "tg-token-not-real" not in line
        assert stdin.split("__HOMELAB_STDIN__")[1].strip("'\n") == 'alertTelegramToken="tg-token-not-real"'
        for name, a in mocks.resources.items():
            if name != "monitoring-bootstrap":
                assert "tg-token-not-real" not in json.dumps(a.inputs, default=str), name

    return done(g).apply(check)


@pulumi.runtime.test
def test_the_proof_waits_for_what_it_scrapes_and_becomes_the_output(program):
    mocks, g = program(stack())
    from tests.unit.test_program import DEPENDS_ON

    def check(out):
        deps = {getattr(d, "_name", None) for d in DEPENDS_ON["monitoring-verify"]}
        assert {"monitoring-bootstrap", "transcoder-pipeline", "media-host-node-exporter"} <= deps, deps
        mon = out[-1]
        assert mon["prometheus"]["url"] == "http://192.168.1.204:9090/"
        assert mon["alertmanager"]["url"] == "http://192.168.1.204:9093/" and mon["grafana"] is None
        assert mon["ok"] is False  # the mock's verify printed no proof: never reported as fine

    return done(g).apply(check)


# --- config --------------------------------------------------------------------------------

def problems(config: dict[str, str], **secrets) -> list[str]:
    with pytest.raises(ConfigError) as e:
        cfg_of(config, **secrets)
    return e.value.messages


def test_dhcp_addresses_are_refused_with_the_key_named():
    config = stack(ipv4="dhcp")
    config[f"{NS}:ripper"] = json.dumps({**json.loads(config[f"{NS}:ripper"]), "ipv4": "dhcp"})
    msgs = problems(config, alert_telegram_token=True)
    assert any(m.startswith(f"{NS}:monitoring.ipv4 is dhcp") for m in msgs), msgs
    assert any(m.startswith(f"{NS}:ripper.ipv4 is dhcp") for m in msgs), msgs


def test_a_receiver_without_its_secret_is_refused():
    msgs = problems(stack())
    assert any("monitoring.receivers.telegram" in m and "alertTelegramToken" in m for m in msgs), msgs


def test_grafana_needs_its_admin_password_on_loopback_too():
    for bind in ("0.0.0.0", "127.0.0.1"):
        msgs = problems(stack(grafana={"enabled": True, "bind": bind}), alert_telegram_token=True)
        assert any("monitoring.grafana is enabled" in m and "grafanaAdminPassword" in m for m in msgs), msgs
    cfg_of(stack(grafana={"enabled": True}), alert_telegram_token=True, grafana_admin_password=True)  # fine


@pytest.mark.parametrize("key,value,needle", [
    ("retention", "30 days", "Prometheus duration"),
    ("vmId", 201, "monitoring.vmId and transcoder.vmId are both 201"),
    ("node", "pve2", "monitoring.node = 'pve2' is refused"),
    ("receivers", {"webhook": {"url": "ftp://x"}}, "monitoring.receivers.webhook.url"),
    ("receivers", {"email": {"to": "a@b.c", "from": "not-an-address", "smarthost": "smtp:25"}},
     "monitoring.receivers.email.from"),
    ("grafana", {"fingerprint": "1234"}, "40-hex-digit"),
    ("extraRawLines", ["lxc.mount.entry: /dev/net/tun dev/net/tun none bind,create=file"], "unprivileged"),
])
def test_bad_values_are_refused_naming_the_key(key, value, needle):
    msgs = problems(stack(**{key: value}), alert_telegram_token=True)
    assert any(needle in m for m in msgs), msgs


def test_loopback_ssh_host_needs_the_node_address():
    config = stack()
    mon = json.loads(config[f"{NS}:monitoring"])
    del mon["nodeAddress"]
    config[f"{NS}:monitoring"] = json.dumps(mon)
    config[f"{NS}:ssh"] = json.dumps({"host": "127.0.0.1", "port": 12222})
    assert any("monitoring.nodeAddress is not set" in m for m in problems(config, alert_telegram_token=True))


# --- rendered files ------------------------------------------------------------------------

def test_prometheus_yml_scrapes_every_service_with_the_jobs_the_rules_expect():
    cfg = cfg_of(stack(), alert_telegram_token=True)
    doc = yaml.safe_load(mr.prometheus_yml(cfg))
    jobs = {j["job_name"]: j["static_configs"][0]["targets"] for j in doc["scrape_configs"]}
    assert jobs == {"media-pipeline": ["192.168.1.201:9464"], "media-rip": ["192.168.1.202:9465"],
                    "node": ["192.168.1.10:9100"], "prometheus": ["127.0.0.1:9090"],
                    "alertmanager": ["127.0.0.1:9093"]}
    assert doc["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    assert "--storage.tsdb.retention.time=30d" in mr.prometheus_args(cfg)
    rules = yaml.safe_load(mr.rules_yml())
    expr_jobs = {j for g in rules["groups"] for r in g["rules"] for j in ("media-pipeline", "media-rip") if j in r["expr"]}
    assert expr_jobs <= set(jobs)


def test_alertmanager_yml_routes_to_the_receivers_with_placeholders_for_secrets():
    cfg = cfg_of(stack(receivers={"telegram": {"chatId": -100123}, "webhook": {"url": "http://ntfy.lan/a"},
                                  "email": {"to": "me@example.com", "from": "pve@example.com",
                                            "smarthost": "smtp.example.com:587", "username": "pve"}}),
                 alert_telegram_token=True, alert_smtp_password=True, alert_webhook_token=True)
    text = mr.alertmanager_yml(cfg)
    doc = yaml.safe_load(text)
    assert doc["route"]["receiver"] == "homelab" and doc["route"]["group_by"] == ["alertname", "instance"]
    rec = doc["receivers"][0]
    assert rec["telegram_configs"][0]["chat_id"] == -100123
    assert rec["telegram_configs"][0]["bot_token"] == "__SECRET_alertTelegramToken__"
    assert rec["email_configs"][0]["auth_password"] == "__SECRET_alertSmtpPassword__"
    assert rec["webhook_configs"][0]["http_config"]["authorization"]["credentials"] == "__SECRET_alertWebhookToken__"
    assert mr.used_secrets(cfg) == ["alertSmtpPassword", "alertTelegramToken", "alertWebhookToken"]
    # what the script puts in: a JSON string is a YAML scalar whatever the token holds
    tricky = 'a"b\\c: #d'
    filled = text.replace("__SECRET_alertTelegramToken__", json.dumps(tricky))
    assert yaml.safe_load(filled)["receivers"][0]["telegram_configs"][0]["bot_token"] == tricky
    assert mr.secrets_stdin({"alertTelegramToken": tricky}) == f"alertTelegramToken={json.dumps(tricky)}\n"


@pytest.mark.skipif(not shutil.which("promtool"), reason="promtool comes with Debian's prometheus (make deps)")
def test_promtool_accepts_the_rendered_prometheus_yml(tmp_path):
    cfg = cfg_of(stack(), alert_telegram_token=True)
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "a.yml").write_text(mr.rules_yml())
    (tmp_path / "p.yml").write_text(mr.prometheus_yml(cfg).replace("/etc/prometheus/rules/", "rules/"))
    run = subprocess.run(["promtool", "check", "config", "p.yml"], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


@pulumi.runtime.test
def test_grafana_comes_from_its_pinned_repository_with_the_password_on_secret_stdin(program):
    import io
    import tarfile

    mocks, g = program(stack(grafana={"enabled": True}) | {f"{NS}:grafanaAdminPassword": "graf-pass-not-real"})

    def check(out):
        step = mocks.resources["monitoring-grafana"]
        assert step.inputs["create"] == "pct exec 204 -- bash -s"
        raw = mocks.raw_inputs["monitoring-grafana"]["stdin"]
        assert isinstance(raw, dict) and raw.get(SECRET_SIG)
        stdin = step.inputs["stdin"]
        line = _call_line(stdin)
        assert "--fingerprint B53AE77BADB630A683046005963FA27710458545" in line
        assert "--repo https://apt.grafana.com " in line and "--admin-password-stdin" in line
        assert "graf-pass-not-real" not in line
        assert stdin.split("__HOMELAB_STDIN__")[1].strip("'\n") == "graf-pass-not-real"
        for name, a in mocks.resources.items():
            if name != "monitoring-grafana":
                assert "graf-pass-not-real" not in json.dumps(a.inputs, default=str), name
        # the provisioning travels as a tarball in the bundle: the data source is this Prometheus
        b64 = stdin.split('base64 -d > "$_d/grafana-provisioning.tar.gz" <<\'__HOMELAB_EOF__\'\n')[1].split("__HOMELAB_EOF__")[0]
        import base64
        tar = tarfile.open(fileobj=io.BytesIO(base64.b64decode(b64)))
        names = set(tar.getnames())
        assert {"grafana.ini", "provisioning/datasources/prometheus.yaml", "dashboards/media-pipeline.json"} <= names
        ds = tar.extractfile("provisioning/datasources/prometheus.yaml").read().decode()
        assert 'url: "http://127.0.0.1:9090"' in ds
        assert "--grafana-port 3000" in _call_line(mocks.resources["monitoring-verify"].inputs["stdin"])
        assert out[-1]["grafana"]["url"] == "http://192.168.1.204:3000/"

    return done(g).apply(check)
