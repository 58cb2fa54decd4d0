"""The reader matrix: how each photo app finds a photo's sidecar and picks the caption and keywords it shows.

One function per app, each rule with the app's source file (or, for Lightroom, its documentation) named,
applied to real files with exiftool (what Immich and PhotoPrism run), PhotoPrism's own XMP reader (built
from its source, release and develop: ../shared/tools/photoprism-xmp) and exiv2 (what digiKam and
darktable are built on). The README's app table states the same rules.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

PROPRIETARY_RAW = frozenset({".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".raf", ".rw2", ".rwl",
                             ".orf", ".pef", ".srw", ".mrw", ".3fr", ".erf", ".kdc", ".mef", ".mos", ".x3f", ".iiq"})
# The project's shared tools folder sits beside the checkout (/work/main) or beside the worktrees (/work/wt/NAME).
PHOTOPRISM_XMP = Path(os.environ.get("PHOTOPRISM_XMP") or next(
    (folder for folder in (Path(__file__).parents[index] / "shared" / "tools" / "photoprism-xmp" for index in (2, 3))
     if folder.is_dir()), Path("/nonexistent")))


@dataclass(frozen=True)
class Shown:
    """What an app shows for a photo: its caption and its keywords (hierarchies as paths with '/')."""

    caption: str
    keywords: tuple[str, ...]

    def shows_keyword(self, keyword: str) -> bool:
        """Return whether a keyword is shown, alone or as the last level of a hierarchy."""
        wanted = keyword.casefold()
        return any(entry.casefold() == wanted or entry.casefold().endswith("/" + wanted) for entry in self.keywords)


def exiftool_tags(path: Path | None, grouped: bool = True) -> dict[str, object]:
    """Return exiftool's JSON record of a file (-G1 keys, or bare tag names as exiftool-vendored gives Immich)."""
    if path is None or not path.exists():
        return {}
    output = subprocess.run(["exiftool", "-j", "-a" if grouped else "-j", *(["-G1"] if grouped else []), str(path)],
                            capture_output=True, text=True, check=True).stdout
    record: dict[str, object] = json.loads(output)[0]
    record.pop("SourceFile", None)
    return record


def as_list(value: object) -> list[str]:
    """Return a tag value as a list of strings (exiftool gives one item as a scalar)."""
    if value is None or value == "":
        return []
    return [str(item) for item in (value if isinstance(value, list) else [value])]


def first_existing(*paths: Path) -> Path | None:
    """Return the first of the paths that exists as a file with exactly that name."""
    for path in paths:
        if path.is_file() and path.name in os.listdir(path.parent):
            return path
    return None


# ------------------------------------------------------------------------------------------------ Immich


def immich(photo: Path) -> Shown:
    """Immich, server/src/services/metadata.service.ts.

    processSidecar: `IMG.ext.xmp`, else `IMG.xmp`. mergeExifTags: `{...mediaTags, ...sidecarTags}` (the
    sidecar overrides tag by tag). description: `ImageDescription || Description`. getTagList: `TagsList`,
    else `HierarchicalSubject` ('|' becomes '/'), else `Keywords` (IPTC; dc:subject is never read).
    """
    sidecar = first_existing(photo.with_name(photo.name + ".xmp"), photo.with_suffix(".xmp"))
    tags = {**exiftool_tags(photo, grouped=False), **exiftool_tags(sidecar, grouped=False)}
    caption = str(tags.get("ImageDescription") or tags.get("Description") or "").strip()
    if tags.get("TagsList"):
        keywords = as_list(tags["TagsList"])
    elif tags.get("HierarchicalSubject"):
        keywords = ["/".join(part.replace("/", "|") for part in entry.split("|"))
                    for entry in as_list(tags["HierarchicalSubject"])]
    else:
        keywords = as_list(tags.get("Keywords"))
    return Shown(caption, tuple(keywords))


# ------------------------------------------------------------------------------------------------ digiKam

# core/libs/metadataengine/dmetadata/dmetadatasettingscontainer.cpp, defaultCommentValues / defaultTagValues.
DIGIKAM_CAPTION = ("XMP-dc:Description", "XMP-exif:UserComment", "XMP-tiff:ImageDescription", "XMP-acdsee:Notes",
                   "File:Comment", "PNG:Comment", "IFD0:ImageDescription", "ExifIFD:UserComment",
                   "IPTC:Caption-Abstract")
DIGIKAM_TAGS = (("XMP-digiKam:TagsList", "/"), ("XMP-microsoft:LastKeywordXMP", "/"),
                ("XMP-lr:HierarchicalSubject", "|"), ("XMP-mediapro:CatalogSets", "|"), ("XMP-dc:Subject", ""),
                ("IPTC:Keywords", ""))


def digikam(photo: Path, read_from_sidecar: bool = True) -> Shown:
    """digiKam: core/libs/metadataengine/engine/metaengine_fileio.cpp and metaengine_mergehelper.h.

    With "Read from sidecar" on, an existing `IMG.ext.xmp` replaces the photo's XMP entirely (EXIF, IPTC
    and comments still come from the photo). Caption: the first non-blank of DIGIKAM_CAPTION; keywords:
    the first non-empty of DIGIKAM_TAGS (dmetadatasettingscontainer.cpp).
    """
    own = exiftool_tags(photo)
    sidecar = first_existing(photo.with_name(photo.name + ".xmp")) if read_from_sidecar else None
    if sidecar is not None:
        own = {key: value for key, value in own.items() if not key.startswith("XMP-")}
        own.update({key: value for key, value in exiftool_tags(sidecar).items() if key.startswith("XMP-")})
    caption = next((str(own[tag]).strip() for tag in DIGIKAM_CAPTION if str(own.get(tag, "")).strip()), "")
    for tag, separator in DIGIKAM_TAGS:
        entries = as_list(own.get(tag))
        if entries:
            return Shown(caption, tuple(entry.replace(separator, "/") if separator else entry for entry in entries))
    return Shown(caption, ())


# ------------------------------------------------------------------------------------------------ darktable


def darktable(photo: Path) -> Shown:
    """darktable: src/common/exif.cc (dt_exif_read at import, dt_exif_xmp_read for the sidecar).

    Its sidecar is `IMG.ext.xmp` (src/common/image.c, dt_image_path_append_version); values there win over
    the photo's own XMP. Caption: dc:description. Keywords: lr:hierarchicalSubject when present, else
    dc:subject. darktable rewrites its sidecar from its database afterwards (keeping what it imported).
    """
    tags = {**exiftool_tags(photo), **exiftool_tags(first_existing(photo.with_name(photo.name + ".xmp")))}
    caption = str(tags.get("XMP-dc:Description", "")).strip()
    hierarchy = as_list(tags.get("XMP-lr:HierarchicalSubject"))
    keywords = [entry.replace("|", "/") for entry in hierarchy] or as_list(tags.get("XMP-dc:Subject"))
    return Shown(caption, tuple(keywords))


# ------------------------------------------------------------------------------------------------ Lightroom


def lightroom(photo: Path) -> Shown:
    """Lightroom Classic (Adobe's documentation: "XMP sidecar files" / "Metadata for DNG, JPEG, TIFF").

    Proprietary RAW: the `IMG.xmp` sidecar only (never `IMG.ext.xmp`). DNG, JPEG, TIFF, PNG, HEIC: the
    XMP embedded in the file only. Caption: dc:description; keywords: lr:hierarchicalSubject and dc:subject.
    """
    if photo.suffix.lower() in PROPRIETARY_RAW:
        tags = exiftool_tags(first_existing(photo.with_suffix(".xmp")))
    else:
        tags = {key: value for key, value in exiftool_tags(photo).items() if key.startswith("XMP-")}
    caption = str(tags.get("XMP-dc:Description", "")).strip()
    hierarchy = [entry.replace("|", "/") for entry in as_list(tags.get("XMP-lr:HierarchicalSubject"))]
    return Shown(caption, tuple(dict.fromkeys([*hierarchy, *as_list(tags.get("XMP-dc:Subject"))])))


# ------------------------------------------------------------------------------------------------ PhotoPrism


def photoprism_xmp(version: str, sidecar: Path) -> dict[str, str]:
    """Return what PhotoPrism's own XMP reader (internal/meta/xmp_document.go) reads from a sidecar."""
    binary = PHOTOPRISM_XMP / f"photoprism-xmp-{version}"
    output = subprocess.run([str(binary), str(sidecar)], capture_output=True, text=True, check=True).stdout
    record: dict[str, str] = json.loads(output)[0]
    return record


def photoprism(photo: Path, version: str = "release") -> Shown:
    """PhotoPrism: internal/photoprism/mediafile_related.go, internal/meta/xmp.go, internal/meta/json_exiftool.go.

    Every `.xmp` whose name starts with the photo's base name is read with its XMP reader; sidecar values
    (source `xmp`, 32) win over embedded ones (`meta`, 16). Embedded (exiftool -n -m -j): caption from
    Description, ImageDescription, Caption-Abstract; keywords from IPTC Keywords (a sidecar's keywords
    replace them). Released reader: keywords only from a dc:subject rdf:Seq. Develop: dc:subject (a
    sidecar's, and the embedded Subject) goes to Subject, shown here with the keywords, as a person's
    words must vanish from neither.
    """
    sidecars = sorted(path for path in photo.parent.iterdir()
                      if path.suffix.lower() == ".xmp" and path.name.startswith(photo.stem + "."))
    read = [photoprism_xmp(version, sidecar) for sidecar in sidecars]
    embedded = exiftool_tags(photo, grouped=False)
    caption = next((record["caption"] for record in read if record.get("caption")), "") or str(
        embedded.get("Description") or embedded.get("ImageDescription") or embedded.get("Caption-Abstract")
        or "").strip()
    field = "keywords" if version == "release" else "subject"
    from_sidecars = [word.strip() for record in read for word in record.get(field, "").split(",") if word.strip()]
    if version == "release":
        keywords = from_sidecars or as_list(embedded.get("Keywords"))
    else:
        keywords = [*from_sidecars, *as_list(embedded.get("Subject")), *as_list(embedded.get("Keywords"))]
    return Shown(caption, tuple(dict.fromkeys(keywords)))


# ------------------------------------------------------------------------------------------------ exiv2


def exiv2_problems(path: Path) -> str:
    """Return what exiv2 (the library of digiKam, darktable, gThumb, Shotwell) complains of, reading all of a file."""
    process = subprocess.run(["exiv2", "-pa", str(path)], capture_output=True, text=True, check=False)
    problems = process.stderr.strip()
    if process.returncode not in (0, 253):  # 253: the file holds no metadata of one kind
        problems += f" (exit code {process.returncode})"
    return problems


APPS: Mapping[str, Callable[[Path], Shown]] = {
    "PhotoPrism (release)": lambda photo: photoprism(photo, "release"),
    "PhotoPrism (develop)": lambda photo: photoprism(photo, "develop"),
    "Immich": immich,
    "digiKam": digikam,
    "darktable": darktable,
    "Lightroom": lightroom,
}


def available() -> str:
    """Return why the matrix cannot run here ("" when it can)."""
    if shutil.which("exiv2") is None:
        return "exiv2 is not installed"
    if not (PHOTOPRISM_XMP / "photoprism-xmp-release").exists():
        return f"PhotoPrism's XMP reader is not at {PHOTOPRISM_XMP}"
    return ""
