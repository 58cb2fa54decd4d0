"""The tag changes that write a caption and keywords with their provenance: pure functions of FileMetadata."""

from __future__ import annotations

from collections.abc import Mapping

from .labels import merge_keywords
from .metadata import (
    CACHED_NOTE,
    CAPTION_RECORD_TAGS,
    IPTC_CAPTION_BYTES,
    FileMetadata,
    Provenance,
    WritePlan,
    edited_copy,
    embedded_caption,
    inert,
    sidecar_caption,
    truncate_bytes,
)
from .sources import CurrentCaption, caption_hash, current_source, is_boilerplate

# Keyword paths that digiKam (and for TagsList, Immich) read before lr:hierarchicalSubject and dc:subject
# (digiKam: dmetadatasettingscontainer.cpp, defaultTagValues): continued wherever they exist.
FIRST_READ_HIERARCHIES = {"XMP-digiKam:TagsList": "/", "XMP-microsoft:LastKeywordXMP": "/"}
IPTC_KEYWORD_BYTES = 64


def plan_repaired_copies(metadata: FileMetadata, embedded: bool) -> dict[str, str | tuple[str, ...]]:
    """Return the tag changes that replace stale copies of our caption after a person edited one copy.

    We write one caption into several tags (Immich shows `ImageDescription` first, PhotoPrism and digiKam
    `dc:description`). When a person edits one of them (darktable, exiftool, digiKam), the others still
    hold our text and readers disagree: the person's text wins and replaces every copy still holding ours.
    """
    target = metadata.target(embedded)
    edit = edited_copy(target.tags, target.caption_tags)
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


def plan_carried_caption(metadata: FileMetadata) -> dict[str, str | tuple[str, ...]]:
    """Return the tags that copy the caption readers showed so far into a sidecar we write without one.

    digiKam replaces the photo's XMP with the sidecar's and Immich prefers the sidecar key by key, so a
    sidecar holding only our keywords would hide the photo's own caption there: it carries a copy (with
    our record beside it only where the caption was ours).
    """
    if not is_boilerplate(sidecar_caption(metadata.sidecar_tags).text):
        return {}
    fallback = sidecar_caption(metadata.fallback.tags) if metadata.fallback is not None else CurrentCaption()
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


def plan_caption(metadata: FileMetadata, caption: str, provenance: Provenance, embedded: bool) -> WritePlan:
    """Return the tag changes that write `caption` with its provenance (a pure function).

    Sidecar: XMP-dc:Description and XMP-tiff:ImageDescription (Immich reads the latter).
    Embedded: XMP-dc:Description, EXIF ImageDescription, and IPTC Caption-Abstract only where the file
    already has IPTC (as UTF-8, digest updated). Values that are already in place are left out; when
    the caption and its provenance are all in place the plan is empty.
    """
    caption = inert(caption)
    wanted: dict[str, str] = {"XMP-dc:Description": caption}
    target = metadata.target(embedded)
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
    if provenance.cached or "XMP-captiond:CaptionCached" in target.tags:
        wanted["XMP-captiond:CaptionCached"] = CACHED_NOTE if provenance.cached else ""  # '' deletes a stale note
    changes = {tag: value for tag, value in wanted.items() if target.tags.get(tag) != value}
    if not changes:
        return WritePlan(target.path, embedded, {})
    changes["XMP-captiond:CaptionTime"] = provenance.time
    if embedded and any(tag.startswith("IPTC:") for tag in changes) and "Photoshop:IPTCDigest" in metadata.original:
        changes["Photoshop:IPTCDigest"] = "new"
    return WritePlan(target.path, embedded, reencode_iptc(metadata, changes))


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
    current, hierarchical, ours_before = metadata.keywords(embedded)
    keywords, added = merge_keywords(current, ours_before, [inert(label) for label in labels])
    persons = [keyword for keyword in keywords if keyword not in added]
    target = metadata.target(embedded)
    # Immich, digiKam and darktable read a hierarchy before any flat list (Immich reads no dc:subject at
    # all), so the hierarchy we write carries every flat keyword too: nothing a person had is hidden.
    wanted: dict[str, str | tuple[str, ...]] = {
        "XMP-dc:Subject": tuple(keywords),
        "XMP-lr:HierarchicalSubject": _complete_hierarchy(hierarchical, ours_before, persons, added, "|"),
        "XMP-captiond:AddedKeywords": tuple(added), "XMP-captiond:LabelsSource": inert(provenance.source),
        "XMP-captiond:LabelsModel": inert(provenance.model)}
    if provenance.cached or "XMP-captiond:LabelsCached" in target.tags:
        wanted["XMP-captiond:LabelsCached"] = CACHED_NOTE if provenance.cached else ""  # '' deletes a stale note
    for tag, separator in FIRST_READ_HIERARCHIES.items():
        entries = metadata.visible_list(tag, embedded)
        if entries is not None:  # read before any other keyword tag: it gets everything too
            wanted[tag] = _complete_hierarchy(list(entries), ours_before, persons, added, separator)
    if embedded and metadata.has_iptc:
        wanted["IPTC:Keywords"] = tuple(truncate_bytes(keyword, IPTC_KEYWORD_BYTES) for keyword in keywords)
        if not all(keyword.isascii() for keyword in keywords):
            wanted["IPTC:CodedCharacterSet"] = "UTF8"
    changes = {tag: value for tag, value in wanted.items()
               if (tuple(target.lists.get(tag, ())) if isinstance(value, tuple) else target.tags.get(tag)) != value}
    if changes:
        changes["XMP-captiond:LabelsTime"] = provenance.time
        if embedded and any(tag.startswith("IPTC:") for tag in changes) and "Photoshop:IPTCDigest" in metadata.original:
            changes["Photoshop:IPTCDigest"] = "new"
    return reencode_iptc(metadata, changes)


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
