"""Which render node hevc_qsv uses, resolved at every job start. The only I/O about GPUs.

qsv_device is one of:
- "" (auto): the first /dev/dri/renderD* (in numeric order) whose kernel driver, the target of
  /sys/class/drm/renderDN/device/driver, is i915 or xe (Intel: the ones Quick Sync runs on).
  An xe node comes after every i915 node when this container's VA stack cannot drive xe
  (xe_stack_problem): it is chosen only when there is no i915 node, and the note says why it
  will fail. No Intel node: /dev/dri/renderD128. Deterministic: the same devices give the same
  answer. With an iGPU and an Arc card both on i915, the lower-numbered node wins (usually the
  iGPU): set qsv_device (ct-install-pipeline.sh --qsv-device) to pick the card.
- /dev/dri/by-path/pci-<domain:bus:device.function>-render: one GPU by its PCI address, stable
  across reboots. Resolved now to today's renderDN: udev's by-path link when /dev/dri has it
  (the container's /dev/dri is a bind mount of the node's), else the render node whose
  /sys/class/drm/renderDN/device is that PCI device.
- /dev/dri/renderDN: used as it is (its number can change when the node probes GPUs in another
  order).
ffargs stays pure: the device is resolved here and passed in.
"""

from __future__ import annotations

import dataclasses
import os
import re

from . import ffargs

QSV_DRIVERS = ("i915", "xe")
_RENDER = re.compile(r"renderD(\d+)")
# udev's stable name of a GPU's render node: its PCI address (domain:bus:device.function)
BY_PATH = re.compile(r"/dev/dri/by-path/pci-([0-9a-f]{4,}:[0-9a-f]{2}:[01][0-9a-f]\.[0-7])-render")
DPKG_STATUS = "/var/lib/dpkg/status"
# The first releases that drive the xe kernel driver: intel-media-driver builds its Xe KMD
# support by default from 24.2.1 (intel/media-driver 0f46bd6); libva maps xe to iHD from 2.21.0
# (intel/libva 0931342). Debian 12 has 23.1.1 and 2.17.0, and bookworm-backports neither package.
XE_MIN_MEDIA_DRIVER = (24, 2, 1)
XE_MIN_LIBVA = (2, 21, 0)
_VA_DRIVER_PACKAGES = ("intel-media-va-driver-non-free", "intel-media-va-driver")


class DeviceError(Exception):
    """qsv_device names no render node here; the message lists the ones there are."""


def render_nodes(dev_dir: str = "/dev/dri") -> list[str]:
    """The render nodes present, renderD128 before renderD129 before renderD1000."""
    try:
        names = os.listdir(dev_dir)
    except OSError:
        return []
    found = [(int(m.group(1)), name) for name in names if (m := _RENDER.fullmatch(name))]
    return [os.path.join(dev_dir, name) for _, name in sorted(found)]


def driver_of(node: str, sys_dir: str = "/sys/class/drm") -> str | None:
    """The kernel driver bound to a render node ("i915", "xe", "amdgpu", ...), None if unknown."""
    try:
        return os.path.basename(os.readlink(os.path.join(sys_dir, os.path.basename(node), "device", "driver")))
    except OSError:
        return None


def pci_address(node: str, sys_dir: str = "/sys/class/drm") -> str | None:
    """The PCI address of a render node's GPU ("0000:03:00.0"), None if sysfs does not say."""
    try:
        # sysfs: class/drm/renderD128/device -> ../../../0000:03:00.0
        addr = os.path.basename(os.readlink(os.path.join(sys_dir, os.path.basename(node), "device")))
    except OSError:
        return None
    return addr if BY_PATH.fullmatch(f"/dev/dri/by-path/pci-{addr}-render") else None


def _installed_versions(status_file: str, packages: tuple[str, ...]) -> dict[str, str]:
    """Version of each of `packages` that dpkg lists as installed. Raises OSError."""
    found: dict[str, str] = {}
    with open(status_file, encoding="utf-8", errors="replace") as f:
        for stanza in f.read().split("\n\n"):
            fields = dict(re.findall(r"^(Package|Status|Version): *(.*)$", stanza, re.M))
            if fields.get("Package") in packages and fields.get("Status", "").endswith(" installed"):
                found.setdefault(fields["Package"], fields.get("Version", ""))
    return found


def _upstream(version: str) -> tuple[int, ...]:
    """The numeric upstream part of a Debian version: "1:24.2.1+dfsg1-1~bpo12+1" -> (24, 2, 1)."""
    m = re.match(r"^(?:\d+:)?(\d+(?:\.\d+)*)", version)
    return tuple(int(x) for x in m.group(1).split(".")) if m else ()


def _dotted(v: tuple[int, ...]) -> str:
    return ".".join(map(str, v))


def xe_stack_problem(status_file: str = DPKG_STATUS) -> str | None:
    """Why this container's VA stack cannot drive an xe render node; None when it can."""
    try:
        have = _installed_versions(status_file, (*_VA_DRIVER_PACKAGES, "libva2"))
    except OSError as exc:
        return f"cannot read {status_file} to check the VA stack for xe ({exc.strerror})"
    media = next((have[p] for p in _VA_DRIVER_PACKAGES if p in have), None)
    libva = have.get("libva2")
    if media and libva and _upstream(media) >= XE_MIN_MEDIA_DRIVER and _upstream(libva) >= XE_MIN_LIBVA:
        return None
    return (
        f"the xe kernel driver needs intel-media-driver >= {_dotted(XE_MIN_MEDIA_DRIVER)} and libva >= "
        f"{_dotted(XE_MIN_LIBVA)}; this container has intel-media-va-driver-non-free {media or 'not installed'} "
        f"and libva2 {libva or 'not installed'}"
    )


def _xe_fix(node: str, sys_dir: str) -> str:
    """What to do about a GPU on xe that this stack cannot drive (the same advice as verify-gpu.sh)."""
    try:
        with open(os.path.join(sys_dir, os.path.basename(node), "device", "device")) as f:
            dev_id = f.read().strip().removeprefix("0x")
    except OSError:
        dev_id = "<device id>"
    return (f"bind it to i915 on the node (kernel parameters i915.force_probe={dev_id} xe.force_probe=!{dev_id}, "
            "then reboot the node), or use a Debian 13 container")


def _stable_name(node: str, sys_dir: str) -> str:
    addr = pci_address(node, sys_dir)
    return f"/dev/dri/by-path/pci-{addr}-render" if addr else "no PCI address in sysfs"


def resolve_device(spec: str, dev_dir: str = "/dev/dri", sys_dir: str = "/sys/class/drm") -> str:
    """Today's render node for qsv_device `spec` (see the module doc). Raises DeviceError."""
    m = BY_PATH.fullmatch(spec)
    if not m:
        return spec
    addr = m.group(1)
    link = os.path.join(dev_dir, "by-path", os.path.basename(spec))
    if os.path.islink(link):
        target = os.path.basename(os.readlink(link))
        if _RENDER.fullmatch(target) and os.path.exists(os.path.join(dev_dir, target)):
            return os.path.join(dev_dir, target)
    for node in render_nodes(dev_dir):
        if pci_address(node, sys_dir) == addr:
            return node
    here = "; ".join(
        f"{os.path.basename(n)} = {_stable_name(n, sys_dir)} ({driver_of(n, sys_dir) or 'no driver'})"
        for n in render_nodes(dev_dir)
    )
    raise DeviceError(
        f"qsv_device {spec}: no render node here is PCI device {addr} (render nodes: {here or 'none'}); "
        "set qsv_device (the stack's encoding.qsvDevice) to one of those by-path names, or \"\" for auto"
    )


def choose(dev_dir: str = "/dev/dri", sys_dir: str = "/sys/class/drm",
           dpkg_status: str = DPKG_STATUS) -> tuple[str, str]:
    """The auto choice and why (see the module doc)."""
    intel = [(n, d) for n in render_nodes(dev_dir) if (d := driver_of(n, sys_dir)) in QSV_DRIVERS]
    if not intel:
        return ffargs.DEFAULT_QSV_DEVICE, "no i915/xe render node found; the default"
    xe_problem = xe_stack_problem(dpkg_status) if any(d == "xe" for _, d in intel) else None
    if xe_problem is None:
        node, driver = intel[0]
        return node, f"driver {driver}"
    first_i915 = next((i for i, (_, d) in enumerate(intel) if d == "i915"), None)
    if first_i915 is not None:
        skipped = ", ".join(os.path.basename(n) for n, _ in intel[:first_i915])  # xe nodes numbered lower
        why = "driver i915" + (f"; {skipped} is on xe, skipped: {xe_problem}" if skipped else "")
        return intel[first_i915][0], why
    node = intel[0][0]
    return node, f"driver xe (no i915 node), which cannot work here: {xe_problem}; {_xe_fix(node, sys_dir)}"


def auto_qsv_device(dev_dir: str = "/dev/dri", sys_dir: str = "/sys/class/drm",
                    dpkg_status: str = DPKG_STATUS) -> str:
    return choose(dev_dir, sys_dir, dpkg_status)[0]


def resolve(opts: ffargs.EncodeOptions, dev_dir: str = "/dev/dri", sys_dir: str = "/sys/class/drm",
            dpkg_status: str = DPKG_STATUS) -> tuple[ffargs.EncodeOptions, str | None]:
    """opts with today's render node in qsv_device, and a note on how it was chosen (None when
    qsv_device was a plain renderDN on a usable driver). Raises DeviceError."""
    if opts.encoder != "hevc_qsv":
        return opts, None
    if not opts.qsv_device:
        node, how = choose(dev_dir, sys_dir, dpkg_status)
        return dataclasses.replace(opts, qsv_device=node), f"hevc_qsv on {node} (qsv_device auto: {how})"
    node = resolve_device(opts.qsv_device, dev_dir, sys_dir)
    notes = []
    if node != opts.qsv_device:
        notes.append(f"hevc_qsv on {node} (qsv_device {opts.qsv_device}: PCI {BY_PATH.fullmatch(opts.qsv_device).group(1)} "
                     f"is {os.path.basename(node)} today)")
    if driver_of(node, sys_dir) == "xe" and (problem := xe_stack_problem(dpkg_status)):
        notes.append(f"warning: {node} is on the xe kernel driver and hevc_qsv will fail: {problem}; "
                     f"{_xe_fix(node, sys_dir)}")
    return dataclasses.replace(opts, qsv_device=node), "; ".join(notes) or None
