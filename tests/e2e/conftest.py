"""Fixtures of the end-to-end tests: the local lab for the session, the deployer, an empty stack.

Run as root (make test-e2e); not root: skipped, saying why. test_00_lab checks the lab
itself and needs nothing else. The life cycle and fault tests drive the real Pulumi engine
(.tools/, local backend, stack `lab`); where the toolchain is incomplete (docs/adr/0002:
the Go proxy here refuses the language host and the providers) they skip, naming what is
missing, and tests/lab covers the program engine-less (docs/adr/0006). Switches:
  E2E_ENGINE=1         a missing engine fails instead of skipping (for a CI that builds it)
  E2E_DRIVER=runner    drive these same tests with lab/run-program.py instead of
                       the engine (checks the tests themselves where the engine is missing)
  LAB_KEEP=1           never take the lab down at the end
The lab is brought up if it is not running, and taken down at the end only if this session
started it.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest

from .lab import LAB_DIR, PULUMI, ROOT, Lab, ProgramRunner, Pulumi, StackFile, port_open, run, toolchain_gap

E2E_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        if E2E_DIR in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def lab():
    if os.geteuid() != 0:
        pytest.skip("the lab needs root (mount namespaces, mknod, chroot): run as root")
    was_up = (LAB_DIR / "env").exists() and port_open(18006) and port_open(12222)
    lab = Lab.up()
    yield lab
    if not was_up and not os.environ.get("LAB_KEEP"):
        run(["bash", str(ROOT / "lab/lab-down.sh")], timeout=300, check=False)


@pytest.fixture(scope="session")
def engine_gap():
    """None when the real engine can run here, else what is missing."""
    gap = toolchain_gap()
    if gap and os.environ.get("E2E_ENGINE") == "1":
        pytest.fail(f"E2E_ENGINE=1 but the Pulumi toolchain is incomplete: {gap}")
    return gap


@pytest.fixture(scope="session")
def deployer(lab, engine_gap):
    """Pulumi (the engine), or ProgramRunner with E2E_DRIVER=runner; the stack starts empty."""
    if os.environ.get("E2E_DRIVER") == "runner":
        d = ProgramRunner()
    elif engine_gap:
        pytest.skip(f"Pulumi toolchain incomplete on this machine ({engine_gap}); see docs/adr/0002 "
                    "(tests/lab runs the program without the engine; E2E_DRIVER=runner runs these that way)")
    else:
        d = Pulumi()
    d.start_empty()
    lab.remove_all_containers()
    yield d
    d.reset_config()


@pytest.fixture
def needs_engine(deployer, engine_gap):
    if not deployer.engine:
        pytest.skip(f"needs the Pulumi engine, incomplete here ({engine_gap}); see docs/adr/0002")


@pytest.fixture
def config_restored(deployer):
    """Config changes made by the test are undone after it (Pulumi.lab.yaml byte for byte)."""
    saved = StackFile()
    yield
    deployer.reset_config()
    saved.restore()


@pytest.fixture
def empty_stack(lab, deployer, config_restored):
    """Nothing deployed before the test, and nothing after it (destroyed)."""
    if deployer.leftover() or lab.containers():
        deployer.destroy(timeout=900)
    lab.control("POST", "/lab/clear", {})
    yield deployer
    lab.control("POST", "/lab/clear", {})
    deployer.reset_config()
    deployer.destroy(timeout=900, check=False)


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
    return [f"lab: {LAB_DIR} (lab/lab-up.sh), pulumi: {PULUMI}"]
