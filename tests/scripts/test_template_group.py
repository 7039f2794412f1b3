"""host-template-group.sh: the render group's gid as a container template's /etc/group has it
(read before the container exists; docs/adr/0014). Templates are made here as PVE's are: a
tarball of a root filesystem with ./etc/group, compressed as its name says."""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile

import pytest

from .conftest import run

BASE = "root:x:0:\nvideo:x:44:\nusers:x:100:\nnogroup:x:65534:\n"


def template(tmp_path, group_text: str | None, suffix: str = "tar.zst", member: str = "./etc/group"):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in ([(member, group_text)] if group_text is not None else []) + [("./etc/hostname", "x\n")]:
            b = data.encode()
            info = tarfile.TarInfo(name)
            info.size = len(b)
            tar.addfile(info, io.BytesIO(b))
    tpl = tmp_path / f"debian-12-standard_12.7-1_amd64.{suffix}"
    tool = {"tar.zst": ["zstd", "-q", "-c"], "tar.gz": ["gzip", "-c"], "tar.xz": ["xz", "-c"]}[suffix]
    if shutil.which(tool[0]) is None:
        pytest.skip(f"{tool[0]} not installed")
    tpl.write_bytes(subprocess.run(tool, input=raw.getvalue(), capture_output=True, check=True).stdout)
    return tpl


@pytest.mark.parametrize("suffix", ["tar.zst", "tar.gz", "tar.xz"])
def test_the_templates_render_group_is_read(tmp_path, suffix):
    tpl = template(tmp_path, BASE + "render:x:105:\nssl-cert:x:104:\n", suffix)
    r = run("host-template-group.sh", "--file", str(tpl))
    assert r.rc == 0, r.err
    assert r.json == {"group": "render", "gid": 105, "source": "template", "template": str(tpl)}


def test_without_a_render_group_the_gid_groupadd_would_give_it(tmp_path):
    tpl = template(tmp_path, BASE + "systemd-journal:x:999:\nsystemd-network:x:998:\n")
    r = run("host-template-group.sh", "--file", str(tpl))
    assert r.rc == 0, r.err
    assert r.json["gid"] == 997 and r.json["source"] == "new"
    assert "no render group in the template" in r.err


def test_members_without_the_leading_dot(tmp_path):
    tpl = template(tmp_path, BASE + "render:x:993:\n", member="etc/group")
    assert run("host-template-group.sh", "--file", str(tpl)).json["gid"] == 993


def test_a_tarball_without_etc_group_is_refused_naming_the_key(tmp_path):
    tpl = template(tmp_path, None)
    r = run("host-template-group.sh", "--file", str(tpl))
    assert r.rc == 1 and "no /etc/group in template" in r.err and "jellyfin.gpu" in r.err


def test_a_missing_template_and_bad_arguments(tmp_path):
    r = run("host-template-group.sh", "--file", str(tmp_path / "nope.tar.zst"))
    assert r.rc == 1 and "homelab-media:template.fileName" in r.err
    assert "--volume or --file is required" in run("host-template-group.sh").err
    assert "unknown argument '--x'" in run("host-template-group.sh", "--x").err
    assert run("host-template-group.sh", "--help").rc == 0


def test_a_volume_is_found_through_storage_cfg_without_pvesm(tmp_path):
    store = tmp_path / "vz"
    (store / "template/cache").mkdir(parents=True)
    tpl = template(tmp_path, BASE + "render:x:104:\n")
    tpl.rename(store / "template/cache" / tpl.name)
    pve = tmp_path / "pve"
    pve.mkdir()
    (pve / "storage.cfg").write_text(f"dir: local\n\tpath {store}\n\tcontent iso,vztmpl,backup\n\n"
                                     "lvmthin: local-lvm\n\tthinpool data\n\tvgname pve\n")
    r = run("host-template-group.sh", "--volume", f"local:vztmpl/{tpl.name}", "--pve-dir", str(pve),
            env={"PATH": "/usr/bin:/bin"})
    assert r.rc == 0, r.err
    assert r.json["gid"] == 104 and r.json["template"] == str(store / "template/cache" / tpl.name)
    r = run("host-template-group.sh", "--volume", f"local-lvm:vztmpl/{tpl.name}", "--pve-dir", str(pve),
            env={"PATH": "/usr/bin:/bin"})
    assert r.rc == 1 and "storage 'local-lvm' has no path" in r.err
    assert "is not STORAGE:vztmpl/FILE" in run("host-template-group.sh", "--volume", "local:iso/x.iso").err
