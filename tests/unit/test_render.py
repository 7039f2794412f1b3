"""Pure rendering: raw lxc lines from discovery, script bundles, deterministic archives."""

import io
import subprocess
import tarfile
import gzip

import pytest

from components import render

ARC = {
    "gpu": {
        "nodes": [
            {"path": "/dev/dri/renderD129", "type": "render", "major": 226, "minor": 129},
            {"path": "/dev/dri/card1", "type": "card", "major": 226, "minor": 1},
            {"path": "/dev/dri/card0", "type": "card", "major": 226, "minor": 0},
            {"path": "/dev/dri/renderD128", "type": "render", "major": 226, "minor": 128},
        ]
    },
    "optical": {
        "sr": {"path": "/dev/sr0", "major": 11, "minor": 0},
        "sg": {"path": "/dev/sg3", "major": 21, "minor": 3},
    },
}


def test_gpu_lines_allow_every_discovered_node_and_bind_dri():
    assert render.gpu_lines(ARC) == [
        "lxc.cgroup2.devices.allow: c 226:0 rwm",
        "lxc.cgroup2.devices.allow: c 226:1 rwm",
        "lxc.cgroup2.devices.allow: c 226:128 rwm",
        "lxc.cgroup2.devices.allow: c 226:129 rwm",
        "lxc.mount.entry: /dev/dri dev/dri none bind,optional,create=dir",
    ]


def test_drive_lines_use_a_block_rule_for_sr_and_the_discovered_sg():
    lines = render.drive_lines(ARC)
    assert lines == [
        "lxc.cgroup2.devices.allow: b 11:0 rwm",
        "lxc.cgroup2.devices.allow: c 21:3 rwm",
        "lxc.mount.entry: /dev/sr0 dev/sr0 none bind,optional,create=file",
        "lxc.mount.entry: /dev/sg3 dev/sg3 none bind,optional,create=file",
    ]
    assert "c 11:0" not in "\n".join(lines)


def test_no_hardware_gives_no_lines():
    empty = {"gpu": {"nodes": []}, "optical": {"sr": None, "sg": None}}
    assert render.gpu_lines(empty) == [] and render.drive_lines(empty) == []
    assert render.gpu_lines({}) == [] and render.drive_lines({}) == []


def test_wrong_majors_are_refused():
    with pytest.raises(ValueError, match="not a DRI device"):
        render.gpu_lines({"gpu": {"nodes": [{"path": "/dev/dri/card0", "major": 10, "minor": 0}]}})
    with pytest.raises(ValueError, match="not an optical block device"):
        render.drive_lines({"optical": {"sr": {"path": "/dev/sr0", "major": 8, "minor": 0}}})


def test_parse_json_output_takes_the_last_json_line_or_reports():
    assert render.parse_json_output('noise\n{"ok": true}\n', "x") == {"ok": True}
    bad = render.parse_json_output("boom", "GPU verification")
    assert bad["ok"] is False and "GPU verification" in bad["reason"]


def test_bundle_runs_the_script_with_args_stdin_and_files(tmp_path, monkeypatch):
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "lib.sh").write_text("hello() { echo \"hello $1\"; }\n")
    (scripts / "sib.sh").write_text("echo sibling\n")
    (scripts / "job.sh").write_text(
        '#!/usr/bin/env bash\nset -Eeuo pipefail\nsource "$(dirname "${BASH_SOURCE[0]}")/lib.sh"\n'
        'hello "$1"; printf "arg2=[%s]\\n" "$2"; cat; bash "$(dirname "$0")/sib.sh"; cat data.bin | od -An -tx1\n'
        'exit "${3:-0}"\n'
    )
    monkeypatch.setattr(render, "SCRIPTS", scripts)
    text = render.bundle("job.sh", ["world", "it's $HOME `x`"], "line1\nline2", ["sib.sh"], {"data.bin": b"\x00\xff"})
    res = subprocess.run(["bash", "-s"], input=text, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["hello world", "arg2=[it's $HOME `x`]", "line1", "line2", "sibling", " 00 ff"]
    failing = render.bundle("job.sh", ["a", "b", "7"], "", ["sib.sh"], {"data.bin": b"x"})
    res = subprocess.run(["bash", "-s"], input=failing, capture_output=True, text=True)
    assert res.returncode == 7



def test_bundle_refuses_marker_collisions(tmp_path, monkeypatch):
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "lib.sh").write_text(":\n")
    (scripts / "job.sh").write_text(":\n")
    monkeypatch.setattr(render, "SCRIPTS", scripts)
    with pytest.raises(ValueError, match="marker"):
        render.bundle("job.sh", stdin=f"x\n{render.STDIN_MARK}\n")


def test_deterministic_tarball_is_stable_and_skips_caches(tmp_path):
    src = tmp_path / "pkg"
    (src / "__pycache__").mkdir(parents=True)
    (src / "a.py").write_text("A = 1\n")
    (src / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"junk")
    one = render.deterministic_tarball(src, "pkg")
    (src / "a.py").touch()
    two = render.deterministic_tarball(src, "pkg")
    assert one == two
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(one))) as tar:
        assert tar.getnames() == ["pkg", "pkg/a.py"]


@pytest.mark.parametrize(
    "line",
    [
        "lxc.cgroup2.devices.allow: c 10:200 rwm",
        "lxc.cgroup2.devices.allow:   b 11:*   rw",
        "lxc.cgroup2.devices.allow: a",
        "lxc.mount.entry: /dev/net/tun dev/net/tun none bind,create=file",
        "lxc.mount.entry: /dev/dri dev/dri none bind,optional,create=dir 0 0",
        "lxc.cgroup2.devices.allow: c 10 rwm",
        "lxc.cgroup2.devices.allow: x 1:2 rwm",
        "lxc.mount.entry: /dev/net/tun",
        "lxc.idmap: u 0 100000 65536",
        "no colon here",
    ],
)
def test_extra_lines_follow_the_raw_line_managers_rules(tmp_path, line):
    """render.normalize_raw_line (what the config accepts) agrees with pve-lxc-raw.sh itself."""
    conf = tmp_path / "ct.conf"
    conf.write_text("arch: amd64\n")
    p = subprocess.run(
        ["bash", str(render.SCRIPTS / "pve-lxc-raw.sh"), "apply", str(conf)], input=line + "\n",
        capture_output=True, text=True,
    )
    try:
        norm = render.normalize_raw_line(line)
    except ValueError:
        assert p.returncode == 1 and conf.read_text() == "arch: amd64\n", p.stderr
    else:
        assert p.returncode == 0, p.stderr
        assert conf.read_text() == f"arch: amd64\n{norm}\n"


def test_the_lxc_hook_line_points_where_host_hookscript_installs_it():
    """render.HOOK_DIR is host-hookscript.sh's default --dir, where it writes homelab-media-lxc-hook.sh,
    and pve-lxc-raw.sh manages exactly that line (the hookscript adds it at every start)."""
    text = (render.SCRIPTS / "host-hookscript.sh").read_text()
    assert f"dir={render.HOOK_DIR}" in text and '"$dir/homelab-media-lxc-hook.sh"' in text
    assert render.LXC_HOOK_LINE == f"lxc.hook.pre-start: {render.HOOK_DIR}/homelab-media-lxc-hook.sh"
    assert render.container_lines(["lxc.mount.entry: /dev/dri dev/dri none bind,optional,create=dir"],
                                  ["lxc.cgroup2.devices.allow: c 10:200 rwm"])[-1] == render.LXC_HOOK_LINE
