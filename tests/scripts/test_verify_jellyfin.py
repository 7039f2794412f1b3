"""verify-jellyfin.sh in a real Debian 12 tree against a stand-in of Jellyfin's HTTP API (on
127.0.0.1; the chroot shares the network): the server's version, the libraries (with the API
key), a write to a read-only /media/movies refused, the render node's access for the jellyfin
user, and what it says when something is wrong. The hardware encode itself is only proven on a
real GPU (the stand-in ffmpeg fails, and the script must say so)."""

from __future__ import annotations

import json
import shlex
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from .conftest import needs_root

KEY = "0123456789abcdef0123456789abcdef"
FOLDERS = [{"Name": "Movies", "Locations": ["/media/movies"], "CollectionType": "movies"},
           {"Name": "Shows", "Locations": ["/media/tv"], "CollectionType": "tvshows"}]


@pytest.fixture
def api():
    """A stand-in Jellyfin API: /System/Info/Public without auth, /Library/VirtualFolders with the key."""
    seen: list[tuple[str, str | None]] = []

    class H(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            auth = self.headers.get("Authorization")
            seen.append((self.path, auth))
            if self.path == "/System/Info/Public":
                body = {"Version": "10.10.7", "ServerName": "stand-in", "Id": "x"}
            elif self.path == "/Library/VirtualFolders" and auth == f'MediaBrowser Token="{KEY}"':
                body = FOLDERS
            else:
                self.send_error(401 if self.path == "/Library/VirtualFolders" else 404)
                return
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1], seen
    srv.shutdown()
    srv.server_close()


def prepare(rootfs, *, in_render: bool = True, node: bool = False):
    setup = ["groupadd --system -g 993 render", "useradd --system --no-create-home jellyfin",
             "mkdir -p /media/movies /media/tv /etc/homelab-media",
             f"printf '%s\\n' {KEY} > /etc/homelab-media/jellyfin-api-key", "chmod 600 /etc/homelab-media/jellyfin-api-key"]
    if in_render:
        setup.append("usermod -aG render jellyfin")
    if node:
        setup += ["mkdir -p /dev/dri", "rm -f /dev/dri/renderD128", "mknod -m 0660 /dev/dri/renderD128 c 226 128",
                  "chgrp render /dev/dri/renderD128",
                  "mkdir -p /usr/lib/jellyfin-ffmpeg",
                  "printf '#!/bin/sh\\necho stand-in: no GPU here >&2\\nexit 1\\n' > /usr/lib/jellyfin-ffmpeg/ffmpeg",
                  "chmod 755 /usr/lib/jellyfin-ffmpeg/ffmpeg"]
    r = rootfs.sh(" && ".join(setup))
    assert r.rc == 0, r.err


def verify(rootfs, port: int, *args: str, read_only: bool = True):
    ro = "mount --bind /media/movies /media/movies && mount -o remount,bind,ro /media/movies && " if read_only else ""
    cmd = ro + " ".join(shlex.quote(a) for a in ["bash", "/tmp/scripts/verify-jellyfin.sh", "--port", str(port), *args])
    return rootfs.sh(cmd)


@needs_root
def test_everything_proven_without_a_gpu(rootfs, api):
    port, seen = api
    prepare(rootfs)
    r = verify(rootfs, port, "--url-host", "jellyfin", "--hwaccel", "none")
    assert r.rc == 0, r.err
    doc = r.json
    assert doc["ok"] is True, doc
    assert doc["version"] == "10.10.7" and doc["url"] == f"http://jellyfin:{port}"
    assert doc["movies_library"] and doc["tv_library"]
    assert {"name": "Movies", "paths": ["/media/movies"]} in doc["libraries"]
    assert doc["read_only"] is True and "Read-only file system" in doc["read_only_detail"]
    assert doc["encode"].startswith("skipped")
    assert ("/Library/VirtualFolders", f'MediaBrowser Token="{KEY}"') in seen
    # the key never reaches the command line or the JSON
    assert KEY not in r.out


@needs_root
def test_a_writable_media_mount_is_not_ok_and_strict_fails(rootfs, api):
    port, _ = api
    prepare(rootfs)
    r = verify(rootfs, port, "--hwaccel", "none", "--strict", read_only=False)
    assert r.rc == 1
    doc = r.json
    assert doc["ok"] is False and doc["read_only"] is False
    assert "a write to /media/movies succeeded: the mount is not read-only" in doc["reason"]
    assert not rootfs.p("/media/movies/.homelab-media-ro-probe").exists()


@needs_root
def test_the_render_node_must_be_open_to_the_jellyfin_user(rootfs, api):
    port, _ = api
    prepare(rootfs, in_render=False, node=True)
    doc = verify(rootfs, port, "--render-node", "/dev/dri/renderD128", "--hwaccel", "vaapi").json
    assert doc["ok"] is False and doc["render_access"] is False
    assert "jellyfin cannot open /dev/dri/renderD128" in doc["reason"]


@needs_root
def test_an_open_render_node_still_needs_the_hardware_encode(rootfs, api):
    port, _ = api
    prepare(rootfs, in_render=True, node=True)
    doc = verify(rootfs, port, "--render-node", "/dev/dri/renderD128", "--hwaccel", "vaapi").json
    assert doc["render_access"] is True
    assert doc["ok"] is False and doc["encode"].startswith("failed:")
    assert "the vaapi test encode failed: stand-in: no GPU here" in doc["reason"]


@needs_root
def test_no_server_and_no_key_are_named(rootfs):
    prepare(rootfs)
    rootfs.sh("rm /etc/homelab-media/jellyfin-api-key")
    doc = verify(rootfs, 9, "--hwaccel", "none").json
    assert doc["ok"] is False and doc["version"] is None
    assert "no answer from Jellyfin on 127.0.0.1:9" in doc["reason"]
    assert "no API key at /etc/homelab-media/jellyfin-api-key" in doc["reason"]
