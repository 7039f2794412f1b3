"""Optional notifications through Apprise: the library if importable, else its CLI, else none.

Notifications never fail a job: every problem here is logged and swallowed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Callable

TIMEOUT = 30


class Notifier:
    def __init__(self, urls: tuple[str, ...] | list[str], log: Callable[[str], None]):
        self.urls = list(urls)
        self.log = log
        self.mode = "off"
        self._apprise = None
        if not self.urls:
            return
        try:
            import apprise  # type: ignore[import-not-found]

            self._apprise = apprise
            self.mode = "library"
        except ImportError:
            cli = shutil.which("apprise")
            if cli:
                self.mode = "cli"
                self._cli = cli
            else:
                self.log("notifications disabled: apprise_urls is set but apprise is not installed "
                         "(apt-get install apprise)")

    def describe(self) -> str:
        if not self.urls:
            return "notifications off (no apprise_urls)"
        return {"library": "notifications via the apprise library",
                "cli": "notifications via the apprise command",
                "off": "notifications disabled (apprise not installed)"}[self.mode]

    def send(self, title: str, body: str) -> bool:
        try:
            if self.mode == "library":
                obj = self._apprise.Apprise()
                for url in self.urls:
                    obj.add(url)
                ok = bool(obj.notify(title=title, body=body))
            elif self.mode == "cli":
                # URLs carry tokens: in APPRISE_URLS (which the apprise CLI reads when given no
                # URL arguments) they stay out of argv, which every user can read in ps.
                env = {**os.environ, "APPRISE_URLS": " ".join(self.urls)}
                run = subprocess.run([self._cli, "-t", title, "-b", body], env=env, stdin=subprocess.DEVNULL,
                                     capture_output=True, timeout=TIMEOUT, check=False)
                ok = run.returncode == 0
                if not ok:
                    detail = run.stderr.decode("utf-8", "replace").strip().splitlines()
                    self.log(f"notification failed: {detail[-1] if detail else run.returncode}")
                    return False
            else:
                return False
        except Exception as exc:  # noqa: BLE001 - a notification must never stop the service
            self.log(f"notification failed: {exc}")
            return False
        if not ok:
            self.log("notification failed (apprise reported no success)")
        return ok
