"""The whole program under Pulumi's mocks: every resource, key properties, dependencies, outputs.

Mocks prove what is declared; tests/e2e proves the providers accept it against the lab.
"""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pulumi
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
NS = "homelab-media"

DISCOVERY = {
    "gpu": {
        "nodes": [
            {"path": "/dev/dri/card1", "type": "card", "major": 226, "minor": 1},
            {"path": "/dev/dri/renderD129", "type": "render", "major": 226, "minor": 129},
        ]
    },
    "optical": {
        "sr": {"path": "/dev/sr0", "major": 11, "minor": 0},
        "sg": {"path": "/dev/sg2", "major": 21, "minor": 2},
    },
}
GPU_OK = {"ok": True, "render_node": "/dev/dri/renderD129", "driver": "iHD", "encode": "ok"}
DRIVE = {"ok": False, "sr": "/dev/sr0", "drives": [], "key_state": "missing", "reason": "no disc drive listed"}

STDOUT = {
    "host-check-pool.sh": {"pool": "/mnt/storage", "mounted": True, "fstype": "fuse.mergerfs", "allow_other": True},
    "host-setup.sh": {"user": "media", "uid": 1000, "gid": 1000, "changed": []},
    "host-discover.sh": DISCOVERY,
    "verify-gpu.sh": GPU_OK,
    "verify-drive.sh": DRIVE,
    "ct-install-pipeline.sh": {"installed": True, "changed": True},
}


def _script_of(stdin: str) -> str:
    """The script a bundle runs: the `bash "$_d/<name>"` line."""
    for line in reversed(stdin.splitlines()):
        if line.startswith('cd "$_d" && bash "$_d/'):
            return line.split('"$_d/')[1].split('"')[0]
    raise AssertionError("not a bundle")


def _call_line(stdin: str) -> str:
    """The bundle's command line: the script and its arguments."""
    return next(line for line in reversed(stdin.splitlines()) if line.startswith('cd "$_d" && bash "$_d/'))


SECRET_SIG = "4dabf18193072939515e22adb298388d"


def plain(v):
    """Inputs as values: secrets arrive in mocks wrapped with Pulumi's secret signature."""
    if isinstance(v, dict):
        if v.get(SECRET_SIG) == "1b47061264138c4ac30d75fd1eb44270":
            return plain(v["value"])
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [plain(x) for x in v]
    return v


class Mocks(pulumi.runtime.Mocks):
    def __init__(self):
        self.resources: dict[str, pulumi.runtime.MockResourceArgs] = {}
        self.raw_inputs: dict[str, dict] = {}

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        self.raw_inputs[args.name] = args.inputs
        args.inputs = plain(args.inputs)
        self.resources[args.name] = args
        state = dict(args.inputs)
        if args.typ == "command:remote:Command":
            script = _script_of(args.inputs["stdin"])
            out = STDOUT.get(script)
            state["stdout"] = json.dumps(out) if out is not None else "changed"
            state["stderr"] = ""
        return [f"{args.name}-id", state]

    def call(self, args: pulumi.runtime.MockCallArgs):
        return {}


def homelab_config(**overrides) -> dict[str, str]:
    doc = yaml.safe_load((ROOT / "Pulumi.homelab.yaml").read_text())["config"]
    cfg = {k: json.dumps(v) if not isinstance(v, str) else v for k, v in doc.items()}
    cfg[f"{NS}:proxmoxPassword"] = "pve-password-not-real"
    cfg[f"{NS}:sshPrivateKey"] = "-----BEGIN OPENSSH PRIVATE KEY-----\nnot-real\n"
    cfg[f"{NS}:makemkvKey"] = "T-not-a-real-key"
    cfg.update(overrides)
    return cfg


DEPENDS_ON: dict[str, list] = {}
OPTS: dict[str, pulumi.ResourceOptions] = {}


def done(g):
    """An Output that settles once every resource of the program is registered."""
    return pulumi.Output.all(g["transcoder"].gpu, g["transcoder"].pipeline, g["ripper"].drive, g["ripper"].rip)


def _record_depends_on(args: pulumi.ResourceTransformationArgs):
    DEPENDS_ON[args.name] = list(args.opts.depends_on or []) if args.opts else []
    OPTS[args.name] = args.opts or pulumi.ResourceOptions()
    return None


SSH_CHECKS: list[tuple] = []


def _no_network_ssh_check(host, port, timeout, attempts=1, pause=1.0, key="ssh"):
    """Unit tests make no network calls: record the pre-flight check instead of dialing."""
    SSH_CHECKS.append((host, port, timeout, attempts))
    return None


@pytest.fixture
def program(monkeypatch):
    """Run __main__.py under mocks; return (mocks, the program's globals)."""

    def run(config: dict[str, str], preview: bool = False, ssh_check=_no_network_ssh_check):
        mocks = Mocks()
        pulumi.runtime.set_mocks(mocks, project="homelab-media", stack="homelab", preview=preview)
        SSH_CHECKS.clear()
        OPTS.clear()
        monkeypatch.setattr("components.preflight.ssh_problem", ssh_check)
        pulumi.runtime.set_all_config(
            config, [f"{NS}:proxmoxPassword", f"{NS}:sshPrivateKey", f"{NS}:makemkvKey", f"{NS}:statusPassword"]
        )
        DEPENDS_ON.clear()
        pulumi.runtime.register_stack_transformation(_record_depends_on)
        monkeypatch.chdir(ROOT)
        monkeypatch.syspath_prepend(str(ROOT))
        g = runpy.run_path(str(ROOT / "__main__.py"), run_name="__pulumi_test__")
        return mocks, g

    return run


@pulumi.runtime.test
def test_every_resource_is_declared(program):
    mocks, g = program(homelab_config())

    def check(_):
        names = set(mocks.resources)
        for expected in [
            "media-host", "media-host-pool-check", "media-host-media-user", "media-host-discover",
            "media-host-template", "transcoder", "transcoder-raw-lines", "transcoder-bootstrap",
            "transcoder-pipeline", "transcoder-verify-gpu", "ripper", "ripper-raw-lines",
            "ripper-bootstrap", "ripper-verify-drive", "ripper-media-rip", "pve",
        ]:
            assert expected in names, f"{expected} missing from {sorted(names)}"
        types = {n: a.typ for n, a in mocks.resources.items()}
        assert types["media-host"] == "homelab:index:MediaHost"
        assert types["transcoder"] in ("homelab:index:TranscoderCT", "proxmoxve:index/containerLegacy:ContainerLegacy")
        assert types["media-host-template"] == "proxmoxve:download/file:File"

    return done(g).apply(check)


def _containers(mocks):
    return {
        a.inputs["vmId"]: a
        for a in mocks.resources.values()
        if a.typ == "proxmoxve:index/containerLegacy:ContainerLegacy"
    }


@pulumi.runtime.test
def test_containers_are_privileged_with_pool_nesting_and_no_firewall(program):
    mocks, g = program(homelab_config())

    def check(_):
        cts = _containers(mocks)
        assert set(cts) == {201, 202}
        t, r = cts[201].inputs, cts[202].inputs
        for ct in (t, r):
            assert ct["unprivileged"] is False
            assert ct["features"]["nesting"] is True
            assert ct["mountPoints"] == [{"volume": "/mnt/storage", "path": "/mnt/storage"}]
            assert ct["networkInterfaces"][0]["firewall"] is False
            assert ct["networkInterfaces"][0]["bridge"] == "vmbr0"
            assert ct["initialization"]["ipConfigs"][0]["ipv4"]["address"] == "dhcp"
            assert ct["operatingSystem"]["templateFileId"] == "media-host-template-id"
            assert ct["nodeName"] == "pve"
        assert (t["cpu"]["cores"], t["memory"]["dedicated"], t["memory"]["swap"], t["disk"]["size"]) == (8, 8192, 2048, 20)
        assert (r["cpu"]["cores"], r["memory"]["dedicated"], r["disk"]["size"]) == (4, 4096, 20)
        assert t["initialization"]["hostname"] == "transcoder" and r["initialization"]["hostname"] == "ripper"
        for ct in cts.values():
            assert ct.custom is True
            assert ct.provider and "pulumi:providers:proxmoxve::pve::" in ct.provider

    return done(g).apply(check)


@pulumi.runtime.test
def test_template_is_downloaded_through_the_provider(program):
    mocks, g = program(homelab_config())

    def check(_):
        tpl = mocks.resources["media-host-template"].inputs
        assert tpl["contentType"] == "vztmpl"
        assert tpl["fileName"] == "debian-12-standard_12.7-1_amd64.tar.zst"
        assert tpl["datastoreId"] == "local" and tpl["nodeName"] == "pve"

    return done(g).apply(check)


@pulumi.runtime.test
def test_raw_lines_come_from_discovery_and_go_to_the_conf(program):
    mocks, g = program(homelab_config())

    def check(_):
        t_raw = mocks.resources["transcoder-raw-lines"].inputs
        r_raw = mocks.resources["ripper-raw-lines"].inputs
        assert t_raw["create"] == "bash -s"
        assert "--vmid 201 --require-mount /mnt/storage" in t_raw["stdin"]
        assert "lxc.cgroup2.devices.allow: c 226:129 rwm\n" in t_raw["stdin"]
        assert "lxc.mount.entry: /dev/dri dev/dri none bind,optional,create=dir" in t_raw["stdin"]
        assert "lxc.cgroup2.devices.allow: b 11:0 rwm" in r_raw["stdin"]
        assert "lxc.cgroup2.devices.allow: c 21:2 rwm" in r_raw["stdin"]
        assert "c 11:0" not in r_raw["stdin"]
        assert "lxc.mount.entry: /dev/sg2 dev/sg2" in r_raw["stdin"]
        # LXC's own pre-start hook, last (the hookscript's order), so a reboot from inside is guarded too;
        # the step takes today's lines from the hookscript, which a re-run must never undo
        hook = "lxc.hook.pre-start: /var/lib/homelab-media/hook/homelab-media-lxc-hook.sh\n"
        for step in (t_raw, r_raw):
            text = step["stdin"]
            assert text.count(hook) == 1 and text.index(hook) > text.rindex("lxc.mount.entry: /dev/")
            assert "--hook-dir /var/lib/homelab-media/hook" in text

    return done(g).apply(check)


@pulumi.runtime.test
def test_steps_run_in_order_inside_the_right_place(program):
    mocks, g = program(homelab_config())

    def check(_):
        r = mocks.resources
        assert r["transcoder-bootstrap"].inputs["create"] == "pct exec 201 -- bash -s"
        assert r["transcoder-verify-gpu"].inputs["create"] == "pct exec 201 -- bash -s"
        assert r["transcoder-pipeline"].inputs["create"] == "pct exec 201 -- bash -s"
        assert r["ripper-bootstrap"].inputs["create"] == "pct exec 202 -- bash -s"
        assert r["ripper-verify-drive"].inputs["create"] == "pct exec 202 -- bash -s"
        for name in ("media-host-pool-check", "media-host-media-user", "media-host-discover"):
            assert r[name].inputs["create"] == "bash -s"
        # host setup waits for the pool check; containers wait for host setup
        for name, needs in {
            "media-host-media-user": g["host"].pool_check,
            "transcoder": g["host"].setup,
            "ripper": g["host"].setup,
            "transcoder-raw-lines": g["transcoder"].container,
            "transcoder-bootstrap": g["transcoder"].raw,
            "transcoder-verify-gpu": g["transcoder"].bootstrap,
            "ripper-bootstrap": g["ripper"].raw,
            "ripper-verify-drive": g["ripper"].bootstrap,
        }.items():
            assert needs in DEPENDS_ON[name], f"{name} does not depend on {needs._name}"

    return done(g).apply(check)


@pulumi.runtime.test
def test_a_change_that_recreates_a_container_is_checked_first(program):
    """The recreate guard runs before the pool check and before either container, with what the
    provider replaces a container for (the pool, the root disk's storage and size) and the opt-in."""
    ripper = json.loads(homelab_config()[f"{NS}:ripper"])
    mocks, g = program(homelab_config(**{f"{NS}:ripper": json.dumps({**ripper, "allowRecreate": True})}))

    def check(_):
        guard = mocks.resources["media-host-recreate-guard"].inputs
        assert guard["create"] == "bash -s"
        assert "host-ct-recreate-guard.sh" in guard["stdin"]
        assert ("--pool /mnt/storage --node pve --marker 'managed by the homelab-media Pulumi program' "
                "--ct 201:transcoder:transcoder:local-lvm:20:0 --ct 202:ripper:ripper:local-lvm:20:1") in guard["stdin"]
        host_guard = g["host"].recreate_guard
        for name in ("media-host-pool-check", "transcoder", "ripper"):
            assert host_guard in DEPENDS_ON[name], f"{name} does not wait for the recreate guard"
        assert not DEPENDS_ON.get("media-host-recreate-guard"), "the guard must not wait for anything"

    return done(g).apply(check)


@pulumi.runtime.test
def test_bootstrap_carries_users_groups_and_never_the_whole_pool(program):
    mocks, g = program(homelab_config())

    def check(_):
        r = mocks.resources
        setup = r["media-host-media-user"].inputs["stdin"]
        assert "--groups video:44,render:104,cdrom:24" in setup
        assert "--dirs staging,movies,tv" in setup
        assert "chown -R" not in setup
        tb = r["transcoder-bootstrap"].inputs["stdin"]
        assert "--video-gid 44" in tb and "--render-gid 104" in tb
        rb = r["ripper-bootstrap"].inputs["stdin"]
        assert "--cdrom-gid 24" in rb and "--staging /mnt/storage/staging" in rb
        pipe = r["transcoder-pipeline"].inputs["stdin"]
        assert "--keep-source true --metrics-port 9464 --metrics-bind 127.0.0.1" in pipe
        assert "--languages eng,bul" in pipe and "--crf 18" in pipe and "media-pipeline.tar.gz" in pipe
        assert "--public-url http" not in pipe and "--trusted-proxies " not in pipe.split("__HOMELAB_EOF__")[-1]  # unset: the Host rule

    return done(g).apply(check)


@pulumi.runtime.test
def test_the_status_pages_proxy_settings_reach_the_installer(program):
    pipeline = {"publicUrl": "https://media.example.lan", "trustedProxies": ["192.168.1.10"]}
    mocks, g = program(homelab_config(**{f"{NS}:pipeline": json.dumps(pipeline)}))

    def check(_):
        pipe = mocks.resources["transcoder-pipeline"].inputs["stdin"]
        assert "--public-url https://media.example.lan --trusted-proxies 192.168.1.10" in pipe

    return done(g).apply(check)


@pulumi.runtime.test
def test_ssh_dialing_is_bounded_and_key_is_secret(program):
    mocks, g = program(homelab_config())

    def check(_):
        for a in mocks.resources.values():
            if a.typ == "command:remote:Command":
                conn = a.inputs["connection"]
                assert conn["dialErrorLimit"] == 5 and conn["perDialTimeout"] == 10
                assert conn["host"] == "pve.lan" and conn["user"] == "root"

    return done(g).apply(check)


@pulumi.runtime.test
def test_triggers_hash_script_content(program):
    mocks, g = program(homelab_config())

    def check(_):
        trig = mocks.resources["transcoder-bootstrap"].inputs["triggers"]
        assert len(trig[0]) == 64 and all(c in "0123456789abcdef" for c in trig[0])
        assert trig[0] != mocks.resources["ripper-bootstrap"].inputs["triggers"][0]

    return done(g).apply(check)


@pulumi.runtime.test
def test_verification_outputs_are_structured(program):
    mocks, g = program(homelab_config())

    def check(values):
        gpu, drive, devices = values
        assert gpu == GPU_OK
        assert drive["ok"] is False and drive["reason"] == "no disc drive listed"
        assert devices["optical"]["sg"]["path"] == "/dev/sg2"

    return pulumi.Output.all(g["transcoder"].gpu, g["ripper"].drive, g["host"].discovery).apply(check)


@pulumi.runtime.test
def test_strict_passes_strict_to_verification(program):
    mocks, g = program(homelab_config(**{f"{NS}:verify": json.dumps({"strict": True})}))

    def check(_):
        assert " --strict" in mocks.resources["transcoder-verify-gpu"].inputs["stdin"]
        assert " --strict" in mocks.resources["ripper-verify-drive"].inputs["stdin"]

    return done(g).apply(check)


@pulumi.runtime.test
def test_makemkv_key_travels_only_as_a_secret(program):
    mocks, g = program(homelab_config())

    def check(_):
        raw = mocks.raw_inputs["ripper-bootstrap"]["stdin"]
        assert isinstance(raw, dict) and raw.get(SECRET_SIG), "stdin with the key must reach the engine as a secret"
        for a in mocks.raw_inputs.values():
            conn = a.get("connection")
            if conn:
                secret = conn.get(SECRET_SIG) or (conn.get("privateKey") or {}).get(SECRET_SIG)
                assert secret, "the SSH key must reach the engine as a secret"
        assert "T-not-a-real-key" in mocks.resources["ripper-bootstrap"].inputs["stdin"]
        for name, a in mocks.resources.items():
            if name != "ripper-bootstrap":
                assert "T-not-a-real-key" not in json.dumps(a.inputs, default=str)

    return done(g).apply(check)


@pulumi.runtime.test
def test_status_page_password_travels_only_as_secret_stdin(program):
    pipeline = json.dumps({"keepSource": True, "metricsPort": 9464, "metricsBind": "0.0.0.0",
                           "webPort": 8480, "webBind": "0.0.0.0"})
    mocks, g = program(homelab_config(**{f"{NS}:pipeline": pipeline, f"{NS}:statusPassword": "page-pass-not-real"}))

    def check(_):
        raw = mocks.raw_inputs["transcoder-pipeline"]["stdin"]
        assert isinstance(raw, dict) and raw.get(SECRET_SIG), "the bundle with the password must be a secret"
        stdin = mocks.resources["transcoder-pipeline"].inputs["stdin"]
        argv_line = next(line for line in stdin.splitlines() if line.startswith('cd "$_d" && bash "$_d/ct-install'))
        assert "--web-port 8480 --web-bind 0.0.0.0" in argv_line and "--web-password-stdin" in argv_line
        assert "page-pass-not-real" not in argv_line
        assert stdin.split("__HOMELAB_STDIN__")[1].lstrip("'").strip() == "page-pass-not-real"
        for name, a in mocks.resources.items():
            if name != "transcoder-pipeline":
                assert "page-pass-not-real" not in json.dumps(a.inputs, default=str)
        assert "--save /var/lib/media-pipeline/gpu-proof.json" in mocks.resources["transcoder-verify-gpu"].inputs["stdin"]
        assert g["urls"]["page"] == {"url": "http://transcoder:8480/", "reachable": "from the network (bind 0.0.0.0)",
                                     "password": True}
        assert g["urls"]["metrics"]["url"] == "http://transcoder:9464/metrics"

    return done(g).apply(check)


@pulumi.runtime.test
def test_status_page_defaults_to_loopback_without_password(program):
    mocks, g = program(homelab_config())

    def check(_):
        assert not mocks.raw_inputs["transcoder-pipeline"]["stdin"].get(SECRET_SIG) \
            if isinstance(mocks.raw_inputs["transcoder-pipeline"]["stdin"], dict) else True
        stdin = mocks.resources["transcoder-pipeline"].inputs["stdin"]
        argv_line = next(line for line in stdin.splitlines() if line.startswith('cd "$_d" && bash "$_d/ct-install'))
        assert "--web-port 8480 --web-bind 127.0.0.1" in argv_line and "--web-password-stdin" not in argv_line
        assert argv_line.endswith("</dev/null")
        assert g["urls"]["page"]["url"] == "http://127.0.0.1:8480/"
        assert "inside CT 201 only" in g["urls"]["page"]["reachable"]

    return done(g).apply(check)


def test_public_status_page_without_password_is_refused(program, capsys):
    pipeline = json.dumps({"webPort": 8480, "webBind": "0.0.0.0"})
    with pytest.raises(SystemExit) as exc:
        program(homelab_config(**{f"{NS}:pipeline": pipeline}))
    assert exc.value.code == 1


def test_config_errors_stop_before_any_resource(program, capsys):
    bad = homelab_config(**{f"{NS}:transcoder": json.dumps({"vmId": 201, "hostname": "t", "cores": 0})})
    with pytest.raises(SystemExit) as exc:
        program(bad)
    assert exc.value.code == 1


def test_api_token_is_refused_before_any_resource(program):
    cfg = homelab_config()
    cfg.pop(f"{NS}:proxmoxPassword")
    cfg[f"{NS}:proxmoxApiToken"] = "root@pam!ci=secret"
    pulumi.runtime.set_mocks(Mocks(), project="homelab-media", stack="homelab", preview=False)
    pulumi.runtime.set_all_config(cfg, [f"{NS}:proxmoxApiToken", f"{NS}:sshPrivateKey"])
    from components.stack import ConfigError, load

    with pytest.raises(ConfigError) as exc:
        load()
    assert "root@pam with a password" in str(exc.value)


@pytest.mark.parametrize("source", ["the engine's config bag", "the language host's PULUMI_CONFIG"])
def test_a_misspelt_section_is_refused_not_ignored(monkeypatch, source):
    """pulumi.Config answers only for keys asked by name: `homelab-media:pipelin` would be
    silently ignored (the defaults used) unless the program looks at every key it was given."""
    cfg = homelab_config(**{f"{NS}:pipelin": json.dumps({"webPort": 9000})})
    pulumi.runtime.set_mocks(Mocks(), project="homelab-media", stack="homelab", preview=False)
    if source == "the engine's config bag":
        pulumi.runtime.set_all_config(cfg, [f"{NS}:proxmoxPassword", f"{NS}:sshPrivateKey"])
    else:
        pulumi.runtime.set_all_config({}, [])
        monkeypatch.setenv("PULUMI_CONFIG", json.dumps(cfg))
    from components.stack import ConfigError, load

    try:
        with pytest.raises(ConfigError) as exc:
            load()
    finally:
        pulumi.runtime.set_all_config({}, [])  # no misspelt key for the tests after this one
    assert f"{NS}:pipelin is not a setting of this program" in str(exc.value)


@pulumi.runtime.test
def test_a_chosen_qsv_device_reaches_the_gpu_proof_and_the_pipeline(program):
    enc = {"languages": ["eng"], "encoder": "hevc_qsv", "preset": "slow", "crf": 20, "qsvDevice": "/dev/dri/renderD129"}
    mocks, g = program(homelab_config(**{f"{NS}:encoding": json.dumps(enc)}))

    def check(_):
        assert "--render-node /dev/dri/renderD129" in mocks.resources["transcoder-verify-gpu"].inputs["stdin"]
        assert "--qsv-device /dev/dri/renderD129" in mocks.resources["transcoder-pipeline"].inputs["stdin"]
        assert "--encoder hevc_qsv" in mocks.resources["transcoder-pipeline"].inputs["stdin"]

    return done(g).apply(check)


@pulumi.runtime.test
def test_media_rip_is_installed_in_the_ripper_with_the_stack_settings(program):
    mocks, g = program(homelab_config())

    def check(values):
        r = mocks.resources
        step = r["ripper-media-rip"]
        assert step.inputs["create"] == "pct exec 202 -- bash -s"
        assert g["ripper"].bootstrap in DEPENDS_ON["ripper-media-rip"]  # python3 and the media user first
        stdin = step.inputs["stdin"]
        assert _script_of(stdin) == "ct-install-pipeline.sh" and "media-pipeline.tar.gz" in stdin
        # no frozen /dev/srN: media-rip looks the drive up at every poll, by the hook's rule
        assert ("--role ripper --tarball media-pipeline.tar.gz --user media --staging /mnt/storage/staging "
                "--drive auto --min-length 600 --auto-rip true --eject true --drive-gid 24") in stdin
        assert "--device" not in stdin.split("__HOMELAB_EOF__")[-1]
        rip = values[-1]
        assert rip["minLength"] == 600 and rip["autoRip"] is True and rip["eject"] is True
        assert rip["drive"] == "auto" and rip["device"] is None and rip["discovered"] == "/dev/sr0"
        assert rip["installed"] is True

    return done(g).apply(check)


@pulumi.runtime.test
def test_ripper_settings_reach_media_rip(program):
    ripper = yaml.safe_load((ROOT / "Pulumi.homelab.yaml").read_text())["config"][f"{NS}:ripper"]
    ripper.update(minLength=1800, autoRip=False, eject=False, device="/dev/sr1", metricsPort=9465)
    mocks, g = program(homelab_config(**{f"{NS}:ripper": json.dumps(ripper)}))

    def check(values):
        stdin = mocks.resources["ripper-media-rip"].inputs["stdin"]
        assert "--drive auto --device /dev/sr1 --min-length 1800 --auto-rip false --eject false" in stdin
        assert "--metrics-port 9465" in stdin
        assert {k: values[-1][k] for k in ("minLength", "autoRip", "eject", "device")} == \
            {"minLength": 1800, "autoRip": False, "eject": False, "device": "/dev/sr1"}

    return done(g).apply(check)


@pulumi.runtime.test
def test_rip_status_file_is_one_path_on_the_pool_for_both_containers(program):
    storage = yaml.safe_load((ROOT / "Pulumi.homelab.yaml").read_text())["config"][f"{NS}:storage"]
    storage.update(staging="media/incoming")
    mocks, g = program(homelab_config(**{f"{NS}:storage": json.dumps(storage)}))

    def check(_):
        r = mocks.resources
        wanted = "--rip-status /mnt/storage/media/incoming/.media-rip/status.json"
        ripper, page = r["ripper-media-rip"].inputs["stdin"], r["transcoder-pipeline"].inputs["stdin"]
        assert wanted in ripper and "--staging /mnt/storage/media/incoming" in ripper  # media-rip writes it
        assert wanted in page and "--staging /mnt/storage/media/incoming" in page  # the status page reads it

    return done(g).apply(check)


def test_a_token_in_the_environment_is_refused(monkeypatch):
    pulumi.runtime.set_mocks(Mocks(), project="homelab-media", stack="homelab", preview=False)
    cfg = homelab_config()
    pulumi.runtime.set_all_config(cfg, [f"{NS}:proxmoxPassword", f"{NS}:sshPrivateKey", f"{NS}:makemkvKey"])
    monkeypatch.setenv("PROXMOX_VE_API_TOKEN", "root@pam!ci=00000000-0000-0000-0000-000000000000")
    from components.stack import ConfigError, load

    with pytest.raises(ConfigError) as exc:
        load()
    text = str(exc.value)
    assert "PROXMOX_VE_API_TOKEN" in text and "unset PROXMOX_VE_API_TOKEN" in text
    assert "00000000" not in text


# --- resource options: what the engine does on replace and destroy ---------------------------

IN_CONTAINER = {
    "transcoder": ["transcoder-raw-lines", "transcoder-bootstrap", "transcoder-pipeline", "transcoder-verify-gpu"],
    "ripper": ["ripper-raw-lines", "ripper-bootstrap", "ripper-verify-drive"],
}


@pulumi.runtime.test
def test_resource_options_that_keep_replace_and_destroy_safe(program):
    mocks, g = program(homelab_config())

    def check(_):
        for ct in ("transcoder", "ripper"):
            opts = OPTS[ct]
            # a fixed vm id: the old container must go before its replacement is created
            assert opts.delete_before_replace is True, f"{ct}: delete_before_replace"
            # a newer template must not replace (wipe) a running container
            assert "operatingSystem" in (opts.ignore_changes or []), f"{ct}: ignore_changes"
            container = g[ct].container
            for step in IN_CONTAINER[ct]:
                assert step in OPTS, step
                assert container in (OPTS[step].replace_with or []), f"{step} must re-run when {ct} is replaced"
        # the template stays on the node's storage after destroy (other guests may use it)
        assert OPTS["media-host-template"].retain_on_delete is True
        # nothing touching the pool is ever deleted by a destroy: no step has a delete command
        for name, res in mocks.resources.items():
            if res.typ == "command:remote:Command":
                assert not res.inputs.get("delete"), f"{name} runs something on destroy"

    return done(g).apply(check)


# --- pre-flight: the node answers SSH before any remote step ------------------------------------

@pulumi.runtime.test
def test_up_checks_the_nodes_ssh_banner_first(program):
    mocks, g = program(homelab_config())

    def check(_):
        ssh = g["cfg"].ssh
        assert SSH_CHECKS == [(ssh.host, ssh.port, ssh.per_dial_timeout, ssh.dial_error_limit)]
        assert ssh.host == yaml.safe_load((ROOT / "Pulumi.homelab.yaml").read_text())["config"][f"{NS}:ssh"]["host"]

    return done(g).apply(check)


@pulumi.runtime.test
def test_preview_makes_no_ssh_check(program):
    mocks, g = program(homelab_config(), preview=True)
    assert SSH_CHECKS == []
    return done(g)


def test_a_silent_node_stops_the_up_before_any_resource(program):
    def silent(host, port, timeout, attempts=1, pause=1.0):
        return f"cannot reach the node's sshd at {host}:{port}: no SSH banner"

    with pytest.raises(SystemExit) as exc:
        mocks, _ = program(homelab_config(), ssh_check=silent)
    assert exc.value.code == 1


# --- the vm id guard: a hand-made CT 201 is never silently taken over -----------------------------

@pulumi.runtime.test
def test_each_container_waits_for_its_vm_id_guard(program):
    mocks, g = program(homelab_config())

    def check(_):
        for ct, vmid in (("transcoder", 201), ("ripper", 202)):
            guard = g[ct].container  # the container resource
            deps = DEPENDS_ON[ct]
            assert any(getattr(d, "_name", None) == f"{ct}-vmid-guard" for d in deps), f"{ct} does not wait for its guard"
            stdin = mocks.resources[f"{ct}-vmid-guard"].inputs["stdin"]
            assert _script_of(stdin) == "host-ct-guard.sh"
            call = _call_line(stdin)
            assert f"--vmid {vmid}" in call and f"--key {ct}.vmId" in call, call
            assert "--adopt" not in call
            # it runs once: a later --adopt (or not) must not re-run it against an adopted CT
            assert OPTS[f"{ct}-vmid-guard"].ignore_changes == ["stdin"]
            assert "managed by the homelab-media Pulumi program" in mocks.resources[ct].inputs["description"]
            assert guard is not None

    return done(g).apply(check)


@pulumi.runtime.test
def test_adopt_tells_only_the_named_guard_to_accept_an_existing_container(program, monkeypatch):
    monkeypatch.setenv("HOMELAB_MEDIA_ADOPT", "202")
    mocks, g = program(homelab_config())

    def check(_):
        assert "--adopt" in _call_line(mocks.resources["ripper-vmid-guard"].inputs["stdin"])
        assert "--adopt" not in _call_line(mocks.resources["transcoder-vmid-guard"].inputs["stdin"])

    return done(g).apply(check)


def _bundled_names(stdin: str) -> list[str]:
    return [line.split('"$_d/')[1].split('"')[0] for line in stdin.splitlines() if line.startswith('cat > "$_d/')]


HELPERS = ["lib.sh", "lib-json.sh", "lib-exec.sh", "lib-files.sh", "lib-users.sh", "lib-devices.sh", "lib-pool.sh"]
# How many remote steps re-run when one helper changes (issue 10, item 6). While every step
# shipped the one lib.sh, any helper change re-ran 10 of 10. Of the original 10 steps it is now
# 2-7 (lib.sh itself: all); of the 14 steps the program has today (+ the hookscript's install,
# two vm id guards, media-rip's install):
EXPECTED_RERUNS = {
    "lib.sh": 15,
    "lib-json.sh": 11,
    "lib-exec.sh": 6,
    "lib-files.sh": 3,
    "lib-users.sh": 3,
    "lib-devices.sh": 5,
    "lib-pool.sh": 4,
}


@pulumi.runtime.test
def test_a_helper_change_reruns_only_the_steps_that_source_it(program, tmp_path, monkeypatch):
    """Each step's trigger is recomputed the way the program computes it, first unchanged (it must
    equal the declared trigger), then with one helper edited in a copy of scripts/."""
    import shutil

    from components import remote, render

    mocks, g = program(homelab_config())

    def check(_):
        steps = {}
        for name, a in mocks.resources.items():
            if a.typ != "command:remote:Command":
                continue
            names = _bundled_names(a.inputs["stdin"])
            script = _script_of(a.inputs["stdin"])
            helpers = {h for n in names if n.endswith(".sh") for h in render.sourced(n)}
            extra = [n for n in names if n != script and n not in helpers]
            files = {}
            if name in ("transcoder-pipeline", "ripper-media-rip"):
                files = {render.PIPELINE_TARBALL: render.pipeline_tarball()}
            assert remote.content_hash(script, extra, files) == a.inputs["triggers"][0], name
            steps[name] = (script, extra, files)
        # the 10 steps of issue 10, the hookscript install, two vm id guards, media-rip's install,
        # the recreate guard
        assert len(steps) == 15, sorted(steps)
        reruns = {}
        for helper in HELPERS:
            copy = tmp_path / helper / "scripts"
            shutil.copytree(render.SCRIPTS, copy)
            with (copy / helper).open("a") as fh:
                fh.write("# an edit\n")
            with monkeypatch.context() as m:
                m.setattr(render, "SCRIPTS", copy)
                reruns[helper] = sorted(
                    n for n, (s, e, f) in steps.items() if remote.content_hash(s, e, f) != mocks.resources[n].inputs["triggers"][0]
                )
        print({h: f"{len(v)} of {len(steps)}" for h, v in reruns.items()})
        assert {h: len(v) for h, v in reruns.items()} == EXPECTED_RERUNS, reruns
        assert reruns["lib-files.sh"] == ["media-host-hookscript", "ripper-bootstrap", "transcoder-bootstrap"]

    return done(g).apply(check)


@pytest.mark.parametrize("storage", [None, "nas-snippets"])
@pulumi.runtime.test
def test_containers_get_the_hookscript_installed_before_them(program, storage):
    over = {f"{NS}:node": json.dumps({"snippetsStorage": storage})} if storage else {}
    over[f"{NS}:transcoder"] = json.dumps({**yaml.safe_load((ROOT / "Pulumi.homelab.yaml").read_text())["config"][f"{NS}:transcoder"],
                                           "extraRawLines": ["lxc.cgroup2.devices.allow: c 10:200 rwm"]})
    mocks, g = program(homelab_config(**over))

    def check(_):
        vol = f"{storage or 'local'}:snippets/homelab-media-hook.sh"
        for ct in _containers(mocks).values():
            assert ct.inputs["hookScriptFileId"] == vol
            assert g["host"].hookscript in DEPENDS_ON[ct.name]
        hook = mocks.resources["media-host-hookscript"].inputs
        assert _script_of(hook["stdin"]) == "host-hookscript.sh"
        assert f"--storage {storage or 'local'} --ct 201:gpu --ct 202:drive --pool /mnt/storage" in hook["stdin"]
        assert "201 lxc.cgroup2.devices.allow: c 10:200 rwm\n" in hook["stdin"]
        # deploy writes the same extra line into the conf
        raw = mocks.resources["transcoder-raw-lines"].inputs["stdin"]
        assert "lxc.cgroup2.devices.allow: c 10:200 rwm\n" in raw

    return done(g).apply(check)
