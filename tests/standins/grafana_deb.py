"""An honest stand-in for Grafana's `grafana` .deb (for tests/standins/apt_repo.py): it is not
Grafana and says so everywhere. It has the parts of the real package that
scripts/ct-install-grafana.sh relies on:

- the grafana system user and group, made in postinst (as the real postinst does),
  /var/lib/grafana and /var/log/grafana owned by them;
- /etc/grafana/grafana.ini (a conffile, 0640 root:grafana after postinst) and
  /etc/grafana/provisioning/{datasources,dashboards}/sample.yaml;
- /lib/systemd/system/grafana-server.service, not enabled or started by postinst
  (Grafana's package leaves that to the admin);
- /usr/sbin/grafana-server: a tiny Python HTTP server answering /api/health;
- /usr/sbin/grafana-cli: only `[--homepath P] [--config F] admin reset-admin-password
  (--password-from-stdin | PASSWORD)`, anything else fails. It needs the database
  (/var/lib/grafana/grafana.db) to exist, as the real one needs the admin user in it, stores
  the password's SHA-256 there, and logs its argv to /var/lib/grafana/standin-cli-argv.log
  so tests can check no password was passed as an argument;
- /usr/share/grafana/STANDIN, a marker.
"""

from __future__ import annotations

from .apt_repo import Deb

VERSION = "0.1+standin1"

MARKER = "This is a stand-in for Grafana built by tests/standins/grafana_deb.py. It is not Grafana.\n"

SERVER = """\
#!/usr/bin/python3
# Stand-in grafana-server (tests/standins/grafana_deb.py): NOT Grafana. Answers /api/health only.
import configparser, http.server, json, sys

config = "/etc/grafana/grafana.ini"
for a in sys.argv[1:]:
    if a.startswith("--config="):
        config = a.split("=", 1)[1]
ini = configparser.ConfigParser(interpolation=None, strict=False)
ini.read(config)
addr = ini.get("server", "http_addr", fallback="") or "0.0.0.0"
port = ini.getint("server", "http_port", fallback=3000)


class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path != "/api/health":
            self.send_error(404, "stand-in grafana-server serves only /api/health")
            return
        body = json.dumps({"database": "ok", "version": "%VERSION%", "standin": True}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


http.server.ThreadingHTTPServer((addr, port), H).serve_forever()
""".replace("%VERSION%", VERSION)

CLI = """\
#!/usr/bin/python3
# Stand-in grafana-cli (tests/standins/grafana_deb.py): NOT Grafana's. Supports only
# [--homepath P] [--config F] admin reset-admin-password (--password-from-stdin | PASSWORD).
import hashlib, json, os, sys

DB = "/var/lib/grafana/grafana.db"
with open("/var/lib/grafana/standin-cli-argv.log", "a") as log:
    log.write(json.dumps(sys.argv) + "\\n")
args = sys.argv[1:]
while args and args[0] in ("--homepath", "--config"):
    args = args[2:]
if args[:2] != ["admin", "reset-admin-password"] or len(args) != 3:
    sys.exit("stand-in grafana-cli: supports only `admin reset-admin-password (--password-from-stdin | PASSWORD)`, got: "
             + " ".join(sys.argv[1:]))
if args[2] == "--password-from-stdin":
    password = sys.stdin.readline().rstrip("\\n")
else:
    password = args[2]
if len(password) < 4:
    sys.exit("Error: new password is too short")
if not os.path.exists(DB):
    sys.exit("Error: could not read user from database (stand-in: no " + DB + ")")
with open(DB, "w") as db:
    json.dump({"standin": True, "admin_password_sha256": hashlib.sha256(password.encode()).hexdigest()}, db)
print("Admin password changed successfully (stand-in)")
"""

UNIT = """\
# Stand-in unit (tests/standins/grafana_deb.py): runs the stand-in grafana-server, NOT Grafana.
[Unit]
Description=Stand-in for Grafana (tests only)
After=network-online.target

[Service]
User=grafana
Group=grafana
ExecStart=/usr/sbin/grafana-server --config=/etc/grafana/grafana.ini --homepath=/usr/share/grafana
Restart=on-failure

[Install]
WantedBy=multi-user.target
"""

POSTINST = """\
#!/bin/sh
set -e
# stand-in for Grafana's postinst: the grafana system group and user, its directories
if [ "$1" = configure ]; then
  getent group grafana >/dev/null || addgroup --quiet --system grafana
  getent passwd grafana >/dev/null || adduser --quiet --system --home /usr/share/grafana --no-create-home \\
    --ingroup grafana --disabled-password --shell /bin/false grafana
  mkdir -p /var/lib/grafana /var/log/grafana
  chown grafana:grafana /var/lib/grafana /var/log/grafana
  chmod 755 /var/lib/grafana /var/log/grafana
  chown root:grafana /etc/grafana /etc/grafana/grafana.ini
  chmod 755 /etc/grafana
  chmod 640 /etc/grafana/grafana.ini
  echo "### stand-in for Grafana: NOT starting on installation (as Grafana's package: systemctl enable --now grafana-server)"
fi
"""

SAMPLE = "# stand-in for Grafana's sample provisioning file (tests/standins/grafana_deb.py): all comments\n# apiVersion: 1\n"


def grafana_standin(version: str = VERSION) -> Deb:
    return Deb(
        "grafana",
        version,
        {
            "/usr/sbin/grafana-server": SERVER,
            "/usr/sbin/grafana-cli": CLI,
            "/usr/share/grafana/STANDIN": MARKER,
            "/etc/grafana/grafana.ini": "# stand-in for Grafana's grafana.ini (tests/standins/grafana_deb.py)\n"
                                        "# everything here is a comment, as in Grafana's own file\n",
            "/etc/grafana/provisioning/datasources/sample.yaml": SAMPLE,
            "/etc/grafana/provisioning/dashboards/sample.yaml": SAMPLE,
            "/lib/systemd/system/grafana-server.service": UNIT,
        },
        depends=["adduser", "python3"],
        scripts={"postinst": POSTINST},
        description="stand-in for Grafana (tests only, NOT Grafana)\n"
                    " Built by tests/standins/grafana_deb.py to test scripts/ct-install-grafana.sh.",
    )
