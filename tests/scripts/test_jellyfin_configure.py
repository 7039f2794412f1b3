"""ct-jellyfin-configure.sh with a stand-in `media_pipeline.jellyfin` CLI in the tarball (the real
one is media_pipeline/jellyfin.py, tested with its own API stand-in): the password comes on stdin
and reaches the CLI only as a 0600 file, never an argument; the CLI gets the libraries, the
hardware acceleration and the key file; the key is added to the JSON (the program keeps that
stdout secret); the temp directory is gone afterwards."""

from __future__ import annotations

import io
import json
import os
import socket
import tarfile
import threading

import pytest

from .conftest import IS_ROOT, run

PASSWORD = "jf-Pa55 word;#"
KEY = "fedcba9876543210fedcba9876543210"

STANDIN = '''\
# stand-in for media_pipeline/jellyfin.py's configure (tests/scripts/test_jellyfin_configure.py)
import json, os, stat, sys
args = sys.argv[1:]
opt = {args[i]: args[i + 1] for i in range(1, len(args) - 1, 2) if args[i].startswith("--")}
pw_file = opt["--password-file"]
record = {"argv": sys.argv, "password": open(pw_file).read(), "pw_mode": oct(stat.S_IMODE(os.stat(pw_file).st_mode))}
with open(os.environ["RECORD"], "w") as f:
    json.dump(record, f)
with open(opt["--key-file"], "w") as f:
    f.write("%KEY%\\n")
print(json.dumps({"ok": True, "changed": ["wizard"], "apiKey": "written to " + opt["--key-file"]}))
'''.replace("%KEY%", KEY)


def tarball(path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in (("media_pipeline/__init__.py", ""), ("media_pipeline/jellyfin.py", STANDIN)):
            b = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(b)
            tar.addfile(info, io.BytesIO(b))
    path.write_bytes(buf.getvalue())
    return path


@pytest.fixture
def listener():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    stop = threading.Event()

    def accept():
        s.settimeout(0.2)
        while not stop.is_set():
            try:
                c, _ = s.accept()
                c.close()
            except OSError:
                pass

    threading.Thread(target=accept, daemon=True).start()
    yield s.getsockname()[1]
    stop.set()
    s.close()


@pytest.mark.skipif(not IS_ROOT, reason="the script runs as root in the container")
def test_password_on_stdin_only_and_the_key_in_the_secret_json(tmp_path, listener):
    tb = tarball(tmp_path / "media-pipeline.tar.gz")
    key_file = tmp_path / "etc/jellyfin-api-key"
    record = tmp_path / "record.json"
    r = run("ct-jellyfin-configure.sh", "--tarball", str(tb), "--port", str(listener), "--render-node",
            "/dev/dri/renderD128", "--hwaccel", "vaapi", "--key-file", str(key_file), "--password-stdin",
            input=PASSWORD + "\n", env={"RECORD": str(record)})
    assert r.rc == 0, r.err
    doc = r.json
    assert doc["apiKey"] == KEY and doc["ok"] is True
    rec = json.loads(record.read_text())
    assert rec["password"] == PASSWORD + "\n" and rec["pw_mode"] == "0o600"
    assert not any(PASSWORD in a for a in rec["argv"])
    argv = " ".join(rec["argv"][1:])
    assert (f"configure --url http://127.0.0.1:{listener} --admin-user admin --password-file ") in argv
    assert ("--hwaccel vaapi --movies /media/movies --tv /media/tv --key-file " + str(key_file) +
            " --wait 120 --render-node /dev/dri/renderD128") in argv
    assert oct(os.stat(key_file).st_mode & 0o777) == "0o600"
    pw_file = next(a for a in rec["argv"] if a.endswith("/password"))
    assert not os.path.exists(os.path.dirname(pw_file)), "the temp directory must be removed"
    assert PASSWORD not in r.err and KEY not in r.err


@pytest.mark.parametrize("args, stdin, needle", [
    (["--tarball", "/nonexistent", "--password-stdin"], "x\n", "--tarball FILE is required"),
    (["--tarball", "/etc/hostname"], "x\n", "--password-stdin is required"),
    (["--tarball", "/etc/hostname", "--password-stdin", "--hwaccel", "vaapi"], "x\n", "--hwaccel vaapi needs --render-node"),
    (["--bogus"], "", "unknown argument '--bogus'"),
])
def test_refusals(args, stdin, needle):
    r = run("ct-jellyfin-configure.sh", *args, input=stdin)
    assert r.rc == 1 and needle in r.err, r.err


@pytest.mark.skipif(not IS_ROOT, reason="the script runs as root in the container")
def test_an_empty_password_names_the_secret(tmp_path):
    r = run("ct-jellyfin-configure.sh", "--tarball", str(tarball(tmp_path / "t.tar.gz")), "--password-stdin", input="\n")
    assert r.rc == 1 and "pulumi config set --secret homelab-media:jellyfinAdminPassword" in r.err
