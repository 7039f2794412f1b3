"""The deployed config file (/etc/media-pipeline/config.json): defaults, parsing, validation.

JSON because the container has only Debian's python3 and its standard library.
Every error names the key and says how to fix it.

`python3 -m media_pipeline.config render [--base FILE] KEY=VALUE...` prints a complete,
validated config (used by scripts/ct-install-pipeline.sh); `check FILE` validates one.
"""

from __future__ import annotations

import argparse
import difflib
import ipaddress
import json
import os
import sys
from dataclasses import dataclass, fields
from urllib.parse import urlsplit

from . import ffargs
from . import languages as lang

DEFAULT_PATH = "/etc/media-pipeline/config.json"
ENV_VAR = "MEDIA_PIPELINE_CONFIG"


class ConfigError(Exception):
    """A config problem, phrased for the person who has to fix it."""


@dataclass(frozen=True)
class Config:
    staging: str = "/mnt/storage/staging"
    movies: str = "/mnt/storage/movies"
    tv: str = "/mnt/storage/tv"
    languages: tuple[str, ...] = ("eng",)
    encoder: str = "libx265"
    crf: int = 18
    preset: str = "slow"
    qsv_device: str = ""  # "" = auto: the first i915/xe render node at run time (media_pipeline.gpu)
    stable_seconds: float = 120.0
    require_marker: bool = False
    poll_seconds: float = 10.0
    concurrency: int = 1
    keep_source: bool = True
    max_attempts: int = 3
    retry_delay_seconds: float = 300.0
    max_decode_errors: int = 0
    apprise_urls: tuple[str, ...] = ()
    metrics_port: int = 0
    metrics_bind: str = "127.0.0.1"  # this container only; "0.0.0.0" to be scraped from outside
    # who may scrape /metrics beyond loopback (addresses or networks); () = anyone who reaches metrics_bind
    metrics_allow: tuple[str, ...] = ()
    metrics_textfile: str = "/var/lib/media-pipeline/metrics.prom"
    web_port: int = 0  # the status page; 0 = off
    web_bind: str = "127.0.0.1"  # beyond loopback only with web_password set
    web_password: str = ""  # HTTP basic auth (any user name); "" = none, loopback only
    # The page's address in the browser when a TLS reverse proxy serves it (docs/reverse-proxy.md):
    # a Retry's Origin must name it. "" = the Host header the request came with.
    public_url: str = ""
    # Peers (addresses or networks) whose X-Forwarded-Host/-Proto name the page's address; () = none
    trusted_proxies: tuple[str, ...] = ()
    gpu_proof_file: str = "/var/lib/media-pipeline/gpu-proof.json"  # verify-gpu.sh --save writes it
    # media-rip's status file on the shared pool (media_pipeline/rips.py); default STAGING/.media-rip/status.json
    rip_status_file: str = "/mnt/storage/staging/.media-rip/status.json"
    # The job queue: a SQLite file (the default, one worker) or a postgresql:// URL (many workers,
    # docs/adr/0016); with a URL the password is read from db_password_file (mode 0600), never the URL.
    db: str = "/var/lib/media-pipeline/jobs.sqlite3"
    # Jellyfin is told about each published file (POST /Library/Media/Updated; media_pipeline/jellyfin.py)
    jellyfin_url: str = ""  # e.g. "http://192.168.1.60:8096"; "" = off
    jellyfin_api_key_file: str = "/etc/media-pipeline/jellyfin.key"  # mode 0600, read at each use
    # host path prefix -> the same folder's path in Jellyfin's container; () = the same paths there
    jellyfin_path_map: tuple[tuple[str, str], ...] = ()
    jellyfin_retry_seconds: tuple[float, ...] = (1.0, 5.0, 25.0)  # waits before each retry of a refresh
    db_password_file: str = ""
    worker_name: str = ""  # "" = the host name; unique per worker
    lease_seconds: float = 60.0  # a dead worker's job goes back to the queue after this (plus a poll)
    x265_params: str = ""  # extra libx265 parameters, e.g. "pools=1:frame-threads=1" (bench: one thread)

    def encode_options(self) -> ffargs.EncodeOptions:
        return ffargs.EncodeOptions(
            languages=self.languages, encoder=self.encoder, crf=self.crf,
            preset=self.preset, qsv_device=self.qsv_device, x265_params=self.x265_params,
        )

    def to_json(self) -> dict:
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "jellyfin_path_map":
                value = dict(value)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


KEYS = tuple(f.name for f in fields(Config))
_PATH_KEYS = ("staging", "movies", "tv", "db", "qsv_device")
_OPTIONAL_PATH_KEYS = ("metrics_textfile", "gpu_proof_file", "rip_status_file", "db_password_file")  # absolute, or "" = off
_EXAMPLES = {
    "staging": '"/mnt/storage/staging"', "movies": '"/mnt/storage/movies"', "tv": '"/mnt/storage/tv"',
    "languages": '["eng", "bul"]', "encoder": '"libx265"', "crf": "18", "preset": '"slow"',
    "qsv_device": '"/dev/dri/renderD129" ("" = auto)', "stable_seconds": "120", "require_marker": "false",
    "poll_seconds": "10", "concurrency": "1", "keep_source": "true", "max_attempts": "3",
    "retry_delay_seconds": "300", "max_decode_errors": "0",
    "apprise_urls": '["tgram://bottoken/ChatID"]', "metrics_port": "9464 (0 = off)",
    "metrics_bind": '"127.0.0.1" (or "0.0.0.0" to be scraped from another host)', "metrics_textfile": '"/var/lib/media-pipeline/metrics.prom" ("" = off)',
    "db": '"/var/lib/media-pipeline/jobs.sqlite3" (one worker) or "postgresql://media@db.lan/media" (many; '
          'the password in db_password_file)',
    "db_password_file": '"/etc/media-pipeline/db-password" (mode 0600; "" = none, e.g. peer auth on a socket)',
    "worker_name": '"transcoder-1" ("" = the host name; each worker its own)',
    "lease_seconds": "60 (a dead worker\'s job is queued again after this plus a poll)",
    "x265_params": '"pools=1:frame-threads=1" (extra libx265 parameters; "" = none)',
    # media-rip (RipConfig)
    "device": '"/dev/sr0" (a fixed node; "" = look the drive up by "drive" at each poll)',
    "drive": '"auto" (the first drive) or one drive\'s /dev/disk/by-id name, model or serial',
    "min_length": "600 (seconds)", "makemkvcon": '"makemkvcon"',
    "auto_rip": "true", "eject": "true", "eject_command": '"" (the CDROMEJECT ioctl) or "eject"',
    "web_port": "8480 (0 = off)", "web_bind": '"127.0.0.1" (or "0.0.0.0" with web_password set)',
    "web_password": '"a long random string" (ct-install-pipeline.sh --web-password-stdin)',
    "public_url": '"https://media.example.lan" (scheme://host[:port] of the TLS proxy; "" = the Host header)',
    "metrics_allow": '["192.168.1.204"] (the Prometheus that scrapes it; [] = anyone reaching metrics_bind)',
    "trusted_proxies": '["127.0.0.1"] (the reverse proxy\'s address; [] = trust no X-Forwarded-* header)',
    "gpu_proof_file": '"/var/lib/media-pipeline/gpu-proof.json" ("" = off)',
    "rip_status_file": '"/mnt/storage/staging/.media-rip/status.json" ("" = off)',
    "status_file": '"/mnt/storage/staging/.media-rip/status.json" ("" = off)',
    "jellyfin_url": '"http://192.168.1.60:8096" (Jellyfin\'s address; "" = off)',
    "jellyfin_api_key_file": '"/etc/media-pipeline/jellyfin.key" (mode 0600; python3 -m media_pipeline.jellyfin '
                             'configure --key-file writes it)',
    "jellyfin_path_map": '{"/mnt/storage/movies": "/media/movies", "/mnt/storage/tv": "/media/tv"}',
    "jellyfin_retry_seconds": "[1, 5, 25]",
}


def _check_known(key: str, known: tuple[str, ...], where: str) -> None:
    """An unknown key is refused with the closest known one (a typo) or the list of them."""
    if key not in known:
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(known)}"
        raise ConfigError(f"{where}: unknown key {key!r}; {hint}")


def _bad(key: str, problem: str, where: str) -> ConfigError:
    return ConfigError(f"{where}: key {key!r} {problem}; fix: set e.g. \"{key}\": {_EXAMPLES[key]}")


def _as_int(key, value, where, lo, hi=None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        rng = f"{lo}-{hi}" if hi is not None else f">= {lo}"
        raise _bad(key, f"must be an integer {rng} (got {value!r})", where)
    return value


def _as_number(key, value, where, lo) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < lo:
        raise _bad(key, f"must be a number >= {lo} (got {value!r})", where)
    return float(value)


def _as_bool(key, value, where) -> bool:
    if not isinstance(value, bool):
        raise _bad(key, f"must be true or false (got {value!r})", where)
    return value


def _as_str_list(key, value, where) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [v for v in (x.strip() for x in value.split(",")) if v]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _bad(key, f"must be a list of strings (got {value!r})", where)
    return tuple(value)


def _http_url(value: str):
    """(urlsplit parts, '') of an http(s) URL with a host and a valid port, or (None, why not)."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        return None, str(exc)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None, "needs http:// or https:// and a host name"
    return parts, ""


def public_url_problem(value: str) -> str:
    """Why `value` is no scheme://host[:port] (the origin a browser puts in Origin), or ''. The stack's
    pipeline.publicUrl is checked by the same rule (components/config.py)."""
    parts, problem = _http_url(value)
    if parts is None:
        return problem
    if parts.username is not None or parts.path not in ("", "/") or parts.query or parts.fragment:
        return "must be scheme://host[:port] only: the page is served at the root of its own host"
    return ""


def _as_public_url(key, value, where) -> str:
    if not isinstance(value, str):
        raise _bad(key, f"must be a string (got {value!r})", where)
    if not value:
        return value
    problem = public_url_problem(value)
    if problem:
        raise _bad(key, f"is not a usable address ({problem}; got {value!r})", where)
    return value.rstrip("/")


def jellyfin_url_problem(value: str) -> str:
    """Why `value` is no http(s)://host[:port][/base path] for Jellyfin, or ''."""
    parts, problem = _http_url(value)
    if parts is None:
        return problem
    if parts.username is not None or parts.query or parts.fragment:
        return "must be scheme://host[:port][/base path], without user, query or fragment"
    return ""


def _as_path_map(key, value, where) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise _bad(key, f"must be an object of host path prefix -> Jellyfin's path (got {value!r})", where)
    pairs = []
    for host, container in value.items():
        if not isinstance(container, str) or not os.path.isabs(host) or not os.path.isabs(container):
            raise _bad(key, f"maps {host!r} to {container!r}; both must be absolute paths", where)
        pairs.append((os.path.normpath(host), os.path.normpath(container)))
    if len({h for h, _ in pairs}) != len(pairs):
        raise _bad(key, "names one host path twice", where)
    return tuple(pairs)


def _as_delays(key, value, where) -> tuple[float, ...]:
    if not isinstance(value, list) or len(value) > 10 or not all(
            not isinstance(v, bool) and isinstance(v, (int, float)) and 0 <= v <= 3600 for v in value):
        raise _bad(key, f"must be a list of at most 10 numbers of seconds, 0-3600 each (got {value!r})", where)
    return tuple(float(v) for v in value)


def _as_networks(key, value, where) -> tuple[str, ...]:
    items = _as_str_list(key, value, where)
    for item in items:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise _bad(key, f"has {item!r}, which is not an IP address or network", where) from None
    return items


def _as_db_url(key, value, where) -> str:
    """A postgresql:// URL without a password (that one lives in db_password_file)."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise _bad(key, f"is not a usable URL ({exc})", where) from None
    if parts.password is not None:
        raise _bad(key, "has a password in it: put the password in db_password_file (mode 0600) instead; "
                        "the config and the unit are readable by more than the service", where)
    if "password=" in parts.query:
        raise _bad(key, "has password= in it: put the password in db_password_file (mode 0600) instead", where)
    if not (parts.hostname or "host=" in parts.query):
        raise _bad(key, "names no host (postgresql://USER@HOST/DB, or ?host=/run/postgresql for a socket)", where)
    return value


def _as_token(key, value, where) -> str:
    """worker_name / x265_params: printable ASCII, no spaces or quotes, at most 120 characters."""
    if not isinstance(value, str) or len(value) > 120 or not all(
            c.isascii() and c.isprintable() and c not in " '\"\\" for c in value):
        raise _bad(key, f"must be up to 120 printable characters without spaces or quotes (got {value!r})", where)
    return value


def from_dict(raw: dict, where: str = "config") -> Config:
    """Validate a parsed JSON object into a Config (missing keys take defaults)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a JSON object {{...}}, got {type(raw).__name__}")
    for key in raw:
        if key == "rip_db":
            raise ConfigError(f"{where}: key 'rip_db' is gone: the page reads media-rip's status file on the pool; "
                              f"fix: remove rip_db (rip_status_file defaults to STAGING/.media-rip/status.json)")
        _check_known(key, KEYS, where)
    values: dict = {}
    for key, value in raw.items():
        if key == "db" and isinstance(value, str) and value.startswith(("postgresql://", "postgres://")):
            values[key] = _as_db_url(key, value, where)
        elif key in ("worker_name", "x265_params"):
            values[key] = _as_token(key, value, where)
        elif key == "lease_seconds":
            values[key] = _as_number(key, value, where, 1)
        elif key in ("staging", "movies", "tv", "db", "qsv_device", "encoder", "preset",
                     "metrics_bind", "metrics_textfile", "web_bind", "web_password", *_OPTIONAL_PATH_KEYS):
            if not isinstance(value, str):
                raise _bad(key, f"must be a string (got {value!r})", where)
            if key in _PATH_KEYS and not os.path.isabs(value) and not (key == "qsv_device" and value == ""):
                raise _bad(key, f"must be an absolute path (got {value!r})", where)
            if key in ("metrics_bind", "web_bind") and not _is_ip(value):
                raise _bad(key, f"must be an IP address (got {value!r})", where)
            if key in _OPTIONAL_PATH_KEYS and value and not os.path.isabs(value):
                raise _bad(key, f"must be an absolute path or \"\" (got {value!r})", where)
            values[key] = value
        elif key == "languages":
            codes = _as_str_list(key, value, where)
            if not codes:
                raise _bad(key, "must name at least one language", where)
            unknown = [c for c in codes if not lang.is_known(c)]
            if unknown:
                raise _bad(key, f"has codes that are not ISO 639: {', '.join(unknown)}", where)
            values[key] = tuple(codes)
        elif key == "apprise_urls":
            values[key] = _as_str_list(key, value, where)
        elif key == "public_url":
            values[key] = _as_public_url(key, value, where)
        elif key in ("trusted_proxies", "metrics_allow"):
            values[key] = _as_networks(key, value, where)
        elif key in ("jellyfin_url", "jellyfin_api_key_file"):
            if not isinstance(value, str):
                raise _bad(key, f"must be a string (got {value!r})", where)
            if key == "jellyfin_url" and value and jellyfin_url_problem(value):
                raise _bad(key, f"is not a usable address ({jellyfin_url_problem(value)}; got {value!r})", where)
            if key == "jellyfin_api_key_file" and not os.path.isabs(value):
                raise _bad(key, f"must be an absolute path (got {value!r})", where)
            values[key] = value.rstrip("/") if key == "jellyfin_url" else value
        elif key == "jellyfin_path_map":
            values[key] = _as_path_map(key, value, where)
        elif key == "jellyfin_retry_seconds":
            values[key] = _as_delays(key, value, where)
        elif key in ("crf",):
            values[key] = _as_int(key, value, where, 0, 51)
        elif key in ("concurrency", "max_attempts"):
            values[key] = _as_int(key, value, where, 1, 64)
        elif key == "max_decode_errors":
            values[key] = _as_int(key, value, where, 0)
        elif key in ("metrics_port", "web_port"):
            values[key] = _as_int(key, value, where, 0, 65535)
        elif key in ("stable_seconds", "retry_delay_seconds"):
            values[key] = _as_number(key, value, where, 0)
        elif key == "poll_seconds":
            values[key] = _as_number(key, value, where, 0.05)
        elif key in ("keep_source", "require_marker"):
            values[key] = _as_bool(key, value, where)
    if "rip_status_file" not in values:  # where media-rip writes it by default: follows staging
        values["rip_status_file"] = status_file_for(values.get("staging", Config.staging))
    cfg = Config(**values)
    if cfg.web_port and not _is_loopback(cfg.web_bind) and not cfg.web_password:
        raise ConfigError(
            f"{where}: key 'web_password' is empty but the status page listens on {cfg.web_bind} "
            f"(web_bind), beyond this machine; fix: set \"web_password\" (ct-install-pipeline.sh "
            f"--web-password-stdin; the stack secret homelab-media:statusPassword) or bind to 127.0.0.1"
        )
    if cfg.web_port and cfg.web_port == cfg.metrics_port:
        raise _bad("web_port", f"must differ from metrics_port ({cfg.metrics_port})", where)
    for a, b in (("staging", "movies"), ("staging", "tv")):
        pa, pb = os.path.normpath(getattr(cfg, a)), os.path.normpath(getattr(cfg, b))
        if os.path.commonpath([pa, pb]) in (pa, pb):
            raise ConfigError(
                f"{where}: keys {a!r} and {b!r} overlap ({pa} vs {pb}); fix: use separate "
                f"directories, or finished files would be picked up again as new rips"
            )
    for key, problem in cfg.encode_options().field_problems():
        raise ConfigError(f"{where}: key {key!r}: {problem}")
    if cfg.db_password_file and not cfg.db.startswith(("postgresql://", "postgres://")):
        raise _bad("db_password_file", f"is set but db ({cfg.db}) is a SQLite file, which needs no password", where)
    return cfg


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _is_loopback(value: str) -> bool:
    return ipaddress.ip_address(value).is_loopback


def resolve_path(explicit: str | None, env_var: str = ENV_VAR, default: str = DEFAULT_PATH) -> tuple[str, bool]:
    """(path, was_asked_for): --config beats $MEDIA_PIPELINE_CONFIG beats the default."""
    if explicit:
        return explicit, True
    env = os.environ.get(env_var)
    if env:
        return env, True
    return default, False


def load(explicit: str | None = None, required: bool = False, *, env_var: str = ENV_VAR,
         default_path: str = DEFAULT_PATH, parse=None):
    """Load the config. A missing default file gives defaults unless `required`.

    `parse` (default from_dict) and the path defaults let media-rip load its own file the same way.
    """
    parse = parse or from_dict
    path, asked = resolve_path(explicit, env_var, default_path)
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        if asked or required:
            raise ConfigError(
                f"{path}: no such config file; fix: create it (scripts/ct-install-pipeline.sh "
                f"writes one) or point --config / ${env_var} at one"
            ) from None
        return parse({}, where=path)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{path}: not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    return parse(raw, where=path)


def _parse_assignment(item: str, defaults=None, keys=KEYS) -> tuple[str, object]:
    key, sep, text = item.partition("=")
    if not sep:
        raise ConfigError(f"{item!r}: expected KEY=VALUE")
    default = getattr(defaults or Config(), key, None) if key in keys else None
    if key not in keys:
        return key, text  # from_dict names the unknown key
    if key == "jellyfin_path_map":  # JSON, or HOST=CONTAINER,HOST=CONTAINER
        if text.strip().startswith("{"):
            try:
                return key, json.loads(text)
            except json.JSONDecodeError:
                raise _bad(key, f"is not a JSON object (got {text!r})", "arguments") from None
        pairs = [p for p in (x.strip() for x in text.split(",")) if p]
        if not all("=" in p for p in pairs):
            raise _bad(key, f"must be HOST=CONTAINER[,HOST=CONTAINER...] (got {text!r})", "arguments")
        return key, dict(p.split("=", 1) for p in pairs)
    if key == "jellyfin_retry_seconds":
        try:
            return key, [float(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise _bad(key, f"must be numbers of seconds, e.g. 1,5,25 (got {text!r})", "arguments") from None
    if isinstance(default, bool):
        if text.lower() not in ("true", "false"):
            raise _bad(key, f"must be true or false (got {text!r})", "arguments")
        return key, text.lower() == "true"
    if isinstance(default, int):
        try:
            return key, int(text)
        except ValueError:
            raise _bad(key, f"must be an integer (got {text!r})", "arguments") from None
    if isinstance(default, float):
        try:
            return key, float(text)
        except ValueError:
            raise _bad(key, f"must be a number (got {text!r})", "arguments") from None
    if isinstance(default, tuple):
        return key, [v.strip() for v in text.split(",") if v.strip()]
    return key, text


def render(assignments: list[str], base: str | None = None, rip: bool = False,
           secrets: dict | None = None) -> str:
    """A complete config as stable JSON: base file (if any) overridden by KEY=VALUE items,
    then by `secrets` (read from stdin by the CLI, so they never appear in argv).

    rip=True renders media-rip's config (RipConfig) instead of media-pipeline's.
    """
    keys, defaults, parse = (RIP_KEYS, RipConfig(), rip_from_dict) if rip else (KEYS, Config(), from_dict)
    raw: dict = {}
    if base and os.path.exists(base):
        try:
            with open(base, encoding="utf-8") as fh:
                loaded = json.load(fh)
            if isinstance(loaded, dict):
                raw = {k: v for k, v in loaded.items() if k in keys}
        except (OSError, json.JSONDecodeError):
            raw = {}  # an unreadable old file is replaced, not merged
    for item in assignments:
        key, value = _parse_assignment(item, defaults, keys)
        raw[key] = value
    raw.update(secrets or {})
    cfg = parse(raw, where="arguments")
    return json.dumps(cfg.to_json(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m media_pipeline.config",
                                     description="Render or check the media-pipeline config file.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("render", help="print a complete config from KEY=VALUE items")
    r.add_argument("--base", help="existing config whose other keys are kept")
    r.add_argument("--rip", action="store_true", help="media-rip's config (/etc/media-rip/config.json)")
    r.add_argument("--web-password-stdin", action="store_true",
                   help="read web_password from stdin (its first line; empty = no password)")
    r.add_argument("items", nargs="*", metavar="KEY=VALUE")
    c = sub.add_parser("check", help="validate a config file")
    c.add_argument("file")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "render":
            secrets = {}
            if args.web_password_stdin:
                secrets["web_password"] = sys.stdin.readline().rstrip("\r\n")
            sys.stdout.write(render(args.items, args.base, rip=args.rip, secrets=secrets))
        else:
            load(args.file)
            print(f"{args.file}: ok")
    except ConfigError as exc:
        print(f"media-pipeline config: {exc}", file=sys.stderr)
        return 2
    return 0


# --- media-rip's config (/etc/media-rip/config.json): same file format, same validators -------

RIP_DEFAULT_PATH = "/etc/media-rip/config.json"
RIP_ENV_VAR = "MEDIA_RIP_CONFIG"


@dataclass(frozen=True)
class RipConfig:
    staging: str = "/mnt/storage/staging"
    # The drive: `device` fixes its node (e.g. /dev/sr0); "" looks `drive` up at each poll, as the node's
    # hookscript does (auto, or a /dev/disk/by-id name, model or serial): sr numbers change across reboots.
    device: str = ""
    drive: str = "auto"
    min_length: int = 600  # seconds: shorter titles (menus, trailers, extras) are not ripped
    makemkvcon: str = "makemkvcon"
    auto_rip: bool = True  # false: `run` only watches and records; rip with `media-rip once`
    eject: bool = True
    eject_command: str = ""  # "": the CDROMEJECT ioctl, as eject(1) does; else a command run with the device
    poll_seconds: float = 5.0
    apprise_urls: tuple[str, ...] = ()
    metrics_port: int = 0
    metrics_bind: str = "127.0.0.1"
    metrics_allow: tuple[str, ...] = ()
    metrics_textfile: str = "/var/lib/media-rip/metrics.prom"
    # the snapshot the transcoder's status page reads (media_pipeline/rips.py); default STAGING/.media-rip/status.json
    status_file: str = "/mnt/storage/staging/.media-rip/status.json"
    db: str = "/var/lib/media-rip/rips.sqlite3"

    def to_json(self) -> dict:
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}


RIP_KEYS = tuple(f.name for f in fields(RipConfig))


def rip_from_dict(raw: dict, where: str = "config") -> RipConfig:
    """Validate media-rip's config (missing keys take defaults)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a JSON object {{...}}, got {type(raw).__name__}")
    values: dict = {}
    for key, value in raw.items():
        _check_known(key, RIP_KEYS, where)
        if key in ("staging", "device", "db", "makemkvcon", "eject_command", "metrics_bind", "metrics_textfile",
                   "status_file"):
            if not isinstance(value, str) or (not value and key not in ("metrics_textfile", "eject_command",
                                                                        "status_file", "device")):
                raise _bad(key, f"must be a non-empty string (got {value!r})", where)
            if key in ("staging", "device", "db") and value and not os.path.isabs(value):
                raise _bad(key, f"must be an absolute path (got {value!r})", where)
            if key in ("metrics_textfile", "status_file") and value and not os.path.isabs(value):
                raise _bad(key, f"must be an absolute path or \"\" (got {value!r})", where)
            values[key] = value
        elif key == "drive":
            # the rule of components/config.py's devices.opticalDrive, which the installer passes through
            name = value.removeprefix("/dev/disk/by-id/") if isinstance(value, str) else ""
            if not (value == "auto" or (0 < len(name) <= 128 and name[0].isalnum() and value == value.strip() and
                                        all(c.isascii() and (c.isalnum() or c in " ._:+-") for c in name))):
                raise _bad(key, f"must be auto or one drive's /dev/disk/by-id name, model or serial "
                                f"(`ls -l /dev/disk/by-id` on the node; got {value!r})", where)
            values[key] = value
        elif key == "min_length":
            values[key] = _as_int(key, value, where, 0, 86400)
        elif key in ("auto_rip", "eject"):
            values[key] = _as_bool(key, value, where)
        elif key == "poll_seconds":
            values[key] = _as_number(key, value, where, 0.05)
        elif key == "apprise_urls":
            values[key] = _as_str_list(key, value, where)
        elif key == "metrics_port":
            values[key] = _as_int(key, value, where, 0, 65535)
        elif key == "metrics_allow":
            values[key] = _as_networks(key, value, where)
    if "status_file" not in values:  # follows staging: the pool both containers mount
        values["status_file"] = status_file_for(values.get("staging", RipConfig.staging))
    return RipConfig(**values)


def status_file_for(staging: str) -> str:
    """The default place of media-rip's status file: hidden in staging (media-pipeline skips it)."""
    return os.path.join(staging, ".media-rip", "status.json")


def load_rip(explicit: str | None = None, required: bool = False) -> RipConfig:
    return load(explicit, required, env_var=RIP_ENV_VAR, default_path=RIP_DEFAULT_PATH, parse=rip_from_dict)


if __name__ == "__main__":
    sys.exit(main())
