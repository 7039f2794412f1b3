"""ct-install-jellyfin.sh in a real Debian 12 tree against a stand-in of Jellyfin's apt repository
(tests/standins: a throwaway signing key, stand-in jellyfin-server/-web/-ffmpeg7 packages that
say they are not Jellyfin). apt in the chroot shares this machine's network, so it reaches the
stand-in on 127.0.0.1 and Debian's mirror for gpg, ca-certificates and python3.

What this proves: the key pinned by fingerprint (only that key written, signed-by it), the
deb822 source, apt's signature check against that key, the three packages, the render group
with the devN gid and the jellyfin user in it, idempotence, and that a wrong key writes
nothing. What only real Jellyfin proves (its server, libraries, hardware encode) is
verify-jellyfin.sh's, in a deployed container.
"""

from __future__ import annotations

import shlex
import subprocess

import pytest

from tests.standins.apt_repo import apt_repo_factory, throwaway_key  # noqa: F401 (fixture)
from tests.standins.jellyfin_deb import VERSION, jellyfin_standins

from .conftest import needs_root, run

JELLYFIN_FPR = "4918AABC486CA052358D778D49023CD01DE21A7B"  # Jellyfin's real key (the script's default)
RENDER_GID = 993
PACKAGES = ["jellyfin-server", "jellyfin-web", "jellyfin-ffmpeg7"]
KEYRING = "/etc/apt/keyrings/jellyfin.gpg"
SOURCES = "/etc/apt/sources.list.d/jellyfin.sources"


def install(rootfs, repo, *extra: str, fingerprint: str | None = None):
    args = ["--repo", repo.url, "--key-url", repo.key_url, "--fingerprint", fingerprint or repo.fingerprint, *extra]
    cmd = " ".join(shlex.quote(a) for a in ["bash", "/tmp/scripts/ct-install-jellyfin.sh", *args])
    return rootfs.sh(cmd, timeout=900)


@pytest.fixture
def repo(apt_repo_factory):
    return apt_repo_factory(jellyfin_standins(), suite="bookworm", component="main", key_path="/jellyfin_team.gpg.key")


def keyring_fingerprints(rootfs) -> list[str]:
    p = subprocess.run(["gpg", "--batch", "--show-keys", "--with-colons", str(rootfs.p(KEYRING))],
                       capture_output=True, text=True, check=True)
    out, after_pub = [], False
    for line in p.stdout.splitlines():
        f = line.split(":")
        if f[0] == "pub":
            after_pub = True
        elif f[0] == "fpr" and after_pub:
            out.append(f[9])
            after_pub = False
    return out


@needs_root
def test_the_pinned_key_installs_then_a_second_run_changes_nothing(rootfs, repo):
    r = install(rootfs, repo, "--render-gid", str(RENDER_GID))
    assert r.rc == 0, r.err[-3000:]
    doc = r.json
    assert doc["fingerprint"] == repo.fingerprint and doc["suite"] == "bookworm" and doc["repo"] == repo.url
    assert {p: doc["packages"][p] for p in PACKAGES} == {p: VERSION for p in PACKAGES}
    assert set(PACKAGES) <= set(doc["installed"])
    assert doc["service"] == "no systemd"
    # only the pinned key, as a binary keyring, and the source signed by it
    assert keyring_fingerprints(rootfs) == [repo.fingerprint]
    assert oct(rootfs.p(KEYRING).stat().st_mode & 0o777) == "0o644"
    assert rootfs.p(SOURCES).read_text() == (
        f"Types: deb\nURIs: {repo.url}\nSuites: bookworm\nComponents: main\nArchitectures: amd64\n"
        f"Signed-By: {KEYRING}\n"
    )
    # the render group has the devN gid; the jellyfin user is in it
    assert rootfs.group("render")[2] == str(RENDER_GID)
    assert "jellyfin" in rootfs.group("render")[3].split(",")
    assert doc["render_group"] == {"gid": RENDER_GID, "members": ["jellyfin"]}
    assert repo.fetched("pool/"), "nothing was downloaded from the stand-in"
    assert repo.unknown == []

    repo.clear_log()
    before = rootfs.p(KEYRING).stat().st_mtime_ns, rootfs.p(SOURCES).stat().st_mtime_ns
    r2 = install(rootfs, repo, "--render-gid", str(RENDER_GID))
    assert r2.rc == 0, r2.err[-3000:]
    assert r2.json["changed"] == [] and r2.json["installed"] == []
    assert (rootfs.p(KEYRING).stat().st_mtime_ns, rootfs.p(SOURCES).stat().st_mtime_ns) == before
    # the key is checked again (it is the pin's whole point), nothing else is fetched
    assert repo.fetched() == ["jellyfin_team.gpg.key"] and repo.unknown == []


@needs_root
def test_a_wrong_key_is_refused_and_nothing_is_written(rootfs, repo):
    fpr, other = throwaway_key()
    repo.serve_key(other)
    r = install(rootfs, repo, "--render-gid", str(RENDER_GID))
    assert r.rc == 1
    assert f"has fingerprint {fpr}, not the pinned {repo.fingerprint}: refused" in r.err
    assert "Nothing was written" in r.err
    assert not rootfs.p(KEYRING).exists() and not rootfs.p(SOURCES).exists()
    assert repo.fetched() == ["jellyfin_team.gpg.key"] and repo.unknown == []


@needs_root
def test_the_real_pin_refuses_the_stand_ins_key(rootfs, repo):
    """The default fingerprint is Jellyfin's: a repository signed by any other key is refused."""
    r = install(rootfs, repo, fingerprint=JELLYFIN_FPR)
    assert r.rc == 1 and f"not the pinned {JELLYFIN_FPR}" in r.err
    assert not rootfs.p(KEYRING).exists() and not rootfs.p(SOURCES).exists()
    assert repo.unknown == []


@needs_root
def test_a_render_group_with_another_gid_is_refused(rootfs, repo):
    assert rootfs.sh("groupadd --system -g 990 render").rc == 0
    r = install(rootfs, repo, "--render-gid", str(RENDER_GID))
    assert r.rc == 1
    assert "render group is gid 990, but the render node is passed through with gid=993" in r.err
    assert not rootfs.p(KEYRING).exists()
    assert repo.fetched() == []


@pytest.mark.parametrize("args, needle", [
    (["--fingerprint", "abc"], "--fingerprint must be the key's 40 hex digits"),
    (["--render-gid", "x"], "--render-gid must be a number"),
    (["--repo", "ftp://x"], "--repo must be an http(s) URL"),
    (["--bogus"], "unknown argument '--bogus'"),
])
def test_bad_arguments_are_named(args, needle):
    r = run("ct-install-jellyfin.sh", *args)
    assert r.rc != 0 and needle in r.err


def test_help_names_the_real_repository_and_pin():
    r = run("ct-install-jellyfin.sh", "--help")
    assert r.rc == 0
    assert "https://repo.jellyfin.org/debian" in r.out and JELLYFIN_FPR in r.out
    assert "https://repo.jellyfin.org/jellyfin_team.gpg.key" in r.out
    assert '"jellyfin-server jellyfin-web jellyfin-ffmpeg7"' in r.out
