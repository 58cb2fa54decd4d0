"""The only code that starts exiftool: read a file's caption and provenance, plan the tag changes, apply them.

One long-lived `exiftool -stay_open` process (pyexiftool) answers every read and write. In that
mode every line is one argument, so nothing that could hold a line break ever reaches it raw:
values are made single-line by `plan_caption` and checked again in `Exiftool.run`. No byte of a
library path ever reaches exiftool either: every file and folder it is given is a private symlink
with a name of ours (hex digits and a plain extension) in a folder of ours. exiftool expands format
codes (`%d`, `%f`, `%2.1f`, `%c`, ...) in `-o` paths and has no escape for them, a relative name
starting with `-` would be an option, and a line break cannot travel through the argument stream.

Writes never use `-overwrite_original`: exiftool writes a complete new file (`-o`) beside the
target under a temporary name of ours, which we fsync and rename over the target in one step.
A crash leaves at worst that temporary file, which `remove_stale_temporaries` deletes.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import errno
import json
import logging
import os
import re
import secrets
import select
import shutil
import stat
import tempfile
import threading
import warnings
import xml.sax.saxutils
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

import exiftool  # pyexiftool
from exiftool.exceptions import ExifToolException

from .errors import ChangedMeanwhile, ExiftoolError, MetadataError
from .imaging import RAW_EXTENSIONS, SUPPORTED_EXTENSIONS
from .labels import merge_keywords
from .sources import CurrentCaption, CurrentLabels, caption_hash, current_source, is_boilerplate

log = logging.getLogger(__name__)
# pyexiftool warns when it notices that exiftool died; captiond restarts it or is stopping anyway.
warnings.filterwarnings("ignore", message="ExifTool process was previously running but died")
EXIFTOOL_TIMEOUT = 120.0  # no single exiftool command of ours takes this long


def _read_until(descriptor: int, ending: bytes, block_size: int) -> bytes:
    """pyexiftool's reader, fixed: end of file (exiftool died) and silence (exiftool hung) raise OSError.

    pyexiftool 0.5 loops forever on end of file, which would hang a worker and the daemon with it.
    """
    chunks: list[bytes] = []
    tail = b""
    while not tail.strip().endswith(ending):
        ready, _, _ = select.select([descriptor], [], [], EXIFTOOL_TIMEOUT)
        if not ready:
            raise TimeoutError(f"exiftool gave no answer for {EXIFTOOL_TIMEOUT:.0f}s")
        chunk = os.read(descriptor, block_size)
        if not chunk:
            raise OSError("exiftool exited")
        chunks.append(chunk)
        tail = (tail + chunk)[-(len(ending) + 8):]
    return b"".join(chunks)


def _own_session(signal_number: int) -> Callable[[], None]:
    """pyexiftool's child setup, plus a session of its own: a Ctrl-C or a SIGTERM sent to captiond's process
    group must not kill exiftool in the middle of a write (captiond stops it itself, after the write)."""

    def setup() -> None:
        os.setsid()
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal_number)  # PR_SET_PDEATHSIG: exiftool ends when captiond ends

    return setup


exiftool.exiftool._read_fd_endswith = _read_until
exiftool.exiftool._set_pdeathsig = _own_session

TEMPORARY_PREFIX = ".captiond-tmp-"
SIDECAR_SUFFIXES = (".xmp", ".XMP")
# Formats exiftool writes in place reliably; everything else (RAW, GIF, BMP) gets a sidecar.
EMBEDDED_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".tif", ".tiff", ".png", ".webp", ".heic", ".heif",
                                 ".hif", ".avif"})
PREVIEW_TAGS = ("JpgFromRaw", "PreviewImage", "OtherImage", "ThumbnailImage")
READ_TAGS = (
    "-XMP-dc:Description-*", "-XMP-tiff:ImageDescription-*",  # every language alternative, not only x-default
    "-XMP-dc:Description", "-IFD0:ImageDescription", "-IPTC:all", "-Photoshop:IPTCDigest",
    "-XMP-tiff:ImageDescription", "-XMP-captiond:all", "-IFD0:Orientation", "-File:FileType",
    "-XMP-dc:Subject", "-XMP-lr:HierarchicalSubject", "-ExifIFD:DateTimeOriginal", "-XMP-exif:DateTimeOriginal",
    "-XMP-photoshop:DateCreated", "-IFD0:Make", "-IFD0:Model", "-XMP-digiKam:TagsList", "-File:Comment",
    "-PNG:Comment", "-ExifIFD:UserComment", "-XMP-microsoft:LastKeywordXMP",
    *(f"-{tag}" for tag in PREVIEW_TAGS),
)
LIST_TAGS = frozenset({"XMP-dc:Subject", "XMP-lr:HierarchicalSubject", "IPTC:Keywords", "XMP-captiond:AddedKeywords",
                       "XMP-digiKam:TagsList", "XMP-microsoft:LastKeywordXMP"})
# Keyword paths that digiKam (and for TagsList, Immich) read before lr:hierarchicalSubject and dc:subject
# (digiKam: dmetadatasettingscontainer.cpp, defaultTagValues): continued wherever they exist.
FIRST_READ_HIERARCHIES = {"XMP-digiKam:TagsList": "/", "XMP-microsoft:LastKeywordXMP": "/"}
IPTC_KEYWORD_BYTES = 64
IPTC_CAPTION_BYTES = 2000
# exiftool cannot write these to a new file with -o ("Can't write RIFF files"): we copy the original
# to our temporary name and let exiftool rewrite that copy instead.
COPY_FIRST_EXTENSIONS = frozenset({".webp"})
_BINARY_SIZE = re.compile(r"Binary data (\d+) bytes")
_PLAIN_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,10}")
_INERT_PATH = re.compile(rb"/[^%\n\r\0]*")  # no format code, no line break: exiftool takes it as it is


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


Fingerprint = tuple[int, int, int, int]  # inode, size, mtime_ns, ctime_ns


def fingerprint(path: Path) -> Fingerprint | None:
    """Return what says a file is still the one that was read (None: it does not exist)."""
    try:
        status = os.lstat(path)
    except (OSError, ValueError):
        return None
    return status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns


def fingerprints(path: Path) -> dict[Path, Fingerprint | None]:
    """Return the fingerprints of a photo and of every name its sidecar may have (existing or not)."""
    return {candidate: fingerprint(candidate) for candidate in (path, *_own_sidecar_names(path),
                                                                 *_base_sidecar_names(path))}


def unchanged(expected: Mapping[Path, Fingerprint | None]) -> bool:
    """Return whether every file still holds exactly what it held when it was fingerprinted."""
    return all(fingerprint(path) == value for path, value in expected.items())


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

    @property
    def fallback(self) -> OtherSidecar | None:
        """Return the sidecar readers show while ours does not exist yet (Immich falls back to `<name>.xmp`)."""
        return self.others[0] if self.others and not self.sidecar_exists else None

    def keywords(self, in_sidecar: bool) -> tuple[list[str], list[str], list[str]]:
        """Return (keywords, hierarchical keywords, the keywords we added) that readers see in the target.

        Keywords are every flat keyword any reader may show: `dc:subject` and the photo's IPTC Keywords
        (Immich, digiKam and PhotoPrism show IPTC when nothing else hides it). A sidecar without a list of
        its own shows the photo's embedded one (readers merge the two key by key), so those are carried
        over rather than hidden.
        """
        subject = self.visible_list("XMP-dc:Subject", in_sidecar) or ()
        iptc = self.original_lists.get("IPTC:Keywords", ())
        keywords = _unique((*subject, *iptc))
        hierarchical = list(self.visible_list("XMP-lr:HierarchicalSubject", in_sidecar) or ())
        own = self.sidecar_lists if in_sidecar else self.original_lists
        return keywords, hierarchical, list(own.get("XMP-captiond:AddedKeywords", ()))

    def visible_list(self, tag: str, in_sidecar: bool) -> tuple[str, ...] | None:
        """Return a list tag as readers see it in the target (None: absent): a sidecar's own, else embedded."""
        if not in_sidecar or tag in self.sidecar_lists:
            return (self.sidecar_lists if in_sidecar else self.original_lists).get(tag)
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
        keywords, _, ours = self.keywords(in_sidecar=self.sidecar_exists)
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


def sidecar_path(path: Path, naming: str) -> tuple[Path, bool]:
    """Return the sidecar to use for an original and whether it exists.

    An existing `<name>.<ext>.xmp` (any case of .xmp) is updated; so is an existing `<name>.xmp` when it
    belongs to this photo (see `owns_base_sidecar`). Otherwise a new one is named `<name>.<ext>.xmp`
    (naming "ext") or `<name>.xmp` (naming "base", only when that name belongs to this photo).
    """
    for candidate in _own_sidecar_names(path):
        if _is_file(candidate):
            return candidate, True
    base = next((candidate for candidate in _base_sidecar_names(path) if _is_file(candidate)), None)
    if base is not None and owns_base_sidecar(path):
        return base, True
    if naming == "base" and base is None and owns_base_sidecar(path):
        return path.with_suffix(".xmp"), False
    return path.with_name(path.name + ".xmp"), False


def other_sidecars(path: Path, target: Path) -> list[Path]:
    """Return the existing sidecars under the photo's names other than `target` (read for decisions only).

    PhotoPrism reads every sidecar whose name starts with the photo's base name, Immich falls back to
    `<name>.xmp`: a person's caption in any of them is the photo's caption.
    """
    seen = {_identity(target)}
    found = []
    for candidate in (*_own_sidecar_names(path), *_base_sidecar_names(path)):
        identity = _identity(candidate)
        if identity is not None and identity not in seen:
            seen.add(identity)
            found.append(candidate)
    return found


def owns_base_sidecar(path: Path) -> bool:
    """Return whether `<name>.xmp` belongs to this photo: no other photo has its base name, or it is the RAW.

    In a RAW+JPEG pair (IMG_1.CR2 + IMG_1.JPG) Lightroom and darktable treat IMG_1.xmp as the RAW's; the
    JPEG then gets IMG_1.JPG.xmp of its own, so neither photo ever writes into the other's sidecar. Two
    non-RAW photos (or two RAWs) sharing a base name leave `<name>.xmp` to nobody.
    """
    siblings = _same_base_photos(path)
    if not siblings:
        return True
    return path.suffix.lower() in RAW_EXTENSIONS and not any(
        sibling.suffix.lower() in RAW_EXTENSIONS for sibling in siblings)


def _own_sidecar_names(path: Path) -> list[Path]:
    return [path.with_name(path.name + suffix) for suffix in SIDECAR_SUFFIXES]


def _base_sidecar_names(path: Path) -> list[Path]:
    return [path.with_suffix(suffix) for suffix in SIDECAR_SUFFIXES]


def _same_base_photos(path: Path) -> list[Path]:
    """Return the other photos in the folder with the same base name (IMG_1.JPG beside IMG_1.CR2)."""
    identity = _identity(path)
    others = []
    for extension in sorted(SUPPORTED_EXTENSIONS):
        for suffix in dict.fromkeys((extension, extension.upper())):
            candidate = path.with_suffix(suffix)
            candidate_identity = _identity(candidate)
            if candidate_identity is not None and candidate_identity != identity and candidate.is_file():
                others.append(candidate)
    return others


def _identity(path: Path) -> tuple[int, int] | None:
    """Return (device, inode) of an existing file, else None (one file under two spellings counts once)."""
    try:
        status = path.stat()
    except (OSError, ValueError):  # missing, or the name is longer than the filesystem allows
        return None
    return status.st_dev, status.st_ino


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # e.g. the name plus ".xmp" is longer than the filesystem allows
        return False


def writes_embedded(path: Path, mode: str) -> bool:
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
    sidecar = _sidecar_caption(metadata.sidecar_tags)
    if not is_boilerplate(sidecar.text):
        embedded = embedded_caption(metadata)
        if not sidecar.recorded_source and sidecar.text == inert(embedded.text):
            return embedded  # the copy we carried into the sidecar: still the embedded caption
        return sidecar
    for other in metadata.others:
        candidate = _sidecar_caption(other.tags)
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
    edit = _edited_copy(metadata.original, EMBEDDED_CAPTION_TAGS)
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


def _sidecar_caption(tags: Mapping[str, str]) -> CurrentCaption:
    edit = _edited_copy(tags, SIDECAR_CAPTION_TAGS)
    if edit is not None:  # a person edited one copy of our caption: theirs
        return CurrentCaption(edit[0], "sidecar")
    text = tags.get("XMP-dc:Description", "") or tags.get("XMP-tiff:ImageDescription", "") or _other_languages(tags)
    return CurrentCaption(text, "sidecar", tags.get("XMP-captiond:CaptionSource", ""),
                          tags.get("XMP-captiond:CaptionHash", ""))


def plan_repaired_copies(metadata: FileMetadata, embedded: bool) -> dict[str, str | tuple[str, ...]]:
    """Return the tag changes that replace stale copies of our caption after a person edited one copy.

    We write one caption into several tags (Immich shows `ImageDescription` first, PhotoPrism and digiKam
    `dc:description`). When a person edits one of them (darktable, exiftool, digiKam), the others still
    hold our text and readers disagree: the person's text wins and replaces every copy still holding ours.
    """
    tags = metadata.original if embedded else metadata.sidecar_tags
    names = EMBEDDED_CAPTION_TAGS if embedded else SIDECAR_CAPTION_TAGS
    edit = _edited_copy(tags, names)
    if edit is None:
        return {}
    text, stale = edit
    changes: dict[str, str | tuple[str, ...]] = {
        name: truncate_bytes(text, IPTC_CAPTION_BYTES) if name.startswith("IPTC:") else text for name in stale}
    if "IPTC:Caption-Abstract" in changes:
        if not text.isascii():
            changes["IPTC:CodedCharacterSet"] = "UTF8"
        if "Photoshop:IPTCDigest" in metadata.original:
            changes["Photoshop:IPTCDigest"] = "new"
    return changes


def _edited_copy(tags: Mapping[str, str], names: tuple[str, ...]) -> tuple[str, list[str]] | None:
    """Return (a person's text, the tags still holding our caption) when a person edited one copy of ours."""
    recorded = tags.get("XMP-captiond:CaptionHash", "")
    values = {name: tags[name] for name in names if tags.get(name, "").strip()}
    ours = next((value for value in values.values() if caption_hash(value) == recorded), None)
    if not recorded or ours is None:
        return None
    stale = [name for name, value in values.items() if value in (ours, truncate_bytes(ours, IPTC_CAPTION_BYTES))]
    persons = {value for name, value in values.items() if name not in stale and not is_boilerplate(value)}
    return (inert(persons.pop()), stale) if len(persons) == 1 else None


def plan_carried_caption(metadata: FileMetadata) -> dict[str, str | tuple[str, ...]]:
    """Return the tags that copy the caption readers showed so far into a sidecar we write without one.

    digiKam replaces the photo's XMP with the sidecar's and Immich prefers the sidecar key by key, so a
    sidecar holding only our keywords would hide the photo's own caption there: it carries a copy (with
    our record beside it only where the caption was ours).
    """
    if not is_boilerplate(_sidecar_caption(metadata.sidecar_tags).text):
        return {}
    fallback = _sidecar_caption(metadata.fallback.tags) if metadata.fallback is not None else CurrentCaption()
    if current_source(fallback) not in ("", fallback.recorded_source):
        return {"XMP-dc:Description": inert(fallback.text), "XMP-tiff:ImageDescription": inert(fallback.text)}
    embedded = embedded_caption(metadata)
    if is_boilerplate(embedded.text):
        return {}
    tags: dict[str, str | tuple[str, ...]] = {"XMP-dc:Description": inert(embedded.text),
                                              "XMP-tiff:ImageDescription": inert(embedded.text)}
    if current_source(embedded) == embedded.recorded_source:
        tags.update({tag: metadata.original[tag] for tag in CAPTION_RECORD_TAGS if tag in metadata.original})
    return tags


def current_labels(metadata: FileMetadata, embedded: bool) -> CurrentLabels:
    """Return the keywords readers see in the target and our record of the ones we added."""
    keywords, _, added = metadata.keywords(in_sidecar=not embedded)
    tags = metadata.original if embedded else metadata.sidecar_tags
    return CurrentLabels(tuple(keywords), tuple(added), tags.get("XMP-captiond:LabelsSource", ""),
                         "embedded" if embedded else "sidecar")


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


def plan_caption(metadata: FileMetadata, caption: str, provenance: Provenance, embedded: bool) -> WritePlan:
    """Return the tag changes that write `caption` with its provenance (a pure function).

    Sidecar: XMP-dc:Description and XMP-tiff:ImageDescription (Immich reads the latter).
    Embedded: XMP-dc:Description, EXIF ImageDescription, and IPTC Caption-Abstract only where the file
    already has IPTC (as UTF-8, digest updated). Values that are already in place are left out; when
    the caption and its provenance are all in place the plan is empty.
    """
    caption = inert(caption)
    wanted: dict[str, str] = {"XMP-dc:Description": caption}
    current = metadata.original if embedded else metadata.sidecar_tags
    if embedded:
        if caption.isascii():
            wanted["IFD0:ImageDescription"] = caption
        elif "IFD0:ImageDescription" in metadata.original:
            # EXIF ImageDescription is an ASCII field: UTF-8 there shows as mojibake in Pillow and others.
            # Readers fall back to XMP dc:description, which holds the caption; an old text must not stay.
            wanted["IFD0:ImageDescription"] = ""
        if metadata.has_iptc:
            wanted["IPTC:Caption-Abstract"] = truncate_bytes(caption, IPTC_CAPTION_BYTES)
            if not caption.isascii():
                wanted["IPTC:CodedCharacterSet"] = "UTF8"
    else:
        wanted["XMP-tiff:ImageDescription"] = caption
    wanted["XMP-captiond:CaptionSource"] = inert(provenance.source)
    wanted["XMP-captiond:CaptionModel"] = inert(provenance.model)
    wanted["XMP-captiond:CaptionHash"] = caption_hash(caption)
    if provenance.cached or "XMP-captiond:CaptionCached" in current:
        wanted["XMP-captiond:CaptionCached"] = CACHED_NOTE if provenance.cached else ""  # '' deletes a stale note
    changes = {tag: value for tag, value in wanted.items() if current.get(tag) != value}
    if not changes:
        return WritePlan(metadata.path if embedded else metadata.sidecar, embedded, {})
    changes["XMP-captiond:CaptionTime"] = provenance.time
    if embedded and any(tag.startswith("IPTC:") for tag in changes) and "Photoshop:IPTCDigest" in metadata.original:
        changes["Photoshop:IPTCDigest"] = "new"
    return WritePlan(metadata.path if embedded else metadata.sidecar, embedded, reencode_iptc(metadata, changes))


def reencode_iptc(metadata: FileMetadata, changes: Mapping[str, str | tuple[str, ...]]
                  ) -> dict[str, str | tuple[str, ...]]:
    """Return the changes plus, when they switch IPTC to UTF-8, every existing non-ASCII IPTC value again.

    IPTC without CodedCharacterSet is Latin-1; once it says UTF-8, readers decode the old Latin-1 bytes
    as UTF-8 (a City "München" becomes "M?nchen"). exiftool read the old values correctly, so writing
    them again in the same command stores them as UTF-8.
    """
    if "IPTC:CodedCharacterSet" not in changes:
        return dict(changes)
    again: dict[str, str | tuple[str, ...]] = {}
    for tag, value in metadata.original.items():
        if tag.startswith("IPTC:") and tag not in changes and not value.isascii():
            again[tag] = metadata.original_lists.get(tag, value)
    return {**changes, **again}


def plan_keywords(metadata: FileMetadata, labels: list[str], provenance: Provenance,
                  embedded: bool) -> dict[str, str | tuple[str, ...]]:
    """Return the tag changes that write `labels` as keywords (a pure function).

    Our earlier keywords (XMP-captiond:AddedKeywords) are replaced; every keyword a person or another
    tool added stays. Sidecar: XMP-dc:Subject and XMP-lr:HierarchicalSubject. Embedded: the same, and
    IPTC:Keywords where the file already has IPTC (UTF-8, each cut to 64 bytes at a character boundary).
    """
    current, hierarchical, ours_before = metadata.keywords(in_sidecar=not embedded)
    keywords, added = merge_keywords(current, ours_before, [inert(label) for label in labels])
    persons = [keyword for keyword in keywords if keyword not in added]
    existing_lists = metadata.original_lists if embedded else metadata.sidecar_lists
    existing_tags = metadata.original if embedded else metadata.sidecar_tags
    # Immich, digiKam and darktable read a hierarchy before any flat list (Immich reads no dc:subject at
    # all), so the hierarchy we write carries every flat keyword too: nothing a person had is hidden.
    wanted: dict[str, str | tuple[str, ...]] = {
        "XMP-dc:Subject": tuple(keywords),
        "XMP-lr:HierarchicalSubject": _complete_hierarchy(hierarchical, ours_before, persons, added, "|"),
        "XMP-captiond:AddedKeywords": tuple(added), "XMP-captiond:LabelsSource": inert(provenance.source),
        "XMP-captiond:LabelsModel": inert(provenance.model)}
    if provenance.cached or "XMP-captiond:LabelsCached" in existing_tags:
        wanted["XMP-captiond:LabelsCached"] = CACHED_NOTE if provenance.cached else ""  # '' deletes a stale note
    for tag, separator in FIRST_READ_HIERARCHIES.items():
        entries = metadata.visible_list(tag, in_sidecar=not embedded)
        if entries is not None:  # read before any other keyword tag: it gets everything too
            wanted[tag] = _complete_hierarchy(list(entries), ours_before, persons, added, separator)
    if embedded and metadata.has_iptc:
        wanted["IPTC:Keywords"] = tuple(truncate_bytes(keyword, IPTC_KEYWORD_BYTES) for keyword in keywords)
        if not all(keyword.isascii() for keyword in keywords):
            wanted["IPTC:CodedCharacterSet"] = "UTF8"
    changes = {tag: value for tag, value in wanted.items()
               if (tuple(existing_lists.get(tag, ())) if isinstance(value, tuple) else existing_tags.get(tag)) != value}
    if changes:
        changes["XMP-captiond:LabelsTime"] = provenance.time
        if embedded and any(tag.startswith("IPTC:") for tag in changes) and "Photoshop:IPTCDigest" in metadata.original:
            changes["Photoshop:IPTCDigest"] = "new"
    return reencode_iptc(metadata, changes)


def _unique(keywords: tuple[str, ...]) -> list[str]:
    """Return keywords in order without repeats (ignoring case)."""
    seen: set[str] = set()
    unique = []
    for keyword in keywords:
        if keyword.casefold() not in seen:
            seen.add(keyword.casefold())
            unique.append(keyword)
    return unique


def _complete_hierarchy(entries: list[str], ours_before: list[str], persons: list[str], added: list[str],
                        separator: str) -> tuple[str, ...]:
    """Return a hierarchical keyword list with our earlier entries replaced by the ones we add now, and every
    flat keyword of a person that no entry names yet (as a top-level entry)."""
    ours = {keyword.casefold() for keyword in ours_before}
    kept = [entry for entry in entries if entry.casefold() not in ours]
    named = {part.strip().casefold() for entry in kept for part in entry.split(separator)}
    for keyword in (*persons, *added):
        if keyword.casefold() not in named:
            kept.append(keyword)
            named.add(keyword.casefold())
    return tuple(kept)


def merge_plans(first: WritePlan, extra: Mapping[str, str | tuple[str, ...]]) -> WritePlan:
    """Return one plan holding both sets of changes (one exiftool call writes them)."""
    return WritePlan(first.target, first.embedded, {**first.tags, **extra})


class Exiftool:
    """One long-lived exiftool process, shared by all threads (calls are serialised)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._closed = False
        self._process: exiftool.ExifTool | None = None
        self._links = tempfile.TemporaryDirectory(prefix="captiond-links-")
        if not _INERT_PATH.fullmatch(os.fsencode(self._links.name)):
            self._links.cleanup()
            raise ExiftoolError(f"the temporary folder {self._links.name!r} holds characters exiftool would "
                                "interpret (% or a line break): set TMPDIR to a plain path")

    def __enter__(self) -> Exiftool:
        # Start now, from the calling (main) thread: pyexiftool ties exiftool's life to the starting
        # thread (PR_SET_PDEATHSIG), and a worker thread may end before the program does.
        with self._lock:
            self._process = self._start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the exiftool process (waits for the current command)."""
        with self._lock:
            self._closed = True
            self._stop_process()
        self._links.cleanup()

    def _start(self) -> exiftool.ExifTool:
        executable = shutil.which("exiftool")
        if executable is None:
            raise ExiftoolError("exiftool is not installed (Debian/Ubuntu: apt-get install libimage-exiftool-perl)")
        config = resources.files("captiond") / "exiftool.config"
        process = exiftool.ExifTool(executable=executable, common_args=["-G1", "-n"],
                                    config_file=str(config), encoding="utf-8")
        try:
            process.run()
        except (ExifToolException, OSError, RuntimeError) as exc:
            raise ExiftoolError(f"cannot start exiftool: {exc}") from exc
        return process

    def run(self, *arguments: str | bytes, raw: bool = False) -> tuple[int, str | bytes, str]:
        """Run one exiftool command; return (status, stdout, stderr). Refuses any argument holding a line break."""
        for argument in arguments:
            text = argument if isinstance(argument, bytes) else argument.encode("utf-8", "surrogateescape")
            if b"\n" in text or b"\r" in text or b"\0" in text:
                raise MetadataError(f"refusing an exiftool argument with a line break: {argument!r}")
        with self._lock:
            if self._closed:
                raise ExiftoolError("exiftool was stopped")
            if self._process is None or not self._process.running:
                self._process = self._start()
            try:
                # Raw bytes: exiftool's messages may hold file names that are not UTF-8.
                output = self._process.execute(*arguments, raw_bytes=True)
                stderr = self._process.last_stderr or b""
                stderr_text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else stderr
                if not raw and isinstance(output, bytes):
                    return self._process.last_status or 0, output.decode("utf-8", "replace"), stderr_text
                return self._process.last_status or 0, output, stderr_text
            except (ExifToolException, OSError) as exc:
                # Died or hung mid-command: the next command starts a new exiftool. This file is
                # tried again later (our writes are atomic, so nothing is half-written).
                log.warning("exiftool stopped while working (%s); it will be restarted", exc)
                self._stop_process()
                raise MetadataError(f"exiftool stopped while working on this file ({exc}); will try again",
                                    transient=True) from exc

    def _stop_process(self) -> None:
        if self._process is not None:
            with contextlib.suppress(Exception), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._process.terminate(timeout=5)
        self._process = None

    @contextlib.contextmanager
    def _argument_path(self, path: Path) -> Iterator[bytes]:
        """Yield an inert name for a file or folder: a private symlink to it, named by us (see the module's doc)."""
        suffix = path.suffix if _PLAIN_SUFFIX.fullmatch(path.suffix) else ""
        link = Path(self._links.name) / f"{secrets.token_hex(8)}{suffix}"
        os.symlink(os.path.abspath(path), link)
        try:
            yield os.fsencode(link)
        finally:
            link.unlink(missing_ok=True)

    def read(self, path: Path, sidecar_naming: str = "ext") -> FileMetadata:
        """Return the caption-related tags of an original and of its sidecar, in one exiftool call."""
        sidecar, sidecar_exists = sidecar_path(path, sidecar_naming)
        _refuse_special(sidecar, "the sidecar")
        before = fingerprints(path)
        others = [other for other in other_sidecars(path, sidecar) if _is_regular(other)]  # never a symlink or FIFO
        with contextlib.ExitStack() as stack:
            files = [stack.enter_context(self._argument_path(path))]
            if sidecar_exists:
                files.append(stack.enter_context(self._argument_path(sidecar)))
            other_arguments = [stack.enter_context(self._argument_path(other)) for other in others]
            files += other_arguments
            # -fast2: no maker notes and no trailer scan, a third of exiftool's time on a camera JPEG;
            # RAW files need -fast only, some keep their preview inside the maker notes.
            # -fast2 stops a PNG at its image data, before a Comment chunk stored after it.
            speed = "-fast" if path.suffix.lower() in {*RAW_EXTENSIONS, ".png"} else "-fast2"
            _, output, stderr = self.run("-j", speed, *READ_TAGS, *files)
        try:
            # Numbers as exiftool printed them: a keyword "2023.10" or "1e3" is text, never 2023.1 or 1000.0.
            records = json.loads(output or "[]", parse_float=str, parse_int=str)
        except json.JSONDecodeError as exc:
            raise MetadataError(f"exiftool gave no readable answer: {stderr.strip()[:200]}", str(path)) from exc
        if not records:
            raise MetadataError(f"exiftool cannot read the file: {_first_line(stderr)}", str(path))
        original = _flatten(records[0])
        if "ExifTool:Error" in original:
            raise MetadataError(f"exiftool cannot read the file: {original['ExifTool:Error']}", str(path))
        sidecar_record = records[1] if sidecar_exists and len(records) > 1 else {}
        other_records = records[2 if sidecar_exists else 1:]
        # exiftool leaves out a file it cannot read: match the records by name, not by position.
        by_name = {str(record.get("SourceFile", "")): record for record in other_records}
        read_others = tuple(OtherSidecar(other, _flatten(record), _lists(record))
                            for other, argument in zip(others, other_arguments, strict=True)
                            if (record := by_name.get(os.fsdecode(argument))) is not None)
        return FileMetadata(path, sidecar, sidecar_exists, original, _flatten(sidecar_record),
                            _lists(records[0]), _lists(sidecar_record), read_others, before)

    def extract_previews(self, metadata: FileMetadata) -> list[bytes]:
        """Return every embedded preview image of a RAW file (in one exiftool call; empty if it has none)."""
        if not metadata.preview_sizes():
            return []
        with self._argument_path(metadata.path) as argument:
            _, output, _ = self.run("-j", "-a", "-b", "-fast", *(f"-{tag}" for tag in PREVIEW_TAGS), argument)
        try:
            records = json.loads(output or "[]")
        except json.JSONDecodeError:
            return []
        return [base64.b64decode(value[len("base64:"):]) for value in (records[0] if records else {}).values()
                if isinstance(value, str) and value.startswith("base64:")]

    def _write_new_sidecar(self, target: Path, temporary: Path, packet: bytes,
                           expected: Mapping[Path, Fingerprint | None]) -> None:
        """Write a brand-new sidecar: temporary file, fsync, rename (no exiftool needed)."""
        try:
            _create_exclusively(temporary, packet)
            if os.path.lexists(target) or not unchanged(expected):  # another tool wrote meanwhile
                raise ChangedMeanwhile("a sidecar appeared while captiond wrote one", str(target))
            os.replace(temporary, target)
            _fsync_directory(target.parent)
        except OSError as exc:
            transient = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            raise MetadataError(f"cannot write: {exc.strerror or exc}", str(target), transient=transient) from exc
        finally:
            with contextlib.suppress(OSError):
                temporary.unlink()

    def apply(self, plan: WritePlan, source: Path, expected: Mapping[Path, Fingerprint | None] | None = None) -> None:
        """Write a plan: exiftool writes a new file under a temporary name, which replaces the target atomically.

        `source` is the file the new one is made from: the original (embedded), the existing sidecar,
        or nothing yet (a new sidecar, when it does not exist). `expected` holds the fingerprints the
        plan was made from (see FileMetadata.fingerprints): they are compared before exiftool starts and
        again right before the rename, and any difference raises ChangedMeanwhile with nothing written.
        """
        if plan.empty:
            return
        expected = dict(expected or {})
        if not unchanged(expected):
            raise ChangedMeanwhile("the photo or its sidecar changed since it was read", str(plan.target))
        directory = plan.target.parent
        suffix = plan.target.suffix.lower() if _PLAIN_SUFFIX.fullmatch(plan.target.suffix) else ""
        temporary = directory / f"{TEMPORARY_PREFIX}{os.getpid()}-{secrets.token_hex(6)}{suffix}"
        assignments = _assignments(plan.tags)
        before = _stat_or_none(source)
        if before is not None:
            _refuse_unwritable(source, "the photo" if plan.embedded else "the sidecar")
        packet = new_sidecar_xmp(plan.tags) if before is None and not plan.embedded else None
        if packet is not None:
            self._write_new_sidecar(plan.target, temporary, packet, expected)
            return
        try:
            with self._argument_path(source) as source_argument, self._argument_path(directory) as folder:
                temporary_argument = folder + b"/" + os.fsencode(temporary.name)
                command: list[str | bytes] = [*assignments, temporary_argument]
                if before is not None and plan.target.suffix.lower() in COPY_FIRST_EXTENSIONS:
                    shutil.copy2(source, temporary)
                    command = ["-overwrite_original", *assignments, temporary_argument]
                elif before is not None:
                    command = ["-o", temporary_argument, *assignments, source_argument]
                status, output, stderr = self.run(*command)
            if status != 0 or not temporary.exists():
                reason = _first_line(stderr) or _text(output)
                if _low_on_space(directory, source if plan.embedded else None):
                    raise MetadataError(f"no space left on the disk ({reason}); will try again", str(plan.target),
                                        transient=True)
                raise MetadataError(f"exiftool could not write: {reason}", str(plan.target))
            if (before is not None and _stat_or_none(source) != before) or not unchanged(expected):
                raise ChangedMeanwhile("the file changed while its metadata was written", str(plan.target))
            if before is not None:
                _keep_attributes(source, temporary)
            _fsync(temporary)
            _refuse_special(plan.target, "the photo" if plan.embedded else "the sidecar")
            os.replace(temporary, plan.target)
            _fsync_directory(directory)
        except OSError as exc:
            raise MetadataError(f"cannot write: {exc.strerror or exc}", str(plan.target)) from exc
        finally:
            with contextlib.suppress(OSError):
                temporary.unlink()


# How each tag of a new sidecar is serialised: namespace prefix, property, and kind (text, alt, bag).
_NEW_SIDECAR_TAGS: dict[str, tuple[str, str, str]] = {
    "XMP-dc:Description": ("dc", "description", "alt"),
    "XMP-tiff:ImageDescription": ("tiff", "ImageDescription", "alt"),
    "XMP-dc:Subject": ("dc", "subject", "seq"),  # a Seq for PhotoPrism (see exiftool.config)
    "XMP-lr:HierarchicalSubject": ("lr", "hierarchicalSubject", "bag"),
    **{f"XMP-captiond:{name}": ("captiond", name, "text") for name in (
        "CaptionSource", "CaptionModel", "CaptionTime", "CaptionHash", "CaptionCached", "LabelsSource", "LabelsModel",
        "LabelsTime", "LabelsCached")},
    "XMP-captiond:AddedKeywords": ("captiond", "AddedKeywords", "bag"),
    "XMP-digiKam:TagsList": ("digiKam", "TagsList", "seq"),
    "XMP-microsoft:LastKeywordXMP": ("MicrosoftPhoto", "LastKeywordXMP", "bag"),
}
_NAMESPACES = {"dc": "http://purl.org/dc/elements/1.1/", "tiff": "http://ns.adobe.com/tiff/1.0/",
               "lr": "http://ns.adobe.com/lightroom/1.0/", "captiond": "http://ns.captiond.app/xmp/1.0/",
               "digiKam": "http://www.digikam.org/ns/1.0/", "MicrosoftPhoto": "http://ns.microsoft.com/photo/1.0/"}


def new_sidecar_xmp(tags: Mapping[str, str | tuple[str, ...]]) -> bytes | None:
    """Return a complete XMP sidecar holding `tags`, or None if a tag is not one we serialise ourselves.

    A brand-new sidecar is written directly (the packet exiftool itself would write), saving an exiftool
    round trip per photo in a backfill; any existing file is always updated through exiftool.
    """
    if not tags or any(tag not in _NEW_SIDECAR_TAGS for tag in tags):
        return None
    prefixes = sorted({_NEW_SIDECAR_TAGS[tag][0] for tag in tags})
    declarations = "".join(f"\n  xmlns:{prefix}='{_NAMESPACES[prefix]}'" for prefix in prefixes)
    properties = []
    for tag, value in tags.items():
        prefix, name, kind = _NEW_SIDECAR_TAGS[tag]
        element = f"{prefix}:{name}"
        if kind == "text":
            properties.append(f"  <{element}>{_xml_text(str(value))}</{element}>")
        elif kind == "alt":
            properties.append(f"  <{element}>\n   <rdf:Alt>\n    <rdf:li xml:lang='x-default'>"
                              f"{_xml_text(str(value))}</rdf:li>\n   </rdf:Alt>\n  </{element}>")
        else:
            items = (value,) if isinstance(value, str) else value
            if not items:
                continue
            lines = "".join(f"\n    <rdf:li>{_xml_text(item)}</rdf:li>" for item in items)
            container = "rdf:Seq" if kind == "seq" else "rdf:Bag"
            properties.append(f"  <{element}>\n   <{container}>{lines}\n   </{container}>\n  </{element}>")
    body = "\n".join(properties)
    packet = ("<?xpacket begin='\ufeff' id='W5M0MpCehiHzreSzNTczkc9d'?>\n"
              "<x:xmpmeta xmlns:x='adobe:ns:meta/' x:xmptk='captiond'>\n"
              "<rdf:RDF xmlns:rdf='http://www.w3.org/1999/02/22-rdf-syntax-ns#'>\n"
              f" <rdf:Description rdf:about=''{declarations}>\n{body}\n </rdf:Description>\n"
              "</rdf:RDF>\n</x:xmpmeta>\n<?xpacket end='w'?>")
    return packet.encode("utf-8")


def _xml_text(value: str) -> str:
    """Return text safe inside an XML element: escaped, and without characters XML 1.0 cannot hold."""
    allowed = "".join(character for character in inert(value) if character in "\t\n\r" or (
        " " <= character <= "\ud7ff" or "\ue000" <= character <= "\ufffd" or character >= "\U00010000"))
    return xml.sax.saxutils.escape(allowed)


def _assignments(tags: Mapping[str, str | tuple[str, ...]]) -> list[str]:
    """Return exiftool arguments; a tuple becomes one assignment per item (the first replaces the list)."""
    arguments = []
    for tag, value in tags.items():
        if tag in LANGUAGE_ALTERNATIVE_TAGS:
            tag = f"{tag}-x-default"  # ours only: a person's caption in another language stays
        if isinstance(value, tuple):
            arguments += [f"-{tag}={inert(item)}" for item in value] or [f"-{tag}="]
        else:
            arguments.append(f"-{tag}={inert(value)}")
    return arguments


LANGUAGE_ALTERNATIVE_TAGS = frozenset({"XMP-dc:Description", "XMP-tiff:ImageDescription"})


def _create_exclusively(path: Path, data: bytes) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        os.write(descriptor, data)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def remove_stale_temporaries(directory: Path, names: list[str]) -> None:
    """Delete temporary files of ours left by a process that no longer runs."""
    for name in names:
        if not name.startswith(TEMPORARY_PREFIX):
            continue
        pid_text = name[len(TEMPORARY_PREFIX):].split("-", 1)[0]
        if pid_text.isdigit() and int(pid_text) != os.getpid() and _process_alive(int(pid_text)):
            continue
        if pid_text.isdigit() and int(pid_text) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            (directory / name).unlink()
            log.info("removed a temporary file left by an interrupted write: %s", directory / name)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _flatten(record: Mapping[str, object]) -> dict[str, str]:
    """Return exiftool's JSON record with every value as text (lists joined by ', ')."""
    flat = {}
    for key, value in record.items():
        if isinstance(value, list):
            flat[key] = ", ".join(str(item) for item in value)
        elif isinstance(value, dict):
            flat[key] = json.dumps(value, ensure_ascii=False)
        else:
            flat[key] = str(value)
    return flat


def _text(output: str | bytes) -> str:
    return output.decode("utf-8", "replace") if isinstance(output, bytes) else output


def _lists(record: Mapping[str, object]) -> dict[str, tuple[str, ...]]:
    """Return the list-type tags of exiftool's JSON record as tuples (a single item arrives as a scalar)."""
    lists = {}
    iptc_lists = {key for key, value in record.items() if key.startswith("IPTC:") and isinstance(value, list)}
    for tag in LIST_TAGS | iptc_lists:
        value = record.get(tag)
        if value is None:
            continue
        items = value if isinstance(value, list) else [value]
        lists[tag] = tuple(str(item) for item in items if str(item).strip())
    return lists


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def _is_regular(path: Path) -> bool:
    """Return whether `path` is a regular file and not a symlink."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _refuse_special(path: Path, what: str) -> None:
    """Raise a MetadataError if `path` is a symlink or exists as anything but a regular file (never followed)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise MetadataError(f"cannot look at {what}: {exc.strerror or exc}") from exc
    if stat.S_ISLNK(mode):
        raise MetadataError(f"{what} is a symlink: not followed")
    if not stat.S_ISREG(mode):
        raise MetadataError(f"{what} is not a regular file (a FIFO, device or socket is never opened)")


def _stat_or_none(path: Path) -> tuple[int, int] | None:
    try:
        status = path.stat()
    except FileNotFoundError:
        return None
    return status.st_size, status.st_mtime_ns


def _low_on_space(directory: Path, original: Path | None) -> bool:
    """Return whether the disk lacks room for a sidecar (or for a new copy of `original`)."""
    try:
        disk = os.statvfs(directory)
        needed = 256 * 1024 + (original.stat().st_size if original is not None else 0)
    except OSError:
        return False
    return disk.f_bavail * disk.f_frsize < needed


def _refuse_unwritable(path: Path, what: str) -> None:
    """Raise a MetadataError unless this process could write the file in place (access, not only mode bits).

    Replacing it by a rename needs only a writable folder: without this, an ordinary user would replace,
    and take over, a photo owned by someone else.
    """
    if not os.access(path, os.W_OK) or not os.stat(path).st_mode & 0o222:
        raise MetadataError(f"{what} is not writable by captiond (owner or permissions): not changed")


def _overflow_id(kind: str) -> int:
    """Return the id the kernel shows for an owner not mapped into this user namespace (65534 by default)."""
    try:
        return int(Path(f"/proc/sys/kernel/overflow{kind}").read_text().strip())
    except (OSError, ValueError):
        return 65534


def _keep_attributes(original: Path, replacement: Path) -> None:
    """Give the file that replaces `original` its owner, group, mode and every extended attribute.

    Extended attributes hold ratings and tags (Dolphin, digiKam: user.*) and POSIX ACLs
    (system.posix_acl_*); the ACLs are set last, as they also set the mode's group bits. Where the
    owner cannot be kept (an ordinary user replacing a group-writable photo of someone else), or an
    attribute cannot be copied, the file is not replaced. Only attributes the system manages itself
    (security.*, such as SELinux labels) may differ.
    """
    status = os.stat(original)
    try:
        os.chown(replacement, status.st_uid, status.st_gid)
    except OSError as exc:
        unmapped = status.st_uid == _overflow_id("uid") or status.st_gid == _overflow_id("gid")
        if not unmapped and (status.st_uid, status.st_gid) != (os.geteuid(), os.getegid()):
            raise MetadataError(f"cannot keep the file's owner ({status.st_uid}:{status.st_gid}): "
                                f"{exc.strerror or exc}; not changed") from exc
    os.chmod(replacement, status.st_mode & 0o7777)
    wanted = _attributes(original)
    for name in _attributes(replacement):  # inherited from the folder (a default ACL), not the original's
        if name not in wanted and not name.startswith("security."):
            os.removexattr(replacement, name)
    for name, value in sorted(wanted.items(), key=lambda item: item[0].startswith("system.posix_acl")):
        try:
            os.setxattr(replacement, name, value)
        except OSError as exc:
            if not name.startswith("security."):
                raise MetadataError(f"cannot keep the extended attribute {name}: {exc.strerror or exc}; "
                                    "not changed") from exc


def _attributes(path: Path) -> dict[str, bytes]:
    """Return a file's extended attributes ({} where the filesystem has none)."""
    try:
        return {name: os.getxattr(path, name) for name in os.listxattr(path)}
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return {}
        raise


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _fsync_directory(directory: Path) -> None:
    with contextlib.suppress(OSError):
        _fsync(directory)
