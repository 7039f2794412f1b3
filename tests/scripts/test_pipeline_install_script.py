"""scripts/ct-install-pipeline.sh under --root DIR: files, stdout JSON, idempotence, upgrades."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

from components import render

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "ct-install-pipeline.sh"
ME = pwd.getpwuid(os.getuid()).pw_name


def make_tarball(dest: Path, extra: str = "") -> Path:
    src = dest.parent / f"pkg{len(extra)}"
    shutil.copytree(REPO / "media_pipeline", src / "media_pipeline",
                    ignore=shutil.ignore_patterns("__pycache__"))
    if extra:
        (src / "media_pipeline" / "extra.py").write_text(extra)
    with tarfile.open(dest, "w:gz") as tar:
        tar.add(src / "media_pipeline", arcname="media_pipeline")
    return dest


def install(root: Path, tarball: Path, *extra: str, user: str = ME, check: bool = True,
            preexec=None, stdin: str | None = None, script: Path = SCRIPT) -> subprocess.CompletedProcess:
    argv = ["bash", str(script), "--tarball", str(tarball), "--user", user,
            "--staging", "/mnt/storage/staging", "--movies", "/mnt/storage/movies",
            "--tv", "/mnt/storage/tv", "--languages", "eng,bul", "--encoder", "libx265",
            "--preset", "slow", "--crf", "18", "--root", str(root), *extra]
    run = subprocess.run(argv, capture_output=True, text=True, preexec_fn=preexec, timeout=120,
                         input=stdin if stdin is not None else "")
    if check:
        assert run.returncode == 0, run.stderr
    return run


def result(run) -> dict:
    lines = run.stdout.strip().splitlines()
    assert len(lines) == 1, run.stdout  # one JSON object on stdout, progress on stderr
    return json.loads(lines[0])


def snapshot(root: Path) -> dict:
    out = {}
    for p in sorted(root.rglob("*")):
        if "__pycache__" in p.parts:
            continue
        st = p.lstat()
        out[str(p.relative_to(root))] = (st.st_mode, st.st_mtime_ns, os.readlink(p) if p.is_symlink() else None)
    return out


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "root"
    r.mkdir()
    return r


def test_installs_everything_then_changes_nothing(root, tmp_path):
    tarball = make_tarball(tmp_path / "media_pipeline.tar.gz")
    first = install(root, tarball)
    data = result(first)
    assert data == {"installed": "/opt/media-pipeline/media_pipeline", "version": "0.1.0",
                    "unit": "/etc/systemd/system/media-pipeline.service",
                    "config": "/etc/media-pipeline/config.json", "changed": True, "service": "enabled"}
    assert "==> " in first.stderr and " ✓ " in first.stderr

    pkg = root / "opt/media-pipeline/media_pipeline"
    assert pkg.is_symlink() and (pkg / "transcode.py").is_file()
    for cmd, module in (("media-transcode", "transcode"), ("media-pipeline", "service")):
        wrapper = root / "usr/local/bin" / cmd
        assert os.access(wrapper, os.X_OK)
        text = wrapper.read_text()
        assert "PYTHONPATH=/opt/media-pipeline" in text
        assert f'exec python3 -m media_pipeline.{module} "$@"' in text
    cfg = json.loads((root / "etc/media-pipeline/config.json").read_text())
    assert cfg["languages"] == ["eng", "bul"] and cfg["staging"] == "/mnt/storage/staging"
    assert cfg["keep_source"] is True and cfg["metrics_port"] == 9464 and cfg["crf"] == 18
    assert cfg["metrics_bind"] == "127.0.0.1"  # /metrics stays inside the container by default
    assert stat.S_IMODE((root / "etc/media-pipeline/config.json").stat().st_mode) == 0o640
    unit = (root / "etc/systemd/system/media-pipeline.service").read_text()
    assert f"User={ME}" in unit and "Restart=on-failure" in unit
    assert "ExecStart=/usr/local/bin/media-pipeline run" in unit
    link = root / "etc/systemd/system/multi-user.target.wants/media-pipeline.service"
    assert os.readlink(link) == "/etc/systemd/system/media-pipeline.service"
    assert (root / "var/lib/media-pipeline").is_dir()

    # the installed package imports and runs on this python3
    env = {**os.environ, "PYTHONPATH": str(root / "opt/media-pipeline")}
    run = subprocess.run([sys.executable, "-m", "media_pipeline.config", "check",
                          str(root / "etc/media-pipeline/config.json")], env=env,
                         capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr

    before = snapshot(root)
    second = install(root, tarball)
    assert result(second)["changed"] is False
    assert snapshot(root) == before


def test_upgrade_swaps_release_and_keeps_hand_edited_keys(root, tmp_path):
    install(root, make_tarball(tmp_path / "a.tar.gz"))
    cfg_path = root / "etc/media-pipeline/config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["apprise_urls"] = ["tgram://token/chat"]
    cfg_path.write_text(json.dumps(cfg))
    old_release = os.readlink(root / "opt/media-pipeline/media_pipeline")

    run = install(root, make_tarball(tmp_path / "b.tar.gz", extra="X = 1\n"), "--crf", "20",
                  "--keep-source", "false")
    assert result(run)["changed"] is True
    new_release = os.readlink(root / "opt/media-pipeline/media_pipeline")
    assert new_release != old_release
    assert (root / "opt/media-pipeline/media_pipeline/extra.py").exists()
    assert len(list((root / "opt/media-pipeline/releases").iterdir())) == 1  # old release removed
    cfg = json.loads(cfg_path.read_text())
    assert cfg["apprise_urls"] == ["tgram://token/chat"] and cfg["crf"] == 20 and cfg["keep_source"] is False


def test_replaces_a_hand_installed_directory(root, tmp_path):
    hand = root / "opt/media-pipeline/media_pipeline"
    hand.mkdir(parents=True)
    (hand / "__init__.py").write_text("old\n")
    install(root, make_tarball(tmp_path / "a.tar.gz"))
    assert hand.is_symlink() and "__version__" in (hand / "__init__.py").read_text()


def test_tampered_release_is_reinstalled(root, tmp_path):
    tarball = make_tarball(tmp_path / "a.tar.gz")
    install(root, tarball)
    (root / "opt/media-pipeline/media_pipeline/naming.py").write_text("broken\n")
    assert result(install(root, tarball))["changed"] is True
    assert "def destination" in (root / "opt/media-pipeline/media_pipeline/naming.py").read_text()


@pytest.mark.skipif(os.getuid() != 0, reason="only root can give the config to root and another group")
def test_config_is_root_owned_and_readable_by_the_service_group_only(root, tmp_path):
    other = pwd.getpwnam("nobody")  # the service user: its group reads, nobody else does
    tarball = make_tarball(tmp_path / "a.tar.gz")
    install(root, tarball, user=other.pw_name)
    cfg_path = root / "etc/media-pipeline/config.json"
    st = cfg_path.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, other.pw_gid, 0o640)

    # an older install's world-readable file is tightened; hand-set tokens are kept
    cfg = json.loads(cfg_path.read_text())
    cfg["apprise_urls"] = ["tgram://token/chat"]
    cfg_path.write_text(json.dumps(cfg))
    os.chmod(cfg_path, 0o644)
    os.chown(cfg_path, 0, 0)
    assert result(install(root, tarball, user=other.pw_name))["changed"] is True
    st = cfg_path.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, other.pw_gid, 0o640)
    assert json.loads(cfg_path.read_text())["apprise_urls"] == ["tgram://token/chat"]
    assert result(install(root, tarball, user=other.pw_name))["changed"] is False


def test_metrics_bind_and_port(root, tmp_path):
    install(root, make_tarball(tmp_path / "a.tar.gz"), "--metrics-bind", "0.0.0.0", "--metrics-port", "9500")
    cfg = json.loads((root / "etc/media-pipeline/config.json").read_text())
    assert cfg["metrics_bind"] == "0.0.0.0" and cfg["metrics_port"] == 9500


def test_qsv_device_chosen_or_auto(root, tmp_path):
    tarball = make_tarball(tmp_path / "a.tar.gz")
    cfg_path = root / "etc/media-pipeline/config.json"
    install(root, tarball, "--encoder", "hevc_qsv", "--qsv-device", "/dev/dri/renderD129")
    cfg = json.loads(cfg_path.read_text())
    assert cfg["encoder"] == "hevc_qsv" and cfg["qsv_device"] == "/dev/dri/renderD129"
    install(root, tarball, "--encoder", "hevc_qsv")
    assert json.loads(cfg_path.read_text())["qsv_device"] == ""  # auto, resolved at run time


@pytest.mark.parametrize(
    "args, message",
    [
        (["--encoder", "nvenc"], "--encoder must be libx265 or hevc_qsv"),
        (["--crf", "high"], "--crf must be a number"),
        (["--keep-source", "yes"], "--keep-source must be true or false"),
        (["--languages", "english"], "--languages must look like eng,bul"),
        (["--metrics-port", "99999"], "--metrics-port must be 0-65535"),
        (["--metrics-bind", "any where"], "--metrics-bind must be an address"),
        (["--qsv-device", "renderD129"], "--qsv-device must be an absolute device path"),
        (["--preset", "turbo"], "not a valid config"),
        (["--bogus"], "unknown argument: --bogus"),
    ],
)
def test_bad_arguments(root, tmp_path, args, message):
    run = install(root, make_tarball(tmp_path / "a.tar.gz"), *args, check=False)
    assert run.returncode == 2, run.stderr
    assert message in run.stderr and run.stdout == ""


def test_missing_tarball_and_help(root, tmp_path):
    run = install(root, tmp_path / "nope.tar.gz", check=False)
    assert run.returncode == 2 and "no such readable file" in run.stderr
    helped = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True, check=False)
    assert helped.returncode == 0 and "--tarball FILE" in helped.stdout


def test_tarball_without_package(root, tmp_path):
    bad = tmp_path / "bad.tar.gz"
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x").write_text("x")
    with tarfile.open(bad, "w:gz") as tar:
        tar.add(tmp_path / "junk", arcname="junk")
    run = install(root, bad, check=False)
    assert run.returncode == 1 and "does not contain media_pipeline/__init__.py" in run.stderr


@pytest.mark.skipif(os.getuid() != 0 or not shutil.which("setpriv"), reason="needs root to become nobody")
def test_runs_as_an_unprivileged_user():
    work = Path(tempfile.mkdtemp(prefix="ct-install-"))
    try:
        root = work / "root"
        root.mkdir()
        tarball = make_tarball(work / "a.tar.gz")
        # the script and the helpers it ships with, in a folder nobody can reach: the checkout may sit
        # under a private (0700) folder, as CI's clone does
        scripts = work / "scripts"
        scripts.mkdir()
        for name in render.bundle_files(SCRIPT.name):
            shutil.copy(SCRIPT.parent / name, scripts / name)
        for p in [work, *work.rglob("*")]:
            os.chown(p, 65534, 65534, follow_symlinks=False)

        def drop():
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)

        user = pwd.getpwuid(65534).pw_name
        first = install(root, tarball, user=user, preexec=drop, script=scripts / SCRIPT.name)
        assert result(first)["changed"] is True
        assert result(install(root, tarball, user=user, preexec=drop, script=scripts / SCRIPT.name))["changed"] is False
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.skipif(not shutil.which("shellcheck"), reason="shellcheck not installed")
def test_shellcheck_clean():
    run = subprocess.run(["shellcheck", "-x", str(SCRIPT)], cwd=SCRIPT.parent, capture_output=True,
                         text=True, check=False)
    assert run.returncode == 0, run.stdout


def install_ripper(root: Path, tarball: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    argv = ["bash", str(SCRIPT), "--role", "ripper", "--tarball", str(tarball), "--user", ME,
            "--staging", "/mnt/storage/staging", "--root", str(root), *extra]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if check:
        assert run.returncode == 0, run.stderr
    return run


def test_ripper_role_installs_media_rip_with_the_stack_settings(root, tmp_path):
    tarball = make_tarball(tmp_path / "media_pipeline.tar.gz")
    first = install_ripper(root, tarball, "--min-length", "1200", "--auto-rip", "true", "--eject", "false",
                           "--drive-gid", "24", "--device", "/dev/sr0")
    assert result(first) == {"installed": "/opt/media-pipeline/media_pipeline", "version": "0.1.0",
                             "unit": "/etc/systemd/system/media-rip.service",
                             "config": "/etc/media-rip/config.json", "changed": True, "service": "enabled"}
    wrapper = (root / "usr/local/bin/media-rip").read_text()
    assert 'exec python3 -m media_pipeline.rip "$@"' in wrapper
    assert not (root / "usr/local/bin/media-pipeline").exists()  # the ripper transcodes nothing
    assert not (root / "etc/media-pipeline").exists()
    cfg = json.loads((root / "etc/media-rip/config.json").read_text())
    assert (cfg["min_length"], cfg["auto_rip"], cfg["eject"], cfg["device"], cfg["staging"], cfg["metrics_port"]) == \
        (1200, True, False, "/dev/sr0", "/mnt/storage/staging", 0)
    unit = (root / "etc/systemd/system/media-rip.service").read_text()
    assert f"User={ME}" in unit and "SupplementaryGroups=24" in unit
    assert "ExecStart=/usr/local/bin/media-rip run" in unit and "StateDirectory=media-rip" in unit
    assert os.readlink(root / "etc/systemd/system/multi-user.target.wants/media-rip.service") == \
        "/etc/systemd/system/media-rip.service"
    assert (root / "var/lib/media-rip").is_dir()
    # the installed command answers (its --help documents the exit codes)
    env = {**os.environ, "PYTHONPATH": str(root / "opt/media-pipeline")}
    run = subprocess.run([sys.executable, "-m", "media_pipeline.rip", "--help"], env=env, capture_output=True,
                         text=True, check=False)
    assert run.returncode == 0 and "4  a title failed" in run.stdout
    before = snapshot(root)
    again = install_ripper(root, tarball, "--min-length", "1200", "--auto-rip", "true", "--eject", "false",
                           "--drive-gid", "24", "--device", "/dev/sr0")
    assert result(again)["changed"] is False and snapshot(root) == before


@pytest.mark.parametrize("args,message", [
    (("--min-length", "ten"), "--min-length must be a number"),
    (("--auto-rip", "yes"), "--auto-rip must be true or false"),
    (("--device", "sr0"), "--device must be a device path"),
    (("--role", "encoder"), "--role must be transcoder or ripper"),
])
def test_ripper_role_refuses_bad_settings(root, tmp_path, args, message):
    run = install_ripper(root, make_tarball(tmp_path / "a.tar.gz"), *args, check=False)
    assert run.returncode == 2 and message in run.stderr


def test_status_page_settings_and_password_from_stdin(root, tmp_path):
    tarball = make_tarball(tmp_path / "a.tar.gz")
    cfg_path = root / "etc/media-pipeline/config.json"
    install(root, tarball)
    cfg = json.loads(cfg_path.read_text())
    assert (cfg["web_port"], cfg["web_bind"], cfg["web_password"]) == (8480, "127.0.0.1", "")
    assert cfg["gpu_proof_file"] == "/var/lib/media-pipeline/gpu-proof.json"

    refused = install(root, tarball, "--web-bind", "0.0.0.0", check=False)
    assert refused.returncode == 2 and "'web_password'" in refused.stderr and "statusPassword" in refused.stderr
    assert json.loads(cfg_path.read_text()) == cfg  # nothing written

    secret = "s3cret with spaces"
    run = install(root, tarball, "--web-bind", "0.0.0.0", "--web-port", "8500", "--web-password-stdin",
                  stdin=secret + "\n")
    assert secret not in run.stdout + run.stderr
    cfg = json.loads(cfg_path.read_text())
    assert (cfg["web_port"], cfg["web_bind"], cfg["web_password"]) == (8500, "0.0.0.0", secret)
    assert stat.S_IMODE(cfg_path.stat().st_mode) == 0o640
    # a later run without the flag keeps the password (like apprise_urls) and changes nothing
    again = install(root, tarball, "--web-bind", "0.0.0.0", "--web-port", "8500")
    assert result(again)["changed"] is False and json.loads(cfg_path.read_text())["web_password"] == secret


@pytest.mark.parametrize("args,message", [
    (["--web-port", "70000"], "--web-port must be 0-65535"),
    (["--web-bind", "any where"], "--web-bind must be an address"),
    (["--gpu-proof", "rel.json"], "--gpu-proof must be an absolute path"),
])
def test_bad_status_page_flags(root, tmp_path, args, message):
    run = install(root, make_tarball(tmp_path / "a.tar.gz"), *args, check=False)
    assert run.returncode == 2 and message in run.stderr


def test_rip_status_file_is_the_same_path_for_writer_and_reader(root, tmp_path):
    tarball = make_tarball(tmp_path / "a.tar.gz")
    page_cfg, rip_cfg = root / "etc/media-pipeline/config.json", root / "etc/media-rip/config.json"
    # an upgrade: the old config still names media-rip's SQLite store, which the page cannot reach
    page_cfg.parent.mkdir(parents=True)
    page_cfg.write_text(json.dumps({"rip_db": "/var/lib/media-rip/rips.sqlite3", "apprise_urls": ["tgram://t/c"]}))
    install(root, tarball)
    install_ripper(root, tarball)
    page, ripper = json.loads(page_cfg.read_text()), json.loads(rip_cfg.read_text())
    assert page["rip_status_file"] == ripper["status_file"] == "/mnt/storage/staging/.media-rip/status.json"
    assert "rip_db" not in page and page["apprise_urls"] == ["tgram://t/c"]
    env = {**os.environ, "PYTHONPATH": str(root / "opt/media-pipeline")}
    for argv in (["media_pipeline.config", "check", str(page_cfg)],  # both load with the installed package
                 ["media_pipeline.rip", "--config", str(rip_cfg), "status"]):
        run = subprocess.run([sys.executable, "-m", *argv], env=env, capture_output=True, text=True, check=False)
        assert run.returncode == 0, run.stderr
    assert not (root / "mnt").exists()  # the installer creates nothing on the pool; media-rip writes its file

    shared = "/srv/pool/staging/.media-rip/status.json"
    install(root, tarball, "--rip-status", shared)
    install_ripper(root, tarball, "--rip-status", shared)
    assert json.loads(page_cfg.read_text())["rip_status_file"] == json.loads(rip_cfg.read_text())["status_file"] \
        == shared
    for run in (install(root, tarball, "--rip-status", "status.json", check=False),
                install_ripper(root, tarball, "--rip-status", "rel/status.json", check=False)):
        assert run.returncode == 2 and "--rip-status must be an absolute path" in run.stderr


def test_public_url_and_trusted_proxies_reach_the_config(root, tmp_path):
    tarball = make_tarball(tmp_path / "a.tar.gz")
    install(root, tarball, "--public-url", "https://media.example.lan", "--trusted-proxies", "192.168.1.10,10.0.0.0/24")
    cfg = json.loads((root / "etc/media-pipeline/config.json").read_text())
    assert cfg["public_url"] == "https://media.example.lan"
    assert cfg["trusted_proxies"] == ["192.168.1.10", "10.0.0.0/24"]
    bad = install(root, tarball, "--public-url", "media.example.lan", check=False)
    assert bad.returncode != 0 and "public_url" in bad.stderr


def test_ripper_without_a_fixed_device_follows_the_drive_selector(root, tmp_path):
    tarball = make_tarball(tmp_path / "media_pipeline.tar.gz")
    install_ripper(root, tarball, "--device", "/dev/sr0")  # an older install pinned the node
    install_ripper(root, tarball, "--drive", "BW-16D1HT")  # this release: looked up at every poll
    cfg = json.loads((root / "etc/media-rip/config.json").read_text())
    assert (cfg["drive"], cfg["device"]) == ("BW-16D1HT", "")
    unit = (root / "etc/systemd/system/media-rip.service").read_text()
    assert "Description=Media rip: rip each new disc in drive BW-16D1HT" in unit
    install_ripper(root, tarball, "--drive", "BD-RE WH16NS60")  # a model name has spaces
    assert json.loads((root / "etc/media-rip/config.json").read_text())["drive"] == "BD-RE WH16NS60"
    bad = install_ripper(root, tarball, "--drive", "$(reboot)", check=False)
    assert bad.returncode == 2 and "--drive must be auto" in bad.stderr


def test_jellyfin_flags_reach_the_config(root, tmp_path):
    tarball = make_tarball(tmp_path / "a.tar.gz")
    install(root, tarball)
    cfg = json.loads((root / "etc/media-pipeline/config.json").read_text())
    assert (cfg["jellyfin_url"], cfg["jellyfin_path_map"]) == ("", {})  # off by default
    assert cfg["jellyfin_api_key_file"] == "/etc/media-pipeline/jellyfin.key"
    install(root, tarball, "--jellyfin-url", "http://192.168.1.60:8096", "--jellyfin-api-key-file",
            "/var/lib/media-pipeline/jellyfin.key", "--jellyfin-path-map",
            "/mnt/storage/movies=/media/movies,/mnt/storage/tv=/media/tv")
    cfg = json.loads((root / "etc/media-pipeline/config.json").read_text())
    assert cfg["jellyfin_url"] == "http://192.168.1.60:8096"
    assert cfg["jellyfin_api_key_file"] == "/var/lib/media-pipeline/jellyfin.key"
    assert cfg["jellyfin_path_map"] == {"/mnt/storage/movies": "/media/movies", "/mnt/storage/tv": "/media/tv"}
    again = install(root, tarball, "--jellyfin-url", "http://192.168.1.60:8096", "--jellyfin-api-key-file",
                    "/var/lib/media-pipeline/jellyfin.key", "--jellyfin-path-map",
                    "/mnt/storage/movies=/media/movies,/mnt/storage/tv=/media/tv")
    assert result(again)["changed"] is False
    for flag, value, message in (("--jellyfin-url", "192.168.1.60:8096", "--jellyfin-url must look like"),
                                 ("--jellyfin-api-key-file", "jellyfin.key", "must be an absolute path"),
                                 ("--jellyfin-path-map", "/mnt/storage/movies:/media/movies", "HOST=CONTAINER")):
        bad = install(root, tarball, flag, value, check=False)
        assert bad.returncode == 2 and message in bad.stderr
    bad = install(root, tarball, "--jellyfin-url", "http://u:p@jf:8096", check=False)
    assert bad.returncode != 0 and "jellyfin_url" in bad.stderr
