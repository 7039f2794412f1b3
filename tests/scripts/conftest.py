"""Helpers for the script tests: run a script, fake device trees, real Debian 12 root filesystems."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts"
IS_ROOT = os.geteuid() == 0
CACHE = Path(os.environ.get("LAB_CACHE", Path.home() / ".cache/homelab-media/rootfs"))

needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root (mknod, chroot, useradd in a Debian tree)")


# What `findmnt -n -r -o FSTYPE,OPTIONS --mountpoint POOL` prints -> may a container bind POOL?
# (scripts/lib-pool.sh; with stacked mounts findmnt prints each, in mount order: the top one counts)
POOL_MOUNTS = {
    "mergerfs without allow_other": ("fuse.mergerfs rw,relatime,user_id=0,group_id=0", False),
    "mergerfs with allow_other": ("fuse.mergerfs rw,relatime,user_id=0,group_id=0,default_permissions,allow_other", True),
    "ntfs-3g (fuseblk) without allow_other": ("fuseblk rw,relatime,user_id=0,group_id=0,blksize=4096", False),
    "ntfs-3g (fuseblk) with allow_other": ("fuseblk rw,relatime,user_id=0,group_id=0,allow_other,blksize=4096", True),
    "plain fuse without allow_other": ("fuse rw,nosuid,nodev,user_id=0,group_id=0", False),
    "ext4": ("ext4 rw,relatime", True),
    "mergerfs stacked over a bind mount: the top one counts": ("ext4 rw,relatime\nfuse.mergerfs rw,relatime,user_id=0", False),
    "a bind mount stacked over mergerfs: the top one counts": ("fuse.mergerfs rw,relatime,user_id=0\next4 rw,relatime", True),
}


def fake_findmnt(bindir: Path, pool, output: str) -> dict:
    """A findmnt in bindir that answers lib-pool.sh's one call for `pool` with `output` (any other
    call fails loudly); returns the env that puts it first on PATH."""
    bindir.mkdir(parents=True, exist_ok=True)
    f = bindir / "findmnt"
    want = f"-n -r -o FSTYPE,OPTIONS --mountpoint {pool}"
    f.write_text("#!/bin/sh\n"
                 f'[ "$*" = "{want}" ] || {{ echo "fake findmnt: unexpected call: $*" >&2; exit 64; }}\n'
                 f"printf '%s\\n' {' '.join(shlex.quote(x) for x in output.splitlines())}\n")
    f.chmod(0o755)
    return {"PATH": f"{bindir}:{os.environ['PATH']}"}


@dataclass
class Result:
    rc: int
    out: str
    err: str

    @property
    def json(self):
        return json.loads(self.out)

    @property
    def last_line(self) -> str:
        lines = self.out.strip().splitlines()
        return lines[-1] if lines else ""


def run(script: str, *args: str, input: str | None = "", env: dict | None = None, timeout: int = 120) -> Result:
    """Run scripts/<script> with bash; stdin is `input` (empty by default)."""
    full_env = {**os.environ, **(env or {})}
    p = subprocess.run(
        ["bash", str(SCRIPTS / script), *args],
        input=input,
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
    )
    return Result(p.returncode, p.stdout, p.stderr)


# ---------------------------------------------------------------------------
# Debian 12 root filesystems


def _wait_for_cache(limit_s: int = 900) -> None:
    """The cache may be being built by another shell: wait for it instead of building twice."""
    tree = CACHE / "bookworm"
    deadline = time.monotonic() + limit_s
    while tree.exists() and not (tree / ".complete").exists():
        if time.monotonic() > deadline:
            pytest.fail(f"{tree} is still being built after {limit_s}s (no .complete)")
        time.sleep(5)


class Rootfs:
    """A Debian 12 tree with this repo's scripts in /tmp/scripts, run through chroot."""

    def __init__(self, path: Path):
        self.path = path

    def p(self, inner: str) -> Path:
        return self.path / inner.lstrip("/")

    def sh(self, command: str, *, binds: tuple[str, ...] = (), input: str | None = "", timeout: int = 600) -> Result:
        """Run a shell command in the tree: own mount namespace, /proc mounted, optional
        bind mounts of paths inside the tree onto themselves (so they are mount points)."""
        mounts = ['mount -t proc proc "$R/proc"']
        mounts += [f'mount --bind "$R{b}" "$R{b}"' for b in binds]
        inner = " && ".join(mounts) + ' && exec chroot "$R" /bin/bash -c "$CMD"'
        p = subprocess.run(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", inner],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "R": str(self.path), "CMD": command, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        )
        return Result(p.returncode, p.stdout, p.stderr)

    def script(self, name: str, *args: str, **kw) -> Result:
        import shlex

        cmd = " ".join(shlex.quote(a) for a in ["bash", f"/tmp/scripts/{name}", *args])
        return self.sh(cmd, **kw)

    def passwd(self, name: str) -> list[str] | None:
        for line in self.p("/etc/passwd").read_text().splitlines():
            if line.split(":")[0] == name:
                return line.split(":")
        return None

    def group(self, key: str) -> list[str] | None:
        for line in self.p("/etc/group").read_text().splitlines():
            f = line.split(":")
            if f[0] == key or f[2] == key:
                return f
        return None


@pytest.fixture(scope="session")
def rootfs_base(tmp_path_factory):
    if not IS_ROOT:
        pytest.skip("rootfs tests need root (chroot, mounts, useradd)")
    _wait_for_cache()
    dest = tmp_path_factory.mktemp("rootfs") / "base"
    p = subprocess.run(
        ["bash", str(REPO / "lab/debian-rootfs.sh"), str(dest)], capture_output=True, text=True, timeout=1800
    )
    if p.returncode != 0:
        pytest.fail(f"could not make a Debian 12 tree: {p.stderr[-2000:]}")
    yield dest
    shutil.rmtree(dest, ignore_errors=True)  # ~280 MB; pytest would keep it around


@pytest.fixture
def rootfs(rootfs_base, tmp_path):
    """A fresh Debian 12 tree per test, with scripts/ at /tmp/scripts: an overlay on the
    session's tree (instant; nothing shared is written), or a full copy where overlayfs is missing."""
    dest = tmp_path / "root"
    dest.mkdir()
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    opts = f"lowerdir={rootfs_base},upperdir={upper},workdir={work}"
    mounted = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(dest)], capture_output=True).returncode == 0
    if not mounted:
        dest.rmdir()
        subprocess.run(["cp", "-a", str(rootfs_base), str(dest)], check=True)
    shutil.copytree(SCRIPTS, dest / "tmp/scripts")
    try:
        yield Rootfs(dest)
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(dest)], check=False)
        shutil.rmtree(tmp_path, ignore_errors=True)


# ---------------------------------------------------------------------------
# Fake device trees (real device nodes made with mknod, under a temp DEV_ROOT)


class FakeHw:
    def __init__(self, root: Path):
        self.dev = root / "dev"
        self.sys = root / "sys"
        self.dev.mkdir()
        self.sys.mkdir()

    @property
    def env(self) -> dict:
        return {"DEV_ROOT": str(self.dev), "SYSFS_ROOT": str(self.sys)}

    def char(self, rel: str, major: int, minor: int) -> Path:
        p = self.dev / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        os.mknod(p, 0o660 | 0o020000, os.makedev(major, minor))
        return p

    def block(self, rel: str, major: int, minor: int) -> Path:
        p = self.dev / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        os.mknod(p, 0o660 | 0o060000, os.makedev(major, minor))
        return p

    def scsi_generic(self, name: str, scsi_type: int, block: str | None = None) -> None:
        d = self.sys / "class/scsi_generic" / name / "device"
        d.mkdir(parents=True)
        (d / "type").write_text(f"{scsi_type}\n")
        if block:
            (d / "block" / block).mkdir(parents=True)

    def gpu(self, card: int, render: int) -> None:
        self.char(f"dri/card{card}", 226, card)
        self.char(f"dri/renderD{render}", 226, render)

    def optical(self, sr: int, sg: int) -> None:
        self.block(f"sr{sr}", 11, sr)
        self.char(f"sg{sg}", 21, sg)
        self.scsi_generic(f"sg{sg}", 5, f"sr{sr}")


@pytest.fixture
def hw(tmp_path) -> FakeHw:
    if not IS_ROOT:
        pytest.skip("mknod needs root")
    return FakeHw(tmp_path)
