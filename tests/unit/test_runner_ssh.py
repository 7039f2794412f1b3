"""The lab runner's SSH steps (lab/run-program.py, the engine-less stand-in CI uses).

Each concurrent step gets a complete private key file; a node never reached and a node lost
mid-step are told apart; OpenSSH keepalives bound a silent node like the engine's TCP ones.

CI once failed with `Load key ".../program-ssh-key": error in libcrypto`: steps run
in parallel threads and each rewrote one shared key file in place, so an ssh could
read it truncated. These tests load the runner and hammer its key file helper.
"""
from __future__ import annotations

import importlib.util
import stat
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_runner(tmp_path: Path):
    spec = importlib.util.spec_from_file_location("lab_run_program", ROOT / "lab" / "run-program.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.LAB = tmp_path  # never touch the checkout's .lab
    return mod


KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\n" + "A" * 64 + "\n" * 1 + "B" * 4000 + "\n-----END OPENSSH PRIVATE KEY-----"


def test_key_file_is_complete_and_private(tmp_path):
    runner = load_runner(tmp_path)
    path = runner.private_key_file(KEY)
    assert path.read_text() == KEY + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.parent == tmp_path / "run"


def test_concurrent_steps_never_see_a_partial_key(tmp_path):
    runner = load_runner(tmp_path)
    seen: list[str] = []
    lock = threading.Lock()

    def step():
        for _ in range(50):
            text = runner.private_key_file(KEY).read_text()
            with lock:
                seen.append(text)

    threads = [threading.Thread(target=step) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 400
    assert {len(s) for s in seen} == {len(KEY) + 1}
    assert not list((tmp_path / "run").glob("*.tmp*")), "temporary key files left behind"


def test_a_new_key_gets_its_own_file(tmp_path):
    runner = load_runner(tmp_path)
    a = runner.private_key_file(KEY)
    b = runner.private_key_file(KEY.replace("B", "C"))
    assert a != b and a.read_text() != b.read_text()


def runner_step(tmp_path, monkeypatch, ssh_script: str):
    """The runner's command() with `ssh` replaced by a script: what it reports for each exit."""
    runner = load_runner(tmp_path)
    runner.STATE = tmp_path / "state.json"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ssh").write_text("#!/bin/sh\n" + ssh_script)
    (bin_dir / "ssh").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    performer = runner.Performer({}, {})
    conn = {"host": "192.0.2.7", "port": 22, "privateKey": KEY, "user": "root"}
    return lambda: performer.command("step", {"connection": conn, "create": "bash -s", "stdin": ""})


def test_a_node_never_reached_is_named_unreachable(tmp_path, monkeypatch):
    step = runner_step(tmp_path, monkeypatch, 'echo "ssh: connect to host 192.0.2.7 port 22: Connection refused" >&2; exit 255\n')
    with pytest.raises(RuntimeError, match=r"cannot reach 192\.0\.2\.7:22 over SSH"):
        step()


def test_a_node_lost_mid_step_is_named_lost(tmp_path, monkeypatch):
    # ServerAliveCountMax reached: ssh exits 255 after the step had printed (LogLevel=ERROR hides
    # ssh's own "not responding" line)
    step = runner_step(tmp_path, monkeypatch, 'echo started; exit 255\n')
    with pytest.raises(RuntimeError, match=r"lost the SSH connection to 192\.0\.2\.7:22 during the step"):
        step()


def test_the_runner_asks_ssh_for_keepalives(tmp_path, monkeypatch):
    step = runner_step(tmp_path, monkeypatch, 'printf "%s\\n" "$@" > "$(dirname "$0")/args"; echo ok\n')
    step()
    args = (tmp_path / "bin" / "args").read_text().split("\n")
    assert "ServerAliveInterval=15" in args and "ServerAliveCountMax=9" in args
