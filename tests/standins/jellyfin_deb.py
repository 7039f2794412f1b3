"""Honest stand-ins for Jellyfin's packages (for tests/standins/apt_repo.py): they are not
Jellyfin and say so. They have the parts scripts/ct-install-jellyfin.sh relies on, after
jellyfin/jellyfin-packaging's debian/control and debian/jellyfin-server.postinst:
- jellyfin-server: the jellyfin system group and user (postinst), added to render and video
  when those groups exist (as the real postinst does), /var/lib/jellyfin, a unit file, and
  /usr/lib/jellyfin/bin/jellyfin, a script that prints that it is a stand-in;
- jellyfin-web: /usr/share/jellyfin/web/index.html;
- jellyfin-ffmpeg7: /usr/lib/jellyfin-ffmpeg/ffmpeg and vainfo, scripts that fail saying they
  are stand-ins (no hardware is proven by them).
"""

from __future__ import annotations

from pathlib import Path

from .apt_repo import Deb

VERSION = "0.1+standin1"
MARKER = "This is a stand-in for Jellyfin built by tests/standins/jellyfin_deb.py. It is not Jellyfin.\n"

POSTINST = """\
#!/bin/sh
set -e
# stand-in for jellyfin-server's postinst: the jellyfin group and user, render/video membership
if [ "$1" = configure ]; then
  getent group jellyfin >/dev/null || addgroup --quiet --system jellyfin
  getent passwd jellyfin >/dev/null || adduser --quiet --system --ingroup jellyfin --shell /bin/false \\
    --no-create-home --home /var/lib/jellyfin jellyfin
  if getent group render >/dev/null; then usermod -aG render jellyfin; fi
  if getent group video >/dev/null; then usermod -aG video jellyfin; fi
  mkdir -p /var/lib/jellyfin
  chown jellyfin /var/lib/jellyfin
fi
"""

UNIT = """\
# Stand-in unit (tests/standins/jellyfin_deb.py): NOT Jellyfin.
[Unit]
Description=Stand-in for Jellyfin (tests only)
[Service]
User=jellyfin
ExecStart=/usr/lib/jellyfin/bin/jellyfin
[Install]
WantedBy=multi-user.target
"""

FAIL = "#!/bin/sh\necho 'stand-in (tests/standins/jellyfin_deb.py): not jellyfin-ffmpeg' >&2\nexit 1\n"


def jellyfin_standins(version: str = VERSION) -> list[Deb]:
    return [
        Deb("jellyfin-server", version, {
            "/usr/lib/jellyfin/bin/jellyfin": "#!/bin/sh\necho 'stand-in jellyfin: not Jellyfin'\n",
            "/usr/share/jellyfin/STANDIN": MARKER,
            "/lib/systemd/system/jellyfin.service": UNIT,
        }, depends=["adduser"], scripts={"postinst": POSTINST}),
        Deb("jellyfin-web", version, {"/usr/share/jellyfin/web/index.html": "<p>stand-in, not Jellyfin</p>\n"},
            arch="all"),
        Deb("jellyfin-ffmpeg7", version, {
            "/usr/lib/jellyfin-ffmpeg/ffmpeg": FAIL,
            "/usr/lib/jellyfin-ffmpeg/vainfo": FAIL,
        }),
    ]


LAB_RECORD = "/var/lib/jellyfin/standin-calls.jsonl"


def lab_jellyfin_standins(version: str = VERSION) -> list[Deb]:
    """The lab's variant (lab/standin-repos.py): jellyfin-server runs the stand-in of Jellyfin's
    API (tests/standins/jellyfin.py) on port 8096 as the jellyfin user, and logs every call to
    LAB_RECORD, so a lab test sees what media-pipeline and the deploy asked of "Jellyfin"."""
    api = (Path(__file__).resolve().parent / "jellyfin.py").read_text()
    server, web, ffmpeg = jellyfin_standins(version)
    server = Deb("jellyfin-server", version, {
        "/usr/lib/jellyfin/standin/jellyfin_api.py": api,
        "/usr/lib/jellyfin/bin/jellyfin": (
            "#!/bin/sh\n# stand-in (tests/standins/jellyfin_deb.py): NOT Jellyfin; its API's stand-in\n"
            f"exec python3 /usr/lib/jellyfin/standin/jellyfin_api.py serve --bind 0.0.0.0 --port 8096 --record {LAB_RECORD}\n"
        ),
        "/usr/share/jellyfin/STANDIN": MARKER,
        "/lib/systemd/system/jellyfin.service": UNIT,
    }, depends=["adduser", "python3"], scripts={"postinst": POSTINST})
    return [server, web, ffmpeg]
