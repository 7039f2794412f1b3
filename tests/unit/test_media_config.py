"""Config file: defaults, validation with errors naming the key and the fix, precedence."""

import json

import pytest

from media_pipeline import config as cfgmod
from media_pipeline.config import ConfigError, from_dict, load, render


def write(tmp_path, data, name="config.json"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return str(path)


def test_defaults_without_a_file(tmp_path, monkeypatch):
    monkeypatch.delenv(cfgmod.ENV_VAR, raising=False)
    monkeypatch.setattr(cfgmod, "DEFAULT_PATH", str(tmp_path / "missing.json"))
    cfg = load(None)
    assert cfg.languages == ("eng",) and cfg.encoder == "libx265" and cfg.concurrency == 1
    assert cfg.keep_source is True and cfg.metrics_port == 0


def test_missing_default_file_is_an_error_when_required(tmp_path, monkeypatch):
    monkeypatch.delenv(cfgmod.ENV_VAR, raising=False)
    monkeypatch.setattr(cfgmod, "DEFAULT_PATH", str(tmp_path / "missing.json"))
    with pytest.raises(ConfigError, match="no such config file"):
        load(None, required=True)


def test_explicit_missing_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="no such config file.*--config"):
        load(str(tmp_path / "nope.json"))


def test_precedence_flag_over_env_over_default(tmp_path, monkeypatch):
    a = write(tmp_path, {"crf": 20}, "a.json")
    b = write(tmp_path, {"crf": 22}, "b.json")
    monkeypatch.setenv(cfgmod.ENV_VAR, b)
    assert load(None).crf == 22
    assert load(a).crf == 20


def test_full_file(tmp_path):
    cfg = load(write(tmp_path, {
        "staging": "/s", "movies": "/m", "tv": "/t", "languages": ["eng", "bul"],
        "encoder": "hevc_qsv", "crf": 22, "preset": "veryslow", "stable_seconds": 30,
        "poll_seconds": 5, "concurrency": 2, "keep_source": False, "max_attempts": 5,
        "apprise_urls": ["json://localhost"], "metrics_port": 9464, "db": "/var/lib/x.db",
    }))
    assert cfg.languages == ("eng", "bul") and cfg.encoder == "hevc_qsv" and cfg.concurrency == 2
    assert cfg.encode_options().crf == 22 and cfg.apprise_urls == ("json://localhost",)


def test_languages_as_a_comma_string():
    assert from_dict({"languages": "en, bg"}).languages == ("en", "bg")


@pytest.mark.parametrize(
    "raw, fragments",
    [
        ({"crf": "18"}, ["'crf'", "integer", '"crf": 18']),
        ({"crf": 99}, ["'crf'", "0-51"]),
        ({"concurency": 2}, ["unknown key 'concurency'", "did you mean 'concurrency'"]),
        ({"keep_source": "yes"}, ["'keep_source'", "true or false"]),
        ({"staging": "staging"}, ["'staging'", "absolute path"]),
        ({"languages": []}, ["'languages'", "at least one"]),
        ({"languages": ["english!"]}, ["'languages'", "not ISO 639"]),
        ({"encoder": "nvenc"}, ["'encoder'", "libx265, hevc_qsv"]),
        ({"preset": "turbo"}, ["'preset'", "use one of"]),
        ({"encoder": "hevc_qsv", "preset": "ultrafast"}, ["'preset'", "hevc_qsv"]),
        ({"metrics_port": 70000}, ["'metrics_port'", "0-65535"]),
        ({"poll_seconds": 0}, ["'poll_seconds'", ">= 0.05"]),
        ({"concurrency": 0}, ["'concurrency'", "1-64"]),
        ({"apprise_urls": [1]}, ["'apprise_urls'", "list of strings"]),
        ({"staging": "/a", "movies": "/a/movies"}, ["'staging' and 'movies' overlap"]),
        ([1, 2], ["JSON object"]),
    ],
)
def test_errors_name_the_key_and_the_fix(raw, fragments):
    with pytest.raises(ConfigError) as err:
        from_dict(raw, where="/etc/media-pipeline/config.json")
    for fragment in fragments:
        assert fragment in str(err.value)


def test_bad_json_says_where(tmp_path):
    with pytest.raises(ConfigError, match=r"not valid JSON at line 2 column"):
        load(write(tmp_path, '{"crf": 18,\n  oops}'))


def test_render_merges_base_and_is_stable(tmp_path):
    base = write(tmp_path, {"apprise_urls": ["json://x"], "crf": 30, "staging": "/old"})
    out = render(["staging=/new", "crf=18", "keep_source=false", "languages=eng,bul",
                  "metrics_port=9464"], base=base)
    data = json.loads(out)
    assert data["staging"] == "/new" and data["crf"] == 18 and data["keep_source"] is False
    assert data["apprise_urls"] == ["json://x"] and data["languages"] == ["eng", "bul"]
    assert out == render(["staging=/new", "crf=18", "keep_source=false", "languages=eng,bul",
                          "metrics_port=9464"], base=base)
    assert from_dict(data) is not None


def test_render_rejects_bad_values():
    with pytest.raises(ConfigError, match="'crf'"):
        render(["crf=abc"])
    with pytest.raises(ConfigError, match="unknown key 'colour'"):
        render(["colour=blue"])


def test_config_cli(tmp_path, capsys):
    good = write(tmp_path, {"crf": 20})
    assert cfgmod.main(["check", good]) == 0
    bad = write(tmp_path, {"crf": -1}, "bad.json")
    assert cfgmod.main(["check", bad]) == 2
    assert "'crf'" in capsys.readouterr().err


def test_public_url_and_trusted_proxies():
    cfg = from_dict({"public_url": "https://media.example.lan:8443/", "trusted_proxies": ["127.0.0.1", "10.0.0.0/8"]})
    assert cfg.public_url == "https://media.example.lan:8443" and cfg.trusted_proxies == ("127.0.0.1", "10.0.0.0/8")
    assert from_dict({}).public_url == "" and from_dict({}).trusted_proxies == ()
    # as ct-install-pipeline.sh passes them: public_url=URL trusted_proxies=a,b ("" = none)
    data = json.loads(render(["public_url=https://media.example.lan", "trusted_proxies=127.0.0.1, ::1"]))
    assert data["public_url"] == "https://media.example.lan" and data["trusted_proxies"] == ["127.0.0.1", "::1"]
    data = json.loads(render(["public_url=", "trusted_proxies="]))
    assert data["public_url"] == "" and data["trusted_proxies"] == []


@pytest.mark.parametrize("raw, fragments", [
    ({"public_url": "media.example.lan"}, ["'public_url'", "http:// or https://", '"public_url": "https://']),
    ({"public_url": "ftp://media.example.lan"}, ["'public_url'", "http:// or https://"]),
    ({"public_url": "https://media.example.lan/media/"}, ["'public_url'", "root of its own host"]),
    ({"public_url": "https://user:pw@media.example.lan"}, ["'public_url'", "scheme://host[:port] only"]),
    ({"public_url": "https://media.example.lan:99999"}, ["'public_url'", "out of range"]),
    ({"public_url": 443}, ["'public_url'", "must be a string"]),
    ({"trusted_proxies": ["proxy.lan"]}, ["'trusted_proxies'", "'proxy.lan'", "not an IP address or network",
                                          '"trusted_proxies": ["127.0.0.1"]']),
    ({"trusted_proxies": [1]}, ["'trusted_proxies'", "list of strings"]),
])
def test_proxy_keys_errors_name_the_key_and_the_fix(raw, fragments):
    with pytest.raises(ConfigError) as err:
        from_dict(raw, where="/etc/media-pipeline/config.json")
    for fragment in fragments:
        assert fragment in str(err.value)
