"""The lab runner hands each concurrent SSH step a complete private key file.

CI once failed with `Load key ".../program-ssh-key": error in libcrypto`: steps run
in parallel threads and each rewrote one shared key file in place, so an ssh could
read it truncated. These tests load the runner and hammer its key file helper.
"""
from __future__ import annotations

import importlib.util
import stat
import threading
from pathlib import Path

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
