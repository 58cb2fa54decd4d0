"""Atomic file writes: a temporary name beside the target, fsync, one rename; owner, mode and xattrs kept.

A crash leaves at worst a temporary file of ours (`TEMPORARY_PREFIX`), which `remove_stale_temporaries`
deletes. A brand-new sidecar is serialised here directly (`new_sidecar_xmp`); any existing file is
rewritten by exiftool (exiftool_process.py) into a temporary name from here.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import secrets
import stat
import xml.sax.saxutils
from collections.abc import Iterator, Mapping
from pathlib import Path

from .errors import ChangedMeanwhile, MetadataError
from .metadata import inert
from .sidecars import Fingerprint, unchanged

log = logging.getLogger(__name__)

TEMPORARY_PREFIX = ".captiond-tmp-"
_PLAIN_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,10}")


def plain_suffix(path: Path) -> str:
    """Return the file's extension when it is plain letters and digits (else ""): a name of ours may carry it."""
    return path.suffix if _PLAIN_SUFFIX.fullmatch(path.suffix) else ""


def temporary_name(target: Path) -> Path:
    """Return a new temporary name of ours beside `target`, with its extension (exiftool picks a format by it)."""
    return target.parent / f"{TEMPORARY_PREFIX}{os.getpid()}-{secrets.token_hex(6)}{plain_suffix(target).lower()}"


@contextlib.contextmanager
def replacing(target: Path, what: str, keep_attributes_of_target: bool) -> Iterator[Path]:
    """Yield a temporary name beside `target`; once the block has written that file, it replaces `target`.

    The new file gets the target's owner, mode and extended attributes (when it existed), is fsynced
    before the one rename and its folder after. If the block raises, the target is left as it was; the
    temporary file is removed either way.
    """
    temporary = temporary_name(target)
    try:
        yield temporary
        if keep_attributes_of_target:
            _keep_attributes(target, temporary)
        _fsync(temporary)
        refuse_special(target, what)
        os.replace(temporary, target)
        _fsync_directory(target.parent)
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


def refuse_special(path: Path, what: str) -> None:
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


def stat_or_none(path: Path) -> tuple[int, int] | None:
    try:
        status = path.stat()
    except FileNotFoundError:
        return None
    return status.st_size, status.st_mtime_ns


def low_on_space(directory: Path, original: Path | None) -> bool:
    """Return whether the disk lacks room for a sidecar (or for a new copy of `original`)."""
    try:
        disk = os.statvfs(directory)
        needed = 256 * 1024 + (original.stat().st_size if original is not None else 0)
    except OSError:
        return False
    return disk.f_bavail * disk.f_frsize < needed


def refuse_unwritable(path: Path, what: str) -> None:
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
    """Flush a file (or a folder's entries) to the disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _fsync_directory(directory: Path) -> None:
    """Flush a folder's entries (a rename in it) to the disk, where the filesystem allows it."""
    with contextlib.suppress(OSError):
        _fsync(directory)


def write_new_sidecar(target: Path, packet: bytes, expected: Mapping[Path, Fingerprint | None]) -> None:
    """Write a brand-new sidecar: temporary file, fsync, rename (no exiftool needed)."""
    temporary = temporary_name(target)
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
