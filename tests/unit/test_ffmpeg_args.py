"""The ffmpeg argument builder is pure: ffprobe JSON + options -> argv + notes. No ffmpeg here."""

from __future__ import annotations

import subprocess

import pytest

from media_pipeline import ffargs
from media_pipeline.ffargs import EncodeOptions, InputError, build_args, select_streams

SRC, DST = "/staging/in file.mkv", "/movies/.out.mkv.partial"


def stream(index, kind, codec, lang=None, title=None, *, attached=False, **extra):
    tags = {}
    if lang is not None:
        tags["language"] = lang
    if title is not None:
        tags["title"] = title
    s = {"index": index, "codec_type": kind, "codec_name": codec, "tags": tags,
         "disposition": {"default": 0, "attached_pic": int(attached)}}
    if kind == "video":
        s.update(width=1920, height=1080, pix_fmt="yuv420p")
    s.update(extra)
    return s


def probe(*streams, duration="7200.5", start="0.000000"):
    return {"streams": list(streams),
            "format": {"duration": duration, "start_time": start, "format_name": "matroska,webm"},
            "chapters": []}


BLURAY = probe(
    stream(0, "video", "h264"),
    stream(1, "audio", "truehd", "eng", "Main"),
    stream(2, "audio", "ac3", "bul"),
    stream(3, "audio", "flac", "fre"),
    stream(4, "audio", "opus", "jpn"),
    stream(5, "audio", "aac"),  # untagged
    stream(6, "subtitle", "hdmv_pgs_subtitle", "eng"),
    stream(7, "subtitle", "hdmv_pgs_subtitle", "fre"),
    stream(8, "subtitle", "subrip", "bul", "Forced"),
)


def maps(argv):
    return [argv[i + 1] for i, a in enumerate(argv) if a == "-map"]


def opts(**kw):
    return EncodeOptions(**{"languages": ("eng", "bul"), "preset": "slow", "crf": 18, **kw})


def test_keeps_first_video_and_wanted_languages_in_original_order():
    argv, notes = build_args(BLURAY, opts(), SRC, DST)
    assert maps(argv) == ["0:0", "0:1", "0:2", "0:6", "0:8"]
    assert any("dropped" in n and "#3" in n and "#4" in n and "#5" in n and "#7" in n for n in notes)


def test_argv_shape_libx265():
    argv, _ = build_args(BLURAY, opts(), SRC, DST)
    assert argv[0] == "ffmpeg"
    assert argv[argv.index("-i") + 1] == SRC
    assert argv[-1] == DST and argv[-2] == "-y" and argv[argv.index("-f") + 1] == "matroska"
    assert argv[argv.index("-progress") + 1] == "pipe:1"
    assert argv[argv.index("-c:v") + 1] == "libx265"
    assert argv[argv.index("-preset") + 1] == "slow"
    assert argv[argv.index("-crf") + 1] == "18"
    assert argv[argv.index("-c:a") + 1] == "copy" and argv[argv.index("-c:s") + 1] == "copy"
    assert argv[argv.index("-map_metadata") + 1] == "0"
    assert argv[argv.index("-map_chapters") + 1] == "0"
    assert "-init_hw_device" not in argv and "-global_quality" not in argv
    assert argv.index("-i") < argv.index("-map") < argv.index("-c:v")


@pytest.mark.parametrize(
    "wanted, expected",
    [
        (("en", "bg"), ["0:0", "0:1", "0:2", "0:6", "0:8"]),
        (("eng", "bul"), ["0:0", "0:1", "0:2", "0:6", "0:8"]),
        (("fr",), ["0:0", "0:3", "0:7"]),
        (("fra",), ["0:0", "0:3", "0:7"]),
        (("fre",), ["0:0", "0:3", "0:7"]),
        (("ja",), ["0:0", "0:4"]),
        (("jpn",), ["0:0", "0:4"]),
        (("und",), ["0:0", "0:5"]),
        (("EN",), ["0:0", "0:1", "0:6"]),
    ],
)
def test_two_and_three_letter_codes_are_alike(wanted, expected):
    argv, _ = build_args(BLURAY, opts(languages=wanted), SRC, DST)
    assert maps(argv) == expected


@pytest.mark.parametrize("tag", ["de", "ger", "deu", "de-DE", "German"])
def test_stream_tags_in_any_spelling(tag):
    p = probe(stream(0, "video", "h264"), stream(1, "audio", "ac3", tag))
    argv, notes = build_args(p, opts(languages=("deu",)), SRC, DST)
    assert maps(argv) == ["0:0", "0:1"]
    assert not any("first audio" in n for n in notes)


def test_no_matching_audio_keeps_first_audio_and_says_so():
    p = probe(stream(0, "video", "h264"), stream(1, "audio", "dts", "jpn"),
              stream(2, "audio", "ac3", "fre"), stream(3, "subtitle", "subrip", "jpn"))
    argv, notes = build_args(p, opts(), SRC, DST)
    assert maps(argv) == ["0:0", "0:1"]
    assert any("no track in eng,bul" in n and "keeping the first audio track" in n and "#1" in n
               for n in notes)
    assert any("subtitles: none in eng,bul" in n for n in notes)


def test_no_audio_at_all_is_fine():
    argv, notes = build_args(probe(stream(0, "video", "h264")), opts(), SRC, DST)
    assert maps(argv) == ["0:0"]
    assert any("no audio" in n for n in notes)


def test_cover_art_is_not_the_video():
    p = probe(stream(0, "video", "mjpeg", attached=True), stream(1, "video", "hevc"),
              stream(2, "video", "h264"), stream(3, "audio", "aac", "eng"))
    argv, _ = build_args(p, opts(), SRC, DST)
    assert maps(argv) == ["0:1", "0:3"]


def test_no_video_is_bad_input():
    with pytest.raises(InputError, match="no video stream"):
        build_args(probe(stream(0, "audio", "flac", "eng")), opts(), SRC, DST)
    with pytest.raises(InputError, match="no video"):
        build_args({"streams": [], "format": {}}, opts(), SRC, DST)


def test_no_duration_is_bad_input():
    with pytest.raises(InputError, match="duration"):
        build_args(probe(stream(0, "video", "h264"), duration="N/A"), opts(), SRC, DST)


def test_video_duration_used_when_format_has_none():
    p = probe(stream(0, "video", "h264", duration="42.0"), duration=None)
    assert select_streams(p, ["eng"]).duration == 42.0


def test_hevc_qsv_args():
    argv, _ = build_args(BLURAY, opts(encoder="hevc_qsv", preset="slow", crf=21,
                                      qsv_device="/dev/dri/renderD129"), SRC, DST)
    i = argv.index("-i")
    assert argv[argv.index("-init_hw_device") + 1] == "qsv=hw:/dev/dri/renderD129"
    assert argv[argv.index("-filter_hw_device") + 1] == "hw"
    assert argv.index("-init_hw_device") < i and argv.index("-filter_hw_device") < i
    assert argv[argv.index("-c:v") + 1] == "hevc_qsv"
    assert argv[argv.index("-global_quality") + 1] == "21"
    assert "-crf" not in argv
    vf = argv[argv.index("-vf") + 1]
    assert vf.startswith("format=nv12,") and "hwupload" in vf and vf.endswith("format=qsv")


def test_hevc_qsv_unresolved_auto_device_is_the_default_node():
    # "" (auto) is resolved by media_pipeline.gpu before build_args; build_args stays pure
    argv, _ = build_args(BLURAY, opts(encoder="hevc_qsv", preset="slow", qsv_device=""), SRC, DST)
    assert argv[argv.index("-init_hw_device") + 1] == "qsv=hw:/dev/dri/renderD128"


def test_hevc_qsv_ten_bit_uploads_p010():
    p = probe(stream(0, "video", "hevc", pix_fmt="yuv420p10le"))
    argv, _ = build_args(p, opts(encoder="hevc_qsv", preset="medium"), SRC, DST)
    assert argv[argv.index("-vf") + 1].startswith("format=p010le,")


def test_stale_statistics_tags_cleared_on_video_only():
    v = stream(0, "video", "h264")
    v["tags"].update({"BPS-eng": "30000000", "NUMBER_OF_BYTES-eng": "1", "_STATISTICS_TAGS-eng": "x",
                      "title": "Main feature"})
    argv, _ = build_args(probe(v), opts(), SRC, DST)
    cleared = [argv[i + 1] for i, a in enumerate(argv) if a == "-metadata:s:v:0"]
    assert sorted(cleared) == ["BPS-eng=", "NUMBER_OF_BYTES-eng=", "_STATISTICS_TAGS-eng="]


def test_mov_text_subtitles_become_srt():
    p = probe(stream(0, "video", "h264"), stream(1, "subtitle", "subrip", "eng"),
              stream(2, "subtitle", "mov_text", "eng"))
    argv, notes = build_args(p, opts(), SRC, DST)
    assert argv[argv.index("-c:s:1") + 1] == "srt"
    assert argv.index("-c:s") < argv.index("-c:s:1")  # the specific option wins by coming last
    assert any("converted to srt" in n for n in notes)


def test_styled_subtitles_keep_their_fonts():
    p = probe(stream(0, "video", "h264"), stream(1, "subtitle", "ass", "eng"),
              stream(2, "attachment", "ttf"))
    argv, _ = build_args(p, opts(), SRC, DST)
    assert maps(argv) == ["0:0", "0:1", "0:2"]
    p2 = probe(stream(0, "video", "h264"), stream(1, "subtitle", "subrip", "eng"),
               stream(2, "attachment", "ttf"))
    assert maps(build_args(p2, opts(), SRC, DST)[0]) == ["0:0", "0:1"]


def test_builder_never_runs_anything(monkeypatch):
    def boom(*_a, **_k):
        raise AssertionError("build_args must not start processes")

    monkeypatch.setattr(subprocess, "run", boom)
    monkeypatch.setattr(subprocess, "Popen", boom)
    build_args(BLURAY, opts(), SRC, DST)


def test_ffmpeg_binary_configurable():
    argv, _ = build_args(BLURAY, opts(ffmpeg="/usr/bin/ffmpeg"), SRC, DST)
    assert argv[0] == "/usr/bin/ffmpeg"


@pytest.mark.parametrize(
    "kw, fragment",
    [
        ({"encoder": "x264"}, "encoder must be one of"),
        ({"preset": "ludicrous"}, "not a libx265 preset"),
        ({"encoder": "hevc_qsv", "preset": "ultrafast"}, "not a hevc_qsv preset"),
        ({"crf": 52}, "crf must be an integer 0-51"),
        ({"encoder": "hevc_qsv", "preset": "slow", "crf": 0}, "1-51"),
        ({"languages": ()}, "at least one language"),
        ({"languages": ("english!",)}, "not an ISO 639 code"),
    ],
)
def test_option_problems(kw, fragment):
    problems = opts(**kw).problems()
    assert any(fragment in p for p in problems), problems


def test_good_options_have_no_problems():
    assert opts().problems() == []
    assert opts(encoder="hevc_qsv", preset="veryslow", crf=1).problems() == []
    assert set(ffargs.ENCODERS) == {"libx265", "hevc_qsv"}
