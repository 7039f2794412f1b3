"""Fixtures of the end-to-end tests: the local lab up for the session, the Pulumi CLI, an empty stack.

Run as root with the toolchain built (make test-e2e). They skip, saying why, when not root
or when .tools/bin/pulumi is missing; in CI (CI set) a missing toolchain is a failure,
because CI builds it first. LAB_KEEP=1 keeps the lab (and its logs) after the session.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest

from .lab import LAB_DIR, PULUMI, ROOT, STACK, Lab, Pulumi, StackFile, run

E2E_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        if E2E_DIR in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def lab():
    if os.geteuid() != 0:
        pytest.skip("the lab needs root (mount namespaces, mknod, chroot): run as root")
    lab = Lab.up()
    yield lab
    if not os.environ.get("LAB_KEEP"):
        run(["bash", str(ROOT / "scripts/lab/lab-down.sh")], timeout=300, check=False)


@pytest.fixture(scope="session")
def pulumi(lab):
    """The CLI, on a `lab` stack that starts empty: state from an earlier lab refers to
    containers that fakepve forgot when it stopped, so the stack is recreated (its config
    file kept) and lab-up.sh sets the secrets again."""
    if not PULUMI.exists():
        if os.environ.get("CI"):
            pytest.fail(".tools/bin/pulumi is missing in CI: `make toolchain` must run before the e2e tests")
        pytest.skip(".tools/bin/pulumi is missing: build the toolchain first (make toolchain)")
    p = Pulumi()
    stacks = p("stack", "ls", "--json").stdout
    if f'"name": "{STACK}"' in stacks and p.resources():
        p("stack", "rm", "--stack", STACK, "--yes", "--force", "--preserve-config")
    Lab.up()
    saved = StackFile()
    yield p
    saved.restore()


@pytest.fixture
def stack_file():
    """Pulumi.lab.yaml is put back byte for byte after the test."""
    saved = StackFile()
    yield saved
    saved.restore()


@pytest.fixture
def empty_stack(lab, pulumi, stack_file):
    """The stack has no resources before the test, and none after it (destroyed)."""
    if [r for r in pulumi.resources() if r.get("type") != "pulumi:pulumi:Stack"]:
        pulumi.destroy(timeout=900)
    lab.control("POST", "/lab/clear", {})
    yield pulumi
    lab.control("POST", "/lab/clear", {})
    stack_file.restore()
    pulumi.destroy(timeout=900, check=False)


@pytest.fixture(scope="session")
def pool_sentinels(lab):
    """Files on the lab's pool before any `up`: one outside the pipeline's directories, one
    inside movies/. Their bytes (and the outside one's owner and mode) must survive destroy."""
    files = {}
    for rel in ("keep/sentinel.bin", "movies/Existing Movie (1999)/existing.mkv"):
        path = lab.pool / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.write_bytes(secrets.token_bytes(64 * 1024))
        os.chown(path, 4242, 4242)
        os.chmod(path, 0o640)
        st = path.stat()
        files[rel] = (path.read_bytes(), st.st_uid, st.st_gid, st.st_mode)
    return files


def pytest_report_header(config):
    return [f"lab: {LAB_DIR} (scripts/lab/lab-up.sh), pulumi: {PULUMI}"]
