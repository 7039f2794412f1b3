#!/usr/bin/env python3
"""A stand-in `makemkvcon` (and `eject`) for tests: replays robot-mode transcripts of the real
program for a disc described in a JSON file, and writes real MKV files (copies of an MKV made
by real ffmpeg) the way MakeMKV writes them: chunk by chunk into the output folder, with PRGV
progress, and a partial file left behind when a title fails.

The disc file is named by $FAKE_MAKEMKV_DISC:
  {"drive_state": 2, "device": "/dev/sr0", "disc_name": "Big Buck Bunny", "label": "BIG_BUCK_BUNNY",
   "titles": [{"duration": "1:30:00", "source": "/abs/file.mkv", "file": "title_t00.mkv", "fail": false}],
   "expired": false, "chunks": 8, "chunk_delay": 0.0, "calls": "/abs/calls.log",
   "scan_delay": 0.0, "scan_end": "full", "scan_exit": 0,
   "mkv_exit": 0, "copied_flag": "/abs/flag", "after_copy_delay": 0.0}
drive_state: 0 empty, 1 tray open, 2 disc inserted (MakeMKV's DRV states). Invoked as `eject`
(a symlink), it sets drive_state to 1, like a real tray opening.
A disc scan (`info dev:...`) prints the title list after the per-title messages and before TCOUNT,
as the real one does after reading the disc: scan_delay seconds pass there (a slow Blu-ray scan);
scan_end "killed" dies of SIGTERM there, "cut" exits there (no TCOUNT, no CINFO/TINFO); scan_exit
is the scan's exit status.
A rip (`mkv`) exits with mkv_exit after its "Copy complete" line; before that it creates the
file copied_flag names (when set) and waits after_copy_delay seconds (a stop request can land
there). A title's "write" of "missing" or "empty" counts it saved but leaves its file out or
empty (what a filesystem losing a file after MakeMKV's success looks like).

Where the transcript lines come from (formats, codes, wording; values are made up):
- MakeMKV's robot-mode documentation, https://www.makemkv.com/developers/usage.txt
  (DRV/TCOUNT/CINFO/TINFO/SINFO/MSG/PRGV/PRGT/PRGC line formats);
- attribute and message ids from makemkv-oss makemkvgui/inc/lgpl/apdefs.h (ap_iaName=2,
  ap_iaDuration=9, ap_iaDiskSize=10, ap_iaDiskSizeBytes=11, ap_iaOutputFileName=27,
  ap_iaVolumeName=32);
- real logs posted in automatic-ripping-machine issues #720 (`makemkvcon -r mkv` output: the MSG:1005
  start line, 16 DRV lines with state 256 for absent drives, MSG:3006/3007), #810 (MSG:2003 read
  errors "Scsi error - MEDIUM ERROR" before a failed title) and #1570 (MSG:3007, MSG:5085, LibreDrive
  MSG:1011), and jlesage/docker-makemkv issue #84 (the same run in human form: "Copy complete",
  "Current progress");
- the MSG:5003 "Failed to save title %1 to file %2", MSG:5036 "Copy complete. %1 titles saved." and
  MSG:5037 "Copy complete. %1 titles saved, %2 failed." forms as ARM's makemkv.py reads them;
- MSG:3025 "Title #%1 has length of %2 seconds which is less than minimum title length of %3
  seconds and was therefore skipped" (Robpol86/makemkv PR #10 log);
- MSG:5021 "This application version is too old..." for an expired beta (the code
  scripts/verify-drive.sh already treats as expired).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

VERSION = "1.18.4"
START = f'MSG:1005,0,1,"MakeMKV v{VERSION} linux(x64-release) started","%1 started","MakeMKV v{VERSION} linux(x64-release)"'
EXPIRED = ('MSG:5021,260,1,"This application version is too old. Please download the latest version at '
           'http://www.makemkv.com/ or enter a registration key to continue using the current version.",'
           '"This application version is too old. Please download the latest version at %1 or enter a '
           'registration key to continue using the current version.","http://www.makemkv.com/"')


def q(text) -> str:
    return '"' + str(text).replace('"', "'") + '"'


def load() -> tuple[str, dict]:
    path = os.environ["FAKE_MAKEMKV_DISC"]
    with open(path, encoding="utf-8") as fh:
        return path, json.load(fh)


def seconds(text: str) -> int:
    total = 0
    for part in text.split(":"):
        total = total * 60 + int(part)
    return total


def out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def drives(disc: dict) -> None:
    state = disc.get("drive_state", 2)
    label = disc.get("label", "") if state == 2 else ""
    out(f'DRV:0,{state},999,{12 if state == 2 else 0},{q(disc.get("drive_name", "BD-RE HL-DT-ST BD-RE WH16NS60 1.02"))},'
        f'{q(label)},{q(disc.get("device", "/dev/sr0"))}')
    for i in range(1, 16):
        out(f'DRV:{i},256,999,0,"","",""')


def titles_for(disc: dict, minlength: int) -> list[dict]:
    kept = []
    for n, t in enumerate(disc.get("titles", [])):
        secs = seconds(t["duration"])
        playlist = f"{800 + n:05d}.mpls"
        if secs < minlength:
            out(f'MSG:3025,0,3,"Title #{playlist} has length of {secs} seconds which is less than minimum title '
                f'length of {minlength} seconds and was therefore skipped","Title #%1 has length of %2 seconds '
                f'which is less than minimum title length of %3 seconds and was therefore skipped",'
                f'"{playlist}","{secs}","{minlength}"')
            continue
        idx = len(kept)
        out(f'MSG:3307,0,2,"File {playlist} was added as title #{idx}","File %1 was added as title #%2",'
            f'"{playlist}","{idx}"')
        size = os.path.getsize(t["source"]) if t.get("source") else t.get("bytes", 0)
        kept.append({**t, "index": idx, "playlist": playlist, "bytes": size,
                     "file": t.get("file") or f"title_t{idx:02d}.mkv"})
    return kept


def info(disc: dict, minlength: int, source: str) -> int:
    drives(disc)
    if source == "disc:9999":
        return 0
    if disc.get("drive_state", 2) != 2:
        out('MSG:5010,0,0,"Failed to open disc","Failed to open disc"')
        out("TCOUNT:0")
        return 0
    out('MSG:3007,0,0,"Using direct disc access mode","Using direct disc access mode"')
    out('MSG:5085,0,0,"Loaded content hash table, will verify integrity of M2TS files.",'
        '"Loaded content hash table, will verify integrity of M2TS files."')
    kept = titles_for(disc, minlength)
    time.sleep(float(disc.get("scan_delay", 0.0)))
    if disc.get("scan_end") == "killed":
        os.kill(os.getpid(), signal.SIGTERM)
    if disc.get("scan_end") == "cut":
        return int(disc.get("scan_exit", 0))
    out(f"TCOUNT:{len(kept)}")
    out('CINFO:1,6209,"Blu-ray disc"')
    out(f'CINFO:2,0,{q(disc.get("disc_name", ""))}')
    out('CINFO:28,0,"eng"')
    out(f'CINFO:30,0,{q(disc.get("disc_name", ""))}')
    out(f'CINFO:32,0,{q(disc.get("label", ""))}')
    out('CINFO:33,0,"0"')
    for t in kept:
        i = t["index"]
        out(f'TINFO:{i},2,0,{q(disc.get("disc_name", ""))}')
        out(f'TINFO:{i},8,0,"12"')
        out(f'TINFO:{i},9,0,{q(t["duration"])}')
        out(f'TINFO:{i},10,0,"{t["bytes"] / 1e9:.1f} GB"')
        out(f'TINFO:{i},11,0,"{t["bytes"]}"')
        out(f'TINFO:{i},16,0,"{t["playlist"]}"')
        out(f'TINFO:{i},25,0,"1"')
        out(f'TINFO:{i},27,0,{q(t["file"])}')
        out(f'TINFO:{i},30,0,"{disc.get("disc_name", "")} - 12 chapter(s) , {t["bytes"] / 1e9:.1f} GB"')
        out(f'TINFO:{i},33,0,"0"')
        out(f'SINFO:{i},0,1,6201,"Video"')
        out(f'SINFO:{i},0,5,0,"V_MPEG4/ISO/AVC"')
        out(f'SINFO:{i},1,1,6202,"Audio"')
        out(f'SINFO:{i},1,3,0,"eng"')
    return int(disc.get("scan_exit", 0))


def mkv(disc: dict, minlength: int, which: str, outdir: str) -> int:
    drives(disc)
    if disc.get("drive_state", 2) != 2:
        out('MSG:5010,0,0,"Failed to open disc","Failed to open disc"')
        return 1
    out('MSG:3007,0,0,"Using direct disc access mode","Using direct disc access mode"')
    kept = titles_for(disc, minlength)
    if which != "all":
        kept = [t for t in kept if t["index"] == int(which)]
    out(f'MSG:5014,0,2,"Saving {len(kept)} titles into directory file://{outdir}","Saving %1 titles into '
        f'directory %2","{len(kept)}","file://{outdir}"')
    out('PRGT:5018,0,"Saving all titles to MKV files"')
    chunks = int(disc.get("chunks", 8))
    delay = float(disc.get("chunk_delay", 0.0))
    total_bytes = sum(t["bytes"] for t in kept) or 1
    done_bytes, saved, failed = 0, 0, 0
    for t in kept:
        out('PRGC:5017,0,"Saving to MKV file"')
        dest = os.path.join(outdir, t["file"])
        with open(t["source"], "rb") as src:
            data = src.read()
        step = max(1, len(data) // chunks)
        stop_at = len(data) // 2 if t.get("fail") else len(data)
        if t.get("write") in ("missing", "empty"):
            if t["write"] == "empty":
                open(dest, "wb").close()
            out(f"PRGV:65536,{int(65536 * done_bytes / total_bytes)},65536")
            saved += 1
            continue
        with open(dest, "wb") as fh:
            for pos in range(0, stop_at, step):
                piece = data[pos:min(pos + step, stop_at)]
                fh.write(piece)
                fh.flush()
                done_bytes += len(piece)
                cur = int(65536 * min(pos + step, len(data)) / max(len(data), 1))
                out(f"PRGV:{cur},{int(65536 * done_bytes / total_bytes)},65536")
                if delay:
                    time.sleep(delay)
        if t.get("fail"):
            for _ in range(3):
                out('MSG:2003,0,3,"Error \'Scsi error - MEDIUM ERROR:L-EC UNCORRECTABLE ERROR\' occurred while reading '
                    f'\'/BDMV/STREAM/00055.m2ts\' at offset \'1183580160\'","Error \'%1\' occurred while reading \'%2\' '
                    'at offset \'%3\'","Scsi error - MEDIUM ERROR:L-EC UNCORRECTABLE ERROR","/BDMV/STREAM/00055.m2ts",'
                    '"1183580160"')
            out(f'MSG:5003,0,2,"Failed to save title {t["index"]} to file {dest}","Failed to save title %1 to file '
                f'%2","{t["index"]}","{dest}"')
            failed += 1
        else:
            saved += 1
    if failed:
        out(f'MSG:5037,516,2,"Copy complete. {saved} titles saved, {failed} failed.","Copy complete. %1 titles '
            f'saved, %2 failed.","{saved}","{failed}"')
    else:
        out(f'MSG:5036,516,1,"Copy complete. {saved} titles saved.","Copy complete. %1 titles saved.","{saved}"')
    if disc.get("copied_flag"):
        open(disc["copied_flag"], "w").close()
    time.sleep(float(disc.get("after_copy_delay", 0.0)))
    return int(disc.get("mkv_exit", 0))  # like the real program: a failed title does not change the exit status


def main(argv: list[str]) -> int:
    path, disc = load()
    if disc.get("calls"):
        with open(disc["calls"], "a", encoding="utf-8") as fh:
            fh.write(json.dumps([os.path.basename(sys.argv[0]), *argv]) + "\n")
    if os.path.basename(sys.argv[0]) == "eject":
        disc["drive_state"] = 1
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(disc, fh)
        os.replace(tmp, path)
        return 0
    minlength, rest = 120, []  # MakeMKV's default minimum title length
    for arg in argv:
        if arg.startswith("--minlength="):
            minlength = int(arg.split("=", 1)[1])
        elif arg.startswith("-"):
            continue
        else:
            rest.append(arg)
    out(START)
    if disc.get("expired"):
        out(EXPIRED)
        return 0
    if rest[:1] == ["info"]:
        return info(disc, minlength, rest[1])
    if rest[:1] == ["mkv"]:
        return mkv(disc, minlength, rest[2], rest[3])
    out(f'MSG:5009,0,0,"Unknown command {rest}","Unknown command"')
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
