"""Read-only adapter for media-rip's SQLite store, so the status page can list rips.

media-rip (the ripper's service) keeps its own table of rips. This module only reads it,
tolerantly: whichever of the known column names the table has are shown, nothing is ever
written, and a missing or unreadable store means "no rips to show" (None), never an error
on the page.
"""

from __future__ import annotations

import os
import sqlite3
from urllib.parse import quote

TABLES = ("rips", "discs", "jobs")
# what the page shows -> column names media-rip may use for it, first match wins
COLUMNS = {
    "id": ("id",),
    "disc": ("disc_name", "disc", "name", "label", "title"),
    "state": ("state", "status", "outcome"),
    "titles": ("titles", "title_count"),
    "size": ("bytes", "size", "size_bytes"),
    "reason": ("reason", "error", "failure"),
    "started": ("started", "created", "started_at"),
    "finished": ("finished", "finished_at", "updated"),
    "folder": ("folder", "dest", "output", "path"),
}


def read_rips(path: str, limit: int = 25) -> list[dict] | None:
    """The newest rips (dicts with the COLUMNS keys present), or None when there is no store."""
    if not path or not os.path.isfile(path):
        return None
    try:
        db = sqlite3.connect("file:" + quote(os.path.abspath(path)) + "?mode=ro", uri=True, timeout=2)
    except sqlite3.Error:
        return None
    try:
        names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        table = next((t for t in TABLES if t in names), None)
        if table is None:
            return None
        have = [r[1] for r in db.execute(f"PRAGMA table_info({table})")]
        chosen = {}
        for key, candidates in COLUMNS.items():
            col = next((c for c in candidates if c in have), None)
            if col is not None:
                chosen[key] = col
        if not chosen:
            return None
        order = chosen.get("id") or chosen.get("started") or "rowid"
        sql = (f"SELECT {', '.join(f'{c} AS {k}' for k, c in chosen.items())} FROM {table} "
               f"ORDER BY {order} DESC LIMIT {int(limit)}")
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute(sql)]
    except sqlite3.Error:
        return None
    finally:
        db.close()
