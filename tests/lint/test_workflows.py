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


def test_pr_code_never_meets_a_secret_or_the_node_unless_trusted():
    """The preview runs the PR's program with the stack's secrets, on the runner that reaches the node:
    only a trusted author's branch of this repository gets there, after a reviewer approves the
    environment that holds the passphrase. Everything else runs GitHub-hosted, without secrets."""
    import yaml

    wf = yaml.safe_load((ROOT / ".github/workflows/preview.yml").read_text())
    triggers = wf.get(True, wf.get("on"))  # YAML 1.1 reads the key `on` as True
    assert "pull_request_target" not in triggers and "workflow_run" not in triggers
    jobs = wf["jobs"]
    for name, job in jobs.items():
        text = yaml.safe_dump(job)
        runner = job["runs-on"]
        if "self-hosted" in runner or "secrets." in text:
            assert name == "preview", f"job {name} runs PR code on the node's runner or with a secret"
    preview = jobs["preview"]
    cond = " ".join(preview["if"].split())
    assert "github.event.pull_request.head.repo.full_name == github.repository" in cond
    assert "author_association" in cond and '"OWNER", "MEMBER", "COLLABORATOR"' in cond
    assert preview["environment"] == "homelab-preview"
    assert "self-hosted" not in jobs["validate"]["runs-on"]
    assert all(s.get("with", {}).get("persist-credentials") is False
               for job in jobs.values() for s in job["steps"] if s.get("uses", "").startswith("actions/checkout"))
