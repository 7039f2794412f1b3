"""Where a finished rip goes in the library: tv/<Show>/Season NN/ or movies/.

Rule: a name with S01E02 or 1x02 is an episode; anything else is a movie. MakeMKV's
default names ("title_t00.mkv", "DISC_NAME_t03.mkv") carry no title, so a rip in
a folder named after the film takes the folder's name.
"""

from __future__ import annotations

import os
import re

_EPISODE = re.compile(
    r"(?i)(?P<show>.*?)[\s._-]*"
    r"(?:\bS(?P<season>\d{1,2})[\s._-]*E(?P<episode>\d{1,3})(?!\d)"
    r"|\b(?P<season2>\d{1,2})x(?P<episode2>\d{2,3})(?!\d))"
)
_SEASON_DIR = re.compile(r"(?i)(season|series|staffel|s)[\s._-]*\d{1,2}")
_MAKEMKV = re.compile(r"(?i)(?P<base>.*?)_t(?P<n>\d{2,3})")


def _clean(text: str) -> str:
    text = re.sub(r"[._]+", " ", text)
    return re.sub(r"\s+", " ", text).strip(" -")


def library_stem(staging: str, source: str) -> str:
    """The library name (no extension) of a rip found under staging."""
    rel = os.path.relpath(source, staging)
    stem = os.path.splitext(os.path.basename(rel))[0]
    folder = os.path.basename(os.path.dirname(rel)) if os.path.dirname(rel) else ""
    m = _MAKEMKV.fullmatch(stem)
    if m:
        base, n = m["base"], m["n"]
        if base.lower() in ("", "title") and folder:
            base = folder
        elif base.lower() in ("", "title"):
            return stem
        stem = base if int(n) == 0 else f"{base} - t{n}"
    return stem.lstrip(".") or "untitled"


def staged_name(staging: str, source: str) -> str:
    """How a job names its rip: the path under staging ("Some Disc/title_t00.mkv": media-rip
    publishes every title as title_tNN.mkv in the disc's folder, so the folder is what tells two
    rips apart); the basename when the source is not under staging."""
    root = os.path.normpath(staging) if staging else ""
    path = os.path.normpath(source)
    if root and root != os.sep and path.startswith(root.rstrip(os.sep) + os.sep):
        return os.path.relpath(path, root)
    return os.path.basename(source)


def episode(stem: str) -> tuple[str, int] | None:
    """(show, season) when the name looks like an episode, else None."""
    m = _EPISODE.search(stem)
    if not m:
        return None
    season = int(m["season"] if m["season"] is not None else m["season2"])
    return _clean(m["show"]), season


def destination(staging: str, movies: str, tv: str, source: str) -> str:
    """Absolute path of the library file for a rip."""
    stem = library_stem(staging, source)
    ep = episode(stem)
    if ep is None:
        return os.path.join(movies, f"{stem}.mkv")
    show, season = ep
    if not show:  # "Show Name/Season 1/S01E02.mkv": the nearest folder that is not a season
        rel_dir = os.path.dirname(os.path.relpath(source, staging))
        parts = [p for p in rel_dir.split(os.sep) if p and not _SEASON_DIR.fullmatch(p)]
        show = _clean(parts[-1]) if parts else ""
    return os.path.join(tv, show or "Unknown Show", f"Season {season:02d}", f"{stem}.mkv")
