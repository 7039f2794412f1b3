"""Pure parts of media-transcode: progress parsing, the truncation verdict, temp names, failures."""

import errno
import os

import pytest

from media_pipeline import transcode as tc


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def feed(parser, text):
    out = None
    for line in text.strip().splitlines():
        got = parser.feed(line + "\n")
        out = got or out
    return out


BLOCK = """frame=250
fps=50.00
stream_0_0_q=28.0
bitrate= 500.0kbits/s
total_size=625000
out_time_us=10000000
out_time_ms=10000000
out_time=00:00:10.000000
dup_frames=0
drop_frames=0
speed=2.00x
progress=continue"""


def test_progress_block():
    clock = Clock()
    p = tc.ProgressParser(duration=40.0, clock=clock)
    clock.t += 5
    got = feed(p, BLOCK)
    assert got.percent == pytest.approx(25.0)
    assert got.fps == 50.0 and got.speed == 2.0 and got.frame == 250
    assert got.eta == pytest.approx(15.0)  # 30 s of media left at 2x
    assert not got.done
    line = tc.format_progress(got)
    assert "25.0%" in line and "fps 50.0" in line and "ETA 0:00:15" in line


def test_progress_na_values_and_end():
    clock = Clock()
    p = tc.ProgressParser(duration=8.0, clock=clock)
    first = feed(p, "frame=0\nfps=0.00\nout_time_us=N/A\nout_time=N/A\nspeed=N/A\nprogress=continue")
    assert first.percent == 0 and first.eta is None
    clock.t += 2
    last = feed(p, "frame=200\nfps=0.00\nout_time_us=8000000\nspeed=N/A\nprogress=end")
    assert last.done and last.percent == 100.0 and last.eta == 0.0
    assert last.fps == pytest.approx(100.0)  # computed from frames / elapsed when ffmpeg says 0
    assert last.speed == pytest.approx(4.0)


def test_progress_out_time_fallback():
    p = tc.ProgressParser(duration=7200.0, clock=Clock())
    got = feed(p, "out_time=01:00:00.500000\nprogress=continue")
    assert got.out_seconds == pytest.approx(3600.5)


def test_tail_check_argv_seeks_near_the_end():
    argv = tc.tail_check_argv("/x.mkv", start=0.0, duration=100.0)
    assert argv[argv.index("-read_intervals") + 1] == "90.000%91.000"
    assert argv[argv.index("-show_entries") + 1] == "packet=stream_index,pts_time,dts_time,duration_time"
    assert "-select_streams" not in argv and argv[-1] == "/x.mkv"


def verdict(rows, stderr="", rc=0, start=0.0, duration=100.0):
    return tc.tail_check_verdict(rows, stderr, rc, start, duration, video_index=0)


def test_tail_verdicts():
    ok = verdict("0,80.0,80.0,0.04\n1,90.5,90.5,0.02\n0,91.0,N/A,0.04\n")
    assert ok.reason is None and ok.video_end == pytest.approx(91.04) and ok.end == pytest.approx(91.04)
    short = verdict("0,10.0,10.0,0.04\n0,49.9,49.9,0.1\n")
    assert "truncated rip" in short.reason and "0:00:50" in short.reason
    assert "truncated rip" in verdict("", "Could not seek", 1).reason
    damaged = verdict("0,95.0,95.0,0.04\n", "[matroska,webm @ 0x1] File ended prematurely\n")
    assert "damaged" in damaged.reason and "prematurely" in damaged.reason
    assert verdict("0,100.5,100.5,0.04\n", start=10.0).reason is None  # 100.5 >= 10 + 90


def test_a_long_subtitle_is_not_truncation():
    # video ends at 1.0 s but a subtitle runs to 1.5 s, so the container says 1.5 s
    got = verdict("0,0.96,0.96,0.04\n2,0.5,0.5,1.0\n1,0.98,0.98,0.02\n", duration=1.5)
    assert got.reason is None and got.video_end == pytest.approx(1.0) and got.end == pytest.approx(1.5)


def test_temp_path_hidden_beside_output():
    assert tc.temp_path("/lib/movies/Heat (1995).mkv") == "/lib/movies/.Heat (1995).mkv.partial"


@pytest.mark.parametrize(
    "errors, code",
    [
        (["av_interleaved_write_frame(): No space left on device"], tc.EXIT_OUTPUT),
        (["/lib/.x.mkv.partial: Permission denied"], tc.EXIT_OUTPUT),
        (["x.mkv: Invalid data found when processing input"], tc.EXIT_INPUT),
        (["Unknown encoder 'libx265'"], tc.EXIT_ENCODE),
        ([], tc.EXIT_ENCODE),
    ],
)
def test_failure_classes(errors, code):
    assert tc._classify_failure(1, errors, "/lib/.x.mkv.partial").code == code


def test_fmt_time():
    assert tc.fmt_time(3725.4) == "1:02:05"
    assert tc.fmt_time(None) == "?"


# --- publish: the finished temp becomes the library file, never over an existing one ---

def _pair(tmp_path):
    tmp = tmp_path / ".Film.mkv.partial"
    tmp.write_bytes(b"new encode")
    return tmp, tmp_path / "Film.mkv"


def test_publish_links_then_drops_the_temp(tmp_path):
    tmp, dst = _pair(tmp_path)
    ino = tmp.stat().st_ino
    assert tc.publish(str(tmp), str(dst)) == "link"
    assert dst.read_bytes() == b"new encode" and dst.stat().st_ino == ino
    assert dst.stat().st_nlink == 1 and not tmp.exists()


def test_publish_never_overwrites_even_when_a_check_said_absent(tmp_path, monkeypatch):
    # The destination appears after every check could have run: link(2) itself refuses.
    tmp, dst = _pair(tmp_path)
    dst.write_bytes(b"precious")
    monkeypatch.setattr(tc.os.path, "lexists", lambda _p: False)
    with pytest.raises(tc.TranscodeError) as err:
        tc.publish(str(tmp), str(dst))
    assert err.value.code == tc.EXIT_OUTPUT and "appeared while encoding" in err.value.reason
    assert dst.read_bytes() == b"precious"
    assert tmp.read_bytes() == b"new encode"  # the caller (transcode) removes its temp


@pytest.mark.parametrize("code", [errno.EPERM, errno.EXDEV, errno.EOPNOTSUPP])
def test_publish_falls_back_to_rename_without_hard_links(tmp_path, monkeypatch, code):
    def no_links(_src, _dst):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(tc.os, "link", no_links)
    tmp, dst = _pair(tmp_path)
    assert tc.publish(str(tmp), str(dst)) == "rename"
    assert dst.read_bytes() == b"new encode" and not tmp.exists()
    # ... and still re-checks first: an existing file is left alone
    tmp.write_bytes(b"second")
    with pytest.raises(tc.TranscodeError) as err:
        tc.publish(str(tmp), str(dst))
    assert err.value.code == tc.EXIT_OUTPUT and dst.read_bytes() == b"new encode"


def test_publish_passes_other_errors_on(tmp_path, monkeypatch):
    def broken(_src, _dst):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(tc.os, "link", broken)
    tmp, dst = _pair(tmp_path)
    with pytest.raises(OSError):
        tc.publish(str(tmp), str(dst))
    assert not dst.exists() and tmp.exists()
