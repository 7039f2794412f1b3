"""media-pipeline: watch staging, transcode finished rips into the library, remember every job.

  media-pipeline run [--once]      the service (systemd runs it); --once: do what is ready, exit
  media-pipeline status [--json]   the job table
  media-pipeline workers [--json]  the workers of the queue: name, host, encoder, job, fps, heartbeat
  media-pipeline retry ID...       put failed (or cancelled) jobs back in the queue with fresh attempts
  media-pipeline migrate --from SQLITE --to URL   move a SQLite job store into PostgreSQL (idempotent)

Exit codes: 0 ok, 1 cannot start (another instance, staging missing, database), 2 config error.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import signal
import sqlite3
import sys
import threading
import time
import traceback

from . import __version__, jellyfin, naming
from . import config as config_mod
from .common import MARKER, InstanceLock, fmt_time, fmt_when, setup_logging
from .gpu_usage import GpuSampler, GpuUsage
from .jobqueue import LeaseLost, QueueUnavailable, is_url, open_store
from .jobs import STATES, Job, JobStore
from .metrics import (JobEvents, PipelineCollector, Snapshot, disk_usage, new_registry, publish_textfile,
                      sample_gpu, serve)
from .notify import Notifier
from .transcode import (
    EXIT_ENCODE, EXIT_INTERRUPTED, EXIT_NAMES, EXIT_OUTPUT, Progress, TranscodeError,
    file_stamp, format_progress, publish, stamp_of, temp_path, transcode,
)

VIDEO_EXTENSIONS = {".mkv", ".m2ts", ".mts", ".ts", ".mp4", ".m4v", ".avi", ".mov", ".webm",
                    ".mpg", ".mpeg", ".vob"}
PROGRESS_LOG_SECONDS = 60.0
PROGRESS_DB_SECONDS = 5.0
# A worker that lost a job's lease says so, and discards its output with these words.
DISCARDED = "no longer owns the job (its lease expired and another worker took it over): its output is discarded, nothing published"
# Failures worth another try: the encoder or the output (disk full, NFS hiccup), not the input.
RETRYABLE = {EXIT_ENCODE, EXIT_OUTPUT}
# The pool's top-level folders: made when the pool is set up, never by the service (if one is
# missing, the pool is not mounted, and creating it would put the library on the container's disk).
POOL_DIRS = ("staging", "movies", "tv")
# At exit, seconds given to Jellyfin refreshes still queued or retrying (run --once waits for the
# retries to play out; a stop must not keep systemd waiting).
REFRESH_GRACE_ONCE = 60.0
REFRESH_GRACE_STOP = 5.0

log = logging.getLogger("media-pipeline")


def markers_for(path: str) -> list[str]:
    """`Movie.mkv.done` or `Movie.done`: written by the ripper when the rip is complete."""
    return [path + MARKER, os.path.splitext(path)[0] + MARKER]


def make_dirs_below(root: str, path: str) -> None:
    """Create the missing folders of `path` below `root` (tv/<Show>/Season NN), never `root` itself.

    One mkdir per level, so a root that vanishes meanwhile (the pool unmounted) makes this fail
    with ENOENT instead of recreating it on whatever disk is underneath.
    """
    rel = os.path.relpath(path, root)
    if rel == os.pardir or rel.startswith(os.pardir + os.sep):
        raise ValueError(f"{path} is not below {root}")
    if not os.path.isdir(root):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), root)
    current = root
    for part in [] if rel == os.curdir else rel.split(os.sep):
        current = os.path.join(current, part)
        try:
            os.mkdir(current, 0o755)
        except FileExistsError:
            if not os.path.isdir(current):
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), current) from None
        ensure_readable(current, directory=True)


def ensure_readable(path: str, directory: bool = False) -> None:
    """Add the bits a library reader needs (files at least 0644, folders 0755) if missing: an
    unprivileged Jellyfin container sees the media user's files as nobody:nogroup and reads them
    through the "other" bits. Best effort: a folder of someone else's is left as it is."""
    want = 0o755 if directory else 0o644
    try:
        mode = os.stat(path).st_mode & 0o7777
        if mode & want != want:
            os.chmod(path, mode | want)
    except OSError as exc:
        log.debug("cannot make %s readable for the library: %s", path, exc)


def missing_pool_dirs(cfg: config_mod.Config, keys=POOL_DIRS) -> list[str]:
    """The keys among `keys` whose directory does not exist (the pool is not mounted)."""
    return [key for key in keys if not os.path.isdir(getattr(cfg, key))]


def describe_missing(cfg: config_mod.Config, keys: list[str]) -> str:
    where = ", ".join(f"{key} {getattr(cfg, key)}" for key in keys)
    return f"{where} {'does' if len(keys) == 1 else 'do'} not exist (is the storage pool mounted?)"


def scan(staging: str, stable_seconds: float, require_marker: bool,
         now: float | None = None) -> list[tuple[str, int, int]]:
    """Rips that are complete: a marker exists, or size+mtime unchanged for stable_seconds.

    A file being written has its mtime bumped by every write, so "mtime older than
    stable_seconds" is "size and mtime stable for stable_seconds", and survives restarts.
    """
    now = time.time() if now is None else now
    ready = []
    for root, dirs, files in os.walk(staging):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in VIDEO_EXTENSIONS:
                continue
            path = os.path.join(root, name)
            try:
                st = os.stat(path)
            except OSError:
                continue
            if not os.path.isfile(path) or st.st_size == 0:
                continue
            marked = any(os.path.exists(m) for m in markers_for(path))
            if marked or (not require_marker and now - st.st_mtime >= stable_seconds):
                ready.append((path, st.st_size, st.st_mtime_ns))
    return ready


class _Either:
    """The cancel event of one job: the service stopping, or this worker losing the job's lease."""

    def __init__(self, stop: threading.Event, lost: threading.Event):
        self.stop, self.lost = stop, lost

    def is_set(self) -> bool:
        return self.stop.is_set() or self.lost.is_set()

    def wait(self, timeout: float) -> bool:
        self.stop.wait(timeout)
        return self.is_set()


class Service:
    def __init__(self, cfg: config_mod.Config, once: bool = False):
        self.cfg = cfg
        self.once = once
        self.stop = threading.Event()
        self.wake = threading.Event()
        self.store: JobStore | None = None  # a jobqueue.JobQueue (SQLite or PostgreSQL)
        self.workers: dict[int, threading.Thread] = {}
        self.owned: dict[int, tuple[Job, threading.Event]] = {}  # claimed jobs: their lease, "lost" event
        self.scanning = False  # this worker is the elected scanner of staging
        self.running: dict[int, dict] = {}  # job id -> {"source", "progress", "fps"}
        self.last_fps = 0.0
        self.last_speed = 0.0
        self.last_scan = 0.0
        self.notifier = Notifier(cfg.apprise_urls, log.warning)
        self._guard = threading.Lock()
        self.unusable: set[str] = set()  # names we warned about once
        self.pool_missing: list[str] = []  # POOL_DIRS keys missing at the last check (shown on the page)
        self.scan_problem = ""  # the last scan error, logged once
        self.gpu = GpuSampler(encoder=cfg.encoder)  # sampled at scrape time (gpu_usage.py)
        self.registry = new_registry(PipelineCollector(self.snapshot, self.gpu))
        self.events = JobEvents(self.registry)
        # tells Jellyfin about each published file, in a thread of its own (never delays or fails a job)
        self.refresher = jellyfin.LibraryRefresher(
            cfg.jellyfin_url, cfg.jellyfin_api_key_file, cfg.jellyfin_path_map, delays=cfg.jellyfin_retry_seconds,
            count=self.events.jellyfin_refresh, state_file=jellyfin.state_file_for(cfg.db), logger=log)

    # -- lifecycle -----------------------------------------------------------------

    def preflight(self) -> None:
        for key in ("staging", "movies", "tv"):
            path = getattr(self.cfg, key)
            if not os.path.isdir(path):
                raise RuntimeError(f"{key} directory {path} does not exist (is the storage pool mounted?)")
        if not is_url(self.cfg.db):
            os.makedirs(os.path.dirname(self.cfg.db), exist_ok=True)

    def open_store(self):
        """The job store; PostgreSQL unreachable at start: wait for it (said once), until stopped."""
        delay = 0.5
        while True:
            try:
                return open_store(self.cfg, log=log)
            except QueueUnavailable as exc:
                if self.stop.is_set():
                    raise RuntimeError(str(exc)) from None
                self.stop.wait(delay)
                delay = min(delay * 2, 5.0)

    def run(self) -> int:
        self.preflight()
        servers = []
        beat = None
        registered = False
        try:
            self.store = self.open_store()
            self.store.stop = self.stop  # waiting writes give up when the service stops
            self.store.start_worker(self.cfg.encoder)  # one run per database / per worker name
            registered = True
            self.recover(startup=True)
            self.store.listen(self.wake.set)  # PostgreSQL: a new job wakes an idle worker at once
            beat = threading.Thread(target=self.heartbeat_loop, name="heartbeat", daemon=True)
            beat.start()
            if self.cfg.metrics_port:
                servers.append(serve(self.registry, self.cfg.metrics_bind, self.cfg.metrics_port, self.cfg.metrics_allow))
                log.info("metrics on http://%s:%d/metrics", self.cfg.metrics_bind, servers[-1].port)
            if self.cfg.web_port:
                from . import web  # jinja2 is needed only when the page is on

                servers.append(web.serve(self, self.cfg.web_bind, self.cfg.web_port))
                log.info("status page on http://%s:%d/%s", self.cfg.web_bind, servers[-1].port,
                         " (password required)" if self.cfg.web_password else "")
            log.info("media-pipeline %s: watching %s every %ss (stable after %ss%s), %d at a time; %s; %s; queue: %s",
                     __version__, self.cfg.staging, self.cfg.poll_seconds, self.cfg.stable_seconds,
                     ", marker required" if self.cfg.require_marker else "", self.cfg.concurrency,
                     self.notifier.describe(), self.refresher.describe(), self.store.describe())
            self.loop()
            if self.stop.is_set():
                log.info("stopping: running jobs go back to the queue")
        finally:
            self.stop.set()
            for thread in list(self.workers.values()):
                thread.join()
            if beat is not None:
                beat.join()
            self.refresher.close(timeout=REFRESH_GRACE_ONCE if self.once else REFRESH_GRACE_STOP)
            self.publish_metrics()
            for server in servers:
                server.stop()
            if self.store:
                if registered:
                    self.store.stop_worker()
                self.store.close()
        return 0

    def loop(self) -> None:
        scanned = False
        while not self.stop.is_set():
            self.check_pool()
            try:
                if not self.once or not scanned:
                    self.recover(startup=False)  # jobs whose worker's lease ran out
                if not (self.once and scanned) and "staging" not in self.pool_missing and self.scanner():
                    self.enqueue_ready()
                    scanned = True
                self.dispatch()
                idle = self.once and not self.workers and (self.pool_missing or not self.store.has_claimable())
            except QueueUnavailable:  # the store said so, once; encodes go on, nothing is failed
                idle = False
            self.publish_metrics()
            if idle:
                break
            self.wake.wait(0.5 if self.once else self.cfg.poll_seconds)
            self.wake.clear()

    def scanner(self) -> bool:
        """Whether this worker scans staging (the store elects one); said when that changes."""
        scanning = self.store.is_scanner()
        if scanning != self.scanning:
            self.scanning = scanning
            if scanning:
                log.info("worker %s scans staging (the queue's elected scanner)", self.store.worker)
        return scanning

    def heartbeat_loop(self) -> None:
        """Renew the leases of the jobs this worker runs (every third of a lease); a job whose lease
        another worker took over is cancelled here, its output discarded."""
        interval = max(0.2, min(self.cfg.lease_seconds / 3.0, 10.0))
        while not self.stop.wait(interval):
            self.beat()

    def beat(self) -> None:
        with self._guard:
            owned = [job for job, _lost in self.owned.values()]
            live = [r for r in self.running.values()]
        status = {"job_id": live[0]["id"] if live else (owned[0].id if owned else None),
                  "fps": live[0].get("fps", 0.0) if live else 0.0}
        try:
            lost = self.store.heartbeat(owned, status)
        except QueueUnavailable:
            return  # said once by the store; the leases are renewed when it is back
        for job_id in lost:
            with self._guard:
                entry = self.owned.get(job_id)
            if entry is not None and not entry[1].is_set():
                entry[1].set()
                log.warning("[job %d] this worker %s", job_id, DISCARDED)

    def request_stop(self, *_args) -> None:
        self.stop.set()  # signal handler: no logging here (it could deadlock on the log lock)
        self.wake.set()

    def check_pool(self) -> list[str]:
        """Which pool folders are missing; says so once when that changes, not at every poll."""
        missing = missing_pool_dirs(self.cfg)
        if missing != self.pool_missing:
            if missing:
                log.warning("%s; waiting for it: no job starts or fails meanwhile, and none creates it",
                            describe_missing(self.cfg, missing))
            else:
                log.info("the storage pool is back (%s exist): resuming", ", ".join(POOL_DIRS))
            self.pool_missing = missing
        return missing

    # -- recovery ------------------------------------------------------------------

    def recover(self, startup: bool = True) -> None:
        """Jobs left `running` by a crash (at start-up), or by a worker whose lease ran out (another
        worker's, on PostgreSQL): finish an interrupted publish, else remove the partial output
        and redo from scratch. The store hands them over with a lease of this worker's."""
        for job in self.store.take_over_expired(startup=startup):
            expired = job.reason.startswith("lease of worker ")
            tmp = job.partial or (temp_path(job.dest) if job.dest else None)
            if expired:
                log.warning("[job %d] %s: this worker takes it over", job.id, job.reason)
            if job.pid and tmp:
                _kill_orphan(job.pid, tmp)
            if job.stage == "finalizing" and job.dest and tmp and job.out_stamp:
                if self.recover_finalizing(job, tmp):
                    continue
            # (a finalizing row without a stamp predates schema 2: redone, never trusted)
            if tmp and os.path.exists(tmp):
                os.unlink(tmp)
                log.info("[job %d] removed the partial output %s", job.id, tmp)
            if job.attempts >= self.cfg.max_attempts:
                reason = f"interrupted {job.attempts} time(s) by a crash or restart; giving up"
                self.store.fail(job, reason, retry=False, max_attempts=self.cfg.max_attempts)
                log.warning("[job %d] %s", job.id, reason)
            elif expired:
                self.store.requeue(job, f"{job.reason}; redoing from scratch", refund_attempt=False)
                log.info("[job %d] queued again", job.id)
            else:
                self.store.requeue(job, "interrupted by a restart; redoing from scratch", refund_attempt=False)
                log.info("[job %d] was running when the service stopped; queued again", job.id)

    def recover_finalizing(self, job: Job, tmp: str) -> bool:
        """A crash after the encode was verified. Done only if the library file is the one this
        job wrote (same inode, size, mtime as the temp it recorded); a different file under that
        name fails the job and keeps the source. False: nothing to finish, redo the job."""
        dest_stamp, tmp_stamp = stamp_of(job.dest), stamp_of(tmp)
        if dest_stamp is None and tmp_stamp == job.out_stamp:
            try:
                publish(tmp, job.dest)
            except TranscodeError as exc:
                dest_stamp = stamp_of(job.dest)  # appeared meanwhile: judged below
                log.warning("[job %d] %s", job.id, exc.reason)
            except OSError as exc:
                log.warning("[job %d] cannot publish %s after a restart: %s", job.id, tmp, exc)
                return False
            else:
                dest_stamp = job.out_stamp
        if dest_stamp == job.out_stamp:
            if os.path.lexists(tmp):  # a crash between link() and unlink(): the same inode
                os.unlink(tmp)
            log.info("[job %d] finished after restart: %s", job.id, job.dest)
            self.store.finish(job, job.media_seconds, job.encode_seconds, job.fps,
                              reason="completed after a restart")
            ensure_readable(job.dest)
            self.refresher.submit(job.dest)
            self.after_success(self.store.get(job.id))
            return True
        if dest_stamp is not None:
            if tmp_stamp is not None and os.path.lexists(tmp):
                os.unlink(tmp)
            self.fail(job, f"after a restart, {job.dest} is not the file this job wrote "
                           f"(inode:size:mtime {dest_stamp}, expected {job.out_stamp}); the source is "
                           f"kept; check the library file, then `media-pipeline retry {job.id}`",
                      retry=False)
            return True
        return False  # neither the library file nor our temp: encode again

    # -- the queue -----------------------------------------------------------------

    def enqueue_ready(self) -> None:
        self.last_scan = time.time()
        try:
            ready = scan(self.cfg.staging, self.cfg.stable_seconds, self.cfg.require_marker)
        except OSError as exc:
            problem = f"cannot scan {self.cfg.staging}: {exc}"
            if problem != self.scan_problem:  # once per problem, not every poll
                log.error("%s", problem)
            self.scan_problem = problem
            return
        self.scan_problem = ""
        known = self.store.known_keys()
        for key in ready:
            if key in known or key[0] in self.unusable:
                continue
            try:
                key[0].encode("utf-8")
            except UnicodeEncodeError:
                self.unusable.add(key[0])
                log.warning("skipping %r: its name is not valid UTF-8; rename it", key[0])
                continue
            job_id = self.store.enqueue(*key)
            if job_id is not None:
                log.info("[job %d] queued %s", job_id, key[0])

    def dispatch(self) -> None:
        for job_id, thread in list(self.workers.items()):
            if not thread.is_alive():
                thread.join()
                del self.workers[job_id]
        while len(self.workers) < self.cfg.concurrency and not self.stop.is_set() and not self.pool_missing:
            job = self.store.claim()
            if job is None:
                return
            with self._guard:
                self.owned[job.id] = (job, threading.Event())
            thread = threading.Thread(target=self.work, args=(job,), name=f"job-{job.id}", daemon=True)
            try:
                thread.start()
            except RuntimeError as exc:  # "can't start new thread": try again at the next poll, never exit
                with self._guard:
                    self.owned.pop(job.id, None)
                self.store.requeue(job, f"waiting: the service could not start a thread ({exc})",
                                   refund_attempt=True)
                log.error("[job %d] cannot start a worker thread (%s); it stays queued", job.id, exc)
                return
            self.workers[job.id] = thread

    def work(self, job: Job) -> None:
        try:
            self.process(job)
        except LeaseLost as exc:
            log.warning("[job %d] this worker %s (%s)", job.id, DISCARDED, exc)
        except QueueUnavailable:
            log.warning("[job %d] stopping while the job queue is unreachable: the job's lease runs out "
                        "and it is redone (here or by another worker)", job.id)
        except Exception:  # noqa: BLE001 - one broken job must not stop the service
            log.error("[job %d] internal error:\n%s", job.id, traceback.format_exc())
            try:
                if self.defer_if_pool_missing(job, self.store.get(job.id).dest):
                    return
                state = self.store.fail(job, "internal error: " + traceback.format_exc().splitlines()[-1],
                                        retry=True, max_attempts=self.cfg.max_attempts, delay=self.retry_delay())
            except (QueueUnavailable, LeaseLost):
                return
            self.events.observe("failed" if state == "failed" else "retry", time.time() - job.started
                                if job.started else None)
            if state == "failed":
                self.notify_failure(self.store.get(job.id))
        finally:
            with self._guard:
                self.running.pop(job.id, None)
                self.owned.pop(job.id, None)
            self.wake.set()

    @staticmethod
    def owns(written, job: Job):
        """A fenced write's result: False/None means another worker has the job now."""
        if written is False or written is None:
            raise LeaseLost(f"job {job.id}'s lease token no longer matches")
        return written

    def retry_delay(self) -> float:
        return 0.0 if self.once else self.cfg.retry_delay_seconds

    def process(self, job: Job) -> None:
        cfg = self.cfg
        log.info("[job %d] start (attempt %d/%d): %s", job.id, job.attempts, cfg.max_attempts, job.source)
        dest = naming.destination(cfg.staging, cfg.movies, cfg.tv, job.source)
        if self.defer_if_pool_missing(job, dest):
            return
        try:
            st = os.stat(job.source)
        except FileNotFoundError:
            self.fail(job, "source vanished before it was transcoded", retry=False)
            return
        if (st.st_size, st.st_mtime_ns) != (job.size, job.mtime_ns):
            self.fail(job, "source changed after it was queued; the new version gets its own job", retry=False)
            return
        tmp = self.store.temp_path(dest, job)
        self.owns(self.store.update(job, dest=dest, stage="encoding", partial=tmp), job)
        if os.path.lexists(dest):
            self.fail(job, f"{dest} already exists in the library; move it away and run "
                           f"`media-pipeline retry {job.id}`", retry=False)
            return
        try:
            make_dirs_below(self.output_root(dest), os.path.dirname(dest))
        except OSError as exc:
            self.fail(job, f"output problem: cannot create {os.path.dirname(dest)}: {exc.strerror}", retry=True)
            return
        with self._guard:
            other = next((r["id"] for r in self.running.values() if r.get("dest") == dest), None)
            if other is None:
                self.running[job.id] = {"id": job.id, "source": job.source, "dest": dest,
                                        "progress": 0.0, "fps": 0.0}
        if other is not None:  # two rips that map to one library name: never share a temp file
            self.fail(job, f"job {other} is writing the same destination {dest}", retry=True)
            return
        reporter = _JobProgress(self, job)
        with self._guard:
            lost = self.owned[job.id][1] if job.id in self.owned else threading.Event()
        try:
            result = transcode(
                job.source, dest, cfg.encode_options(),
                progress=reporter, log=lambda msg: log.info("[job %d] %s", job.id, msg),
                cancel=_Either(self.stop, lost), max_decode_errors=cfg.max_decode_errors,
                before_commit=lambda st: self.owns(
                    self.store.update(job, stage="finalizing", out_stamp=file_stamp(st)), job),
                publish_guard=lambda: self.store.publishing(job),
                on_start=lambda pid: self.encoder_started(job, pid),
                tmp=tmp,
            )
        except TranscodeError as exc:
            if exc.code == EXIT_INTERRUPTED and lost.is_set():
                raise LeaseLost("the heartbeat found another worker's lease on it") from None
            if exc.code == EXIT_INTERRUPTED:
                self.store.requeue(job, "interrupted by shutdown", refund_attempt=True)
                log.info("[job %d] interrupted; back in the queue", job.id)
                return
            self.fail(job, f"{EXIT_NAMES.get(exc.code, exc.code)}: {exc.reason}", retry=exc.code in RETRYABLE)
            return
        finally:
            with self._guard:  # ffmpeg was waited for: its pid may be anyone's now
                self.running.get(job.id, {}).pop("pid", None)
        if not self.store.finish(job, result.media_seconds, result.elapsed, result.fps):
            # published under the row lock with our token; taken over since (the queue was away):
            # the taker's recovery found our file (out_stamp) and marked the job done
            log.warning("[job %d] published %s, then lost the lease; the job is done by its stamp", job.id, dest)
            return
        self.events.observe("done", time.time() - job.started if job.started else result.elapsed)
        self.last_fps = result.fps
        self.last_speed = result.media_seconds / result.elapsed if result.elapsed > 0 else 0.0
        log.info("[job %d] done: %s (%s of media in %s, %.1f fps)", job.id, dest,
                 fmt_time(result.media_seconds), fmt_time(result.elapsed), result.fps)
        self.refresher.submit(dest)  # Jellyfin picks the file up now, not at its next scan
        done = self.store.get(job.id)
        self.after_success(done)
        self.notifier.send("Transcode finished", f"{os.path.basename(dest)}\n{dest}\n"
                           f"{fmt_time(result.media_seconds)} in {fmt_time(result.elapsed)}")

    def encoder_started(self, job: Job, pid: int) -> None:
        """transcode's on_start: the ffmpeg pid, in the job (crash recovery) and in the live
        entry (the GPU usage sampler reads its fdinfo while the job runs)."""
        self.store.update(job, pid=pid)
        with self._guard:
            entry = self.running.get(job if isinstance(job, int) else job.id)
            if entry is not None:
                entry["pid"] = pid

    def after_success(self, job: Job) -> None:
        """keep_source=false: remove the rip, but only once the library file is really the one
        this job wrote (its inode:size:mtime stamp matches the verified temp's)."""
        if self.cfg.keep_source or job.source_removed or not job.dest:
            return
        try:
            found = stamp_of(job.dest)
            if os.path.getsize(job.dest) <= 0:
                raise OSError("empty output")
            if not job.out_stamp or found != job.out_stamp:
                raise OSError(f"{job.dest} is not the file this job wrote "
                              f"(found {found}, expected {job.out_stamp or 'no record'})")
        except OSError as exc:
            log.error("[job %d] keeping the source: output not verified (%s)", job.id, exc)
            return
        for path in [job.source, *markers_for(job.source)]:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("[job %d] could not remove %s: %s", job.id, path, exc.strerror)
        self.store.update(job.id, source_removed=1)  # the job is done: no lease to check
        log.info("[job %d] removed the source (keep_source=false)", job.id)

    def output_root(self, dest: str) -> str:
        """movies or tv: the pool folder a library path is in (naming.destination puts it there)."""
        tv = os.path.join(self.cfg.tv, "")
        return self.cfg.tv if dest.startswith(tv) else self.cfg.movies

    def defer_if_pool_missing(self, job: Job, dest: str | None) -> bool:
        """True (and the job back in the queue, its attempt not counted) when staging or the
        job's output folder is missing: an unmounted pool is not the job's fault."""
        keys = ["staging"]
        if dest:
            keys.append("tv" if self.output_root(dest) == self.cfg.tv else "movies")
        else:
            keys += ["movies", "tv"]
        missing = missing_pool_dirs(self.cfg, keys)
        if not missing:
            return False
        problem = describe_missing(self.cfg, missing)
        self.store.requeue(job, f"waiting for the pool: {problem}", refund_attempt=True)
        log.warning("[job %d] back in the queue until the pool is back: %s", job.id, problem)
        self.wake.set()  # the loop notices the missing folder and starts nothing until it is back
        return True

    def fail(self, job: Job, reason: str, retry: bool) -> None:
        if self.defer_if_pool_missing(job, self.store.get(job.id).dest):
            return  # whatever went wrong happened while the pool was away: no verdict on the job
        state = self.owns(self.store.fail(job, reason, retry=retry, max_attempts=self.cfg.max_attempts,
                                          delay=self.retry_delay()), job)
        self.events.observe("retry" if state == "queued" else "failed",
                            time.time() - job.started if job.started else None)
        if state == "queued":
            log.warning("[job %d] failed (attempt %d/%d), will retry: %s", job.id, job.attempts,
                        self.cfg.max_attempts, reason)
        else:
            log.error("[job %d] failed, source kept: %s", job.id, reason)
            self.notify_failure(self.store.get(job.id))

    def retry(self, job_id: int) -> bool:
        """Operator retry (CLI or status page): a failed or cancelled job queued again with fresh attempts."""
        if not self.store.reset_failed(job_id):
            return False
        log.info("[job %d] queued again by an operator", job_id)
        self.wake.set()
        return True

    def cancel(self, job_id: int) -> bool:
        """Operator cancel (status page): a queued job is never transcoded; its rip stays in staging."""
        if not self.store.cancel(job_id):
            return False
        log.info("[job %d] cancelled by an operator; its rip stays in staging", job_id)
        return True

    def to_front(self, job_id: int) -> bool:
        """Operator "to the front" (status page): a queued job is the next one claimed."""
        if not self.store.to_front(job_id):
            return False
        log.info("[job %d] moved to the front of the queue by an operator", job_id)
        self.wake.set()
        return True

    def notify_failure(self, job: Job | None) -> None:
        if job is not None:
            self.notifier.send("Transcode failed", f"{naming.staged_name(self.cfg.staging, job.source)}\n{job.reason}")

    # -- metrics -------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        if self.store is None:
            return Snapshot(counts={})
        try:
            totals, counts = self.store.totals(), self.store.counts()
            workers, expiries = self.store.workers(), self.store.lease_expiries()
            self._last_read = (totals, counts, workers, expiries)
        except QueueUnavailable:  # the last values read (the store said it is away, once)
            totals, counts, workers, expiries = getattr(self, "_last_read", (
                {"media_seconds": 0.0, "encode_seconds": 0.0, "last_fps": 0.0, "last_speed": 0.0,
                 "oldest_queued": None}, {}, [], 0))
        with self._guard:
            running = [dict(v, worker=self.store.worker) for v in self.running.values()]
        live = [r for r in running if r["fps"] > 0]
        last_fps = live[-1]["fps"] if live else (self.last_fps or totals["last_fps"])
        last_speed = live[-1].get("speed", 0.0) if live else (self.last_speed or totals["last_speed"])
        oldest = totals["oldest_queued"]
        return Snapshot(counts, totals["media_seconds"], totals["encode_seconds"],
                        last_fps, last_speed, running, self.last_scan,
                        max(0.0, time.time() - oldest) if oldest else 0.0,
                        disk_usage({"staging": self.cfg.staging, "movies": self.cfg.movies, "tv": self.cfg.tv}),
                        encoder_pids=self.encoder_pids(), workers=workers, lease_expiries=expiries,
                        worker=self.store.worker)

    def encoder_pids(self) -> list[int]:
        """The pids of the ffmpeg encoders running now (set by encoder_started)."""
        with self._guard:
            return [r["pid"] for r in self.running.values() if r.get("pid")]

    def gpu_usage(self) -> GpuUsage:
        """The encoders' GPU usage for the status page (the same sampler as /metrics)."""
        return sample_gpu(self.gpu, self.encoder_pids())

    def publish_metrics(self) -> None:
        if self.store is not None:
            publish_textfile(self.cfg.metrics_textfile, self.registry, log)


class _JobProgress:
    def __init__(self, service: Service, job: Job):
        self.service, self.job = service, job
        self.next_log = time.monotonic() + PROGRESS_LOG_SECONDS
        self.next_db = 0.0

    def __call__(self, p: Progress) -> None:
        s = self.service
        with s._guard:
            entry = s.running.get(self.job.id)
            if entry is not None:
                entry["progress"] = p.percent / 100.0
                entry["fps"] = p.fps
                entry["speed"] = p.speed
        now = time.monotonic()
        if now >= self.next_db:
            self.next_db = now + PROGRESS_DB_SECONDS
            s.store.update(self.job, progress=round(p.percent / 100.0, 4), fps=round(p.fps, 2))
        if now >= self.next_log:
            self.next_log = now + PROGRESS_LOG_SECONDS
            log.info("[job %d] %s", self.job.id, format_progress(p))


def _kill_orphan(pid: int, tmp: str) -> None:
    """An ffmpeg left behind by a killed service (normally it dies with us: common.DIE_WITH_PARENT)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmdline = fh.read()
    except OSError:
        return
    if os.fsencode(tmp) in cmdline.split(b"\0"):
        try:
            os.kill(pid, signal.SIGKILL)
            log.warning("killed leftover ffmpeg (pid %d)", pid)
        except OSError:
            pass


# --- status ----------------------------------------------------------------------------

def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1):]


def status_table(jobs: list[Job], cfg: config_mod.Config) -> str:
    if not jobs:
        return "no jobs yet"

    def rel(path: str | None) -> str:
        if not path:
            return ""
        for root in (cfg.staging, cfg.movies, cfg.tv):
            if path.startswith(root.rstrip("/") + "/"):
                return os.path.relpath(path, os.path.dirname(root.rstrip("/")))
        return path

    rows = [("ID", "STATE", "TRIES", "UPDATED", "WORKER", "SOURCE", "RESULT")]
    for j in jobs:
        if j.state == "running":
            result = f"{j.progress * 100:.0f}% -> {rel(j.dest)}"
        elif j.state == "done":
            result = rel(j.dest) + (" (source removed)" if j.source_removed else "")
        else:
            result = j.reason
        rows.append((str(j.id), j.state, f"{j.attempts}/{cfg.max_attempts}", fmt_when(j.updated),
                     j.worker or "-", _shorten(rel(j.source), 48), result))
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    lines = ["  ".join(r[i].ljust(widths[i]) for i in range(6)) + "  " + r[6] for r in rows]
    counts: dict[str, int] = {}
    for j in jobs:
        counts[j.state] = counts.get(j.state, 0) + 1
    lines.append("")
    lines.append(", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    return "\n".join(line.rstrip() for line in lines)


def workers_table(workers: list[dict]) -> str:
    if not workers:
        return "no workers yet"
    rows = [("NAME", "HOST", "ENCODER", "JOB", "FPS", "HEARTBEAT", "STATE")]
    for w in workers:
        age = w.get("heartbeat_age")
        rows.append((w["name"], w["host"], w["encoder"], str(w["job_id"]) if w.get("job_id") else "-",
                     f"{w['fps']:.1f}" if w.get("job_id") else "-",
                     f"{age:.0f}s ago" if age is not None else "-", w["state"]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(r[i].ljust(widths[i]) for i in range(len(r))).rstrip() for r in rows)


# --- command line ----------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="media-pipeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help=f"config file (default ${config_mod.ENV_VAR} or {config_mod.DEFAULT_PATH})")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="cmd", required=True)
    run_p = sub.add_parser("run", help="watch staging and transcode finished rips")
    run_p.add_argument("--once", action="store_true", help="process what is ready now, then exit")
    run_p.add_argument("--verbose", action="store_true")
    st_p = sub.add_parser("status", help="list jobs")
    st_p.add_argument("--json", action="store_true", help="machine-readable")
    st_p.add_argument("--state", choices=STATES)
    st_p.add_argument("--limit", type=int, help="only the newest N jobs")
    st_p.add_argument("--jellyfin", action="store_true",
                      help="the last Jellyfin refresh instead of the jobs (with --json: as an object)")
    retry_p = sub.add_parser("retry", help="queue failed (or cancelled) jobs again with fresh attempts")
    retry_p.add_argument("ids", type=int, nargs="+")
    cancel_p = sub.add_parser("cancel", help="cancel queued jobs (never claimed; the rips stay in staging; "
                                             "retry undoes it)")
    cancel_p.add_argument("ids", type=int, nargs="+")
    front_p = sub.add_parser("front", help="move queued jobs to the front of the queue (the last one named first)")
    front_p.add_argument("ids", type=int, nargs="+")
    wk_p = sub.add_parser("workers", help="list the workers of the queue (healthy, stale or gone)")
    wk_p.add_argument("--json", action="store_true", help="machine-readable")
    mig_p = sub.add_parser("migrate", help="move a SQLite job store into PostgreSQL (idempotent)")
    mig_p.add_argument("--from", dest="src", required=True, metavar="SQLITE", help="the SQLite job database")
    mig_p.add_argument("--to", dest="dst", required=True, metavar="URL",
                       help="postgresql:// URL (password from the config's db_password_file)")
    for p in (run_p, st_p, retry_p, cancel_p, front_p, wk_p, mig_p):
        p.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    try:
        cfg = config_mod.load(args.config, required=args.cmd == "run")
    except config_mod.ConfigError as exc:
        print(f"media-pipeline: config error: {exc}", file=sys.stderr)
        return 2

    if args.cmd == "status":
        return _status(cfg, args)
    if args.cmd == "retry":
        return _retry(cfg, args.ids)
    if args.cmd == "cancel":
        return _operate(cfg, args.ids, "cancel", "cancelled")
    if args.cmd == "front":
        return _operate(cfg, args.ids, "to_front", "at the front of the queue")
    if args.cmd == "workers":
        return _workers(cfg, args)
    if args.cmd == "migrate":
        from .migrate import main as migrate_main

        return migrate_main(cfg, args.src, args.dst)

    setup_logging(args.verbose)
    service = Service(cfg, once=args.once)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, service.request_stop)
    try:
        return service.run()
    except RuntimeError as exc:
        log.error("%s", exc)
        return 1
    except (OSError, sqlite3.Error, QueueUnavailable) as exc:
        log.error("cannot start: %s", exc)
        return 1


def jellyfin_status(cfg: config_mod.Config) -> dict:
    """What `status --jellyfin --json` prints: whether refreshes are on and the last one's result
    (written by the running service beside its database)."""
    return {"enabled": bool(cfg.jellyfin_url), "url": jellyfin.redact_url(cfg.jellyfin_url) if cfg.jellyfin_url else "",
            "last": jellyfin.read_state(jellyfin.state_file_for(cfg.db)) if cfg.jellyfin_url else None}


def describe_refresh(state: dict) -> str:
    if not state["enabled"]:
        return "jellyfin: off (no jellyfin_url)"
    last = state["last"]
    if not last:
        return f"jellyfin: {state['url']}: no refresh yet"
    result = "ok" if last.get("ok") else f"failed (try {last.get('attempt')}): {last.get('reason')}"
    return f"jellyfin: last refresh {fmt_when(last.get('time'))} {last.get('path')}: {result}"


def _read_store(cfg: config_mod.Config, read):
    """read(store) on the configured store, read-only; None (said on stderr) when it cannot be read."""
    if not is_url(cfg.db) and not os.path.exists(cfg.db):
        return read(None)
    try:
        store = open_store(cfg, readonly=True)
        try:
            return read(store)
        finally:
            store.close()
    except Exception as exc:  # noqa: BLE001
        print(f"media-pipeline: cannot read {cfg.db.split('?')[0] if is_url(cfg.db) else cfg.db}: {exc}",
              file=sys.stderr)
        return None


def _workers(cfg: config_mod.Config, args) -> int:
    workers = _read_store(cfg, lambda s: s.workers() if s else [])
    if workers is None:
        return 1
    if args.json:
        print(json.dumps(workers, indent=2, ensure_ascii=False))
    else:
        print(workers_table(workers))
    return 0


def _status(cfg: config_mod.Config, args) -> int:
    if args.jellyfin:
        state = jellyfin_status(cfg)
        print(json.dumps(state, indent=2, ensure_ascii=False) if args.json else describe_refresh(state))
        return 0
    jobs = _read_store(cfg, lambda s: s.list_jobs(state=args.state, limit=args.limit) if s else [])
    if jobs is None:
        return 1
    if args.json:
        print(json.dumps([j.to_json() for j in jobs], indent=2, ensure_ascii=False))
    else:
        print(status_table(jobs, cfg))
        if cfg.jellyfin_url:
            print(describe_refresh(jellyfin_status(cfg)))
    missing = missing_pool_dirs(cfg)
    if missing:  # on stderr: --json's stdout stays the job list
        print(f"media-pipeline: warning: {describe_missing(cfg, missing)}; the service starts no job "
              f"until it is back", file=sys.stderr)
    return 0


def _retry(cfg: config_mod.Config, ids: list[int]) -> int:
    store = open_store(cfg)
    rc = 0
    for job_id in ids:
        if store.reset_failed(job_id):
            print(f"job {job_id}: queued again")
        else:
            print(f"job {job_id}: not a failed or cancelled job", file=sys.stderr)
            rc = 1
    store.close()
    return rc


def _operate(cfg: config_mod.Config, ids: list[int], what: str, done: str) -> int:
    """cancel / front from the command line: what the status page's buttons do (the store's
    cancel / to_front), for queued jobs only; any other job is named with its state, exit 1."""
    store = open_store(cfg)
    rc = 0
    try:
        for job_id in ids:
            if getattr(store, what)(job_id):
                print(f"job {job_id}: {done}")
                continue
            job = store.get(job_id)
            state = f"it is {job.state}" if job is not None else "there is no such job"
            print(f"job {job_id}: not a queued job ({state})", file=sys.stderr)
            rc = 1
    finally:
        store.close()
    return rc


if __name__ == "__main__":
    sys.exit(main())
