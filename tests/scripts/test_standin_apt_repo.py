"""The stand-in apt repository (tests/standins/apt_repo.py): apt in a real Debian 12 tree trusts it
through a signed-by key, installs from it, and asks for nothing a real repository does not serve."""

from __future__ import annotations

import gzip
import hashlib
import subprocess

from tests.standins.apt_repo import AptRepo, Deb, apt_repo_factory, throwaway_key  # noqa: F401 (fixture)

from .conftest import needs_root

HELLO = Deb("hello-standin", "1.2-1", {"/usr/bin/hello-standin": "#!/bin/sh\necho stand-in hello\n",
                                       "/etc/hello-standin.conf": "greeting = hi\n"},
            scripts={"postinst": "#!/bin/sh\nset -e\ntouch /var/lib/hello-standin.configured\n"})

# apt with ONLY the stand-in as a source (the tree's Debian sources are left out: offline, fast)
ONLY = "-o Dir::Etc::sourcelist=/etc/apt/standin.list -o Dir::Etc::sourceparts=-"


def test_release_lists_indices_with_their_hashes(apt_repo_factory):
    repo = apt_repo_factory([HELLO])
    release = repo.files["dists/stable/Release"].decode()
    sha = release.split("SHA256:\n", 1)[1]
    listed = {line.split()[2]: (line.split()[0], int(line.split()[1])) for line in sha.splitlines() if line.startswith(" ")}
    for rel, (digest, size) in listed.items():
        data = repo.files[f"dists/stable/{rel}"]
        assert (hashlib.sha256(data).hexdigest(), len(data)) == (digest, size)
    assert b"Package: hello-standin" in gzip.decompress(repo.files["dists/stable/main/binary-amd64/Packages.gz"])
    assert "Acquire-By-Hash" not in release  # so apt never asks for by-hash/ paths


def test_signatures_verify_with_the_served_key(apt_repo_factory, tmp_path):
    repo = apt_repo_factory([HELLO])
    (tmp_path / "k.asc").write_bytes(repo.served_key)
    subprocess.run(["gpg", "--batch", "--dearmor", "-o", str(tmp_path / "k.gpg"), str(tmp_path / "k.asc")], check=True)
    (tmp_path / "InRelease").write_bytes(repo.files["dists/stable/InRelease"])
    p = subprocess.run(["gpgv", "--keyring", str(tmp_path / "k.gpg"), str(tmp_path / "InRelease")], capture_output=True, text=True)
    assert p.returncode == 0 and repo.fingerprint in p.stderr.replace(" ", ""), p.stderr


@needs_root
def test_apt_installs_from_it_in_debian_12(rootfs, apt_repo_factory):
    repo = apt_repo_factory([HELLO])
    rootfs.p("/etc/apt/keyrings").mkdir(parents=True, exist_ok=True)
    rootfs.p("/etc/apt/keyrings/standin.asc").write_bytes(repo.served_key)
    rootfs.p("/etc/apt/standin.list").write_text(repo.sources_line("/etc/apt/keyrings/standin.asc") + "\n")
    r = rootfs.sh(f"apt-get {ONLY} update && apt-get {ONLY} install -y hello-standin && hello-standin "
                  "&& test -f /var/lib/hello-standin.configured && dpkg-query -W -f='${Version}' hello-standin")
    assert r.rc == 0, r.err + r.out
    assert "stand-in hello" in r.out and r.out.endswith("1.2-1")
    # what apt 2.6 asks of a signed repository whose Release lists no translations (seen here):
    assert repo.fetched() == ["dists/stable/InRelease", "dists/stable/main/binary-amd64/Packages.xz",
                              "pool/main/h/hello-standin/hello-standin_1.2-1_amd64.deb"]
    assert repo.unknown == [], repo.unknown


@needs_root
def test_apt_refuses_it_without_its_key(rootfs, apt_repo_factory):
    repo = apt_repo_factory([HELLO])
    _, other = throwaway_key()
    rootfs.p("/etc/apt/keyrings").mkdir(parents=True, exist_ok=True)
    rootfs.p("/etc/apt/keyrings/standin.asc").write_bytes(other)
    rootfs.p("/etc/apt/standin.list").write_text(repo.sources_line("/etc/apt/keyrings/standin.asc") + "\n")
    r = rootfs.sh(f"apt-get {ONLY} update")
    assert "NO_PUBKEY" in r.err + r.out or "not signed" in r.err + r.out, r.err + r.out
    assert repo.fingerprint[-16:] in r.err + r.out
    assert repo.unknown == [], repo.unknown
