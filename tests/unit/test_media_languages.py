"""ISO 639-1 / 639-2 B / 639-2 T codes are one language."""

import pytest

from media_pipeline import languages as lang


@pytest.mark.parametrize(
    "codes",
    [("en", "eng", "EN", "en-US", "English"), ("bg", "bul"), ("fr", "fre", "fra"),
     ("ja", "jpn"), ("de", "ger", "deu"), ("zh", "chi", "zho"), ("cs", "cze", "ces"),
     ("nl", "dut", "nld"), ("ro", "rum", "ron"), ("pt", "por", "pt-BR")],
)
def test_spellings_share_one_key(codes):
    assert len({lang.canonical(c) for c in codes}) == 1


@pytest.mark.parametrize("tag", [None, "", "und", "UND", "unk", "mul", "zxx"])
def test_untagged(tag):
    assert lang.canonical(tag) == "und"


def test_unknown_codes_compare_lowercased():
    assert lang.canonical("KLI") == "kli"
    assert lang.matches("kli", ["KLI"])


def test_matches():
    assert lang.matches("ger", ["de"])
    assert lang.matches("fra", ["fre", "eng"])
    assert not lang.matches("eng", ["bul"])
    assert not lang.matches(None, ["eng"])
    assert lang.matches(None, ["und"])


def test_parse_list():
    assert lang.parse_list(" eng, bul,,eng ") == ["eng", "bul"]
    assert lang.parse_list(["en", "bg"]) == ["en", "bg"]


def test_is_known():
    assert lang.is_known("en") and lang.is_known("bul") and lang.is_known("und")
    assert lang.is_known("kli")  # any 3-letter code: 639-2 has ~500
    assert not lang.is_known("e") and not lang.is_known("english!") and not lang.is_known("xy")
