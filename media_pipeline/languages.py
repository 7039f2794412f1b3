"""Language codes: treat ISO 639-1 ("en"), 639-2/B ("ger") and 639-2/T ("deu") alike.

Rips tag tracks with whatever the authoring tool used (MakeMKV writes 639-2/B,
other tools 639-1 or BCP 47 like "en-US"), so every code is reduced to one key
before comparing.
"""

from __future__ import annotations

# (639-1, 639-2/B, 639-2/T, English name) for the languages found on discs.
_TABLE: tuple[tuple[str, str, str, str], ...] = (
    ("ar", "ara", "ara", "arabic"),
    ("bg", "bul", "bul", "bulgarian"),
    ("bs", "bos", "bos", "bosnian"),
    ("ca", "cat", "cat", "catalan"),
    ("cs", "cze", "ces", "czech"),
    ("cy", "wel", "cym", "welsh"),
    ("da", "dan", "dan", "danish"),
    ("de", "ger", "deu", "german"),
    ("el", "gre", "ell", "greek"),
    ("en", "eng", "eng", "english"),
    ("es", "spa", "spa", "spanish"),
    ("et", "est", "est", "estonian"),
    ("eu", "baq", "eus", "basque"),
    ("fa", "per", "fas", "persian"),
    ("fi", "fin", "fin", "finnish"),
    ("fr", "fre", "fra", "french"),
    ("ga", "gle", "gle", "irish"),
    ("gl", "glg", "glg", "galician"),
    ("he", "heb", "heb", "hebrew"),
    ("hi", "hin", "hin", "hindi"),
    ("hr", "hrv", "hrv", "croatian"),
    ("hu", "hun", "hun", "hungarian"),
    ("hy", "arm", "hye", "armenian"),
    ("id", "ind", "ind", "indonesian"),
    ("is", "ice", "isl", "icelandic"),
    ("it", "ita", "ita", "italian"),
    ("ja", "jpn", "jpn", "japanese"),
    ("ka", "geo", "kat", "georgian"),
    ("ko", "kor", "kor", "korean"),
    ("lt", "lit", "lit", "lithuanian"),
    ("lv", "lav", "lav", "latvian"),
    ("mk", "mac", "mkd", "macedonian"),
    ("ms", "may", "msa", "malay"),
    ("mt", "mlt", "mlt", "maltese"),
    ("nb", "nob", "nob", "norwegian bokmal"),
    ("nl", "dut", "nld", "dutch"),
    ("nn", "nno", "nno", "norwegian nynorsk"),
    ("no", "nor", "nor", "norwegian"),
    ("pl", "pol", "pol", "polish"),
    ("pt", "por", "por", "portuguese"),
    ("ro", "rum", "ron", "romanian"),
    ("ru", "rus", "rus", "russian"),
    ("sk", "slo", "slk", "slovak"),
    ("sl", "slv", "slv", "slovenian"),
    ("sq", "alb", "sqi", "albanian"),
    ("sr", "srp", "srp", "serbian"),
    ("sv", "swe", "swe", "swedish"),
    ("ta", "tam", "tam", "tamil"),
    ("te", "tel", "tel", "telugu"),
    ("th", "tha", "tha", "thai"),
    ("tr", "tur", "tur", "turkish"),
    ("uk", "ukr", "ukr", "ukrainian"),
    ("ur", "urd", "urd", "urdu"),
    ("vi", "vie", "vie", "vietnamese"),
    ("zh", "chi", "zho", "chinese"),
)

# Every spelling -> the 639-2/T code (our canonical key).
_CANON: dict[str, str] = {}
for _one, _b, _t, _name in _TABLE:
    for _alias in (_one, _b, _t, _name):
        _CANON[_alias] = _t

UNDETERMINED = "und"
# Tags that mean "no language": MKV writes "und" when a track is untagged.
_UNTAGGED = {"", "und", "unk", "mis", "mul", "zxx", "xx", "none"}


def canonical(code: str | None) -> str:
    """The 639-2/T key for a language tag; "und" for untagged; unknown codes lowercased.

    >>> canonical("en-US"), canonical("ger"), canonical("fra"), canonical(None)
    ('eng', 'deu', 'fra', 'und')
    """
    if code is None:
        return UNDETERMINED
    key = code.strip().lower().replace("_", "-")
    if key in _UNTAGGED:
        return UNDETERMINED
    if key in _CANON:
        return _CANON[key]
    primary = key.split("-", 1)[0]  # BCP 47: "pt-BR" -> "pt"
    if primary in _UNTAGGED:
        return UNDETERMINED
    return _CANON.get(primary, primary)


def is_known(code: str) -> bool:
    """True for a code in the table, "und", or any 3-letter code (639-2 has ~500)."""
    key = code.strip().lower()
    return key in _CANON or key == UNDETERMINED or (len(key) == 3 and key.isalpha())


def parse_list(value: str | list[str]) -> list[str]:
    """'eng, bul' or ['eng','bul'] -> ['eng', 'bul'] (stripped, empty items dropped, order kept)."""
    items = value.split(",") if isinstance(value, str) else list(value)
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"language codes must be strings, got {item!r}")
        item = item.strip()
        if item and item not in out:
            out.append(item)
    return out


def matches(tag: str | None, wanted: list[str]) -> bool:
    """Does a stream's language tag match one of the wanted languages?"""
    key = canonical(tag)
    return any(canonical(w) == key for w in wanted)
