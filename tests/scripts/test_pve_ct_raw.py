"""pve-ct-raw.sh with a fake `pct` on PATH: waits for the lock, reboots only when changed and running."""

from __future__ import annotations

import os
import threading
import time

import pytest

from .conftest import POOL_MOUNTS, SCRIPTS, fake_findmnt, run

SCRIPTS_DIR = SCRIPTS.parent

BASE = "arch: amd64\nhostname: ripper\nostype: debian\n"
LINES = "lxc.cgroup2.devices.allow: b 11:0 rwm\nlxc.mount.entry: /dev/sr0 dev/sr0 none bind,optional,create=file\n"

FAKE_PCT = """#!/usr/bin/env bash
echo "$*" >> "$PCT_LOG"
case $1 in
  status) echo "status: $(cat "$PCT_STATE")" ;;
  reboot) echo running > "$PCT_STATE" ;;
  *) exit 2 ;;
esac
"""


@pytest.fixture
def pve(tmp_path):
    conf_dir = tmp_path / "lxc"
    conf_dir.mkdir()
    bindir = tmp_path / "bin"
    bindir.mkdir()
    pct = bindir / "pct"
    pct.write_text(FAKE_PCT)
    pct.chmod(0o755)
    state = tmp_path / "state"
    state.write_text("stopped\n")
    log = tmp_path / "pct.log"
    log.write_text("")

    class Pve:
        dir = conf_dir
        env = {
            "PVE_CONF_DIR": str(conf_dir),
            "PATH": f"{bindir}:{os.environ['PATH']}",
            "PCT_LOG": str(log),
            "PCT_STATE": str(state),
            "PVE_LOCK_DIR": str(tmp_path / "lock"),
        }

        def calls(self):
            return log.read_text().splitlines()

        def set_state(self, s):
            state.write_text(s + "\n")

        def conf(self, vmid=202):
            return conf_dir / f"{vmid}.conf"

    return Pve()


def replace(path, text):
    """Write like PVE does (temp file + rename), so the script never reads a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def ct_raw(pve, *args, lines=LINES):
    return run("pve-ct-raw.sh", *args, input=lines, env=pve.env)


def test_stopped_container_changed_no_reboot(pve):
    pve.conf().write_text(BASE)
    r = ct_raw(pve, "--vmid", "202")
    assert r.rc == 0, r.err
    assert r.last_line == "changed"
    assert pve.calls() == ["status 202"]
    assert "lxc.mount.entry: /dev/sr0" in pve.conf().read_text()


def test_running_container_changed_is_rebooted(pve):
    pve.conf().write_text(BASE)
    pve.set_state("running")
    r = ct_raw(pve, "--vmid", "202")
    assert r.last_line == "changed"
    assert pve.calls() == ["status 202", "reboot 202"]


def test_running_container_unchanged_is_left_alone(pve):
    pve.conf().write_text(BASE + LINES)
    pve.set_state("running")
    r = ct_raw(pve, "--vmid", "202")
    assert r.rc == 0, r.err
    assert r.last_line == "unchanged"
    assert pve.calls() == []


def test_waits_for_the_create_lock(pve):
    pve.conf().write_text("lock: create\n" + BASE)

    def unlock():
        time.sleep(2)
        replace(pve.conf(), BASE)

    t = threading.Thread(target=unlock)
    t.start()
    start = time.monotonic()
    r = ct_raw(pve, "--vmid", "202", "--timeout", "30")
    t.join()
    assert r.rc == 0, r.err
    assert time.monotonic() - start >= 1.5
    assert r.last_line == "changed"
    assert "lock:" not in pve.conf().read_text()
    assert "lxc.cgroup2.devices.allow: b 11:0 rwm" in pve.conf().read_text()


def test_waits_for_the_config_to_appear(pve):
    def create():
        time.sleep(1.5)
        replace(pve.conf(), BASE)

    t = threading.Thread(target=create)
    t.start()
    r = ct_raw(pve, "--vmid", "202", "--timeout", "30")
    t.join()
    assert r.rc == 0, r.err
    assert r.last_line == "changed"


def test_a_lock_in_a_snapshot_section_does_not_block(pve):
    pve.conf().write_text(BASE + "\n[snap1]\nlock: backup\narch: amd64\n")
    r = ct_raw(pve, "--vmid", "202", "--timeout", "3")
    assert r.rc == 0, r.err
    assert r.last_line == "changed"


def test_lock_timeout_fails_clearly_and_leaves_the_file(pve):
    text = "lock: create\n" + BASE
    pve.conf().write_text(text)
    r = ct_raw(pve, "--vmid", "202", "--timeout", "2")
    assert r.rc == 1
    assert "still locked" in r.err and "pct unlock 202" in r.err
    assert pve.conf().read_text() == text
    assert pve.calls() == []


def test_missing_container_times_out(pve):
    r = ct_raw(pve, "--vmid", "999", "--timeout", "1")
    assert r.rc == 1
    assert "did not appear" in r.err


def test_bad_lines_fail_without_touching(pve):
    pve.conf().write_text(BASE)
    r = ct_raw(pve, "--vmid", "202", lines="lxc.idmap: u 0 100000 65536\n")
    assert r.rc != 0
    assert pve.conf().read_text() == BASE
    assert pve.calls() == []


def test_arguments():
    assert run("pve-ct-raw.sh", "--help").rc == 0
    assert run("pve-ct-raw.sh").rc == 1
    assert run("pve-ct-raw.sh", "--vmid", "abc").rc == 1


# ---------------------------------------------------------------------------
# --require-mount: no reboot over an unmounted pool


def test_require_mount_refuses_a_reboot_over_an_unmounted_pool(pve, tmp_path):
    pool = tmp_path / "pool"
    pool.mkdir()  # a plain directory, not a mount point
    pve.conf().write_text(BASE)
    pve.set_state("running")
    r = ct_raw(pve, "--vmid", "202", "--require-mount", str(pool))
    assert r.rc == 1
    assert f"refusing to reboot container 202: {pool} is not a mount point" in r.err
    assert "host-check-pool.sh" in r.err and f"mount {pool}" in r.err
    assert "reboot 202" not in pve.calls()
    assert pve.conf().read_text() == BASE  # untouched: the next run still sees the change and reboots
    assert r.out == ""


def test_require_mount_is_not_checked_without_a_reboot(pve, tmp_path):
    pool = tmp_path / "pool"
    pool.mkdir()
    # stopped: the lines are written, nothing is rebooted
    pve.conf().write_text(BASE)
    r = ct_raw(pve, "--vmid", "202", "--require-mount", str(pool))
    assert r.rc == 0, r.err
    assert r.last_line == "changed" and "reboot 202" not in pve.calls()
    # running but already up to date: nothing to reboot, nothing refused
    pve.set_state("running")
    r = ct_raw(pve, "--vmid", "202", "--require-mount", str(pool))
    assert r.rc == 0, r.err
    assert r.last_line == "unchanged" and "reboot 202" not in pve.calls()


def test_require_mount_bad_lines_still_report_the_line(pve, tmp_path):
    pve.conf().write_text(BASE)
    pve.set_state("running")
    r = ct_raw(pve, "--vmid", "202", "--require-mount", str(tmp_path), lines="lxc.idmap: u 0 100000 65536\n")
    assert r.rc != 0
    assert "not managed" in r.err and "refusing to reboot" not in r.err


@pytest.mark.skipif(os.geteuid() != 0, reason="mount --bind needs root")
def test_require_mount_reboots_when_the_pool_is_mounted(pve, tmp_path):
    import subprocess

    from .conftest import SCRIPTS

    pool = tmp_path / "pool"
    pool.mkdir()
    pve.conf().write_text(BASE)
    pve.set_state("running")
    p = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         'mount --bind "$P" "$P" && exec bash "$S" --vmid 202 --require-mount "$P"'],
        input=LINES, capture_output=True, text=True, timeout=60,
        env={**os.environ, **pve.env, "P": str(pool), "S": str(SCRIPTS / "pve-ct-raw.sh")},
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1] == "changed"
    assert pve.calls()[-1] == "reboot 202"


@pytest.mark.parametrize("mount", POOL_MOUNTS, ids=list(POOL_MOUNTS))
def test_require_mount_judges_a_mount_as_the_hookscript_does(pve, tmp_path, mount):
    """lib-pool.sh's verdict: a reboot onto a pool the container's hookscript would refuse
    (e.g. mergerfs without allow_other) is refused before anything is written."""
    line, usable = POOL_MOUNTS[mount]
    pool = tmp_path / "pool"
    pool.mkdir()
    pve.env.update(fake_findmnt(tmp_path / "bin", pool, line))
    pve.conf().write_text(BASE)
    pve.set_state("running")
    r = ct_raw(pve, "--vmid", "202", "--require-mount", str(pool))
    if usable:
        assert r.rc == 0, r.err
        assert pve.calls()[-1] == "reboot 202"
    else:
        fstype = line.splitlines()[-1].split()[0]
        assert r.rc == 1
        assert f"refusing to reboot container 202: {pool} is a {fstype} mount without allow_other" in r.err
        assert "reboot 202" not in pve.calls() and pve.conf().read_text() == BASE


def test_require_mount_must_be_absolute():
    r = run("pve-ct-raw.sh", "--vmid", "202", "--require-mount", "mnt/storage")
    assert r.rc == 1 and "absolute" in r.err


def test_config_lock_is_not_held_during_the_reboot(pve, tmp_path):
    """pct reboot takes the same config lock: pve-ct-raw must have released it by then."""
    pct = tmp_path / "bin/pct"
    pct.write_text(
        FAKE_PCT.replace(
            "reboot) echo running",
            'reboot) flock -n "$PVE_LOCK_DIR/pve-config-$2.lock" true && echo "lock free" >> "$PCT_LOG"; echo running',
        )
    )
    pve.conf().write_text(BASE)
    pve.set_state("running")
    r = ct_raw(pve, "--vmid", "202")
    assert r.rc == 0, r.err
    assert (tmp_path / "lock/pve-config-202.lock").exists()
    assert pve.calls() == ["status 202", "reboot 202", "lock free"]


# --- a re-run never undoes the hookscript (issue 14, item 5) ---------------------------------

def hooked(pve, hw, tmp_path, role="drive"):
    """The node's hookscript dir as host-hookscript.sh installs it, for CT 202 (fake device trees)."""
    import shutil

    from components import render

    hook = tmp_path / "hook"
    hook.mkdir()
    for f in render.bundle_files("pve-hookscript.sh", ["pve-lxc-raw.sh"]):
        shutil.copy(SCRIPTS / f, hook / f)
    (hook / "ct-202.conf").write_text(f"role={role}\npool=/\nrequire_mount=0\noptical_drive=auto\n")
    (hook / "ct-202.extra").write_text("")
    pve.env.update(hw.env)
    return hook


def test_stale_discovery_after_the_hook_adapted_does_not_reboot(pve, hw, tmp_path):
    """The drive moved from sg1 to sg2; the last start's hook wrote sg2. A project upgrade re-runs
    the raw-lines step with the deploy's discovery (sg1): it must write what the hook would, and
    not reboot a running container (mid-rip) for lines its next start would undo."""
    hook = hooked(pve, hw, tmp_path)
    hw.optical(sr=0, sg=2)
    today = run("../" + os.path.relpath(hook / "pve-hookscript.sh", SCRIPTS_DIR), "202", "lines", env=pve.env)
    assert today.rc == 0, today.err
    assert "lxc.cgroup2.devices.allow: c 21:2 rwm" in today.out
    pve.conf().write_text(BASE + today.out)  # what the hook wrote at the last start
    pve.set_state("running")
    stale = LINES + "lxc.cgroup2.devices.allow: c 21:1 rwm\n"
    before = pve.conf().read_text()
    r = ct_raw(pve, "--vmid", "202", "--hook-dir", str(hook), lines=stale)
    assert r.rc == 0, r.err
    assert r.last_line == "unchanged"
    assert pve.calls() == [], "a running container was rebooted for stale lines"
    assert pve.conf().read_text() == before
    assert "today's devices differ from the stack's last discovery" in r.err


def test_the_lxc_hook_line_alone_never_reboots(pve, hw, tmp_path):
    """An upgrade that only adds the LXC hook line writes it and waits for the next start."""
    hook = hooked(pve, hw, tmp_path)
    hw.optical(sr=0, sg=2)
    devices = "".join(line + "\n" for line in run("../" + os.path.relpath(hook / "pve-hookscript.sh", SCRIPTS_DIR),
                                                   "202", "lines", env=pve.env).out.splitlines()
                      if not line.startswith("lxc.hook"))
    pve.conf().write_text(BASE + devices)
    pve.set_state("running")
    r = ct_raw(pve, "--vmid", "202", "--hook-dir", str(hook), lines=devices)
    assert r.rc == 0, r.err
    assert r.last_line == "changed"
    assert f"lxc.hook.pre-start: {hook}/homelab-media-lxc-hook.sh" in pve.conf().read_text()
    assert "reboot 202" not in pve.calls()


def test_a_real_device_change_still_reboots(pve, hw, tmp_path):
    hook = hooked(pve, hw, tmp_path)
    hw.optical(sr=0, sg=2)
    pve.conf().write_text(BASE + LINES + "lxc.cgroup2.devices.allow: c 21:1 rwm\n")  # before the drive moved
    pve.set_state("running")
    r = ct_raw(pve, "--vmid", "202", "--hook-dir", str(hook))
    assert r.rc == 0, r.err
    assert r.last_line == "changed" and pve.calls() == ["status 202", "reboot 202"]
    assert "c 21:2 rwm" in pve.conf().read_text() and "c 21:1 rwm" not in pve.conf().read_text()
