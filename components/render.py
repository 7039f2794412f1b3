"""Pure rendering: raw LXC device lines, script bundles, deterministic archives.

Nothing here talks to Pulumi or the network; every function is a plain value in,
value out, so it is tested without an engine.
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import io
import json
import re
import shlex
import tarfile
from pathlib import Path
from typing import Any, Iterable, Mapping

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
EOF_MARK = "__HOMELAB_EOF__"
STDIN_MARK = "__HOMELAB_STDIN__"

DRI_MAJOR = 226
SR_MAJOR = 11
SG_MAJOR = 21


# --- raw lxc lines -------------------------------------------------------------------------


def _node(d: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    if not d or not d.get("path"):
        return None
    return d


def gpu_lines(discovery: Mapping[str, Any]) -> list[str]:
    """cgroup allow lines for every discovered DRI node, plus the /dev/dri bind entry.

    With an iGPU and an Arc card the Arc is often card1/renderD129, so every node the
    node has is allowed (not the plan's fixed 226:0/226:128). No GPU: no lines.
    """
    nodes = [n for n in ((discovery.get("gpu") or {}).get("nodes") or []) if _node(n)]
    if not nodes:
        return []
    lines = []
    for n in sorted(nodes, key=lambda n: (int(n["major"]), int(n["minor"]))):
        if int(n["major"]) != DRI_MAJOR:
            raise ValueError(f"{n['path']}: major {n['major']} is not a DRI device ({DRI_MAJOR})")
        lines.append(f"lxc.cgroup2.devices.allow: c {DRI_MAJOR}:{int(n['minor'])} rwm")
    lines.append("lxc.mount.entry: /dev/dri dev/dri none bind,optional,create=dir")
    return lines


def drive_lines(discovery: Mapping[str, Any]) -> list[str]:
    """Block rule for the sr node (b 11:N, never the plan's `c 11:0`), char rule for its sg node."""
    optical = discovery.get("optical") or {}
    sr, sg = _node(optical.get("sr")), _node(optical.get("sg"))
    lines: list[str] = []
    mounts: list[str] = []
    if sr:
        if int(sr["major"]) != SR_MAJOR:
            raise ValueError(f"{sr['path']}: major {sr['major']} is not an optical block device ({SR_MAJOR})")
        lines.append(f"lxc.cgroup2.devices.allow: b {SR_MAJOR}:{int(sr['minor'])} rwm")
        mounts.append(_dev_entry(sr["path"]))
    if sg:
        if int(sg["major"]) != SG_MAJOR:
            raise ValueError(f"{sg['path']}: major {sg['major']} is not a SCSI generic device ({SG_MAJOR})")
        lines.append(f"lxc.cgroup2.devices.allow: c {SG_MAJOR}:{int(sg['minor'])} rwm")
        mounts.append(_dev_entry(sg["path"]))
    return lines + mounts


# host-hookscript.sh's --dir (the default the program uses), and the LXC-level guard it installs there:
# LXC runs the conf's lxc.hook.pre-start line at every start, a reboot from inside the container too
HOOK_DIR = "/var/lib/homelab-media/hook"
LXC_HOOK_LINE = f"lxc.hook.pre-start: {HOOK_DIR}/homelab-media-lxc-hook.sh"


def container_lines(device_lines: list[str], extra: Iterable[str]) -> list[str]:
    """A container's managed raw lines, in the order its hookscript writes them: devices, the
    stack's extraRawLines, the LXC hook line (pve-hookscript.sh's `lines`)."""
    return [*device_lines, *extra, LXC_HOOK_LINE]


def rip_device(discovery: Mapping[str, Any], configured: str | None) -> str:
    """The drive media-rip watches: the configured one, else the discovered sr node, else /dev/sr0
    (media-rip then reports that MakeMKV lists no such drive)."""
    if configured:
        return configured
    sr = _node((discovery.get("optical") or {}).get("sr"))
    return sr["path"] if sr else "/dev/sr0"


# The raw lines pve-lxc-raw.sh manages, and its rules for them (kept in step by tests/unit/test_render.py).
RAW_KEYS = ("lxc.cgroup2.devices.allow", "lxc.mount.entry")
_ALLOW = re.compile(r"^(a|[cb] ([0-9]+|\*):([0-9]+|\*) [rwm]+)$")
_MOUNT = re.compile(r"^[^\s]+ [^\s]+ [^\s]+ [^\s]+( [0-9]+ [0-9]+)?$")


def normalize_raw_line(line: str) -> str:
    """`key: value` with single blanks, or ValueError saying what is wrong (pve-lxc-raw.sh's rules)."""
    m = re.match(r"^([^:\s]+)\s*:\s*(.*)$", line.strip())
    if not m:
        raise ValueError('not a "key: value" line')
    key, value = m.group(1), " ".join(m.group(2).split())
    if key == "lxc.cgroup2.devices.allow":
        if not _ALLOW.match(value):
            raise ValueError(f'malformed {key} value "{value}" (want a, or c|b MAJOR:MINOR rwm, e.g. "c 10:200 rwm")')
    elif key == "lxc.mount.entry":
        if not _MOUNT.match(value):
            raise ValueError(
                f'malformed {key} value "{value}" (want SRC DST TYPE OPTIONS [0 0], '
                'e.g. "/dev/net/tun dev/net/tun none bind,create=file")'
            )
    else:
        raise ValueError(f'key "{key}" is not managed here: only {" and ".join(RAW_KEYS)} lines are accepted')
    return f"{key}: {value}"


# scripts/host-hookscript.sh installs the hook under this name on the snippets storage
HOOK_SNIPPET = "homelab-media-hook.sh"


def hookscript_volume(storage: str) -> str:
    """The containers' `hookscript:` volume: the snippet on node.snippetsStorage."""
    return f"{storage}:snippets/{HOOK_SNIPPET}"


# the containers' description is "<hostname>: MANAGED_MARKER": how the node's guards recognise them
MANAGED_MARKER = "managed by the homelab-media Pulumi program"


def recreate_spec(key: str, ct, pool: bool = True) -> str:
    """host-ct-recreate-guard.sh's --ct VMID:KEY:HOSTNAME:DATASTORE:DISK_GB:ALLOW[:none] for one container's
    config (`:none`: a container with no mount point, e.g. monitoring)."""
    spec = f"{ct.vm_id}:{key}:{ct.hostname}:{ct.datastore}:{ct.disk_gb}:{int(ct.allow_recreate)}"
    return spec if pool else spec + ":none"


def _dev_entry(path: str) -> str:
    if not path.startswith("/dev/") or " " in path:
        raise ValueError(f"{path!r} is not a /dev node path")
    return f"lxc.mount.entry: {path} {path.lstrip('/')} none bind,optional,create=file"


def parse_json_output(stdout: str, what: str) -> dict[str, Any]:
    """The last JSON object a script printed; a readable failure state otherwise."""
    for line in reversed((stdout or "").strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                break
    text = (stdout or "").strip()
    try:
        value = json.loads(text)
        if isinstance(value, dict):
            return value
    except json.JSONDecodeError:
        pass
    return {"ok": False, "reason": f"{what}: no JSON result in the script's output"}


# --- script bundles ------------------------------------------------------------------------


def script_text(name: str) -> str:
    return (SCRIPTS / name).read_text()


# The one way a script pulls in a helper file: `source "$(dirname "${BASH_SOURCE[0]}")/lib-x.sh"`.
_SOURCE_LINE = re.compile(r'^\s*source "\$\(dirname "\$\{BASH_SOURCE\[0\]\}"\)/([A-Za-z0-9._-]+)"\s*$', re.M)


def sourced(name: str) -> list[str]:
    """The helper files scripts/<name> sources, transitively, each before the files that source it."""
    order: list[str] = []

    def visit(n: str, path: tuple[str, ...]) -> None:
        for dep in _SOURCE_LINE.findall(script_text(n)):
            if dep in path:
                raise ValueError(f"scripts/{n} sources {dep}, which sources it back")
            if dep not in order:
                visit(dep, (*path, dep))
                order.append(dep)

    visit(name, (name,))
    return order


def bundle_files(script: str, extra_scripts: Iterable[str] = ()) -> list[str]:
    """Every file of scripts/ a step ships: what each script sources, then the script itself."""
    out: list[str] = []
    for name in [*extra_scripts, script]:
        deps = sourced(name) if name.endswith(".sh") else []
        for n in [*deps, name]:
            if n not in out:
                out.append(n)
    return out


def deterministic_tarball(src: Path, arcname: str, exclude: Iterable[str] = ("__pycache__",)) -> bytes:
    """A .tar.gz whose bytes depend only on the files' names, modes and contents."""
    skip = set(exclude)
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=9) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            paths = sorted(p for p in src.rglob("*") if not (skip & set(p.relative_to(src).parts)))
            for p in [src, *paths]:
                if p.suffix == ".pyc":
                    continue
                info = tar.gettarinfo(str(p), arcname=str(Path(arcname) / p.relative_to(src)))
                info.uid = info.gid = 0
                info.uname = info.gname = "root"
                info.mtime = 0
                info.mode = 0o755 if p.is_dir() or info.mode & 0o100 else 0o644
                if p.is_file():
                    with p.open("rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)
    return buf.getvalue()


def tarball_of(files: Mapping[str, str | bytes]) -> bytes:
    """A .tar.gz of relative path -> content (files 0644, their directories 0755), whose bytes
    depend only on the names and contents."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=9) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            dirs = sorted({str(Path(*Path(name).parts[:i])) for name in files for i in range(1, len(Path(name).parts))})
            for name in [*dirs, *sorted(files)]:
                if name.startswith("/") or ".." in Path(name).parts:
                    raise ValueError(f"{name!r}: a tarball entry must be a relative path")
                info = tarfile.TarInfo(name)
                info.uid = info.gid = 0
                info.uname = info.gname = "root"
                info.mtime = 0
                if name in files:
                    data = files[name].encode() if isinstance(files[name], str) else files[name]
                    info.size, info.mode = len(data), 0o644
                    tar.addfile(info, io.BytesIO(data))
                else:
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
    return buf.getvalue()


PIPELINE_TARBALL = "media-pipeline.tar.gz"  # what both containers unpack (ct-install-pipeline.sh --tarball)


@functools.cache
def pipeline_tarball() -> bytes:
    """media_pipeline/ as shipped to the transcoder and the ripper (built once per run)."""
    return deterministic_tarball(ROOT / "media_pipeline", "media_pipeline")


def _heredoc(path_expr: str, text: str) -> str:
    if EOF_MARK in text:
        raise ValueError(f"{path_expr}: content contains the bundle marker {EOF_MARK}")
    if not text.endswith("\n"):
        text += "\n"
    return f"cat > {path_expr} <<'{EOF_MARK}'\n{text}{EOF_MARK}\n"


def bundle(
    script: str,
    args: Iterable[str] = (),
    stdin: str | None = None,
    extra_scripts: Iterable[str] = (),
    files: Mapping[str, bytes] | None = None,
) -> str:
    """A self-contained bash program that runs scripts/<script> with args, fed to `bash -s`.

    The script, its sibling scripts and exactly the helper files they source are written verbatim into a temp dir that
    is removed on exit; binary files travel base64-encoded; the script runs with that
    dir as its working directory; its exit code is the bundle's.
    """
    parts = [
        "set -Eeuo pipefail",
        "_d=$(mktemp -d /tmp/homelab-media.XXXXXX); trap 'rm -rf \"$_d\"' EXIT",
    ]
    for name in bundle_files(script, extra_scripts):
        parts.append(_heredoc(f'"$_d/{name}"', script_text(name)).rstrip("\n"))
    for name, data in sorted((files or {}).items()):
        if "/" in name or name.startswith("."):
            raise ValueError(f"bundle file name {name!r} must be a plain file name")
        b64 = base64.encodebytes(data).decode()
        parts.append(f"base64 -d > \"$_d/{name}\" <<'{EOF_MARK}'\n{b64}{EOF_MARK}")
    cmd = " ".join(["bash", f'"$_d/{script}"', *(shlex.quote(a) for a in args)])
    if stdin is None:
        parts.append(f'cd "$_d" && {cmd} </dev/null')
    else:
        if STDIN_MARK in stdin:
            raise ValueError(f"stdin for {script} contains the bundle marker {STDIN_MARK}")
        body = stdin if stdin.endswith("\n") or stdin == "" else stdin + "\n"
        parts.append(f"cd \"$_d\" && {cmd} <<'{STDIN_MARK}'\n{body}{STDIN_MARK}")
    return "\n".join(parts) + "\n"


def sha256(*chunks: str | bytes) -> str:
    h = hashlib.sha256()
    for c in chunks:
        h.update(c.encode() if isinstance(c, str) else c)
        h.update(b"\0")
    return h.hexdigest()


def scripts_hash(*names: str) -> str:
    """Content hash of the named scripts and the helpers they source: the trigger for re-running
    a step. The last name is the script the step runs, the others travel with it."""
    *extra, script = names
    files = bundle_files(script, extra)
    return sha256(*(f"{n}\0{script_text(n)}" for n in files))


# --- the Jellyfin container (components/jellyfin_ct.py) -------------------------------------

JELLYFIN_MOVIES = "/media/movies"
JELLYFIN_TV = "/media/tv"


def jellyfin_mount_points(storage) -> list[dict[str, Any]]:
    """The library directories, read-only (bpg `read_only` -> PVE `mpN: ...,ro=1`): never staging, never the pool."""
    return [
        {"volume": storage.movies_path, "path": JELLYFIN_MOVIES, "read_only": True},
        {"volume": storage.tv_path, "path": JELLYFIN_TV, "read_only": True},
    ]


def jellyfin_notify_args(cfg) -> list[str]:
    """ct-install-pipeline.sh's flags that make media-pipeline tell Jellyfin about each published
    file, by the path Jellyfin's container sees it under ([] when jellyfin.enabled is false)."""
    jf, st = cfg.jellyfin, cfg.storage
    if not jf.enabled:
        return []
    host = jf.ipv4.split("/")[0] if jf.ipv4 != "dhcp" else jf.hostname
    return ["--jellyfin-url", f"http://{host}:{jf.port}",
            "--jellyfin-path-map", f"{st.movies_path}={JELLYFIN_MOVIES},{st.tv_path}={JELLYFIN_TV}"]


def jellyfin_recreate_mps(vmid: int, storage) -> list[str]:
    """host-ct-recreate-guard.sh's --mp specs for the Jellyfin container: its mounts, as PVE's conf has them."""
    return [f"{vmid}:mp{i}:{m['volume']}:{m['path']}:{int(m['read_only'])}"
            for i, m in enumerate(jellyfin_mount_points(storage))]


def pipeline_args(cfg, *, encoder: str, preset: str, crf: int, qsv_device: str | None, metrics, web: bool,
                  queue_url: str | None, worker_name: str) -> list[str]:
    """ct-install-pipeline.sh's flags for one transcode worker: the transcoder (worker 1, with the
    status page) or an extra worker of homelab-media:workers (web False: no page; the queue's)."""
    st, p = cfg.storage, cfg.pipeline
    args = [
        "--tarball", PIPELINE_TARBALL,
        "--user", cfg.media.user,
        "--staging", st.staging_path,
        "--movies", st.movies_path,
        "--tv", st.tv_path,
        "--languages", ",".join(cfg.encoding.languages),
        "--encoder", encoder,
        "--preset", preset,
        "--crf", str(crf),
        *(["--qsv-device", qsv_device] if qsv_device else []),
        "--keep-source", "true" if p.keep_source else "false",
        "--metrics-port", str(metrics.port),
        "--metrics-bind", metrics.bind,
        # only the monitoring container may scrape it beyond loopback (monitoring.enabled)
        *(["--metrics-allow", ",".join(metrics.allow)] if metrics.allow else []),
        "--web-port", str(p.web_port if web else 0),
        "--web-bind", p.web_bind,
        "--gpu-proof", GPU_PROOF,
        "--rip-status", st.rip_status_path,  # media-rip (the ripper) writes it on the pool
    ]
    if web:
        args += [
            *(["--public-url", p.public_url] if p.public_url else []),
            *(["--trusted-proxies", ",".join(p.trusted_proxies)] if p.trusted_proxies else []),
        ]
    args += jellyfin_notify_args(cfg)  # jellyfin.enabled: the library-updated call (any worker publishes)
    if queue_url:
        args += ["--db", queue_url, "--db-password-file", QUEUE_PASSWORD_FILE,
                 "--worker-name", worker_name, "--lease-seconds", str(cfg.queue.lease_seconds)]
    return args


GPU_PROOF = "/var/lib/media-pipeline/gpu-proof.json"  # verify-gpu.sh --save; the status page shows it
QUEUE_PASSWORD_FILE = "/etc/media-pipeline/db-password"  # 0600 media (scripts/ct-secret-file.sh)
QUEUE_BACKUP_MOUNT = "/var/backups/media-queue"  # pg_dump's folder in the queue container


def queue_mount_points(queue, storage) -> list[dict[str, Any]]:
    """The queue container's one mount: its backup folder on the pool (queue.backupDir), never the pool."""
    return [{"volume": storage.path(queue.backup_dir), "path": QUEUE_BACKUP_MOUNT, "read_only": False}]


def queue_recreate_mps(queue, storage) -> list[str]:
    """host-ct-recreate-guard.sh's --mp specs for the queue container."""
    return [f"{queue.vm_id}:mp{i}:{m['volume']}:{m['path']}:{int(m['read_only'])}"
            for i, m in enumerate(queue_mount_points(queue, storage))]


def queue_url(queue) -> str:
    """The workers' `db` setting: a postgresql:// URL with no password (that one is db_password_file)."""
    return f"postgresql://{queue.user}@{queue.address}:{queue.port}/{queue.database}"


def jellyfin_render_node(discovery: Mapping[str, Any], gpu: str, qsv_device: str | None) -> str | None:
    """The render node Jellyfin gets through devN, or None (gpu none, or auto with no GPU).

    auto: the transcoder's GPU: encoding.qsvDevice when it names a render node discovery lists,
    else the first discovered render node (the lowest minor). A named node must be one discovery lists.
    """
    if gpu == "none":
        return None
    listed = sorted(
        (n for n in ((discovery.get("gpu") or {}).get("nodes") or []) if _node(n) and n.get("type") == "render"),
        key=lambda n: int(n["minor"]),
    )
    paths = [n["path"] for n in listed]
    if gpu == "auto":
        if qsv_device and qsv_device in paths:
            return qsv_device
        return paths[0] if paths else None
    if gpu not in paths:
        raise ValueError(
            f"homelab-media:jellyfin.gpu = {gpu!r} is refused: the node's discovery lists "
            f"{', '.join(paths) if paths else 'no render node'}; set it to one of those, auto or none "
            f"(`pulumi config set --path homelab-media:jellyfin.gpu auto`)"
        )
    return gpu


def jellyfin_devices(render_node: str | None, gid: int | None) -> list[dict[str, Any]]:
    """bpg `device_passthroughs` -> PVE `dev0: <node>,gid=<gid>,mode=0660` (pve-container Config.pm $dev_desc)."""
    if render_node is None:
        return []
    if gid is None:
        raise ValueError(f"no gid for {render_node}: the render group of the container's OS was not read")
    return [{"path": render_node, "gid": int(gid), "mode": "0660"}]


# devN: pve-container 5.0.7 "allow passing raw device nodes through to containers" (21 Nov 2023),
# released with Proxmox VE 8.1 (docs/adr/0014)
DEVN_MIN_RELEASE = (8, 1)


def pve_release_problem(release: str | None, version: str | None, endpoint: str) -> str | None:
    """None when the node's PVE release can pass devN through; else one line saying what to do."""
    m = re.match(r"^(\d+)\.(\d+)", release or version or "")
    if not m:
        return (f"cannot tell the Proxmox VE release of {endpoint} (the API's /version said release={release!r}, "
                f"version={version!r}); homelab-media:jellyfin.gpu needs PVE 8.1 or later")
    have = (int(m.group(1)), int(m.group(2)))
    if have >= DEVN_MIN_RELEASE:
        return None
    want = ".".join(map(str, DEVN_MIN_RELEASE))
    return (
        f"homelab-media:jellyfin.gpu passes the GPU through PVE's devN, which needs Proxmox VE {want} or later; "
        f"{endpoint} runs {release or version} (pve-manager {version}). Upgrade the node "
        f"(`apt update && apt full-upgrade` on it), or run Jellyfin without a GPU: "
        f"`pulumi config set --path homelab-media:jellyfin.gpu none`"
    )
