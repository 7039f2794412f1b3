"""Apprise is optional: library, else CLI, else a log line; a failure never raises."""

import builtins
import os
import stat

from media_pipeline.notify import Notifier


def no_apprise_module(monkeypatch):
    real = builtins.__import__

    def fake(name, *a, **k):
        if name == "apprise":
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)


def test_off_without_urls():
    logs = []
    n = Notifier([], logs.append)
    assert n.mode == "off" and not n.send("t", "b") and logs == []
    assert "no apprise_urls" in n.describe()


def test_disabled_when_apprise_missing(monkeypatch, tmp_path):
    no_apprise_module(monkeypatch)
    monkeypatch.setenv("PATH", str(tmp_path))
    logs = []
    n = Notifier(["json://localhost"], logs.append)
    assert n.mode == "off" and not n.send("t", "b")
    assert any("notifications disabled" in line for line in logs)


def test_cli_used_when_module_missing(monkeypatch, tmp_path):
    no_apprise_module(monkeypatch)
    record = tmp_path / "args"
    cli = tmp_path / "apprise"
    cli.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{record}"\nprintf "%s" "$APPRISE_URLS" > "{record}.env"\n')
    cli.chmod(cli.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    n = Notifier(["json://localhost/x", "tgram://bottoken/ChatID"], print)
    assert n.mode == "cli"
    assert n.send("Transcode finished", "Heat (1995).mkv")
    # the URLs (tokens) are not in argv, which `ps` shows every user, but in APPRISE_URLS
    assert record.read_text().splitlines() == ["-t", "Transcode finished", "-b", "Heat (1995).mkv"]
    assert (tmp_path / "args.env").read_text() == "json://localhost/x tgram://bottoken/ChatID"
    assert "APPRISE_URLS" not in os.environ  # only the child's environment has them


def test_cli_failure_is_logged_not_raised(monkeypatch, tmp_path):
    no_apprise_module(monkeypatch)
    cli = tmp_path / "apprise"
    cli.write_text("#!/bin/sh\necho 'bad url' >&2\nexit 1\n")
    cli.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    logs = []
    assert not Notifier(["bad://"], logs.append).send("t", "b")
    assert any("bad url" in line for line in logs)


def test_library_used_when_importable(monkeypatch):
    import sys
    import types

    sent = []

    class FakeApprise:
        def __init__(self):
            self.urls = []

        def add(self, url):
            self.urls.append(url)

        def notify(self, title, body):
            sent.append((self.urls, title, body))
            return True

    monkeypatch.setitem(sys.modules, "apprise", types.SimpleNamespace(Apprise=FakeApprise))
    n = Notifier(["tgram://a/b"], print)
    assert n.mode == "library" and n.send("T", "B")
    assert sent == [(["tgram://a/b"], "T", "B")]
