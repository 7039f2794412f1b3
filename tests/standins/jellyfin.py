"""A stand-in for a Jellyfin server's HTTP API (tests only: Jellyfin cannot be downloaded here).

It plays the calls media_pipeline/jellyfin.py makes, with state, as Jellyfin 10.10 answers them,
built from Jellyfin's published API: the OpenAPI description at https://api.jellyfin.org/
(openapi/jellyfin-openapi-stable.json, 10.9 and 10.10) and the controllers it is generated from,
github.com/jellyfin/jellyfin at tag v10.10.7:

  Jellyfin.Api/Controllers/StartupController.cs        /Startup/* (policy FirstTimeSetupOrElevated)
  Jellyfin.Api/Controllers/SystemController.cs         GET /System/Info/Public, GET /System/Info
  Jellyfin.Api/Controllers/UserController.cs           POST /Users/AuthenticateByName {Username, Pw}
  Jellyfin.Api/Controllers/LibraryStructureController.cs  /Library/VirtualFolders[/Paths]
  Jellyfin.Api/Controllers/ConfigurationController.cs  GET/POST /System/Configuration/{key}
  Jellyfin.Api/Controllers/ApiKeyController.cs         GET /Auth/Keys, POST /Auth/Keys?app= (204, no body)
  Jellyfin.Api/Controllers/LibraryController.cs        POST /Library/Media/Updated {Updates: [{Path, UpdateType}]}
  Jellyfin.Server.Implementations/Security/AuthorizationContext.cs  how a request carries its token:
      Authorization (or X-Emby-Authorization): MediaBrowser Client="..", Device="..", DeviceId="..",
      Version="..", Token=".."; else the X-Emby-Token or X-MediaBrowser-Token header; else the
      ApiKey / api_key query parameter. An API key authenticates as an administrator
      (Jellyfin.Api/Auth/CustomAuthenticationHandler.cs).

What it copies from Jellyfin, because a client has to cope with it:
  * before the wizard is complete /Startup/* and /Library/VirtualFolders need no token; after it,
    they need an administrator's (anonymous: 401);
  * POST /Library/VirtualFolders with a name that exists does not fail: Jellyfin adds "Movies2"
    (LibraryManager.AddVirtualFolder), so a client must look before it adds;
  * a library path must exist in Jellyfin's file system (`dirs`): 400 when adding a library,
    404 when adding a path (FileNotFoundException);
  * POST /System/Configuration/encoding replaces the whole named configuration: fields left out
    fall back to their defaults (EncodingOptions' constructor);
  * POST /Auth/Keys answers 204 without the key: the key is read back from GET /Auth/Keys;
  * routes and query parameter names are case-insensitive (ASP.NET Core);
  * bodies need Content-Type application/json (else 415).

What it adds, for tests: every call is recorded (`calls`); a call it does not know (unknown path or
method) answers 404/405 and is recorded in `unknown`; a known call it has to refuse for its form
(bad body, missing header fields, wrong content type) is recorded in `rejected`. Tests assert both
are empty. `refuse(500)` makes it answer every call with that status; `go_away()` closes its port
and `come_back()` opens it again; `slow(seconds)` delays every answer.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, unquote, urlsplit

VERSION = "10.10.7"
HWACCEL_TYPES = ("none", "amf", "qsv", "nvenc", "v4l2m2m", "vaapi", "videotoolbox", "rkmpp")
COLLECTION_TYPES = ("movies", "tvshows", "music", "musicvideos", "homevideos", "boxsets", "books", "mixed")
UPDATE_TYPES = ("Created", "Modified", "Deleted")


def default_encoding_options() -> dict:
    """EncodingOptions' defaults in 10.10 (MediaBrowser.Model/Configuration/EncodingOptions.cs), the
    fields a configuration client touches and a few around them."""
    return {
        "EncodingThreadCount": -1, "TranscodingTempPath": "", "FallbackFontPath": "",
        "EnableFallbackFont": False, "EnableAudioVbr": False, "DownMixAudioBoost": 2,
        "MaxMuxingQueueSize": 2048, "EnableThrottling": False, "ThrottleDelaySeconds": 180,
        "EnableSegmentDeletion": False, "SegmentKeepSeconds": 720,
        "HardwareAccelerationType": "none", "EncoderAppPath": "/usr/lib/jellyfin-ffmpeg/ffmpeg",
        "EncoderAppPathDisplay": "/usr/lib/jellyfin-ffmpeg/ffmpeg",
        "VaapiDevice": "/dev/dri/renderD128", "QsvDevice": "",
        "EnableTonemapping": False, "EnableVppTonemapping": False, "EnableVideoToolboxTonemapping": False,
        "H264Crf": 23, "H265Crf": 28, "DeinterlaceDoubleRate": False, "DeinterlaceMethod": "yadif",
        "EnableDecodingColorDepth10Hevc": True, "EnableDecodingColorDepth10Vp9": True,
        "EnableDecodingColorDepth10HevcRext": False, "EnableDecodingColorDepth12HevcRext": False,
        "EnableEnhancedNvdecDecoder": True, "PreferSystemNativeHwDecoder": True,
        "EnableIntelLowPowerH264HwEncoder": False, "EnableIntelLowPowerHevcHwEncoder": False,
        "EnableHardwareEncoding": True, "AllowHevcEncoding": False, "AllowAv1Encoding": False,
        "EnableSubtitleExtraction": True, "HardwareDecodingCodecs": ["h264", "vc1"],
        "AllowOnDemandMetadataBasedKeyframeExtractionForExtensions": ["mkv"],
    }


class _Refusal(Exception):
    def __init__(self, status: int, message: str = "", record: str | None = None):
        super().__init__(message)
        self.status, self.message, self.record = status, message, record


def auth_parts(header: str) -> dict[str, str] | None:
    """The fields of `MediaBrowser Key="value", ...` (AuthorizationContext.GetAuthorization/GetParts)."""
    scheme, sep, rest = header.partition(" ")
    if not sep or scheme.lower() not in ("mediabrowser", "emby"):
        return None
    parts = {}
    for match in re.finditer(r'\s*([A-Za-z]+)\s*=\s*"([^"]*)"\s*,?', rest):
        parts[match.group(1)] = unquote(match.group(2))
    return parts


class JellyfinStandIn:
    def __init__(self, *, server_name: str = "jellyfin-standin", first_user: str = "jellyfin",
                 dirs: tuple[str, ...] = ("/media/movies", "/media/tv"), version: str = VERSION):
        self.server_name, self.version = server_name, version
        self.server_id = uuid.uuid4().hex
        self.dirs = set(dirs)  # directories that exist in "Jellyfin's" file system
        self.lock = threading.Lock()
        self.wizard_completed = False
        self.startup_config = {"UICulture": "en-US", "MetadataCountryCode": "US", "PreferredMetadataLanguage": "en"}
        self.remote_access = {"EnableRemoteAccess": True, "EnableAutomaticPortMapping": False}
        self.users = {first_user: {"Id": uuid.uuid4().hex, "Name": first_user, "Password": "", "admin": True}}
        self.sessions: dict[str, dict] = {}  # token -> {"user", "DeviceId", "Client", ...}
        self.api_keys: list[dict] = []
        self.libraries: list[dict] = []
        self.encoding = default_encoding_options()
        self.media_updates: list[dict] = []  # {"path", "type", "time" (epoch), "monotonic"}
        self.calls: list[dict] = []
        self.unknown: list[dict] = []
        self.rejected: list[dict] = []
        self.refusing: int | None = None
        self.delay = 0.0
        self.record_file: str | None = None  # also append each call (and media update) as a JSON line
        self.server: ThreadingHTTPServer | None = None
        self.port = 0
        self._thread: threading.Thread | None = None

    # -- life cycle and switches --------------------------------------------------------

    def start(self, bind: str = "127.0.0.1") -> "JellyfinStandIn":
        handler = type("Handler", (_Handler,), {"standin": self})
        self.server = ThreadingHTTPServer((bind, self.port), handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True, name="jellyfin-standin")
        self._thread.start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self._thread.join(5)
            self.server = None

    def __enter__(self) -> "JellyfinStandIn":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def refuse(self, status: int = 500) -> None:
        """Answer every call with `status` (recorded in calls with refused=True) until accept()."""
        self.refusing = status

    def accept(self) -> None:
        self.refusing = None

    def go_away(self) -> None:
        """Close the port: connections are refused, as with a stopped Jellyfin."""
        self.stop()

    def come_back(self) -> None:
        self.start()  # the same port (SO_REUSEADDR)

    def slow(self, seconds: float) -> None:
        self.delay = seconds

    # -- what tests read --------------------------------------------------------------------

    def updated_paths(self) -> list[str]:
        with self.lock:
            return [u["path"] for u in self.media_updates]

    def calls_to(self, method: str, path: str) -> list[dict]:
        with self.lock:
            return [c for c in self.calls if c["method"] == method and c["path"].lower() == path.lower()]

    def changes(self) -> list[dict]:
        """Calls that change state (not GETs, not logins), as (method, path) dicts."""
        with self.lock:
            return [c for c in self.calls if c["method"] != "GET" and c["status"] < 300
                    and c["path"].lower() != "/users/authenticatebyname"]

    def library(self, name: str) -> dict | None:
        with self.lock:
            return next((dict(lib) for lib in self.libraries if lib["Name"] == name), None)

    def set_password(self, user: str, password: str) -> None:
        with self.lock:
            self.users[user]["Password"] = password

    # -- dispatch -----------------------------------------------------------------------

    ROUTES = {
        ("GET", "/system/info/public"): ("public_info", "anon"),
        ("GET", "/system/info"): ("system_info", "first_time_or_auth"),
        ("GET", "/startup/configuration"): ("get_startup_configuration", "first_time_or_admin"),
        ("POST", "/startup/configuration"): ("post_startup_configuration", "first_time_or_admin"),
        ("GET", "/startup/user"): ("get_startup_user", "first_time_or_admin"),
        ("POST", "/startup/user"): ("post_startup_user", "first_time_or_admin"),
        ("POST", "/startup/remoteaccess"): ("post_remote_access", "first_time_or_admin"),
        ("POST", "/startup/complete"): ("post_complete", "first_time_or_admin"),
        ("POST", "/users/authenticatebyname"): ("authenticate_by_name", "anon"),
        ("GET", "/library/virtualfolders"): ("get_virtual_folders", "first_time_or_admin"),
        ("POST", "/library/virtualfolders"): ("add_virtual_folder", "first_time_or_admin"),
        ("POST", "/library/virtualfolders/paths"): ("add_media_path", "first_time_or_admin"),
        ("DELETE", "/library/virtualfolders/paths"): ("remove_media_path", "first_time_or_admin"),
        ("GET", "/system/configuration/encoding"): ("get_encoding", "auth"),
        ("POST", "/system/configuration/encoding"): ("post_encoding", "admin"),
        ("GET", "/auth/keys"): ("get_keys", "admin"),
        ("POST", "/auth/keys"): ("create_key", "admin"),
        ("POST", "/library/media/updated"): ("media_updated", "auth"),
    }

    def handle(self, method: str, target: str, headers, body: bytes) -> tuple[int, object, dict]:
        """(status, JSON-able body or None, extra headers) for one request; records it."""
        parts = urlsplit(target)
        path = unquote(parts.path).rstrip("/") or "/"
        query: dict[str, list[str]] = {}
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            query.setdefault(key.lower(), []).append(value)
        record = {"method": method, "path": path, "query": {k: v[:] for k, v in query.items()},
                  "time": time.time(), "monotonic": time.monotonic(), "status": 0, "refused": False}
        if self.delay:
            time.sleep(self.delay)
        try:
            if self.refusing:
                record["refused"] = True
                raise _Refusal(self.refusing, "refused by the test (JellyfinStandIn.refuse)")
            key = (method, path.lower())
            if key not in self.ROUTES:
                known = [m for (m, p) in self.ROUTES if p == path.lower()]
                status = 405 if known else 404
                raise _Refusal(status, f"the stand-in does not know {method} {path}", record="unknown")
            name, policy = self.ROUTES[key]
            with self.lock:
                who = self._authorize(policy, headers, query)
                status, data = getattr(self, "_" + name)(who=who, query=query, headers=headers,
                                                          body=self._json(body, headers) if method != "GET" else None)
        except _Refusal as exc:
            record["status"] = exc.status
            with self.lock:
                self.calls.append(record)
                if exc.record:
                    getattr(self, exc.record).append({**record, "reason": exc.message})
            self._write_record({**record, "unknown": exc.record == "unknown"}, path)
            return exc.status, exc.message or None, {}
        record["status"] = status
        with self.lock:
            self.calls.append(record)
        self._write_record(record, path)
        return status, data, {}

    def _write_record(self, record: dict, path: str) -> None:
        if not self.record_file:
            return
        line = {k: record[k] for k in ("method", "path", "status", "time")}
        if path.lower() == "/library/media/updated":
            with self.lock:
                line["updates"] = [u["path"] for u in self.media_updates if u["time"] == record["time"]
                                   or u["monotonic"] >= record["monotonic"]]
        with open(self.record_file, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(line) + "\n")

    def _json(self, body: bytes, headers):
        if not body:
            return None
        ctype = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype not in ("application/json", "text/json") and not ctype.endswith("+json"):
            raise _Refusal(415, f"body sent as {ctype or 'no content type'}, not application/json",
                           record="rejected")
        try:
            return json.loads(body)
        except ValueError:
            raise _Refusal(400, "the body is not JSON", record="rejected") from None

    def _token(self, headers, query) -> tuple[str | None, dict]:
        header = headers.get("X-Emby-Authorization") or headers.get("Authorization") or ""
        parts = auth_parts(header) or {}
        token = (parts.get("Token") or headers.get("X-Emby-Token") or headers.get("X-MediaBrowser-Token")
                 or (query.get("apikey") or [None])[0] or (query.get("api_key") or [None])[0])
        return token, parts

    def _authorize(self, policy: str, headers, query) -> dict | None:
        token, parts = self._token(headers, query)
        who = None
        if token:
            if token in self.sessions:
                session = self.sessions[token]
                user = self.users.get(session["user"])
                who = {"kind": "user", "user": session["user"], "admin": bool(user and user["admin"])}
            elif any(k["AccessToken"] == token for k in self.api_keys):
                who = {"kind": "apikey", "admin": True}
        who = who or {"kind": "anonymous", "admin": False}
        who["parts"] = parts
        if policy == "anon":
            return who
        if policy.startswith("first_time") and not self.wizard_completed:
            return who
        if who["kind"] == "anonymous":
            raise _Refusal(401, "")  # Jellyfin's 401 carries no body
        if policy.endswith("admin") and not who["admin"]:
            raise _Refusal(403, "")
        return who

    # -- the calls ----------------------------------------------------------------------

    def _public(self) -> dict:
        return {"LocalAddress": self.url, "ServerName": self.server_name, "Version": self.version,
                "ProductName": "Jellyfin Server", "OperatingSystem": "", "Id": self.server_id,
                "StartupWizardCompleted": self.wizard_completed}

    def _public_info(self, **_):
        return 200, self._public()

    def _system_info(self, **_):
        return 200, {**self._public(), "OperatingSystemDisplayName": "Linux", "HasPendingRestart": False,
                     "IsShuttingDown": False, "SupportsLibraryMonitor": True, "WebSocketPortNumber": self.port,
                     "CanSelfRestart": True, "CanLaunchWebBrowser": False, "HasUpdateAvailable": False,
                     "ProgramDataPath": "/var/lib/jellyfin", "CachePath": "/var/cache/jellyfin",
                     "LogPath": "/var/log/jellyfin", "TranscodingTempPath": "/var/lib/jellyfin/transcodes",
                     "EncoderLocation": "System", "SystemArchitecture": "X64", "CastReceiverApplications": []}

    def _get_startup_configuration(self, **_):
        return 200, dict(self.startup_config)

    def _post_startup_configuration(self, body, **_):
        if not isinstance(body, dict):
            raise _Refusal(400, "StartupConfigurationDto is required", record="rejected")
        for key in ("UICulture", "MetadataCountryCode", "PreferredMetadataLanguage"):
            self.startup_config[key] = body.get(key) or ""
        return 204, None

    def _first_user(self) -> dict:
        return next(iter(self.users.values()))

    def _get_startup_user(self, **_):
        user = self._first_user()
        return 200, {"Name": user["Name"], "Password": None}

    def _post_startup_user(self, body, **_):
        if not isinstance(body, dict):
            raise _Refusal(400, "StartupUserDto is required", record="rejected")
        if not (body.get("Password") or "").strip():
            raise _Refusal(400, "Password must not be empty")  # Jellyfin's own answer, not a client bug
        user = self._first_user()
        old = user["Name"]
        if body.get("Name") is not None:
            user["Name"] = body["Name"]
        user["Password"] = body["Password"]
        self.users = {(user["Name"] if n == old else n): u for n, u in self.users.items()}
        return 204, None

    def _post_remote_access(self, body, **_):
        if not isinstance(body, dict):
            raise _Refusal(400, "StartupRemoteAccessDto is required", record="rejected")
        for key in ("EnableRemoteAccess", "EnableAutomaticPortMapping"):
            if not isinstance(body.get(key), bool):
                raise _Refusal(400, f"{key} must be true or false", record="rejected")
            self.remote_access[key] = body[key]
        return 204, None

    def _post_complete(self, **_):
        self.wizard_completed = True
        return 204, None

    def _authenticate_by_name(self, who, body, **_):
        parts = who["parts"]
        missing = [k for k in ("Client", "Device", "DeviceId", "Version") if not parts.get(k)]
        if missing:  # SessionManager.AuthenticateNewSession: ArgumentException -> 400
            raise _Refusal(400, f"the Authorization header lacks {', '.join(missing)}", record="rejected")
        if not isinstance(body, dict) or not isinstance(body.get("Username"), str):
            raise _Refusal(400, "AuthenticateUserByName {Username, Pw} is required", record="rejected")
        user = self.users.get(body["Username"])
        if user is None or (body.get("Pw") or "") != user["Password"]:
            raise _Refusal(401, "Error processing request.")
        for token in [t for t, s in self.sessions.items() if s["DeviceId"] == parts["DeviceId"]]:
            del self.sessions[token]  # a new login from a device ends its old session
        token = uuid.uuid4().hex
        self.sessions[token] = {"user": user["Name"], **{k: parts[k] for k in ("Client", "Device", "DeviceId", "Version")}}
        return 200, {"User": {"Name": user["Name"], "Id": user["Id"], "ServerId": self.server_id,
                              "Policy": {"IsAdministrator": user["admin"]}},
                     "SessionInfo": {"DeviceId": parts["DeviceId"], "Client": parts["Client"]},
                     "AccessToken": token, "ServerId": self.server_id}

    def _get_virtual_folders(self, **_):
        return 200, [{**lib, "Locations": list(lib["Locations"]),
                      "LibraryOptions": {"PathInfos": [{"Path": p} for p in lib["Locations"]]}}
                     for lib in self.libraries]

    def _add_virtual_folder(self, query, body, **_):
        name = (query.get("name") or [""])[0]
        if not name.strip():
            raise _Refusal(400, "name is required", record="rejected")
        ctype = (query.get("collectiontype") or [None])[0]
        if ctype is not None and ctype.lower() not in COLLECTION_TYPES:
            raise _Refusal(400, f"collectionType {ctype!r} is not a CollectionTypeOptions value", record="rejected")
        paths = [p for item in query.get("paths", []) for p in item.split(",") if p]
        if not paths and isinstance(body, dict):
            paths = [i.get("Path") for i in (body.get("LibraryOptions") or {}).get("PathInfos") or []]
        missing = [p for p in paths if p not in self.dirs]
        if missing:
            raise _Refusal(400, f"The specified path does not exist: {missing[0]}.")
        base, n = name, 1
        while any(lib["Name"] == name for lib in self.libraries):  # Jellyfin adds "Movies2"
            n += 1
            name = f"{base}{n}"
        self.libraries.append({"Name": name, "Locations": paths, "CollectionType": ctype.lower() if ctype else None,
                               "ItemId": uuid.uuid4().hex, "RefreshStatus": "Idle"})
        return 204, None

    def _find_library(self, name: str) -> dict:
        lib = next((lib for lib in self.libraries if lib["Name"] == name), None)
        if lib is None:
            raise _Refusal(404, f"The media collection {name} does not exist")
        return lib

    def _add_media_path(self, body, **_):
        if not isinstance(body, dict) or not body.get("Name"):
            raise _Refusal(400, "MediaPathDto {Name, Path} is required", record="rejected")
        path = body.get("Path") or (body.get("PathInfo") or {}).get("Path")
        if not path:
            raise _Refusal(400, "PathInfo and Path can't both be null.", record="rejected")
        if path not in self.dirs:
            raise _Refusal(404, "The path does not exist.")
        lib = self._find_library(body["Name"])
        if path not in lib["Locations"]:
            lib["Locations"].append(path)
        return 204, None

    def _remove_media_path(self, query, **_):
        name, path = (query.get("name") or [""])[0], (query.get("path") or [""])[0]
        if not name.strip() or not path.strip():
            raise _Refusal(400, "name and path are required", record="rejected")
        lib = self._find_library(name)
        lib["Locations"] = [p for p in lib["Locations"] if p != path]
        return 204, None

    def _get_encoding(self, **_):
        return 200, dict(self.encoding)

    def _post_encoding(self, body, **_):
        if not isinstance(body, dict):
            raise _Refusal(400, "Body doesn't contain a valid configuration", record="rejected")
        hw = body.get("HardwareAccelerationType", "none")
        if hw not in HWACCEL_TYPES:
            raise _Refusal(400, f"HardwareAccelerationType {hw!r} is not a value of the enum", record="rejected")
        unknown = [k for k in body if k not in self.encoding]
        if unknown:
            raise _Refusal(400, f"not EncodingOptions fields: {', '.join(unknown)}", record="rejected")
        self.encoding = {**default_encoding_options(), **body}  # the whole object is replaced
        return 204, None

    def _get_keys(self, **_):
        return 200, {"Items": [dict(k) for k in self.api_keys], "TotalRecordCount": len(self.api_keys),
                     "StartIndex": 0}

    def _create_key(self, query, **_):
        app = (query.get("app") or [""])[0]
        if not app:
            raise _Refusal(400, "app is required", record="rejected")
        now = time.strftime("%Y-%m-%dT%H:%M:%S.0000000Z", time.gmtime())
        self.api_keys.append({"Id": len(self.api_keys) + 1, "AccessToken": uuid.uuid4().hex, "DeviceId": None,
                              "AppName": app, "AppVersion": None, "DeviceName": None,
                              "UserId": "00000000000000000000000000000000", "IsActive": True,
                              "DateCreated": now, "DateRevoked": None, "DateLastActivity": now, "UserName": None})
        return 204, None

    def _media_updated(self, body, **_):
        updates = body.get("Updates") if isinstance(body, dict) else None
        if not isinstance(updates, list) or not updates:
            raise _Refusal(400, "MediaUpdateInfoDto {Updates: [...]} is required", record="rejected")
        now, mono = time.time(), time.monotonic()
        for item in updates:
            if not isinstance(item, dict) or not isinstance(item.get("Path"), str) or not item["Path"]:
                raise _Refusal(400, "Item path can't be null.", record="rejected")
            if item.get("UpdateType") not in UPDATE_TYPES:
                raise _Refusal(400, f"UpdateType {item.get('UpdateType')!r} is none of {UPDATE_TYPES}",
                               record="rejected")
        for item in updates:
            self.media_updates.append({"path": item["Path"], "type": item["UpdateType"], "time": now,
                                       "monotonic": mono})
        return 204, None


class _Handler(BaseHTTPRequestHandler):
    standin: JellyfinStandIn
    protocol_version = "HTTP/1.1"

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        status, data, headers = self.standin.handle(self.command, self.path, self.headers, body)
        payload = b""
        if data is not None and status != 204:
            payload = (json.dumps(data) if not isinstance(data, str) else data).encode()
        self.send_response(status)
        ctype = "application/json; charset=utf-8" if not isinstance(data, str) else "text/plain; charset=utf-8"
        if payload:
            self.send_header("Content-Type", ctype)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _serve

    def log_message(self, *_args):
        pass


def main(argv: list[str] | None = None) -> int:
    """`python3 jellyfin.py serve --bind 0.0.0.0 --port 8096 --record FILE`: the lab's stand-in
    jellyfin-server (tests/standins/jellyfin_deb.py lab_jellyfin_standins), in its container."""
    import argparse

    ap = argparse.ArgumentParser(description="stand-in Jellyfin API server (tests only; not Jellyfin)")
    ap.add_argument("cmd", choices=["serve"])
    ap.add_argument("--bind", default="0.0.0.0")
    ap.add_argument("--port", type=int, default=8096)
    ap.add_argument("--record", help="append each call as a JSON line to this file")
    args = ap.parse_args(argv)
    standin = JellyfinStandIn()
    standin.port, standin.record_file = args.port, args.record
    standin.start(args.bind)
    threading.Event().wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
