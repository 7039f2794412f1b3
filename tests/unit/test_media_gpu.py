"""qsv_device "" (auto): the first render node driven by i915/xe, else renderD128 (fake /dev and /sys)."""

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
    got = gpu.auto_qsv_device(dev, sys_)
    if expected == "renderD128" and not any(d in gpu.QSV_DRIVERS for d in drivers.values()):
        assert got == ffargs.DEFAULT_QSV_DEVICE == "/dev/dri/renderD128"
    else:
        assert got == os.path.join(dev, expected)


def test_no_dri_directory_falls_back(tmp_path):
    assert gpu.auto_qsv_device(str(tmp_path / "none"), str(tmp_path / "none")) == "/dev/dri/renderD128"


def test_resolve_only_touches_auto_qsv(tmp_path):
    dev, sys_ = machine(tmp_path, {"renderD128": "amdgpu", "renderD129": "xe"})
    auto = ffargs.EncodeOptions(encoder="hevc_qsv", preset="slow", qsv_device="")
    opts, note = gpu.resolve(auto, dev, sys_)
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
