"""The users' GitHub Actions workflow passes actionlint (built from its Go module, pinned)."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ACTIONLINT_VERSION = "v1.7.12"


def actionlint() -> str:
    tools = ROOT / ".tools" / "bin"
    binary = tools / "actionlint"
    if binary.exists():
        return str(binary)
    if not shutil.which("go"):
        pytest.skip("go is not installed: actionlint cannot be built (install Go 1.22+)")
    env = {**os.environ, "GOBIN": str(tools), "CGO_ENABLED": "0"}
    subprocess.run(
        ["go", "install", f"github.com/rhysd/actionlint/cmd/actionlint@{ACTIONLINT_VERSION}"],
        check=True, env=env, capture_output=True, timeout=600,
    )
    return str(binary)


def test_workflows_pass_actionlint():
    workflows = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
    assert workflows, "no workflow found"
    res = subprocess.run([actionlint(), *map(str, workflows)], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  x:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo ${{ github.nope }}\n")
    res = subprocess.run([actionlint(), str(bad)], capture_output=True, text=True)
    assert res.returncode != 0
