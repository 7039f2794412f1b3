"""qsv_device: auto (the first render node driven by i915/xe, xe last when the VA stack cannot drive it,
else renderD128), a stable /dev/dri/by-path name resolved at every job, or a plain renderDN (fake /dev and /sys)."""

import os

import pytest

from media_pipeline import config as cfgmod
from media_pipeline import ffargs, gpu


def machine(tmp_path, drivers):
    """drivers: {"renderD128": "amdgpu", ...}; None = a node with no sysfs driver link."""
    dev, sys_ = tmp_path / "dev_dri", tmp_path / "sys_drm"
    dev.mkdir()
    sys_.mkdir()
    (dev / "card0").touch()
    for name, driver in drivers.items():
        (dev / name).touch()
        node = sys_ / name / "device"
        node.mkdir(parents=True)
        if driver:
            os.symlink(f"../../../bus/pci/drivers/{driver}", node / "driver")
    return str(dev), str(sys_)


@pytest.mark.parametrize(
    "drivers, expected",
    [
        ({"renderD128": "i915"}, "renderD128"),
        ({"renderD128": "i915", "renderD129": "xe"}, "renderD128"),  # iGPU + Arc: the first one
        ({"renderD128": "amdgpu", "renderD129": "i915"}, "renderD129"),
        ({"renderD128": "nvidia", "renderD129": None, "renderD130": "xe"}, "renderD130"),
        ({"renderD1000": "i915", "renderD200": "xe"}, "renderD200"),  # numeric, not text, order
        ({"renderD128": "amdgpu", "renderD129": None}, "renderD128"),  # no Intel node: the default
        ({}, "renderD128"),
    ],
)
def test_auto_picks_the_first_intel_render_node(tmp_path, drivers, expected):
    dev, sys_ = machine(tmp_path, drivers)
    got = gpu.auto_qsv_device(dev, sys_, dpkg_status(tmp_path, XE_STACK))  # a stack that drives xe too
    if expected == "renderD128" and not any(d in gpu.QSV_DRIVERS for d in drivers.values()):
        assert got == ffargs.DEFAULT_QSV_DEVICE == "/dev/dri/renderD128"
    else:
        assert got == os.path.join(dev, expected)


def test_no_dri_directory_falls_back(tmp_path):
    assert gpu.auto_qsv_device(str(tmp_path / "none"), str(tmp_path / "none")) == "/dev/dri/renderD128"


def test_resolve_only_touches_auto_qsv(tmp_path):
    dev, sys_ = machine(tmp_path, {"renderD128": "amdgpu", "renderD129": "xe"})
    auto = ffargs.EncodeOptions(encoder="hevc_qsv", preset="slow", qsv_device="")
    opts, note = gpu.resolve(auto, dev, sys_, dpkg_status(tmp_path, XE_STACK))
    assert opts.qsv_device == os.path.join(dev, "renderD129") and "auto: driver xe" in note
    chosen = ffargs.EncodeOptions(encoder="hevc_qsv", preset="slow", qsv_device="/dev/dri/renderD130")
    assert gpu.resolve(chosen, dev, sys_) == (chosen, None)
    x265 = ffargs.EncodeOptions(qsv_device="")
    assert gpu.resolve(x265, dev, sys_) == (x265, None)
    _, note = gpu.resolve(auto, str(tmp_path / "none"), sys_)
    assert "no i915/xe render node" in note


def test_config_qsv_device_defaults_to_auto():
    assert cfgmod.Config().qsv_device == "" and cfgmod.from_dict({}).encode_options().qsv_device == ""
    assert cfgmod.from_dict({"qsv_device": ""}).qsv_device == ""
    assert cfgmod.from_dict({"qsv_device": "/dev/dri/renderD129"}).qsv_device == "/dev/dri/renderD129"
    with pytest.raises(cfgmod.ConfigError, match="qsv_device"):
        cfgmod.from_dict({"qsv_device": "renderD129"})


# --- the kernel driver (issue item 7) and stable PCI names (issue item 4b) ---------------------

OLD_STACK = {"intel-media-va-driver-non-free": "23.1.1+ds1-1", "libva2": "2.17.0-1"}  # Debian 12
XE_STACK = {"intel-media-va-driver-non-free": "25.2.3+ds1-1", "libva2": "2.22.0-3"}  # Debian 13


def dpkg_status(tmp_path, packages, name="status"):
    """A dpkg status file with these packages installed (and one removed package, which must not count)."""
    stanzas = [f"Package: {p}\nStatus: install ok installed\nArchitecture: amd64\nVersion: {v}\n"
               for p, v in packages.items()]
    stanzas.append("Package: intel-media-va-driver\nStatus: deinstall ok config-files\nVersion: 99.0.0-1\n")
    path = tmp_path / name
    path.write_text("\n".join(stanzas))
    return str(path)


class Box:
    """A fake /dev/dri and /sys/class/drm: render nodes on PCI devices, udev's by-path links.
    attach() (re)binds a render minor to a PCI device, as a reboot with another probe order does."""

    def __init__(self, tmp_path):
        self.dev = tmp_path / "dev_dri"
        self.sys = tmp_path / "sys" / "class" / "drm"
        self.pci = tmp_path / "sys" / "devices" / "pci0000:00"
        for d in (self.dev / "by-path", self.sys, self.pci):
            d.mkdir(parents=True)

    def attach(self, render, addr, driver, by_path=True):
        (self.dev / f"renderD{render}").touch()
        pci = self.pci / addr
        pci.mkdir(exist_ok=True)
        if os.path.lexists(pci / "driver"):
            os.remove(pci / "driver")
        os.symlink(f"../../../bus/pci/drivers/{driver}", pci / "driver")
        node = self.sys / f"renderD{render}"
        node.mkdir(exist_ok=True)
        if os.path.lexists(node / "device"):
            os.remove(node / "device")
        os.symlink(f"../../../devices/pci0000:00/{addr}", node / "device")  # sysfs: device -> ../../../<addr>
        link = self.dev / "by-path" / f"pci-{addr}-render"
        if os.path.lexists(link):
            os.remove(link)
        if by_path:
            os.symlink(f"../renderD{render}", link)


IGPU, ARC = "0000:00:02.0", "0000:03:00.0"
ARC_NAME = f"/dev/dri/by-path/pci-{ARC}-render"


@pytest.mark.parametrize("by_path", [True, False], ids=["by-path link", "sysfs only"])
def test_stable_name_follows_the_gpu_when_minors_swap(tmp_path, by_path):
    box = Box(tmp_path)
    box.attach(128, IGPU, "i915", by_path)
    box.attach(129, ARC, "i915", by_path)
    opts = ffargs.EncodeOptions(encoder="hevc_qsv", preset="slow", qsv_device=ARC_NAME)
    first, note = gpu.resolve(opts, str(box.dev), str(box.sys))  # both on i915: the VA stack does not matter
    assert first.qsv_device == str(box.dev / "renderD129")
    assert ARC_NAME in note and ARC in note and "renderD129" in note
    box.attach(128, ARC, "i915", by_path)  # the next boot probed the Arc first
    box.attach(129, IGPU, "i915", by_path)
    second, note = gpu.resolve(opts, str(box.dev), str(box.sys))
    assert second.qsv_device == str(box.dev / "renderD128") and "renderD128" in note
    assert gpu.resolve_device(ARC_NAME, str(box.dev), str(box.sys)) == str(box.dev / "renderD128")
    assert gpu.resolve_device(f"/dev/dri/by-path/pci-{IGPU}-render", str(box.dev), str(box.sys)) == str(box.dev / "renderD129")


def test_a_stable_name_of_no_gpu_here_is_an_error_naming_the_gpus_that_are(tmp_path):
    box = Box(tmp_path)
    box.attach(128, IGPU, "i915")
    with pytest.raises(gpu.DeviceError) as exc:
        gpu.resolve_device("/dev/dri/by-path/pci-0000:04:00.0-render", str(box.dev), str(box.sys))
    msg = str(exc.value)
    assert "/dev/dri/by-path/pci-0000:04:00.0-render" in msg and "no render node" in msg
    assert f"renderD128 = /dev/dri/by-path/pci-{IGPU}-render (i915)" in msg and "qsv_device" in msg


def test_a_plain_render_node_is_used_as_it_is(tmp_path):
    box = Box(tmp_path)
    box.attach(128, IGPU, "i915")
    assert gpu.resolve_device("/dev/dri/renderD129", str(box.dev), str(box.sys)) == "/dev/dri/renderD129"


def test_transcode_fails_the_job_clearly_when_the_stable_name_names_no_gpu(tmp_path):
    from media_pipeline import transcode as tc

    src = tmp_path / "in.mkv"
    src.write_bytes(b"x")
    opts = ffargs.EncodeOptions(encoder="hevc_qsv", preset="slow", qsv_device="/dev/dri/by-path/pci-00fe:fe:1f.7-render")
    with pytest.raises(tc.TranscodeError) as exc:
        tc.transcode(str(src), str(tmp_path / "out.mkv"), opts, ffprobe="/nonexistent/ffprobe")
    assert exc.value.code == tc.EXIT_USAGE and "pci-00fe:fe:1f.7-render" in exc.value.reason


@pytest.mark.parametrize(
    "nodes, stack, expected, why",
    [
        # the Arc on xe probed first, the iGPU on i915: Debian 12 cannot drive xe, so the iGPU
        ([(128, ARC, "xe"), (129, IGPU, "i915")], OLD_STACK, 129, "renderD128 is on xe"),
        # a stack that drives xe: the first Intel node again
        ([(128, ARC, "xe"), (129, IGPU, "i915")], XE_STACK, 128, "driver xe"),
        # only xe: chosen, and the note says it will not work and why
        ([(128, ARC, "xe")], OLD_STACK, 128, "intel-media-driver >= 24.2.1"),
        ([(128, IGPU, "i915"), (129, ARC, "xe")], OLD_STACK, 128, "driver i915"),
        ([(128, IGPU, "amdgpu"), (129, ARC, "xe"), (130, "0000:04:00.0", "i915")], OLD_STACK, 130, "renderD129 is on xe"),
    ],
)
def test_auto_skips_an_xe_node_the_stack_cannot_drive(tmp_path, nodes, stack, expected, why):
    box = Box(tmp_path)
    for render, addr, driver in nodes:
        box.attach(render, addr, driver)
    auto = ffargs.EncodeOptions(encoder="hevc_qsv", preset="slow", qsv_device="")
    opts, note = gpu.resolve(auto, str(box.dev), str(box.sys), dpkg_status(tmp_path, stack))
    assert opts.qsv_device == str(box.dev / f"renderD{expected}")
    assert why in note, note


def test_xe_stack_problem_reads_the_installed_versions(tmp_path):
    old = gpu.xe_stack_problem(dpkg_status(tmp_path, OLD_STACK))
    assert "intel-media-driver >= 24.2.1 and libva >= 2.21.0" in old
    assert "23.1.1+ds1-1" in old and "2.17.0-1" in old
    assert gpu.xe_stack_problem(dpkg_status(tmp_path, XE_STACK, "new")) is None
    # new libva alone is not enough; a removed package is not installed
    half = gpu.xe_stack_problem(dpkg_status(tmp_path, {**OLD_STACK, "libva2": "2.22.0-3"}, "half"))
    assert half and "23.1.1+ds1-1" in half
    backports = {"intel-media-va-driver-non-free": "24.2.1+dfsg1-1~bpo12+1", "libva2": "2.21.0-1~bpo12+1"}
    assert gpu.xe_stack_problem(dpkg_status(tmp_path, backports, "bpo")) is None
    assert "not installed" in gpu.xe_stack_problem(dpkg_status(tmp_path, {}, "none"))
    assert "cannot read" in gpu.xe_stack_problem(str(tmp_path / "missing"))


def test_an_explicit_xe_node_on_an_old_stack_gets_a_warning_note(tmp_path):
    box = Box(tmp_path)
    box.attach(129, ARC, "xe")
    opts = ffargs.EncodeOptions(encoder="hevc_qsv", preset="slow", qsv_device=ARC_NAME)
    got, note = gpu.resolve(opts, str(box.dev), str(box.sys), dpkg_status(tmp_path, OLD_STACK))
    assert got.qsv_device == str(box.dev / "renderD129")
    assert "xe" in note and "intel-media-driver >= 24.2.1" in note and "i915.force_probe" in note
