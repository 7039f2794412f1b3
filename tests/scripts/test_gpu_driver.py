"""The GPU's kernel driver (i915 or xe) and its stable PCI name, in ct-bootstrap-transcoder.sh
(--gpu-only) and verify-gpu.sh, over fake /dev/dri + /sys/class/drm trees and a fake dpkg-query.

Facts these rules rest on: Debian 12 has intel-media-va-driver(-non-free) 23.1.1 and libva2
2.17.0, and bookworm-backports has neither package; xe needs intel-media-driver >= 24.2.1 and
libva >= 2.21.0."""

from __future__ import annotations

import os

import pytest

from .conftest import run

IGPU, ARC, ARC2 = "0000:00:02.0", "0000:03:00.0", "0000:04:00.0"
IDS = {IGPU: "0xa780", ARC: "0x56a0", ARC2: "0xe20b"}
OLD_STACK = {"intel-media-va-driver-non-free": "23.1.1+ds1-1", "libva2": "2.17.0-1"}  # Debian 12
XE_STACK = {"intel-media-va-driver-non-free": "25.2.3+ds1-1", "libva2": "2.22.0-3"}  # Debian 13


def attach(hw, render: int, addr: str, driver: str, by_path: bool = True) -> None:
    """Render node `render` is the GPU at PCI `addr` bound to `driver` (again: a reboot may swap them)."""
    node = hw.dev / f"dri/renderD{render}"
    if not node.exists():
        hw.char(f"dri/renderD{render}", 226, render)
    pci = hw.sys / "devices/pci0000:00" / addr
    pci.mkdir(parents=True, exist_ok=True)
    (pci / "vendor").write_text("0x8086\n")
    (pci / "device").write_text(IDS[addr] + "\n")
    if os.path.lexists(pci / "driver"):
        os.remove(pci / "driver")
    os.symlink(f"../../../bus/pci/drivers/{driver}", pci / "driver")
    drm = hw.sys / "class/drm" / f"renderD{render}"
    drm.mkdir(parents=True, exist_ok=True)
    if os.path.lexists(drm / "device"):
        os.remove(drm / "device")
    os.symlink(f"../../../devices/pci0000:00/{addr}", drm / "device")
    link = hw.dev / "dri/by-path" / f"pci-{addr}-render"
    link.parent.mkdir(exist_ok=True)
    if os.path.lexists(link):
        os.remove(link)
    if by_path:
        os.symlink(f"../renderD{render}", link)


def tools(tmp_path, packages: dict[str, str], encode_ok: bool = True) -> dict:
    """PATH with a dpkg-query that knows `packages`, and a vainfo/ffmpeg that log their calls."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    calls = tmp_path / "calls.log"
    cases = "".join(f'  {p}) echo "installed {v}"; exit 0 ;;\n' for p, v in packages.items())
    (bindir / "dpkg-query").write_text(
        "#!/bin/sh\n"
        'for a; do pkg=$a; done\n'  # the package is the last argument
        f'case $pkg in\n{cases}esac\n'
        'echo "dpkg-query: no packages found matching $pkg" >&2; exit 1\n'
    )
    (bindir / "vainfo").write_text(
        f'#!/bin/sh\necho "vainfo $*" >>{calls}\n'
        'echo "vainfo: Driver version: Intel iHD driver for Intel(R) Gen Graphics - 23.1.1 ()"\n'
        "printf '      VAProfileHEVCMain               :\\tVAEntrypointEncSliceLP\\n'\n"
    )
    (bindir / "ffmpeg").write_text(
        "#!/bin/sh\n"
        'case "$*" in *-encoders*) printf " V..... hevc_qsv  HEVC (QSV)\\n"; exit 0;; esac\n'
        f'echo "ffmpeg $*" >>{calls}\n'
        + ("exit 0\n" if encode_ok else 'echo "Error creating a MFX session: -9." >&2; exit 1\n')
    )
    for f in bindir.iterdir():
        f.chmod(0o755)
    return {"PATH": f"{bindir}:/usr/bin:/bin:/usr/sbin:/sbin"}


def calls(tmp_path) -> str:
    log = tmp_path / "calls.log"
    return log.read_text() if log.exists() else ""


def bootstrap_gpu(hw, tmp_path, packages, *args):
    return run("ct-bootstrap-transcoder.sh", "--gpu-only", *args, env={**hw.env, **tools(tmp_path, packages)})


def verify(hw, tmp_path, packages, *args, encode_ok=True):
    return run("verify-gpu.sh", "--user", "root", *args, env={**hw.env, **tools(tmp_path, packages, encode_ok)})


# --- ct-bootstrap-transcoder.sh: the decision ---------------------------------------------------


def test_bootstrap_refuses_an_arc_on_xe_with_debian12s_stack_and_says_why(hw, tmp_path):
    attach(hw, 128, ARC, "xe")
    r = bootstrap_gpu(hw, tmp_path, OLD_STACK)
    assert r.rc == 0, r.err  # the GPU is refused; libx265 still works, and verify-gpu.sh reports it
    g = r.json["gpu"]
    assert (g["render_node"], g["kernel_driver"], g["pci_address"], g["usable"]) == (
        str(hw.dev / "dri/renderD128"), "xe", ARC, False)
    for part in ("xe kernel driver needs intel-media-driver >= 24.2.1 and libva >= 2.21.0",
                 "intel-media-va-driver-non-free 23.1.1+ds1-1", "libva2 2.17.0-1",
                 "bookworm-backports have nothing newer", "i915.force_probe=56a0 xe.force_probe=!56a0"):
        assert part in g["reason"], g["reason"]
    assert f"GPU refused: {hw.dev}/dri/renderD128" in r.err


def test_bootstrap_auto_takes_the_i915_gpu_over_an_xe_one(hw, tmp_path):
    attach(hw, 128, ARC, "xe")
    attach(hw, 129, IGPU, "i915")
    g = bootstrap_gpu(hw, tmp_path, OLD_STACK).json["gpu"]
    assert (g["render_node"], g["kernel_driver"], g["pci_address"], g["usable"], g["reason"]) == (
        str(hw.dev / "dri/renderD129"), "i915", IGPU, True, None)
    assert "renderD128 is on xe" in g["choice"]


def test_bootstrap_accepts_xe_when_the_stack_drives_it(hw, tmp_path):
    attach(hw, 128, ARC, "xe")
    attach(hw, 129, IGPU, "i915")
    g = bootstrap_gpu(hw, tmp_path, XE_STACK).json["gpu"]
    assert (g["render_node"], g["kernel_driver"], g["usable"]) == (str(hw.dev / "dri/renderD128"), "xe", True)


def test_bootstrap_refuses_a_chosen_xe_gpu_even_with_an_i915_one_there(hw, tmp_path):
    attach(hw, 128, IGPU, "i915")
    attach(hw, 129, ARC, "xe")
    r = bootstrap_gpu(hw, tmp_path, OLD_STACK, "--render-node", f"/dev/dri/by-path/pci-{ARC}-render")
    g = r.json["gpu"]
    assert (g["render_node"], g["kernel_driver"], g["usable"]) == (str(hw.dev / "dri/renderD129"), "xe", False)
    assert "intel-media-driver >= 24.2.1" in g["reason"]


def test_bootstrap_without_a_gpu_has_nothing_to_refuse(hw, tmp_path):
    g = bootstrap_gpu(hw, tmp_path, OLD_STACK).json["gpu"]
    assert g == {"render_node": None, "kernel_driver": None, "pci_address": None, "choice": None,
                 "usable": None, "reason": "no render node in " + str(hw.dev / "dri")}


# --- verify-gpu.sh: the proof names the kernel driver -------------------------------------------


def test_proof_of_an_xe_gpu_on_debian12_fails_with_the_reason_not_a_vainfo_error(hw, tmp_path):
    attach(hw, 128, ARC, "xe")
    r = verify(hw, tmp_path, OLD_STACK)
    assert r.rc == 0, r.err
    j = r.json
    assert j["ok"] is False and j["kernel_driver"] == "xe" and j["pci_address"] == ARC
    assert j["encode"].startswith("failed: ") and "xe" in j["encode"]
    assert "intel-media-driver >= 24.2.1" in j["reason"] and "i915.force_probe=56a0" in j["reason"]
    assert calls(tmp_path) == ""  # neither vainfo nor the encode ran: their errors would only confuse
    assert j["driver"] is None and j["qsv_encoders"] == ["hevc_qsv"]


def test_proof_names_the_i915_driver_and_auto_skips_xe(hw, tmp_path):
    attach(hw, 128, ARC, "xe")
    attach(hw, 129, IGPU, "i915")
    j = verify(hw, tmp_path, OLD_STACK).json
    assert j["ok"] is True and j["render_node"] == str(hw.dev / "dri/renderD129")
    assert j["kernel_driver"] == "i915" and j["driver"].startswith("Intel iHD driver")
    assert "renderD128 is on xe" in j["choice"]
    assert "qsv=hw:" + str(hw.dev / "dri/renderD129") in calls(tmp_path)


def test_proof_of_xe_on_a_stack_that_drives_it_runs_the_encode(hw, tmp_path):
    attach(hw, 128, ARC, "xe")
    j = verify(hw, tmp_path, XE_STACK).json
    assert j["ok"] is True and j["kernel_driver"] == "xe" and j["encode"] == "ok"


def test_proof_without_sysfs_says_the_driver_is_unknown(hw, tmp_path):
    hw.gpu(0, 128)
    j = verify(hw, tmp_path, OLD_STACK, encode_ok=False).json
    assert j["kernel_driver"] == "unknown" and j["pci_address"] is None
    assert "MFX session" in j["encode"]  # an unknown driver is tried, not refused


# --- the stable name across a reboot that swaps the minors (issue item 4b) -----------------------


@pytest.mark.parametrize("by_path", [True, False], ids=["by-path link", "sysfs only"])
def test_render_node_by_path_follows_the_gpu_when_minors_swap(hw, tmp_path, by_path):
    name = f"/dev/dri/by-path/pci-{ARC}-render"
    attach(hw, 128, IGPU, "i915", by_path)
    attach(hw, 129, ARC, "i915", by_path)
    first = verify(hw, tmp_path, OLD_STACK, "--render-node", name).json
    assert first["ok"] is True and first["render_node"] == str(hw.dev / "dri/renderD129")
    assert first["pci_address"] == ARC and name in first["choice"]
    attach(hw, 128, ARC, "i915", by_path)  # next boot: the Arc probed first
    attach(hw, 129, IGPU, "i915", by_path)
    second = verify(hw, tmp_path, OLD_STACK, "--render-node", name).json
    assert second["ok"] is True and second["render_node"] == str(hw.dev / "dri/renderD128")
    assert second["pci_address"] == ARC
    encodes = [l for l in calls(tmp_path).splitlines() if l.startswith("ffmpeg")]
    assert "renderD129" in encodes[0] and "renderD128" in encodes[1]


def test_render_node_by_path_of_no_gpu_here_fails_naming_the_gpus_there_are(hw, tmp_path):
    attach(hw, 128, IGPU, "i915")
    r = verify(hw, tmp_path, OLD_STACK, "--render-node", f"/dev/dri/by-path/pci-{ARC2}-render")
    j = r.json
    assert j["ok"] is False and j["render_node"] is None
    assert j["encode"] == f"failed: no render node is PCI device {ARC2}"
    assert f"renderD128 = /dev/dri/by-path/pci-{IGPU}-render (i915)" in j["reason"]
    assert "homelab-media:encoding.qsvDevice" in j["reason"]
    assert calls(tmp_path) == ""


def test_render_node_plain_minor_still_works(hw, tmp_path):
    attach(hw, 128, IGPU, "i915")
    attach(hw, 129, ARC, "i915")
    j = verify(hw, tmp_path, OLD_STACK, "--render-node", str(hw.dev / "dri/renderD129")).json
    assert j["ok"] is True and j["render_node"] == str(hw.dev / "dri/renderD129") and j["pci_address"] == ARC


def test_bootstrap_does_not_judge_a_gpu_that_is_not_intel(hw, tmp_path):
    hw.gpu(0, 128)  # no sysfs: the kernel driver is unknown
    g = bootstrap_gpu(hw, tmp_path, OLD_STACK).json["gpu"]
    assert (g["render_node"], g["kernel_driver"], g["usable"], g["reason"]) == (
        str(hw.dev / "dri/renderD128"), "unknown", None, None)
