"""ct-install-grafana.sh in a real Debian 12 tree against a stand-in of Grafana's apt repository
(tests/standins: a throwaway signing key, a stand-in `grafana` package that says it is not
Grafana). apt in the chroot shares this machine's network, so it reaches the stand-in on
127.0.0.1 and Debian's mirror for gpg/curl.

What this proves: the key pinning, the apt source, apt's signature check against that key, the
install, the files written (modes, owners, content), idempotence, the password's path (stdin and
files only, never an argv: every execve in the chroot is traced) and the reset on a change. What
only a real Grafana proves is in docs/adr/0013-grafana-from-its-repository.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest

from components.grafana_render import DASHBOARDS_DIR, provisioning_files
from tests.standins.apt_repo import apt_repo_factory, throwaway_key  # noqa: F401 (fixture)
from tests.standins.grafana_deb import VERSION, grafana_standin

from .conftest import Result, needs_root, run

GRAFANA_FPR = "B53AE77BADB630A683046005963FA27710458545"
PASSWORD = "first-Pa55word#;"  # '#' and ';' start comments in grafana.ini unless triple-quoted
NEW_PASSWORD = "second-Pa55word"
PROV = "/tmp/grafana-prov"

def traced(rootfs, command: str, *, input: str = "", timeout: int = 900) -> tuple[Result, str]:
    """rootfs.sh(command) under `strace -f -e execve`: (result, the argv of every program run)."""
    log = rootfs.path.parent / "execve.log"
    inner = 'mount -t proc proc "$R/proc" && exec chroot "$R" /bin/bash -c "$CMD"'
    p = subprocess.run(
        ["strace", "-f", "-qq", "-s", "65535", "-e", "trace=execve", "-o", str(log),
         "unshare", "-m", "--propagation", "private", "sh", "-c", inner],
        input=input, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "R": str(rootfs.path), "CMD": command, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )
    return Result(p.returncode, p.stdout, p.stderr), log.read_text()


def install(rootfs, repo, *extra: str, password: str = PASSWORD, fingerprint: str | None = None):
    args = ["--repo", repo.url, "--key-url", repo.key_url, "--provisioning", PROV, "--admin-password-stdin",
            *(["--fingerprint", fingerprint] if fingerprint else ["--fingerprint", repo.fingerprint]), *extra]
    cmd = " ".join(shlex.quote(a) for a in ["bash", "/tmp/scripts/ct-install-grafana.sh", *args])
    return traced(rootfs, cmd, input=password + "\n")


def write_prov(rootfs, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = rootfs.p(f"{PROV}/{rel}")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


def stat(rootfs, path: str) -> tuple[str, str, str]:
    """(mode, owner, group) by name, as the tree sees them."""
    st = rootfs.p(path).stat()
    owner = next(f[0] for f in (rootfs.passwd(n) for n in ("root", "grafana")) if f and int(f[2]) == st.st_uid)
    group = rootfs.group(str(st.st_gid))[0]
    return oct(st.st_mode & 0o7777), owner, group


@pytest.fixture
def repo(apt_repo_factory):
    return apt_repo_factory([grafana_standin()], suite="stable", component="main", key_path="/gpg.key")


@needs_root
def test_pinned_key_installs_then_a_second_run_changes_nothing(rootfs, repo):
    files = provisioning_files("http://prometheus.lan:9090", http_addr="10.99.0.40", http_port=3000)
    write_prov(rootfs, files)

    r, execs = install(rootfs, repo)
    assert r.rc == 0, r.err
    out = r.json
    assert out["version"] == VERSION and out["fingerprint"] == repo.fingerprint
    assert out["changed"] is True and out["password_reset"] is False
    assert out["service"] == "no-systemd" and "systemd is not running here" in r.err
    assert rootfs.p("/usr/share/grafana/STANDIN").exists()  # the stand-in, installed by apt from the repo

    # the key, the source
    assert rootfs.p("/etc/apt/keyrings/grafana.asc").read_bytes() == repo.served_key
    assert stat(rootfs, "/etc/apt/keyrings/grafana.asc") == ("0o644", "root", "root")
    assert rootfs.p("/etc/apt/sources.list.d/grafana.list").read_text() == \
        f"deb [signed-by=/etc/apt/keyrings/grafana.asc] {repo.url} stable main\n"

    # grafana.ini: the rendered settings plus the password, triple-quoted, 0640 root:grafana
    ini = rootfs.p("/etc/grafana/grafana.ini").read_text()
    assert stat(rootfs, "/etc/grafana/grafana.ini") == ("0o640", "root", "grafana")
    assert ini.replace(f'admin_password = """{PASSWORD}"""\n', "") == files["grafana.ini"]
    assert '[security]\nadmin_password = """' + PASSWORD + '"""\nadmin_user = admin\n' in ini
    assert "[auth.anonymous]\nenabled = false\n" in ini and "http_addr = 10.99.0.40\n" in ini

    # provisioning
    for rel, dest, mode, group in [
        ("provisioning/datasources/prometheus.yaml", "/etc/grafana/provisioning/datasources/prometheus.yaml", "0o640", "grafana"),
        ("provisioning/dashboards/homelab-media.yaml", "/etc/grafana/provisioning/dashboards/homelab-media.yaml", "0o640", "grafana"),
        ("dashboards/media-pipeline.json", f"{DASHBOARDS_DIR}/media-pipeline.json", "0o644", "root"),
    ]:
        assert rootfs.p(dest).read_text() == files[rel], dest
        assert stat(rootfs, dest) == (mode, "root", group), dest
    assert rootfs.p("/etc/grafana/provisioning/datasources/sample.yaml").exists()  # the package's own: left alone

    # apt asked the stand-in for the key, the signed index and the package, nothing else
    assert repo.fetched() == ["gpg.key", "dists/stable/InRelease", "dists/stable/main/binary-amd64/Packages.xz",
                              f"pool/main/g/grafana/grafana_{VERSION}_amd64.deb"]
    assert repo.unknown == []
    assert '"install", "-y"' in execs.replace("[", " ")  # the trace holds apt's argv (the check below means something)
    assert PASSWORD not in execs, "the password was on a command line"
    assert PASSWORD not in r.err + r.out

    # second run: nothing changes, no apt-get update (the stand-in sees only the key download)
    repo.clear_log()
    r2, execs2 = install(rootfs, repo)
    assert r2.rc == 0, r2.err
    assert r2.json["changed"] is False and r2.json["changes"] == [] and r2.json["password_reset"] is False
    assert repo.fetched() == ["gpg.key"] and repo.unknown == []
    assert "apt-get update" not in r2.err and '"update"' not in execs2.replace(" ", "")
    assert rootfs.p("/etc/grafana/grafana.ini").read_text() == ini


@needs_root
def test_a_new_password_is_reset_in_grafanas_database(rootfs, repo):
    write_prov(rootfs, provisioning_files("http://prometheus.lan:9090"))
    r, _ = install(rootfs, repo)
    assert r.rc == 0, r.err
    # Grafana has started once: its database exists (the stand-in's grafana-cli needs it)
    db = rootfs.p("/var/lib/grafana/grafana.db")
    db.write_text("{}")
    grafana = rootfs.passwd("grafana")
    os.chown(db, int(grafana[2]), int(grafana[3]))

    r2, execs = install(rootfs, repo, password=NEW_PASSWORD)
    assert r2.rc == 0, r2.err
    assert r2.json["password_reset"] is True and r2.json["changed"] is True
    assert json.loads(db.read_text())["admin_password_sha256"] == hashlib.sha256(NEW_PASSWORD.encode()).hexdigest()
    argv = [json.loads(x) for x in rootfs.p("/var/lib/grafana/standin-cli-argv.log").read_text().splitlines()]
    assert argv == [["/usr/sbin/grafana-cli", "admin", "reset-admin-password", "--password-from-stdin"]]
    assert "reset-admin-password" in execs and NEW_PASSWORD not in execs
    assert f'admin_password = """{NEW_PASSWORD}"""' in rootfs.p("/etc/grafana/grafana.ini").read_text()

    # a dashboard dropped from the provisioning directory is removed; the password is not reset again
    rootfs.p(f"{PROV}/dashboards/media-pipeline.json").unlink()
    r3, _ = install(rootfs, repo, password=NEW_PASSWORD)
    assert r3.rc == 0, r3.err
    assert r3.json["changes"] == [f"removed {DASHBOARDS_DIR}/media-pipeline.json (no longer in the provisioning directory)"]
    assert r3.json["password_reset"] is False and not rootfs.p(f"{DASHBOARDS_DIR}/media-pipeline.json").exists()
    r4, _ = install(rootfs, repo, password=NEW_PASSWORD)
    assert r4.rc == 0 and r4.json["changed"] is False, r4.err
    assert repo.unknown == []

    # the stand-in's grafana-cli does only what the script uses
    r5 = rootfs.sh("grafana-cli plugins ls")
    assert r5.rc != 0 and "supports only `admin reset-admin-password" in r5.err


@needs_root
def test_another_key_is_refused_and_nothing_is_written(rootfs, repo):
    write_prov(rootfs, provisioning_files("http://prometheus.lan:9090"))
    r, _ = install(rootfs, repo, fingerprint=GRAFANA_FPR)  # Grafana's real key pinned; the stand-in's served
    assert r.rc == 1
    assert f"has fingerprint {repo.fingerprint}, but {GRAFANA_FPR} is pinned" in r.err
    assert "--fingerprint" in r.err and "no keyring, apt source or Grafana file was written" in r.err
    for p in ("/etc/apt/keyrings/grafana.asc", "/etc/apt/sources.list.d/grafana.list", "/etc/grafana",
              "/usr/sbin/grafana-server"):
        assert not rootfs.p(p).exists(), p
    assert repo.fetched() == ["gpg.key"] and repo.unknown == []


@needs_root
def test_a_served_key_that_did_not_sign_the_repository_fails_at_apt(rootfs, repo):
    """The pin is on the key file; apt then checks the repository's signature with it."""
    write_prov(rootfs, provisioning_files("http://prometheus.lan:9090"))
    fpr, other = throwaway_key()
    repo.serve_key(other)
    r, _ = install(rootfs, repo, fingerprint=fpr)
    assert r.rc == 1
    assert "apt-get update failed" in r.err and repo.fingerprint[-16:] in r.err, r.err
    assert not rootfs.p("/usr/sbin/grafana-server").exists()
    assert repo.unknown == []


# --- argument checks (no root, no tree) ---------------------------------------------------------


@pytest.mark.parametrize("args,needle", [
    (["--fingerprint", "1234"], "--fingerprint must be a key's 40 hex digit fingerprint, got '1234'"),
    (["--http-port", "70000"], "--http-port must be a port number 1-65535, got '70000'"),
    (["--http-addr", "a b"], "--http-addr must be an IP address or host name"),
    (["--repo", "ftp://x"], "--repo must be an http(s) URL, got 'ftp://x'"),
    (["--bogus"], "unknown argument '--bogus'"),
])
def test_bad_arguments_are_named(args, needle):
    r = run("ct-install-grafana.sh", *args, "--print-settings")
    assert r.rc == 1 and needle in r.err, r.err


def test_help():
    r = run("ct-install-grafana.sh", "--help")
    assert r.rc == 0 and "Usage:" in r.out and GRAFANA_FPR in r.out


def test_password_only_from_stdin_and_not_in_a_provisioned_ini(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the script checks root first")
    r = run("ct-install-grafana.sh", "--provisioning", str(tmp_path))
    assert r.rc == 1 and "--admin-password-stdin is required" in r.err
    r = run("ct-install-grafana.sh", "--admin-password-stdin", input="abc\n")
    assert r.rc == 1 and "shorter than 4 characters" in r.err
    (tmp_path / "grafana.ini").write_text("[security]\nadmin_password = oops\n")
    r = run("ct-install-grafana.sh", "--admin-password-stdin", "--provisioning", str(tmp_path), input="long-enough\n")
    assert r.rc == 1 and f"{tmp_path}/grafana.ini sets admin_password" in r.err
    r = run("ct-install-grafana.sh", "--admin-password-stdin", "--provisioning", str(tmp_path), "--http-port", "3000",
            input="long-enough\n")
    assert r.rc == 1 and "drop --http-addr/--http-port" in r.err


def test_the_standin_server_answers_health_and_says_what_it_is(tmp_path):
    """The stand-in grafana-server (never started in a chroot) serves /api/health on the ini's port."""
    import socket
    import time
    import urllib.request

    from tests.standins.grafana_deb import SERVER

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "grafana.ini").write_text(f"[server]\nhttp_addr = 127.0.0.1\nhttp_port = {port}\n")
    (tmp_path / "grafana-server").write_text(SERVER)
    p = subprocess.Popen(["python3", str(tmp_path / "grafana-server"), f"--config={tmp_path / 'grafana.ini'}"])
    try:
        for _ in range(50):
            try:
                body = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2).read())
                break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail("the stand-in grafana-server did not answer")
        assert body == {"database": "ok", "version": VERSION, "standin": True}
    finally:
        p.terminate()
        p.wait(timeout=10)
