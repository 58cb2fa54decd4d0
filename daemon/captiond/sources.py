"""PhotoPrism's source priorities and the pure decision "caption this file or not, and why".

No I/O here: metadata.py turns what a file holds into a CurrentCaption, this module decides.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

# internal/entity/src.go in PhotoPrism: source -> (priority, description). "" is PhotoPrism's SrcAuto.
SOURCES: Mapping[str, tuple[int, str]] = MappingProxyType(
    {
        "auto": (1, "Auto"), "default": (1, "Default"),
        "estimate": (2, "Estimated"), "file": (2, "File System"),
        "name": (4, "File Name"),
        "yaml": (8, "YAML Sidecar"), "oidc": (8, "OpenID Connect (OIDC)"), "ldap": (8, "LDAP / Active Directory"),
        "location": (8, "GPS Position"), "marker": (8, "Object Detection"), "image": (8, "Computer Vision (default)"),
        "pigo": (8, "Face Detection (Pigo)"),
        "onnx": (12, "Face Detection (ONNX)"),
        "ollama": (16, "Computer Vision (Ollama)"), "openai": (16, "Computer Vision (OpenAI)"),
        "title": (16, "Picture Title"), "caption": (16, "Picture Caption"), "subject": (16, "Person"),
        "keyword": (16, "Picture Keywords"), "meta": (16, "Embedded Metadata"),
        "xmp": (32, "XMP Sidecar"),
        "batch": (64, "Batch Edit"), "vision": (64, "Computer Vision (manual)"), "manual": (64, "Edited Manually"),
        "admin": (128, "Admin Override"),
    }
)
PRIORITIES: Mapping[str, int] = MappingProxyType({source: entry[0] for source, entry in SOURCES.items()})
# What `--source` accepts: PhotoPrism's VisionSrcNames (auto, default, marker, image, ollama, openai, vision)
# plus the sources a person may claim (batch, manual, admin).
WRITABLE_SOURCES = ("auto", "default", "image", "marker", "ollama", "openai", "vision", "batch", "manual", "admin")

# PhotoPrism's UnwantedDescriptions (internal/meta/sanitize.go): exact, case-sensitive texts that
# PhotoPrism drops at import, so they are no caption. Anything else a person could have written is one.
UNWANTED_DESCRIPTIONS = frozenset(
    {
        "Created by Imlib", "iClarified", "OLYMPUS DIGITAL CAMERA", "SAMSUNG", "SAMSUNG CAMERA PICTURES",
        "<Digimax i5, Samsung #1>", "SONY DSC", "Scanner", "rhdr", "hdrpl", "oznorWO", "frontbhdp", "fbt", "rbt",
        "ptr", "fbthdr", "btr", "mon", "nor", "dav", "mde", "mde_soft", "edf", "btfmdn", "btf", "btfhdr", "frem",
        "oznor", "rpt", "burst", "sdr_HDRB", "cof", "qrf", "fshbty", "binary comment", "default",
        "Exif_JPEG_PICTURE", "DVC 10.1 HDMI", "charset=Ascii",
    }
)
# PhotoPrism's SanitizeString empties values exiftool reports for binary data.
_BINARY_PREFIXES = ("string with binary data", "(Binary data")


@dataclass(frozen=True)
class CurrentCaption:
    """What a file (and its sidecar) holds now, as read by exiftool_process.py."""

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
    """Return PhotoPrism's priority of a source ("" is auto, 1); unknown sources count 0, as a Go map lookup does."""
    source = source.lower()
    return PRIORITIES.get(source or "auto", 0)


def is_boilerplate(text: str) -> bool:
    """Return whether text is no caption in PhotoPrism: blank, or a camera string its import drops.

    PhotoPrism's SanitizeDescription: quotes removed and space trimmed, then an exact, case-sensitive
    match of UnwantedDescriptions, or a bare "DCIM\\..." folder name. "Apple", "Photo" or "HDR" are captions.
    """
    if text.startswith(_BINARY_PREFIXES):
        return True
    stripped = text.replace('"', "").strip().strip("\x00").strip()
    if not stripped:
        return True
    return stripped in UNWANTED_DESCRIPTIONS or (stripped.startswith("DCIM\\") and " " not in stripped)


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
    """Return the source to record, as PhotoPrism's GenerateCaption: `auto` records the engine's own
    (ollama/openai, else image); any other source, `default` included, is recorded as asked."""
    requested = (requested or "auto").lower()
    if requested == "auto":
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


def decide(current: CurrentCaption, requested: str, recorded: str, force: bool,
           photo_changed: bool = False) -> Decision:
    """Decide whether to caption a file, exactly as PhotoPrism's `vision run`.

    Generate when priority(requested) >= priority(current) and (no caption, or force): ShouldGenerateCaption.
    Keep the answer only when priority(recorded) >= priority(current): SetCaption. `requested` is --source
    (auto: 1), `recorded` what is written beside the caption (auto: the engine). Both are checked before the
    model is asked. `photo_changed` (the daemon saw the photo replaced since it captioned it) renews a
    caption of the same recorded source only.
    """
    existing = current_source(current)
    if photo_changed and existing and existing == recorded:
        return Decision(True, "the photo changed since it was captioned", existing)
    if existing and not force:
        if existing == recorded:
            return Decision(False, f"already captioned ({existing})", existing)
        return Decision(False, f"has a caption from {existing}", existing)
    asked, held, kept = priority(requested or "auto"), priority(existing or "auto"), priority(recorded)
    shown = (requested or "auto").lower()
    if asked < held:
        return Decision(False, f"has a caption from {existing} ({held}), higher than --source {shown} ({asked})"
                        + (f"; to replace it: --force --source {existing}" if existing == recorded else ""),
                        existing)
    if kept < held:
        return Decision(False, f"has a caption from {existing} ({held}), higher than {recorded} ({kept})", existing)
    if not existing:
        return Decision(True, "no caption" if not current.text.strip() else "camera boilerplate caption")
    return Decision(True, f"forced: --source {shown} ({asked}) >= {existing} ({held})", existing)


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
