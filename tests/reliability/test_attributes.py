"""Files captiond replaces keep everything but their tags: owner, mode, extended attributes, ACLs, IPTC text.

Real files on the real filesystem: ratings and tags as `user.*` attributes (as Dolphin and digiKam
keep them), a POSIX ACL (`system.posix_acl_access`, written as the kernel's own binary format, so no
`setfacl` is needed), a private mode and another owner, on photos (embedded mode) and on existing
sidecars (sidecar mode); a Latin-1 IPTC City next to a caption that needs UTF-8.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from reliability_support import (
    EXIFTOOL_CONFIG,
    REPORT,
    Problems,
    captiond,
    environment,
    photo_bytes,
    records_failures,
    write_daemon_config,
)

from emulator import OllamaEmulator, Reply

ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_MASK, ACL_OTHER = 0x01, 0x02, 0x04, 0x10, 0x20
UNDEFINED = 0xFFFFFFFF
ATTRIBUTES = {"user.xdg.tags": b"boat,holiday", "user.baloo.rating": b"8", "user.xdg.comment": "Über".encode()}


def access_acl(user: int) -> bytes:
    """Return a POSIX access ACL (user::rw-, user:USER:r--, group::r--, mask::r--, other::---) as the kernel
    stores it in `system.posix_acl_access` (linux/posix_acl_xattr.h)."""
    entries = [(ACL_USER_OBJ, 6, UNDEFINED), (ACL_USER, 4, user), (ACL_GROUP_OBJ, 4, UNDEFINED),
               (ACL_MASK, 4, UNDEFINED), (ACL_OTHER, 0, UNDEFINED)]
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *entry) for entry in entries)


def decorate(path: Path) -> None:
    """Give a file attributes, an ACL, mode 0640 (the ACL's mask is r--: 0640 as shown) and owner 1234:2345."""
    for name, value in ATTRIBUTES.items():
        os.setxattr(path, name, value)
    os.chown(path, 1234, 2345)
    os.setxattr(path, "system.posix_acl_access", access_acl(4321))


def describe(path: Path) -> dict[str, object]:
    """Return what must survive a replacement: owner, mode, every extended attribute."""
    status = os.stat(path)
    return {"owner": (status.st_uid, status.st_gid), "mode": oct(stat.S_IMODE(status.st_mode)),
            "attributes": {name: os.getxattr(path, name) for name in sorted(os.listxattr(path))}}


def supported(folder: Path) -> bool:
    """Return whether this filesystem and process can set user attributes, ACLs and owners."""
    probe = folder / "probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.probe", b"1")
        os.setxattr(probe, "system.posix_acl_access", access_acl(4321))
        os.chown(probe, 1234, 2345)
    except OSError as error:
        if error.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
            return False
        raise
    finally:
        probe.unlink()
    return True


def exiftool(*arguments: str | Path) -> str:
    return subprocess.run(["exiftool", "-config", str(EXIFTOOL_CONFIG), *map(str, arguments)], capture_output=True,
                          text=True, check=True, timeout=60).stdout


@pytest.mark.parametrize("write", ["sidecar", "embedded"])
@records_failures
def test_replaced_files_keep_owner_mode_attributes_and_acls(write: str, tmp_path: Path,
                                                            request: pytest.FixtureRequest) -> None:
    """Figure: a photo (embedded mode) or its existing sidecar (sidecar mode) with three user.* attributes,
    a POSIX ACL, a private mode and another owner is captioned, and the file that replaces it has the
    same owner, mode and every attribute byte for byte."""
    originals = tmp_path / "originals"
    originals.mkdir()
    if not supported(originals) or os.geteuid() != 0:
        pytest.skip("needs root and a filesystem with user attributes and POSIX ACLs")
    photo = originals / "IMG_1.jpg"
    photo.write_bytes(photo_bytes(1))
    sidecar = Path(f"{photo}.xmp")
    exiftool("-q", "-XMP-dc:Subject=kept", "-o", sidecar, photo)
    target = photo if write == "embedded" else sidecar
    decorate(target)
    before = describe(target)
    with OllamaEmulator() as emulator:
        config = write_daemon_config(tmp_path, emulator.url, Write=write)
        result = captiond("run", "--config", config, "--originals", originals)
    problems = Problems()
    problems.expect(result.exit_code == 0, f"exit code {result.exit_code}: {result.stdout} {result.stderr[-1500:]}")
    problems.expect("ollama" in exiftool("-XMP-captiond:CaptionSource", target), "not captioned")
    after = describe(target)
    problems.expect(after == before, f"the replaced file lost something:\n before {before}\n after  {after}")
    if shutil.which("getfacl"):
        acl = subprocess.run(["getfacl", "-cn", str(target)], capture_output=True, text=True, check=False).stdout
        problems.expect("user:4321:r--" in acl, f"getfacl shows no ACL entry for 4321: {acl}")
    REPORT.record(request, write=write, problems=list(problems))
    problems.assert_none()


@records_failures
def test_a_latin1_iptc_city_survives_a_utf8_caption(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Figure: a photo whose IPTC (no CodedCharacterSet: Latin-1) holds City "München" and a keyword
    "Straße" gets a caption that needs UTF-8 in embedded mode; afterwards IPTC says UTF-8 and a reader
    sees "München" and "Straße" (not "M?nchen")."""
    originals = tmp_path / "originals"
    originals.mkdir()
    photo = originals / "IMG_1.jpg"
    photo.write_bytes(photo_bytes(2))
    exiftool("-q", "-overwrite_original", "-charset", "iptc=Latin1", "-IPTC:City=München", "-IPTC:Keywords=Straße",
             "-IPTC:Keywords=plain", "-IPTC:Sub-location=Altstadt", photo)
    with OllamaEmulator() as emulator:
        emulator.default_behaviour = Reply("Über den Dächern von München.")
        config = write_daemon_config(tmp_path, emulator.url, Write="embedded")
        result = captiond("run", "--config", config, "--originals", originals)
    problems = Problems()
    problems.expect(result.exit_code == 0, f"exit code {result.exit_code}: {result.stdout} {result.stderr[-1500:]}")
    shown = exiftool("-s", "-s", "-s", "-IPTC:City", "-IPTC:Keywords", "-IPTC:CodedCharacterSet",
                     "-IPTC:Caption-Abstract", photo).splitlines()
    problems.expect(shown == ["München", "Straße, plain", "UTF8", "Über den Dächern von München."],
                    f"IPTC as a reader sees it: {shown}")
    REPORT.record(request, problems=list(problems))
    problems.assert_none()


@records_failures
def test_an_ordinary_user_never_takes_over_someone_elses_photo(request: pytest.FixtureRequest) -> None:
    """Figure: run as an ordinary user (uid 1000 through setpriv, no capabilities) in a folder that user may
    write, a photo of uid 1001 with mode 0644 and one with mode 0666 are not replaced in embedded mode: both
    keep their owner and bytes and fail with a reason; the user's own photo is captioned."""
    prefix = ("setpriv", "--reuid=1000", "--regid=1000", "--clear-groups")
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to run captiond as another user")
    world = Path(tempfile.mkdtemp(prefix="captiond-owners-"))  # not under pytest's private folder
    try:
        world.chmod(0o755)
        probe = subprocess.run([*prefix, sys.executable, "-c", "import captiond, httpx, PIL"], capture_output=True,
                               env=environment(), check=False, cwd=world)
        if probe.returncode != 0:
            pytest.skip(f"uid 1000 cannot run this Python: {probe.stderr.decode()[-200:]}")
        originals, state = world / "originals", world / "state"
        originals.mkdir()
        state.mkdir()
        own, theirs, open_to_all = (originals / name for name in ("own.jpg", "theirs.jpg", "open.jpg"))
        for index, photo in enumerate((own, theirs, open_to_all)):
            photo.write_bytes(photo_bytes(10 + index))
        for path in (originals, state, own):
            os.chown(path, 1000, 1000)
        for photo, mode in ((theirs, 0o644), (open_to_all, 0o666)):
            os.chown(photo, 1001, 1001)
            photo.chmod(mode)
        before = {photo: (photo.read_bytes(), os.stat(photo).st_uid) for photo in (theirs, open_to_all)}
        with OllamaEmulator() as emulator:
            config = write_daemon_config(world, emulator.url, Write="embedded")
            result = captiond("run", "--config", config, "--originals", originals, prefix=prefix)
        problems = Problems()
        for photo, (data, owner) in before.items():
            problems.expect(photo.read_bytes() == data and os.stat(photo).st_uid == owner,
                            f"{photo.name} was replaced (owner now {os.stat(photo).st_uid})")
            problems.expect(f"failed  {photo.name}: " in result.stdout, f"{photo.name} is not reported as failed")
        problems.expect("ollama" in exiftool("-XMP-captiond:CaptionSource", own),
                        "the user's own photo was not captioned")
        REPORT.record(request, problems=list(problems))
        problems.assert_none(result.stdout + result.stderr[-2000:])
    finally:
        shutil.rmtree(world, ignore_errors=True)
