"""Reading, planning and atomic writing (metadata, plans, exiftool_process, atomic) with the real exiftool on copies."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from captiond.atomic import remove_stale_temporaries
from captiond.errors import MetadataError
from captiond.exiftool_process import Exiftool
from captiond.metadata import Provenance, current_caption, truncate_bytes
from captiond.plans import merge_plans, plan_caption, plan_keywords
from captiond.sidecars import sidecar_path
from captiond.sources import caption_hash
from conftest import add_fixture, file_hash, read_tags

PROVENANCE = Provenance("ollama", "qwen2.5vl:3b", "2026-11-24T10:00:00Z")


@pytest.fixture
def exiftool() -> Iterator[Exiftool]:
    with Exiftool() as process:
        yield process


def pixels(path: Path) -> bytes:
    with Image.open(path) as image:
        return image.tobytes()


def write(exiftool: Exiftool, path: Path, caption: str, embedded: bool) -> None:
    metadata = exiftool.read(path)
    plan = plan_caption(metadata, caption, PROVENANCE, embedded)
    exiftool.apply(plan)


def test_reads_the_caption_a_reader_sees(exiftool: Exiftool, originals: Path) -> None:
    person = add_fixture(originals, "no_exif.jpg")
    boilerplate = add_fixture(originals, "Konica_Minolta_DiMAGE_Z3.jpg")
    mwg = add_fixture(originals, "MWG.jpg")

    assert current_caption(exiftool.read(person)).text == "Der Goalie bin ig"
    assert current_caption(exiftool.read(person)).location == "embedded"
    assert current_caption(exiftool.read(boilerplate)).text == "KONICA MINOLTA DIGITAL CAMERA"
    assert current_caption(exiftool.read(mwg)).text == "WRONG-XMP-Description"  # XMP first, as MWG readers
    assert exiftool.read(mwg).orientation == 6


def test_new_sidecar_holds_caption_and_provenance(exiftool: Exiftool, originals: Path) -> None:
    photo = add_fixture(originals, "Canon_PowerShot_S40.jpg")
    original = file_hash(photo)

    write(exiftool, photo, "Ein Hund läuft über die Wiese.", embedded=False)

    tags = read_tags(Path(f"{photo}.xmp"), "XMP:all")
    assert tags["XMP-dc:Description"] == "Ein Hund läuft über die Wiese."
    assert tags["XMP-tiff:ImageDescription"] == "Ein Hund läuft über die Wiese."
    assert tags["XMP-captiond:CaptionSource"] == "ollama"
    assert tags["XMP-captiond:CaptionModel"] == "qwen2.5vl:3b"
    assert tags["XMP-captiond:CaptionTime"] == "2026-11-24T10:00:00Z"
    assert len(tags["XMP-captiond:CaptionHash"]) == 64
    assert file_hash(photo) == original
    assert sorted(path.name for path in originals.iterdir()) == ["Canon_PowerShot_S40.jpg",
                                                                  "Canon_PowerShot_S40.jpg.xmp"]


def test_unchanged_caption_is_not_rewritten(exiftool: Exiftool, originals: Path) -> None:
    photo = add_fixture(originals, "Canon_PowerShot_S40.jpg")
    write(exiftool, photo, "A lake at dawn.", embedded=False)
    sidecar = Path(f"{photo}.xmp")
    first = sidecar.stat().st_mtime_ns, file_hash(sidecar)

    plan = plan_caption(exiftool.read(photo), "A lake at dawn.", Provenance("ollama", "qwen2.5vl:3b"), False)

    assert plan.empty
    exiftool.apply(plan)
    assert (sidecar.stat().st_mtime_ns, file_hash(sidecar)) == first


def test_embedded_write_keeps_pixels_and_leaves_no_temporary_files(exiftool: Exiftool, originals: Path) -> None:
    photo = add_fixture(originals, "no_exif.jpg")
    os.chmod(photo, 0o640)
    before_pixels = pixels(photo)
    inode = photo.stat().st_ino

    write(exiftool, photo, "Ein Torwart im Schnee – «Der Goalie».", embedded=True)

    tags = read_tags(photo, "XMP-dc:Description", "IFD0:ImageDescription", "IPTC:Caption-Abstract",
                     "IPTC:CodedCharacterSet", "IPTC:Keywords", "IPTC:By-line", "Photoshop:IPTCDigest",
                     "XMP-captiond:CaptionSource")
    assert tags["XMP-dc:Description"] == "Ein Torwart im Schnee – «Der Goalie»."
    assert "IFD0:ImageDescription" not in tags  # an ASCII field: not for this caption, and the old text goes
    assert tags["IPTC:Caption-Abstract"] == tags["XMP-dc:Description"]
    assert tags["IPTC:CodedCharacterSet"] == "UTF8"
    assert tags["IPTC:By-line"] == "CREDIT" and tags["IPTC:Keywords"] == "tag"  # tags we do not own stay
    assert tags["Photoshop:IPTCDigest"] != "52c81bf46a73e184a1b346220fd2993c"  # digest follows the new IPTC
    assert pixels(photo) == before_pixels
    assert photo.stat().st_ino != inode  # replaced by rename, never rewritten in place
    assert photo.stat().st_mode & 0o777 == 0o640
    assert sorted(path.name for path in originals.iterdir()) == ["no_exif.jpg"]


def test_embedded_write_adds_no_iptc_where_there_was_none(exiftool: Exiftool, originals: Path) -> None:
    photo = add_fixture(originals, "Konica_Minolta_DiMAGE_Z3.jpg")
    write(exiftool, photo, "A mountain hut.", embedded=True)
    tags = read_tags(photo, "IPTC:all", "IFD0:ImageDescription")
    assert tags == {"IFD0:ImageDescription": "A mountain hut."}


def test_iptc_caption_is_cut_at_a_character_boundary(exiftool: Exiftool, originals: Path) -> None:
    photo = add_fixture(originals, "IPTC.jpg")
    caption = "ü" * 1500  # 3000 bytes in UTF-8
    write(exiftool, photo, caption, embedded=True)
    tags = read_tags(photo, "IPTC:Caption-Abstract", "XMP-dc:Description")
    assert tags["XMP-dc:Description"] == caption
    assert tags["IPTC:Caption-Abstract"] == "ü" * 1000
    assert truncate_bytes("aü", 2) == "a"


def test_values_and_names_cannot_become_exiftool_options(exiftool: Exiftool, originals: Path) -> None:
    photo = add_fixture(originals, "Canon_PowerShot_S40.jpg", "-ver\n-Artist=x.jpg")
    write(exiftool, photo, "Boat\n-IFD0:Artist=evil\r\n-o\n/tmp/escaped.jpg", embedded=True)
    tags = read_tags(photo, "XMP-dc:Description", "IFD0:Artist")
    assert tags == {"XMP-dc:Description": "Boat -IFD0:Artist=evil  -o /tmp/escaped.jpg"}
    with pytest.raises(MetadataError, match="line break"):
        exiftool.run("-ver\n-Artist=evil")


def test_sidecar_naming(originals: Path) -> None:
    photo = originals / "IMG_1.JPG"
    assert sidecar_path(photo, "ext") == (originals / "IMG_1.JPG.xmp", False)
    assert sidecar_path(photo, "base") == (originals / "IMG_1.xmp", False)
    (originals / "IMG_1.XMP").write_text("")
    assert sidecar_path(photo, "ext") == (originals / "IMG_1.XMP", True)
    (originals / "IMG_1.JPG.xmp").write_text("")
    assert sidecar_path(photo, "base") == (originals / "IMG_1.JPG.xmp", True)


def test_unreadable_file_is_a_clear_error(exiftool: Exiftool, originals: Path) -> None:
    missing = originals / "gone.jpg"
    with pytest.raises(MetadataError, match="gone.jpg"):
        exiftool.read(missing)


def test_write_into_read_only_folder_fails_cleanly(exiftool: Exiftool, originals: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    photo = add_fixture(originals, "Canon_PowerShot_S40.jpg")
    originals.chmod(0o555)
    try:
        with pytest.raises(MetadataError, match="Canon_PowerShot_S40"):
            write(exiftool, photo, "A caption.", embedded=False)
    finally:
        originals.chmod(0o755)


def test_stale_temporaries_of_dead_processes_are_removed(originals: Path) -> None:
    dead = originals / ".captiond-tmp-999999999-abc.jpg"
    mine = originals / f".captiond-tmp-{os.getpid()}-abc.jpg"
    other = originals / ".hidden.jpg"
    for path in (dead, mine, other):
        path.write_bytes(b"x")
    remove_stale_temporaries(originals, [path.name for path in (dead, mine, other)])
    assert not dead.exists() and mine.exists() and other.exists()


@pytest.mark.parametrize("name", ["RIFF.webp", "PNG.png", "Arbitro.tiff", "IMG_5195.HEIC"])
def test_embedded_write_into_every_writable_format(exiftool: Exiftool, originals: Path, name: str) -> None:
    photo = add_fixture(originals, name)
    before_pixels = pixels(photo)
    write(exiftool, photo, "A caption inside the file.", embedded=True)
    assert read_tags(photo, "XMP-dc:Description")["XMP-dc:Description"] == "A caption inside the file."
    assert pixels(photo) == before_pixels
    assert sorted(path.name for path in originals.iterdir()) == [name]


def exiftool_children() -> list[int]:
    """Return the process ids of exiftool processes started by this test process."""
    children = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text().split()
    return [int(pid) for pid in children if b"exiftool" in Path(f"/proc/{pid}/cmdline").read_bytes()]


def test_exiftool_that_dies_is_replaced_and_never_hangs_us(exiftool: Exiftool, originals: Path) -> None:
    photo = add_fixture(originals, "no_exif.jpg")
    exiftool.read(photo)
    [child] = exiftool_children()
    assert os.getsid(child) != os.getsid(0)  # a Ctrl-C to our process group does not reach it
    os.kill(child, signal.SIGKILL)
    os.waitpid(child, 0)
    try:
        exiftool.read(photo)  # notices the dead process: a clear, transient error or a fresh process
    except MetadataError as error:
        assert error.transient
    assert current_caption(exiftool.read(photo)).text == "Der Goalie bin ig"


def test_new_sidecar_holds_any_text_exactly(exiftool: Exiftool, originals: Path) -> None:
    photo = add_fixture(originals, "Canon_PowerShot_S40.jpg")
    caption = "Tom & Jerry <3 \"quoted\" 'single' ]]> ☀️ 👨‍👩‍👧 – ünïcödé"
    metadata = exiftool.read(photo)
    plan = merge_plans(plan_caption(metadata, caption, PROVENANCE, False),
                       plan_keywords(metadata, ["R&D", "<tag>"], PROVENANCE, False))
    exiftool.apply(plan)
    tags = read_tags(Path(f"{photo}.xmp"), "XMP-dc:all", "XMP-tiff:all", "XMP-lr:all", "XMP-captiond:all")
    assert tags["XMP-dc:Description"] == caption
    assert tags["XMP-tiff:ImageDescription"] == caption
    assert tags["XMP-dc:Subject"] in ("['R&D', '<tag>']", "R&D, <tag>")
    assert tags["XMP-captiond:CaptionHash"] == caption_hash(caption)
    again = exiftool.read(photo)  # our own reader agrees: nothing left to write
    assert plan_caption(again, caption, PROVENANCE, False).empty
