"""Jellyfin in the lab: JellyfinCT's unprivileged container (real LXC, systemd), movies and tv
read-only, the render node through PVE's devN, installed from the lab's stand-in of Jellyfin's
repository (pinned key), configured through the stand-in of Jellyfin's API that runs there as
the jellyfin service. A rip becomes a library file and media-pipeline tells "Jellyfin" about it.

What only a real Jellyfin proves (its own server, library scan, playback, hardware transcoding
with jellyfin-ffmpeg on an Arc): README, docs/adr/0014.
"""

from __future__ import annotations

import json
import os
import shlex

import pytest

from tests.e2e.lab import pve_options, wait_for
from tests.lab.test_program_on_lab import first_up, lab, program, sentinels  # noqa: F401 - fixtures

pytestmark = pytest.mark.e2e

JF = 203
RECORD = "var/lib/jellyfin/standin-calls.jsonl"  # tests/standins/jellyfin_deb.py LAB_RECORD


def ct(lab, vmid: int, command: str, timeout: float = 120, check: bool = True):
    return lab.ssh(f"pct exec {vmid} -- bash -c {shlex.quote(command)}", timeout=timeout, check=check)


def calls(lab) -> list[dict]:
    path = lab.ct_dir / str(JF) / "rootfs" / RECORD
    return [json.loads(x) for x in path.read_text().splitlines() if x] if path.exists() else []


def test_the_proof_says_what_works_and_why_the_stand_in_cannot_encode(lab, first_up):
    v = first_up["out"]["outputs"]["jellyfinVerification"]
    assert v["url"] == "http://10.99.0.203:8096" and v["version"]
    assert {lib["name"]: lib["paths"] for lib in v["libraries"]} == {"Movies": ["/media/movies"], "Shows": ["/media/tv"]}
    assert v["read_only"] is True and v["read_only_detail"] == "Read-only file system"
    assert v["render_node"] == "/dev/dri/renderD128" and v["render_access"] is True
    # the stand-in's jellyfin-ffmpeg encodes nothing: never reported as fine
    assert v["ok"] is False and "stand-in" in v["reason"]


def test_unprivileged_with_the_render_node_through_devN_and_the_library_read_only(lab, first_up):
    conf = lab.ct_config(JF)
    assert str(conf["unprivileged"]) == "1"
    render_gid = ct(lab, JF, "getent group render | cut -d: -f3").stdout.strip()
    dev0 = pve_options(conf["dev0"], "path")
    assert (dev0["path"], dev0["gid"], dev0.get("mode", "0660")) == ("/dev/dri/renderD128", render_gid, "0660"), dev0
    mps = sorted((o["volume"], o["mp"], o.get("ro")) for o in (pve_options(v, "volume") for k, v in conf.items()
                                                             if k.startswith("mp")))
    assert mps == [("/mnt/storage/movies", "/media/movies", "1"), ("/mnt/storage/tv", "/media/tv", "1")]
    assert not [line for line in lab.conf(JF).split("\n[")[0].splitlines() if line.startswith("lxc.")]
    # in the container: the node shows the container's render group; root is 100000 on the node
    got = ct(lab, JF, "stat -c '%F %G %a' /dev/dri/renderD128; id -nG jellyfin; cat /proc/self/uid_map").stdout.split("\n")
    assert got[0] == "character special file render 660", got
    assert "render" in got[1].split(), got
    assert got[2].split() == ["0", "100000", "65536"], got


def test_a_rip_becomes_a_library_file_jellyfin_can_read_and_is_told_of_within_2_s(lab, first_up):
    title = f"Jelly Film {os.getpid()} (2024)"
    rip = f"/mnt/storage/staging/{title}.mkv"
    make = (
        f"runuser -u media -- ffmpeg -hide_banner -loglevel error -y -f lavfi -i testsrc=d=2:s=160x90:r=24 "
        f"-f lavfi -i sine=d=2 -map 0:v -map 1:a -c:v libx264 -preset ultrafast -c:a aac "
        f"-metadata:s:a:0 language=eng '/tmp/{title}.mkv' && mv '/tmp/{title}.mkv' '{rip}' && touch '{rip}.done'"
    )
    ct(lab, 201, make)

    def done():
        jobs = json.loads(ct(lab, 201, "runuser -u media -- media-pipeline status --json").stdout)
        return [j["state"] for j in jobs if j["source"] == rip] == ["done"]
    wait_for(done, 600, what="the transcode")
    lib = [p for p in (lab.pool / "movies").rglob("*.mkv") if title in p.name]
    assert len(lib) == 1, lib
    rel = lib[0].relative_to(lab.pool / "movies")
    in_jf = f"/media/movies/{rel}"

    def told():
        return [c for c in calls(lab) if c["path"].lower() == "/library/media/updated" and in_jf in c.get("updates", [])]
    wait_for(told, 30, what=f"the library-updated call for {in_jf}")
    call = told()[0]
    assert call["status"] == 204
    published = lib[0].stat().st_ctime  # the rename into the library
    assert call["time"] - published < 2.0, f"told {call['time'] - published:.2f} s after the publish"
    print(f"Jellyfin told {call['time'] - published:.2f} s after the publish")

    # the jellyfin user reads it through "other" (the media user's files are nobody's in here) and
    # nothing in the container can write to the library; staging is not there at all
    q = shlex.quote(in_jf)
    assert ct(lab, JF, f"runuser -u jellyfin -- head -c 4 {q} | od -An -c").stdout.split() == ["032", "E", "337", "243"]
    denied = ct(lab, JF, f"touch {q}.x 2>&1; runuser -u jellyfin -- touch /media/movies/x 2>&1; true").stdout
    assert denied.count("Read-only file system") == 2, denied
    assert ct(lab, JF, "ls -d /mnt/storage /media/staging 2>&1; grep -c staging /proc/mounts; true").stdout.split("\n")[-2] == "0"
    assert not [c for c in calls(lab) if c.get("unknown")], "the deploy or media-pipeline made a call Jellyfin does not know"


def test_the_api_key_reached_the_transcoder_as_a_file_of_the_media_user_only(lab, first_up):
    got = ct(lab, 201, "stat -c '%U %a' /etc/media-pipeline/jellyfin.key; wc -c < /etc/media-pipeline/jellyfin.key").stdout.split()
    assert got[:2] == ["media", "600"] and int(got[2]) > 16, got
    # the stand-in knows the key by the app name the deploy asked for
    keys = [c for c in calls(lab) if c["path"].lower() == "/auth/keys" and c["method"] == "POST"]
    assert len(keys) == 1 and keys[0]["status"] == 204


def test_a_second_up_changes_nothing_in_jellyfin(lab, first_up):
    before = len([c for c in calls(lab) if c["method"] != "GET"])
    out, _ = program("up")
    assert out["commands_ran"] == []
    assert len([c for c in calls(lab) if c["method"] != "GET"]) == before
