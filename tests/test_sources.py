"""PhotoPrism's source priorities: when captiond captions a file, and when it leaves a caption alone."""

from __future__ import annotations

import pytest

from captiond.sources import (
    CurrentCaption,
    caption_hash,
    current_source,
    decide,
    is_boilerplate,
    priority,
    resolve_source,
)

HUMAN_TEXT = "Grandma blowing out the candles on her 90th birthday cake."
OUR_TEXT = "A brown dog sleeps on a green sofa."


def ours(source: str = "ollama", text: str = OUR_TEXT, location: str = "sidecar") -> CurrentCaption:
    """A caption captiond wrote with `source`, untouched since (the recorded hash matches)."""
    return CurrentCaption(text, location, recorded_source=source, recorded_hash=caption_hash(text))


def edited(location: str) -> CurrentCaption:
    """A caption captiond wrote that a person has changed since (the recorded hash no longer matches)."""
    return CurrentCaption("A brown dog (Rex!) sleeps on our old sofa.", location, recorded_source="ollama",
                          recorded_hash=caption_hash(OUR_TEXT))


# --- nothing worth keeping: always caption, with or without force ---------------------------------------------

NO_CAPTION = {
    "empty": "",
    "blank": "  ",
    "whitespace and newlines": " \t\n ",
    "nul bytes": "\x00\x00",
    "olympus": "OLYMPUS DIGITAL CAMERA",
    "olympus padded with spaces": "OLYMPUS DIGITAL CAMERA         ",
    "sony": "SONY DSC",
    "konica minolta": "KONICA MINOLTA DIGITAL CAMERA",
    "only punctuation": "...",
}


@pytest.mark.parametrize("text", NO_CAPTION.values(), ids=NO_CAPTION.keys())
@pytest.mark.parametrize("force", [False, True], ids=["no force", "force"])
@pytest.mark.parametrize("location", ["sidecar", "embedded"])
def test_a_file_without_a_real_caption_is_captioned(text: str, force: bool, location: str) -> None:
    current = CurrentCaption(text, location)

    decision = decide(current, "ollama", force)

    assert decision.caption
    assert current_source(current) == ""
    assert decision.reason in ("no caption", "camera boilerplate caption")


# --- is_boilerplate ----------------------------------------------------------------------------------------------

BOILERPLATE = {
    "olympus": "OLYMPUS DIGITAL CAMERA",
    "sony": "SONY DSC",
    "konica minolta": "KONICA MINOLTA DIGITAL CAMERA",
    "two spaces": "  ",
    "nul bytes": "\x00\x00",
    "nul-padded olympus": "OLYMPUS DIGITAL CAMERA\x00\x00\x00",
    "other brand, same pattern": "ACME DIGITAL CAMERA",
}
NOT_BOILERPLATE = {
    "all-caps human caption": "MY DOG REX",
    "mixed case ending in DSC": "Sunset DSC",
    "ordinary sentence": "A red barn under a grey sky.",
    "short human word": "Rex",
    "caption mentioning a camera": "My new Olympus digital camera on the desk.",
}


@pytest.mark.parametrize("text", BOILERPLATE.values(), ids=BOILERPLATE.keys())
def test_camera_default_text_is_boilerplate(text: str) -> None:
    assert is_boilerplate(text)


@pytest.mark.parametrize("text", NOT_BOILERPLATE.values(), ids=NOT_BOILERPLATE.keys())
def test_a_persons_caption_is_not_boilerplate(text: str) -> None:
    assert not is_boilerplate(text)


# --- where the current caption comes from ------------------------------------------------------------------------

CURRENT_SOURCES = {
    "person's caption in a sidecar": (CurrentCaption(HUMAN_TEXT, "sidecar"), "xmp"),
    "person's caption embedded": (CurrentCaption(HUMAN_TEXT, "embedded"), "meta"),
    "our caption, hash matches": (ours("ollama"), "ollama"),
    "our manual caption, hash matches": (ours("manual"), "manual"),
    "our caption edited by a person, sidecar": (edited("sidecar"), "xmp"),
    "our caption edited by a person, embedded": (edited("embedded"), "meta"),
    "recorded source without a hash": (CurrentCaption(HUMAN_TEXT, "sidecar", recorded_source="admin"), "xmp"),
}


@pytest.mark.parametrize(("current", "expected"), CURRENT_SOURCES.values(), ids=CURRENT_SOURCES.keys())
def test_current_source(current: CurrentCaption, expected: str) -> None:
    assert current_source(current) == expected


# --- without --force, an existing caption is kept ---------------------------------------------------------------

KEPT = {
    "person's caption in a sidecar": (CurrentCaption(HUMAN_TEXT, "sidecar"), "has a caption from xmp"),
    "person's caption embedded": (CurrentCaption(HUMAN_TEXT, "embedded"), "has a caption from meta"),
    "our own caption": (ours("ollama"), "already captioned (ollama)"),
    "our caption edited in a sidecar": (edited("sidecar"), "has a caption from xmp"),
    "our caption edited embedded": (edited("embedded"), "has a caption from meta"),
}


@pytest.mark.parametrize(("current", "reason"), KEPT.values(), ids=KEPT.keys())
def test_an_existing_caption_is_kept_without_force(current: CurrentCaption, reason: str) -> None:
    decision = decide(current, "ollama", force=False)

    assert not decision.caption
    assert reason in decision.reason


def test_our_own_caption_is_regenerated_with_force() -> None:
    decision = decide(ours("ollama"), "ollama", force=True)

    assert decision.caption
    assert decision.current_source == "ollama"
    assert "forced" in decision.reason


# --- with --force: caption iff priority(source) >= priority(current), exactly as PhotoPrism -----------------

CURRENTS = {
    "meta": CurrentCaption(HUMAN_TEXT, "embedded"),
    "xmp": CurrentCaption(HUMAN_TEXT, "sidecar"),
    "manual": ours("manual", HUMAN_TEXT),
}
# source (priority) -> expected decision against meta (16), xmp (32), manual (64)
FORCE_TABLE = {
    "ollama": {"meta": True, "xmp": False, "manual": False},
    "vision": {"meta": True, "xmp": True, "manual": True},
    "manual": {"meta": True, "xmp": True, "manual": True},
    "admin": {"meta": True, "xmp": True, "manual": True},
    "image": {"meta": False, "xmp": False, "manual": False},
}
FORCE_CASES = [
    pytest.param(source, existing, expected, id=f"{source} vs {existing}")
    for source, row in FORCE_TABLE.items() for existing, expected in row.items()
]


@pytest.mark.parametrize(("source", "existing", "expected"), FORCE_CASES)
def test_force_follows_photoprism_priorities(source: str, existing: str, expected: bool) -> None:
    decision = decide(CURRENTS[existing], source, force=True)

    assert decision.caption is expected
    assert decision.caption is (priority(source) >= priority(existing))
    assert decision.current_source == existing
    if not expected:
        assert f"has a caption from {existing}" in decision.reason
        assert "higher than" in decision.reason


# --- priority and resolve_source ----------------------------------------------------------------------------------

PRIORITIES = {
    "auto": 1, "image": 8, "ollama": 16, "openai": 16, "meta": 16, "xmp": 32,
    "vision": 64, "manual": 64, "admin": 128, "ADMIN": 128, "something unknown": 1,
}


@pytest.mark.parametrize(("source", "expected"), PRIORITIES.items(), ids=PRIORITIES.keys())
def test_priority(source: str, expected: int) -> None:
    assert priority(source) == expected


RESOLVED = {
    "auto with ollama": ("auto", "ollama", "ollama"),
    "auto with openai": ("auto", "openai", "openai"),
    "default with ollama": ("default", "ollama", "ollama"),
    "nothing requested": ("", "ollama", "ollama"),
    "auto with another engine": ("auto", "tensorflow", "image"),
    "explicit manual": ("manual", "ollama", "manual"),
    "explicit vision": ("vision", "openai", "vision"),
    "explicit, upper case": ("Admin", "ollama", "admin"),
}


@pytest.mark.parametrize(("requested", "engine", "expected"), RESOLVED.values(), ids=RESOLVED.keys())
def test_resolve_source(requested: str, engine: str, expected: str) -> None:
    assert resolve_source(requested, engine) == expected
