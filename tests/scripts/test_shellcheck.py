"""Every shell script passes shellcheck (with the repo's .shellcheckrc) and follows the script conventions."""

from __future__ import annotations

import shutil
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
