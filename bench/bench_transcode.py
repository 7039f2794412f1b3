"""Benchmark media-transcode and media-pipeline (run by `make bench`).

1. Wrapper overhead: `media-transcode IN OUT` against the very ffmpeg command it runs
   (same argv, same input), as the ratio of median wall times over N interleaved runs.
   Target: <= 1.02.
2. Queue throughput: many small rips through `media-pipeline run --once`, in files/s,
   and the service's cost per file beyond the bare ffmpeg encodes.

Prints a table and writes bench-results/transcode.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from media_pipeline import __version__, ffargs  # noqa: E402
from media_pipeline.transcode import probe  # noqa: E402

ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def make_rip(path: Path, size: str, seconds: float) -> Path:
    """A rip-like MKV: H.264 video, English AC-3 + Bulgarian AAC + French FLAC audio,
    English and French subtitles, chapters, a title."""
    srt = path.with_suffix(".srt")
    srt.write_text("1\n00:00:00,500 --> 00:00:01,500\nHello\n")
    meta = path.with_suffix(".meta")
    meta.write_text(f";FFMETADATA1\ntitle=Bench\n[CHAPTER]\nTIMEBASE=1/1000\nSTART=0\nEND={int(seconds * 1000)}\n"
                    "title=All\n")
    argv = ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=25:duration={seconds}"]
    for f in (300, 400, 500):
        argv += ["-f", "lavfi", "-i", f"sine=frequency={f}:duration={seconds}:sample_rate=48000"]
    argv += ["-i", str(srt), "-i", str(srt), "-i", str(meta),
             "-map", "0:v", "-map", "1:a", "-map", "2:a", "-map", "3:a", "-map", "4:s", "-map", "5:s",
             "-map_metadata", "6", "-map_chapters", "6",
             "-c:v", "libx264", "-preset", "ultrafast", "-g", "25",
             "-c:a:0", "ac3", "-c:a:1", "aac", "-c:a:2", "flac", "-c:s", "srt",
             "-metadata:s:a:0", "language=eng", "-metadata:s:a:1", "language=bul",
             "-metadata:s:a:2", "language=fre", "-metadata:s:s:0", "language=eng",
             "-metadata:s:s:1", "language=fre", str(path)]
    subprocess.run(argv, check=True)
    srt.unlink()
    meta.unlink()
    return path


def timed(argv: list[str], **kw) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV, **kw)
    return time.perf_counter() - t0


def bench_overhead(work: Path, runs: int, size: str, seconds: float, preset: str, crf: int) -> dict:
    src = make_rip(work / "input.mkv", size, seconds)
    out_dir = work / "out"
    out_dir.mkdir()
    wrapped_out, bare_out = out_dir / "wrapped.mkv", out_dir / "bare.mkv"
    opts = ffargs.EncodeOptions(languages=("eng", "bul"), preset=preset, crf=crf)
    bare, _ = ffargs.build_args(probe(str(src)), opts, str(src), str(bare_out))
    wrapped = [sys.executable, "-m", "media_pipeline.transcode", str(src), str(wrapped_out),
               "--languages", "eng,bul", "--preset", preset, "--crf", str(crf), "--config", str(work / "empty.json")]
    (work / "empty.json").write_text("{}")

    def one(kind: str) -> float:
        target = wrapped_out if kind == "wrapper" else bare_out
        target.unlink(missing_ok=True)
        return timed(wrapped if kind == "wrapper" else bare)

    one("bare"), one("wrapper")  # warm the page cache and the encoder
    times: dict[str, list[float]] = {"bare": [], "wrapper": []}
    for i in range(runs):
        order = ("bare", "wrapper") if i % 2 == 0 else ("wrapper", "bare")  # cancel drift
        for kind in order:
            times[kind].append(one(kind))
    med_bare, med_wrapped = statistics.median(times["bare"]), statistics.median(times["wrapper"])
    return {
        "input": {"size": size, "seconds": seconds, "bytes": src.stat().st_size},
        "preset": preset, "crf": crf, "runs": runs,
        "bare_seconds": times["bare"], "wrapper_seconds": times["wrapper"],
        "bare_median": med_bare, "wrapper_median": med_wrapped,
        "overhead_seconds": med_wrapped - med_bare,
        "ratio": med_wrapped / med_bare,
        "bare_command": bare,
    }


def bench_fixed_cost(work: Path, runs: int) -> dict:
    """The wrapper's fixed cost per file (Python start-up, ffprobe, rename), on a tiny input."""
    src = make_rip(work / "tiny.mkv", "64x36", 1.0)
    out, bare_out = work / "tiny-wrapped.mkv", work / "tiny-bare.mkv"
    opts = ffargs.EncodeOptions(languages=("eng",), preset="ultrafast", crf=35)
    bare, _ = ffargs.build_args(probe(str(src)), opts, str(src), str(bare_out))
    wrapped = [sys.executable, "-m", "media_pipeline.transcode", str(src), str(out), "--languages", "eng",
               "--preset", "ultrafast", "--crf", "35", "--config", str(work / "empty.json")]
    diffs = []
    for _ in range(runs):
        bare_out.unlink(missing_ok=True)
        out.unlink(missing_ok=True)
        b = timed(bare)
        w = timed(wrapped)
        diffs.append(w - b)
    return {"runs": runs, "overhead_seconds": statistics.median(diffs), "samples": diffs}


def bench_queue(work: Path, files: int) -> dict:
    base = work / "queue"
    staging, movies, tv, state = (base / d for d in ("staging", "movies", "tv", "state"))
    for d in (staging, movies, tv, state):
        d.mkdir(parents=True)
    one = make_rip(work / "small.mkv", "64x36", 1.0)
    for n in range(files):
        shutil.copyfile(one, staging / f"Small Film {n:03d}.mkv")
    config = base / "config.json"
    config.write_text(json.dumps({
        "staging": str(staging), "movies": str(movies), "tv": str(tv), "db": str(state / "jobs.sqlite3"),
        "metrics_textfile": str(state / "metrics.prom"), "stable_seconds": 0, "preset": "ultrafast",
        "crf": 35, "languages": ["eng"], "poll_seconds": 1,
    }))
    opts = ffargs.EncodeOptions(languages=("eng",), preset="ultrafast", crf=35)
    bare_argv, _ = ffargs.build_args(probe(str(one)), opts, str(one), str(work / "small-out.mkv"))
    bare = []
    for _ in range(5):
        (work / "small-out.mkv").unlink(missing_ok=True)
        bare.append(timed(bare_argv))
    wall = timed([sys.executable, "-m", "media_pipeline.service", "--config", str(config), "run", "--once"])
    done = len(list(movies.glob("*.mkv")))
    if done != files:
        raise SystemExit(f"queue bench: only {done}/{files} files reached the library")
    per_file = wall / files
    return {
        "files": files, "wall_seconds": wall, "files_per_second": files / wall,
        "seconds_per_file": per_file, "bare_ffmpeg_seconds_per_file": statistics.median(bare),
        "service_overhead_seconds_per_file": per_file - statistics.median(bare),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5, help="timed runs of each command (median)")
    p.add_argument("--size", default="1280x720", help="input frame size")
    p.add_argument("--seconds", type=float, default=20.0, help="input duration")
    p.add_argument("--preset", default="superfast")
    p.add_argument("--crf", type=int, default=26)
    p.add_argument("--files", type=int, default=40, help="small rips for the queue benchmark")
    p.add_argument("--quick", action="store_true", help="small input, 3 runs, 10 files (a smoke run)")
    p.add_argument("--out", default=str(REPO / "bench-results" / "transcode.json"))
    args = p.parse_args()
    if args.quick:
        args.runs, args.size, args.seconds, args.files = 3, "640x360", 8.0, 10
    for tool in ("ffmpeg", "ffprobe"):
        if not shutil.which(tool):
            print(f"bench_transcode: {tool} not found", file=sys.stderr)
            return 2

    work = Path(tempfile.mkdtemp(prefix="bench-transcode-"))
    try:
        overhead = bench_overhead(work, args.runs, args.size, args.seconds, args.preset, args.crf)
        fixed = bench_fixed_cost(work, max(args.runs * 2, 10))
        queue = bench_queue(work, args.files)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    ffmpeg_version = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True).stdout.split("\n")[0]
    result = {
        "version": __version__, "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(), "ffmpeg": ffmpeg_version},
        "overhead": overhead, "fixed_cost": fixed, "queue": queue, "target_ratio": 1.02,
        # the ratio a bare encode of N seconds would see from the fixed cost alone
        "encode_seconds_for_1_02": fixed["overhead_seconds"] / 0.02,
        "ok": overhead["ratio"] <= 1.02,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")

    o, q = overhead, queue
    rows = [
        ("input", f"{o['input']['size']} {o['input']['seconds']:g}s, x265 {o['preset']} crf {o['crf']}"),
        ("bare ffmpeg, median", f"{o['bare_median']:.3f} s ({o['runs']} runs)"),
        ("media-transcode, median", f"{o['wrapper_median']:.3f} s"),
        ("overhead", f"{o['overhead_seconds'] * 1000:+.0f} ms"),
        ("ratio (target <= 1.02)", f"{o['ratio']:.4f} {'ok' if result['ok'] else 'OVER'}"),
        ("fixed cost per file", f"{fixed['overhead_seconds'] * 1000:.0f} ms (median of {fixed['runs']}, tiny input)"),
        ("1.02 reached from", f"{result['encode_seconds_for_1_02']:.1f} s of bare encode"),
        ("queue: files", f"{q['files']} x 1 s 64x36"),
        ("queue: throughput", f"{q['files_per_second']:.2f} files/s"),
        ("queue: per file", f"{q['seconds_per_file'] * 1000:.0f} ms (bare ffmpeg {q['bare_ffmpeg_seconds_per_file'] * 1000:.0f} ms)"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k.ljust(width)}  {v}")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
