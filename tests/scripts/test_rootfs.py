"""host-setup.sh, host-check-pool.sh, ct-media-user.sh and the ripper's non-build steps
inside a real Debian 12 root filesystem (chroot in a private mount namespace)."""

from __future__ import annotations

import hashlib
import json
import os
import stat

import pytest

from .conftest import fake_findmnt, run

pytestmark = pytest.mark.rootfs

SETUP = [
    "--user", "media", "--uid", "1000", "--gid", "1000",
    "--groups", "video:44,render:104,cdrom:24",
    "--pool", "/mnt/storage", "--dirs", "staging,movies,tv",
]  # fmt: skip


def setup_pool(rootfs):
    rootfs.p("/mnt/storage").mkdir(parents=True, exist_ok=True)


def members(rootfs, gid: str) -> list[str]:
    g = rootfs.group(gid)
    assert g, f"no group {gid}"
    return [m for m in g[3].split(",") if m]


# ---------------------------------------------------------------------------
# host-setup.sh


def test_host_setup_fresh_then_idempotent(rootfs):
    setup_pool(rootfs)
    r = rootfs.script("host-setup.sh", *SETUP)
    assert r.rc == 0, r.err
    j = r.json
    assert j["user"] == "media" and j["uid"] == 1000 and j["gid"] == 1000
    assert "group media (1000) created" in j["changed"]
    assert "user media (1000) created" in j["changed"]
    assert j["groups"] == [
        {"name": "video", "gid": 44, "group": "video"},
        {"name": "render", "gid": 104, "group": "render"},  # minbase has no render: created by number
        {"name": "cdrom", "gid": 24, "group": "cdrom"},
    ]
    assert j["dirs"] == ["/mnt/storage/staging", "/mnt/storage/movies", "/mnt/storage/tv"]
    assert rootfs.passwd("media")[2:4] == ["1000", "1000"]
    for gid in ("44", "104", "24"):
        assert "media" in members(rootfs, gid)
    for d in ("staging", "movies", "tv"):
        st = os.stat(rootfs.p(f"/mnt/storage/{d}"))
        assert (st.st_uid, st.st_gid) == (1000, 1000)
        assert stat.S_IMODE(st.st_mode) == 0o2775

    again = rootfs.script("host-setup.sh", *SETUP)
    assert again.rc == 0, again.err
    assert again.json["changed"] == []
    assert "nothing to change" in again.err


def test_host_setup_fixes_only_what_is_wrong_and_never_touches_media(rootfs):
    setup_pool(rootfs)
    pool = rootfs.p("/mnt/storage")
    movies = pool / "movies"
    movies.mkdir(mode=0o700)
    os.chown(movies, 0, 0)
    (pool / "staging").mkdir()
    os.chown(pool / "staging", 1000, 1000)
    os.chmod(pool / "staging", 0o2775)
    film = movies / "Film (2020).mkv"
    film.write_bytes(b"matroska" * 1000)
    os.chown(film, 1234, 1234)
    os.chmod(film, 0o640)
    other = pool / "photos/2020/img.jpg"
    other.parent.mkdir(parents=True)
    other.write_bytes(b"jpeg")
    os.chown(other, 1500, 1500)
    os.chmod(other, 0o600)
    before = {p: (os.stat(p).st_uid, os.stat(p).st_gid, os.stat(p).st_mode, os.stat(p).st_mtime_ns,
                  hashlib.sha256(p.read_bytes()).hexdigest()) for p in (film, other)}  # fmt: skip
    photos = os.stat(pool / "photos")

    r = rootfs.script("host-setup.sh", *SETUP)
    assert r.rc == 0, r.err
    dir_changes = [c for c in r.json["changed"] if c.startswith("dir ")]
    assert sorted(dir_changes) == sorted([
        "dir /mnt/storage/movies owner set to media:media (1000:1000)",
        "dir /mnt/storage/movies mode set to 2775",
        "dir /mnt/storage/tv created",
        "dir /mnt/storage/tv owner set to media:media (1000:1000)",
        "dir /mnt/storage/tv mode set to 2775",
    ])  # fmt: skip  (staging was already right)
    for p, b in before.items():
        st = os.stat(p)
        assert (st.st_uid, st.st_gid, st.st_mode, st.st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest()) == b
    st = os.stat(pool / "photos")
    assert (st.st_uid, st.st_gid, st.st_mode) == (photos.st_uid, photos.st_gid, photos.st_mode)


def test_uid_held_by_another_user_is_a_clear_error_before_any_change(rootfs):
    setup_pool(rootfs)
    assert rootfs.sh("groupadd -g 1000 alice && useradd -u 1000 -g 1000 alice").rc == 0
    passwd, group = rootfs.p("/etc/passwd").read_text(), rootfs.p("/etc/group").read_text()
    r = rootfs.script("host-setup.sh", *SETUP[:4], "--gid", "1001", *SETUP[6:])
    assert r.rc == 1
    assert "uid 1000 is already used by user 'alice'" in r.err
    assert "`pulumi config set --path homelab-media:media.uid 1001`" in r.err  # the next free uid
    assert "`pulumi config set --path homelab-media:media.user alice`" in r.err
    assert r.out == ""
    assert rootfs.p("/etc/passwd").read_text() == passwd
    assert rootfs.p("/etc/group").read_text() == group
    assert not rootfs.p("/mnt/storage/staging").exists()


def test_gid_held_by_another_group_is_a_clear_error(rootfs):
    setup_pool(rootfs)
    assert rootfs.sh("groupadd -g 1000 family").rc == 0
    r = rootfs.script("host-setup.sh", *SETUP)
    assert r.rc == 1
    assert "gid 1000 is already used by group 'family'" in r.err
    assert "`pulumi config set --path homelab-media:media.gid 1001`" in r.err
    assert rootfs.passwd("media") is None


def test_existing_media_user_with_other_uid_is_refused(rootfs):
    setup_pool(rootfs)
    assert rootfs.sh("groupadd -g 1000 media && useradd -u 1005 -g 1000 media").rc == 0
    r = rootfs.script("host-setup.sh", *SETUP)
    assert r.rc == 1
    assert "user 'media' already exists with uid 1005" in r.err
    assert "`pulumi config set --path homelab-media:media.uid 1005`" in r.err


def test_existing_media_group_with_other_gid_names_the_stack_key(rootfs):
    setup_pool(rootfs)
    assert rootfs.sh("groupadd -g 1007 media").rc == 0
    r = rootfs.script("host-setup.sh", *SETUP)
    assert r.rc == 1
    assert "group 'media' already exists with gid 1007, not 1000 (homelab-media:media.gid)" in r.err
    assert "`pulumi config set --path homelab-media:media.gid 1007`" in r.err


# ---------------------------------------------------------------------------
# host-check-pool.sh: a plain directory vs a real mount point


def test_pool_plain_directory_is_refused(rootfs):
    setup_pool(rootfs)
    r = rootfs.script("host-check-pool.sh", "--pool", "/mnt/storage")
    assert r.rc == 1
    assert "not a mount point" in r.err and "fstab" in r.err
    assert r.json["mounted"] is False


def test_pool_plain_directory_warns_with_no_require_mount(rootfs):
    setup_pool(rootfs)
    r = rootfs.script("host-check-pool.sh", "--pool", "/mnt/storage", "--no-require-mount")
    assert r.rc == 0, r.err
    assert "not a mount point" in r.err
    assert r.json["ok"] is False


def test_pool_bind_mount_is_accepted(rootfs):
    setup_pool(rootfs)
    r = rootfs.script("host-check-pool.sh", "--pool", "/mnt/storage/", binds=("/mnt/storage",))
    assert r.rc == 0, r.err
    j = r.json
    assert j["pool"] == "/mnt/storage" and j["mounted"] is True and j["fstype"]
    assert j["allow_other"] is None  # not a FUSE mount


def test_mergerfs_without_allow_other_is_refused(tmp_path):
    env = fake_findmnt(tmp_path / "fakebin", tmp_path, "fuse.mergerfs rw,relatime,user_id=0,group_id=0")
    r = run("host-check-pool.sh", "--pool", str(tmp_path), env=env)
    assert r.rc == 1
    assert "without allow_other" in r.err and "allow_other" in r.err
    assert r.json == {
        "pool": str(tmp_path), "mounted": True, "fstype": "fuse.mergerfs", "allow_other": False,
        "ok": False, "problems": r.json["problems"],
    }  # fmt: skip


def test_mergerfs_with_allow_other_is_accepted(tmp_path):
    env = fake_findmnt(tmp_path / "fakebin", tmp_path, "fuse.mergerfs rw,relatime,user_id=0,group_id=0,default_permissions,allow_other")
    r = run("host-check-pool.sh", "--pool", str(tmp_path), env=env)
    assert r.rc == 0, r.err
    assert r.json["allow_other"] is True and r.json["ok"] is True


# ---------------------------------------------------------------------------
# ct-media-user.sh: the container's groups may have other numbers than the node's


CT_USER = ["--user", "media", "--uid", "1000", "--gid", "1000"]


def test_ct_media_user_fresh_then_idempotent(rootfs):
    r = rootfs.script("ct-media-user.sh", *CT_USER, "--groups", "video:44,render:104")
    assert r.rc == 0, r.err
    assert r.json["groups"] == [
        {"name": "video", "gid": 44, "group": "video"},
        {"name": "render", "gid": 104, "group": "render"},
    ]
    again = rootfs.script("ct-media-user.sh", *CT_USER, "--groups", "video:44,render:104")
    assert again.json["changed"] == []
    assert rootfs.sh("id -G media").out.split() == ["1000", "44", "104"]


def test_ct_render_with_another_number_gets_a_host_group(rootfs):
    assert rootfs.sh("groupadd -g 992 render").rc == 0  # Debian 13 style
    r = rootfs.script("ct-media-user.sh", *CT_USER, "--groups", "video:44,render:104")
    assert r.rc == 0, r.err
    assert {"name": "render", "gid": 104, "group": "render-host"} in r.json["groups"]
    assert "group render-host (104) created for the node's render group" in r.json["changed"]
    assert rootfs.group("render")[2] == "992"  # the container's own group is left alone
    assert "media" in members(rootfs, "104")
    assert rootfs.script("ct-media-user.sh", *CT_USER, "--groups", "video:44,render:104").json["changed"] == []


def test_ct_node_gid_held_by_another_name_is_used_and_reported(rootfs):
    assert rootfs.sh("groupadd -g 104 _ssh").rc == 0  # Ubuntu 22.04 style
    r = rootfs.script("ct-media-user.sh", *CT_USER, "--groups", "render:104")
    assert r.rc == 0, r.err
    assert r.json["groups"] == [{"name": "render", "gid": 104, "group": "_ssh"}]
    assert "media added to _ssh (104)" in r.json["changed"]
    assert "gid 104 is group '_ssh'" in r.err
    assert rootfs.group("render") is None


def test_ct_device_group_conflict_names_the_host_groups_key(rootfs):
    assert rootfs.sh("groupadd -g 992 render && groupadd -g 993 render-host").rc == 0
    r = rootfs.script("ct-media-user.sh", *CT_USER, "--groups", "render:104")
    assert r.rc == 1
    assert "neither is 104, the node's render number (homelab-media:hostGroups.render)" in r.err
    assert "groupmod -g 104 render-host" in r.err
    assert "`pulumi config set --path homelab-media:hostGroups.render GID`" in r.err


def test_ct_media_user_bad_groups_spec(rootfs):
    r = rootfs.script("ct-media-user.sh", *CT_USER, "--groups", "video=44")
    assert r.rc == 1 and "NAME:GID" in r.err


# ---------------------------------------------------------------------------
# ct-bootstrap-ripper.sh without the (network-bound) MakeMKV build

RIPPER = ["--user", "media", "--cdrom-gid", "24", "--staging", "/mnt/storage/staging"]
KEY = "T-Fake0Key1For2Tests3Only_@-xyz"


def test_ripper_skip_makemkv_writes_settings_and_hides_the_key(rootfs):
    r = rootfs.script("ct-bootstrap-ripper.sh", *RIPPER, "--skip-makemkv", "--makemkv-key-stdin", input=KEY + "\n")
    assert r.rc == 0, r.err
    assert KEY not in r.out and KEY not in r.err
    j = r.json
    assert j["makemkv"]["state"] == "skipped"
    assert j["settings"] == {"path": "/home/media/.MakeMKV/settings.conf", "changed": True, "key": "set"}
    assert {"name": "cdrom", "gid": 24, "group": "cdrom"} in j["user"]["groups"]
    cfg = rootfs.p("/home/media/.MakeMKV/settings.conf")
    st = os.stat(cfg)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1000, 0o600)
    assert stat.S_IMODE(os.stat(cfg.parent).st_mode) == 0o700
    assert cfg.read_text() == f'app_DestinationDir = "/mnt/storage/staging"\napp_Key = "{KEY}"\n'

    # keeps MakeMKV's own settings; a re-run changes nothing
    cfg.write_text("app_ExpertMode = \"1\"\n" + cfg.read_text())
    again = rootfs.script("ct-bootstrap-ripper.sh", *RIPPER, "--skip-makemkv", "--makemkv-key-stdin", input=KEY + "\n")
    assert again.rc == 0, again.err
    assert again.json["changed"] is False and again.json["settings"]["key"] == "unchanged"
    assert cfg.read_text().startswith('app_ExpertMode = "1"\n')


def test_ripper_refuses_an_unpinned_version_before_changing_anything(rootfs):
    r = rootfs.script("ct-bootstrap-ripper.sh", *RIPPER, "--makemkv-version", "1.17.0")
    assert r.rc == 1
    assert "no pinned sha256" in r.err and "1.18.4" in r.err
    assert rootfs.passwd("media") is None


def test_ripper_refuses_a_tarball_with_the_wrong_checksum(rootfs):
    mirror = rootfs.p("/srv/makemkv")
    mirror.mkdir(parents=True)
    for kind in ("oss", "bin"):
        (mirror / f"makemkv-{kind}-1.18.4.tar.gz").write_bytes(b"not the real tarball")
    r = rootfs.script("ct-bootstrap-ripper.sh", *RIPPER, "--makemkv-version", "1.18.4", "--makemkv-url", "/srv/makemkv")
    assert r.rc == 1
    assert "refusing to build" in r.err and "8590063648d42ec2" in r.err
    assert not rootfs.p("/usr/local/bin/makemkvcon").exists()


def test_ripper_falls_back_to_the_old_release_path_and_still_checks_the_sums(rootfs):
    """Only BASE/old/ has the tarballs (a newer release is out): they are found there, and a wrong
    sum is still refused; with neither path the message names both."""
    old = rootfs.p("/srv/makemkv/old")
    old.mkdir(parents=True)
    for kind in ("oss", "bin"):
        (old / f"makemkv-{kind}-1.18.4.tar.gz").write_bytes(b"not the real tarball")
    r = rootfs.script("ct-bootstrap-ripper.sh", *RIPPER, "--makemkv-version", "1.18.4", "--makemkv-url", "/srv/makemkv")
    assert r.rc == 1
    assert "got /srv/makemkv/old/makemkv-oss-1.18.4.tar.gz" in r.err
    assert "refusing to build" in r.err and "8590063648d42ec2" in r.err
    r = rootfs.script("ct-bootstrap-ripper.sh", *RIPPER, "--makemkv-version", "1.18.4", "--makemkv-url", "/srv/nothing")
    assert r.rc == 1
    assert "/srv/nothing/makemkv-oss-1.18.4.tar.gz nor from /srv/nothing/old/makemkv-oss-1.18.4.tar.gz" in r.err
    assert "makemkv.baseUrl" in r.err
    assert not rootfs.p("/usr/local/bin/makemkvcon").exists()


def test_pins_file_is_well_formed():
    from .conftest import SCRIPTS

    rows = [x.split() for x in (SCRIPTS / "makemkv-versions.txt").read_text().splitlines() if x and x[0] != "#"]
    assert rows, "no pins"
    versions = {}
    for version, name, digest in rows:
        assert name in (f"makemkv-oss-{version}.tar.gz", f"makemkv-bin-{version}.tar.gz")
        assert len(digest) == 64 and int(digest, 16) >= 0
        versions.setdefault(version, set()).add(name.split("-")[1])
    assert all(kinds == {"oss", "bin"} for kinds in versions.values())
    assert json.dumps(sorted(versions))  # e.g. ["1.18.1", "1.18.3", "1.18.4"]


def test_stacked_mounts_report_the_top_one(tmp_path):
    """Two mounts on the pool's path: the visible (last, top) one is checked, not the one under it."""
    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    f = bindir / "findmnt"
    f.write_text("#!/bin/sh\nprintf '%s\\n' 'ext4 rw,relatime' 'fuse.mergerfs rw,relatime,user_id=0,group_id=0'\n")
    f.chmod(0o755)
    r = run("host-check-pool.sh", "--pool", str(tmp_path), env={"PATH": f"{bindir}:{os.environ['PATH']}"})
    assert r.rc == 1
    assert r.json["fstype"] == "fuse.mergerfs" and r.json["allow_other"] is False
    assert "without allow_other" in r.err


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts need root")
def test_stacked_real_mounts_report_the_top_one(tmp_path):
    """A tmpfs mounted over a bind mount of the same directory: the tmpfs is what a container would see."""
    import subprocess

    from .conftest import SCRIPTS

    pool = tmp_path / "pool"
    pool.mkdir()
    p = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         'mount --bind "$P" "$P" && mount -t tmpfs tmpfs "$P" && exec bash "$S" --pool "$P"'],
        env={**os.environ, "P": str(pool), "S": str(SCRIPTS / "host-check-pool.sh")},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    j = json.loads(p.stdout)
    assert j["mounted"] is True and j["fstype"] == "tmpfs"
