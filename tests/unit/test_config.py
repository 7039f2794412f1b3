"""Config models: the plan's values load; every bad value is refused naming key, value and fix."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components.config import ConfigError, Secrets, from_cli_json, from_stack_file, parse

ROOT = Path(__file__).resolve().parents[2]
ALL_SECRETS = Secrets(proxmox_password=True, ssh_private_key=True)


def homelab_raw():
    doc = yaml.safe_load((ROOT / "Pulumi.homelab.yaml").read_text())
    return {k.split(":", 1)[1]: v for k, v in doc["config"].items()}


def refused(raw, secrets=ALL_SECRETS):
    with pytest.raises(ConfigError) as exc:
        parse(raw, secrets)
    return exc.value.messages


def test_homelab_stack_has_the_plans_values():
    cfg = parse(homelab_raw(), ALL_SECRETS)
    t, r = cfg.transcoder, cfg.ripper
    assert (t.vm_id, t.hostname, t.cores, t.memory, t.swap, t.disk_gb) == (201, "transcoder", 8, 8192, 2048, 20)
    assert (r.vm_id, r.hostname, r.cores, r.memory, r.disk_gb) == (202, "ripper", 4, 4096, 20)
    assert t.ipv4 == r.ipv4 == "dhcp" and cfg.network.bridge == "vmbr0"
    assert cfg.template.file_name.startswith("debian-12-standard")
    assert cfg.storage.pool == "/mnt/storage"
    assert (cfg.storage.staging, cfg.storage.movies, cfg.storage.tv) == ("staging", "movies", "tv")
    assert (cfg.media.user, cfg.media.uid, cfg.media.gid) == ("media", 1000, 1000)
    assert (cfg.host_groups.video, cfg.host_groups.render, cfg.host_groups.cdrom) == (44, 104, 24)
    assert cfg.encoding.languages == ["eng", "bul"]
    assert (cfg.encoding.encoder, cfg.encoding.preset, cfg.encoding.crf) == ("libx265", "slow", 18)


@pytest.mark.parametrize(
    "section,key,value,expect",
    [
        ("transcoder", "cores", 0, "homelab-media:transcoder.cores = 0"),
        ("transcoder", "memory", "lots", "homelab-media:transcoder.memory = 'lots'"),
        ("ripper", "vmId", 42, "homelab-media:ripper.vmId = 42"),
        ("ripper", "ipv4", "10.0.0.5", "needs a prefix length"),
        ("ripper", "ipv4", "banana", "must be 'dhcp' or an address"),
        ("storage", "pool", "mnt/storage", "homelab-media:storage.pool = 'mnt/storage'"),
        ("storage", "pool", "/", "absolute path below /"),
        ("storage", "staging", "../etc", "relative directory under the pool"),
        ("encoding", "crf", 60, "homelab-media:encoding.crf = 60"),
        ("encoding", "encoder", "x264", "'libx265' or 'hevc_qsv'"),
        ("encoding", "languages", ["english"], "not ISO 639 codes"),
        ("media", "uid", -1, "homelab-media:media.uid = -1"),
        ("media", "user", "Media User", "Linux user name"),
        ("proxmox", "endpoint", "pve.lan", "https://pve.lan:8006/"),
        ("transcoder", "coresCount", 4, "homelab-media:transcoder.coresCount is not a known setting"),
        ("makemkv", "version", "1.17.0", "not pinned in scripts/makemkv-versions.txt (pinned: 1.18.4"),
        ("ripper", "minLength", -5, "homelab-media:ripper.minLength = -5"),
        ("ripper", "autoRip", "sometimes", "homelab-media:ripper.autoRip = 'sometimes'"),
        ("ripper", "device", "/dev/sg1", "optical drive node such as /dev/sr0"),
        ("transcoder", "minLength", 600, "homelab-media:transcoder.minLength is not a known setting"),
    ],
)
def test_bad_values_are_refused_naming_key_value_and_fix(section, key, value, expect):
    raw = homelab_raw()
    raw[section] = {**raw[section], key: value}
    messages = refused(raw)
    assert any(expect in m for m in messages), messages


def test_every_problem_is_reported_at_once():
    raw = homelab_raw()
    raw["transcoder"] = {**raw["transcoder"], "cores": 0, "memory": 1}
    raw["encoding"] = {**raw["encoding"], "crf": 99}
    messages = refused(raw)
    assert len([m for m in messages if "refused" in m]) == 3


def test_same_vm_id_twice_is_refused():
    raw = homelab_raw()
    raw["ripper"] = {**raw["ripper"], "vmId": 201}
    assert any("both 201" in m for m in refused(raw))


def test_unknown_section_is_named():
    raw = homelab_raw()
    raw["trancoder"] = {"cores": 2}
    assert any("homelab-media:trancoder is not a setting" in m for m in refused(raw))


def test_api_token_is_refused_with_the_root_pam_explanation():
    messages = refused(homelab_raw(), Secrets(proxmox_api_token=True, ssh_private_key=True))
    text = "\n".join(messages)
    assert "proxmoxApiToken" in text and "root@pam with a password" in text and "bind mount" in text


def test_non_root_pam_user_is_refused():
    raw = homelab_raw()
    raw["proxmox"] = {**raw["proxmox"], "username": "admin@pve"}
    assert any("only to root@pam" in m for m in refused(raw))


def test_missing_secrets_are_named_with_the_command_to_set_them():
    messages = refused(homelab_raw(), Secrets())
    assert any("pulumi config set --secret homelab-media:proxmoxPassword" in m for m in messages)
    assert any("homelab-media:sshPrivateKey" in m for m in messages)


def test_stack_file_cli_validates_offline(tmp_path):
    ok = subprocess.run(
        [sys.executable, "-m", "components.config", str(ROOT / "Pulumi.homelab.yaml")],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert ok.returncode == 0, ok.stderr
    bad = tmp_path / "Pulumi.bad.yaml"
    doc = yaml.safe_load((ROOT / "Pulumi.homelab.yaml").read_text())
    doc["config"]["homelab-media:transcoder"]["cores"] = -2
    doc["config"]["homelab-media:encoding"]["preset"] = "ludicrous"
    doc["config"]["homelab-media:proxmoxPassword"] = "hunter2"
    bad.write_text(yaml.safe_dump(doc))
    res = subprocess.run(
        [sys.executable, "-m", "components.config", str(bad)], cwd=ROOT, capture_output=True, text=True
    )
    assert res.returncode == 1
    assert "transcoder.cores = -2" in res.stderr
    assert "encoding.preset = 'ludicrous'" in res.stderr
    assert "written in clear text" in res.stderr and "hunter2" not in res.stderr


def test_stack_file_missing_and_unparsable(tmp_path):
    with pytest.raises(ConfigError, match="no such stack file"):
        from_stack_file(tmp_path / "nope.yaml")
    broken = tmp_path / "Pulumi.x.yaml"
    broken.write_text("config: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        from_stack_file(broken)


def cli_json(raw: dict, secrets=("proxmoxPassword", "sshPrivateKey")) -> dict:
    """What `pulumi config --json` prints (shape taken from CLI v3.274.1): objects as a JSON
    string plus objectValue, scalars as value, secrets as {"secret": true} without a value."""
    doc = {}
    for key, value in raw.items():
        entry = {"value": value if isinstance(value, str) else json.dumps(value), "secret": False}
        if isinstance(value, (dict, list)):
            entry["objectValue"] = value
        doc[f"homelab-media:{key}"] = entry
    for key in secrets:
        doc[f"homelab-media:{key}"] = {"secret": True}
    doc["proxmoxve:insecure"] = {"value": "true", "secret": False}  # another namespace: not ours
    return doc


def test_the_cli_json_reads_as_the_stack_file_does():
    """tools/adopt-containers.sh reads the config through `pulumi config --json`."""
    assert from_cli_json(cli_json(homelab_raw())) == parse(homelab_raw(), ALL_SECRETS)
    no_objects = {k: {kk: vv for kk, vv in v.items() if kk != "objectValue"} for k, v in cli_json(homelab_raw()).items()}
    assert from_cli_json(no_objects) == parse(homelab_raw(), ALL_SECRETS)  # objects given only as JSON text


def test_the_cli_json_is_refused_naming_the_key():
    raw = homelab_raw()
    raw["transcoder"] = {**raw["transcoder"], "vmId": 42}
    with pytest.raises(ConfigError) as exc:
        from_cli_json(cli_json(raw, secrets=()), require_secrets=True)
    text = "\n".join(exc.value.messages)
    assert "transcoder.vmId" in text and "proxmoxPassword" in text


def test_the_cli_json_is_read_as_the_program_reads_it():
    """components.stack.load: sections through get_object (JSON text, "null" is unset), any
    other key of the namespace refused; a section stored as a secret has no value to read."""
    doc = cli_json(homelab_raw())
    doc["homelab-media:pipelin"] = {"value": '{"webPort": 9000}', "secret": False}
    doc["homelab-media:verify"] = {"value": "null", "secret": False}
    doc["homelab-media:network"] = {"secret": True}
    doc["homelab-media:devices"] = {"value": "auto", "secret": False}
    with pytest.raises(ConfigError) as exc:
        from_cli_json(doc)
    text = "\n".join(exc.value.messages)
    assert "homelab-media:pipelin is not a setting of this program" in text
    assert "homelab-media:network is stored as a secret" in text
    assert "homelab-media:devices must be a mapping of settings, got 'auto'" in text
    assert not [m for m in exc.value.messages if "homelab-media:verify" in m]  # "null": unset, as get_object has it


def test_all_stack_files_in_the_repo_validate():
    for f in ROOT.glob("Pulumi.*.yaml"):
        from_stack_file(f)


@pytest.mark.parametrize(
    "section,values,expect",
    [
        ("storage", {"staging": "media", "movies": "media/movies"}, "storage.movies ('media/movies') and storage.staging ('media') overlap"),
        ("network", {"dns": ["dns.example"]}, "'dns.example' is not an IP address"),
        ("network", {"gateway": "10.0.0"}, "must be an IPv4 address"),
        ("encoding", {"qsvDevice": "/dev/sg0"}, "must be a render node"),
        ("pipeline", {"publicUrl": "media.example.lan"}, "homelab-media:pipeline.publicUrl = 'media.example.lan' is refused: "
                                                          "needs http:// or https://"),
        ("pipeline", {"publicUrl": "https://media.example.lan/status"}, "must be scheme://host[:port] only"),
        ("pipeline", {"trustedProxies": ["proxy.lan"]}, "'proxy.lan' is not an IP address or network"),
        ("transcoder", {"allowRecreate": "maybe"}, "homelab-media:transcoder.allowRecreate = 'maybe' is refused"),
    ],
)
def test_more_bad_values(section, values, expect):
    raw = homelab_raw()
    raw[section] = {**raw.get(section, {}), **values}
    messages = refused(raw)
    assert any(expect in m for m in messages), messages


def test_static_address_needs_a_gateway():
    raw = homelab_raw()
    raw["ripper"] = {**raw["ripper"], "ipv4": "192.168.1.202/24"}
    assert any("ripper.ipv4 is a static address but network.gateway is not set" in m for m in refused(raw))
    raw["network"] = {**raw["network"], "gateway": "192.168.1.1"}
    parse(raw, ALL_SECRETS)


def test_status_page_beyond_loopback_needs_the_password_secret():
    raw = homelab_raw()
    raw["pipeline"] = {"webPort": 8480, "webBind": "0.0.0.0"}
    msg = "\n".join(refused(raw, Secrets(proxmox_password=True, ssh_private_key=True)))
    assert "homelab-media:pipeline.webBind = '0.0.0.0'" in msg and "homelab-media:statusPassword" in msg
    assert "pulumi config set --secret homelab-media:statusPassword" in msg
    cfg = parse(raw, Secrets(proxmox_password=True, ssh_private_key=True, status_password=True))
    assert cfg.pipeline.web_bind == "0.0.0.0"
    raw["pipeline"] = {"webPort": 0, "webBind": "0.0.0.0"}  # off: nothing listens
    parse(raw, Secrets(proxmox_password=True, ssh_private_key=True))


def test_status_page_port_and_bind_are_checked():
    raw = homelab_raw()
    raw["pipeline"] = {"webPort": 9464, "metricsPort": 9464}
    assert "pipeline.webPort and pipeline.metricsPort are both 9464" in "\n".join(refused(raw))
    raw["pipeline"] = {"webBind": "lan"}
    assert "homelab-media:pipeline.webBind = 'lan' is refused" in "\n".join(refused(raw))


def test_page_urls_for_static_dhcp_and_loopback():
    from components.config import page_urls

    raw = homelab_raw()
    raw["pipeline"] = {"webBind": "0.0.0.0", "metricsBind": "0.0.0.0"}
    raw["transcoder"] = {**raw["transcoder"], "ipv4": "192.168.1.201/24"}
    raw["network"] = {**raw.get("network", {}), "gateway": "192.168.1.1"}
    with_password = Secrets(proxmox_password=True, ssh_private_key=True, status_password=True)
    urls = page_urls(parse(raw, with_password))
    assert urls["page"]["url"] == "http://192.168.1.201:8480/" and urls["page"]["password"] is True
    assert urls["metrics"]["url"] == "http://192.168.1.201:9464/metrics"
    raw["pipeline"] = {"metricsPort": 0}
    urls = page_urls(parse(raw, ALL_SECRETS))
    assert urls["page"]["url"] == "http://127.0.0.1:8480/" and "pct exec 201" in urls["page"]["reachable"]
    assert urls["metrics"] == {"url": None, "reachable": "off (port 0)"}


# --- issue 10, item 4: settings checked together, every string setting validated -----------


@pytest.mark.parametrize(
    "encoding,key,expect",
    [
        ({"encoder": "hevc_qsv", "preset": "ultrafast"}, "encoding.preset = 'ultrafast'", "not a hevc_qsv preset"),
        ({"encoder": "hevc_qsv", "preset": "superfast"}, "encoding.preset = 'superfast'", "not a hevc_qsv preset"),
        ({"encoder": "hevc_qsv", "crf": 0}, "encoding.crf = 0", "1-51 for hevc_qsv"),
        ({"encoder": "libx265", "preset": "turbo"}, "encoding.preset = 'turbo'", "not a libx265 preset"),
    ],
)
def test_encoder_preset_quality_combinations_are_refused_by_media_transcodes_rules(encoding, key, expect):
    raw = homelab_raw()
    raw["encoding"] = {**raw["encoding"], **encoding}
    msgs = refused(raw)
    assert any(key in m and expect in m and "encoding.encoder" in m for m in msgs), msgs


def test_combinations_media_transcode_accepts_pass_and_the_rules_are_the_same_ones():
    from media_pipeline.ffargs import PRESETS, QUALITY_RANGE, EncodeOptions

    raw = homelab_raw()
    for encoder, presets in PRESETS.items():
        lo, hi = QUALITY_RANGE[encoder]
        for preset in presets:
            for crf in (lo, hi):
                raw["encoding"] = {**raw["encoding"], "encoder": encoder, "preset": preset, "crf": crf}
                assert parse(raw, ALL_SECRETS).encoding.preset == preset
                assert not EncodeOptions(encoder=encoder, preset=preset, crf=crf).problems()


def test_combination_problems_come_with_the_other_problems():
    raw = homelab_raw()
    raw["encoding"] = {**raw["encoding"], "encoder": "hevc_qsv", "preset": "ultrafast"}
    raw["ssh"] = {**raw["ssh"], "host": "pve lan"}
    msgs = refused(raw)
    assert any("encoding.preset" in m for m in msgs) and any("ssh.host" in m for m in msgs)


@pytest.mark.parametrize(
    "section,key,value,expect",
    [
        ("ssh", "host", "pve lan", "host name (e.g. pve.lan) or an IP address"),
        ("ssh", "host", "-pve.lan", "host name"),
        ("ssh", "host", "pve.lan;reboot", "host name"),
        ("ssh", "host", "", "host name"),
        ("template", "datastore", "Local", "Proxmox storage id"),
        ("template", "datastore", "local lvm", "Proxmox storage id"),
        ("transcoder", "datastore", "local-lvm:", "Proxmox storage id"),
        ("ripper", "datastore", "-x", "Proxmox storage id"),
        ("node", "snippetsStorage", "Local", "Proxmox storage id"),
        ("network", "bridge", "vmbr 0", "Linux bridge name"),
        ("template", "checksum", "abc", "sha512 sum: 128 hex digits"),
        ("devices", "opticalDrive", "x;rm -rf /", "by-id name"),
        ("makemkv", "baseUrl", "ftp://mirror/makemkv", "http(s) URL"),
        ("transcoder", "extraRawLines", ["lxc.idmap: u 0 100000 65536"], "is not managed here"),
        ("ripper", "extraRawLines", ["lxc.cgroup2.devices.allow: c 10 rwm"], "malformed lxc.cgroup2.devices.allow"),
        ("ripper", "extraRawLines", ["lxc.mount.entry: /dev/net/tun"], "malformed lxc.mount.entry"),
    ],
)
def test_string_settings_are_validated_naming_the_key(section, key, value, expect):
    raw = homelab_raw()
    raw[section] = {**(raw.get(section) or {}), key: value}
    msgs = refused(raw)
    assert any(f"homelab-media:{section}.{key} = " in m and expect in m for m in msgs), msgs


def test_good_string_settings_pass():
    raw = homelab_raw()
    raw["ssh"] = {**raw["ssh"], "host": "192.168.1.10"}
    raw["node"] = {"snippetsStorage": "nas-snippets"}
    raw["devices"] = {"opticalDrive": "ata-HL-DT-ST_BD-RE_WH16NS60_KLZK1234"}
    raw["transcoder"] = {**raw["transcoder"], "extraRawLines": ["lxc.cgroup2.devices.allow:  c 10:200 rwm",
                                                                 "lxc.mount.entry: /dev/net/tun dev/net/tun none bind,create=file"]}
    cfg = parse(raw, ALL_SECRETS)
    assert cfg.node.snippets_storage == "nas-snippets" and cfg.ssh.host == "192.168.1.10"
    assert cfg.transcoder.extra_raw_lines[0] == "lxc.cgroup2.devices.allow: c 10:200 rwm"  # normalized
    assert parse(homelab_raw(), ALL_SECRETS).devices.optical_drive == "auto"
    assert parse(homelab_raw(), ALL_SECRETS).makemkv.base_url == "https://www.makemkv.com/download"


@pytest.mark.parametrize(
    "value",
    [
        "/dev/dri/renderD129",
        "/dev/dri/by-path/pci-0000:03:00.0-render",  # stable across reboots (issue item 4b)
        "/dev/dri/by-path/pci-0000:00:02.0-render",
        "/dev/dri/by-path/pci-10000:e1:1f.7-render",  # a VMD domain has 5 hex digits
    ],
)
def test_qsv_device_accepts_a_render_node_or_its_stable_pci_name(value):
    raw = homelab_raw()
    raw["encoding"] = {**raw["encoding"], "qsvDevice": value}
    assert parse(raw, ALL_SECRETS).encoding.qsv_device == value


@pytest.mark.parametrize(
    "value",
    [
        "/dev/dri/by-path/pci-0000:03:00.0-card",  # the display node: QSV needs the render node
        "/dev/dri/by-path/pci-0000:03:00.0",
        "/dev/dri/by-path/pci-0000:3:00.0-render",
        "/dev/dri/by-path/pci-0000:03:00.8-render",  # functions are 0-7
        "/dev/dri/by-path/pci-0000:03:20.0-render",  # devices are 00-1f
        "/dev/dri/by-path/pci-0000:03:00.0-render/",
        "/dev/dri/by-path/../renderD128",
        "renderD129",
        "/dev/dri/card1",
        "8086:56a0",
        "0000:03:00.0",
    ],
)
def test_qsv_device_refuses_anything_else_naming_the_key_and_the_forms(value):
    raw = homelab_raw()
    raw["encoding"] = {**raw["encoding"], "qsvDevice": value}
    messages = refused(raw)
    mine = [m for m in messages if m.startswith(f"homelab-media:encoding.qsvDevice = {value!r} is refused: ")]
    assert len(mine) == 1, messages
    assert "must be a render node" in mine[0]
    assert "/dev/dri/by-path/pci-0000:03:00.0-render" in mine[0] and "/dev/dri/renderD129" in mine[0]
    assert "ls -l /dev/dri/by-path" in mine[0]


def test_the_status_page_behind_a_proxy_reaches_media_pipeline():
    raw = homelab_raw()
    raw["pipeline"] = {"publicUrl": "https://media.example.lan/", "trustedProxies": ["192.168.1.10", "10.0.0.0/24"]}
    cfg = parse(raw, ALL_SECRETS)
    assert cfg.pipeline.public_url == "https://media.example.lan"
    assert cfg.pipeline.trusted_proxies == ["192.168.1.10", "10.0.0.0/24"]
