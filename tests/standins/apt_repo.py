"""A stand-in signed apt repository, served over HTTP on 127.0.0.1, for installing third-party
packages (Grafana, Jellyfin...) in a real Debian tree when their repository cannot be reached.

What it is: a throwaway OpenPGP key (made with `gpg --batch` in a temporary GNUPGHOME, never
reused), .deb packages built with `dpkg-deb --build` from a description (`Deb`), and the
layout of Debian's repository format (https://wiki.debian.org/DebianRepository/Format):

    <key_path>                                      the armored public key (like https://apt.grafana.com/gpg.key)
    dists/<suite>/InRelease                         Release, clearsigned        ("Release files", "InRelease")
    dists/<suite>/Release, dists/<suite>/Release.gpg  Release + detached signature
    dists/<suite>/<component>/binary-<arch>/Packages{,.gz,.xz}   ("Binary package indices")
    pool/<component>/<l>/<name>/<name>_<version>_<arch>.deb     (Filename: of each stanza)

Release lists every index with its size and MD5Sum/SHA1/SHA256 ("Release files": MD5Sum,
SHA1, SHA256 fields; paths relative to dists/<suite>). It does not say `Acquire-By-Hash: yes`,
so apt never asks for by-hash/ paths, and it lists no i18n/Translation-* files, so apt has
no reason to ask for them (apt fetches only indices a signed Release lists). A real
repository without translations answers 404 for them: such a request is tolerated
(`TOLERATED`), not counted as unknown.

Every request is recorded (`requests`); a request for a path the repository does not serve
answers 404 and is also recorded in `unknown`, so a test can assert apt asked for nothing
beyond what a real repository serves.

Use:

    from tests.standins.apt_repo import AptRepo, Deb

    with AptRepo([Deb("hello", "1.0", {"/usr/bin/hello": "#!/bin/sh\\necho hi\\n"})],
                 suite="stable", component="main", key_path="/gpg.key") as repo:
        repo.url, repo.key_url, repo.fingerprint     # http://127.0.0.1:PORT, .../gpg.key, 40 hex
        ...                                          # apt in a chroot (shares the network) installs hello
        assert repo.unknown == []
        repo.fetched("pool/")                        # the requested paths starting with pool/

or the `apt_repo_factory` fixture (import it into the test module): `apt_repo_factory(debs, ...)`
starts one and stops it at the end of the test.
"""

from __future__ import annotations

import email.utils
import gzip
import hashlib
import io
import lzma
import os
import re
import shutil
import subprocess
import tempfile
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Mapping, Sequence

import pytest

# Paths a real repository may lack and apt may still ask for: they answer 404 without being unknown.
TOLERATED = (re.compile(r"^dists/[^/]+/[^/]+/i18n/Translation-[A-Za-z_]+(\.(gz|xz|bz2|lzma|zst))?$"),)

MAINTAINER = "Stand-in Repository <standin@example.invalid>"


# ---------------------------------------------------------------------------------------------
# The throwaway key


class Signer:
    """An OpenPGP key in its own temporary GNUPGHOME (short path: gpg-agent's socket must fit)."""

    def __init__(self, name: str = "Stand-in apt repository (throwaway test key)"):
        self.home = Path(tempfile.mkdtemp(prefix="standin-gpg-", dir="/tmp"))
        self.home.chmod(0o700)
        params = (
            "%no-protection\n"
            "Key-Type: eddsa\nKey-Curve: ed25519\nKey-Usage: sign\n"
            f"Name-Real: {name}\nName-Email: standin@example.invalid\n"
            "Expire-Date: 2d\n%commit\n"
        )
        self._gpg("--gen-key", input=params.encode())
        colons = self._gpg("--list-keys", "--with-colons").decode()
        fprs = _primary_fingerprints(colons)
        assert len(fprs) == 1, colons
        self.fingerprint = fprs[0]
        self.public_key = self._gpg("--armor", "--export", self.fingerprint)

    def _gpg(self, *args: str, input: bytes | None = None) -> bytes:
        p = subprocess.run(
            ["gpg", "--batch", "--quiet", "--no-tty", *args],
            input=input, capture_output=True, env={**os.environ, "GNUPGHOME": str(self.home)}, timeout=60,
        )
        if p.returncode != 0:
            raise RuntimeError(f"gpg {' '.join(args)} failed: {p.stderr.decode(errors='replace')}")
        return p.stdout

    def clearsign(self, data: bytes) -> bytes:
        return self._gpg("--local-user", self.fingerprint, "--digest-algo", "SHA512", "--clearsign", input=data)

    def detach_sign(self, data: bytes) -> bytes:
        return self._gpg("--local-user", self.fingerprint, "--digest-algo", "SHA512", "--armor", "--detach-sign",
                         input=data)

    def close(self) -> None:
        subprocess.run(["gpgconf", "--kill", "gpg-agent"], env={**os.environ, "GNUPGHOME": str(self.home)},
                       capture_output=True, check=False)
        shutil.rmtree(self.home, ignore_errors=True)


def _primary_fingerprints(colons: str) -> list[str]:
    """The fingerprints of the primary keys in `gpg --with-colons` output (the fpr after each pub)."""
    out, after_pub = [], False
    for line in colons.splitlines():
        f = line.split(":")
        if f[0] == "pub":
            after_pub = True
        elif f[0] == "fpr" and after_pub:
            out.append(f[9])
            after_pub = False
        elif f[0] in ("sub", "sec", "ssb"):
            after_pub = False
    return out


def throwaway_key(name: str = "Another throwaway test key") -> tuple[str, bytes]:
    """(fingerprint, armored public key) of a fresh key that signs nothing: a "wrong key" for tests."""
    s = Signer(name)
    try:
        return s.fingerprint, s.public_key
    finally:
        s.close()


# ---------------------------------------------------------------------------------------------
# Packages


@dataclass
class Deb:
    """A package to build. files: absolute path -> content (str/bytes) or (content, mode); the mode
    defaults to 0755 for content starting with "#!", else 0644. Files under /etc/ are conffiles.
    scripts: maintainer scripts by name (preinst, postinst, prerm, postrm), shell text."""

    name: str
    version: str
    files: Mapping[str, str | bytes | tuple[str | bytes, int]] = field(default_factory=dict)
    depends: Sequence[str] = ()
    scripts: Mapping[str, str] = field(default_factory=dict)
    arch: str = "amd64"
    description: str = "stand-in package for tests\n A package built by tests/standins/apt_repo.py."
    maintainer: str = MAINTAINER
    section: str = "misc"

    @property
    def filename(self) -> str:
        return f"{self.name}_{self.version.split(':')[-1]}_{self.arch}.deb"

    def build(self, workdir: Path) -> tuple[bytes, str]:
        """(the .deb, its control stanza without Filename/Size/hashes)."""
        root = workdir / f"{self.name}-{self.version}"
        if root.exists():
            shutil.rmtree(root)
        (root / "DEBIAN").mkdir(parents=True)
        size = 0
        conffiles = []
        for path, spec in self.files.items():
            content, mode = spec if isinstance(spec, tuple) else (spec, None)
            data = content.encode() if isinstance(content, str) else content
            if mode is None:
                mode = 0o755 if data.startswith(b"#!") else 0o644
            if not path.startswith("/"):
                raise ValueError(f"{self.name}: file paths must be absolute, got {path!r}")
            dest = root / path.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
            dest.chmod(mode)
            size += len(data)
            if path.startswith("/etc/"):
                conffiles.append(path)
        for d in root.rglob("*"):
            if d.is_dir():
                d.chmod(0o755)
        for name, text in self.scripts.items():
            if name not in ("preinst", "postinst", "prerm", "postrm"):
                raise ValueError(f"{self.name}: unknown maintainer script {name!r}")
            s = root / "DEBIAN" / name
            s.write_text(text)
            s.chmod(0o755)
        if conffiles:
            (root / "DEBIAN/conffiles").write_text("".join(f"{c}\n" for c in sorted(conffiles)))
        stanza = (
            f"Package: {self.name}\nVersion: {self.version}\nArchitecture: {self.arch}\n"
            f"Maintainer: {self.maintainer}\nInstalled-Size: {max(1, (size + 1023) // 1024)}\n"
            + (f"Depends: {', '.join(self.depends)}\n" if self.depends else "")
            + f"Section: {self.section}\nPriority: optional\nDescription: {self.description}\n"
        )
        (root / "DEBIAN/control").write_text(stanza)
        out = workdir / self.filename
        subprocess.run(["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(root), str(out)],
                       check=True, capture_output=True, timeout=120)
        return out.read_bytes(), stanza


# ---------------------------------------------------------------------------------------------
# The repository and its server


@dataclass
class Request:
    method: str
    path: str  # without the leading "/" and the query
    status: int
    user_agent: str


class AptRepo:
    """A signed repository with one suite and one component (like `deb URL stable main`)."""

    def __init__(self, debs: Sequence[Deb] = (), *, suite: str = "stable", component: str = "main",
                 arch: str = "amd64", key_path: str = "/gpg.key", origin: str = "Stand-in",
                 label: str = "Stand-in test repository", codename: str | None = None):
        self.suite, self.component, self.arch = suite, component, arch
        self.key_path = "/" + key_path.lstrip("/")
        self.origin, self.label, self.codename = origin, label, codename
        self.debs: list[Deb] = list(debs)
        self.workdir = Path(tempfile.mkdtemp(prefix="standin-apt-"))
        self.signer = Signer()
        self.fingerprint = self.signer.fingerprint
        self.served_key = self.signer.public_key
        self.files: dict[str, bytes] = {}
        self.requests: list[Request] = []
        self.unknown: list[Request] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.publish()

    # -- content

    def add(self, deb: Deb) -> None:
        """Add (or replace, by name and version) a package and re-publish."""
        self.debs = [d for d in self.debs if (d.name, d.version) != (deb.name, deb.version)] + [deb]
        self.publish()

    def serve_key(self, armored: bytes) -> None:
        """Serve another key at key_path (the repository stays signed with its own)."""
        self.served_key = armored
        self.publish()

    def publish(self) -> None:
        files: dict[str, bytes] = {}
        stanzas = []
        for deb in self.debs:
            data, stanza = deb.build(self.workdir)
            letter = deb.name[:4] if deb.name.startswith("lib") else deb.name[0]
            pool = f"pool/{self.component}/{letter}/{deb.name}/{deb.filename}"
            files[pool] = data
            stanzas.append(
                stanza.replace("Description:", f"Filename: {pool}\nSize: {len(data)}\n"
                               f"MD5sum: {hashlib.md5(data).hexdigest()}\n"
                               f"SHA256: {hashlib.sha256(data).hexdigest()}\nDescription:", 1)
            )
        packages = "\n".join(stanzas).encode()
        base = f"{self.component}/binary-{self.arch}"
        indices = {
            f"{base}/Packages": packages,
            f"{base}/Packages.gz": gzip.compress(packages, mtime=0),
            f"{base}/Packages.xz": lzma.compress(packages),
            f"{base}/Release": (f"Archive: {self.suite}\nOrigin: {self.origin}\nLabel: {self.label}\n"
                                f"Component: {self.component}\nArchitecture: {self.arch}\n").encode(),
        }
        date = email.utils.formatdate(usegmt=True)
        release = [
            f"Origin: {self.origin}", f"Label: {self.label}", f"Suite: {self.suite}",
            *([f"Codename: {self.codename}"] if self.codename else []),
            f"Date: {date}", f"Architectures: {self.arch}", f"Components: {self.component}",
            "Description: stand-in repository for tests (tests/standins/apt_repo.py), not a real vendor's",
        ]
        for field_name, algo in (("MD5Sum", hashlib.md5), ("SHA1", hashlib.sha1), ("SHA256", hashlib.sha256)):
            release.append(f"{field_name}:")
            for rel, data in sorted(indices.items()):
                release.append(f" {algo(data).hexdigest()} {len(data):>16} {rel}")
        release_text = ("\n".join(release) + "\n").encode()
        dists = f"dists/{self.suite}"
        for rel, data in indices.items():
            files[f"{dists}/{rel}"] = data
        files[f"{dists}/Release"] = release_text
        files[f"{dists}/Release.gpg"] = self.signer.detach_sign(release_text)
        files[f"{dists}/InRelease"] = self.signer.clearsign(release_text)
        files[self.key_path.lstrip("/")] = self.served_key
        with self._lock:
            self.files = files

    # -- serving

    @property
    def port(self) -> int:
        assert self._server, "not started"
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def key_url(self) -> str:
        return self.url + self.key_path

    def sources_line(self, keyring: str) -> str:
        return f"deb [signed-by={keyring}] {self.url} {self.suite} {self.component}"

    def fetched(self, prefix: str = "") -> list[str]:
        """The paths requested (in order, with repeats) that start with prefix."""
        with self._lock:
            return [r.path for r in self.requests if r.path.startswith(prefix)]

    def clear_log(self) -> None:
        with self._lock:
            self.requests.clear()
            self.unknown.clear()

    def _handle(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        # percent-decoded, as any web server does: apt asks for grafana_1.0%2bx_amd64.deb
        path = urllib.parse.unquote(h.path.split("?", 1)[0]).lstrip("/")
        with self._lock:
            data = self.files.get(path)
        req = Request(h.command, path, 200 if data is not None else 404, h.headers.get("User-Agent", ""))
        with self._lock:
            self.requests.append(req)
            if data is None and not any(t.match(path) for t in TOLERATED):
                self.unknown.append(req)
        if data is None:
            body = b"404 not found (stand-in apt repository)\n"
            h.send_response(404)
            h.send_header("Content-Type", "text/plain")
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            if not head:
                h.wfile.write(body)
            return
        h.send_response(200)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if not head:
            h.wfile.write(data)

    def start(self) -> "AptRepo":
        repo = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # apt pipelines requests on one connection

            def do_GET(self):  # noqa: N802
                repo._handle(self, head=False)

            def do_HEAD(self):  # noqa: N802
                repo._handle(self, head=True)

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="standin-apt", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self.signer.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "AptRepo":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@pytest.fixture
def apt_repo_factory():
    """apt_repo_factory(debs, **AptRepo kwargs) -> a started AptRepo, stopped after the test."""
    started: list[AptRepo] = []

    def make(debs: Sequence[Deb] = (), **kw) -> AptRepo:
        r = AptRepo(debs, **kw).start()
        started.append(r)
        return r

    yield make
    for r in started:
        r.stop()
