"""media_pipeline/jellyfin.py against the Jellyfin stand-in (tests/standins/jellyfin.py): the
configuration is idempotent, the key is written 0600 and never printed, failures are clear."""

from __future__ import annotations

import json
import logging
import os
import stat
import time
import urllib.request

import pytest

from media_pipeline import jellyfin as jf
from tests.standins.jellyfin import JellyfinStandIn

PASSWORD = "s3cret-Pa55word"


@pytest.fixture
def server():
    with JellyfinStandIn() as s:
        yield s
        assert s.unknown == [], s.unknown  # no call the stand-in (i.e. Jellyfin's API) does not know
        assert s.rejected == [], s.rejected


def run_cli(tmp_path, server, *extra, password=PASSWORD, capsys=None):
    pw = tmp_path / "password"
    pw.write_text(password + "\n")
    key_file = tmp_path / "jellyfin.key"
    rc = jf.main(["configure", "--url", server.url, "--admin-user", "admin", "--password-file", str(pw),
                  "--key-file", str(key_file), *extra])
    return rc, key_file


def test_first_run_does_everything_second_run_nothing(server, tmp_path, capsys):
    rc, key_file = run_cli(tmp_path, server, "--hwaccel", "vaapi", "--render-node", "/dev/dri/renderD129")
    out, err = capsys.readouterr()
    assert rc == 0, err
    summary = json.loads(out)
    key = key_file.read_text().strip()
    assert key and key in [k["AccessToken"] for k in server.api_keys]
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key not in out + err and PASSWORD not in out + err  # never printed
    assert summary["apiKey"] == f"written to {key_file}"
    assert summary["version"] == "10.10.7" and summary["url"] == server.url and summary["hwaccel"] == "vaapi"
    assert summary["libraries"] == [{"name": "Movies", "collectionType": "movies", "paths": ["/media/movies"]},
                                    {"name": "Shows", "collectionType": "tvshows", "paths": ["/media/tv"]}]
    assert "startup wizard completed" in summary["changed"]
    assert any("API key media-pipeline created" in c for c in summary["changed"])
    assert server.wizard_completed and "admin" in server.users
    assert server.users["admin"]["Password"] == PASSWORD
    assert server.remote_access == {"EnableRemoteAccess": True, "EnableAutomaticPortMapping": False}
    assert server.encoding["HardwareAccelerationType"] == "vaapi"
    assert server.encoding["VaapiDevice"] == "/dev/dri/renderD129"
    assert server.encoding["EnableHardwareEncoding"] is True
    assert server.encoding["HardwareDecodingCodecs"] == ["h264", "vc1"]  # the rest kept, not reset
    # the wizard's calls in Jellyfin's order, before any login
    order = [(c["method"], c["path"]) for c in server.calls][:7]
    assert order == [("GET", "/System/Info/Public"), ("GET", "/Startup/Configuration"),
                     ("POST", "/Startup/Configuration"), ("GET", "/Startup/User"), ("POST", "/Startup/User"),
                     ("POST", "/Startup/RemoteAccess"), ("POST", "/Startup/Complete")]

    before = len(server.changes())
    rc, _ = run_cli(tmp_path, server, "--hwaccel", "vaapi", "--render-node", "/dev/dri/renderD129")
    out, err = capsys.readouterr()
    assert rc == 0, err
    again = json.loads(out)
    assert again["changed"] == [] and len(server.changes()) == before  # nothing changed on the server
    assert [lib["Name"] for lib in server.libraries] == ["Movies", "Shows"]  # no "Movies2"
    assert len(server.api_keys) == 1 and key_file.read_text().strip() == key
    assert key not in out + err and PASSWORD not in out + err


def test_a_changed_path_and_hwaccel_are_applied(server, tmp_path, capsys):
    server.dirs.add("/srv/films")
    assert run_cli(tmp_path, server)[0] == 0
    assert server.encoding["HardwareAccelerationType"] == "none"
    capsys.readouterr()
    rc, _ = run_cli(tmp_path, server, "--movies", "/srv/films", "--hwaccel", "qsv")
    out, err = capsys.readouterr()
    assert rc == 0, err
    summary = json.loads(out)
    assert server.library("Movies")["Locations"] == ["/srv/films"]
    assert server.library("Shows")["Locations"] == ["/media/tv"]
    assert summary["changed"] == ["library Movies: path /srv/films added", "library Movies: path /media/movies removed",
                                  "hardware acceleration qsv on /dev/dri/renderD128"]
    assert [(c["method"], c["path"]) for c in server.calls if c["path"].startswith("/Library/VirtualFolders/")] == [
        ("POST", "/Library/VirtualFolders/Paths"), ("DELETE", "/Library/VirtualFolders/Paths")]
    assert server.encoding["HardwareAccelerationType"] == "qsv" and server.encoding["QsvDevice"] == "/dev/dri/renderD128"
    assert len(server.api_keys) == 1


def test_an_existing_key_is_reused_and_written(server, tmp_path, capsys):
    assert run_cli(tmp_path, server)[0] == 0
    capsys.readouterr()
    (tmp_path / "jellyfin.key").unlink()
    rc, key_file = run_cli(tmp_path, server)
    out, _ = capsys.readouterr()
    assert rc == 0 and json.loads(out)["changed"] == [f"key file {key_file} written"]
    assert key_file.read_text().strip() == server.api_keys[0]["AccessToken"] and len(server.api_keys) == 1


def test_wrong_password_is_a_clear_error(server, tmp_path, capsys):
    assert run_cli(tmp_path, server)[0] == 0
    capsys.readouterr()
    rc, _ = run_cli(tmp_path, server, password="not-the-password")
    out, err = capsys.readouterr()
    assert rc == 1 and out == ""
    assert "refused the login of 'admin': wrong user name or password" in err
    assert "not-the-password" not in err and PASSWORD not in err


def test_unreachable_and_refusing_jellyfin_are_clear_errors(server, tmp_path, capsys):
    server.refuse(500)
    rc, key_file = run_cli(tmp_path, server)
    err = capsys.readouterr().err
    assert rc == 1 and "GET /System/Info/Public answered 500" in err and not key_file.exists()
    server.accept()
    server.go_away()
    rc, _ = run_cli(tmp_path, server)
    err = capsys.readouterr().err
    assert rc == 1 and f"cannot reach Jellyfin at {server.url}" in err
    server.come_back()


def test_slow_jellyfin_times_out(server):
    server.slow(1.0)
    with pytest.raises(jf.JellyfinError, match="no answer within 0.2 s"):
        jf.JellyfinClient(server.url, timeout=0.2).public_info()
    server.slow(0)


def test_no_secret_in_client_errors(server):
    jf.configure(server.url, "admin", PASSWORD)
    client = jf.JellyfinClient(server.url, "wrong-token-value")
    with pytest.raises(jf.JellyfinError) as err:
        client.media_updated(["/media/movies/A.mkv"])
    assert err.value.status == 401 and "wrong-token-value" not in str(err.value) and "wrong-token" not in repr(client)
    assert "user:pw" not in jf.redact_url("http://user:pw@127.0.0.1:8096/jf/") and \
        jf.redact_url("http://user:pw@127.0.0.1:8096/jf/") == "http://127.0.0.1:8096/jf"


def test_stand_in_refuses_what_it_does_not_know():
    with JellyfinStandIn() as s:
        for method, path in (("GET", "/Items/Counts"), ("PUT", "/Library/Media/Updated"), ("GET", "/Library/Refresh")):
            req = urllib.request.Request(s.url + path, method=method)
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(req, timeout=5)
            assert err.value.code in (404, 405)
        assert [(u["method"], u["path"]) for u in s.unknown] == [
            ("GET", "/Items/Counts"), ("PUT", "/Library/Media/Updated"), ("GET", "/Library/Refresh")]


def test_stand_in_guards_like_jellyfin():
    """After the wizard /Startup/* wants an administrator; media updates want a token; a body that is
    not JSON is refused; a second library under an existing name becomes "Movies2", as in Jellyfin."""
    with JellyfinStandIn() as s:
        anon = jf.JellyfinClient(s.url)
        anon.add_virtual_folder("Movies", "movies", ["/media/movies"])
        anon.add_virtual_folder("Movies", "movies", ["/media/movies"])
        assert [lib["Name"] for lib in s.libraries] == ["Movies", "Movies2"]
        jf.configure(s.url, "admin", PASSWORD, libraries=())
        for call in (anon.startup_configuration, lambda: anon.media_updated(["/x"]), anon.api_keys):
            with pytest.raises(jf.JellyfinError) as err:
                call()
            assert err.value.status == 401
        key = s.api_keys[0]["AccessToken"]
        for headers in ({"X-Emby-Token": key}, {"Authorization": f'MediaBrowser Token="{key}"'}):
            req = urllib.request.Request(s.url + "/Library/Media/Updated", method="POST", headers={
                **headers, "Content-Type": "application/json"},
                data=json.dumps({"Updates": [{"Path": "/media/movies/A.mkv", "UpdateType": "Created"}]}).encode())
            assert urllib.request.urlopen(req, timeout=5).status == 204
        assert s.updated_paths() == ["/media/movies/A.mkv"] * 2
        req = urllib.request.Request(s.url + "/Library/Media/Updated", method="POST", data=b"Path=/x",
                                     headers={"X-Emby-Token": key, "Content-Type": "application/x-www-form-urlencoded"})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=5)
        assert err.value.code == 415 and len(s.rejected) == 1
        assert s.unknown == []


# --- the notifier ------------------------------------------------------------------------------

def test_map_path_longest_prefix_wins():
    m = {"/mnt/storage/movies": "/media/movies", "/mnt/storage": "/data", "/mnt/storage/tv/": "/media/tv"}
    assert jf.map_path("/mnt/storage/movies/Heat (1995).mkv", m) == "/media/movies/Heat (1995).mkv"
    assert jf.map_path("/mnt/storage/tv/Show/Season 01/E.mkv", m) == "/media/tv/Show/Season 01/E.mkv"
    assert jf.map_path("/mnt/storage/other/x.mkv", m) == "/data/other/x.mkv"
    assert jf.map_path("/mnt/storage/moviesX/a.mkv", m) == "/data/moviesX/a.mkv"  # whole components only
    assert jf.map_path("/elsewhere/a.mkv", m) == "/elsewhere/a.mkv"


def refresher(server, tmp_path, **kw):
    key_file = tmp_path / "key"
    key_file.write_text(server.api_keys[0]["AccessToken"] + "\n")
    key_file.chmod(0o600)
    counted = []
    r = jf.LibraryRefresher(server.url, str(key_file), {str(tmp_path / "movies"): "/media/movies"},
                            count=counted.append, state_file=str(tmp_path / "state.json"), **kw)
    return r, counted


def test_refresher_retries_logs_once_and_recovers(server, tmp_path, caplog):
    jf.configure(server.url, "admin", PASSWORD)
    r, counted = refresher(server, tmp_path, delays=(0.2, 0.2, 0.2))
    server.refuse(500)
    caplog.set_level(logging.DEBUG, logger="media-pipeline")
    started = time.monotonic()
    r.submit(str(tmp_path / "movies" / "A.mkv"))
    assert time.monotonic() - started < 0.1  # never blocks the job
    time.sleep(0.3)
    server.accept()
    r.close(timeout=5)
    assert server.updated_paths() == ["/media/movies/A.mkv"]
    assert counted[-1] == "ok" and "failed" in counted
    warnings = [rec for rec in caplog.records if rec.levelno == logging.WARNING]
    assert len(warnings) == 1 and "retrying" in warnings[0].getMessage()
    assert r.last["ok"] and r.last["path"] == "/media/movies/A.mkv"
    assert jf.read_state(str(tmp_path / "state.json"))["ok"] is True
    assert all(server.api_keys[0]["AccessToken"] not in rec.getMessage() for rec in caplog.records)


def test_refresher_gives_up_then_carries_the_path(server, tmp_path):
    jf.configure(server.url, "admin", PASSWORD)
    r, counted = refresher(server, tmp_path, delays=(0.05, 0.05))
    server.go_away()
    r.submit(str(tmp_path / "movies" / "A.mkv"))
    assert r._idle.wait(5)
    assert counted == ["failed"] * 3 and r.last["ok"] is False and "cannot reach" in r.last["reason"]
    server.come_back()
    r.submit(str(tmp_path / "movies" / "B.mkv"))
    r.close(timeout=5)
    assert server.updated_paths() == ["/media/movies/A.mkv", "/media/movies/B.mkv"]  # A carried over
    assert counted[-1] == "ok"


def test_refresher_unreadable_key_is_a_failure_not_a_crash(server, tmp_path):
    jf.configure(server.url, "admin", PASSWORD)
    r = jf.LibraryRefresher(server.url, str(tmp_path / "missing.key"), (), delays=())
    r.submit("/media/movies/A.mkv")
    r.close(timeout=5)
    assert r.last["ok"] is False and "cannot read the jellyfin_api_key_file file" in r.last["reason"]
    assert server.updated_paths() == []


def test_refresher_off_without_url():
    r = jf.LibraryRefresher("", "/nonexistent", ())
    r.submit("/x")
    r.close(timeout=1)
    assert not r.enabled and r.last is None and "off" in r.describe()


def test_key_owner(server, tmp_path, capsys):
    import pwd

    me = pwd.getpwuid(os.getuid()).pw_name
    rc, key_file = run_cli(tmp_path, server, "--key-owner", me)
    assert rc == 0 and key_file.stat().st_uid == os.getuid()
    rc, _ = run_cli(tmp_path, server, "--key-owner", "no-such-user-here")
    assert rc == 1 and "no-such-user-here" in capsys.readouterr().err


def test_write_secret_is_0600_and_idempotent(tmp_path):
    path = tmp_path / "k"
    old = os.umask(0)
    try:
        assert jf.write_secret(str(path), "abc") is True
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_text() == "abc\n"
    assert jf.write_secret(str(path), "abc") is False
