"""A stand-in drive for media-rip: tests/media/fake_makemkvcon.py as `makemkvcon` and `eject`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.media.helpers import ENV

FAKE = Path(__file__).with_name("fake_makemkvcon.py")


class Drive:
    """A staging folder, a config for media-rip and a disc file the stand-in reads."""

    def __init__(self, base: Path, **config):
        self.base = base
        self.staging = base / "staging"
        self.staging.mkdir(parents=True, exist_ok=True)
        self.bin = base / "bin"
        self.bin.mkdir(exist_ok=True)
        shutil.copy(FAKE, self.bin / "makemkvcon")
        (self.bin / "makemkvcon").chmod(0o755)
        if not (self.bin / "eject").exists():
            (self.bin / "eject").symlink_to(self.bin / "makemkvcon")
        self.disc_file = base / "disc.json"
        self.calls_file = base / "calls.log"
        self.db = base / "state" / "rips.sqlite3"
        self.config = base / "rip.json"
        self.settings = {"staging": str(self.staging), "device": "/dev/sr0", "min_length": 600,
                         "makemkvcon": str(self.bin / "makemkvcon"), "eject_command": str(self.bin / "eject"),
                         "db": str(self.db), "metrics_textfile": str(base / "state" / "rip.prom"),
                         "poll_seconds": 0.1}
        self.settings.update(config)
        self.config.write_text(json.dumps(self.settings))
        self.env = {**ENV, "FAKE_MAKEMKV_DISC": str(self.disc_file), "HOME": str(base)}
        self.insert(None)

    def insert(self, name: str | None, titles=(), label: str | None = None, **extra) -> None:
        """Put a disc in (name None: an empty closed drive). titles: (duration, source MKV[, fail])."""
        disc = {"drive_state": 0 if name is None else 2, "device": "/dev/sr0", "calls": str(self.calls_file),
                "disc_name": name or "", "label": label if label is not None else (name or "").upper().replace(" ", "_"),
                "titles": [{"duration": t[0], "source": str(t[1]), "fail": bool(t[2]) if len(t) > 2 else False}
                           for t in titles]}
        disc.update(extra)
        tmp = self.disc_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(disc))
        os.replace(tmp, self.disc_file)

    def disc(self) -> dict:
        return json.loads(self.disc_file.read_text())

    def set(self, **changes) -> None:
        disc = self.disc()
        disc.update(changes)
        tmp = self.disc_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(disc))
        os.replace(tmp, self.disc_file)

    def calls(self) -> list[list[str]]:
        if not self.calls_file.exists():
            return []
        return [json.loads(line) for line in self.calls_file.read_text().splitlines()]

    def mkv_calls(self) -> int:
        return sum(1 for c in self.calls() if "mkv" in c)

    def argv(self, *args) -> list[str]:
        return [sys.executable, "-m", "media_pipeline.rip", "--config", str(self.config), *map(str, args)]

    def rip(self, *args, timeout=120) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(*args), capture_output=True, text=True, env=self.env, timeout=timeout,
                              check=False)

    def once(self, *args, timeout=120) -> subprocess.CompletedProcess:
        return self.rip("once", *args, timeout=timeout)

    def start(self) -> subprocess.Popen:
        return subprocess.Popen(self.argv("run"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=self.env)

    def status(self) -> list[dict]:
        run = self.rip("status", "--json")
        assert run.returncode == 0, run.stderr
        return json.loads(run.stdout)

    def published(self) -> dict[str, list[str]]:
        """Folders in staging and their files; hidden working folders are listed as such (media-rip's
        status folder, .media-rip/, is not: the status page's file, see status_file())."""
        return {d.name: sorted(p.name for p in d.iterdir()) for d in sorted(self.staging.iterdir())
                if d.name != ".media-rip"}

    def status_file(self) -> dict:
        """The status file media-rip keeps in staging for the status page (media_pipeline/rips.py)."""
        return json.loads((self.staging / ".media-rip" / "status.json").read_text())
