"""What a file holds, as exiftool read it, and what readers see in it: no I/O here.

`FileMetadata` is one photo's and its sidecars' tags; `current_caption` and `current_labels` say
what readers (PhotoPrism, Immich, digiKam) show now. plans.py turns that into tag changes,
exiftool_process.py reads and writes it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from .config import WriteMode
from .imaging import RAW_EXTENSIONS
from .sidecars import Fingerprint
from .sources import CurrentCaption, CurrentLabels, caption_hash, current_source, is_boilerplate

# Formats exiftool writes in place reliably; everything else (RAW, GIF, BMP) gets a sidecar.
EMBEDDED_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".tif", ".tiff", ".png", ".webp", ".heic", ".heif",
                                 ".hif", ".avif"})
PREVIEW_TAGS = ("JpgFromRaw", "PreviewImage", "OtherImage", "ThumbnailImage")
IPTC_CAPTION_BYTES = 2000
_BINARY_SIZE = re.compile(r"Binary data (\d+) bytes")


# XMP-captiond:CaptionCached / LabelsCached: the answer was reused from the result cache.
CACHED_NOTE = "result cache"


@dataclass(frozen=True)
class Provenance:
    """Who wrote a caption: recorded next to it in the XMP-captiond namespace."""

    source: str
    model: str
    time: str = field(default_factory=lambda: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    cached: bool = False  # the answer came from the result cache (the same prepared image was asked before)


@dataclass(frozen=True)
class OtherSidecar:
    """Another sidecar under the photo's names: read for decisions and for what readers showed before."""

    path: Path
    tags: Mapping[str, str]
    lists: Mapping[str, tuple[str, ...]]


@dataclass(frozen=True)
class Target:
    """Where a write goes, the photo itself (embedded) or its sidecar, and the tags that file holds now."""

    path: Path
    embedded: bool
    exists: bool
    tags: Mapping[str, str]
    lists: Mapping[str, tuple[str, ...]]

    @property
    def caption_tags(self) -> tuple[str, ...]:
        """Return the tags of this file that hold a copy of the caption (readers differ in which they show)."""
        return EMBEDDED_CAPTION_TAGS if self.embedded else SIDECAR_CAPTION_TAGS

    @property
    def kind(self) -> str:
        """Return where readers find what this file holds: "embedded" or "sidecar"."""
        return "embedded" if self.embedded else "sidecar"

    @property
    def what(self) -> str:
        """Return how messages name this file: "the photo" or "the sidecar"."""
        return "the photo" if self.embedded else "the sidecar"


@dataclass(frozen=True)
class FileMetadata:
    """What exiftool read from an original and its sidecar."""

    path: Path
    sidecar: Path
    sidecar_exists: bool
    original: Mapping[str, str]
    sidecar_tags: Mapping[str, str]
    original_lists: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    sidecar_lists: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    others: tuple[OtherSidecar, ...] = ()  # the photo's other existing sidecars (see `other_sidecars`)
    # What the decision is based on: the photo's and every sidecar name's (inode, size, mtime, ctime),
    # taken before exiftool read them; a write goes ahead only while they all still hold (see `unchanged`).
    fingerprints: Mapping[Path, Fingerprint | None] = field(default_factory=dict)

    def target(self, embedded: bool) -> Target:
        """Return which file a write goes to, the photo (embedded) or its sidecar, and what that file holds."""
        if embedded:
            return Target(self.path, True, True, self.original, self.original_lists)
        return Target(self.sidecar, False, self.sidecar_exists, self.sidecar_tags, self.sidecar_lists)

    def targets(self, embedded: bool) -> tuple[Target, ...]:
        """Return every file a write goes to: the target, and in embedded mode the photo's existing sidecar too.

        Immich, PhotoPrism and digiKam prefer a sidecar's values: it would otherwise go on showing its own.
        """
        if embedded and self.sidecar_exists:
            return self.target(True), self.target(False)
        return (self.target(embedded),)

    @property
    def fallback(self) -> OtherSidecar | None:
        """Return the sidecar readers show while ours does not exist yet (Immich falls back to `<name>.xmp`)."""
        return self.others[0] if self.others and not self.sidecar_exists else None

    def keywords(self, embedded: bool) -> tuple[list[str], list[str], list[str]]:
        """Return (keywords, hierarchical keywords, the keywords we added) that readers see in the target.

        Keywords are every flat keyword any reader may show: `dc:subject` and the photo's IPTC Keywords
        (Immich, digiKam and PhotoPrism show IPTC when nothing else hides it). A sidecar without a list of
        its own shows the photo's embedded one (readers merge the two key by key), so those are carried
        over rather than hidden.
        """
        subject = self.visible_list("XMP-dc:Subject", embedded) or ()
        iptc = self.original_lists.get("IPTC:Keywords", ())
        keywords = _unique((*subject, *iptc))
        hierarchical = list(self.visible_list("XMP-lr:HierarchicalSubject", embedded) or ())
        return keywords, hierarchical, list(self.target(embedded).lists.get("XMP-captiond:AddedKeywords", ()))

    def visible_list(self, tag: str, embedded: bool) -> tuple[str, ...] | None:
        """Return a list tag as readers see it in the target (None: absent): a sidecar's own, else embedded."""
        if embedded or tag in self.sidecar_lists:
            return self.target(embedded).lists.get(tag)
        if self.fallback is not None and tag in self.fallback.lists:
            return self.fallback.lists[tag]
        return self.original_lists.get(tag)

    def context(self) -> dict[str, str]:
        """Return what a prompt may mention: capture date, camera and existing keywords."""
        date = (self.original.get("ExifIFD:DateTimeOriginal") or self.original.get("XMP-exif:DateTimeOriginal")
                or self.original.get("XMP-photoshop:DateCreated") or "")
        date = date[:10].replace(":", "-") if re.match(r"^\d{4}[:-]\d{2}[:-]\d{2}", date) else ""
        make, model = self.original.get("IFD0:Make", "").strip(), self.original.get("IFD0:Model", "").strip()
        camera = model if model.lower().startswith(make.lower()) else f"{make} {model}".strip()
        keywords, _, ours = self.keywords(embedded=not self.sidecar_exists)
        people = [keyword for keyword in keywords if keyword.casefold() not in {item.casefold() for item in ours}]
        return {"date": date, "camera": camera, "keywords": ", ".join(people)}

    @property
    def orientation(self) -> int | None:
        """Return the EXIF orientation (1-8) of the original, if any."""
        value = self.original.get("IFD0:Orientation", "")
        return int(value) if value.isdigit() else None

    @property
    def has_iptc(self) -> bool:
        """Return whether the original already carries IPTC IIM data."""
        return any(key.startswith("IPTC:") for key in self.original)

    def preview_sizes(self) -> dict[str, int]:
        """Return the embedded preview images of a RAW file and their sizes in bytes."""
        sizes = {}
        for tag in PREVIEW_TAGS:
            for key, value in self.original.items():
                if key.endswith(f":{tag}") and (match := _BINARY_SIZE.search(value)):
                    sizes[key] = int(match.group(1))
        return sizes


@dataclass(frozen=True)
class WritePlan:
    """The tag changes for one file: where they go and the new values (only the ones that change)."""

    target: Path
    embedded: bool
    tags: Mapping[str, str | tuple[str, ...]]  # a tuple replaces a list tag (empty: deletes it)

    @property
    def empty(self) -> bool:
        """Return whether there is nothing to write."""
        return not self.tags

    @property
    def what(self) -> str:
        """Return how messages name the target: "the photo" or "the sidecar"."""
        return "the photo" if self.embedded else "the sidecar"


def writes_embedded(path: Path, mode: WriteMode) -> bool:
    """Return whether a caption for this file goes into the file itself (never for RAW)."""
    suffix = path.suffix.lower()
    return mode == "embedded" and suffix in EMBEDDED_EXTENSIONS and suffix not in RAW_EXTENSIONS


EMBEDDED_CAPTION_TAGS = ("XMP-dc:Description", "IFD0:ImageDescription", "IPTC:Caption-Abstract")
SIDECAR_CAPTION_TAGS = ("XMP-dc:Description", "XMP-tiff:ImageDescription")
CAPTION_RECORD_TAGS = ("XMP-captiond:CaptionSource", "XMP-captiond:CaptionModel", "XMP-captiond:CaptionHash",
                       "XMP-captiond:CaptionTime")


def current_caption(metadata: FileMetadata) -> CurrentCaption:
    """Return the caption readers see now: the sidecar's if it has one, a person's caption in any other
    sidecar of the photo, else the embedded one (MWG order)."""
    sidecar = sidecar_caption(metadata.sidecar_tags)
    if not is_boilerplate(sidecar.text):
        embedded = embedded_caption(metadata)
        if not sidecar.recorded_source and sidecar.text == inert(embedded.text):
            return embedded  # the copy we carried into the sidecar: still the embedded caption
        return sidecar
    for other in metadata.others:
        candidate = sidecar_caption(other.tags)
        if current_source(candidate) not in ("", candidate.recorded_source):
            return candidate  # a person's caption: theirs, whichever sidecar name it is under
    embedded = embedded_caption(metadata)
    if not is_boilerplate(embedded.text):
        return embedded
    comment = embedded_comment(metadata)
    if comment:
        return CurrentCaption(comment, "embedded")
    return CurrentCaption(sidecar.text or embedded.text, "embedded")


# Comments that software, not a person, put into files.
_SOFTWARE_COMMENT = re.compile(
    r"^(?:(?:created|edited|made|saved|written|processed|optimi[sz]ed|generated|comment)\b.*\b(?:with|by|in|using)\b"
    r"|CREATOR: |LEAD Technologies|Intel\(R\) JPEG|AppleMark|JPEG Encoder|Compressed by|File written by"
    r"|Copyright|\(c\)|©|[0-9a-fA-F]{16,}$|[A-Z]+: .*\n)", re.IGNORECASE)


def embedded_comment(metadata: FileMetadata) -> str:
    """Return a person's comment in the photo (JPEG COM, PNG Comment, EXIF UserComment), or "".

    digiKam shows such a comment as the caption when there is no other: it is a caption of the person's.
    Comments that cameras and software write (boilerplate, "Created with GIMP", hashes) do not count.
    """
    tags = ["PNG:Comment", "ExifIFD:UserComment"]
    if metadata.original.get("File:FileType") == "JPEG":
        tags.insert(0, "File:Comment")  # other formats' File:Comment is often a whole metadata dump (GIF)
    for tag in tags:
        text = metadata.original.get(tag, "").strip().strip("\x00").strip()
        if not is_boilerplate(text) and not _SOFTWARE_COMMENT.match(text):
            return text
    return ""


def embedded_caption(metadata: FileMetadata) -> CurrentCaption:
    """Return the caption embedded in the photo (MWG order), or its boilerplate, or nothing.

    A person's edit of one copy of our caption (EXIF ImageDescription, IPTC Caption-Abstract) is theirs,
    and so is a caption in another language beside ours (only a person writes those).
    """
    edit = edited_copy(metadata.original, EMBEDDED_CAPTION_TAGS)
    if edit is not None:  # a person edited one copy of our caption: theirs
        return CurrentCaption(edit[0], "embedded")
    for tag in EMBEDDED_CAPTION_TAGS:
        text = metadata.original.get(tag, "")
        if not is_boilerplate(text):
            found = CurrentCaption(text, "embedded", metadata.original.get("XMP-captiond:CaptionSource", ""),
                                   metadata.original.get("XMP-captiond:CaptionHash", ""))
            if current_source(found) == found.recorded_source and _other_languages(metadata.original):
                return CurrentCaption(_other_languages(metadata.original), "embedded")
            return found
    if _other_languages(metadata.original):
        return CurrentCaption(_other_languages(metadata.original), "embedded")
    return CurrentCaption(next((metadata.original[tag] for tag in EMBEDDED_CAPTION_TAGS
                                if metadata.original.get(tag)), ""), "embedded")


def _other_languages(tags: Mapping[str, str]) -> str:
    """Return the first caption in a language alternative other than x-default (only a person writes those)."""
    return next((value for key, value in tags.items() if key.startswith(("XMP-dc:Description-",
                                                                         "XMP-tiff:ImageDescription-"))
                 and not is_boilerplate(value)), "")


def sidecar_caption(tags: Mapping[str, str]) -> CurrentCaption:
    edit = edited_copy(tags, SIDECAR_CAPTION_TAGS)
    if edit is not None:  # a person edited one copy of our caption: theirs
        return CurrentCaption(edit[0], "sidecar")
    text = tags.get("XMP-dc:Description", "") or tags.get("XMP-tiff:ImageDescription", "") or _other_languages(tags)
    return CurrentCaption(text, "sidecar", tags.get("XMP-captiond:CaptionSource", ""),
                          tags.get("XMP-captiond:CaptionHash", ""))


def edited_copy(tags: Mapping[str, str], names: tuple[str, ...]) -> tuple[str, list[str]] | None:
    """Return (a person's text, the tags still holding our caption) when a person edited one copy of ours."""
    recorded = tags.get("XMP-captiond:CaptionHash", "")
    values = {name: tags[name] for name in names if tags.get(name, "").strip()}
    ours = next((value for value in values.values() if caption_hash(value) == recorded), None)
    if not recorded or ours is None:
        return None
    stale = [name for name, value in values.items() if value in (ours, truncate_bytes(ours, IPTC_CAPTION_BYTES))]
    persons = {value for name, value in values.items() if name not in stale and not is_boilerplate(value)}
    return (inert(persons.pop()), stale) if len(persons) == 1 else None


def current_labels(metadata: FileMetadata, embedded: bool) -> CurrentLabels:
    """Return the keywords readers see in the target and our record of the ones we added."""
    keywords, _, added = metadata.keywords(embedded)
    target = metadata.target(embedded)
    return CurrentLabels(tuple(keywords), tuple(added), target.tags.get("XMP-captiond:LabelsSource", ""), target.kind)


def inert(value: str) -> str:
    """Return a value that cannot break out of its argument line: control characters become spaces.

    Lone surrogates are dropped: they cannot be encoded, so they would fail the write of this file.
    """
    return "".join(" " if ord(character) < 32 or ord(character) == 127 else character for character in value
                   if not "\ud800" <= character <= "\udfff").strip()


def truncate_bytes(text: str, limit: int) -> str:
    """Return text cut to at most `limit` UTF-8 bytes at a character boundary."""
    encoded = text.encode("utf-8")
    if len(encoded) <= limit:
        return text
    return encoded[:limit].decode("utf-8", errors="ignore").rstrip()


def _unique(keywords: tuple[str, ...]) -> list[str]:
    """Return keywords in order without repeats (ignoring case)."""
    seen: set[str] = set()
    unique = []
    for keyword in keywords:
        if keyword.casefold() not in seen:
            seen.add(keyword.casefold())
            unique.append(keyword)
    return unique
