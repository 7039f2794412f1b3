"""Library destinations: tv/<Show>/Season NN/ for episodes, movies/ for the rest."""

import pytest

from media_pipeline import naming
from media_pipeline.naming import destination, episode, library_stem

S, M, T = "/pool/staging", "/pool/movies", "/pool/tv"


@pytest.mark.parametrize(
    "rel, expected",
    [
        ("Heat (1995).mkv", "/pool/movies/Heat (1995).mkv"),
        ("Amélie 'Le Fabuleux' \"Destin\" 日本.mkv", "/pool/movies/Amélie 'Le Fabuleux' \"Destin\" 日本.mkv"),
        ("Show.Name.S01E02.mkv", "/pool/tv/Show Name/Season 01/Show.Name.S01E02.mkv"),
        ("The Wire s3e07 Back Burners.mkv", "/pool/tv/The Wire/Season 03/The Wire s3e07 Back Burners.mkv"),
        ("Firefly - 1x05 - Safe.mkv", "/pool/tv/Firefly/Season 01/Firefly - 1x05 - Safe.mkv"),
        ("Dark/Season 2/S02E01.mkv", "/pool/tv/Dark/Season 02/S02E01.mkv"),
        ("S10E01.mkv", "/pool/tv/Unknown Show/Season 10/S10E01.mkv"),
        ("Heat (1995)/title_t00.mkv", "/pool/movies/Heat (1995).mkv"),
        ("Heat (1995)/title_t03.mkv", "/pool/movies/Heat (1995) - t03.mkv"),
        ("HEAT_t00.mkv", "/pool/movies/HEAT.mkv"),
        ("title_t00.mkv", "/pool/movies/title_t00.mkv"),
        ("Blade Runner 2049.mkv", "/pool/movies/Blade Runner 2049.mkv"),
        ("1917.mkv", "/pool/movies/1917.mkv"),
        ("Mad Max 2x4.mkv", "/pool/movies/Mad Max 2x4.mkv"),
    ],
)
def test_destination(rel, expected):
    assert destination(S, M, T, f"{S}/{rel}") == expected


def test_episode():
    assert episode("Show S01E02") == ("Show", 1)
    assert episode("Show 12x103") == ("Show", 12)
    assert episode("Movie (2001)") is None


def test_library_stem():
    assert library_stem(S, f"{S}/x/title_t00.mkv") == "x"
    assert library_stem(S, f"{S}/x/Film.mkv") == "Film"


@pytest.mark.parametrize("staging, source, shown", [
    ("/pool/staging", "/pool/staging/Some Disc/title_t00.mkv", "Some Disc/title_t00.mkv"),
    ("/pool/staging/", "/pool/staging/Show/Season 1/title_t03.mkv", "Show/Season 1/title_t03.mkv"),
    ("/pool/staging", "/pool/staging/Heat (1995).mkv", "Heat (1995).mkv"),
    ("/pool/staging", "/pool/staging-old/Disc/title_t00.mkv", "title_t00.mkv"),  # not under staging: the file
    ("/pool/staging", "/elsewhere/title_t00.mkv", "title_t00.mkv"),
    ("", "/pool/staging/Disc/title_t00.mkv", "title_t00.mkv"),
])
def test_staged_name_is_the_path_under_staging(staging, source, shown):
    assert naming.staged_name(staging, source) == shown
