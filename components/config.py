"""Stack configuration: pydantic models, loaded from Pulumi config or a stack file.

Pure: no resources are declared here. Every bad value is refused with a message
naming the key (as written in Pulumi.<stack>.yaml), the value and what is allowed.

    python -m components.config Pulumi.homelab.yaml   # validate offline (PR check)
"""

from __future__ import annotations

import ipaddress
import json
import re
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

NAMESPACE = "homelab-media"

# The keys of the stack config, in the order people read them.
SECTIONS = (
    "proxmox",
    "node",
    "ssh",
    "media",
    "hostGroups",
    "storage",
    "template",
    "network",
    "transcoder",
    "ripper",
    "encoding",
    "pipeline",
    "makemkv",
    "devices",
    "verify",
    "monitoring",
    "jellyfin",
    "nodes",
    "queue",
    "workers",
)
LIST_SECTIONS = ("nodes", "workers")  # lists of mappings; every other section is one mapping
SECRETS = (
    "proxmoxPassword", "proxmoxApiToken", "sshPrivateKey", "makemkvKey", "statusPassword",
    "grafanaAdminPassword", "alertSmtpPassword", "alertTelegramToken", "alertWebhookToken",
    "jellyfinAdminPassword", "queuePassword",
)

_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_HOSTNAME = re.compile(r"^(?!-)[a-zA-Z0-9-]{1,63}(?<!-)$")  # also one label of a DNS name
_LANG = re.compile(r"^[a-z]{2,3}$")
_DIR = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._ -]+)*$")
# PVE's storage identifier (pve-storage-id): what `pvesm status` lists.
_STORAGE_ID = re.compile(r"^[a-z][a-z0-9_.-]*[a-z0-9]$")
_HEX_LEN = {"md5": 32, "sha1": 40, "sha224": 56, "sha256": 64, "sha384": 96, "sha512": 128}


def _storage_id(v: str) -> str:
    if not _STORAGE_ID.match(v):
        raise ValueError(
            "must be a Proxmox storage id as `pvesm status` lists it (lowercase letter first, then "
            "lowercase letters, digits, '-', '_' or '.'), e.g. local or local-lvm"
        )
    return v


def _host(v: str) -> str:
    """A DNS name (labels of letters, digits, '-') or an IPv4/IPv6 address."""
    try:
        ipaddress.ip_address(v)
        return v
    except ValueError:
        pass
    labels = v.rstrip(".").split(".")
    if len(v) > 253 or not all(_HOSTNAME.match(x) for x in labels) or labels[-1].isdigit():
        raise ValueError("must be a host name (e.g. pve.lan) or an IP address (e.g. 192.168.1.10)")
    return v


def _http_url(v: str) -> str:
    if not re.match(r"^https?://[^/\s]+(/\S*)?$", v):
        raise ValueError("must be an http(s) URL")
    return v.rstrip("/")


def _fingerprint(v: str) -> str:
    v = v.replace(" ", "").upper()
    if not re.match(r"^[0-9A-F]{40}$", v):
        raise ValueError("must be the key's 40-hex-digit OpenPGP fingerprint")
    return v


class ConfigError(ValueError):
    """Configuration refused; `messages` holds one line per problem."""

    def __init__(self, messages: list[str]):
        self.messages = messages
        super().__init__("\n".join(messages))


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
    )


class ProxmoxConfig(_Model):
    endpoint: str = Field(description="PVE API URL, e.g. https://pve.lan:8006/")
    node: str = Field(description="node name as shown in the PVE tree")
    username: str = "root@pam"
    insecure: bool = False

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        if not re.match(r"^https://[^/\s]+(:\d+)?/?$", v):
            raise ValueError("must be the API base URL like https://pve.lan:8006/")
        return v if v.endswith("/") else v + "/"

    @field_validator("node")
    @classmethod
    def _node(cls, v: str) -> str:
        if not _HOSTNAME.match(v):
            raise ValueError("must be the node name (letters, digits, '-')")
        return v


class NodeConfig(_Model):
    """The node's side of the containers' hookscript (docs/adr/0009)."""

    snippets_storage: str = Field(
        "local",
        description="storage with `snippets` content where the hookscript goes "
        "(pvesm set local --content iso,vztmpl,backup,snippets)",
    )

    _id = field_validator("snippets_storage")(classmethod(lambda cls, v: _storage_id(v)))


class SshConfig(_Model):
    host: str
    port: int = Field(22, ge=1, le=65535)
    user: Literal["root"] = "root"
    dial_error_limit: int = Field(5, ge=1, le=100)
    per_dial_timeout: int = Field(10, ge=1, le=300, description="seconds per dial")

    _check_host = field_validator("host")(classmethod(lambda cls, v: _host(v)))


class MediaUser(_Model):
    user: str = "media"
    uid: int = Field(1000, ge=1, le=65533)
    gid: int = Field(1000, ge=1, le=65533)

    @field_validator("user")
    @classmethod
    def _user(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("must be a Linux user name (lowercase, digits, '_' or '-')")
        return v


class HostGroups(_Model):
    """The node's numeric GIDs of the device groups (PVE 8: video 44, render 104, cdrom 24)."""

    video: int = Field(44, ge=1, le=65533)
    render: int = Field(104, ge=1, le=65533)
    cdrom: int = Field(24, ge=1, le=65533)


class StorageConfig(_Model):
    pool: str = "/mnt/storage"
    staging: str = "staging"
    movies: str = "movies"
    tv: str = "tv"
    require_mount: bool = True

    @field_validator("pool")
    @classmethod
    def _pool(cls, v: str) -> str:
        if not v.startswith("/") or v.rstrip("/") in ("", "/") or ".." in v.split("/"):
            raise ValueError("must be an absolute path below / such as /mnt/storage")
        return v.rstrip("/")

    @field_validator("staging", "movies", "tv")
    @classmethod
    def _subdir(cls, v: str) -> str:
        if v.startswith("/") or ".." in v.split("/") or not _DIR.match(v):
            raise ValueError("must be a relative directory under the pool, e.g. 'staging' or 'media/staging'")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _distinct(self) -> "StorageConfig":
        named = {"staging": self.staging, "movies": self.movies, "tv": self.tv}
        for a, pa in named.items():
            for b, pb in named.items():
                if a < b and (pa == pb or pa.startswith(pb + "/") or pb.startswith(pa + "/")):
                    raise ValueError(
                        f"storage.{a} ({pa!r}) and storage.{b} ({pb!r}) overlap: the pipeline would pick up "
                        "its own output; give each its own directory"
                    )
        return self

    def path(self, sub: str) -> str:
        return f"{self.pool}/{sub}"

    @property
    def staging_path(self) -> str:
        return self.path(self.staging)

    @property
    def movies_path(self) -> str:
        return self.path(self.movies)

    @property
    def tv_path(self) -> str:
        return self.path(self.tv)

    @property
    def rip_status_path(self) -> str:
        """media-rip's status file: the ripper writes it, the transcoder's page reads it (same pool path)."""
        return f"{self.staging_path}/.media-rip/status.json"


class TemplateConfig(_Model):
    datastore: str = "local"
    url: str = "https://download.proxmox.com/images/system/debian-12-standard_12.7-1_amd64.tar.zst"
    file_name: str = "debian-12-standard_12.7-1_amd64.tar.zst"
    checksum_algorithm: Literal["md5", "sha1", "sha224", "sha256", "sha384", "sha512"] = "sha512"
    checksum: str | None = None

    _datastore = field_validator("datastore")(classmethod(lambda cls, v: _storage_id(v)))

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://\S+$", v):
            raise ValueError("must be an http(s) URL of a container template")
        return v

    @field_validator("checksum")
    @classmethod
    def _checksum(cls, v: str | None, info) -> str | None:
        algo = info.data.get("checksum_algorithm", "sha512")
        want = _HEX_LEN.get(algo, 0)
        if v is not None and not re.fullmatch(rf"[0-9a-fA-F]{{{want}}}", v):
            raise ValueError(
                f"must be the template's {algo} sum: {want} hex digits (or set template.checksumAlgorithm to match it)"
            )
        return v

    @field_validator("file_name")
    @classmethod
    def _file_name(cls, v: str) -> str:
        if not re.match(r"^[\w.+-]+\.tar\.(zst|gz|xz)$", v):
            raise ValueError("must be a template file name ending in .tar.zst, .tar.gz or .tar.xz")
        return v


class NetworkConfig(_Model):
    bridge: str = "vmbr0"
    gateway: str | None = None
    dns: list[str] = []

    @field_validator("bridge")
    @classmethod
    def _bridge(cls, v: str) -> str:
        if not re.match(r"^[a-zA-Z][a-zA-Z0-9_.-]{0,14}$", v):
            raise ValueError("must be a Linux bridge name such as vmbr0")
        return v

    @field_validator("gateway")
    @classmethod
    def _gateway(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                ipaddress.IPv4Address(v)
            except ValueError:
                raise ValueError("must be an IPv4 address such as 192.168.1.1") from None
        return v

    @field_validator("dns")
    @classmethod
    def _dns(cls, v: list[str]) -> list[str]:
        for x in v:
            try:
                ipaddress.ip_address(x)
            except ValueError:
                raise ValueError(f"{x!r} is not an IP address; list DNS servers like [192.168.1.1]") from None
        return v


class ContainerConfig(_Model):
    vm_id: int = Field(ge=100, le=999_999_999)
    hostname: str
    cores: int = Field(ge=1, le=512)
    memory: int = Field(ge=64, le=4_194_304, description="MiB")
    swap: int = Field(0, ge=0, le=4_194_304, description="MiB")
    disk_gb: int = Field(ge=2, le=131_072)
    datastore: str = "local-lvm"
    ipv4: str = "dhcp"
    start_on_boot: bool = True
    allow_recreate: bool = Field(
        False,
        description="let an up delete and recreate this container (its disk lost) when storage.pool, "
        "datastore or a smaller diskGb asks for it; refused otherwise (scripts/host-ct-recreate-guard.sh)",
    )
    extra_raw_lines: list[str] = Field(
        [],
        description="your own lxc.cgroup2.devices.allow / lxc.mount.entry lines (e.g. /dev/net/tun), "
        "kept beside the device lines at every deploy and start",
    )

    _datastore = field_validator("datastore")(classmethod(lambda cls, v: _storage_id(v)))

    @field_validator("extra_raw_lines")
    @classmethod
    def _extra(cls, v: list[str]) -> list[str]:
        from .render import normalize_raw_line

        out = []
        for i, line in enumerate(v):
            try:
                out.append(normalize_raw_line(line))
            except ValueError as exc:
                raise ValueError(f"line {i + 1} ({line!r}): {exc}") from None
        return out

    @field_validator("hostname")
    @classmethod
    def _hostname(cls, v: str) -> str:
        if not _HOSTNAME.match(v):
            raise ValueError("must be a hostname (letters, digits, '-', at most 63)")
        return v

    @field_validator("ipv4")
    @classmethod
    def _ipv4(cls, v: str) -> str:
        if v == "dhcp":
            return v
        try:
            iface = ipaddress.IPv4Interface(v)
        except ValueError:
            raise ValueError("must be 'dhcp' or an address with prefix such as 192.168.1.201/24") from None
        if "/" not in v:
            raise ValueError("needs a prefix length, such as 192.168.1.201/24")
        return str(iface)


class RipperConfig(ContainerConfig):
    """The ripper container plus media-rip, its service (docs/adr/0007)."""

    min_length: int = Field(600, ge=0, le=86_400, description="seconds; shorter titles are not ripped")
    auto_rip: bool = Field(True, description="rip every new disc; false: media-rip only records it")
    eject: bool = Field(True, description="eject the disc when its rip is done (or failed)")
    device: str | None = Field(None, description="the drive in the container, e.g. /dev/sr0 (default: the discovered one)")
    metrics_port: int = Field(0, ge=0, le=65535, description="media-rip's /metrics (0 = off)")

    @field_validator("device")
    @classmethod
    def _device(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^/dev/sr\d+$", v):
            raise ValueError("must be an optical drive node such as /dev/sr0")
        return v


class EncodingConfig(_Model):
    languages: list[str] = ["eng", "bul"]
    # encoder, preset and crf are checked together by media-transcode's own rules
    # (media_pipeline.ffargs.EncodeOptions), in parse(): hevc_qsv has no ultrafast, no crf 0
    encoder: Literal["libx265", "hevc_qsv"] = "libx265"
    preset: str = "slow"
    crf: int = Field(18, ge=0, le=51)
    qsv_device: str | None = Field(
        None,
        description="render node for QSV and the GPU proof: /dev/dri/by-path/pci-0000:03:00.0-render (stable) or "
        "/dev/dri/renderD129 (default: discovered)",
    )

    @field_validator("qsv_device")
    @classmethod
    def _qsv_device(cls, v: str | None) -> str | None:
        from media_pipeline.gpu import BY_PATH  # the same rule media-transcode resolves it by

        if v is not None and not (re.fullmatch(r"/dev/dri/renderD\d+", v) or BY_PATH.fullmatch(v)):
            raise ValueError(
                "must be a render node: its stable name /dev/dri/by-path/pci-<domain:bus:device.function>-render "
                "(e.g. /dev/dri/by-path/pci-0000:03:00.0-render; `ls -l /dev/dri/by-path` on the node lists them), "
                "resolved to today's renderD<N> at every job; or /dev/dri/renderD<N> (e.g. /dev/dri/renderD129), "
                "whose number can change when the node probes its GPUs in another order"
            )
        return v

    @field_validator("languages")
    @classmethod
    def _languages(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("needs at least one language code, e.g. [eng]")
        bad = [x for x in v if not _LANG.match(x)]
        if bad:
            raise ValueError(f"{bad} are not ISO 639 codes; use 2 or 3 lowercase letters like eng or bg")
        return v


class PipelineConfig(_Model):
    """The media-pipeline service in the transcoder: /metrics and the status page."""

    keep_source: bool = True
    metrics_port: int = Field(9464, ge=0, le=65535, description="0 turns /metrics off")
    metrics_bind: str = "127.0.0.1"
    web_port: int = Field(8480, ge=0, le=65535, description="the status page; 0 turns it off")
    # beyond loopback only with the secret statusPassword (HTTP basic auth)
    web_bind: str = "127.0.0.1"
    public_url: str | None = Field(
        None, description="the status page's address behind a TLS reverse proxy, e.g. https://media.example.lan "
        "(Retry checks the browser's Origin against it; docs/reverse-proxy.md)",
    )
    trusted_proxies: list[str] = Field(
        [], description="addresses/networks of reverse proxies whose X-Forwarded-Host/-Proto are believed",
    )

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        from media_pipeline.config import public_url_problem  # the rule media-pipeline applies to it

        problem = public_url_problem(v)
        if problem:
            raise ValueError(f"{problem}, e.g. https://media.example.lan")
        return v.rstrip("/")

    @field_validator("trusted_proxies")
    @classmethod
    def _trusted(cls, v: list[str]) -> list[str]:
        for item in v:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or network, e.g. 192.168.1.10 or 10.0.0.0/24") from None
        return v

    @model_validator(mode="after")
    def _ports(self) -> "PipelineConfig":
        if self.web_port and self.web_port == self.metrics_port:
            raise ValueError(f"pipeline.webPort and pipeline.metricsPort are both {self.web_port}; give each its own port")
        return self

    @field_validator("metrics_bind", "web_bind")
    @classmethod
    def _bind(cls, v: str) -> str:
        try:
            ipaddress.ip_address(v)
        except ValueError:
            raise ValueError("must be an IP address: 127.0.0.1 (this container only) or 0.0.0.0 (scrapable)") from None
        return v


class MakeMkvConfig(_Model):
    install: bool = True
    version: str = "1.18.4"
    base_url: str = Field(
        "https://www.makemkv.com/download",
        description="where the tarballs are; old releases are tried under <baseUrl>/old/ too",
    )

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, v: str) -> str:
        if not re.match(r"^(https?://[^\s/]+(/\S*)?|/[^\s]*)$", v):
            raise ValueError("must be an http(s) URL such as https://www.makemkv.com/download, or a directory on the container")
        return v.rstrip("/")

    @field_validator("version")
    @classmethod
    def _version(cls, v: str) -> str:
        pinned = pinned_makemkv_versions()
        if v not in pinned:
            raise ValueError(
                f"is not pinned in scripts/makemkv-versions.txt (pinned: {', '.join(pinned)}); "
                "pick one of those or add the release's SHA-256 sums there"
            )
        return v


def pinned_makemkv_versions() -> list[str]:
    """Versions with checksums in scripts/makemkv-versions.txt, newest first."""
    path = Path(__file__).resolve().parent.parent / "scripts" / "makemkv-versions.txt"
    versions: list[str] = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if parts and not line.startswith("#") and re.match(r"^\d+\.\d+\.\d+$", parts[0]):
            if parts[0] not in versions:
                versions.append(parts[0])
    return versions


class DevicesConfig(_Model):
    """Bump `rediscover` after moving hardware (a new GPU, another sg index) to re-run discovery."""

    rediscover: int = Field(1, ge=0)
    optical_drive: str = Field(
        "auto",
        description="which optical drive the ripper gets: auto (the first), or a /dev/disk/by-id name, "
        "model or serial of one drive",
    )

    @field_validator("optical_drive")
    @classmethod
    def _drive(cls, v: str) -> str:
        if not re.fullmatch(r"auto|(/dev/disk/by-id/)?[A-Za-z0-9][A-Za-z0-9 ._:+-]{0,127}", v) or v != v.strip():
            raise ValueError(
                "must be auto, or a drive's /dev/disk/by-id name (e.g. ata-HL-DT-ST_BD-RE_WH16NS60_KLZK1234), "
                "model (e.g. BD-RE WH16NS60) or serial (ls -l /dev/disk/by-id on the node)"
            )
        return v


class VerifyConfig(_Model):
    strict: bool = False


_RENDER_NODE = re.compile(r"^/dev/dri/renderD\d+$")


class JellyfinConfig(ContainerConfig):
    """The Jellyfin container: unprivileged, movies and tv read-only, the GPU through PVE's devN."""

    enabled: bool = False
    vm_id: int = Field(203, ge=100, le=999_999_999)
    hostname: str = "jellyfin"
    node: str | None = Field(None, description="the PVE node (default: proxmox.node; no other is supported yet)")
    cores: int = Field(2, ge=1, le=512)
    memory: int = Field(2048, ge=64, le=4_194_304, description="MiB")
    disk_gb: int = Field(16, ge=2, le=131_072)
    port: int = Field(8096, ge=1, le=65535, description="Jellyfin's HTTP port (its default; only 8096 for now)")
    gpu: str = Field(
        "auto",
        description="auto (the transcoder's GPU: encoding.qsvDevice, else the first discovered render node), "
        "none (software transcoding), or a render node such as /dev/dri/renderD128",
    )
    repo: str = "https://repo.jellyfin.org/debian"
    key_url: str = "https://repo.jellyfin.org/jellyfin_team.gpg.key"
    # Jellyfin's apt signing key (repo.jellyfin.org/install-debuntu.sh; scripts/ct-install-jellyfin.sh)
    fingerprint: str = "4918AABC486CA052358D778D49023CD01DE21A7B"

    _repo_urls = field_validator("repo", "key_url")(classmethod(lambda cls, v: _http_url(v)))
    _fpr = field_validator("fingerprint")(classmethod(lambda cls, v: _fingerprint(v)))

    @field_validator("gpu")
    @classmethod
    def _gpu(cls, v: str) -> str:
        if v not in ("auto", "none") and not _RENDER_NODE.match(v):
            raise ValueError(
                "must be auto (the GPU the transcoder uses), none (no GPU), or a render node of the node such as "
                "/dev/dri/renderD128 (`ls /dev/dri` on the node lists them)"
            )
        return v

    @field_validator("extra_raw_lines")
    @classmethod
    def _no_raw(cls, v: list[str]) -> list[str]:
        if v:
            raise ValueError("the Jellyfin container takes no raw lxc lines (it is unprivileged; its GPU is PVE's devN)")
        return v


def jellyfin_problems(cfg: "StackConfig", require_secrets: bool) -> list[str]:
    """What the jellyfin section needs from the rest of the stack (only when it is enabled)."""
    jf = cfg.jellyfin
    if not jf.enabled:
        return []
    out = []
    if jf.node is not None and jf.node != cfg.proxmox.node:
        out.append(
            f"{NAMESPACE}:jellyfin.node = {jf.node!r} is refused: only the stack's node ({NAMESPACE}:proxmox.node = "
            f"{cfg.proxmox.node!r}) is supported until multi-node lands; remove it "
            f"(`pulumi config rm --path {NAMESPACE}:jellyfin.node`)"
        )
    for key, ct in (("transcoder", cfg.transcoder), ("ripper", cfg.ripper)):
        if jf.vm_id == ct.vm_id:
            out.append(
                f"{NAMESPACE}:jellyfin.vmId = {jf.vm_id} is refused: {key}.vmId is {ct.vm_id} too; give each container "
                f"its own id (`pulumi config set --path {NAMESPACE}:jellyfin.vmId 203`)"
            )
        if jf.hostname == ct.hostname:
            out.append(f"{NAMESPACE}:jellyfin.hostname = {jf.hostname!r} is refused: {key}.hostname is the same; they must differ")
    if jf.port != 8096:
        out.append(
            f"{NAMESPACE}:jellyfin.port = {jf.port} is refused: Jellyfin listens on 8096 until its network "
            "configuration is changed, which this program does not do yet; keep 8096 "
            f"(`pulumi config rm --path {NAMESPACE}:jellyfin.port`)"
        )
    if jf.ipv4 != "dhcp" and not cfg.network.gateway:
        out.append(
            f"{NAMESPACE}:jellyfin.ipv4 is a static address but network.gateway is not set: the container would have "
            "no route (apt would fail); set network.gateway"
        )
    if require_secrets and not cfg.secrets.jellyfin_admin_password:
        out.append(
            f"{NAMESPACE}:jellyfinAdminPassword is missing: jellyfin.enabled is true and Jellyfin's first user needs "
            f"it; set it with `pulumi config set --secret {NAMESPACE}:jellyfinAdminPassword ...` (a long random string)"
        )
    return out


def workers_problems(cfg: "StackConfig") -> list[str]:
    """What homelab-media:workers and :nodes need from the rest of the stack (docs/adr/0017)."""
    out: list[str] = []
    ns = NAMESPACE
    node_names = [cfg.proxmox.node] + [n.name for n in cfg.nodes]
    for i, n in enumerate(cfg.nodes):
        if n.name in node_names[: i + 1]:
            out.append(f"{ns}:nodes[{i}].name = {n.name!r} is refused: that node is listed already "
                       f"(proxmox.node is {cfg.proxmox.node!r}); each node once")
    hosts = [(cfg.ssh.host, cfg.ssh.port)] + [(n.ssh.host, n.ssh.port) for n in cfg.nodes]
    for i, n in enumerate(cfg.nodes):
        if (n.ssh.host, n.ssh.port) in hosts[: i + 1]:
            out.append(f"{ns}:nodes[{i}].ssh = {n.ssh.host}:{n.ssh.port} is refused: another node is reached "
                       "there; give each node its own ssh host or port")
    if not cfg.workers:
        return out
    q = cfg.queue
    if q.node is not None and q.node not in node_names:
        out.append(f"{ns}:queue.node = {q.node!r} is refused: it is not one of the stack's nodes "
                   f"({', '.join(node_names)}); set proxmox.node or add it to {ns}:nodes")
    # every container of the stack: vm ids and host names must not collide
    cts: list[tuple[str, ContainerConfig]] = [("transcoder", cfg.transcoder), ("ripper", cfg.ripper), ("queue", q)]
    if cfg.jellyfin.enabled:
        cts.append(("jellyfin", cfg.jellyfin))
    if cfg.monitoring.enabled:
        cts.append(("monitoring", cfg.monitoring))
    seen_ids: dict[int, str] = {}
    seen_hosts: dict[str, str] = {}
    for key, ct in cts:
        if key == "queue" and ct.vm_id in seen_ids:
            out.append(f"{ns}:queue.vmId = {ct.vm_id} is refused: {seen_ids[ct.vm_id]}.vmId is {ct.vm_id} too; give "
                       f"each container its own id (`pulumi config set --path {ns}:queue.vmId 205`)")
        if key == "queue" and ct.hostname in seen_hosts:
            out.append(f"{ns}:queue.hostname = {ct.hostname!r} is refused: {seen_hosts[ct.hostname]} has that host name")
        seen_ids.setdefault(ct.vm_id, key)
        seen_hosts.setdefault(ct.hostname, key)
    names = {cfg.transcoder.hostname: "transcoder"}  # worker 1's name in the queue is its host name
    for i, w in enumerate(cfg.workers):
        key = f"workers[{i}]"
        if w.vm_id in seen_ids:
            out.append(f"{ns}:{key}.vmId = {w.vm_id} is refused: {seen_ids[w.vm_id]}.vmId is {w.vm_id} too; give "
                       f"each container its own id")
        seen_ids.setdefault(w.vm_id, key)
        if w.hostname in seen_hosts:
            out.append(f"{ns}:{key}.hostname = {w.hostname!r} is refused: {seen_hosts[w.hostname]} has that host name")
        seen_hosts.setdefault(w.hostname, key)
        if w.name in names:
            out.append(f"{ns}:{key}.name = {w.name!r} is refused: {names[w.name]} is that worker already; "
                       "each worker needs its own name in the queue")
        names.setdefault(w.name, key)
        if w.node is not None and w.node not in node_names:
            out.append(f"{ns}:{key}.node = {w.node!r} is refused: it is not one of the stack's nodes "
                       f"({', '.join(node_names)}); add it to {ns}:nodes with its ssh host")
        if w.encoder == "hevc_qsv" and w.gpu == "none":
            out.append(f"{ns}:{key}.encoder = 'hevc_qsv' is refused with gpu 'none': QSV needs the GPU; set "
                       f"gpu auto (or a render node), or encoder libx265")
        enc = cfg.encoding
        problems = _encode_problems(
            languages=enc.languages, encoder=w.encoder, crf=w.crf if w.crf is not None else enc.crf,
            preset=w.preset if w.preset is not None else enc.preset)
        for field, msg in problems:
            given = getattr(w, field)
            where = f"{key}.{field}" if given is not None else f"encoding.{field} (inherited by {key})"
            out.append(f"{ns}:{where} is refused with {key}.encoder {w.encoder!r}: {msg}; set "
                       f"`pulumi config set --path {ns}:{key}.{field} ...`")
    # pg_hba admits the workers by address, and they reach PostgreSQL at the queue's address
    for key, ct in [("queue", q), ("transcoder", cfg.transcoder)] + [(f"workers[{i}]", w) for i, w in enumerate(cfg.workers)]:
        if ct.ipv4 == "dhcp":
            out.append(
                f"{ns}:{key}.ipv4 is dhcp, but workers need fixed addresses (the queue admits only the workers' "
                f"addresses, and they reach it at its own): set it, e.g. `pulumi config set --path "
                f"{ns}:{key}.ipv4 192.168.1.{ct.vm_id % 256}/24`")
    if not cfg.network.gateway and any(ct.ipv4 != "dhcp" for ct in [q, *cfg.workers]):
        out.append(f"{ns}:network.gateway is not set, but the queue and the workers have static addresses: the "
                   "containers would have no route (apt would fail); set network.gateway")
    return out


def _encode_problems(*, languages, encoder: str, crf: int, preset: str) -> list[tuple[str, str]]:
    from media_pipeline.ffargs import EncodeOptions

    return EncodeOptions(languages=tuple(languages), encoder=encoder, crf=crf, preset=preset).field_problems()


# Prometheus' duration syntax (https://prometheus.io/docs/prometheus/2.42/configuration/configuration/#duration)
_PROM_DURATION = re.compile(r"^(([0-9]+)(y|w|d|h|m|s|ms))+$")


def _duration(v: str) -> str:
    if not _PROM_DURATION.match(v):
        raise ValueError("must be a Prometheus duration such as 30s, 5m, 4h or 30d")
    return v


class EmailReceiver(_Model):
    """Alertmanager's email_config; the SMTP password is the secret alertSmtpPassword."""

    to: str
    from_: str = Field(alias="from")
    smarthost: str = Field(description="host:port of the SMTP server, e.g. smtp.example.com:587")
    username: str | None = None
    require_tls: bool = True

    @field_validator("to", "from_")
    @classmethod
    def _address(cls, v: str) -> str:
        if not re.match(r"^[^@\s]+@[^@\s]+$", v):
            raise ValueError("must be an e-mail address such as admin@example.com")
        return v

    @field_validator("smarthost")
    @classmethod
    def _smarthost(cls, v: str) -> str:
        host, _, port = v.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("must be host:port, e.g. smtp.example.com:587")
        _host(host.strip("[]"))
        return v


class TelegramReceiver(_Model):
    """Alertmanager's telegram_config; the bot token is the secret alertTelegramToken."""

    chat_id: int


class WebhookReceiver(_Model):
    """Alertmanager's webhook_config; an optional bearer token is the secret alertWebhookToken."""

    url: str

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://[^/\s]+(/\S*)?$", v):
            raise ValueError("must be an http(s) URL, e.g. http://ntfy.lan/alertmanager")
        return v


class Receivers(_Model):
    email: EmailReceiver | None = None
    telegram: TelegramReceiver | None = None
    webhook: WebhookReceiver | None = None


class GrafanaConfig(_Model):
    """Grafana from Grafana's own apt repository, its signing key pinned by fingerprint."""

    enabled: bool = True
    port: int = Field(3000, ge=1, le=65535)
    bind: str = Field("0.0.0.0", description="beyond loopback only with the secret grafanaAdminPassword")
    repo: str = "https://apt.grafana.com"
    key_url: str = "https://apt.grafana.com/gpg.key"
    # Grafana Labs' apt signing key (https://grafana.com/docs/grafana/latest/setup-grafana/installation/debian/)
    fingerprint: str = "B53AE77BADB630A683046005963FA27710458545"

    @field_validator("bind")
    @classmethod
    def _bind(cls, v: str) -> str:
        try:
            ipaddress.ip_address(v)
        except ValueError:
            raise ValueError("must be an IP address: 127.0.0.1 (the container only) or 0.0.0.0") from None
        return v

    _repo_urls = field_validator("repo", "key_url")(classmethod(lambda cls, v: _http_url(v)))
    _fpr = field_validator("fingerprint")(classmethod(lambda cls, v: _fingerprint(v)))


class MonitoringConfig(ContainerConfig):
    """The monitoring container: Prometheus, Alertmanager (Debian 12) and Grafana (docs/adr/0015)."""

    enabled: bool = False
    vm_id: int = Field(204, ge=100, le=999_999_999)
    hostname: str = "monitoring"
    cores: int = Field(1, ge=1, le=512)
    memory: int = Field(1024, ge=64, le=4_194_304, description="MiB")
    swap: int = Field(512, ge=0, le=4_194_304, description="MiB")
    disk_gb: int = Field(8, ge=2, le=131_072)
    node: str | None = Field(None, description="the PVE node (default: proxmox.node)")
    retention: str = "30d"
    scrape_interval: str = "30s"
    evaluation_interval: str = "30s"
    prometheus_port: int = Field(9090, ge=1, le=65535)
    alertmanager_port: int = Field(9093, ge=1, le=65535)
    node_exporter_port: int = Field(9100, ge=1, le=65535)
    node_address: str | None = Field(
        None, description="where the monitoring container reaches the node's node_exporter (default: ssh.host)"
    )
    group_wait: str = "30s"
    group_interval: str = "5m"
    repeat_interval: str = "4h"
    receivers: Receivers = Receivers()
    grafana: GrafanaConfig = GrafanaConfig()

    _durations = field_validator(
        "retention", "scrape_interval", "evaluation_interval", "group_wait", "group_interval", "repeat_interval"
    )(classmethod(lambda cls, v: _duration(v)))

    @field_validator("node_address")
    @classmethod
    def _node_address(cls, v: str | None) -> str | None:
        return None if v is None else _host(v)

    @field_validator("extra_raw_lines")
    @classmethod
    def _no_raw(cls, v: list[str]) -> list[str]:
        if v:
            raise ValueError("the monitoring container is unprivileged and takes no raw lxc lines; remove them")
        return v

    @property
    def address(self) -> str | None:
        return None if self.ipv4 == "dhcp" else self.ipv4.split("/")[0]


class ExtraNodeConfig(_Model):
    """Another PVE node of the same cluster (homelab-media:nodes, docs/adr/0017): it gets what the stack's
    node gets (the media user, the pool check, discovery, the hookscript, the template) and runs workers."""

    name: str = Field(description="the node's name in the cluster, as the PVE tree shows it")
    ssh: SshConfig

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _HOSTNAME.match(v):
            raise ValueError("must be the node name (letters, digits, '-'), as `pvecm nodes` lists it")
        return v


class QueueConfig(ContainerConfig):
    """PostgreSQL for the workers' one queue (docs/adr/0016, 0017): an unprivileged container with no
    pool, only its backup folder. Deployed when homelab-media:workers is set."""

    vm_id: int = Field(205, ge=100, le=999_999_999)
    hostname: str = "queue"
    cores: int = Field(1, ge=1, le=512)
    memory: int = Field(512, ge=64, le=4_194_304, description="MiB")
    swap: int = Field(256, ge=0, le=4_194_304, description="MiB")
    disk_gb: int = Field(8, ge=2, le=131_072)
    node: str | None = Field(None, description="the PVE node (default: proxmox.node)")
    port: int = Field(5432, ge=1, le=65535)
    database: str = "media_pipeline"
    user: str = "media_pipeline"
    backup_dir: str = Field("backups/queue", description="pg_dump's folder, relative to storage.pool")
    backup_on_calendar: str = Field("daily", description="systemd OnCalendar= of the pg_dump timer")
    backup_keep: int = Field(7, ge=1, le=1000, description="dumps kept; older ones are removed")
    lease_seconds: int = Field(60, ge=10, le=3600, description="a dead worker's job is queued again after this")

    @field_validator("database", "user")
    @classmethod
    def _ident(cls, v: str) -> str:
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", v):
            raise ValueError("must be a plain PostgreSQL name (lowercase letters, digits, '_'; a letter or '_' first)")
        return v

    @field_validator("backup_dir")
    @classmethod
    def _backup_dir(cls, v: str) -> str:
        if v.startswith("/") or ".." in v.split("/") or not _DIR.match(v):
            raise ValueError("must be a relative directory under the pool, e.g. 'backups/queue'")
        return v.rstrip("/")

    @field_validator("backup_on_calendar")
    @classmethod
    def _calendar(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9*:.,/ ~-]{1,64}", v):
            raise ValueError("must be a systemd OnCalendar= expression such as daily or *-*-* 03:30:00")
        return v

    @field_validator("extra_raw_lines")
    @classmethod
    def _no_raw(cls, v: list[str]) -> list[str]:
        if v:
            raise ValueError("the queue container is unprivileged and takes no raw lxc lines; remove them")
        return v

    @property
    def address(self) -> str | None:
        return None if self.ipv4 == "dhcp" else self.ipv4.split("/")[0]


class WorkerConfig(ContainerConfig):
    """One extra transcode worker (homelab-media:workers[i]): a privileged container like the transcoder,
    on any node of the stack, running media-pipeline on the shared PostgreSQL queue."""

    name: str
    node: str | None = Field(None, description="the PVE node (default: proxmox.node)")
    hostname: str = ""  # default: name
    cores: int = Field(2, ge=1, le=512)
    memory: int = Field(2048, ge=64, le=4_194_304, description="MiB")
    swap: int = Field(512, ge=0, le=4_194_304, description="MiB")
    disk_gb: int = Field(8, ge=2, le=131_072)
    encoder: Literal["libx265", "hevc_qsv"] = "libx265"
    gpu: str = Field("auto", description="auto (the node's GPUs), none, or a render node such as /dev/dri/renderD129")
    preset: str | None = None
    crf: int | None = Field(None, ge=0, le=51)

    @model_validator(mode="before")
    @classmethod
    def _default_hostname(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("hostname") and isinstance(data.get("name"), str):
            data = {**data, "hostname": data["name"]}
        return data

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _HOSTNAME.match(v):
            raise ValueError("must be a short name (letters, digits, '-'), e.g. worker-2; it is the worker's name in the queue")
        return v

    @field_validator("gpu")
    @classmethod
    def _gpu(cls, v: str) -> str:
        if v not in ("auto", "none") and not _RENDER_NODE.match(v):
            raise ValueError(
                "must be auto (every GPU of its node), none (libx265 only), or a render node of its node such as "
                "/dev/dri/renderD129 (`ls /dev/dri` on the node lists them)"
            )
        return v

    @property
    def render_node(self) -> str | None:
        return self.gpu if self.gpu not in ("auto", "none") else None


class Secrets(_Model):
    """Which secrets are present (values stay in Pulumi; never stored here)."""

    proxmox_password: bool = False
    proxmox_api_token: bool = False
    ssh_private_key: bool = False
    makemkv_key: bool = False
    status_password: bool = False
    grafana_admin_password: bool = False
    alert_smtp_password: bool = False
    alert_telegram_token: bool = False
    alert_webhook_token: bool = False
    jellyfin_admin_password: bool = False
    queue_password: bool = False


class StackConfig(_Model):
    proxmox: ProxmoxConfig
    node: NodeConfig = NodeConfig()
    ssh: SshConfig
    media: MediaUser = MediaUser()
    host_groups: HostGroups = HostGroups()
    storage: StorageConfig = StorageConfig()
    template: TemplateConfig = TemplateConfig()
    network: NetworkConfig = NetworkConfig()
    transcoder: ContainerConfig
    ripper: RipperConfig
    encoding: EncodingConfig = EncodingConfig()
    pipeline: PipelineConfig = PipelineConfig()
    makemkv: MakeMkvConfig = MakeMkvConfig()
    devices: DevicesConfig = DevicesConfig()
    verify: VerifyConfig = VerifyConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    jellyfin: JellyfinConfig = JellyfinConfig()
    nodes: list[ExtraNodeConfig] = []
    queue: QueueConfig = QueueConfig()
    workers: list[WorkerConfig] = []
    secrets: Secrets = Secrets()

    @model_validator(mode="after")
    def _cross_checks(self) -> "StackConfig":
        if self.transcoder.vm_id == self.ripper.vm_id:
            raise ValueError(
                f"transcoder.vmId and ripper.vmId are both {self.ripper.vm_id}; give each container its own id"
            )
        if self.transcoder.hostname == self.ripper.hostname:
            raise ValueError("transcoder.hostname and ripper.hostname must differ")
        cts = [("transcoder", self.transcoder), ("ripper", self.ripper)]
        if self.monitoring.enabled:
            cts.append(("monitoring", self.monitoring))
            for n, ct in cts[:2]:
                if ct.vm_id == self.monitoring.vm_id:
                    raise ValueError(f"monitoring.vmId and {n}.vmId are both {ct.vm_id}; give each container its own id")
        static = [n for n, ct in cts if ct.ipv4 != "dhcp"]
        if static and not self.network.gateway:
            raise ValueError(
                f"{' and '.join(n + '.ipv4' for n in static)} is a static address but network.gateway is not set: "
                "the container would have no route (apt would fail); set network.gateway"
            )
        return self


def _key_of(loc: tuple[Any, ...]) -> str:
    """pydantic's error location as the stack key: ("workers", 0, "vm_id") -> workers[0].vmId."""
    key = ""
    for p in loc:
        if isinstance(p, int):
            key += f"[{p}]"
        else:
            p = str(p)
            key += ("." if key else "") + (to_camel(p) if "_" in p else p)
    return key


def _auth_problems(raw: dict[str, Any], secrets: Secrets, require_secrets: bool) -> list[str]:
    problems = []
    if secrets.proxmox_api_token:
        problems.append(
            f"{NAMESPACE}:proxmoxApiToken is set, but this stack creates privileged containers with a "
            "host bind mount (storage.pool) and raw device lines: Proxmox allows that only to "
            "root@pam with a password (ticket), not to an API token, not even root@pam!token. "
            f"Remove it (pulumi config rm {NAMESPACE}:proxmoxApiToken) and set "
            f"`pulumi config set --secret {NAMESPACE}:proxmoxPassword` instead."
        )
    user = (raw.get("proxmox") or {}).get("username", "root@pam")
    if user != "root@pam":
        problems.append(
            f"{NAMESPACE}:proxmox.username is {user!r}: bind-mounting {(raw.get('storage') or {}).get('pool', '/mnt/storage')} "
            "into a privileged container is allowed only to root@pam. Set it to root@pam."
        )
    if not require_secrets:
        return problems
    if not secrets.proxmox_password and not secrets.proxmox_api_token:
        problems.append(
            f"{NAMESPACE}:proxmoxPassword is missing: set it with "
            f"`pulumi config set --secret {NAMESPACE}:proxmoxPassword` (the root@pam password)."
        )
    if not secrets.ssh_private_key:
        problems.append(
            f"{NAMESPACE}:sshPrivateKey is missing: set it with "
            f"`pulumi config set --secret {NAMESPACE}:sshPrivateKey < ~/.ssh/id_ed25519` "
            "(a key that logs in to the node as root)."
        )
    return problems


def _exposure_problems(cfg: "StackConfig") -> list[str]:
    """The status page can retry jobs: beyond the container's loopback it needs its password."""
    p = cfg.pipeline
    if p.web_port and not ipaddress.ip_address(p.web_bind).is_loopback and not cfg.secrets.status_password:
        return [
            f"{NAMESPACE}:pipeline.webBind = {p.web_bind!r} opens the status page beyond the transcoder, but "
            f"{NAMESPACE}:statusPassword is not set: set it with `pulumi config set --secret "
            f"{NAMESPACE}:statusPassword` (a long random string), or keep webBind 127.0.0.1."
        ]
    return []


def _monitoring_problems(cfg: "StackConfig", require_secrets: bool) -> list[str]:
    """What monitoring.enabled needs from the rest of the stack: fixed addresses and its secrets."""
    mon = cfg.monitoring
    if not mon.enabled:
        return []
    out = []
    for key, ct in (("monitoring", mon), ("transcoder", cfg.transcoder), ("ripper", cfg.ripper)):
        if ct.ipv4 == "dhcp":
            out.append(
                f"{NAMESPACE}:{key}.ipv4 is dhcp, but monitoring.enabled needs a fixed address (Prometheus' scrape "
                f"targets and /metrics' allow list are written at deploy): set it, e.g. `pulumi config set --path "
                f"{NAMESPACE}:{key}.ipv4 192.168.1.{ct.vm_id % 256}/24`"
            )
    if mon.node is not None and mon.node != cfg.proxmox.node:
        out.append(
            f"{NAMESPACE}:monitoring.node = {mon.node!r} is refused: this stack deploys to one node, "
            f"proxmox.node ({cfg.proxmox.node!r}); remove monitoring.node"
        )
    if not cfg.pipeline.metrics_port:
        out.append(f"{NAMESPACE}:pipeline.metricsPort is 0 (off), but monitoring.enabled scrapes it: set a port, e.g. 9464")
    if mon.node_address is None and ipaddress.ip_address(_ip_or(cfg.ssh.host)).is_loopback:
        out.append(
            f"{NAMESPACE}:monitoring.nodeAddress is not set and ssh.host ({cfg.ssh.host}) is this machine's loopback: "
            f"set the node's address as the monitoring container reaches it, e.g. `pulumi config set --path "
            f"{NAMESPACE}:monitoring.nodeAddress 192.168.1.10`"
        )
    g = mon.grafana
    if g.enabled and not cfg.secrets.grafana_admin_password and require_secrets:
        where = "beyond its container" if not ipaddress.ip_address(g.bind).is_loopback else "on loopback"
        out.append(
            f"{NAMESPACE}:monitoring.grafana is enabled ({g.bind}, {where}) but {NAMESPACE}:grafanaAdminPassword "
            f"is not set: set it with `pulumi config set --secret {NAMESPACE}:grafanaAdminPassword` (a long random "
            f"string; anonymous access stays off), or set monitoring.grafana.enabled false"
        )
    needs = (("email", "alertSmtpPassword", "alert_smtp_password", lambda r: r.username is not None),
             ("telegram", "alertTelegramToken", "alert_telegram_token", lambda r: True))
    for kind, secret, field, wanted in needs:
        r = getattr(mon.receivers, kind)
        if r is not None and wanted(r) and not getattr(cfg.secrets, field) and require_secrets:
            out.append(
                f"{NAMESPACE}:monitoring.receivers.{kind} is set but {NAMESPACE}:{secret} is missing: set it with "
                f"`pulumi config set --secret {NAMESPACE}:{secret}`"
            )
    return out


def _ip_or(host: str) -> str:
    """host if it is an IP address, else a routable placeholder (a name is never loopback here)."""
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        return "192.0.2.1"


def page_urls(cfg: "StackConfig") -> dict[str, Any]:
    """Where to reach the status page and /metrics (the stack output `statusPage`)."""
    p, ct = cfg.pipeline, cfg.transcoder
    host = ct.ipv4.split("/")[0] if ct.ipv4 != "dhcp" else ct.hostname

    def url(bind: str, port: int, path: str) -> dict[str, Any]:
        if not port:
            return {"url": None, "reachable": "off (port 0)"}
        if ipaddress.ip_address(bind).is_loopback:
            return {"url": f"http://127.0.0.1:{port}{path}",
                    "reachable": f"inside CT {ct.vm_id} only (bind {bind}): pct exec {ct.vm_id} -- curl -s "
                                 f"http://127.0.0.1:{port}{path}"}
        shown = host if bind in ("0.0.0.0", "::") else bind
        return {"url": f"http://{shown}:{port}{path}", "reachable": f"from the network (bind {bind})"}

    from .monitoring_render import metrics_endpoints  # the bind monitoring.enabled derives

    metrics = metrics_endpoints(cfg)["pipeline"]
    return {"page": {**url(p.web_bind, p.web_port, "/"), "password": cfg.secrets.status_password},
            "metrics": url(metrics.bind, metrics.port, "/metrics")}


def parse(raw: dict[str, Any], secrets: Secrets, require_secrets: bool = True) -> StackConfig:
    """Validate the structured config sections; raise ConfigError with every problem."""
    problems: list[str] = []
    unknown = sorted(set(raw) - set(SECTIONS))
    for key in unknown:
        problems.append(
            f"{NAMESPACE}:{key} is not a setting of this program; known keys: {', '.join(SECTIONS + SECRETS)}"
        )
    data = {k: v for k, v in raw.items() if k in SECTIONS}
    for key, value in data.items():
        if key in LIST_SECTIONS:
            if not isinstance(value, list):
                problems.append(f"{NAMESPACE}:{key} must be a list (one mapping of settings per entry), got {value!r}")
        elif not isinstance(value, dict):
            problems.append(f"{NAMESPACE}:{key} must be a mapping of settings, got {value!r}")
    if problems:
        raise ConfigError(problems)
    try:
        cfg = StackConfig.model_validate({**data, "secrets": secrets})
    except ValidationError as exc:
        for err in exc.errors():
            key = _key_of(err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "missing":
                problems.append(f"{NAMESPACE}:{key} is required but missing")
            elif err["type"] == "extra_forbidden":
                problems.append(f"{NAMESPACE}:{key} is not a known setting (check its spelling)")
            else:
                problems.append(f"{NAMESPACE}:{key} = {err.get('input')!r} is refused: {msg}")
        cfg = None
    try:
        enc = cfg.encoding if cfg is not None else EncodingConfig.model_validate(data.get("encoding") or {})
        problems += combined_problems(enc)
    except ValidationError:
        pass  # already reported, by key
    problems += _auth_problems(raw, secrets, require_secrets)
    if cfg is not None:
        problems += _exposure_problems(cfg)
        problems += _monitoring_problems(cfg, require_secrets)
        problems += jellyfin_problems(cfg, require_secrets)
        problems += workers_problems(cfg)
    if problems:
        raise ConfigError(problems)
    assert cfg is not None
    return cfg


def combined_problems(enc: EncodingConfig) -> list[str]:
    """Settings that are fine alone but not together, by the rules the containers apply later."""
    out = []
    for field, msg in _encode_problems(languages=enc.languages, encoder=enc.encoder, crf=enc.crf, preset=enc.preset):
        value = getattr(enc, field)
        out.append(
            f"{NAMESPACE}:encoding.{field} = {value!r} is refused with encoding.encoder {enc.encoder!r}: {msg} "
            f"(media-transcode in the transcoder would refuse it); fix: "
            f"`pulumi config set --path {NAMESPACE}:encoding.{field} ...`"
        )
    return out


def from_stack_file(path: str | Path, require_secrets: bool = False) -> StackConfig:
    """Read a Pulumi.<stack>.yaml without Pulumi (secrets count as present when set)."""
    import yaml

    p = Path(path)
    try:
        doc = yaml.safe_load(p.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError([f"{p}: no such stack file"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{p}: not valid YAML: {exc}"]) from None
    entries = doc.get("config") or {}
    raw: dict[str, Any] = {}
    present: dict[str, bool] = {}
    problems = []
    for full_key, value in entries.items():
        ns, _, key = str(full_key).partition(":")
        if ns != NAMESPACE:
            continue  # provider settings (proxmoxve:...) and others are not ours
        if key in SECRETS:
            if not (isinstance(value, dict) and "secure" in value):
                problems.append(
                    f"{p}: {full_key} is written in clear text; remove it and run "
                    f"`pulumi config set --secret {full_key}` so Pulumi encrypts it"
                )
            present[key] = True
        else:
            raw[key] = value
    secrets = Secrets.model_validate(present)  # by their config key names (aliases)
    try:
        cfg = parse(raw, secrets, require_secrets)
    except ConfigError as exc:
        raise ConfigError(problems + exc.messages) from None
    if problems:
        raise ConfigError(problems)
    return cfg


def from_cli_json(doc: dict[str, Any], require_secrets: bool = False) -> StackConfig:
    """Validate what `pulumi config --json` prints (the stack file plus any environment it
    imports) the way the program reads its config (components.stack.load: each section through
    pulumi.Config.get_object, any other key of the namespace refused). Tools that drive the CLI
    (adopt) use this instead of reading keys themselves. Secret values are never asked for."""
    raw: dict[str, Any] = {}
    present: dict[str, bool] = {}
    problems: list[str] = []
    for full_key, entry in doc.items():
        ns, _, key = str(full_key).partition(":")
        if ns != NAMESPACE:
            continue
        if key in SECRETS:
            present[key] = True
        elif key not in SECTIONS:
            raw[key] = None  # parse() names it
        elif "objectValue" in entry:
            raw[key] = entry["objectValue"]
        elif "value" not in entry:
            problems.append(
                f"{full_key} is stored as a secret: only {', '.join(SECRETS)} are meant to be; store it "
                f"in plain text (`pulumi config set --path {full_key}.<setting> ...`)"
            )
        else:
            try:
                value = json.loads(entry["value"])  # as pulumi.Config.get_object reads it
            except (TypeError, ValueError):
                problems.append(f"{full_key} must be a mapping of settings, got {entry['value']!r}")
                continue
            if value is not None:
                raw[key] = value
    try:
        cfg = parse(raw, Secrets.model_validate(present), require_secrets)
    except ConfigError as exc:
        raise ConfigError(problems + exc.messages) from None
    if problems:
        raise ConfigError(problems)
    return cfg


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    require = "--require-secrets" in argv
    if require:
        argv.remove("--require-secrets")
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print("usage: python -m components.config [--require-secrets] Pulumi.<stack>.yaml", file=sys.stderr)
        return 2
    try:
        cfg = from_stack_file(argv[0], require_secrets=require)
    except ConfigError as exc:
        print(f"{argv[0]}: {len(exc.messages)} problem(s):", file=sys.stderr)
        for m in exc.messages:
            print(f"  - {m}", file=sys.stderr)
        return 1
    missing = [k for k, v in cfg.secrets.model_dump(by_alias=True).items() if not v and k != "proxmoxApiToken"]
    print(f"{argv[0]}: ok (transcoder CT {cfg.transcoder.vm_id}, ripper CT {cfg.ripper.vm_id}, pool {cfg.storage.pool})")
    if missing:
        print(f"  secrets not set here (fine for preview with dummies): {', '.join(missing)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
