"""media-transcode against real ffmpeg on synthetic rips."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess

import pytest

from tests.media.helpers import (
    kill, make_rip, probe, processes_with, start_transcode, streams, transcode, wait_for,
)

pytestmark = pytest.mark.ffmpeg
FAST = ("--preset", "ultrafast", "--crf", "30")


def run_ok(src, out, *args):
    run = transcode(src, out, *FAST, *args)
    assert run.returncode == 0, run.stderr
    return run


def test_full_layout_keeps_wanted_languages_chapters_and_titles(rips, tmp_path):
    out = tmp_path / "lib" / "Out Film.mkv"
    out.parent.mkdir()
    run = run_ok(rips["full"], out, "--languages", "eng,bul")
    assert streams(out) == [
        ("video", "hevc", None, None),
        ("audio", "aac", "eng", "Main English"),
        ("audio", "ac3", "bul", None),
        ("subtitle", "subrip", "eng", None),
        ("subtitle", "subrip", "bul", None),
    ]
    info = probe(out)
    assert info["format"]["tags"]["title"] == "A Test Title"
    assert [c["tags"]["title"] for c in info["chapters"]] == ["Opening", "Ending"]
    assert float(info["format"]["duration"]) == pytest.approx(2.0, abs=0.15)
    assert os.listdir(out.parent) == ["Out Film.mkv"]  # no temp left
    assert "note: audio: keeping #1 eng aac \"Main English\", #2 bul ac3" in run.stderr
    assert "wrote " in run.stderr


@pytest.mark.parametrize("languages", ["en,bg", "eng,bul", "bg,en"])
def test_two_and_three_letter_codes(rips, tmp_path, languages):
    # the rip says bg/fr/en (2 letters); ask in either form
    out = tmp_path / "o.mkv"
    run_ok(rips["two_letter"], out, "--languages", languages)
    assert streams(out) == [
        ("video", "hevc", None, None),
        ("audio", "opus", "bg", None),  # original order: Bulgarian came first
        ("audio", "flac", "en", None),
        ("subtitle", "subrip", "en", None),
    ]


@pytest.mark.parametrize("languages", ["fr", "fre", "fra"])
def test_french_in_every_form(rips, tmp_path, languages):
    out = tmp_path / "o.mkv"
    run_ok(rips["full"], out, "--languages", languages)
    assert [s[:3] for s in streams(out)] == [
        ("video", "hevc", None), ("audio", "flac", "fre"), ("subtitle", "subrip", "fre")]


def test_untagged_tracks_with_und(rips, tmp_path):
    out = tmp_path / "o.mkv"
    run_ok(rips["full"], out, "--languages", "jpn,und")
    assert [s[:3] for s in streams(out)] == [
        ("video", "hevc", None), ("audio", "opus", "jpn"), ("audio", "aac", None)]


def test_no_matching_audio_keeps_first_track_and_says_so(rips, tmp_path):
    out = tmp_path / "o.mkv"
    run = run_ok(rips["foreign"], out, "--languages", "eng,bul")
    assert [s[:3] for s in streams(out)] == [("video", "hevc", None), ("audio", "ac3", "jpn")]
    assert "no track in eng,bul; keeping the first audio track (#1 jpn ac3)" in run.stderr
    assert "subtitles: none in eng,bul" in run.stderr


def test_no_subtitles_no_chapters_is_fine(rips, tmp_path):
    out = tmp_path / "o.mkv"
    run_ok(rips["no_subs"], out, "--languages", "eng")
    assert [s[:3] for s in streams(out)] == [("video", "hevc", None), ("audio", "ac3", "eng")]
    assert probe(out)["chapters"] == []


def test_defaults_come_from_the_config_file(rips, tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"languages": ["jpn"], "preset": "ultrafast", "crf": 35}))
    out = tmp_path / "o.mkv"
    run = transcode(rips["full"], out, "--config", cfg)
    assert run.returncode == 0, run.stderr
    assert [s[:3] for s in streams(out)] == [("video", "hevc", None), ("audio", "opus", "jpn")]


def test_progress_line_on_stderr(rips, tmp_path):
    run = run_ok(rips["four"], tmp_path / "o.mkv")
    lines = [ln for ln in run.stderr.splitlines() if "fps" in ln and "ETA" in ln]
    assert lines and "100.0%" in lines[-1]


def test_dry_run_prints_the_command_for_qsv(rips, tmp_path):
    run = transcode(rips["full"], tmp_path / "o.mkv", "--encoder", "hevc_qsv", "--preset", "slow",
                    "--crf", "22", "--dry-run")
    assert run.returncode == 0, run.stderr
    cmd = run.stdout.strip()
    # qsv_device auto: the first i915/xe render node here, else renderD128
    assert cmd.startswith("ffmpeg ") and re.search(r"-init_hw_device qsv=hw:/dev/dri/renderD\d+ ", cmd)
    assert "-c:v hevc_qsv" in cmd and "-global_quality 22" in cmd
    assert "(qsv_device auto:" in run.stderr
    assert not (tmp_path / "o.mkv").exists()
    chosen = transcode(rips["full"], tmp_path / "o.mkv", "--encoder", "hevc_qsv", "--preset", "slow",
                       "--qsv-device", "/dev/dri/renderD131", "--dry-run")
    assert "-init_hw_device qsv=hw:/dev/dri/renderD131 " in chosen.stdout and "auto" not in chosen.stderr


def truncated(src, dst, fraction):
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


@pytest.mark.parametrize("fraction", [0.5, 0.97])
def test_truncated_rip_fails_with_exit_3_and_writes_nothing(rips, tmp_path, fraction):
    src = truncated(rips["four"], tmp_path / "cut.mkv", fraction)
    lib = tmp_path / "lib"
    lib.mkdir()
    run = transcode(src, lib / "cut.mkv", *FAST)
    assert run.returncode == 3, run.stderr
    assert "truncated" in run.stderr
    assert os.listdir(lib) == []


def test_not_a_video(tmp_path, rips):
    lib = tmp_path / "lib"
    lib.mkdir()
    text = tmp_path / "notes.mkv"
    text.write_text("not a video at all\n")
    run = transcode(text, lib / "a.mkv")
    assert run.returncode == 3 and "not a readable media file" in run.stderr
    audio_only = tmp_path / "audio.mkv"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=d=1", "-c:a", "flac",
                    str(audio_only)], check=True)
    run = transcode(audio_only, lib / "b.mkv")
    assert run.returncode == 3 and "no video stream" in run.stderr
    run = transcode(tmp_path / "missing.mkv", lib / "c.mkv")
    assert run.returncode == 3 and "input not found" in run.stderr
    assert os.listdir(lib) == []


def test_output_problems_exit_5(rips, tmp_path):
    run = transcode(rips["four"], tmp_path / "no-such-dir" / "o.mkv")
    assert run.returncode == 5 and "does not exist" in run.stderr
    existing = tmp_path / "exists.mkv"
    existing.write_bytes(b"precious")
    run = transcode(rips["four"], existing, *FAST)
    assert run.returncode == 5 and "already exists" in run.stderr
    assert existing.read_bytes() == b"precious"
    run_ok(rips["four"], existing, "--overwrite")
    assert streams(existing)[0][1] == "hevc"


def test_destination_created_just_before_publish_is_left_untouched(rips, tmp_path):
    from media_pipeline import ffargs
    from media_pipeline import transcode as tc

    lib = tmp_path / "lib"
    lib.mkdir()
    dst = lib / "Film.mkv"
    seen = []

    def someone_else_writes(st):  # runs after the encode is verified, right before publishing
        seen.append(st.st_size)
        dst.write_bytes(b"precious")

    opts = ffargs.EncodeOptions(preset="ultrafast", crf=30)
    with pytest.raises(tc.TranscodeError) as err:
        tc.transcode(str(rips["four"]), str(dst), opts, before_commit=someone_else_writes)
    assert err.value.code == 5 and "appeared while encoding" in err.value.reason
    assert seen and seen[0] > 0  # the callback got the finished temp's stat
    assert dst.read_bytes() == b"precious"
    assert os.listdir(lib) == ["Film.mkv"]  # the temp is gone


def test_usage_errors_exit_2(rips, tmp_path):
    assert transcode(rips["four"], tmp_path / "o.mp4").returncode == 2
    assert transcode(rips["four"], tmp_path / "o.mkv", "--crf", "99").returncode == 2
    assert transcode(rips["four"], tmp_path / "o.mkv", "--languages", "klingon!").returncode == 2
    bad = tmp_path / "bad.json"
    bad.write_text('{"crf": "high"}')
    run = transcode(rips["four"], tmp_path / "o.mkv", "--config", bad)
    assert run.returncode == 2 and "'crf'" in run.stderr
    assert transcode("--bogus").returncode == 2
    assert not (tmp_path / "o.mkv").exists()


def _wait_for_partial(lib, proc):
    def partial():
        assert proc.poll() is None, proc.stderr.read()
        found = [p for p in lib.iterdir() if p.name.endswith(".partial")]
        return found[0] if found else None

    return wait_for(partial, timeout=30, what="the partial output")


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 130), (signal.SIGINT, 130)])
def test_interrupted_run_leaves_nothing(rips, tmp_path, sig, code):
    lib = tmp_path / "lib"
    lib.mkdir()
    proc = start_transcode(rips["slow"], lib / "Film.mkv", "--preset", "slow")
    tmp = _wait_for_partial(lib, proc)
    assert tmp.name == ".Film.mkv.partial"
    assert not (lib / "Film.mkv").exists()  # the library never sees a half file
    proc.send_signal(sig)
    assert proc.wait(timeout=30) == code
    assert os.listdir(lib) == []
    assert processes_with(str(tmp)) == []


def test_killed_run_never_shows_a_half_file_and_the_next_run_cleans_up(rips, tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    proc = start_transcode(rips["slow"], lib / "Film.mkv", "--preset", "slow")
    tmp = _wait_for_partial(lib, proc)
    kill(proc)  # SIGKILL: no cleanup possible in the wrapper
    wait_for(lambda: not processes_with(str(tmp)), timeout=10, what="ffmpeg to die with its parent")
    assert os.listdir(lib) == [tmp.name]  # only the hidden temp, never Film.mkv
    run_ok(rips["four"], lib / "Film.mkv")
    assert os.listdir(lib) == ["Film.mkv"]


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tiny tmpfs needs root")
def test_disk_full_exit_5_and_no_temp(rips, tmp_path):
    lib = tmp_path / "tiny"
    lib.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(lib)],
                             capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount tmpfs: {mounted.stderr.decode().strip()}")
    try:
        run = transcode(rips["full"], lib / "o.mkv", *FAST, "--languages", "eng,bul,fre,jpn,und")
        assert run.returncode == 5, run.stderr
        assert "disk full" in run.stderr
        assert os.listdir(lib) == []
    finally:
        subprocess.run(["umount", str(lib)], check=False)


def test_subtitle_longer_than_the_video_is_not_truncation(tmp_path):
    # the container's duration comes from a subtitle that outlasts the 1 s video
    src = make_rip(tmp_path / "short.mkv", audio=(("eng", "aac"),), subs=("eng",), duration=1.0)
    assert float(probe(src)["format"]["duration"]) > 1.5
    out = tmp_path / "o.mkv"
    run_ok(src, out)
    assert [s[0] for s in streams(out)] == ["video", "audio", "subtitle"]
