"""A photo's sidecar names (which one is ours, which are others') and the fingerprints a write is checked against."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from .config import SidecarName
from .imaging import RAW_EXTENSIONS, SUPPORTED_EXTENSIONS

SIDECAR_SUFFIXES = (".xmp", ".XMP")


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


def sidecar_path(path: Path, naming: SidecarName) -> tuple[Path, bool]:
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
