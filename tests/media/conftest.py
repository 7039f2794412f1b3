"""Fixtures for the real-ffmpeg tests; helpers live in tests/media/helpers.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.media.helpers import make_rip


def pytest_collection_modifyitems(config, items):
    if shutil.which("ffmpeg") and shutil.which("ffprobe"):
        return
    skip = pytest.mark.skip(reason="ffmpeg/ffprobe not installed")
    for item in items:
        if "ffmpeg" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def rips(tmp_path_factory) -> dict[str, Path]:
    """Rips shared by the read-only tests (each test copies what it changes)."""
    d = tmp_path_factory.mktemp("rips")
    return {
        # every codec, languages in 3-letter form, one untagged track, subtitles in three languages
        "full": make_rip(d / "full.mkv",
                         audio=(("eng", "aac"), ("bul", "ac3"), ("fre", "flac"), ("jpn", "opus"), (None, "aac")),
                         subs=("eng", "fre", "bul"), audio_titles=("Main English", None, None, None, None)),
        # the same languages in 2-letter form, Bulgarian first
        "two_letter": make_rip(d / "two_letter.mkv", audio=(("bg", "opus"), ("fr", "ac3"), ("en", "flac")),
                               subs=("en", "ja")),
        # nothing in eng/bul
        "foreign": make_rip(d / "foreign.mkv", audio=(("jpn", "ac3"), ("fra", "flac")), subs=("jpn",)),
        "no_subs": make_rip(d / "no_subs.mkv", audio=(("eng", "ac3"),), chapters=False, title=None),
        "slow": make_rip(d / "slow.mkv", audio=(("eng", "aac"),), duration=10, size="320x180"),
        "four": make_rip(d / "four.mkv", audio=(("eng", "aac"),), duration=4, size="160x90"),
    }
