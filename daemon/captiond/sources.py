"""PhotoPrism's source priorities and the pure decision "caption this file or not, and why".

No I/O here: metadata.py reads what a file holds into a CurrentCaption, this module decides.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

# internal/entity/src.go in PhotoPrism.
PRIORITIES: Mapping[str, int] = MappingProxyType(
    {
        "auto": 1, "default": 1, "estimate": 2, "file": 2, "name": 4,
        "image": 8, "marker": 8, "location": 8, "yaml": 8, "oidc": 8, "ldap": 8,
        "ollama": 16, "openai": 16, "meta": 16, "title": 16, "caption": 16, "subject": 16, "keyword": 16,
        "xmp": 32,
        "vision": 64, "batch": 64, "manual": 64,
        "admin": 128,
    }
)
# What `--source` accepts (PhotoPrism's VisionSrcNames plus the sources a person may claim).
WRITABLE_SOURCES = ("auto", "default", "image", "marker", "ollama", "openai", "vision", "batch", "manual", "admin")

# Text that cameras and editors put in ImageDescription by default: it is not a caption.
BOILERPLATE = frozenset(
    text.casefold()
    for text in (
        "OLYMPUS DIGITAL CAMERA", "SONY DSC", "KONICA MINOLTA DIGITAL CAMERA", "MINOLTA DIGITAL CAMERA",
        "NIKON DIGITAL CAMERA", "KODAK DIGITAL STILL CAMERA", "KODAK CSC", "LEICA DIGITAL CAMERA",
        "PENTAX DIGITAL CAMERA", "CASIO DIGITAL CAMERA", "SAMSUNG DIGITAL CAMERA", "SAMSUNG", "SANYO DIGITAL CAMERA",
        "DIGITAL CAMERA", "DIGITAL STILL CAMERA", "DIGITAL IMAGE", "Exif_JPEG_PICTURE", "Exif JPEG", "JPEG",
        "DCIM", "HDR", "default", "image", "photo", "picture", "untitled", "<untitled>", "no description",
        "Created with GIMP", "Picasa", "LG Electronics", "Hewlett-Packard", "HP PHOTOSMART", "AGFA DIGITAL CAMERA",
        "Vivitar", "Polaroid", "FUJIFILM DIGITAL CAMERA", "RICOH", "PANASONIC", "Canon", "Apple", "Screenshot",
    )
)
# "<BRAND> DIGITAL CAMERA", "<BRAND> DSC": upper case only, so a person's caption never matches.
_CAMERA_PATTERN = re.compile(r"^[A-Z][A-Z0-9 \-]* (DIGITAL (STILL )?CAMERA|DSC)$")


@dataclass(frozen=True)
class CurrentCaption:
    """What a file (and its sidecar) holds now, as read by metadata.py."""

    text: str = ""
    location: str = "sidecar"  # "sidecar" or "embedded": where `text` was found
    recorded_source: str = ""  # XMP-captiond:CaptionSource beside that text
    recorded_hash: str = ""  # XMP-captiond:CaptionHash beside that text


@dataclass(frozen=True)
class CurrentLabels:
    """The keywords readers see in the target, and what we recorded about the ones we added."""

    keywords: tuple[str, ...] = ()
    added: tuple[str, ...] = ()  # XMP-captiond:AddedKeywords
    recorded_source: str = ""  # XMP-captiond:LabelsSource
    location: str = "sidecar"


@dataclass(frozen=True)
class Decision:
    """Whether to caption a file, and a short reason a user can read."""

    caption: bool
    reason: str
    current_source: str = ""


def caption_hash(text: str) -> str:
    """Return the hash recorded beside a caption we wrote (sha256 of its UTF-8 text)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def priority(source: str) -> int:
    """Return PhotoPrism's priority of a source; unknown sources count as auto (1)."""
    return PRIORITIES.get(source.lower(), 1)


def is_boilerplate(text: str) -> bool:
    """Return whether text is no caption at all: blank, punctuation only, or a camera's or editor's default text.

    A caption of emoji only (category So, "other symbol") is a person's caption.
    """
    stripped = unicodedata.normalize("NFC", text).strip().strip("\x00").strip()
    if not stripped or not any(character.isalnum() or unicodedata.category(character) == "So"
                               for character in stripped):
        return True
    return stripped.casefold() in BOILERPLATE or bool(_CAMERA_PATTERN.match(stripped))


def current_source(current: CurrentCaption) -> str:
    """Return the source of the current caption, or "" when there is none.

    Our recorded source holds only while the recorded hash still matches the text: a caption
    that a person edited since, or one with no record, counts as `xmp` (sidecar) or `meta` (embedded).
    """
    if is_boilerplate(current.text):
        return ""
    if current.recorded_source and current.recorded_hash == caption_hash(current.text):
        return current.recorded_source
    return "xmp" if current.location == "sidecar" else "meta"


def resolve_source(requested: str, engine: str) -> str:
    """Return the source to record: the requested one, or for `auto` the engine's own (ollama/openai)."""
    requested = (requested or "auto").lower()
    if requested in ("auto", "default"):
        return engine if engine in ("ollama", "openai") else "image"
    return requested


def labels_source(current: CurrentLabels) -> str:
    """Return the source of the labels we added, or "" when we added none.

    If a person removed one of our keywords since, the labels count as theirs (`xmp` or `meta`).
    """
    if not current.recorded_source:
        return ""
    present = {keyword.casefold() for keyword in current.keywords}
    if any(keyword.casefold() not in present for keyword in current.added):
        return "xmp" if current.location == "sidecar" else "meta"
    return current.recorded_source


def decide(current: CurrentCaption, source: str, force: bool, photo_changed: bool = False) -> Decision:
    """Decide whether to generate a caption written with `source`, following PhotoPrism's --force rule.

    A caption is generated when there is none, or with force when priority(source) >= priority(current).
    `photo_changed` (the daemon saw the photo replaced since it captioned it) renews a caption of the
    same source only: a person's caption is never touched without force.
    """
    existing = current_source(current)
    if not existing:
        reason = "no caption" if not current.text.strip() else "camera boilerplate caption"
        return Decision(True, reason)
    return _decide_over(existing, source, force, photo_changed, "caption", "captioned")


def decide_labels(current: CurrentLabels, source: str, force: bool, photo_changed: bool = False) -> Decision:
    """Decide whether to generate labels; the same rule as captions, for the keywords we added.

    Keywords a person added never block labels (they are kept beside ours); labels we added are
    replaced only with force and a source of at least their priority.
    """
    existing = labels_source(current)
    if not existing:
        return Decision(True, "no labels yet")
    return _decide_over(existing, source, force, photo_changed, "labels", "labelled")


def _decide_over(existing: str, source: str, force: bool, photo_changed: bool, what: str, done: str) -> Decision:
    if photo_changed and existing == source:
        return Decision(True, f"the photo changed since it was {done}", existing)
    if not force:
        if existing == source:
            return Decision(False, f"already {done} ({existing})", existing)
        return Decision(False, f"has {'a caption' if what == 'caption' else 'labels'} from {existing}", existing)
    if priority(source) >= priority(existing):
        return Decision(True, f"forced: {source} ({priority(source)}) >= {existing} ({priority(existing)})", existing)
    return Decision(
        False,
        f"has {'a caption' if what == 'caption' else 'labels'} from {existing} ({priority(existing)}), "
        f"higher than {source} ({priority(source)})",
        existing,
    )
