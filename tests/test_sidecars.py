"""Which sidecar a photo uses, and that what we write there hides nothing a person wrote from any reader."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from captiond.exiftool_process import Exiftool
from captiond.metadata import current_caption
from captiond.sidecars import other_sidecars, owns_base_sidecar, sidecar_path
from captiond.sources import current_source
from conftest import Result, add_fixture, read_tags, run_captiond, write_config
from emulator import OllamaEmulator
from test_labels import labels_reply


@pytest.fixture
def exiftool() -> Iterator[Exiftool]:
    with Exiftool() as process:
        yield process


def run(config: Path, originals: Path, *arguments: str) -> Result:
    return run_captiond("run", "--config", config, "--originals", originals, *arguments)


def exiftool_write(*arguments: str) -> None:
    subprocess.run(["exiftool", "-q", "-overwrite_original", *arguments], check=True)


def tag_list(path: Path, tag: str) -> list[str]:
    """Return a list tag as exiftool reads it (strings, in order; [] when absent)."""
    output = subprocess.run(["exiftool", "-j", "-G1", f"-{tag}", str(path)], capture_output=True, text=True,
                            check=True).stdout
    value = json.loads(output)[0].get(tag, [])
    return [str(item) for item in (value if isinstance(value, list) else [value])]


def test_the_base_name_sidecar_of_a_raw_and_jpeg_pair_belongs_to_the_raw(originals: Path) -> None:
    raw, jpeg = originals / "IMG_1.CR2", originals / "IMG_1.JPG"
    raw.write_bytes(b"raw")
    jpeg.write_bytes(b"jpeg")
    (originals / "IMG_1.xmp").write_text("")
    assert owns_base_sidecar(raw) and not owns_base_sidecar(jpeg)
    assert sidecar_path(raw, "ext") == (originals / "IMG_1.xmp", True)
    assert sidecar_path(jpeg, "ext") == (originals / "IMG_1.JPG.xmp", False)
    assert sidecar_path(jpeg, "base") == (originals / "IMG_1.JPG.xmp", False)
    assert other_sidecars(jpeg, originals / "IMG_1.JPG.xmp") == [originals / "IMG_1.xmp"]
    # Two photos that are not a RAW and its JPEG: the shared name belongs to neither.
    (originals / "IMG_2.jpg").write_bytes(b"jpeg")
    (originals / "IMG_2.png").write_bytes(b"png")
    assert not owns_base_sidecar(originals / "IMG_2.jpg") and not owns_base_sidecar(originals / "IMG_2.png")
    assert sidecar_path(originals / "IMG_2.png", "base") == (originals / "IMG_2.png.xmp", False)
    assert owns_base_sidecar(originals / "IMG_3.jpg")


@pytest.mark.subprocess
@pytest.mark.parametrize("mode", ["sidecar", "embedded"])
def test_raw_and_jpeg_pair_keep_both_results(tmp_path: Path, originals: Path, emulator: OllamaEmulator,
                                             mode: str) -> None:
    raw = add_fixture(originals, "DNG_with_preview.dng", "IMG_1.dng")
    jpeg = add_fixture(originals, "Canon_PowerShot_S40.jpg", "IMG_1.jpg")
    shared = originals / "IMG_1.xmp"  # Lightroom's sidecar of the RAW, with a person's keyword
    exiftool_write("-XMP-dc:Subject=Holiday", "-o", str(shared), str(raw))
    emulator.reply = labels_reply()
    config = write_config(tmp_path, emulator.url, daemon={"Write": mode})

    result = run(config, originals, "-m", "caption,labels")

    assert result.exit_code == 0, result.stderr
    assert "captioned 2, labelled 2, skipped 0, failed 0" in result.stdout
    assert read_tags(shared, "XMP-dc:Description")["XMP-dc:Description"] == "A fair at night."
    assert tag_list(shared, "XMP-dc:Subject") == ["Holiday", "Ferris", "Sky"]
    jpeg_target = jpeg if mode == "embedded" else originals / "IMG_1.jpg.xmp"
    assert read_tags(jpeg_target, "XMP-dc:Description")["XMP-dc:Description"] == "A fair at night."
    assert tag_list(jpeg_target, "XMP-dc:Subject")[-2:] == ["Ferris", "Sky"]
    assert "IMG_1.jpg.xmp" in {path.name for path in originals.iterdir()} or mode == "embedded"


@pytest.mark.subprocess
def test_a_persons_caption_in_any_sidecar_of_the_photo_counts(tmp_path: Path, originals: Path,
                                                              emulator: OllamaEmulator) -> None:
    photo = add_fixture(originals, "Canon_PowerShot_S40.jpg", "IMG_1.jpg")
    exiftool_write("-XMP-dc:Description=Grandma's birthday", "-o", str(originals / "IMG_1.xmp"), str(photo))
    exiftool_write("-XMP-dc:Subject=Cake", "-o", str(originals / "IMG_1.jpg.xmp"), str(photo))
    config = write_config(tmp_path, emulator.url)

    result = run(config, originals)

    assert "captioned 0, skipped 1, failed 0" in result.stdout, result.stdout
    assert "has a caption from xmp" in result.stdout
    assert emulator.generation_requests() == []


@pytest.mark.subprocess
def test_the_jpeg_of_a_pair_skips_a_persons_caption_in_the_shared_sidecar_and_carries_it(
        tmp_path: Path, originals: Path, emulator: OllamaEmulator) -> None:
    add_fixture(originals, "DNG_with_preview.dng", "IMG_1.dng")
    add_fixture(originals, "Canon_PowerShot_S40.jpg", "IMG_1.jpg")
    shared = originals / "IMG_1.xmp"
    exiftool_write("-XMP-dc:Description=Grandma's birthday", "-XMP-lr:HierarchicalSubject=People|Grandma",
                   "-XMP-dc:Subject=Grandma", "-o", str(shared), str(originals / "IMG_1.dng"))
    before = shared.read_bytes()
    emulator.reply = labels_reply()
    config = write_config(tmp_path, emulator.url)

    result = run(config, originals, "-m", "caption,labels", "IMG_1.jpg")

    assert result.exit_code == 0, result.stderr
    assert shared.read_bytes() == before  # the RAW's sidecar is not the JPEG's to write
    own = originals / "IMG_1.jpg.xmp"
    # Immich showed IMG_1.xmp for the JPEG until now: the JPEG's own sidecar keeps all of it visible.
    assert read_tags(own, "XMP-dc:Description")["XMP-dc:Description"] == "Grandma's birthday"
    assert tag_list(own, "XMP-lr:HierarchicalSubject") == ["People|Grandma", "Ferris", "Sky"]
    assert tag_list(own, "XMP-dc:Subject") == ["Grandma", "Ferris", "Sky"]


@pytest.mark.subprocess
@pytest.mark.parametrize("mode", ["sidecar", "embedded"])
@pytest.mark.parametrize(("fixture", "flat"), [
    ("IPTC.jpg", ["ExifTool", "Test", "IPTC"]),  # IPTC keywords, no XMP, no hierarchy
    ("no_exif.jpg", ["tag"]),  # dc:subject and IPTC
    ("MWG.jpg", ["RIGHT1of2-XMP-Keywords", "RIGHT2of2-XMP-Keywords", "WRONG1of2-IPTC-Keywords",
                 "WRONG2of2-IPTC-Keywords"]),  # dc:subject and IPTC that disagree
])
def test_flat_keywords_are_never_hidden_by_the_hierarchy_we_add(tmp_path: Path, originals: Path,
                                                                emulator: OllamaEmulator, mode: str, fixture: str,
                                                                flat: list[str]) -> None:
    photo = add_fixture(originals, fixture)
    emulator.reply = labels_reply()
    config = write_config(tmp_path, emulator.url, daemon={"Write": mode})

    result = run(config, originals, "-m", "labels")

    assert result.exit_code == 0, result.stderr
    target = photo if mode == "embedded" else Path(f"{photo}.xmp")
    # Immich and digiKam read lr:hierarchicalSubject before any flat list: it holds every keyword.
    assert tag_list(target, "XMP-lr:HierarchicalSubject") == [*flat, "Ferris", "Sky"]
    assert tag_list(target, "XMP-dc:Subject") == [*flat, "Ferris", "Sky"]
    if mode == "embedded":
        assert tag_list(photo, "IPTC:Keywords") == [*flat, "Ferris", "Sky"]


@pytest.mark.subprocess
@pytest.mark.parametrize("mode", ["sidecar", "embedded"])
def test_an_embedded_digikam_tags_list_gets_our_keywords_in_either_mode(
        tmp_path: Path, originals: Path, emulator: OllamaEmulator, mode: str) -> None:
    photo = add_fixture(originals, "Canon_PowerShot_S40.jpg")
    exiftool_write("-XMP-digiKam:TagsList=People/Grandma", "-XMP-dc:Subject=Grandma", str(photo))
    emulator.reply = labels_reply()
    config = write_config(tmp_path, emulator.url, daemon={"Write": mode})

    assert run(config, originals, "-m", "labels").exit_code == 0

    target = photo if mode == "embedded" else Path(f"{photo}.xmp")
    assert tag_list(target, "XMP-digiKam:TagsList") == ["People/Grandma", "Ferris", "Sky"]
    assert tag_list(target, "XMP-lr:HierarchicalSubject") == ["Grandma", "Ferris", "Sky"]


@pytest.mark.subprocess
def test_a_labels_only_sidecar_carries_the_photos_caption(tmp_path: Path, originals: Path,
                                                          emulator: OllamaEmulator) -> None:
    person = add_fixture(originals, "33-type_error.jpg")
    emulator.reply = labels_reply()
    config = write_config(tmp_path, emulator.url)

    assert run(config, originals, "-m", "labels").exit_code == 0

    tags = read_tags(Path(f"{person}.xmp"), "XMP-dc:Description", "XMP-tiff:ImageDescription",
                     "XMP-captiond:CaptionSource")
    caption = "El cielo sobre Berlin (Heaven above Berlin)"
    assert tags == {"XMP-dc:Description": caption, "XMP-tiff:ImageDescription": caption}
    # Still the person's embedded caption: a caption run skips it, and forcing at `meta`'s priority works.
    again = run(config, originals, "-m", "caption")
    assert "has a caption from meta" in again.stdout


@pytest.mark.parametrize(("tag", "comment", "counts"), [
    ("File:Comment", "Lovely smoke effect here, taken from the bridge.", True),
    ("ExifIFD:UserComment", "Lovely smoke effect here, taken from the bridge.", True),
    ("File:Comment", "comment in GIMP 2.4.5", False),
    ("File:Comment", "Created with GIMP", False),
    ("File:Comment", "CREATOR: gd-jpeg v1.0 (using IJG JPEG v62), quality = 90", False),
    ("ExifIFD:UserComment", "a5cb01550dbb9a6bf732f87e413f6e231cc4581e6a5be800fb0871dce0760cd5", False),
    ("ExifIFD:UserComment", "   ", False),
    ("ExifIFD:UserComment", "OLYMPUS DIGITAL CAMERA", False),
])
def test_a_persons_jpeg_comment_counts_as_a_caption(exiftool: Exiftool, originals: Path, tag: str, comment: str,
                                                    counts: bool) -> None:
    photo = add_fixture(originals, "Canon_PowerShot_S40.jpg")
    exiftool_write(f"-{tag}={comment}", str(photo))
    current = current_caption(exiftool.read(photo))
    assert (current.text == comment and current_source(current) == "meta") if counts else not current.text.strip()


def test_a_png_comment_counts_and_a_gif_metadata_dump_does_not(exiftool: Exiftool, originals: Path) -> None:
    assert current_caption(exiftool.read(add_fixture(originals, "PNG.png"))).text == "test comment"
    assert current_caption(exiftool.read(add_fixture(originals, "GIF.gif"))).text == ""
    assert current_caption(exiftool.read(add_fixture(originals, "PNG_plain.png"))).text == ""


@pytest.mark.subprocess
@pytest.mark.parametrize(("mode", "edited", "stale"), [
    ("sidecar", "XMP-dc:Description", "XMP-tiff:ImageDescription"),  # darktable, exiftool
    ("sidecar", "XMP-tiff:ImageDescription", "XMP-dc:Description"),
    ("embedded", "XMP-dc:Description", "IFD0:ImageDescription"),
    ("embedded", "IFD0:ImageDescription", "XMP-dc:Description"),
])
def test_a_person_editing_one_copy_of_our_caption_wins_in_every_copy(
        tmp_path: Path, originals: Path, emulator: OllamaEmulator, mode: str, edited: str, stale: str) -> None:
    photo = add_fixture(originals, "Canon_PowerShot_S40.jpg")
    config = write_config(tmp_path, emulator.url, daemon={"Write": mode})
    assert run(config, originals).exit_code == 0
    target = photo if mode == "embedded" else Path(f"{photo}.xmp")
    exiftool_write(f"-{edited}=Grandma's birthday", str(target))

    result = run(config, originals)

    assert "has a caption from" in result.stdout and "now hold their text" in result.stdout, result.stdout
    tags = read_tags(target, edited, stale)
    assert tags == {edited: "Grandma's birthday", stale: "Grandma's birthday"}
    again = run(config, originals)
    assert "now hold their text" not in again.stdout
    assert emulator.generation_requests()[1:] == []


@pytest.mark.subprocess
def test_embedded_mode_also_updates_an_existing_sidecar(tmp_path: Path, originals: Path,
                                                        emulator: OllamaEmulator) -> None:
    photo = add_fixture(originals, "Canon_PowerShot_S40.jpg")
    sidecar = Path(f"{photo}.xmp")
    exiftool_write("-XMP-lr:HierarchicalSubject=People|Grandma", "-XMP-dc:Subject=Grandma", "-o", str(sidecar),
                   str(photo))
    emulator.reply = labels_reply()
    config = write_config(tmp_path, emulator.url, daemon={"Write": "embedded"})

    result = run(config, originals, "-m", "caption,labels")

    assert result.exit_code == 0, result.stderr
    for target in (photo, sidecar):  # Immich, PhotoPrism and digiKam prefer the sidecar's values
        assert read_tags(target, "XMP-dc:Description")["XMP-dc:Description"] == "A fair at night."
        assert tag_list(target, "XMP-dc:Subject")[-2:] == ["Ferris", "Sky"]
    assert tag_list(sidecar, "XMP-lr:HierarchicalSubject") == ["People|Grandma", "Ferris", "Sky"]
    assert tag_list(sidecar, "XMP-dc:Subject") == ["Grandma", "Ferris", "Sky"]
    assert "captioned 0, labelled 0, skipped 1" in run(config, originals, "-m", "caption,labels").stdout


@pytest.mark.subprocess
@pytest.mark.parametrize(("caption", "in_exif"), [("A quiet harbour at dawn.", True),
                                                  ("Ein ruhiger Hafen im Morgengrauen, Möwen über dem Kai.", False),
                                                  ("夜明けの静かな港。", False)])
def test_exif_image_description_holds_only_ascii_captions(tmp_path: Path, originals: Path, emulator: OllamaEmulator,
                                                           caption: str, in_exif: bool) -> None:
    from PIL import Image

    photo = add_fixture(originals, "Olympus_boilerplate.jpg")  # "OLYMPUS DIGITAL CAMERA" in EXIF: no caption
    emulator.reply = lambda body: caption
    config = write_config(tmp_path, emulator.url, daemon={"Write": "embedded"})

    assert run(config, originals).exit_code == 0

    tags = read_tags(photo, "XMP-dc:Description", "IFD0:ImageDescription")
    assert tags["XMP-dc:Description"] == caption
    with Image.open(photo) as image:  # Pillow reads the ASCII field as the standard says
        assert image.getexif().get(0x010E) == (caption if in_exif else None)
    assert tags.get("IFD0:ImageDescription") == (caption if in_exif else None)
    assert "captioned 0, skipped 1" in run(config, originals).stdout
