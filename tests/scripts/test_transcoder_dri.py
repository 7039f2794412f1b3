"""ct-bootstrap-transcoder.sh --dri-only: /dev/dri is the node's devtmpfs, so its groups are
checked against the stack's hostGroups and reported, never changed."""

from __future__ import annotations

import os
import stat

from .conftest import run

GIDS = ["--video-gid", "44", "--render-gid", "104"]


def dri(hw, *args):
    return run("ct-bootstrap-transcoder.sh", "--dri-only", *GIDS, *args, env=hw.env)


def test_matching_groups_are_ok(hw):
    hw.gpu(0, 128)
    os.chown(hw.dev / "dri/card0", 0, 44)
    os.chown(hw.dev / "dri/renderD128", 0, 104)
    r = dri(hw)
    assert r.rc == 0, r.err
    assert r.json == {
        "dri": [
            {"path": str(hw.dev / "dri/card0"), "gid": 44, "expected_gid": 44, "ok": True},
            {"path": str(hw.dev / "dri/renderD128"), "gid": 104, "expected_gid": 104, "ok": True},
        ],
        "dri_ok": True,
        "changed": False,
    }
    assert " ! " not in r.err


def test_mismatch_is_reported_with_the_stack_key_and_nothing_is_changed(hw):
    hw.gpu(0, 128)
    hw.gpu(1, 129)
    card0, render = hw.dev / "dri/card0", hw.dev / "dri/renderD128"
    os.chown(card0, 0, 44)
    os.chown(hw.dev / "dri/card1", 0, 44)
    os.chown(render, 0, 993)
    os.chown(hw.dev / "dri/renderD129", 0, 993)
    os.chmod(render, 0o666)
    before = {p: os.stat(p) for p in (hw.dev / "dri").iterdir()}
    r = dri(hw)
    assert r.rc == 0, r.err  # a warning, not a failed bootstrap
    j = r.json
    assert j["dri_ok"] is False and j["changed"] is False
    assert {"path": str(render), "gid": 993, "expected_gid": 104, "ok": False} in j["dri"]
    assert {"path": str(card0), "gid": 44, "expected_gid": 44, "ok": True} in j["dri"]
    assert [d["ok"] for d in j["dri"]] == [True, True, False, False]
    assert (
        f"homelab-media:hostGroups.render is 104 but the node's {render} has gid 993: "
        "set it with `pulumi config set --path homelab-media:hostGroups.render 993`"
    ) in r.err
    assert "hostGroups.video" not in r.err
    for p, st in before.items():
        now = os.stat(p)
        assert (now.st_uid, now.st_gid, stat.S_IMODE(now.st_mode)) == (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))


def test_card_with_the_wrong_group_names_the_video_key(hw):
    hw.gpu(0, 128)
    os.chown(hw.dev / "dri/card0", 0, 39)
    os.chown(hw.dev / "dri/renderD128", 0, 104)
    r = dri(hw)
    assert r.rc == 0, r.err
    assert "`pulumi config set --path homelab-media:hostGroups.video 39`" in r.err
    assert r.json["dri_ok"] is False


def test_unmapped_group_is_explained(hw):
    hw.gpu(0, 128)
    os.chown(hw.dev / "dri/card0", 0, 44)
    os.chown(hw.dev / "dri/renderD128", 0, 65534)
    r = dri(hw)
    assert r.rc == 0, r.err
    assert "not mapped into this container" in r.err
    assert r.json["dri_ok"] is False


def test_no_dri_is_a_warning(hw):
    r = dri(hw)
    assert r.rc == 0, r.err
    assert r.json == {"dri": [], "dri_ok": True, "changed": False}
    assert "does not exist" in r.err


def test_dri_only_needs_the_gids():
    r = run("ct-bootstrap-transcoder.sh", "--dri-only", "--video-gid", "44")
    assert r.rc == 1 and "--render-gid is required" in r.err

