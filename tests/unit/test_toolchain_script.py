"""tools/toolchain.sh without building anything: options, --check, pin checks against the venv."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tools" / "toolchain.sh"


def run(*args, env=None, **kw):
    full = {k: v for k, v in os.environ.items() if not k.startswith(("TOOLCHAIN_", "PULUMI_"))}
    full.update(env or {})
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=full, timeout=60, **kw)


def fake_venv(tmp_path: Path, *, sdk="3.272.0", command="1.2.1", proxmoxve="8.6.0") -> Path:
    site = tmp_path / "venv" / "lib" / "python3.11" / "site-packages"
    (site / f"pulumi-{sdk}.dist-info").mkdir(parents=True)
    for pkg, version in (("pulumi_command", command), ("pulumi_proxmoxve", proxmoxve)):
        (site / pkg).mkdir()
        (site / pkg / "pulumi-plugin.json").write_text(json.dumps({"resource": True, "name": pkg[7:], "version": version}))
    return tmp_path / "venv"


def fake_go(tmp_path: Path, version="go1.26.8") -> Path:
    """A go that answers `go env` and fails anything else: the script must stop before building."""
    go = tmp_path / "go"
    go.write_text(
        "#!/bin/sh\n"
        f'case "$1 $2" in "env GOVERSION") echo {version};; "env GOOS") echo linux;; "env GOARCH") echo amd64;;\n'
        '*) echo "fake go: $*" >&2; exit 3;; esac\n'
    )
    go.chmod(0o755)
    return go


def test_help_names_every_option_and_variable():
    r = run("--help")
    assert r.returncode == 0
    for word in ("--only", "--check", "--best-effort", "--print-env", "TOOLCHAIN_DIR", "TOOLCHAIN_CACHE",
                 "TOOLCHAIN_FORCE_BUILD"):
        assert word in r.stdout


def test_unknown_option_and_component_are_refused():
    assert run("--frobnicate").returncode == 2
    r = run("--only", "cli,terraform")
    assert r.returncode == 2 and "terraform" in r.stderr


def test_check_on_an_empty_dir_lists_everything_missing(tmp_path):
    r = run("--check", env={"TOOLCHAIN_DIR": str(tmp_path / "tools")})
    assert r.returncode == 1
    lines = r.stdout.splitlines()
    assert [ln.split()[0] for ln in lines[:4]] == ["cli", "python", "command", "proxmoxve"]
    assert all("MISSING" in ln for ln in lines[:4])
    assert "pulumi/plugins/resource-proxmoxve-v8.6.0/pulumi-resource-proxmoxve" in lines[3]


def test_check_accepts_an_installed_plugin_by_its_recorded_checksum(tmp_path):
    tools = tmp_path / "tools"
    plugin = tools / "pulumi" / "plugins" / "resource-command-v1.2.1" / "pulumi-resource-command"
    plugin.parent.mkdir(parents=True)
    plugin.write_bytes(b"not really a provider")
    plugin.chmod(0o755)
    sha = subprocess.run(["sha256sum", str(plugin)], capture_output=True, text=True, check=True).stdout.split()[0]
    (tools / "manifest").write_text(f"command 1.2.1 {sha}\n")
    r = run("--check", "--only", "command", env={"TOOLCHAIN_DIR": str(tools)})
    assert r.returncode == 0, r.stdout + r.stderr
    assert " ok " in r.stdout
    plugin.write_bytes(b"changed since it was installed")
    assert run("--check", "--only", "command", env={"TOOLCHAIN_DIR": str(tools)}).returncode == 1


def test_print_env_points_pulumi_at_the_toolchain_dir(tmp_path):
    r = run("--print-env", env={"TOOLCHAIN_DIR": str(tmp_path / "t")})
    assert r.returncode == 0
    assert f"export PULUMI_HOME={tmp_path}/t/pulumi" in r.stdout
    assert f"export PATH={tmp_path}/t/bin:" in r.stdout
    assert "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION=true" in r.stdout


@pytest.mark.parametrize(
    ("venv_kw", "message"),
    [
        ({"command": "1.3.0"}, "pulumi_command asks for plugin v1.3.0"),
        ({"proxmoxve": "8.7.0"}, "pulumi_proxmoxve asks for plugin v8.7.0"),
        ({"sdk": "3.280.0"}, "older than the venv's SDK v3.280.0"),
    ],
)
def test_a_venv_that_asks_for_other_versions_stops_the_build(tmp_path, venv_kw, message):
    env = {"VENV": str(fake_venv(tmp_path, **venv_kw)), "GO": str(fake_go(tmp_path)),
           "TOOLCHAIN_DIR": str(tmp_path / "tools"), "TOOLCHAIN_CACHE": str(tmp_path / "cache")}
    r = run(env=env)
    assert r.returncode == 1
    assert message in r.stderr
    assert "fake go" not in r.stderr  # stopped before any go command ran


def test_an_old_go_is_refused(tmp_path):
    env = {"VENV": str(fake_venv(tmp_path)), "GO": str(fake_go(tmp_path, "go1.22.5")),
           "TOOLCHAIN_DIR": str(tmp_path / "tools")}
    r = run(env=env)
    assert r.returncode == 1 and "go1.22.5 is too old" in r.stderr
