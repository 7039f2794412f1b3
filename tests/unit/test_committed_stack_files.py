"""No secret is committed in a stack file of the repo.

The lab's secrets are written into Pulumi.lab.yaml while a lab is up with the engine
(lab/lab-up.sh); one commit once picked them up. lab-up.sh now marks the file
skip-worktree until lab-down.sh takes them out again; this test is the backstop: what git
would commit (the index) holds no `secure:` value and no `encryptionsalt`.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def committed_stack_files() -> dict[str, str]:
    """{path: text as in the git index}, or the files on disk outside a git checkout."""
    if shutil.which("git") and (ROOT / ".git").exists():
        names = subprocess.run(["git", "ls-files", "Pulumi.*.yaml"], cwd=ROOT, check=True,
                               capture_output=True, text=True).stdout.split()
        return {n: subprocess.run(["git", "show", f":{n}"], cwd=ROOT, check=True, capture_output=True,
                                  text=True).stdout for n in names}
    return {p.name: p.read_text() for p in ROOT.glob("Pulumi.*.yaml")}


def secure_keys(doc: dict) -> list[str]:
    found = []

    def walk(value, path):
        if isinstance(value, dict):
            if "secure" in value:
                found.append(path)
            for k, v in value.items():
                walk(v, f"{path}.{k}" if path else str(k))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, f"{path}[{i}]")

    walk(doc.get("config") or {}, "")
    return found


def test_stack_files_are_committed():
    assert {"Pulumi.homelab.yaml", "Pulumi.lab.yaml"} <= set(committed_stack_files())


@pytest.mark.parametrize("name", sorted(committed_stack_files()))
def test_no_secret_in_a_committed_stack_file(name):
    doc = yaml.safe_load(committed_stack_files()[name]) or {}
    assert "encryptionsalt" not in doc, f"{name} is committed with an encryptionsalt: a stack's secrets leaked in"
    assert not secure_keys(doc), (f"{name} is committed with secret values {secure_keys(doc)}: "
                                  f"git restore --staged {name}, then take them out (make lab-down for the lab's)")


def test_the_check_finds_a_secret():
    doc = yaml.safe_load("config:\n  homelab-media:sshPrivateKey:\n    secure: v1:abc\n")
    assert secure_keys(doc) == ["homelab-media:sshPrivateKey"]
