"""Benchmark the rip-to-library overhead of the tools themselves (run by `make bench`).

A stand-in drive (tests/media/fake_makemkvcon.py) "rips" a real MKV made by ffmpeg; then:

  tools     `media-rip once` (scan, rip, publish with markers) + `media-pipeline run --once`
            (finds the marked rip, transcodes, publishes to movies/)
  baseline  the same stand-in makemkvcon calls run directly (drive list, disc scan, rip into a
            folder) + the bare ffmpeg command media-transcode runs for that file

overhead = median(tools) - median(baseline), over N interleaved runs: what media-rip and
media-pipeline add between a disc and a library file, beyond MakeMKV's and ffmpeg's own work.
With a real drive the rip itself takes 20-60 minutes; this figure is what is added to it.
Prints a table and writes bench-results/rip.json.
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

from bench.bench_transcode import make_rip  # noqa: E402
from media_pipeline import __version__, ffargs  # noqa: E402
from media_pipeline.transcode import probe  # noqa: E402

FAKE = REPO / "tests" / "media" / "fake_makemkvcon.py"
PRESET, CRF = "ultrafast", 30


def run(argv: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=4.0, help="length of the ripped title")
    ap.add_argument("--out", default=str(REPO / "bench-results" / "rip.json"))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-rip-"))
    try:
        src = make_rip(work / "title.mkv", "320x180", args.seconds)
        mkv = work / "bin" / "makemkvcon"
        mkv.parent.mkdir()
        shutil.copy(FAKE, mkv)
        mkv.chmod(0o755)
        disc = work / "disc.json"
        disc.write_text(json.dumps({"drive_state": 2, "disc_name": "Bench Disc", "label": "BENCH_DISC",
                                    "titles": [{"duration": "1:40:00", "source": str(src)}]}))
        env = {**os.environ, "PYTHONPATH": str(REPO), "FAKE_MAKEMKV_DISC": str(disc), "HOME": str(work)}
        opts = ffargs.EncodeOptions(languages=("eng", "bul"), preset=PRESET, crf=CRF)
        tools, base = [], []
        for n in range(args.runs):
            root = work / f"run{n}"
            staging, movies, tv, state = (root / d for d in ("staging", "movies", "tv", "state"))
            for d in (staging, movies, tv, state):
                d.mkdir(parents=True)
            rip_cfg, pipe_cfg = root / "rip.json", root / "pipe.json"
            # a fixed node: this machine has no drive for `drive: auto` to find (the stand-in lists the disc there)
            rip_cfg.write_text(json.dumps({"staging": str(staging), "makemkvcon": str(mkv), "min_length": 600,
                                           "device": "/dev/sr0",
                                           "db": str(state / "rips.sqlite3"), "metrics_textfile": ""}))
            pipe_cfg.write_text(json.dumps({"staging": str(staging), "movies": str(movies), "tv": str(tv),
                                            "db": str(state / "jobs.sqlite3"), "metrics_textfile": "",
                                            "languages": ["eng", "bul"], "preset": PRESET, "crf": CRF,
                                            "require_marker": True, "stable_seconds": 3600}))

            def with_tools() -> float:
                t = run([sys.executable, "-m", "media_pipeline.rip", "--config", str(rip_cfg), "once"], env)
                t += run([sys.executable, "-m", "media_pipeline.service", "--config", str(pipe_cfg), "run", "--once"],
                         env)
                assert (movies / "Bench Disc.mkv").exists(), "the rip did not reach the library"
                return t

            def baseline() -> float:
                out = root / "bare"
                out.mkdir()
                t = run([str(mkv), "-r", "--cache=1", "info", "disc:9999"], env)
                t += run([str(mkv), "-r", "--cache=1", "--minlength=600", "info", "dev:/dev/sr0"], env)
                t += run([str(mkv), "-r", "--progress=-same", "--minlength=600", "mkv", "dev:/dev/sr0", "all", str(out)],
                         env)
                ripped = out / "title_t00.mkv"
                argv, _ = ffargs.build_args(probe(str(ripped)), opts, str(ripped), str(out / "lib.mkv"))
                return t + run(argv, env)

            # interleaved, alternating which goes first, so drift hits both
            pair = (with_tools, baseline) if n % 2 == 0 else (baseline, with_tools)
            for fn in pair:
                (tools if fn is with_tools else base).append(fn())
        t_med, b_med = statistics.median(tools), statistics.median(base)
        result = {
            "version": __version__, "host": platform.node(), "cpus": os.cpu_count(), "runs": args.runs,
            "title_seconds": args.seconds, "tools_median_s": round(t_med, 3), "baseline_median_s": round(b_med, 3),
            "overhead_s": round(t_med - b_med, 3), "tools_s": [round(x, 3) for x in tools],
            "baseline_s": [round(x, 3) for x in base],
        }
        print(f"rip-to-library, stand-in drive, {args.seconds:g} s title, median of {args.runs}")
        print(f"  media-rip once + media-pipeline run --once   {t_med:7.3f} s")
        print(f"  stand-in makemkvcon calls + bare ffmpeg       {b_med:7.3f} s")
        print(f"  overhead of the tools                         {t_med - b_med:7.3f} s")
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
