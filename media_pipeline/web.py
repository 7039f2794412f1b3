"""The status page: a small WSGI app (Jinja2 templates) served by the media-pipeline process.

Reads the same job store as `media-pipeline status` (and media-rip's status file on the pool,
media_pipeline/rips.py), in threads of its own (metrics.
WSGIThreadServer), so it answers while encodes run. Routes:

  GET  /                     the page (refreshes itself every REFRESH_SECONDS)
  GET  /api/status           the same data as JSON
  POST /jobs/<id>/retry      a failed or cancelled job back to the queue (form field csrf_token)
  POST /jobs/<id>/cancel     a queued job cancelled: never transcoded, its rip left in staging
  POST /jobs/<id>/front      a queued job moved to the front of the queue (claimed next)

Each POST answers 303 to the page with a notice; 404 for an unknown job, 409 (naming its state)
for a job not in the state the action needs.

Protection: with web_password set, every request needs HTTP basic auth (any user name);
config validation refuses a bind beyond loopback without one. Every POST (check_post) needs the
page's CSRF token (an HMAC only this process can make) and, when the browser sends one, an
Origin/Referer of this page: public_url when set (a TLS reverse proxy in front, which may send
any Host; docs/reverse-proxy.md), else X-Forwarded-Host/-Proto when the peer is one of
trusted_proxies, else the Host header. Bad requests change nothing and get a clear HTTP error.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import os
import re
import secrets
import time
from urllib.parse import parse_qs, urlsplit

import jinja2

from . import __version__
from .jellyfin import redact_url
from .jobqueue import QueueUnavailable
from .jobs import STATES
from .metrics import WSGIThreadServer
from .naming import staged_name
from .rips import read_status

REFRESH_SECONDS = 5
MAX_FORM_BYTES = 4096
DONE_SHOWN = 20
_ACTION = re.compile(r"^/jobs/(\d{1,18})/(retry|cancel|front)$")
_TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(os.path.join(os.path.dirname(__file__), "templates")),
    autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
)
_HEADERS = [
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),  # no clickjacking of the buttons
    ("Referrer-Policy", "same-origin"),
    ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
                                "form-action 'self'; frame-ancestors 'none'"),
]


class HTTPError(Exception):
    def __init__(self, status: str, message: str, headers: list[tuple[str, str]] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or []


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def human_seconds(s: float | None) -> str:
    if s is None or s < 0:
        return "-"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{sec:02d}s" if m else f"{sec}s"


def when(ts: float | None) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


_TEMPLATES.filters.update(bytes=human_bytes, duration=human_seconds, when=when, basename=os.path.basename,
                          staged=lambda source, staging: staged_name(staging, source))


class StatusApp:
    """WSGI app over a running Service (its store, config and live progress)."""

    def __init__(self, service):
        self.service = service
        self.cfg = service.cfg
        self._key = secrets.token_bytes(32)  # new each start: tokens of an old page are refused
        self.csrf_token = hmac.new(self._key, b"retry", hashlib.sha256).hexdigest()

    # -- data ----------------------------------------------------------------------

    def status(self) -> dict:
        svc, now = self.service, time.time()
        try:
            jobs, queue_problem = svc.store.list_jobs(), ""
        except QueueUnavailable as exc:  # PostgreSQL away: the page still answers, and says so
            jobs, queue_problem = [], str(exc)
        snap = svc.snapshot()
        live = {r["id"]: r for r in snap.running}
        by_state: dict[str, list[dict]] = {state: [] for state in STATES}
        for job in jobs:
            d = job.to_json()
            if job.state == "running":
                entry = live.get(job.id, {})
                d["progress"] = entry.get("progress", job.progress)
                d["fps"] = entry.get("fps", job.fps)
                d["speed"] = entry.get("speed", 0.0)
                elapsed = now - job.started if job.started else 0.0
                d["elapsed"] = elapsed
                d["eta"] = elapsed * (1 - d["progress"]) / d["progress"] if d["progress"] > 0.005 else None
            by_state.setdefault(job.state, []).append(d)
        by_state["queued"].sort(key=lambda d: (-d.get("priority", 0), d["id"]))  # the order claim() takes them
        by_state["done"] = sorted(by_state["done"], key=lambda d: d["finished"] or 0, reverse=True)[:DONE_SHOWN]
        by_state["failed"].sort(key=lambda d: d["finished"] or 0, reverse=True)
        by_state["cancelled"] = sorted(by_state["cancelled"], key=lambda d: d["finished"] or 0,
                                       reverse=True)[:DONE_SHOWN]
        filesystems = [{"dir": name, "free": f, "size": t, "free_ratio": f / t if t else 0.0,
                        "path": getattr(self.cfg, name)} for name, (f, t) in snap.filesystems.items()]
        return {
            "version": __version__, "now": now, "counts": snap.counts, "jobs": by_state,
            "filesystems": filesystems, "oldest_queued_age": snap.oldest_queued_age,
            "last_scan": snap.last_scan, "max_attempts": self.cfg.max_attempts,
            "gpu_proof": self.gpu_proof(), "gpu_proof_file": self.cfg.gpu_proof_file,
            "gpu_usage": svc.gpu_usage().to_json(),
            "rips": read_status(self.cfg.rip_status_file, now),
            "pool_missing": [{"dir": key, "path": getattr(self.cfg, key)} for key in svc.pool_missing],
            "jellyfin": self.jellyfin(),
            "workers": snap.workers, "worker": snap.worker, "queue_problem": queue_problem,
        }

    def jellyfin(self) -> dict:
        refresher = getattr(self.service, "refresher", None)
        enabled = bool(refresher and refresher.enabled)
        return {"enabled": enabled, "url": redact_url(self.cfg.jellyfin_url) if enabled else "",
                "last": dict(refresher.last) if enabled and refresher.last else None,
                "totals": dict(refresher.totals) if enabled else {"ok": 0, "failed": 0}}

    def gpu_proof(self) -> dict | None:
        path = self.cfg.gpu_proof_file
        if not path:
            return None
        try:
            with open(path, encoding="utf-8") as fh:
                proof = json.load(fh)
            proof.setdefault("checked_at", os.path.getmtime(path))
        except (OSError, ValueError):
            return None
        return proof if isinstance(proof, dict) else None

    # -- WSGI ----------------------------------------------------------------------

    def __call__(self, environ, start_response):
        try:
            self.authenticate(environ)
            status, headers, body = self.route(environ)
        except HTTPError as exc:
            status, headers = exc.status, [("Content-Type", "text/plain; charset=utf-8"), *exc.headers]
            body = f"{exc.status}: {exc.message}\n".encode()
        start_response(status, [*headers, *_HEADERS, ("Content-Length", str(len(body)))])
        return [body] if environ.get("REQUEST_METHOD") != "HEAD" else [b""]

    def authenticate(self, environ) -> None:
        if not self.cfg.web_password:
            return
        challenge = [("WWW-Authenticate", 'Basic realm="media-pipeline", charset="UTF-8"')]
        header = environ.get("HTTP_AUTHORIZATION", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic" or not value:
            raise HTTPError("401 Unauthorized", "this page needs the password (any user name)", challenge)
        try:
            _user, sep, given = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise HTTPError("401 Unauthorized", "malformed Authorization header", challenge) from None
        if not sep or not hmac.compare_digest(given.encode(), self.cfg.web_password.encode()):
            raise HTTPError("401 Unauthorized", "wrong password", challenge)

    def route(self, environ):
        path, method = environ.get("PATH_INFO", "/") or "/", environ.get("REQUEST_METHOD", "GET")
        if path in ("/", "/api/status"):
            if method not in ("GET", "HEAD"):
                raise HTTPError("405 Method Not Allowed", f"{path} is read-only: use GET",
                                [("Allow", "GET, HEAD")])
            data = self.status()
            if path == "/api/status":
                return "200 OK", [("Content-Type", "application/json")], \
                    json.dumps(data, ensure_ascii=False).encode()
            notice = self.notice(environ.get("QUERY_STRING", ""))
            html = _TEMPLATES.get_template("status.html").render(
                **data, csrf_token=self.csrf_token, refresh=REFRESH_SECONDS, notice=notice,
                staging=self.cfg.staging)
            return "200 OK", [("Content-Type", "text/html; charset=utf-8")], html.encode()
        match = _ACTION.match(path)
        if match:
            action = match.group(2)
            if method != "POST":
                raise HTTPError("405 Method Not Allowed", f"{action} changes the queue: use POST (the page's button)",
                                [("Allow", "POST")])
            return getattr(self, action)(environ, int(match.group(1)))
        raise HTTPError("404 Not Found", f"no such page: {path}")

    _NOTICES = {"retried": "Job {} is queued again.",
                "cancelled": "Job {} is cancelled: it will not be transcoded; its rip stays in staging "
                             "(Queue again, under Cancelled, undoes it).",
                "fronted": "Job {} is at the front of the queue: it is the next to start."}

    def notice(self, query: str) -> str:
        q = parse_qs(query)
        for key, text in self._NOTICES.items():
            if key in q and q[key][0].isdigit():
                return text.format(q[key][0])
        return ""

    def check_post(self, environ, action: str) -> None:
        """What every POST must pass before it changes anything: the page's origin (check_origin)
        and its CSRF token."""
        self.check_origin(environ)
        form = read_form(environ)
        token = form.get("csrf_token", [""])[0]
        if not hmac.compare_digest(token.encode(), self.csrf_token.encode()):
            raise HTTPError("403 Forbidden", f"missing or stale CSRF token: reload the page and press {action} again")

    def _job_in(self, job_id: int, states: tuple[str, ...], action: str):
        job = self.service.store.get(job_id)
        if job is None:
            raise HTTPError("404 Not Found", f"no job {job_id}")
        if job.state not in states:
            raise HTTPError("409 Conflict", f"job {job_id} is {job.state}, not {' or '.join(states)}: "
                                            f"only {' or '.join(states)} jobs can be {action}")
        return job

    def _done(self, job_id: int, key: str, text: str):
        return "303 See Other", [("Location", f"/?{key}={job_id}"), ("Content-Type", "text/plain")], \
            f"job {job_id} {text}\n".encode()

    def retry(self, environ, job_id: int):
        """A failed job, or a cancelled one, back in the queue with fresh attempts."""
        self.check_post(environ, "retry")
        self._job_in(job_id, ("failed", "cancelled"), "retried")
        if not self.service.retry(job_id):
            raise HTTPError("409 Conflict", f"job {job_id} changed meanwhile; reload the page")
        return self._done(job_id, "retried", "queued again")

    def cancel(self, environ, job_id: int):
        """A queued job cancelled (never claimed; its rip stays in staging, and is not queued again)."""
        self.check_post(environ, "cancel")
        self._job_in(job_id, ("queued",), "cancelled")
        if not self.service.cancel(job_id):
            raise HTTPError("409 Conflict", f"job {job_id} changed meanwhile (a worker took it?); reload the page")
        return self._done(job_id, "cancelled", "cancelled")

    def front(self, environ, job_id: int):
        """A queued job moved to the front of the queue."""
        self.check_post(environ, "to front")
        self._job_in(job_id, ("queued",), "moved to the front")
        if not self.service.to_front(job_id):
            raise HTTPError("409 Conflict", f"job {job_id} changed meanwhile (a worker took it?); reload the page")
        return self._done(job_id, "fronted", "is at the front of the queue")

    def check_origin(self, environ) -> None:
        """A browser sends Origin (or at least Referer) on a form POST: it must be this page's origin."""
        source = environ.get("HTTP_ORIGIN") or environ.get("HTTP_REFERER")
        if source:
            expected = self.expected_origin(environ)
            if expected is None:  # no public_url, no trusted proxy: the Host the request came with
                given, expected = urlsplit(source).netloc, environ.get("HTTP_HOST", "")
            else:  # scheme, host and port, as browsers compare origins
                given = origin_of(source)
            if not given or given != expected:  # "null" (a sandboxed or privacy-stripped origin) too
                raise HTTPError("403 Forbidden", f"cross-site request refused (from {given or source!r}, not "
                                                 f"{expected!r}); behind a reverse proxy, set public_url "
                                                 f"(docs/reverse-proxy.md)")
        if environ.get("HTTP_SEC_FETCH_SITE", "same-origin") not in ("same-origin", "none"):
            raise HTTPError("403 Forbidden", "cross-site request refused (Sec-Fetch-Site)")

    def expected_origin(self, environ) -> str | None:
        """The page's origin as scheme://host:port: public_url, else what a trusted proxy says in
        X-Forwarded-Host/-Proto; None = neither (compare with the Host header, as before)."""
        if self.cfg.public_url:
            return origin_of(self.cfg.public_url)
        host = _first(environ.get("HTTP_X_FORWARDED_HOST", ""))
        if host and self.from_trusted_proxy(environ):
            scheme = _first(environ.get("HTTP_X_FORWARDED_PROTO", "")).lower() or environ.get("wsgi.url_scheme", "http")
            return origin_of(f"{scheme}://{host}") or f"unusable X-Forwarded-Host {host!r}"
        return None

    def from_trusted_proxy(self, environ) -> bool:
        """The peer is in trusted_proxies: only a proxy we know may say what the browser's address was."""
        try:
            peer = ipaddress.ip_address(environ.get("REMOTE_ADDR", ""))
        except ValueError:
            return False
        return any(peer in ipaddress.ip_network(n, strict=False) for n in self.cfg.trusted_proxies)


def _first(header: str) -> str:
    """The first of comma-separated values (the one the browser's side of the proxy chain set)."""
    return header.split(",")[0].strip()


def origin_of(url: str) -> str | None:
    """scheme://host:port of a URL (the port always spelt out), None when it has no http(s) origin."""
    try:
        parts = urlsplit(url)
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme.lower())
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname  # hostname is lower case
    return f"{parts.scheme.lower()}://{host}:{port}"


def read_form(environ) -> dict[str, list[str]]:
    ctype = environ.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        raise HTTPError("415 Unsupported Media Type", "send the form as application/x-www-form-urlencoded")
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise HTTPError("400 Bad Request", "bad Content-Length") from None
    if length > MAX_FORM_BYTES:
        raise HTTPError("413 Content Too Large", f"form larger than {MAX_FORM_BYTES} bytes")
    body = environ["wsgi.input"].read(length) if length > 0 else b""
    return parse_qs(body.decode("utf-8", errors="replace"))


def serve(service, bind: str, port: int) -> WSGIThreadServer:
    return WSGIThreadServer(bind, port, StatusApp(service), name="status-page").start()
