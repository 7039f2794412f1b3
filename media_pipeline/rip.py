"""media-rip: rip the disc in the optical drive into staging with MakeMKV, hands-free.

  media-rip once [--device /dev/srN | --drive SELECTOR] [--staging DIR] [--min-length SECONDS]
                 [--makemkvcon PATH]
                         rip the disc in the drive now
  media-rip run          the service: poll the drive, rip each new disc once, eject it
  media-rip status [--json]   the rips recorded (state, titles, sizes, time, failure reason)

Every title at least --min-length seconds long is ripped into a hidden working folder
STAGING/.rip-N/; only when every title is saved is the folder published, whole, as
STAGING/<disc name>/ (a second disc with the same name gets "<disc name> (2)/"), each file
with its .done marker, so media-pipeline takes it at once. A failed title publishes nothing.
A complete rip that cannot be published yet (a full pool, a read-only staging) is kept in its
working folder and published by `media-rip run` (at its start, then every minute).

The drive is `device` when set (a fixed node such as /dev/sr0), else the one `drive` names
(auto: the first; or a /dev/disk/by-id name, model or serial), found again at each poll as the
node's hookscript finds it: sr numbers follow the order the kernel found the drives at boot.

Exit codes of `once`:
  0  ripped and published
  1  cannot start (makemkvcon missing, database, staging missing, full or read-only)
  2  usage or config error
  3  no disc (the drive is empty or its tray is open)
  4  a title failed (nothing published; the reason is in `status`)
  5  no title is at least --min-length long (nothing ripped)
  6  MakeMKV refuses to work: its beta key expired / version too old (nothing ripped)
  7  ripped, but not published yet (kept in STAGING/.rip-N; `media-rip run` publishes it)
  8  MakeMKV's disc scan failed or was cut short (nothing recorded; scan it again)

MakeMKV is driven in robot mode (`makemkvcon -r`): docs/adr/0007-media-rip-makemkv-robot-mode.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sqlite3
import sys
import time

from . import __version__
from . import config as config_mod
from .common import InstanceLock, fmt_time, fmt_when, setup_logging
from .notify import Notifier
from .rip_service import Service, StatusFile
from .rip_store import RipStore
from .ripper import (
    EXIT_FAILED, EXIT_NAMES, EXIT_NO_TITLE, EXIT_OK, EXIT_PUBLISH, EXIT_START, EXIT_USAGE, RipError, Ripper,
)
from .rips import rip_record

# This module is media-rip's command line; the work is done in rip_robot (MakeMKV's robot mode read),
# rip_store (the rips table), ripper (scan, rip, publish, eject) and rip_service (`media-rip run`).

log = logging.getLogger("media-rip")


# --- status ---------------------------------------------------------------------------------

def status_table(rips: list[dict]) -> str:
    if not rips:
        return "no rips yet"
    rows = [("ID", "STATE", "STARTED", "TIME", "TITLES", "SIZE", "DISC", "RESULT")]
    for r in rips:
        took = fmt_time((r["finished"] or time.time()) - r["started"]) if r["started"] else "-"
        when = fmt_when(r["started"])
        result = r["folder"] if r["state"] == "done" else \
            f"{r['progress'] * 100:.0f}%" if r["state"] == "ripping" else r["reason"]
        rows.append((str(r["id"]), r["state"], when, took, str(len(r["titles"])),
                     f"{r['bytes'] / 1e9:.2f} GB" if r["bytes"] else "-", r["name"], result))
    widths = [max(len(row[i]) for row in rows) for i in range(7)]
    return "\n".join(("  ".join(row[i].ljust(widths[i]) for i in range(7)) + "  " + row[7]).rstrip()
                     for row in rows)


# --- command line ---------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="media-rip", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help=f"config file (default ${config_mod.RIP_ENV_VAR} or "
                                         f"{config_mod.RIP_DEFAULT_PATH})")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="cmd", required=True)
    once = sub.add_parser("once", help="rip the disc in the drive now (exit codes: see media-rip --help)",
                          epilog="exit codes: 0 ripped, 1 cannot start, 2 usage, 3 no disc, 4 a title failed, "
                                 "5 no title long enough, 6 MakeMKV key expired, 7 ripped but not published yet, "
                                 "8 the disc scan failed")
    drive = once.add_mutually_exclusive_group()
    drive.add_argument("--device", help="the drive's node, e.g. /dev/sr0 (default from the config)")
    drive.add_argument("--drive", metavar="SELECTOR",
                       help="the drive: auto (the first), or a /dev/disk/by-id name, model or serial")
    once.add_argument("--staging", help="where the rip is published")
    once.add_argument("--min-length", type=int, metavar="SECONDS", help="shortest title to rip")
    once.add_argument("--makemkvcon", metavar="PATH", help="the makemkvcon program")
    once.add_argument("--eject", action="store_true", help="eject the disc when done")
    run = sub.add_parser("run", help="the service: poll the drive, rip each new disc once")
    run.add_argument("--verbose", action="store_true")
    st = sub.add_parser("status", help="list rips")
    st.add_argument("--json", action="store_true")
    st.add_argument("--limit", type=int)
    for p in (once, run, st):
        p.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0) if exc.code in (0, None) else EXIT_USAGE

    try:
        cfg = config_mod.load_rip(args.config, required=args.cmd == "run")
        if args.cmd == "once":
            over = {k: v for k, v in (("device", args.device), ("staging", args.staging),
                                      ("min_length", args.min_length), ("makemkvcon", args.makemkvcon)) if v is not None}
            if args.drive is not None:  # a drive by name: looked up, not the config's fixed node
                over.update(drive=args.drive, device="")
            if over:
                cfg = config_mod.rip_from_dict({**cfg.to_json(), **over}, where="arguments")
    except config_mod.ConfigError as exc:
        print(f"media-rip: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE

    if args.cmd == "status":
        return _status(cfg, args)
    setup_logging(getattr(args, "verbose", False))
    if args.cmd == "run":
        service = Service(cfg)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, service.request_stop)
        try:
            return service.run()
        except (RuntimeError, OSError, sqlite3.Error) as exc:
            log.error("cannot start: %s", exc)
            return EXIT_START
    return _once(cfg, args.eject)


def _once(cfg: config_mod.RipConfig, eject: bool) -> int:
    store, lock = None, InstanceLock(cfg.db)
    try:
        os.makedirs(os.path.dirname(cfg.db), exist_ok=True)
        lock.acquire()  # one user of the drive and the store: the service, or this
        store = RipStore(cfg.db)
    except RuntimeError:
        log.error("media-rip run is watching %s and rips new discs itself; to rip by hand, stop it first "
                  "(systemctl stop media-rip)", cfg.device or f"drive {cfg.drive!r}")
        return EXIT_START
    except (OSError, sqlite3.Error) as exc:
        log.warning("not recording this rip (%s: %s)", cfg.db, exc)
    ripper = Ripper(cfg, store, Notifier(cfg.apprise_urls, log.warning))
    if store is not None:  # the page sees a rip by hand too (drive state: unknown, the service is stopped)
        status = StatusFile(cfg)
        drive = {"state": -1, "state_name": "unknown", "error": "", "last_poll": 0.0}
        ripper.on_change = lambda: status.publish(store, {**drive, "device": ripper.device, "current": ripper.current})
    signal.signal(signal.SIGTERM, lambda *_: ripper.stop())
    try:
        code = ripper.rip_disc()
    except RipError as exc:
        log.error("%s: %s", EXIT_NAMES.get(exc.code, exc.code), exc.reason)
        code = exc.code
    finally:
        if store is not None:
            store.close()
        lock.release()
    if eject and code in (EXIT_OK, EXIT_FAILED, EXIT_NO_TITLE, EXIT_PUBLISH):
        ripper.eject()
    return code


def _status(cfg: config_mod.RipConfig, args) -> int:
    rips: list[dict] = []
    if os.path.exists(cfg.db):
        try:
            store = RipStore(cfg.db, readonly=True)
            rips = store.list(args.limit)
            store.close()
        except sqlite3.Error as exc:
            print(f"media-rip: cannot read {cfg.db}: {exc}", file=sys.stderr)
            return EXIT_START
    rips = [rip_record(r) for r in rips]  # the status file's format (media_pipeline/rips.py)
    print(json.dumps(rips, indent=2, ensure_ascii=False) if args.json else status_table(rips))
    return 0


if __name__ == "__main__":
    sys.exit(main())
