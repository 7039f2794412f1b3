"""Prometheus metrics with the official client (prometheus_client; Debian: python3-prometheus-client).

State that lives in the job store (jobs by state, oldest queued job, totals) and on disk (free
space) is read at scrape time by a custom collector, so every scrape tells the truth even
after a restart; what happens in this process (job durations and outcomes) is counted with
the client's Histogram and Counter. Served on /metrics (metrics_port; 0 = off) and written to
metrics_textfile for node_exporter's textfile collector, so either scraping style works.

GPU engine busy ratios and memory of the running encoders (gpu_usage.py) are sampled at scrape
time too, from the encoder pids in the Snapshot; without a measurement the two families are
declared with no sample, and the reason is on the status page.

A sibling service (media-rip) reuses `new_registry`, `serve`, `exposition` and `publish_textfile` with its
own collector and its own `media_rip_` metrics.
"""

from __future__ import annotations

import errno
import ipaddress
import io
import logging
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, make_wsgi_app
from prometheus_client import write_to_textfile as _write_to_textfile
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from . import __version__
from .gpu_usage import EXPORTED_ENGINES, GpuSampler, GpuUsage
from .jobqueue import WORKER_STATES
from .jobs import STATES

# Encodes take seconds (tests) to hours (a UHD film on x265 slow).
DURATION_BUCKETS = (10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, float("inf"))
OUTCOMES = ("done", "failed", "retry")
JELLYFIN_OUTCOMES = ("ok", "failed")


@dataclass
class Snapshot:
    counts: dict[str, int]
    media_seconds: float = 0.0
    encode_seconds: float = 0.0
    last_fps: float = 0.0
    last_speed: float = 0.0  # media seconds per wall second of the running or last encode
    running: list[dict] = field(default_factory=list)  # {"id", "source", "progress", "fps"}
    last_scan: float = 0.0
    oldest_queued_age: float = 0.0
    filesystems: dict[str, tuple[int, int]] = field(default_factory=dict)  # dir -> (free, size) bytes
    encoder_pids: list[int] = field(default_factory=list)  # the running ffmpeg encoders (GPU usage)
    workers: list[dict] = field(default_factory=list)  # the queue's workers (store.workers())
    lease_expiries: int = 0  # jobs taken over after their worker's lease ran out (all workers, ever)
    worker: str = ""  # this worker's name


def disk_usage(paths: dict[str, str]) -> dict[str, tuple[int, int]]:
    """{name: (free bytes for unprivileged users, size bytes)} for the directories that exist."""
    out = {}
    for name, path in paths.items():
        try:
            st = os.statvfs(path)
        except OSError:
            continue
        out[name] = (st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize)
    return out


class PipelineCollector:
    """Reads a Snapshot at each scrape (the job store, free space) and turns it into metrics."""

    def __init__(self, snapshot: Callable[[], Snapshot], gpu: GpuSampler | None = None):
        self.snapshot = snapshot
        self.gpu = gpu

    def describe(self):
        return []  # collected lazily: the store is read at scrape time only

    def collect(self) -> Iterable:
        s = self.snapshot()
        info = GaugeMetricFamily("media_pipeline_info", "Version of the running media-pipeline.",
                                 labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        jobs = GaugeMetricFamily("media_pipeline_jobs", "Jobs in the job store, by state.", labels=["state"])
        for state in STATES:
            jobs.add_metric([state], s.counts.get(state, 0))
        yield jobs
        yield GaugeMetricFamily("media_pipeline_queue_length", "Jobs waiting to be transcoded (state queued).",
                                value=s.counts.get("queued", 0))
        yield GaugeMetricFamily("media_pipeline_oldest_queued_job_age_seconds",
                                "Age of the oldest queued job (0 when the queue is empty).",
                                value=round(s.oldest_queued_age, 3))
        yield CounterMetricFamily("media_pipeline_encoded_seconds", "Seconds of media transcoded successfully.",
                                  value=s.media_seconds)
        yield CounterMetricFamily("media_pipeline_encode_wall_seconds",
                                  "Wall-clock seconds spent in successful encodes.", value=s.encode_seconds)
        yield GaugeMetricFamily("media_pipeline_encode_fps",
                                "Frames per second of the running encode, else of the last finished one.",
                                value=round(s.last_fps, 3))
        yield GaugeMetricFamily("media_pipeline_encode_speed_ratio",
                                "Media seconds encoded per wall-clock second (running encode, else the last one).",
                                value=round(s.last_speed, 4))
        progress = GaugeMetricFamily("media_pipeline_job_progress_ratio", "Progress of each running job (0-1).",
                                     labels=["job", "source", "worker"])
        for job in s.running:
            progress.add_metric([str(job["id"]), os.path.basename(job.get("source", "")), job.get("worker", s.worker)],
                                round(job.get("progress", 0.0), 4))
        yield progress
        workers = GaugeMetricFamily("media_pipeline_workers", "Workers of the job queue by heartbeat state "
                                    "(healthy: within its lease; stale: lease ran out; gone: signed off).",
                                    labels=["state"])
        for state in WORKER_STATES:
            workers.add_metric([state], sum(1 for w in s.workers if w.get("state") == state))
        yield workers
        stale = GaugeMetricFamily("media_pipeline_worker_heartbeat_age_seconds",
                                  "Seconds since each worker's last heartbeat (workers not gone).", labels=["worker"])
        for w in s.workers:
            if w.get("state") != "gone" and w.get("heartbeat_age") is not None:
                stale.add_metric([w["name"]], round(w["heartbeat_age"], 3))
        yield stale
        yield CounterMetricFamily("media_pipeline_lease_expiries",
                                  "Jobs queued again (or finished) by another worker after their worker's lease "
                                  "ran out, all workers, since the queue was created.", value=s.lease_expiries)
        free = GaugeMetricFamily("media_pipeline_filesystem_free_bytes",
                                 "Free bytes (for unprivileged users) on the filesystem of each pipeline directory.",
                                 labels=["dir"])
        size = GaugeMetricFamily("media_pipeline_filesystem_size_bytes",
                                 "Size in bytes of the filesystem of each pipeline directory.", labels=["dir"])
        for name, (f, t) in sorted(s.filesystems.items()):
            free.add_metric([name], f)
            size.add_metric([name], t)
        yield free
        yield size
        yield GaugeMetricFamily("media_pipeline_last_scan_timestamp_seconds", "When staging was last scanned.",
                                value=round(s.last_scan, 3))
        if self.gpu is not None:
            yield from gpu_families(sample_gpu(self.gpu, s.encoder_pids))


def sample_gpu(sampler: GpuSampler, pids: list[int]) -> GpuUsage:
    """sampler.sample, never raising: a bug there must not cost the scrape its other metrics."""
    try:
        return sampler.sample(pids)
    except Exception as exc:  # noqa: BLE001 - said on the status page, not per scrape in the log
        return GpuUsage(reason=f"internal error sampling the GPU usage: {exc!r}", sampled_at=time.time())


def gpu_families(usage: GpuUsage) -> Iterable:
    """The GPU families, declared even when there is nothing to measure (no sample then)."""
    busy = GaugeMetricFamily("media_pipeline_gpu_engine_busy_ratio",
                             "Share of the time the GPU engine class was busy for the running encoders (0-1), "
                             "from DRM fdinfo, over the interval since the previous sample.", labels=["engine"])
    for engine in EXPORTED_ENGINES:
        if engine in usage.engines:
            busy.add_metric([engine], round(usage.engines[engine], 4))
    yield busy
    memory = GaugeMetricFamily("media_pipeline_gpu_memory_bytes",
                               "GPU memory resident for the running encoders (all regions), from DRM fdinfo.")
    if usage.memory_bytes is not None:
        memory.add_metric([], usage.memory_bytes)
    yield memory


class JobEvents:
    """What this process saw happen to jobs: outcomes and durations (official Counter/Histogram)."""

    def __init__(self, registry: CollectorRegistry):
        self.outcomes = Counter("media_pipeline_jobs_finished", "Jobs that finished an attempt, by outcome "
                                "(done; failed for good; retry: failed and queued again).",
                                ["outcome"], registry=registry)
        self.duration = Histogram("media_pipeline_job_duration_seconds",
                                  "Wall-clock seconds of each job attempt, by outcome.", ["outcome"],
                                  buckets=DURATION_BUCKETS, registry=registry)
        self.jellyfin = Counter("media_pipeline_jellyfin_refreshes", "Calls telling Jellyfin about a published "
                                "file (POST /Library/Media/Updated), by outcome: ok, or failed (refused, "
                                "unreachable, no key; each retry is a call).", ["outcome"], registry=registry)
        for outcome in OUTCOMES:  # present from the first scrape, so rate() and alerts see 0 -> 1
            self.outcomes.labels(outcome)
            self.duration.labels(outcome)
        for outcome in JELLYFIN_OUTCOMES:
            self.jellyfin.labels(outcome)

    def jellyfin_refresh(self, outcome: str) -> None:
        self.jellyfin.labels(outcome).inc()

    def observe(self, outcome: str, seconds: float | None) -> None:
        self.outcomes.labels(outcome).inc()
        if seconds is not None and seconds >= 0:
            self.duration.labels(outcome).observe(seconds)


# --- reusable by sibling services ------------------------------------------------------

def new_registry(*collectors) -> CollectorRegistry:
    """A registry of its own (not the client's global one) holding these collectors."""
    registry = CollectorRegistry(auto_describe=True)
    for collector in collectors:
        registry.register(collector)
    return registry


def write_textfile(path: str, registry: CollectorRegistry) -> None:
    """node_exporter textfile; the client writes a temp file and renames it (never half a file)."""
    if not path:
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    _write_to_textfile(path, registry)


def exposition(registry: CollectorRegistry) -> str:
    """The registry in Prometheus' text format (what /metrics answers)."""
    return generate_latest(registry).decode("utf-8")


def publish_textfile(path: str, registry: CollectorRegistry, log: logging.Logger) -> None:
    """write_textfile for a service's loop: "" = off; a write problem is logged, never raised."""
    if not path:
        return
    try:
        write_textfile(path, registry)
    except OSError as exc:
        log.warning("cannot write %s: %s", path, exc)


# --- the HTTP server of /metrics and the status page ------------------------------------

MAX_CONNECTIONS = 16  # a Prometheus or two and a person with a browser; the rest get 503
REQUEST_TIMEOUT = 10.0  # seconds to receive a whole request, and to send each response
LISTEN_BACKLOG = 128  # connections the kernel holds until accept(); beyond it, clients retry
_BUSY = (b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
         b"Retry-After: 1\r\nConnection: close\r\nContent-Length: 45\r\n\r\n"
         b"503: too many connections; try again shortly\n")
_server_log = logging.getLogger("media_pipeline.http")  # both services log it; messages name the server


class _DeadlineReader(io.RawIOBase):
    """A connection's socket, read with a deadline: each recv gets only the time left, so a
    client that sends nothing, or a byte every few seconds, loses its worker when it is up."""

    def __init__(self, sock: socket.socket, deadline: float, write_timeout: float):
        super().__init__()
        self.sock, self.deadline, self.write_timeout = sock, deadline, write_timeout

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request did not arrive in time")
        self.sock.settimeout(left)
        try:
            return self.sock.recv_into(buffer)
        finally:
            self.sock.settimeout(self.write_timeout)  # the response gets its own full timeout


class _Handler(WSGIRequestHandler):
    def setup(self):
        self.timeout = self.server.request_timeout  # StreamRequestHandler sets it on the socket
        super().setup()
        self.rfile.close()  # replaced by one that keeps the deadline
        raw = _DeadlineReader(self.connection, self.server.deadline_of(self.request), self.timeout)
        self.rfile = io.BufferedReader(raw)

    def log_message(self, *_args):  # scrapes and page loads are not news
        pass


class BoundedWSGIServer(WSGIServer):
    """wsgiref's server with one daemon thread per connection, at most `max_connections` of them.

    A connection beyond the cap is answered 503 and closed at once (never queued); each one
    admitted must deliver its request within `request_timeout` seconds. Nothing that goes wrong
    with one connection (a timeout, a reset, a thread that cannot be started) leaves this class:
    it is logged and the connection closed, so the service around it never sees it.
    """

    allow_reuse_address = True
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, address, handler=_Handler, *, max_connections: int = MAX_CONNECTIONS,
                 request_timeout: float = REQUEST_TIMEOUT, name: str = "http"):
        self.max_connections, self.request_timeout, self.name = max_connections, request_timeout, name
        self._slots = threading.BoundedSemaphore(max_connections)
        self._accepted: dict[socket.socket, float] = {}  # connection -> when it was accepted (monotonic)
        self._refused, self._refused_logged_at = 0, float("-inf")
        super().__init__(address, handler)

    def active(self) -> int:
        """Connections being served now (for tests and logs)."""
        return len(self._accepted)

    def deadline_of(self, sock: socket.socket) -> float:
        """When the request on this connection must have arrived (request_timeout after accept)."""
        return self._accepted.get(sock, time.monotonic()) + self.request_timeout

    def get_request(self):
        try:
            return super().get_request()
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                _server_log.warning("%s: cannot accept a connection: %s", self.name, exc.strerror)
                time.sleep(0.1)  # the listening socket stays readable: without a pause this would spin
            raise  # socketserver drops the attempt

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            self._refuse(request)
            return
        self._accepted[request] = time.monotonic()
        try:
            threading.Thread(target=self._serve_one, args=(request, client_address), daemon=True,
                             name=f"{self.name}-conn").start()
        except Exception as exc:  # noqa: BLE001 - e.g. "can't start new thread": drop this one, keep serving
            self._done(request)
            _server_log.warning("%s: cannot serve %s: %s", self.name, client_address[0], exc)

    def _serve_one(self, request, client_address):
        try:
            self.finish_request(request, client_address)
        except Exception:  # noqa: BLE001 - one connection's trouble stays with it
            self.handle_error(request, client_address)
        finally:
            self._done(request)

    def _done(self, request):
        self._accepted.pop(request, None)
        self.shutdown_request(request)
        self._slots.release()

    def _refuse(self, request):
        self._refused += 1
        now = time.monotonic()
        if now - self._refused_logged_at >= 60:  # at most a line a minute: a flood must not flood the journal
            _server_log.warning("%s: more than %d connections at once: %d refused with 503 since the last report",
                                self.name, self.max_connections, self._refused)
            self._refused, self._refused_logged_at = 0, now
        try:
            request.setblocking(False)  # whatever fits in the socket buffer, never a wait
            request.send(_BUSY)
        except OSError:
            pass
        self.shutdown_request(request)

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, (TimeoutError, ConnectionError)):
            _server_log.debug("%s: %s: %s", self.name, client_address[0], exc)  # a slow or gone client
        else:
            _server_log.warning("%s: error serving %s", self.name, client_address[0], exc_info=True)


class WSGIThreadServer:
    """Serve a WSGI app on bind:port from a daemon thread (port 0 picks a free one)."""

    def __init__(self, bind: str, port: int, app, name: str = "http", *,
                 max_connections: int = MAX_CONNECTIONS, request_timeout: float = REQUEST_TIMEOUT):
        self.httpd = BoundedWSGIServer((bind, port), max_connections=max_connections,
                                       request_timeout=request_timeout, name=name)
        self.httpd.set_app(app)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self._serve, daemon=True, name=name)
        self._stopping = threading.Event()

    def _serve(self) -> None:
        # serve_forever runs at least once, even when stop() came first: shutdown() waits for it to
        # run and return (it returns at once when the shutdown was already asked for)
        while True:
            try:
                self.httpd.serve_forever()
            except Exception:  # noqa: BLE001 - the page or /metrics may stop, the service must not
                _server_log.exception("%s: server loop failed; restarting it in 1 s", self.httpd.name)
                if self._stopping.wait(1):
                    return
                continue
            if self._stopping.is_set():
                return

    def start(self) -> "WSGIThreadServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self.thread.is_alive():  # never started: nothing to wait for (shutdown() would wait for ever)
            self.httpd.shutdown()
        self.httpd.server_close()


def peer_allowed(addr: str, allow: Sequence[str]) -> bool:
    """Loopback always; else a peer inside one of `allow` (addresses or networks); empty `allow` = anyone."""
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    if getattr(ip, "ipv4_mapped", None):
        ip = ip.ipv4_mapped
    if ip.is_loopback or not allow:
        return True
    return any(ip in ipaddress.ip_network(net, strict=False) for net in allow)


def serve(registry: CollectorRegistry, bind: str, port: int, allow: Sequence[str] = ()) -> WSGIThreadServer:
    """GET /metrics (the client's own WSGI app) in a daemon thread; peers outside `allow` get 403."""
    metrics_app = make_wsgi_app(registry)

    def app(environ, start_response):
        peer = environ.get("REMOTE_ADDR", "")
        if not peer_allowed(peer, allow):
            start_response("403 Forbidden", [("Content-Type", "text/plain; charset=utf-8")])
            return [f"forbidden: {peer} is not in metrics_allow\n".encode()]
        if environ.get("PATH_INFO", "/") not in ("/metrics", "/"):
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"not found: try /metrics\n"]
        return metrics_app(environ, start_response)

    return WSGIThreadServer(bind, port, app, name="metrics").start()
