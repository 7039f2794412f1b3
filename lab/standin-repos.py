#!/usr/bin/env python3
"""The lab's stand-in apt repositories for vendors this machine cannot reach (Grafana's, Jellyfin's).

    standin-repos.py serve --bind 10.99.0.1 --record DIR   # lab/lab-up.sh starts it in the node's network

Each is a signed repository built by tests/standins/apt_repo.py, holding the honest stand-in
packages of tests/standins/ (they say they are not Grafana or Jellyfin), signed with the lab's
throwaway key lab/standin-key.asc, whose fingerprint Pulumi.lab.yaml pins exactly as a stack pins
the vendor's. Ports (Pulumi.lab.yaml): Grafana's on 18080 (`stable main`, key at /gpg.key, as
apt.grafana.com), Jellyfin's on 18081 (`bookworm main`, key at /jellyfin_team.gpg.key, as
repo.jellyfin.org/debian). Every request is appended to DIR/<name>.jsonl; a request for a path a
repository does not have is marked unknown, so tests can assert apt asked for nothing else.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.standins.apt_repo import AptRepo, Signer  # noqa: E402

KEY = ROOT / "lab" / "standin-key.asc"
PORTS = {"grafana": 18080, "jellyfin": 18081}


def repositories(record: Path) -> dict[str, AptRepo]:
    from tests.standins.grafana_deb import grafana_standin
    from tests.standins.jellyfin_deb import lab_jellyfin_standins

    signer = Signer(secret_key=KEY.read_bytes())
    return {
        "grafana": AptRepo([grafana_standin()], suite="stable", component="main", key_path="/gpg.key",
                           signer=signer, record=record / "grafana.jsonl"),
        "jellyfin": AptRepo(lab_jellyfin_standins(), suite="bookworm", component="main",
                            key_path="/jellyfin_team.gpg.key", signer=signer, record=record / "jellyfin.jsonl"),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    serve = sub.add_parser("serve", help="build and serve the repositories until SIGTERM")
    serve.add_argument("--bind", default="10.99.0.1")
    serve.add_argument("--record", type=Path, required=True, help="directory for the request logs")
    sub.add_parser("fingerprint", help="print the lab key's fingerprint")
    args = ap.parse_args(argv)
    if args.cmd == "fingerprint":
        signer = Signer(secret_key=KEY.read_bytes())
        print(signer.fingerprint)
        signer.close()
        return 0
    args.record.mkdir(parents=True, exist_ok=True)
    repos = repositories(args.record)
    for name, repo in repos.items():
        repo.start(args.bind, PORTS[name])
        print(f"{name}: {repo.url} (key {repo.fingerprint})", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    for repo in repos.values():
        repo.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
