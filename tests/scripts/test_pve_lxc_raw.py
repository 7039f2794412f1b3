"""pve-lxc-raw.sh on real PVE-style conf files: main section only, everything else byte-identical."""

from __future__ import annotations

import fcntl
import os
import re
import threading
import time

import pytest

from .conftest import run

CONF = """\
#Transcoder%3A Intel Arc, ffmpeg
#managed by homelab-media
arch: amd64
cores: 8
features: nesting=1
hostname: transcoder
memory: 8192
mp0: /mnt/storage,mp=/mnt/storage
net0: name=eth0,bridge=vmbr0,firewall=0,hwaddr=BC:24:11:00:00:01,ip=dhcp,type=veth
ostype: debian
rootfs: local-lvm:vm-201-disk-0,size=20G
swap: 2048
lxc.cgroup2.devices.allow: c 226:0 rwm
lxc.idmap: u 0 100000 65536
lxc.mount.entry: /dev/dri dev/dri none bind,optional,create=dir
lxc.apparmor.profile: unconfined

[snap1]
#snapshot description
arch: amd64
cores: 8
hostname: transcoder
lxc.cgroup2.devices.allow: c 226:0 rwm
lxc.mount.entry: /dev/dri dev/dri none bind,optional,create=dir
memory: 8192
snaptime: 1736400000

[pve:pending]
cores: 4
lxc.cgroup2.devices.allow: c 11:0 rwm
"""

WANTED = [
    "lxc.cgroup2.devices.allow: c 226:1 rwm",
    "lxc.cgroup2.devices.allow: c 226:129 rwm",
    "lxc.mount.entry: /dev/dri dev/dri none bind,optional,create=dir",
    "lxc.cgroup2.devices.allow: b 11:0 rwm",
    "lxc.cgroup2.devices.allow: c 21:3 rwm",
    "lxc.mount.entry: /dev/sr0 dev/sr0 none bind,optional,create=file 0 0",
    "lxc.mount.entry: /dev/sg3 dev/sg3 none bind,optional,create=file",
]

MANAGED = re.compile(r"^(lxc\.cgroup2\.devices\.allow|lxc\.mount\.entry):")


def split(text: str) -> tuple[list[str], str]:
    """(main-section lines, the rest of the file from the first [section] on, verbatim)."""
    m = re.search(r"^\[", text, re.M)
    main, rest = (text[: m.start()], text[m.start() :]) if m else (text, "")
    return main.splitlines(), rest


def managed(lines: list[str]) -> list[str]:
    return [x for x in lines if MANAGED.match(x)]


def unmanaged(lines: list[str]) -> list[str]:
    return [x for x in lines if not MANAGED.match(x)]


@pytest.fixture
def conf(tmp_path):
    p = tmp_path / "201.conf"
    p.write_text(CONF)
    return p


def apply(conf, lines: list[str] | str, env: dict | None = None):
    stdin = lines if isinstance(lines, str) else "".join(x + "\n" for x in lines)
    env = {"PVE_LOCK_DIR": str(conf.parent / "lock"), **(env or {})}
    return run("pve-lxc-raw.sh", "apply", str(conf), input=stdin, env=env)


def assert_only_main_managed_changed(before: str, after: str, wanted: list[str]) -> None:
    b_main, b_rest = split(before)
    a_main, a_rest = split(after)
    assert managed(a_main) == wanted
    assert unmanaged(a_main) == unmanaged(b_main)  # other keys, lxc.idmap, description: same order
    assert a_rest == b_rest  # snapshots and [pve:pending]: byte-identical


def test_apply_new_lines_changes_only_the_main_section(conf):
    r = apply(conf, WANTED)
    assert r.rc == 0, r.err
    assert r.last_line == "changed"
    assert_only_main_managed_changed(CONF, conf.read_text(), WANTED)


def test_other_lxc_keys_stay_in_place(conf):
    apply(conf, WANTED)
    main, _ = split(conf.read_text())
    b_main, _ = split(CONF)
    # lxc.idmap keeps its position relative to the other unmanaged lines
    assert unmanaged(main).index("lxc.idmap: u 0 100000 65536") == unmanaged(b_main).index(
        "lxc.idmap: u 0 100000 65536"
    )
    assert "lxc.apparmor.profile: unconfined" in main
    # the blank line that separates the main section from [snap1] is still there
    assert conf.read_text().count("\n\n[snap1]") == 1


def test_reapply_is_unchanged_and_does_not_rewrite(conf):
    assert apply(conf, WANTED).last_line == "changed"
    st = os.stat(conf)
    text = conf.read_text()
    r = apply(conf, WANTED)
    assert r.rc == 0, r.err
    assert r.last_line == "unchanged"
    st2 = os.stat(conf)
    assert (st2.st_ino, st2.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
    assert conf.read_text() == text


def test_reorder_is_a_change(conf):
    apply(conf, WANTED)
    reordered = list(reversed(WANTED))
    r = apply(conf, reordered)
    assert r.last_line == "changed"
    assert_only_main_managed_changed(CONF, conf.read_text(), reordered)


def test_empty_stdin_removes_the_lines(conf):
    apply(conf, WANTED)
    r = apply(conf, "")
    assert r.rc == 0 and r.last_line == "changed"
    assert_only_main_managed_changed(CONF, conf.read_text(), [])
    assert apply(conf, "").last_line == "unchanged"


def test_existing_lines_already_wanted_is_unchanged(conf):
    current = managed(split(CONF)[0])
    r = apply(conf, current)
    assert r.last_line == "unchanged"
    assert conf.read_text() == CONF


def test_blank_lines_and_spacing_on_stdin_are_normalised(conf):
    r = apply(conf, "\nlxc.cgroup2.devices.allow:   c 226:1   rwm\n\n")
    assert r.last_line == "changed"
    assert managed(split(conf.read_text())[0]) == ["lxc.cgroup2.devices.allow: c 226:1 rwm"]


def test_no_existing_lines_go_after_the_keys_before_the_first_section(tmp_path):
    text = "#desc line\narch: amd64\nhostname: ripper\nlxc.idmap: u 0 100000 65536\n\n[snap]\narch: amd64\n"
    conf = tmp_path / "202.conf"
    conf.write_text(text)
    r = apply(conf, WANTED[:2])
    assert r.last_line == "changed"
    assert conf.read_text() == (
        "#desc line\narch: amd64\nhostname: ripper\nlxc.idmap: u 0 100000 65536\n"
        + "".join(x + "\n" for x in WANTED[:2])
        + "\n[snap]\narch: amd64\n"
    )


def test_file_without_sections_or_final_newline(tmp_path):
    conf = tmp_path / "203.conf"
    conf.write_text("arch: amd64\nhostname: x")
    r = apply(conf, WANTED[:1])
    assert r.last_line == "changed"
    assert conf.read_text() == "arch: amd64\nhostname: x\n" + WANTED[0] + "\n"


def test_mode_is_kept(conf):
    os.chmod(conf, 0o640)
    apply(conf, WANTED)
    assert os.stat(conf).st_mode & 0o777 == 0o640
    assert not list(conf.parent.glob("*.tmp.*"))


@pytest.mark.parametrize(
    "bad, message",
    [
        ("lxc.idmap: u 0 100000 65536", "not managed"),
        ("lxc.apparmor.profile: unconfined", "not managed"),
        ("cores: 4", "not managed"),
        ("lxc.cgroup2.devices.allow: c 226 rwm", "malformed"),
        ("lxc.cgroup2.devices.allow: x 226:0 rwm", "malformed"),
        ("lxc.cgroup2.devices.allow: c 226:0 rwx", "malformed"),
        ("lxc.mount.entry: /dev/dri dev/dri", "malformed"),
        ("lxc.mount.entry: /dev/dri dev/dri none bind 0", "malformed"),
        ("# a comment", "'#' lines are not allowed"),
        ("no colon here", "not a \"key: value\" line"),
    ],
)
def test_refused_input_leaves_the_file_untouched(conf, bad, message):
    st = os.stat(conf)
    r = apply(conf, [WANTED[0], bad])
    assert r.rc != 0
    assert message in r.err
    assert "line 2" in r.err
    assert "changed" not in r.out
    assert conf.read_text() == CONF
    assert os.stat(conf).st_ino == st.st_ino


def test_missing_file_fails(tmp_path):
    r = apply(tmp_path / "999.conf", WANTED)
    assert r.rc != 0
    assert "no such container config" in r.err
    assert not (tmp_path / "999.conf").exists()


def test_help_and_bad_usage():
    assert run("pve-lxc-raw.sh", "help").rc == 0
    r = run("pve-lxc-raw.sh", "--help")
    assert r.rc == 0 and "apply CONF" in r.out
    assert run("pve-lxc-raw.sh").rc != 0
    assert run("pve-lxc-raw.sh", "frobnicate").rc != 0


# ---------------------------------------------------------------------------
# PVE's per-container config lock (flock on <PVE_LOCK_DIR>/pve-config-<vmid>.lock)


class HeldLock:
    """Hold PVE's config lock like pct does (an exclusive flock on the lock file)."""

    def __init__(self, lock_dir, vmid=201):
        lock_dir.mkdir(parents=True, exist_ok=True)
        self.f = open(lock_dir / f"pve-config-{vmid}.lock", "a")
        fcntl.flock(self.f, fcntl.LOCK_EX)

    def release(self):
        fcntl.flock(self.f, fcntl.LOCK_UN)
        self.f.close()


def test_lock_dir_and_file_are_created(conf):
    lock_dir = conf.parent / "run/lock/lxc"
    r = apply(conf, WANTED, env={"PVE_LOCK_DIR": str(lock_dir)})
    assert r.rc == 0, r.err
    assert (lock_dir / "pve-config-201.lock").is_file()
    assert "config lock of container 201" in r.err


def test_waits_for_pve_s_config_lock(conf):
    held = HeldLock(conf.parent / "lock")
    timer = threading.Timer(1.5, held.release)
    timer.start()
    start = time.monotonic()
    r = apply(conf, WANTED)
    timer.join()
    assert r.rc == 0, r.err
    assert time.monotonic() - start >= 1.2
    assert r.last_line == "changed"
    assert_only_main_managed_changed(CONF, conf.read_text(), WANTED)


def test_lock_wait_is_bounded_and_leaves_the_file(conf):
    held = HeldLock(conf.parent / "lock")
    try:
        start = time.monotonic()
        r = apply(conf, WANTED, env={"PVE_LOCK_TIMEOUT": "1"})
        assert time.monotonic() - start < 10
    finally:
        held.release()
    assert r.rc == 1
    assert "config lock of container 201" in r.err and "still held after 1s" in r.err
    assert "changed" not in r.out
    assert conf.read_text() == CONF


def test_bad_input_fails_without_waiting_for_the_lock(conf):
    held = HeldLock(conf.parent / "lock")
    try:
        r = apply(conf, ["cores: 4"], env={"PVE_LOCK_TIMEOUT": "30"})
    finally:
        held.release()
    assert r.rc == 1 and "not managed" in r.err


def test_other_lock_is_not_waited_for(conf):
    held = HeldLock(conf.parent / "lock", vmid=202)
    try:
        r = apply(conf, WANTED, env={"PVE_LOCK_TIMEOUT": "1"})
    finally:
        held.release()
    assert r.rc == 0, r.err


def test_non_numeric_name_is_edited_without_the_lock(tmp_path):
    conf = tmp_path / "transcoder.conf"
    conf.write_text(CONF)
    r = apply(conf, WANTED)
    assert r.rc == 0, r.err
    assert "not <vmid>.conf" in r.err
    assert not (tmp_path / "lock").exists()
