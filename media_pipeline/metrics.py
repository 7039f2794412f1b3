"""Prometheus metrics: text exposition rendered from a snapshot, served and/or written to a file.

Served on /metrics (metrics_port; 0 = off) and written to metrics_textfile for
node_exporter's textfile collector, so either scraping style works.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from . import __version__
from .jobs import STATES

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass
class Snapshot:
    counts: dict[str, int]
    media_seconds: float = 0.0
    encode_seconds: float = 0.0
    last_fps: float = 0.0
    running: list[dict] = field(default_factory=list)  # {"id", "source", "progress", "fps"}
    last_scan: float = 0.0


def _label(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _num(value: float) -> str:
    return repr(float(value)) if value != int(value) else str(int(value))


def render(s: Snapshot) -> str:
    out = [
        "# HELP media_pipeline_info Version of the running media-pipeline.",
        "# TYPE media_pipeline_info gauge",
        f'media_pipeline_info{{version="{_label(__version__)}"}} 1',
        "# HELP media_pipeline_jobs Jobs in the queue database, by state.",
        "# TYPE media_pipeline_jobs gauge",
    ]
    for state in STATES:
        out.append(f'media_pipeline_jobs{{state="{state}"}} {s.counts.get(state, 0)}')
    out += [
        "# HELP media_pipeline_encoded_seconds_total Seconds of media transcoded successfully.",
        "# TYPE media_pipeline_encoded_seconds_total counter",
        f"media_pipeline_encoded_seconds_total {_num(s.media_seconds)}",
        "# HELP media_pipeline_encode_wall_seconds_total Wall-clock seconds spent in successful encodes.",
        "# TYPE media_pipeline_encode_wall_seconds_total counter",
        f"media_pipeline_encode_wall_seconds_total {_num(s.encode_seconds)}",
        "# HELP media_pipeline_last_fps Frames per second of the running encode, else of the last finished one.",
        "# TYPE media_pipeline_last_fps gauge",
        f"media_pipeline_last_fps {_num(round(s.last_fps, 3))}",
        "# HELP media_pipeline_job_progress_ratio Progress of each running job (0-1).",
        "# TYPE media_pipeline_job_progress_ratio gauge",
    ]
    for job in s.running:
        name = os.path.basename(job.get("source", ""))
        out.append(f'media_pipeline_job_progress_ratio{{job="{job["id"]}",source="{_label(name)}"}} '
                   f'{_num(round(job.get("progress", 0.0), 4))}')
    out += [
        "# HELP media_pipeline_last_scan_timestamp_seconds When staging was last scanned.",
        "# TYPE media_pipeline_last_scan_timestamp_seconds gauge",
        f"media_pipeline_last_scan_timestamp_seconds {_num(round(s.last_scan, 3))}",
    ]
    return "\n".join(out) + "\n"


def write_textfile(path: str, text: str) -> None:
    """Atomic write (temp + rename) so the collector never reads half a file."""
    if not path:
        return
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


class MetricsServer:
    """GET /metrics in a daemon thread."""

    def __init__(self, bind: str, port: int, provider: Callable[[], str]):
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server API
                if self.path.split("?", 1)[0] not in ("/metrics", "/"):
                    self.send_error(404, "try /metrics")
                    return
                body = provider().encode("utf-8")
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args):  # scrapes are not news
                pass

        self.httpd = ThreadingHTTPServer((bind, port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True, name="metrics")

    def start(self) -> "MetricsServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
