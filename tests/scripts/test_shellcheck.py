"""Every shell script passes shellcheck (with the repo's .shellcheckrc) and follows the script conventions."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
import subprocess

import pytest

from .conftest import REPO, SCRIPTS

# shipped scripts, the local lab and developer tooling
ALL = sorted([*SCRIPTS.rglob("*.sh"), *(REPO / "lab").rglob("*.sh"), *(REPO / "tools").glob("*.sh"), *(REPO / ".ci").glob("run")])


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_shellcheck_all_scripts():
    p = subprocess.run(
        ["shellcheck", *[str(s.relative_to(REPO)) for s in ALL]], cwd=REPO, capture_output=True, text=True
    )
    assert p.returncode == 0, p.stdout + p.stderr


MINE = [
    "host-check-pool.sh",
    "host-setup.sh",
    "host-discover.sh",
    "host-ct-guard.sh",
    "pve-lxc-raw.sh",
    "pve-ct-raw.sh",
    "ct-media-user.sh",
    "ct-bootstrap-transcoder.sh",
    "ct-bootstrap-ripper.sh",
    "verify-gpu.sh",
    "verify-drive.sh",
    "host-hookscript.sh",
    "pve-hookscript.sh",
    "ct-install-grafana.sh",
    "host-template-group.sh",
    "ct-install-jellyfin.sh",
    "ct-jellyfin-configure.sh",
    "verify-jellyfin.sh",
]


@pytest.mark.parametrize("name", MINE)
def test_script_header_and_help(name):
    lines = (SCRIPTS / name).read_text().splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    body = [x for x in lines[1:] if x and not x.startswith("#")]
    assert body[0] == "set -Eeuo pipefail"
    assert body[1] == 'source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"'
    p = subprocess.run(["bash", str(SCRIPTS / name), "--help"], capture_output=True, text=True)
    assert p.returncode == 0 and "Usage:" in p.stdout


# --- every script sources the helper files whose functions it calls ------------------------------

_DEF = re.compile(r"^([a-z_][a-z0-9_]*)\(\)\s*\{", re.M)
_SRC = re.compile(r'^source "\$\(dirname "\$\{BASH_SOURCE\[0\]\}"\)/(?:\.\./scripts/)?(lib[a-z-]*\.sh)"', re.M)


def _helpers() -> dict[str, str]:
    """function name -> the scripts/lib*.sh that defines it"""
    out = {}
    for lib in sorted(SCRIPTS.glob("lib*.sh")):
        for name in _DEF.findall(lib.read_text()):
            out.setdefault(name, lib.name)
    return out


def _sourced(path: Path) -> set[str]:
    seen: set[str] = set()
    todo = _SRC.findall(path.read_text())
    while todo:
        lib = todo.pop()
        if lib not in seen:
            seen.add(lib)
            todo += _SRC.findall((SCRIPTS / lib).read_text())
    return seen


USERS = [p for p in ALL if not p.name.startswith("lib") and _SRC.search(p.read_text())]


@pytest.mark.parametrize("path", USERS, ids=lambda p: str(p.relative_to(REPO)))
def test_calls_only_helpers_it_sources(path):
    helpers = _helpers()
    have = _sourced(path)
    own = set(_DEF.findall(path.read_text()))
    code = "\n".join(line.split(" #")[0] for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))
    missing = sorted(
        f"{name} ({lib})" for name, lib in helpers.items()
        if name not in own and lib not in have and re.search(rf"(^|[\s;|&(!`]){name}(\s|$|;|\))", code, re.M)
    )
    assert not missing, f"{path.relative_to(REPO)} calls {', '.join(missing)} without sourcing it"
