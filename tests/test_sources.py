"""PhotoPrism's source priorities: when captiond captions a file, and when it leaves a caption alone."""

from __future__ import annotations

import pytest

from captiond.sources import (
    UNWANTED_DESCRIPTIONS,
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


# --- no caption: blank, or an exact entry of PhotoPrism's UnwantedDescriptions ------------------------------------

NO_CAPTION = {
    "empty": "",
    "blank": "  ",
    "whitespace and newlines": " \t\n ",
    "nul bytes": "\x00\x00",
    "olympus": "OLYMPUS DIGITAL CAMERA",
    "olympus padded with spaces": "OLYMPUS DIGITAL CAMERA         ",
    "nul-padded olympus": "OLYMPUS DIGITAL CAMERA\x00\x00\x00",
    "olympus in quotes": '"OLYMPUS DIGITAL CAMERA"',
    "sony": "SONY DSC",
    "samsung": "SAMSUNG",
    "huawei mode": "sdr_HDRB",
    "default": "default",
    "exif jpeg picture": "Exif_JPEG_PICTURE",
    "dcim folder": "DCIM\\100MEDIA",
    "binary data": "(Binary data 1234 bytes, use -b option to extract)",
}
# Texts a person could have written: PhotoPrism keeps them as captions (its list is exact and case-sensitive).
A_CAPTION = {
    "apple": "Apple",
    "photo": "Photo",
    "canon": "Canon",
    "hdr": "HDR",
    "konica minolta (not in PhotoPrism's list)": "KONICA MINOLTA DIGITAL CAMERA",
    "olympus in lower case": "olympus digital camera",
    "default capitalised": "Default",
    "only punctuation": "...",
    "all-caps human caption": "MY DOG REX",
    "ordinary sentence": "A red barn under a grey sky.",
    "caption mentioning a camera": "My new Olympus digital camera on the desk.",
    "dcim with a space": "DCIM\\100MEDIA at the beach",
}


@pytest.mark.parametrize("text", NO_CAPTION.values(), ids=NO_CAPTION.keys())
def test_photoprisms_unwanted_descriptions_are_no_caption(text: str) -> None:
    assert is_boilerplate(text)


@pytest.mark.parametrize("text", A_CAPTION.values(), ids=A_CAPTION.keys())
def test_a_text_a_person_could_write_is_a_caption(text: str) -> None:
    assert not is_boilerplate(text)


def test_the_list_is_photoprisms_exactly() -> None:
    # internal/meta/sanitize.go, UnwantedDescriptions
    assert len(UNWANTED_DESCRIPTIONS) == 39
    assert {"Created by Imlib", "SAMSUNG CAMERA PICTURES", "charset=Ascii", "DVC 10.1 HDMI"} <= UNWANTED_DESCRIPTIONS


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


# --- PhotoPrism's decision: ShouldGenerateCaption, then SetCaption -----------------------------------------------
# internal/entity/photo_caption.go:
#   ShouldGenerateCaption(src, force) = SrcPriority[src] >= SrcPriority[CaptionSrc] && (NoCaption() || force)
#   SetCaption(text, source): keeps the current caption when SrcPriority[source] < SrcPriority[CaptionSrc]
# internal/photoprism (MediaFile.GenerateCaption): `auto` records the model's source (ollama), others as asked.

CURRENT = {
    "none": CurrentCaption("", "sidecar"),
    "boilerplate": CurrentCaption("OLYMPUS DIGITAL CAMERA", "embedded"),
    "meta": CurrentCaption(HUMAN_TEXT, "embedded"),
    "xmp": CurrentCaption(HUMAN_TEXT, "sidecar"),
    "ollama": ours("ollama"),
    "manual": ours("manual", HUMAN_TEXT),
    "admin": ours("admin", HUMAN_TEXT),
}
GO_PRIORITY = {"": 1, "auto": 1, "ollama": 16, "meta": 16, "xmp": 32, "vision": 64, "manual": 64, "admin": 128}


def photoprism_decides(current: str, requested: str, force: bool) -> bool:
    """PhotoPrism's rule, written out from its Go code, for the table below."""
    held = "" if current in ("none", "boilerplate") else current
    recorded = "ollama" if requested == "auto" else requested
    no_caption = held == ""
    should_generate = GO_PRIORITY[requested] >= GO_PRIORITY[held] and (no_caption or force)
    set_caption_keeps_it = GO_PRIORITY[recorded] >= GO_PRIORITY[held] or no_caption
    return should_generate and set_caption_keeps_it


# Expected results, read off PhotoPrism's code by hand (current -> requested -> (without force, with force)).
TABLE = {
    "none": {"auto": (True, True), "ollama": (True, True), "vision": (True, True), "manual": (True, True)},
    "boilerplate": {"auto": (True, True), "ollama": (True, True), "vision": (True, True), "manual": (True, True)},
    "meta": {"auto": (False, False), "ollama": (False, True), "vision": (False, True), "manual": (False, True)},
    "xmp": {"auto": (False, False), "ollama": (False, False), "vision": (False, True), "manual": (False, True)},
    "ollama": {"auto": (False, False), "ollama": (False, True), "vision": (False, True), "manual": (False, True)},
    "manual": {"auto": (False, False), "ollama": (False, False), "vision": (False, True), "manual": (False, True)},
    "admin": {"auto": (False, False), "ollama": (False, False), "vision": (False, False), "manual": (False, False)},
}
TABLE_CASES = [
    pytest.param(current, requested, force, expected[force], id=f"{current}, --source {requested}"
                 + (", --force" if force else ""))
    for current, row in TABLE.items() for requested, expected in row.items() for force in (False, True)
]


@pytest.mark.parametrize(("current", "requested", "force", "expected"), TABLE_CASES)
def test_the_decision_is_photoprisms(current: str, requested: str, force: bool, expected: bool) -> None:
    decision = decide(CURRENT[current], requested, resolve_source(requested, "ollama"), force)

    assert decision.caption is expected
    assert decision.caption is photoprism_decides(current, requested, force)


def test_force_alone_keeps_our_own_captions_and_says_how_to_replace_them() -> None:
    decision = decide(ours("ollama"), "auto", "ollama", force=True)

    assert not decision.caption
    assert "--force --source ollama" in decision.reason


def test_default_records_default_and_replaces_nothing() -> None:
    assert resolve_source("default", "ollama") == "default"
    assert not decide(ours("ollama"), "default", "default", force=True).caption
    assert decide(CurrentCaption(""), "default", "default", force=False).caption


def test_a_recorded_source_ranking_below_the_current_is_not_asked() -> None:
    # PhotoPrism's SetCaption would drop the answer: captiond does not ask for it.
    decision = decide(ours("vision", HUMAN_TEXT), "vision", "image", force=True)

    assert not decision.caption
    assert "higher than image (8)" in decision.reason


def test_a_changed_photo_renews_our_own_caption_only() -> None:
    assert decide(ours("ollama"), "auto", "ollama", force=False, photo_changed=True).caption
    assert not decide(CurrentCaption(HUMAN_TEXT, "sidecar"), "auto", "ollama", force=False, photo_changed=True).caption


KEPT = {
    "person's caption in a sidecar": (CurrentCaption(HUMAN_TEXT, "sidecar"), "has a caption from xmp"),
    "person's caption embedded": (CurrentCaption(HUMAN_TEXT, "embedded"), "has a caption from meta"),
    "our own caption": (ours("ollama"), "already captioned (ollama)"),
    "our caption edited in a sidecar": (edited("sidecar"), "has a caption from xmp"),
    "our caption edited embedded": (edited("embedded"), "has a caption from meta"),
    "a person's 'Apple'": (CurrentCaption("Apple", "embedded"), "has a caption from meta"),
}


@pytest.mark.parametrize(("current", "reason"), KEPT.values(), ids=KEPT.keys())
def test_an_existing_caption_is_kept_without_force(current: CurrentCaption, reason: str) -> None:
    decision = decide(current, "auto", "ollama", force=False)

    assert not decision.caption
    assert reason in decision.reason


# --- priority and resolve_source ----------------------------------------------------------------------------------

PRIORITIES = {
    "auto": 1, "": 1, "default": 1, "image": 8, "pigo": 8, "onnx": 12, "ollama": 16, "openai": 16, "meta": 16,
    "xmp": 32, "vision": 64, "manual": 64, "admin": 128, "ADMIN": 128, "something unknown": 0,
}


@pytest.mark.parametrize(("source", "expected"), PRIORITIES.items(), ids=[key or "empty" for key in PRIORITIES])
def test_priority(source: str, expected: int) -> None:
    assert priority(source) == expected


RESOLVED = {
    "auto with ollama": ("auto", "ollama", "ollama"),
    "auto with openai": ("auto", "openai", "openai"),
    "default records default": ("default", "ollama", "default"),
    "nothing requested": ("", "ollama", "ollama"),
    "auto with another engine": ("auto", "tensorflow", "image"),
    "explicit manual": ("manual", "ollama", "manual"),
    "explicit vision": ("vision", "openai", "vision"),
    "explicit, upper case": ("Admin", "ollama", "admin"),
}


@pytest.mark.parametrize(("requested", "engine", "expected"), RESOLVED.values(), ids=RESOLVED.keys())
def test_resolve_source(requested: str, engine: str, expected: str) -> None:
    assert resolve_source(requested, engine) == expected
