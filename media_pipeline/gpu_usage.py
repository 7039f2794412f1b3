"""How busy the GPU's engines are for our encoders, from the DRM client usage stats in fdinfo.

A DRM driver prints per-client counters in /proc/<pid>/fdinfo/<fd> for each open DRM file
(a render node such as /dev/dri/renderD128). Reading them needs neither root nor perf: the
service reads the fdinfo of its own ffmpeg children (same user). The formats, from the Linux
kernel's documentation:

- Documentation/gpu/drm-usage-stats.rst ("DRM client usage stats"), common to all drivers:
  one `key: value [unit]` per line; `drm-driver: <valstr>` (mandatory: a file without it is
  not a DRM file and is ignored), `drm-pdev: <aaaa:bb.cc.d>`, `drm-client-id: <uint>` (one
  `struct drm_file`; "unique within the scope of each device, in which case drm-pdev shall be
  present", and "userspace should make sure to not double account": several fds, dup()ed or
  passed to another process, that show one client are counted once, keyed by (pdev, client id));
  `drm-engine-<keystr>: <uint> ns` (cumulative busy time), `drm-engine-capacity-<keystr>: <uint>`
  ("a group of identical hardware engines"; absent = 1), `drm-cycles-<keystr>: <uint>`,
  `drm-total-cycles-<keystr>: <uint>` (a GPU timestamp ticking at the rate of drm-cycles, so
  utilization is computed "entirely on the GPU clock domain"), and the memory keys
  `drm-total-<region>`, `drm-resident-<region>` ... `: <uint> [KiB|MiB]` (bytes by default;
  `drm-memory-<region>` is a deprecated alias of drm-resident, read only when no drm-resident
  key is there).
- i915 (Documentation/gpu/i915.rst, section "i915 DRM client usage stats implementation",
  linked from drm-usage-stats.rst): `drm-engine-<class>: <uint> ns` for the classes render,
  copy, video and video-enhance, with `drm-engine-capacity-video: 2` on a GPU with two VCS.
  Busy ratio = Δns / Δwall-clock ns (time.monotonic_ns, taken when that client's file is
  read) / capacity.
- xe (Documentation/gpu/xe/xe-drm-usage-stats.rst, which includes the "DRM Client usage
  stats" DOC block of drivers/gpu/drm/xe/xe_drm_client.c): `drm-cycles-<class>` and
  `drm-total-cycles-<class>` for the classes rcs, bcs, vcs, vecs, ccs (and "other"), plus
  `drm-engine-capacity-<class>` when a class has more than one engine. Busy ratio = Δcycles /
  Δtotal-cycles / capacity (the driver sums the run ticks of all the engines of a class, so two
  busy VCS give 2 × Δtotal). The classes are named like i915's: rcs -> render, bcs -> copy,
  vcs -> video, vecs -> video-enhance, ccs -> compute.

Per engine class, the ratios of the encoder clients are summed and clamped to [0, 1]
(`media_pipeline_gpu_engine_busy_ratio{engine}`, engines video, video-enhance, render) and
their resident memory summed over all regions (`media_pipeline_gpu_memory_bytes`; a buffer
shared by two of them counts twice: drm-shared-<region> says how much is shared).

Counters that go down. The spec lets a driver report a value lower than the previous one
for a while (userspace "is expected to stay with that larger previous value"), and a counter
can wrap or reset (a GPU timestamp after a reset). Either way that interval is skipped for
that client and engine: the new values become the baseline and the next interval counts
from them. A ratio is therefore never negative, and never above 1 after the clamp.

What is ignored, never raised: a process that exited between two reads (its client just
disappears), an fd closed between listdir and open, fdinfo files without drm keys,
unreadable files (permission). When nothing can be measured, `GpuUsage.reason` says why
(no encode, encodes on the CPU, no render node, a driver without usage stats, the first
sample of a client): the status page shows it, and the metric families are declared with no
sample. Nothing is logged: scrapes would repeat it.

Sampling happens at scrape time (no thread): each read of the metrics (Prometheus' scrape,
the node_exporter textfile the service loop writes, the status page) reads the fdinfo of the
current encoder pids and reports the ratio over the interval since the previous read. A
background thread would give a fixed window, but would wake up and read /proc whether or not
anyone looks, and needs a lifecycle; at scrape time the cost is paid only when someone asks
(bench/bench_gpu_usage.py: about 1.4 ms median for 4 encoders x 10 fds with xe's fdinfo text,
on 2 CPUs; the 5 ms target), and with no encode running nothing is read at all. Reads closer
together than `min_interval` (1 s) for the same pids get the previous result, so the status
page refreshing next to Prometheus never yields a ratio over a few milliseconds (a driver may
update its counters only at context switches or periodically: a tiny window is noise). The
ratio is a gauge over the window since the previous read by any of the three readers, so at
most Prometheus' scrape interval, and shorter while someone has the status page open.

Stdlib only (Debian 12's python3): this module runs inside the containers.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

# engine classes: each driver's names -> one vocabulary (i915's names are kept as they are)
ENGINE_NAMES = {"rcs": "render", "bcs": "copy", "vcs": "video", "vecs": "video-enhance", "ccs": "compute"}
# the engines exported as metrics (an encode uses video and video-enhance; render for some filters)
EXPORTED_ENGINES = ("video", "video-enhance", "render")
GPU_ENCODERS = ("hevc_qsv",)  # ffargs' encoders that run on the GPU (the others use the CPU)
_UNITS = {"": 1, "B": 1, "KiB": 1024, "MiB": 1024 ** 2, "GiB": 1024 ** 3}
MIN_INTERVAL = 1.0  # seconds: closer reads get the previous result


@dataclass
class Fdinfo:
    """The DRM keys of one fdinfo file (one open DRM file, one client)."""
    driver: str
    pdev: str = ""
    client_id: str = ""
    busy_ns: dict[str, int] = field(default_factory=dict)  # drm-engine-<class>, class named as i915
    cycles: dict[str, int] = field(default_factory=dict)  # drm-cycles-<class>
    total_cycles: dict[str, int] = field(default_factory=dict)  # drm-total-cycles-<class>
    capacity: dict[str, int] = field(default_factory=dict)  # drm-engine-capacity-<class> (absent = 1)
    resident: dict[str, int] = field(default_factory=dict)  # region -> bytes (drm-resident-<region>)
    total: dict[str, int] = field(default_factory=dict)  # region -> bytes (drm-total-<region>)

    def engines(self) -> set[str]:
        return set(self.busy_ns) | (set(self.cycles) & set(self.total_cycles))

    def resident_bytes(self) -> int:
        return sum(self.resident.values())


def engine_name(key: str) -> str:
    return ENGINE_NAMES.get(key, key)


def _uint(value: str) -> int | None:
    """'<uint> [unit]' -> the number in base units (bytes for memory); None when it is not one."""
    parts = value.split()
    if not parts or not parts[0].isdecimal() or len(parts) > 2:
        return None
    if len(parts) == 1 or parts[1] == "ns":
        return int(parts[0])
    scale = _UNITS.get(parts[1])
    return int(parts[0]) * scale if scale else None


def parse_fdinfo(text: str) -> Fdinfo | None:
    """One fdinfo file's text -> its DRM record; None for a file that is not a DRM client's
    (no drm-driver key: a pipe, a regular file, a socket ...). Unknown drm- keys are skipped."""
    if "drm-driver" not in text:
        return None
    rec: Fdinfo | None = None
    fields: list[tuple[str, str]] = []
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep or not key.startswith("drm-"):
            continue
        key, value = key.strip(), value.strip()
        if key == "drm-driver":
            rec = Fdinfo(driver=value)
        else:
            fields.append((key, value))
    if rec is None or not rec.driver:
        return None
    for key, value in fields:
        if key == "drm-pdev":
            rec.pdev = value
            continue
        if key == "drm-client-id":
            rec.client_id = value
            continue
        n = _uint(value)
        if n is None:
            continue
        # the longer prefixes first: drm-engine-capacity- before drm-engine-, drm-total-cycles- before drm-total-
        if key.startswith("drm-engine-capacity-"):
            if n > 0:  # "zero capacity is not allowed"
                rec.capacity[engine_name(key[20:])] = n
        elif key.startswith("drm-engine-"):
            if value.split()[-1] == "ns":
                rec.busy_ns[engine_name(key[11:])] = n
        elif key.startswith("drm-total-cycles-"):
            rec.total_cycles[engine_name(key[17:])] = n
        elif key.startswith("drm-cycles-"):
            rec.cycles[engine_name(key[11:])] = n
        elif key.startswith("drm-resident-"):
            rec.resident[key[13:]] = n
        elif key.startswith("drm-total-"):
            rec.total[key[10:]] = n
    if not rec.resident:  # the deprecated alias (amdgpu)
        for key, value in fields:
            if key.startswith("drm-memory-") and (n := _uint(value)) is not None:
                rec.resident[key[11:]] = n
    return rec


@dataclass
class _Seen:
    """A client as read at one sample: its record and when it was read (monotonic ns)."""
    info: Fdinfo
    at_ns: int


@dataclass
class GpuUsage:
    """What one sample says: busy ratio per engine (only engines measured over an interval),
    resident bytes of the encoder clients, the clients seen, and why nothing is measured."""
    engines: dict[str, float] = field(default_factory=dict)
    memory_bytes: int | None = None
    clients: int = 0
    drivers: list[str] = field(default_factory=list)  # "i915 0000:03:00.0"
    reason: str = ""
    sampled_at: float = 0.0  # time.time() of the sample
    pids: list[int] = field(default_factory=list)  # the encoder processes read

    def to_json(self) -> dict:
        return {"engines": dict(self.engines), "memory_bytes": self.memory_bytes, "clients": self.clients,
                "drivers": list(self.drivers), "reason": self.reason, "sampled_at": self.sampled_at,
                "pids": list(self.pids)}


def read_text(path: str) -> str | None:
    """A small /proc file's text; None when it is gone or unreadable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        chunks = []
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    except OSError:
        return None
    finally:
        os.close(fd)
    return b"".join(chunks).decode("utf-8", "replace")


def read_clients(pids: Iterable[int], proc_root: str = "/proc",
                 clock: Callable[[], int] = time.monotonic_ns) -> tuple[dict[tuple[str, str], _Seen], list[str]]:
    """The DRM clients that the fds of `pids` show, one per (pdev, client id), and problems met
    (unreadable fdinfo directories). A pid that is gone, an fd closed meanwhile: skipped."""
    clients: dict[tuple[str, str], _Seen] = {}
    problems: list[str] = []
    for pid in pids:
        base = f"{proc_root}/{pid}/fdinfo"
        try:
            fds = os.listdir(base)
        except FileNotFoundError:
            continue  # exited: its clients just disappear
        except OSError as exc:
            problems.append(f"cannot read {base}: {exc.strerror}")
            continue
        for fd in fds:
            text = read_text(f"{base}/{fd}")
            if text is None:
                continue
            info = parse_fdinfo(text)
            if info is None:
                continue
            # without drm-client-id the fd itself is the best key there is (a dup would count twice)
            key = (info.pdev, info.client_id or f"pid {pid} fd {fd}")
            if key not in clients:
                clients[key] = _Seen(info, clock())
    return clients, problems


def client_ratios(before: _Seen, after: _Seen) -> dict[str, float]:
    """Busy ratio per engine class of one client between two reads, for the engines whose
    counters moved forward (a counter that went down or a time that did not advance: skipped)."""
    a, b = before.info, after.info
    out: dict[str, float] = {}
    for engine in a.engines() & b.engines():
        capacity = b.capacity.get(engine, 1)
        if engine in a.cycles and engine in b.cycles and engine in a.total_cycles and engine in b.total_cycles:
            busy = b.cycles[engine] - a.cycles[engine]
            span = b.total_cycles[engine] - a.total_cycles[engine]
        elif engine in a.busy_ns and engine in b.busy_ns:
            busy = b.busy_ns[engine] - a.busy_ns[engine]
            span = after.at_ns - before.at_ns
        else:
            continue
        if busy < 0 or span <= 0:
            continue  # wrapped, reset, or lower for a while: this interval does not count
        out[engine] = min(1.0, busy / span / capacity)
    return out


class GpuSampler:
    """Samples the encoder pids' DRM clients at each call of `sample` (thread-safe).

    `encoder` (config's) only words the reason when no client is found; `proc_root` and
    `dev_dir` are /proc and /dev/dri, or a fake tree in tests.
    """

    def __init__(self, encoder: str = "", proc_root: str = "/proc", dev_dir: str = "/dev/dri",
                 min_interval: float = MIN_INTERVAL, clock: Callable[[], int] = time.monotonic_ns):
        self.encoder, self.proc_root, self.dev_dir = encoder, proc_root, dev_dir
        self.min_interval_ns = int(min_interval * 1e9)
        self.clock = clock
        self._lock = threading.Lock()
        self._previous: dict[tuple[str, str], _Seen] = {}
        self._last: GpuUsage | None = None
        self._last_ns = 0
        self._last_pids: tuple[int, ...] = ()

    def last(self) -> GpuUsage | None:
        return self._last

    def sample(self, pids: Iterable[int]) -> GpuUsage:
        pids = tuple(sorted(set(pids)))
        with self._lock:
            now = self.clock()
            if self._last is not None and pids == self._last_pids and now - self._last_ns < self.min_interval_ns:
                return self._last
            usage = self._sample(pids)
            self._last, self._last_ns, self._last_pids = usage, now, pids
            return usage

    def _sample(self, pids: tuple[int, ...]) -> GpuUsage:
        usage = GpuUsage(sampled_at=time.time(), pids=list(pids))
        if not pids:
            self._previous = {}
            usage.reason = "no encode is running"
            return usage
        clients, problems = read_clients(pids, self.proc_root, self.clock)
        previous, self._previous = self._previous, clients
        if not clients:
            usage.reason = self.no_client_reason(problems)
            return usage
        usage.clients = len(clients)
        usage.drivers = sorted({f"{s.info.driver} {s.info.pdev}".strip() for s in clients.values()})
        if any(s.info.resident for s in clients.values()):
            usage.memory_bytes = sum(s.info.resident_bytes() for s in clients.values())
        if not any(s.info.engines() for s in clients.values()):
            usage.reason = (f"the {', '.join(sorted({s.info.driver for s in clients.values()}))} driver prints no "
                            "engine usage in fdinfo (no drm-engine-* or drm-cycles-* keys): this kernel does not "
                            "export it, or the GPU is an SR-IOV virtual function")
            return usage
        totals: dict[str, float] = {}
        known = [key for key in clients if key in previous]
        for key in known:
            for engine, ratio in client_ratios(previous[key], clients[key]).items():
                totals[engine] = totals.get(engine, 0.0) + ratio
        if not totals:
            usage.reason = ("the GPU counters went down since the last sample (wrapped or reset): this interval is "
                            "skipped" if known else
                            "first sample of these encoders' GPU clients: the busy ratio comes with the next one")
            return usage
        usage.engines = {engine: min(1.0, totals[engine]) for engine in sorted(totals, key=_engine_order)}
        return usage

    def no_client_reason(self, problems: list[str]) -> str:
        if problems:
            return "; ".join(problems)
        if self.encoder and self.encoder not in GPU_ENCODERS:
            return f"encodes run on the CPU (encoder {self.encoder}): no GPU engine to measure"
        try:
            nodes = [n for n in os.listdir(self.dev_dir) if n.startswith("renderD")]
        except OSError:
            nodes = []
        if not nodes:
            return f"no GPU: no render node in {self.dev_dir}"
        return "the encoder processes have no DRM file open (not using the GPU yet, or its driver prints no drm-driver)"


def _engine_order(engine: str) -> tuple[int, str]:
    return (EXPORTED_ENGINES.index(engine) if engine in EXPORTED_ENGINES else len(EXPORTED_ENGINES), engine)
