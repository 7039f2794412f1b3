"""JellyfinCT under Pulumi's mocks, and the jellyfin config section.

The program tests' fixture (tests/unit/test_program.py) runs __main__.py; these tests add the
jellyfin section, the stdout of its scripts and the node's PVE release (bpg's getVersion).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pulumi
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_program as tp  # noqa: E402  (the program fixture and its mocks)
from test_program import program  # noqa: E402,F401  (the fixture, used by name)

from components import render  # noqa: E402
from components.config import ConfigError, Secrets, parse  # noqa: E402

NS = tp.NS
ROOT = tp.ROOT
PASSWORD = "jf-admin-pass-not-real"
API_KEY = "0123456789abcdef0123456789abcdef"
TEMPLATE_GROUP = {"group": "render", "gid": 993, "source": "new", "template": "/var/lib/vz/template/cache/x.tar.zst"}
INSTALL = {"repo": "https://repo.jellyfin.org/debian", "suite": "bookworm", "changed": []}
CONFIGURE = {"ok": True, "libraries": ["Movies", "Shows"], "apiKey": API_KEY}
VERIFY = {"ok": True, "version": "10.10.7", "url": "http://jellyfin:8096", "read_only": True, "encode": "ok"}
VERSION_CALLS: list[str] = []


@pytest.fixture
def jf(program, monkeypatch):
    """Run the program with jellyfin enabled (plus overrides); the node runs PVE `release`."""

    def run(jellyfin: dict | None = None, release: str = "8.2", preview: bool = False, password: bool = True,
            discovery: dict | None = None, **over):
        monkeypatch.setitem(tp.STDOUT, "host-template-group.sh", TEMPLATE_GROUP)
        monkeypatch.setitem(tp.STDOUT, "ct-install-jellyfin.sh", INSTALL)
        monkeypatch.setitem(tp.STDOUT, "ct-jellyfin-configure.sh", CONFIGURE)
        monkeypatch.setitem(tp.STDOUT, "verify-jellyfin.sh", VERIFY)
        if discovery is not None:
            monkeypatch.setitem(tp.STDOUT, "host-discover.sh", discovery)
        VERSION_CALLS.clear()

        def call(self, args):
            if args.token == "proxmoxve:index/getVersion:getVersion":
                VERSION_CALLS.append(release)
                return {"id": "version", "release": release, "version": f"{release}.4", "repositoryId": "abc"}
            return {}

        monkeypatch.setattr(tp.Mocks, "call", call)
        cfg = {f"{NS}:jellyfin": json.dumps({"enabled": True, **(jellyfin or {})}), **over}
        if password:
            cfg[f"{NS}:jellyfinAdminPassword"] = PASSWORD
        return program(tp.homelab_config(**cfg), preview=preview)

    return run


def done(g):
    outs = [tp.done(g)]
    if g.get("jellyfin") is not None:
        outs += [g["jellyfin"].verification, g["jellyfin"].install, g["jellyfin"].api_key]
    return pulumi.Output.all(*outs)


def _call_line(stdin: str) -> str:
    return tp._call_line(stdin)


# --- disabled: nothing of Jellyfin's -------------------------------------------------------------

@pulumi.runtime.test
def test_disabled_declares_no_jellyfin_resources(program):
    mocks, g = program(tp.homelab_config())

    def check(_):
        assert g["jellyfin"] is None
        assert not [n for n in mocks.resources if n.startswith("jellyfin")]
        assert "homelab:index:JellyfinCT" not in {a.typ for a in mocks.resources.values()}
        assert 203 not in tp._containers(mocks)

    return tp.done(g).apply(check)


# --- enabled ---------------------------------------------------------------------------------------

@pulumi.runtime.test
def test_enabled_container_is_unprivileged_with_read_only_libraries_and_the_render_node(jf):
    mocks, g = jf()

    def check(_):
        # the component and its container share the name (mocks keep the last one registered)
        assert mocks.resources["jellyfin"].typ in ("homelab:index:JellyfinCT", "proxmoxve:index/containerLegacy:ContainerLegacy")
        assert g["jellyfin"].container._name == "jellyfin"
        ct = tp._containers(mocks)[203]
        i = ct.inputs
        # never privileged
        assert i["unprivileged"] is True
        assert i["features"]["nesting"] is True
        assert i["nodeName"] == "pve" and i["initialization"]["hostname"] == "jellyfin"
        assert (i["cpu"]["cores"], i["memory"]["dedicated"], i["disk"]["size"]) == (2, 2048, 16)
        # movies and tv only, read-only, at /media/...; never staging, never the whole pool
        assert i["mountPoints"] == [
            {"volume": "/mnt/storage/movies", "path": "/media/movies", "readOnly": True},
            {"volume": "/mnt/storage/tv", "path": "/media/tv", "readOnly": True},
        ]
        volumes = [m["volume"] for m in i["mountPoints"]]
        assert "/mnt/storage" not in volumes and not any("staging" in v for v in volumes)
        # one devN: the transcoder's GPU (discovery's render node) with the container's render gid
        assert i["devicePassthroughs"] == [{"path": "/dev/dri/renderD129", "gid": 993, "mode": "0660"}]
        # no raw lxc lines, no hookscript (devN is resolved by PVE at every start: docs/adr/0014)
        assert "hookScriptFileId" not in i
        assert not [n for n in mocks.resources if n.startswith("jellyfin") and n.endswith("raw-lines")]
        assert VERSION_CALLS == ["8.2"]

    return done(g).apply(check)


@pulumi.runtime.test
def test_the_render_gid_is_read_from_the_template_and_made_in_the_container(jf):
    mocks, g = jf()

    def check(_):
        r = mocks.resources
        step = r["jellyfin-render-gid"].inputs
        assert step["create"] == "bash -s"  # on the node, before the container exists
        assert "--volume media-host-template-id --group render --key jellyfin.gpu" in _call_line(step["stdin"])
        assert g["jellyfin"].template_group in tp.DEPENDS_ON["jellyfin-render-gid"] or \
            g["host"].template in tp.DEPENDS_ON["jellyfin-render-gid"]
        install = r["jellyfin-install"].inputs
        assert install["create"] == "pct exec 203 -- bash -s"
        assert _call_line(install["stdin"]).endswith("ct-install-jellyfin.sh\" --render-gid 993 </dev/null")
        assert g["jellyfin"].container in tp.DEPENDS_ON["jellyfin-install"]

    return done(g).apply(check)


@pulumi.runtime.test
def test_configure_gets_the_password_on_secret_stdin_and_the_api_key_stays_secret(jf):
    mocks, g = jf()

    def check(values):
        raw = mocks.raw_inputs["jellyfin-configure"]["stdin"]
        assert isinstance(raw, dict) and raw.get(tp.SECRET_SIG), "the bundle with the password must be a secret"
        stdin = mocks.resources["jellyfin-configure"].inputs["stdin"]
        argv = _call_line(stdin)
        assert PASSWORD not in argv and "--password-stdin" in argv
        assert "--render-node /dev/dri/renderD129 --hwaccel vaapi" in argv
        assert "--port 8096 --admin-user admin" in argv and "--key-file /etc/homelab-media/jellyfin-api-key" in argv
        assert stdin.split("__HOMELAB_STDIN__")[1].lstrip("'").strip() == PASSWORD
        assert "media-pipeline.tar.gz" in stdin  # the configure CLI ships in the media_pipeline tarball
        for name, a in mocks.resources.items():
            if name != "jellyfin-configure":
                assert PASSWORD not in json.dumps(a.inputs, default=str), name
        # the API key: stdout is a secret output, not logged
        opts = tp.OPTS["jellyfin-configure"]
        assert "stdout" in (opts.additional_secret_outputs or [])
        assert mocks.resources["jellyfin-configure"].inputs["logging"] == "stderr"
        assert g["jellyfin"].install_step in tp.DEPENDS_ON["jellyfin-configure"]
        assert values[-1] == API_KEY

    return done(g).apply(check)


@pulumi.runtime.test
def test_the_api_key_output_is_a_secret(jf):
    mocks, g = jf()
    key = g["jellyfin"].api_key

    async def check():
        assert await key.is_secret()
        assert await key.future() == API_KEY

    import asyncio

    return asyncio.ensure_future(check())


@pulumi.runtime.test
def test_verification_is_exported_and_runs_after_configure(jf):
    mocks, g = jf()

    def check(values):
        verify = mocks.resources["jellyfin-verify"].inputs
        assert verify["create"] == "pct exec 203 -- bash -s"
        assert "--port 8096 --url-host jellyfin --render-node /dev/dri/renderD129 --hwaccel vaapi" in _call_line(verify["stdin"])
        assert g["jellyfin"].configure in tp.DEPENDS_ON["jellyfin-verify"]
        assert values[1] == VERIFY
        for step in ("jellyfin-install", "jellyfin-configure", "jellyfin-verify"):
            assert g["jellyfin"].container in (tp.OPTS[step].replace_with or []), step

    return done(g).apply(check)


@pulumi.runtime.test
def test_the_container_waits_for_its_vm_id_guard_and_the_host(jf):
    mocks, g = jf()

    def check(_):
        deps = tp.DEPENDS_ON["jellyfin"]
        names = {getattr(d, "_name", None) for d in deps}
        assert "jellyfin-vmid-guard" in names
        assert g["host"].setup in deps and g["host"].recreate_guard in deps
        assert "--vmid 203 --key jellyfin.vmId" in _call_line(mocks.resources["jellyfin-vmid-guard"].inputs["stdin"])

    return done(g).apply(check)


@pulumi.runtime.test
def test_the_recreate_guard_knows_jellyfins_own_read_only_mounts(jf):
    """Jellyfin's database is on its disk: a change of storage.movies/tv must not recreate it silently."""
    mocks, g = jf()

    def check(_):
        call = _call_line(mocks.resources["media-host-recreate-guard"].inputs["stdin"])
        assert ("--ct 203:jellyfin:jellyfin:local-lvm:16:0 --mp 203:mp0:/mnt/storage/movies:/media/movies:1 "
                "--mp 203:mp1:/mnt/storage/tv:/media/tv:1") in call

    return done(g).apply(check)


@pulumi.runtime.test
def test_a_chosen_render_node_and_a_static_address(jf):
    discovery = {**tp.DISCOVERY, "gpu": {"nodes": [
        {"path": "/dev/dri/card0", "type": "card", "major": 226, "minor": 0},
        {"path": "/dev/dri/renderD128", "type": "render", "major": 226, "minor": 128},
        {"path": "/dev/dri/card1", "type": "card", "major": 226, "minor": 1},
        {"path": "/dev/dri/renderD129", "type": "render", "major": 226, "minor": 129},
    ]}}
    mocks, g = jf({"gpu": "/dev/dri/renderD129", "ipv4": "192.168.1.203/24"}, discovery=discovery,
                  **{f"{NS}:network": json.dumps({"bridge": "vmbr0", "gateway": "192.168.1.1"})})

    def check(_):
        ct = tp._containers(mocks)[203].inputs
        assert ct["devicePassthroughs"] == [{"path": "/dev/dri/renderD129", "gid": 993, "mode": "0660"}]
        assert ct["initialization"]["ipConfigs"][0]["ipv4"] == {"address": "192.168.1.203/24", "gateway": "192.168.1.1"}
        assert "--url-host 192.168.1.203 " in _call_line(mocks.resources["jellyfin-verify"].inputs["stdin"])

    return done(g).apply(check)


@pulumi.runtime.test
def test_gpu_none_passes_no_device_and_asks_no_version(jf):
    mocks, g = jf({"gpu": "none"})

    def check(_):
        ct = tp._containers(mocks)[203].inputs
        assert not ct.get("devicePassthroughs")
        assert VERSION_CALLS == []
        assert "--render-gid" not in _call_line(mocks.resources["jellyfin-install"].inputs["stdin"])
        assert "--hwaccel none" in _call_line(mocks.resources["jellyfin-configure"].inputs["stdin"])

    return done(g).apply(check)


@pulumi.runtime.test
def test_preview_asks_the_api_nothing(jf):
    mocks, g = jf(preview=True)
    assert VERSION_CALLS == []
    return tp.done(g)


def test_an_old_pve_is_refused_naming_the_key(jf, monkeypatch):
    errors: list[str] = []
    monkeypatch.setattr(pulumi.log, "error", lambda msg, *a, **k: errors.append(msg))
    with pytest.raises(SystemExit) as exc:
        jf(release="8.0")
    assert exc.value.code == 1
    text = "\n".join(errors)
    assert "homelab-media:jellyfin.gpu" in text and "8.1" in text and "8.0" in text
    assert "apt full-upgrade" in text and "pulumi config set --path homelab-media:jellyfin.gpu none" in text


def test_missing_admin_password_is_refused(jf, monkeypatch):
    errors: list[str] = []
    monkeypatch.setattr(pulumi.log, "error", lambda msg, *a, **k: errors.append(msg))
    with pytest.raises(SystemExit) as exc:
        jf(password=False)
    assert exc.value.code == 1
    text = "\n".join(errors)
    assert "homelab-media:jellyfinAdminPassword is missing" in text
    assert "pulumi config set --secret homelab-media:jellyfinAdminPassword" in text


def test_a_gpu_that_discovery_does_not_list_is_refused_naming_the_key(jf):
    """The render node is checked against the node's discovery when it arrives: the up fails there."""
    with pytest.raises(Exception) as exc:
        mocks, g = jf({"gpu": "/dev/dri/renderD130"})
        _settle(g["jellyfin"].render_node)
    assert "homelab-media:jellyfin.gpu = '/dev/dri/renderD130' is refused" in str(exc.value)
    assert "/dev/dri/renderD129" in str(exc.value)


def _settle(out: pulumi.Output):
    import asyncio

    loop = asyncio.get_event_loop()
    return loop.run_until_complete(out.future())


# --- pure rules ------------------------------------------------------------------------------------

DISC = {"gpu": {"nodes": [
    {"path": "/dev/dri/card0", "type": "card", "major": 226, "minor": 0},
    {"path": "/dev/dri/renderD129", "type": "render", "major": 226, "minor": 129},
    {"path": "/dev/dri/renderD128", "type": "render", "major": 226, "minor": 128},
]}}


@pytest.mark.parametrize("gpu, qsv, want", [
    ("auto", None, "/dev/dri/renderD128"),
    ("auto", "/dev/dri/renderD129", "/dev/dri/renderD129"),  # the transcoder's choice
    ("auto", "/dev/dri/by-path/pci-0000:03:00.0-render", "/dev/dri/renderD128"),
    ("none", None, None),
    ("/dev/dri/renderD129", None, "/dev/dri/renderD129"),
])
def test_render_node_choice(gpu, qsv, want):
    assert render.jellyfin_render_node(DISC, gpu, qsv) == want


def test_auto_without_a_gpu_is_no_device():
    assert render.jellyfin_render_node({"gpu": {"nodes": []}}, "auto", None) is None
    assert render.jellyfin_devices(None, None) == []
    with pytest.raises(ValueError, match="homelab-media:jellyfin.gpu = '/dev/dri/renderD128' is refused"):
        render.jellyfin_render_node({"gpu": {"nodes": []}}, "/dev/dri/renderD128", None)


@pytest.mark.parametrize("release, version, ok", [
    ("8.1", "8.1.3", True), ("8.2", "8.2.4", True), ("9.0", "9.0.3", True), ("8.0", "8.0.4", False),
    ("7.4", "7.4-17", False), (None, None, False),
])
def test_pve_release_rule(release, version, ok):
    problem = render.pve_release_problem(release, version, "https://pve.lan:8006/")
    assert (problem is None) is ok
    if not ok:
        assert "homelab-media:jellyfin.gpu" in problem


# --- config ----------------------------------------------------------------------------------------

ALL = Secrets(proxmox_password=True, ssh_private_key=True, jellyfin_admin_password=True)


def raw(**jellyfin):
    doc = yaml.safe_load((ROOT / "Pulumi.homelab.yaml").read_text())
    r = {k.split(":", 1)[1]: v for k, v in doc["config"].items()}
    r["jellyfin"] = jellyfin
    return r


def refused(r, secrets=ALL):
    with pytest.raises(ConfigError) as exc:
        parse(r, secrets)
    return "\n".join(exc.value.messages)


def test_jellyfin_defaults():
    cfg = parse(raw(), ALL)
    j = cfg.jellyfin
    assert j.enabled is False
    assert (j.vm_id, j.hostname, j.node, j.cores, j.memory, j.swap, j.disk_gb, j.port, j.gpu) == \
        (203, "jellyfin", None, 2, 2048, 0, 16, 8096, "auto")
    assert (j.datastore, j.ipv4) == ("local-lvm", "dhcp")
    # absent section: the same defaults, and no password needed
    r = raw()
    del r["jellyfin"]
    assert parse(r, Secrets(proxmox_password=True, ssh_private_key=True)).jellyfin.enabled is False


def test_enabled_needs_the_admin_password_naming_the_command():
    text = refused(raw(enabled=True), Secrets(proxmox_password=True, ssh_private_key=True))
    assert "homelab-media:jellyfinAdminPassword is missing" in text
    assert "pulumi config set --secret homelab-media:jellyfinAdminPassword" in text
    # a preview with dummies (no secrets required) passes
    parse(raw(enabled=True), Secrets(), require_secrets=False)


def test_another_node_is_refused_until_multi_node():
    text = refused(raw(enabled=True, node="pve2"))
    assert "homelab-media:jellyfin.node = 'pve2' is refused" in text and "multi-node" in text
    assert parse(raw(enabled=True, node="pve"), ALL).jellyfin.node == "pve"


@pytest.mark.parametrize("vmid, other", [(201, "transcoder"), (202, "ripper")])
def test_vm_id_must_differ_from_the_other_containers(vmid, other):
    text = refused(raw(enabled=True, vmId=vmid))
    assert f"homelab-media:jellyfin.vmId = {vmid} is refused: {other}.vmId is {vmid} too" in text


@pytest.mark.parametrize("key, value, expect", [
    ("gpu", "/dev/dri/card0", "must be auto"),
    ("gpu", "renderD128", "must be auto"),
    ("port", 0, "greater than or equal to 1"),
    ("cores", 0, "greater than or equal to 1"),
    ("ipv4", "10.0.0.5", "needs a prefix length"),
    ("hostname", "-bad", "must be a hostname"),
    ("extraRawLines", ["lxc.cgroup2.devices.allow: c 10:200 rwm"], "no raw lxc lines"),
    ("bogus", 1, "is not a known setting"),
])
def test_bad_jellyfin_values_are_refused_naming_the_key(key, value, expect):
    text = refused(raw(enabled=True, **{key: value}))
    assert f"homelab-media:jellyfin.{key}" in text and expect in text, text


def test_only_jellyfins_own_port_for_now():
    assert "homelab-media:jellyfin.port = 8097 is refused: Jellyfin listens on 8096" in refused(raw(enabled=True, port=8097))


def test_static_address_needs_the_gateway():
    assert "jellyfin.ipv4 is a static address but network.gateway is not set" in refused(
        raw(enabled=True, ipv4="192.168.1.203/24"))


def test_the_section_and_the_secret_are_known_keys():
    from components.config import SECRETS, SECTIONS

    assert SECTIONS[-1] == "jellyfin" or "jellyfin" in SECTIONS
    assert "jellyfinAdminPassword" in SECRETS
