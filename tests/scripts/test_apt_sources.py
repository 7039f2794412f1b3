"""ct-bootstrap-transcoder.sh --sources-only on copies of apt sources (one-line and deb822)."""

from __future__ import annotations

import os

import pytest

from .conftest import run

ONE_LINE = """\
# Debian 12 container template
deb http://deb.debian.org/debian bookworm main contrib
deb http://deb.debian.org/debian bookworm-updates main contrib
deb [arch=amd64] http://security.debian.org bookworm-security main contrib # security updates
#deb http://deb.debian.org/debian bookworm-backports main
deb-src http://deb.debian.org/debian bookworm main
deb http://apt-cache.lan:3142/debian bookworm main non-free-firmware
deb [signed-by=/etc/apt/keyrings/jellyfin.gpg] https://repo.jellyfin.org/debian bookworm main
deb https://download.docker.com/linux/debian bookworm stable
"""

ONE_LINE_EXPECTED = """\
# Debian 12 container template
deb http://deb.debian.org/debian bookworm main contrib non-free non-free-firmware
deb http://deb.debian.org/debian bookworm-updates main contrib non-free non-free-firmware
deb [arch=amd64] http://security.debian.org bookworm-security main contrib non-free non-free-firmware # security updates
#deb http://deb.debian.org/debian bookworm-backports main
deb-src http://deb.debian.org/debian bookworm main contrib non-free non-free-firmware
deb http://apt-cache.lan:3142/debian bookworm main non-free-firmware contrib non-free
deb [signed-by=/etc/apt/keyrings/jellyfin.gpg] https://repo.jellyfin.org/debian bookworm main
deb https://download.docker.com/linux/debian bookworm stable
"""

DEB822 = """\
Types: deb
# a local mirror
URIs: http://mirror.lan/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main contrib non-free non-free-firmware
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: https://deb.nodesource.com/node_20.x
Suites: nodistro
Components: main
Signed-By: /usr/share/keyrings/nodesource.gpg

Enabled: no
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
"""

DEB822_EXPECTED = DEB822.replace(
    "Suites: bookworm bookworm-updates\nComponents: main\n",
    "Suites: bookworm bookworm-updates\nComponents: main contrib non-free non-free-firmware\n",
)


@pytest.fixture
def apt(tmp_path):
    etc = tmp_path / "apt"
    (etc / "sources.list.d").mkdir(parents=True)
    osr = tmp_path / "os-release"
    osr.write_text('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nVERSION_CODENAME=bookworm\n')
    env = {"APT_ETC": str(etc), "OS_RELEASE": str(osr)}
    return etc, env


def sources_only(env):
    return run("ct-bootstrap-transcoder.sh", "--sources-only", env=env)


def test_one_line_sources(apt):
    etc, env = apt
    f = etc / "sources.list"
    f.write_text(ONE_LINE)
    os.chmod(f, 0o644)
    r = sources_only(env)
    assert r.rc == 0, r.err
    assert r.json == {"sources_changed": [str(f)], "changed": True}
    assert f.read_text() == ONE_LINE_EXPECTED
    assert os.stat(f).st_mode & 0o777 == 0o644
    st = os.stat(f)
    again = sources_only(env)
    assert again.json == {"sources_changed": [], "changed": False}
    assert os.stat(f).st_ino == st.st_ino and os.stat(f).st_mtime_ns == st.st_mtime_ns


def test_deb822_sources(apt):
    etc, env = apt
    f = etc / "sources.list.d/debian.sources"
    f.write_text(DEB822)
    r = sources_only(env)
    assert r.rc == 0, r.err
    assert r.json["sources_changed"] == [str(f)]
    assert f.read_text() == DEB822_EXPECTED
    assert sources_only(env).json["changed"] is False


def test_both_formats_and_third_party_list_untouched(apt):
    etc, env = apt
    (etc / "sources.list").write_text("deb http://deb.debian.org/debian bookworm main\n")
    (etc / "sources.list.d/debian.sources").write_text(DEB822)
    other = "deb [signed-by=/usr/share/keyrings/x.gpg] https://pkgs.example/debian bookworm main\n"
    (etc / "sources.list.d/example.list").write_text(other)
    r = sources_only(env)
    assert r.rc == 0, r.err
    assert sorted(r.json["sources_changed"]) == sorted(
        [str(etc / "sources.list"), str(etc / "sources.list.d/debian.sources")]
    )
    assert (etc / "sources.list").read_text() == (
        "deb http://deb.debian.org/debian bookworm main contrib non-free non-free-firmware\n"
    )
    assert (etc / "sources.list.d/example.list").read_text() == other


def test_other_release_lines_are_not_touched(apt):
    etc, env = apt
    text = "deb http://deb.debian.org/debian trixie main\n"
    (etc / "sources.list").write_text(text)
    r = sources_only(env)
    assert r.json["changed"] is False
    assert (etc / "sources.list").read_text() == text


def test_no_sources_is_an_error(apt):
    _, env = apt
    r = sources_only(env)
    assert r.rc == 1
    assert "no apt sources" in r.err
