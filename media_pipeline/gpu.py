"""Which render node hevc_qsv uses when qsv_device is "" (auto). The only I/O about GPUs.

auto = the first /dev/dri/renderD* (in numeric order) whose kernel driver, the target of
/sys/class/drm/renderDN/device/driver, is i915 or xe (Intel: the ones Quick Sync runs on);
when none is, /dev/dri/renderD128. Deterministic: the same devices give the same answer.
With an iGPU and an Arc card both passed in, the lower-numbered node wins (usually the
iGPU): set qsv_device (ct-install-pipeline.sh --qsv-device) to pick the card.
ffargs stays pure: the device is resolved here and passed in.
"""

from __future__ import annotations

import dataclasses
import os
import re

from . import ffargs

QSV_DRIVERS = ("i915", "xe")
_RENDER = re.compile(r"^renderD(\d+)$")


def render_nodes(dev_dir: str = "/dev/dri") -> list[str]:
    """The render nodes present, renderD128 before renderD129 before renderD1000."""
    try:
        names = os.listdir(dev_dir)
    except OSError:
        return []
    found = [(int(m.group(1)), name) for name in names if (m := _RENDER.match(name))]
    return [os.path.join(dev_dir, name) for _, name in sorted(found)]


def driver_of(node: str, sys_dir: str = "/sys/class/drm") -> str | None:
    """The kernel driver bound to a render node ("i915", "xe", "amdgpu", ...), None if unknown."""
    try:
        return os.path.basename(os.readlink(os.path.join(sys_dir, os.path.basename(node), "device", "driver")))
    except OSError:
        return None


def auto_qsv_device(dev_dir: str = "/dev/dri", sys_dir: str = "/sys/class/drm") -> str:
    for node in render_nodes(dev_dir):
        if driver_of(node, sys_dir) in QSV_DRIVERS:
            return node
    return ffargs.DEFAULT_QSV_DEVICE


def resolve(opts: ffargs.EncodeOptions, dev_dir: str = "/dev/dri",
            sys_dir: str = "/sys/class/drm") -> tuple[ffargs.EncodeOptions, str | None]:
    """opts with an explicit qsv_device, and a note when "auto" chose it (None otherwise)."""
    if opts.encoder != "hevc_qsv" or opts.qsv_device:
        return opts, None
    node = auto_qsv_device(dev_dir, sys_dir)
    driver = driver_of(node, sys_dir)
    how = f"driver {driver}" if driver in QSV_DRIVERS else "no i915/xe render node found; the default"
    return dataclasses.replace(opts, qsv_device=node), f"hevc_qsv on {node} (qsv_device auto: {how})"
