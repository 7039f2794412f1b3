"""The Jellyfin keys of media-pipeline's config: defaults, validation naming the key, render from the
installer's KEY=VALUE items, and the service's wiring (metric present at 0, status --jellyfin)."""

from __future__ import annotations

import json

import pytest

from media_pipeline import config as cfgmod
from media_pipeline import jellyfin, service
from media_pipeline.config import ConfigError, from_dict, render
from media_pipeline.metrics import exposition


def test_defaults_are_off():
    cfg = from_dict({})
    assert cfg.jellyfin_url == "" and cfg.jellyfin_path_map == ()
    assert cfg.jellyfin_api_key_file == "/etc/media-pipeline/jellyfin.key"
    assert cfg.jellyfin_retry_seconds == (1.0, 5.0, 25.0)
    assert cfg.to_json()["jellyfin_path_map"] == {}


def test_full_jellyfin_config_round_trips():
    raw = {"jellyfin_url": "http://192.168.1.60:8096/", "jellyfin_api_key_file": "/etc/media-pipeline/jf.key",
           "jellyfin_path_map": {"/mnt/storage/movies": "/media/movies", "/mnt/storage/tv/": "/media/tv"},
           "jellyfin_retry_seconds": [0, 2.5]}
    cfg = from_dict(raw)
    assert cfg.jellyfin_url == "http://192.168.1.60:8096"
    assert cfg.jellyfin_path_map == (("/mnt/storage/movies", "/media/movies"), ("/mnt/storage/tv", "/media/tv"))
    assert cfg.jellyfin_retry_seconds == (0.0, 2.5)
    assert from_dict(json.loads(json.dumps(cfg.to_json()))) == cfg


@pytest.mark.parametrize("raw, fragments", [
    ({"jellyfin_url": "192.168.1.60:8096"}, ["'jellyfin_url'", "http:// or https://", '"jellyfin_url": "http://']),
    ({"jellyfin_url": "http://u:p@host:8096"}, ["'jellyfin_url'", "without user"]),
    ({"jellyfin_url": 8096}, ["'jellyfin_url'", "must be a string"]),
    ({"jellyfin_api_key_file": "jellyfin.key"}, ["'jellyfin_api_key_file'", "absolute path"]),
    ({"jellyfin_path_map": ["/a", "/b"]}, ["'jellyfin_path_map'", "must be an object"]),
    ({"jellyfin_path_map": {"/mnt/storage/movies": "media/movies"}}, ["'jellyfin_path_map'", "absolute paths"]),
    ({"jellyfin_path_map": {"/a": "/b", "/a/": "/c"}}, ["'jellyfin_path_map'", "twice"]),
    ({"jellyfin_retry_seconds": [1, -1]}, ["'jellyfin_retry_seconds'", "0-3600"]),
    ({"jellyfin_retry_seconds": "1,5"}, ["'jellyfin_retry_seconds'", "list"]),
    ({"jellyfin_ur": "http://x"}, ["unknown key 'jellyfin_ur'", "did you mean 'jellyfin_url'"]),
])
def test_errors_name_the_key_and_the_fix(raw, fragments):
    with pytest.raises(ConfigError) as err:
        from_dict(raw, where="/etc/media-pipeline/config.json")
    for fragment in fragments:
        assert fragment in str(err.value)


def test_render_takes_the_installers_items():
    out = json.loads(render(["jellyfin_url=http://10.0.0.5:8096", "jellyfin_api_key_file=/etc/media-pipeline/jellyfin.key",
                             "jellyfin_path_map=/mnt/storage/movies=/media/movies,/mnt/storage/tv=/media/tv",
                             "jellyfin_retry_seconds=1,5,25"]))
    assert out["jellyfin_path_map"] == {"/mnt/storage/movies": "/media/movies", "/mnt/storage/tv": "/media/tv"}
    assert out["jellyfin_retry_seconds"] == [1.0, 5.0, 25.0] and out["jellyfin_url"] == "http://10.0.0.5:8096"
    as_json = json.loads(render(['jellyfin_path_map={"/mnt/storage/movies": "/media/movies"}']))
    assert as_json["jellyfin_path_map"] == {"/mnt/storage/movies": "/media/movies"}
    assert json.loads(render(["jellyfin_path_map="]))["jellyfin_path_map"] == {}
    with pytest.raises(ConfigError, match="'jellyfin_path_map'"):
        render(["jellyfin_path_map=/mnt/storage/movies"])
    with pytest.raises(ConfigError, match="'jellyfin_retry_seconds'"):
        render(["jellyfin_retry_seconds=soon"])


def make_cfg(tmp_path, **kw):
    for d in ("staging", "movies", "tv", "state"):
        (tmp_path / d).mkdir(exist_ok=True)
    return cfgmod.from_dict({"staging": str(tmp_path / "staging"), "movies": str(tmp_path / "movies"),
                             "tv": str(tmp_path / "tv"), "db": str(tmp_path / "state" / "jobs.sqlite3"),
                             "metrics_textfile": "", **kw})


def test_refresh_metric_is_present_at_zero(tmp_path):
    svc = service.Service(make_cfg(tmp_path))
    text = exposition(svc.registry)
    assert 'media_pipeline_jellyfin_refreshes_total{outcome="ok"} 0.0' in text
    assert 'media_pipeline_jellyfin_refreshes_total{outcome="failed"} 0.0' in text
    svc.events.jellyfin_refresh("failed")
    assert 'media_pipeline_jellyfin_refreshes_total{outcome="failed"} 1.0' in exposition(svc.registry)


def test_status_jellyfin(tmp_path, capsys):
    cfg_file = tmp_path / "config.json"
    cfg = make_cfg(tmp_path, jellyfin_url="http://127.0.0.1:8096")
    cfg_file.write_text(json.dumps(cfg.to_json()))
    assert service.main(["--config", str(cfg_file), "status", "--jellyfin", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"enabled": True, "url": "http://127.0.0.1:8096", "last": None}
    state = jellyfin.state_file_for(cfg.db)
    with open(state, "w") as fh:
        json.dump({"time": 1.0, "path": "/media/movies/A.mkv", "ok": False, "reason": "answered 500", "attempt": 4}, fh)
    assert service.main(["--config", str(cfg_file), "status", "--jellyfin"]) == 0
    assert "/media/movies/A.mkv: failed (try 4): answered 500" in capsys.readouterr().out
    assert service.main(["--config", str(cfg_file), "status"]) == 0
    assert "jellyfin: last refresh" in capsys.readouterr().out
    assert service.main(["--config", str(cfg_file), "status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []  # --json alone stays the job list
