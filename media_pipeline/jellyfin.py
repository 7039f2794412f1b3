"""Jellyfin's HTTP API, as much as the pipeline needs: a small client, the idempotent configuration
of a fresh server, and the notifier that tells Jellyfin about each file the pipeline publishes.

The calls follow Jellyfin's published API (https://api.jellyfin.org/, the OpenAPI description of
10.9 and 10.10; the controllers in github.com/jellyfin/jellyfin Jellyfin.Api/Controllers at v10.10.7):

  GET  /System/Info/Public                     no token: Version, ServerName, Id, StartupWizardCompleted
  GET  /System/Info
  GET  /Startup/Configuration, POST (JSON)     the startup wizard; without a token only until
  GET  /Startup/User, POST {Name, Password}    POST /Startup/Complete (then an administrator's token)
  POST /Startup/RemoteAccess {EnableRemoteAccess, EnableAutomaticPortMapping}
  POST /Startup/Complete
  POST /Users/AuthenticateByName {Username, Pw} -> {AccessToken, User, ServerId}
  GET  /Library/VirtualFolders                 [{Name, Locations, CollectionType, ...}]
  POST /Library/VirtualFolders?name=&collectionType=&paths=&refreshLibrary=  (an existing name is NOT
                                               refused: Jellyfin adds "Movies2"; look first)
  POST /Library/VirtualFolders/Paths {Name, Path}; DELETE /Library/VirtualFolders/Paths?name=&path=
  GET  /System/Configuration/encoding; POST it (the whole EncodingOptions object is replaced)
  GET  /Auth/Keys -> {Items: [{AccessToken, AppName, ...}]}; POST /Auth/Keys?app=NAME (204, no body)
  POST /Library/Media/Updated {Updates: [{Path, UpdateType: "Created"}]} (204)

Every call carries `Authorization: MediaBrowser Client="media-pipeline", Device="...",
DeviceId="...", Version="..."[, Token="..."]` (Jellyfin.Server.Implementations/Security/
AuthorizationContext.cs; the X-Emby-Token header is the legacy form). Only the standard library:
this runs on Debian 12's python3 in the containers. Tokens and passwords never appear in logs,
exceptions or the command's output.

  python3 -m media_pipeline.jellyfin configure --url URL --admin-user NAME --password-file FILE
      [--hwaccel none|vaapi|qsv] [--render-node /dev/dri/renderD128] [--movies /media/movies]
      [--tv /media/tv] [--key-name media-pipeline] --key-file OUT [--key-owner media] [--wait SECONDS]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import socket
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Callable

from . import __version__

TIMEOUT = 10.0
HWACCELS = ("none", "vaapi", "qsv")
# (name, collectionType, path in the Jellyfin container)
DEFAULT_LIBRARIES = (("Movies", "movies", "/media/movies"), ("Shows", "tvshows", "/media/tv"))
DEFAULT_KEY_NAME = "media-pipeline"
CLIENT = "media-pipeline"

log = logging.getLogger("media-pipeline")


class JellyfinError(Exception):
    """A Jellyfin call that did not work, phrased for a person; never holds a token or password.
    `status` is the HTTP status (None when Jellyfin was not reached)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def _quote(value: str) -> str:
    return urllib.parse.quote(value, safe=" ./:@-_")


def redact_url(url: str) -> str:
    """The URL without user:password@ (a URL may carry them; messages must not)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", "")).rstrip("/")


class JellyfinClient:
    def __init__(self, url: str, token: str = "", *, timeout: float = TIMEOUT, device: str | None = None,
                 device_id: str | None = None):
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.device = device or socket.gethostname() or "media-pipeline"
        self.device_id = device_id or f"media-pipeline-{self.device}"
        self._secrets: list[str] = []

    def __repr__(self) -> str:  # no token
        return f"JellyfinClient({redact_url(self.url)!r})"

    def authorization(self) -> str:
        fields = [("Client", CLIENT), ("Device", self.device), ("DeviceId", self.device_id), ("Version", __version__)]
        if self.token:
            fields.append(("Token", self.token))
        return "MediaBrowser " + ", ".join(f'{k}="{_quote(v)}"' for k, v in fields)

    def _scrub(self, text: str) -> str:
        for secret in [self.token, *self._secrets]:
            if secret:
                text = text.replace(secret, "***")
        return text

    def request(self, method: str, path: str, query: list[tuple[str, str]] | None = None,
                body: object = None, expect: tuple[int, ...] = (200, 204)):
        """One call; the parsed JSON answer (None for 204). Raises JellyfinError."""
        target = self.url + path + ("?" + urllib.parse.urlencode(query) if query else "")
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": self.authorization(), "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(target, data=data, method=method, headers=headers)
        where = f"Jellyfin at {redact_url(self.url)}: {method} {path}"
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310 - http(s) only
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            detail = ""
            try:
                detail = exc.read(300).decode("utf-8", "replace").strip()
            except OSError:
                pass
            hint = {401: " (no or a wrong token: not authorized)", 403: " (forbidden: not an administrator)"}
            message = f"{where} answered {exc.code} {exc.reason}{hint.get(exc.code, '')}"
            if detail:
                message += f": {self._scrub(detail.splitlines()[0])[:200]}"
            raise JellyfinError(message, exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, (socket.timeout, TimeoutError)) or isinstance(exc, (socket.timeout, TimeoutError)):
                reason = f"no answer within {self.timeout:g} s"
            raise JellyfinError(f"cannot reach {where}: {self._scrub(str(reason))}") from None
        if status not in expect:
            raise JellyfinError(f"{where} answered {status}, expected {' or '.join(map(str, expect))}", status)
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise JellyfinError(f"{where} answered something that is not JSON", status) from None

    # -- the calls ------------------------------------------------------------------------

    def public_info(self) -> dict:
        return self.request("GET", "/System/Info/Public")

    def system_info(self) -> dict:
        return self.request("GET", "/System/Info")

    def startup_configuration(self) -> dict:
        return self.request("GET", "/Startup/Configuration")

    def set_startup_configuration(self, config: dict) -> None:
        self.request("POST", "/Startup/Configuration", body=config)

    def startup_user(self) -> dict:
        return self.request("GET", "/Startup/User")

    def set_startup_user(self, name: str, password: str) -> None:
        self._secrets.append(password)
        self.request("POST", "/Startup/User", body={"Name": name, "Password": password})

    def set_remote_access(self, enable_remote_access: bool = True, enable_upnp: bool = False) -> None:
        self.request("POST", "/Startup/RemoteAccess", body={"EnableRemoteAccess": enable_remote_access,
                                                           "EnableAutomaticPortMapping": enable_upnp})

    def complete_wizard(self) -> None:
        self.request("POST", "/Startup/Complete")

    def authenticate(self, user: str, password: str) -> str:
        """Log in; the session token becomes this client's token (and is returned)."""
        self._secrets.append(password)
        self.token = ""
        try:
            answer = self.request("POST", "/Users/AuthenticateByName", body={"Username": user, "Pw": password})
        except JellyfinError as exc:
            if exc.status == 401:
                raise JellyfinError(f"Jellyfin at {redact_url(self.url)} refused the login of {user!r}: wrong "
                                    f"user name or password (check the password file)", 401) from None
            raise
        token = (answer or {}).get("AccessToken")
        if not token:
            raise JellyfinError(f"Jellyfin at {redact_url(self.url)} answered the login without an AccessToken")
        self.token = token
        return token

    def virtual_folders(self) -> list[dict]:
        return self.request("GET", "/Library/VirtualFolders") or []

    def add_virtual_folder(self, name: str, collection_type: str, paths: list[str], refresh: bool = True) -> None:
        query = [("name", name), ("collectionType", collection_type), *[("paths", p) for p in paths],
                 ("refreshLibrary", "true" if refresh else "false")]
        self.request("POST", "/Library/VirtualFolders", query,
                     body={"LibraryOptions": {"PathInfos": [{"Path": p} for p in paths]}})

    def add_media_path(self, name: str, path: str, refresh: bool = True) -> None:
        self.request("POST", "/Library/VirtualFolders/Paths", [("refreshLibrary", "true" if refresh else "false")],
                     body={"Name": name, "Path": path})

    def remove_media_path(self, name: str, path: str, refresh: bool = False) -> None:
        self.request("DELETE", "/Library/VirtualFolders/Paths",
                     [("name", name), ("path", path), ("refreshLibrary", "true" if refresh else "false")])

    def encoding_options(self) -> dict:
        return self.request("GET", "/System/Configuration/encoding")

    def set_encoding_options(self, options: dict) -> None:
        self.request("POST", "/System/Configuration/encoding", body=options)

    def api_keys(self) -> list[dict]:
        return (self.request("GET", "/Auth/Keys") or {}).get("Items") or []

    def create_api_key(self, app: str) -> None:
        self.request("POST", "/Auth/Keys", [("app", app)])

    def media_updated(self, paths: list[str], update_type: str = "Created") -> None:
        self.request("POST", "/Library/Media/Updated",
                     body={"Updates": [{"Path": p, "UpdateType": update_type} for p in paths]})


# --- configure: a fresh or configured server to the wanted state, changing only what differs ----------

def wanted_encoding(current: dict, hwaccel: str, render_node: str) -> dict:
    """The encoding options with hardware acceleration as wanted (the rest as they are)."""
    if hwaccel not in HWACCELS:
        raise ValueError(f"hwaccel must be one of {', '.join(HWACCELS)} (got {hwaccel!r})")
    new = dict(current)
    new["HardwareAccelerationType"] = hwaccel
    if hwaccel == "vaapi":
        new["VaapiDevice"] = render_node
        new["EnableHardwareEncoding"] = True
    elif hwaccel == "qsv":
        # 10.10 opens QSV on QsvDevice; 10.9 has no such field and derives QSV from VaapiDevice
        new["QsvDevice" if "QsvDevice" in current else "VaapiDevice"] = render_node
        new["EnableHardwareEncoding"] = True
    return new


def configure(url: str, admin_user: str, admin_password: str,
              libraries=DEFAULT_LIBRARIES, hwaccel: str = "none", render_node: str = "/dev/dri/renderD128",
              api_key_name: str = DEFAULT_KEY_NAME, *, timeout: float = TIMEOUT,
              client: JellyfinClient | None = None) -> dict:
    """Bring Jellyfin at `url` to the wanted state; a second run changes nothing.

    Returns {"version", "url", "server", "libraries": [{name, collectionType, paths}], "hwaccel",
    "changed": [what this run changed], "warnings": [...], "api_key": the key (secret: the caller
    keeps it out of any output), "api_key_created": bool}. Raises JellyfinError or ValueError.
    """
    if hwaccel not in HWACCELS:
        raise ValueError(f"hwaccel must be one of {', '.join(HWACCELS)} (got {hwaccel!r})")
    if not admin_password:
        raise ValueError("the admin password is empty")
    jf = client or JellyfinClient(url, timeout=timeout)
    changed: list[str] = []
    warnings: list[str] = []
    info = jf.public_info()
    if not info.get("StartupWizardCompleted"):
        jf.set_startup_configuration(jf.startup_configuration())
        jf.startup_user()  # as Jellyfin's wizard does: the first user exists from here on
        jf.set_startup_user(admin_user, admin_password)
        jf.set_remote_access(True, False)
        jf.complete_wizard()
        changed += ["startup wizard completed", f"administrator {admin_user} created"]
    jf.authenticate(admin_user, admin_password)

    folders = jf.virtual_folders()
    for name, collection_type, path in libraries:
        existing = next((f for f in folders if f.get("Name") == name), None)
        if existing is None:
            jf.add_virtual_folder(name, collection_type, [path])
            changed.append(f"library {name} added ({collection_type}, {path})")
            continue
        if (existing.get("CollectionType") or "").lower() != collection_type:
            warnings.append(f"library {name} is of type {existing.get('CollectionType')}, not {collection_type}; "
                            f"Jellyfin cannot change a library's type: remove it in the dashboard to have it remade")
        locations = list(existing.get("Locations") or [])
        if path not in locations:
            jf.add_media_path(name, path)
            changed.append(f"library {name}: path {path} added")
        for old in locations:
            if old != path:
                jf.remove_media_path(name, old)
                changed.append(f"library {name}: path {old} removed")
    current = jf.encoding_options()
    new = wanted_encoding(current, hwaccel, render_node)
    if new != current:
        jf.set_encoding_options(new)
        changed.append(f"hardware acceleration {hwaccel}" + (f" on {render_node}" if hwaccel != "none" else ""))

    keys = [k for k in jf.api_keys() if k.get("AppName") == api_key_name]
    created = False
    if not keys:
        jf.create_api_key(api_key_name)  # 204 without the key: read it back
        keys = [k for k in jf.api_keys() if k.get("AppName") == api_key_name]
        if not keys:
            raise JellyfinError(f"Jellyfin at {redact_url(url)} created no API key named {api_key_name!r}")
        created = True
        changed.append(f"API key {api_key_name} created")
    key = keys[0].get("AccessToken") or ""
    if not key:
        raise JellyfinError(f"Jellyfin at {redact_url(url)} lists the API key {api_key_name!r} without its token")
    folders = jf.virtual_folders()
    wanted_names = [name for name, _t, _p in libraries]
    return {
        "version": info.get("Version"), "url": redact_url(url), "server": info.get("ServerName"),
        "libraries": [{"name": f.get("Name"), "collectionType": f.get("CollectionType"),
                       "paths": list(f.get("Locations") or [])} for f in folders if f.get("Name") in wanted_names],
        "hwaccel": hwaccel, "changed": changed, "warnings": warnings,
        "api_key": key, "api_key_created": created,
    }


def wait_until_up(url: str, seconds: float, timeout: float = TIMEOUT) -> None:
    """Poll /System/Info/Public until Jellyfin answers (a just-started server), at most `seconds`."""
    deadline = time.monotonic() + seconds
    jf = JellyfinClient(url, timeout=timeout)
    while True:
        try:
            jf.public_info()
            return
        except JellyfinError:
            if time.monotonic() >= deadline:
                raise
        time.sleep(1.0)


def write_secret(path: str, value: str) -> bool:
    """Write `value` to `path` mode 0600 (atomically); False when it already holds exactly that."""
    try:
        with open(path, encoding="utf-8") as fh:
            same = fh.read().strip() == value
        if same and (os.stat(path).st_mode & 0o777) == 0o600:
            return False
    except FileNotFoundError:
        pass
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".jellyfin-key.")  # mkstemp: 0600 from the start
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(value + "\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return True


def give_to(path: str, user: str) -> bool:
    """chown `path` to `user` and its primary group; False when it is theirs already."""
    import pwd

    entry = pwd.getpwnam(user)  # KeyError: no such user
    st = os.stat(path)
    if (st.st_uid, st.st_gid) == (entry.pw_uid, entry.pw_gid):
        return False
    os.chown(path, entry.pw_uid, entry.pw_gid)
    return True


def read_secret(path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            value = fh.readline().rstrip("\r\n")
    except OSError as exc:
        raise JellyfinError(f"cannot read the {what} file {path}: {exc.strerror}") from None
    if not value:
        raise JellyfinError(f"the {what} file {path} is empty")
    return value


# --- the notifier: tell Jellyfin about each published file ------------------------------------

RETRY_DELAYS = (1.0, 5.0, 25.0)
MAX_CARRIED = 100  # paths given up on, sent again with the next refresh


def map_path(path: str, path_map) -> str:
    """`path` with the longest matching host prefix of `path_map` ((host, container) pairs, or a
    dict) replaced by its container path; unchanged when none matches."""
    pairs = path_map.items() if isinstance(path_map, dict) else path_map
    best = None
    for host, container in pairs:
        host_n = host.rstrip("/") or "/"
        if path == host_n or path.startswith(host_n.rstrip("/") + "/"):
            if best is None or len(host_n) > len(best[0]):
                best = (host_n, container.rstrip("/") or "/")
    if best is None:
        return path
    rest = path[len(best[0]):].lstrip("/")
    return best[1] if not rest else best[1].rstrip("/") + "/" + rest


class LibraryRefresher:
    """Tells Jellyfin (POST /Library/Media/Updated) about each published file, in a thread of its own:
    submit() never blocks and never raises, so Jellyfin can never delay or fail a job.

    A refused or unreachable Jellyfin is retried after each of `delays` seconds; the first failure of a
    streak is logged as a warning, the rest at debug level, and the recovery once. Paths given up on
    are sent again with the next refresh (at most MAX_CARRIED). `count(outcome)` is called for each
    call to Jellyfin ("ok" or "failed"); `last` is the latest result, also written to `state_file`.
    """

    def __init__(self, url: str, key_file: str, path_map=(), *, delays=RETRY_DELAYS,
                 count: Callable[[str], None] | None = None, state_file: str = "", timeout: float = TIMEOUT,
                 logger: logging.Logger = log):
        self.url, self.key_file = url, key_file
        self.path_map = tuple(path_map.items() if isinstance(path_map, dict) else path_map)
        self.delays, self.count, self.state_file, self.timeout = tuple(delays), count, state_file, timeout
        self.log = logger
        self.last: dict | None = None
        self.totals = {"ok": 0, "failed": 0}
        self._queue: queue.Queue[str] = queue.Queue()
        self._carried: list[str] = []
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._pending = 0
        self._failing = False
        self._warned_mode = False
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.url)

    def describe(self) -> str:
        return f"Jellyfin refresh to {redact_url(self.url)}" if self.url else "Jellyfin refresh off (no jellyfin_url)"

    def submit(self, host_path: str) -> None:
        if not self.url:
            return
        try:
            with self._lock:
                self._pending += 1
                self._idle.clear()
                self._queue.put(host_path)
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(target=self._run, name="jellyfin-refresh", daemon=True)
                    self._thread.start()
        except Exception as exc:  # noqa: BLE001 - e.g. no thread can be started: the job is done anyway
            self.log.warning("cannot start the Jellyfin refresh of %s: %s", host_path, exc)

    def close(self, timeout: float) -> None:
        """Give queued refreshes up to `timeout` seconds, then stop waiting for retries."""
        if self._thread is None:
            return
        finished = self._idle.wait(timeout)
        self._stop.set()
        self._thread.join(1.0)
        if not finished:
            self.log.warning("stopping before Jellyfin heard of every new file (it finds them at its next scan)")

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                path = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            batch = [path]
            while True:  # whatever else is queued goes in the same call
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self._deliver(batch)
            except Exception as exc:  # noqa: BLE001 - the thread must survive anything
                self.log.error("internal error in the Jellyfin refresh: %r", exc)
            with self._lock:
                self._pending -= len(batch)
                if self._pending <= 0:
                    self._idle.set()

    def _deliver(self, host_paths: list[str]) -> None:
        paths = [map_path(p, self.path_map) for p in host_paths]
        with self._lock:
            carried, self._carried = self._carried, []
        send = list(dict.fromkeys(carried + paths))
        for attempt in range(len(self.delays) + 1):
            if attempt:
                if self._stop.wait(self.delays[attempt - 1]):
                    break
            reason = self._call(send)
            if reason is None:
                self._record(paths, True, "", attempt + 1, host_paths)
                if self._failing:
                    self.log.info("Jellyfin takes refreshes again (%s)", redact_url(self.url))
                self._failing = False
                return
            if not self._failing:
                self.log.warning("Jellyfin refresh failed, retrying up to %d time(s): %s",
                                 len(self.delays), reason)
            else:
                self.log.debug("Jellyfin refresh failed again: %s", reason)
            self._failing = True
            self._record(paths, False, reason, attempt + 1, host_paths)
        with self._lock:
            self._carried = (self._carried + send)[-MAX_CARRIED:]
        self.log.debug("Jellyfin refresh of %d path(s) given up for now; sent again with the next one", len(send))

    def _call(self, paths: list[str]) -> str | None:
        """None when Jellyfin took it, else why not."""
        try:
            self._check_key_mode()
            key = read_secret(self.key_file, "jellyfin_api_key_file")
            JellyfinClient(self.url, key, timeout=self.timeout).media_updated(paths)
        except JellyfinError as exc:
            self._count("failed")
            return str(exc)
        self._count("ok")
        return None

    def _check_key_mode(self) -> None:
        if self._warned_mode:
            return
        try:
            mode = os.stat(self.key_file).st_mode & 0o777
        except OSError:
            return
        if mode & 0o077:
            self._warned_mode = True
            self.log.warning("jellyfin_api_key_file %s is mode %o; it holds a secret: chmod 600 it", self.key_file, mode)

    def _count(self, outcome: str) -> None:
        self.totals[outcome] += 1
        if self.count:
            try:
                self.count(outcome)
            except Exception:  # noqa: BLE001 - metrics never break the refresh
                pass

    def _record(self, paths: list[str], ok: bool, reason: str, attempt: int, host_paths: list[str]) -> None:
        self.last = {"time": time.time(), "path": paths[-1], "paths": paths, "host_path": host_paths[-1],
                     "ok": ok, "reason": reason, "attempt": attempt, "url": redact_url(self.url),
                     "totals": dict(self.totals)}
        if self.state_file:
            try:
                directory = os.path.dirname(self.state_file)
                fd, tmp = tempfile.mkstemp(dir=directory, prefix=".jellyfin-refresh.")
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    json.dump(self.last, fh, ensure_ascii=False)
                os.chmod(tmp, 0o644)
                os.replace(tmp, self.state_file)
            except OSError as exc:
                self.log.debug("cannot write %s: %s", self.state_file, exc)


def read_state(path: str) -> dict | None:
    """The last refresh result the service wrote (for `media-pipeline status`), None if none."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def state_file_for(db: str) -> str:
    return os.path.join(os.path.dirname(db), "jellyfin-refresh.json")


# --- command line --------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m media_pipeline.jellyfin",
                                     description="Configure a Jellyfin server for the media pipeline.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("configure", help="finish the wizard, add the libraries, set hardware acceleration, "
                                         "make the pipeline's API key; a second run changes nothing")
    c.add_argument("--url", required=True, help="Jellyfin's address, e.g. http://127.0.0.1:8096")
    c.add_argument("--admin-user", required=True, help="the administrator's user name")
    c.add_argument("--password-file", required=True, help="file whose first line is the administrator's password")
    c.add_argument("--hwaccel", choices=HWACCELS, default="none", help="hardware acceleration (default none)")
    c.add_argument("--render-node", default="/dev/dri/renderD128", help="the GPU's render node in Jellyfin's container")
    c.add_argument("--movies", default=DEFAULT_LIBRARIES[0][2], help="the Movies library's path in Jellyfin's container")
    c.add_argument("--tv", default=DEFAULT_LIBRARIES[1][2], help="the Shows library's path in Jellyfin's container")
    c.add_argument("--key-name", default=DEFAULT_KEY_NAME, help="the API key's app name (default media-pipeline)")
    c.add_argument("--key-file", required=True, help="where the API key is written (mode 0600); never printed")
    c.add_argument("--key-owner", help="user who must read the key file (the service's, e.g. media): it gets "
                                       "the file (run as root)")
    c.add_argument("--wait", type=float, default=0.0, help="seconds to wait for Jellyfin to answer (default 0)")
    c.add_argument("--timeout", type=float, default=TIMEOUT, help="seconds per HTTP call (default 10)")
    args = parser.parse_args(argv)

    def fail(message: str, code: int = 1) -> int:
        print(f"media_pipeline.jellyfin: {message}", file=sys.stderr)
        return code

    if not args.url.startswith(("http://", "https://")):
        return fail(f"--url must start with http:// or https:// (got {redact_url(args.url)})", 2)
    try:
        password = read_secret(args.password_file, "password")
        if args.wait:
            wait_until_up(args.url, args.wait, args.timeout)
        libraries = ((DEFAULT_LIBRARIES[0][0], "movies", args.movies), (DEFAULT_LIBRARIES[1][0], "tvshows", args.tv))
        result = configure(args.url, args.admin_user, password, libraries, args.hwaccel, args.render_node,
                           args.key_name, timeout=args.timeout)
        key = result.pop("api_key")
        if write_secret(args.key_file, key):
            result["changed"].append(f"key file {args.key_file} written")
        if args.key_owner and give_to(args.key_file, args.key_owner):
            result["changed"].append(f"key file {args.key_file} given to {args.key_owner}")
    except JellyfinError as exc:
        return fail(str(exc))
    except ValueError as exc:
        return fail(str(exc), 2)
    except (OSError, KeyError) as exc:
        return fail(f"cannot write the key file {args.key_file}: {getattr(exc, 'strerror', None) or exc}")
    result["apiKey"] = f"written to {args.key_file}"
    print(json.dumps(result, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
