"""`media-rip run`, the service: poll the drive, rip each newly inserted disc once and eject it;
after a restart, clean up or finish what was interrupted; publish the whole rips a full or read-only
pool held back; notify; write the status file the transcoder's status page reads and the media_rip_*
metrics. The rip itself is media_pipeline/ripper.py's.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import sqlite3
import threading
import time

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from . import __version__
from . import config as config_mod
from .common import InstanceLock, fmt_time
from .metrics import exposition, new_registry, publish_textfile, serve
from .notify import Notifier
from .rip_robot import DRIVE_EMPTY, DRIVE_INSERTED, DRIVE_LOADING, DRIVE_NONE, DRIVE_OPEN, Scan
from .rip_store import RIP_STATES, RipStore
from .ripper import (
    EXIT_FAILED, EXIT_KEY, EXIT_NAMES, EXIT_OK, EXIT_PUBLISH, EXIT_SCAN, RETRY_SECONDS, WORKDIR_NAME, RipError,
    Ripper, disc_title, natural_key, remove_workdir,
)
from .rips import STATUS_RIPS, snapshot, write_status

STATUS_HEARTBEAT_SECONDS = 30.0  # the status file is rewritten at least this often (and every poll)

log = logging.getLogger("media-rip")


class Service:
    """Poll the drive; rip each newly inserted disc once; eject; record everything."""

    def __init__(self, cfg: config_mod.RipConfig, sysfs: str = "/sys", dev: str = "/dev"):
        self.cfg = cfg
        self.sysfs, self.dev = sysfs, dev  # where the drive is looked up (tests: fake trees)
        self.stop = threading.Event()
        self.store: RipStore | None = None
        self.ripper: Ripper | None = None
        self.last_state: int | None = None
        self.handled_present = False  # the disc now in the drive was handled (or seen at start)
        self.last_poll = 0.0
        self.drive_state_now = -1
        self.resume: dict[str, dict] = {}  # fingerprint -> a rip interrupted by a restart
        self.last_error = ""  # what keeps media-rip from ripping now (pool, drive); the status file shows it
        self.scan_error = ""
        self.retry_seconds = RETRY_SECONDS
        self.rescan_at: float | None = None  # monotonic time to scan again the disc whose scan failed
        self.retry_scan: Scan | None = None  # the disc whose rip could not start (pool full): retried, not rescanned
        self.rip_error = ""  # why that rip could not start, said (and notified) once
        self.next_publish = 0.0  # monotonic time of the next try of the rips a file error held back
        self.status = StatusFile(cfg)
        # media-rip's own registry: a collector that reads the rip store at each scrape
        self.registry = new_registry(RipCollector(self.metrics_families))

    def request_stop(self, *_args) -> None:
        self.stop.set()
        if self.ripper is not None:
            self.ripper.stop()

    def run(self) -> int:
        cfg = self.cfg
        os.makedirs(os.path.dirname(cfg.db), exist_ok=True)  # the container's own disk, never the pool
        lock = InstanceLock(cfg.db, "media-rip")
        lock.acquire()
        self.store = RipStore(cfg.db)
        notifier = Notifier(cfg.apprise_urls, log.warning)
        self.ripper = Ripper(cfg, self.store, notifier, self.sysfs, self.dev)
        self.ripper.on_change = self.publish_status
        server = None
        heartbeat = threading.Thread(target=self._heartbeat, daemon=True, name="status-file")
        try:
            if cfg.metrics_port:
                server = serve(self.registry, cfg.metrics_bind, cfg.metrics_port, cfg.metrics_allow)
                log.info("metrics on http://%s:%d/metrics", cfg.metrics_bind, server.port)
            log.info("media-rip %s: drive %s, staging %s, min length %s, auto-rip %s, eject %s, %s",
                     __version__, cfg.device or f"{cfg.drive!r} (looked up at each poll)", cfg.staging,
                     fmt_time(cfg.min_length), cfg.auto_rip, cfg.eject, notifier.describe())
            self.recover()
            if cfg.status_file:
                heartbeat.start()
                log.info("status file %s (the status page reads it)", cfg.status_file)
            while not self.stop.is_set():
                self.poll()
                self.retry_publishing()
                self.publish_metrics()
                self.publish_status()
                self.stop.wait(cfg.poll_seconds)
        finally:
            if server is not None:
                server.stop()
            self.publish_metrics()
            self.publish_status()
            if heartbeat.is_alive():
                heartbeat.join(timeout=5)
            self.store.close()
            lock.release()
        return 0

    def recover(self) -> None:
        """After a crash: no partial rip stays in staging; a whole rip whose publish failed or was cut
        short is published (or kept for the next try); an interrupted rip is ripped again when its disc
        is still there. A working folder no row claims is never removed: it is reported, once per start."""
        assert self.store is not None
        for rip in self.store.unfinished():
            if rip["state"] == "publishing":
                self.publish_pending(rip, at_start=True)
                continue
            work, removed = rip["workdir"], "partial files removed"
            if work:
                try:
                    remove_workdir(work, self.cfg.staging)  # the interrupted rip's own partial folder
                except OSError as exc:
                    removed = f"its partial folder {work} could not be removed ({exc}): delete it"
            self.store.update(rip["id"], state="failed", reason=f"interrupted (service restarted); {removed}; the "
                              "disc is ripped again if it is still in the drive",
                              exit_code=EXIT_FAILED, finished=time.time())
            log.warning("[rip %d] %r was interrupted by a restart: %s", rip["id"], rip["name"], removed)
            self.resume[rip["fingerprint"]] = rip
        self.next_publish = time.monotonic() + self.retry_seconds
        self.report_strays()

    def report_strays(self) -> None:
        """Working folders no row claims (a fresh or restored database, a rip by hand without one): they
        may hold whole rips, so they are left as they are and named in the log, once per start. A row's
        workdir column says which folder is its own (a failed rip's kept files stay with its reason)."""
        assert self.store is not None
        try:
            entries = sorted((e for e in os.listdir(self.cfg.staging) if WORKDIR_NAME.fullmatch(e)), key=natural_key)
        except OSError:
            return  # staging missing or unreadable: poll() says so
        # a done row's folder was renamed away: what is at its old workdir path now is not its own
        claimed = {os.path.abspath(r["workdir"]) for r in self.store.list()
                   if r["workdir"] and r["state"] in ("ripping", "publishing", "failed")}
        for entry in entries:
            path = os.path.join(self.cfg.staging, entry)
            if os.path.abspath(path) not in claimed:
                log.warning("%s: not in media-rip's database: left as it is; move it to %s/<name>/ to publish it, "
                            "or delete it", path, self.cfg.staging)

    def _held(self, rip: dict, reason: str, at_start: bool) -> None:
        """A whole rip that cannot be published now: kept (state publishing) with the reason, said once."""
        assert self.store is not None
        if reason != rip["reason"]:
            self.store.update(rip["id"], state="publishing", reason=reason)
            self.publish_status()
        if reason != rip["reason"] or at_start:  # once per problem (and once per start), not per try
            log.error("[rip %d] %r: %s", rip["id"], rip["name"], reason)

    def publish_pending(self, rip: dict, at_start: bool = False) -> None:
        """Publish a whole rip whose publish failed or was cut short; a file error keeps it for the next try."""
        assert self.ripper is not None and self.store is not None
        work = rip["workdir"]
        if not os.path.isdir(self.cfg.staging):
            return  # the pool is not mounted (poll() says so): its rip waits with it
        try:
            if not work:
                raise FileNotFoundError(errno.ENOENT, "no working folder recorded")
            os.stat(work)
        except FileNotFoundError:
            self._published_before(rip, at_start)  # gone: the rename happened before a restart, or not
            return
        except OSError as exc:  # EACCES, EIO, ENOTCONN (a mergerfs branch offline): there, not readable now
            self._held(rip, f"ripped, not published yet: its working folder {work} cannot be read now: {exc}; the "
                            f"whole rip is kept and `media-rip run` publishes it (at its start, then every "
                            f"{RETRY_SECONDS:.0f} s); fix: bring the pool's disk back (is a mergerfs branch offline?)",
                       at_start)
            return
        try:
            folder, count, total = self.ripper.publish_rip(rip["id"], work, rip["name"], reported=rip["reason"])
        except RipError as exc:
            if exc.reason != rip["reason"] or at_start:  # once per problem (and once per start), not per try
                log.error("[rip %d] %r: %s", rip["id"], rip["name"], exc.reason)
            return
        waited = f"it waited: {rip['reason']}" if rip["reason"] else "its publish was cut short by a restart"
        log.info("[rip %d] published %s: %d file(s), %.1f MB (%s)", rip["id"], folder, count, total / 1e6, waited)
        if rip["reason"]:  # the notifier was told it waits: tell it the wait is over
            self.ripper.notifier.send("Rip published", f"{rip['name']}\n{folder}\n{count} title(s), "
                                                       f"{total / 1e9:.2f} GB, kept until staging took it")

    def _published_before(self, rip: dict, at_start: bool) -> None:
        """A publishing row whose working folder is gone: done only when STAGING/<name> or '<name> (N)'
        holds its files (and no other row claims that folder); else failed, saying so, never done."""
        assert self.ripper is not None and self.store is not None
        staging, name, work = self.cfg.staging, rip["name"], rip["workdir"]
        files = [t["file"] for t in rip["titles"] if t.get("file")]
        try:
            entries = os.listdir(staging)
        except OSError as exc:
            self._held(rip, f"ripped, not published yet: staging {staging} cannot be read now: {exc}; `media-rip "
                            f"run` tries again every {RETRY_SECONDS:.0f} s", at_start)
            return
        others = {os.path.abspath(r["folder"]) for r in self.store.list() if r["folder"] and r["id"] != rip["id"]}
        pattern = re.compile(re.escape(name) + r"(?: \((\d+)\))?")
        found = []
        for entry in entries:
            m = pattern.fullmatch(entry)
            folder = os.path.join(staging, entry)
            if not m or os.path.abspath(folder) in others or not os.path.isdir(folder):
                continue
            if all(os.path.isfile(os.path.join(folder, f)) for f in files):
                found.append((int(m[1] or 1), folder))
        if found:
            folder = max(found)[1]  # several: the newest name (publish takes the first free one)
            try:
                total = sum(os.path.getsize(os.path.join(folder, f)) for f in files)
            except OSError:
                total = rip["bytes"]
            self.ripper.finish(rip["id"], "done", "", EXIT_OK, folder=folder, nbytes=total)
            log.info("[rip %d] %r was published before a restart: %s", rip["id"], name, folder)
            return
        reason = (f"its working folder {work or '(none recorded)'} is gone and no folder "
                  f"{os.path.join(staging, name)} (or '{name} (N)') holds its files "
                  f"({', '.join(files) or 'none named'}): "
                  f"it was moved or deleted outside media-rip (or media-pipeline took it already); nothing is left "
                  f"to publish: put the disc in again to rip it again")
        self.ripper.finish(rip["id"], "failed", reason, EXIT_FAILED)
        log.error("[rip %d] %r: %s", rip["id"], name, reason)
        self.ripper.notifier.send("Rip lost", f"{name}\n{reason}")

    def retry_publishing(self) -> None:
        """Every retry_seconds while the service runs: publish the whole rips a file error held back."""
        assert self.store is not None
        now = time.monotonic()
        if now < self.next_publish:
            return
        self.next_publish = now + self.retry_seconds
        for rip in self.store.unfinished():
            if rip["state"] == "publishing":
                self.publish_pending(rip)

    def _report(self, problem: str) -> None:
        """What keeps media-rip from ripping now: logged when it starts and when it ends, not at every poll."""
        if problem and problem != self.last_error:
            log.error("%s", problem)
        elif not problem and self.last_error:
            log.info("problem gone: %s", self.last_error)
        self.last_error = problem

    def poll(self) -> None:
        assert self.ripper is not None and self.store is not None
        self.last_poll = time.time()
        problem = "" if os.path.isdir(self.cfg.staging) else (
            f"staging {self.cfg.staging} does not exist: is the pool mounted? media-rip waits and rips nothing "
            f"until it appears (it never creates it: a rip would fill the container's root disk); fix: mount the "
            f"pool in the ripper container, or set \"staging\" in media-rip's config ({config_mod.RIP_DEFAULT_PATH})")
        before = self.ripper.device
        state, label = DRIVE_NONE, ""
        if not problem:
            problem = self.ripper.find_device()
        if not problem:
            try:
                state, label, _ = self.ripper.drive_state()
            except RipError as exc:
                problem = exc.reason
        if problem:
            if not self.stop.is_set():  # a drive list killed by the stop request is no problem
                self._report(problem)
            self.drive_state_now, self.last_state = -1, None
            return
        self._report("")
        if self.ripper.device != before:  # another node now: what is in it was not handled under this name
            self.last_state = None
        self.drive_state_now = state
        if state != self.last_state:
            log.info("drive %s: %s%s", self.ripper.device, _STATE_NAMES.get(state, str(state)),
                     f" ({label})" if label else "")
        changed = state != self.last_state
        self.last_state = state
        if state != DRIVE_INSERTED:
            self.handled_present, self.rescan_at, self.retry_scan = False, None, None
            return
        rescan = self.rescan_at is not None and time.monotonic() >= self.rescan_at
        if not changed and self.handled_present and not rescan:
            return
        retry = None if changed else self.retry_scan  # another disc (or node) is scanned afresh
        self.handled_present, self.rescan_at, self.retry_scan = True, None, None
        self.handle_disc(retry)

    def handle_disc(self, retry: Scan | None = None) -> None:
        """The disc in the drive: scanned (or `retry`, the scan of the disc whose rip could not start), ripped."""
        ripper, store, cfg = self.ripper, self.store, self.cfg
        try:
            scan = retry if retry is not None else ripper.scan_disc()
        except RipError as exc:
            if self.stop.is_set():
                log.info("scan of the disc in %s interrupted by shutdown: nothing recorded, scanned again at the "
                         "next start", ripper.device)
                return
            if exc.reason != self.scan_error:  # once per problem, not once per try
                log.error("%s", exc.reason)
            self.scan_error = exc.reason
            if exc.code == EXIT_SCAN:  # unrecorded: scanned again, not at every poll
                self.rescan_at = time.monotonic() + self.retry_seconds
            return
        self.scan_error = ""
        fp, name = scan.fingerprint(), disc_title(scan)
        latest = store.latest(fp)
        resume = self.resume.pop(fp, None)
        if latest is not None and latest["state"] == "done":
            log.info("disc %r was ripped already (rip %d, %s): not ripping it twice", name, latest["id"],
                     latest["folder"])
            self.maybe_eject()
            return
        if latest is not None and latest["state"] == "publishing":
            log.info("disc %r was ripped already (rip %d, kept in %s until it is published): not ripping it twice",
                     name, latest["id"], latest["workdir"])
            self.maybe_eject()
            return
        if not cfg.auto_rip:
            log.info("disc %r is in the drive; auto_rip is off: rip it with `media-rip once`", name)
            return
        try:
            ripper.rip_disc(scan, resume=resume)
        except RipError as exc:
            if exc.retry:
                # nothing ripped (the pool refused the working folder): the disc stays in, its row is
                # taken up again at the next try (RETRY_SECONDS), said and notified once per problem
                if exc.reason != self.rip_error:
                    log.error("rip of %r not started: %s", name, exc.reason)
                    ripper.notifier.send("Rip not started", f"{name}\n{exc.reason}")
                self.rip_error = exc.reason
                failed = store.latest(fp)
                if failed is not None and failed["state"] == "failed":
                    self.resume[fp] = failed
                self.retry_scan, self.rescan_at = scan, time.monotonic() + self.retry_seconds
                return
            self.rip_error = ""
            if exc.code == EXIT_PUBLISH:
                log.error("rip of %r: %s", name, exc.reason)
            elif self.stop.is_set():
                log.info("rip of %r interrupted by shutdown; partial files removed, ripped again at the next start",
                         name)
                return
            else:
                log.error("rip of %r failed (%s): %s", name, EXIT_NAMES.get(exc.code, exc.code), exc.reason)
                if exc.code in (EXIT_FAILED, EXIT_KEY):
                    ripper.notifier.send("Rip failed", f"{name}\n{exc.reason}")
        else:
            self.rip_error = ""
        self.maybe_eject()

    def maybe_eject(self) -> None:
        if self.cfg.eject and not self.stop.is_set() and self.ripper.eject():
            # the tray is open now: whatever is in the drive at the next poll was put in after
            self.last_state, self.handled_present, self.drive_state_now = DRIVE_OPEN, False, DRIVE_OPEN
            self.publish_status()

    # -- metrics (media_rip_*; served and written like media-pipeline's) ----------------------

    def metrics_families(self) -> list:
        if self.store is None:
            return []
        return rip_families(self.store.counts(), self.store.totals(),
                            self.ripper.current if self.ripper else None, self.drive_state_now, self.last_poll)

    def metrics_text(self) -> str:
        return exposition(self.registry)

    def publish_metrics(self) -> None:
        if self.store is not None:
            publish_textfile(self.cfg.metrics_textfile, self.registry, log)

    # -- the status file (the transcoder's status page reads it; media_pipeline/rips.py) ------

    def drive_status(self) -> dict:
        return {"device": self.ripper.device if self.ripper else self.cfg.device, "state": self.drive_state_now,
                "state_name": _STATE_NAMES.get(self.drive_state_now, "unknown"), "error": self.last_error,
                "last_poll": round(self.last_poll, 3), "current": self.ripper.current if self.ripper else None}

    def publish_status(self) -> None:
        if self.store is not None:
            self.status.publish(self.store, self.drive_status())

    def _heartbeat(self) -> None:
        """Rewrite the status file while a rip blocks the poll loop (progress; proof of life)."""
        while not self.stop.wait(min(self.cfg.poll_seconds, STATUS_HEARTBEAT_SECONDS)):
            self.publish_status()


class StatusFile:
    """media-rip's side of the status file: the newest rips and the drive, replaced atomically."""

    def __init__(self, cfg: config_mod.RipConfig):
        self.path = cfg.status_file
        self._lock = threading.Lock()  # the poll loop and the heartbeat: one writer at a time
        self._problem = ""

    def publish(self, store: RipStore, drive: dict) -> None:
        if not self.path:
            return
        with self._lock:
            try:
                rows = store.list(STATUS_RIPS)
                current = drive.get("current")
                current = dict(current) if current else None
                if current is not None:
                    eta = current.get("eta")
                    current["eta"] = round(eta, 1) if isinstance(eta, float) and eta == eta and eta != float("inf") \
                        else None  # JSON has no NaN
                    for row in rows:  # the running rip's live progress (the store has it at the end)
                        if row["id"] == current.get("id"):
                            row["progress"] = round(float(current.get("progress") or 0.0), 4)
                write_status(self.path, snapshot(rows, {**drive, "current": current}, version=__version__))
            except (OSError, sqlite3.Error) as exc:
                problem = f"cannot write the status file {self.path}: {exc}"
                if problem != self._problem:  # once per problem, not once per poll
                    log.warning("%s", problem)
                self._problem = problem
                return
            if self._problem:
                log.info("status file %s written again", self.path)
            self._problem = ""


_STATE_NAMES = {DRIVE_EMPTY: "empty", DRIVE_OPEN: "tray open", DRIVE_INSERTED: "disc inserted",
                DRIVE_LOADING: "loading", DRIVE_NONE: "no such drive"}


class RipCollector:
    """prometheus_client collector of the families a function gives at each scrape."""

    def __init__(self, families):
        self.families = families

    def describe(self):
        return []

    def collect(self):
        return iter(self.families())


def rip_families(counts: dict[str, int], totals: dict[str, float], current: dict | None, drive_state: int,
                 last_poll: float) -> list:
    info = GaugeMetricFamily("media_rip_info", "Version of the running media-rip.", labels=["version"])
    info.add_metric([__version__], 1)
    rips = GaugeMetricFamily("media_rip_rips", "Rips in the database, by state.", labels=["state"])
    for state in RIP_STATES:
        rips.add_metric([state], counts.get(state, 0))
    # finished rips by outcome, for alerting (monitoring/prometheus/alerts.yml: a failed rip)
    outcomes = CounterMetricFamily("media_rip_rips_finished", "Rips that ended, by outcome.", labels=["outcome"])
    outcomes.add_metric(["ripped"], counts.get("done", 0))
    outcomes.add_metric(["failed"], counts.get("failed", 0))
    progress = GaugeMetricFamily("media_rip_progress_ratio", "Progress of the running rip (0-1).", labels=["disc"])
    if current:
        progress.add_metric([current["name"]], round(current.get("progress", 0.0), 4))
    return [
        info, rips, outcomes,
        CounterMetricFamily("media_rip_ripped_bytes", "Bytes published to staging by successful rips.",
                            value=totals["bytes"]),
        CounterMetricFamily("media_rip_rip_wall_seconds", "Wall-clock seconds spent in successful rips.",
                            value=round(totals["seconds"], 3)),
        GaugeMetricFamily("media_rip_drive_state",
                          "MakeMKV drive state: 0 empty, 1 tray open, 2 disc, 3 loading, 256 none, -1 unknown.",
                          value=drive_state),
        progress,
        GaugeMetricFamily("media_rip_last_poll_timestamp_seconds", "When the drive was last polled.",
                          value=round(last_poll, 3)),
    ]


def render_metrics(counts: dict[str, int], totals: dict[str, float], current: dict | None, drive_state: int,
                   last_poll: float) -> str:
    """The exposition text of these values (what /metrics answers)."""
    families = rip_families(counts, totals, current, drive_state, last_poll)
    return exposition(new_registry(RipCollector(lambda: families)))
