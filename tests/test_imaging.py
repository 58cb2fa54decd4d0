"""imaging: every supported image becomes a small, upright JPEG without any metadata; bad files are refused clearly."""

from __future__ import annotations

import io
import random
import re
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import ExifTags, Image, ImageChops, ImageCms, ImageOps, ImageStat

from captiond.errors import ImageError
from captiond.imaging import PreparedImage, best_preview, prepare_bytes, prepare_file

FIXTURES = Path(__file__).parent / "fixtures"
ORIENTATION = FIXTURES / "orientation"
SOURCE_ROOT = Path(__file__).parent.parent / "daemon"
# JPEG markers that carry metadata: APP1 (EXIF/XMP), APP2 (ICC), APP13 (IPTC/Photoshop), COM (comment), ...
METADATA_MARKERS = {0xE1, 0xE2, 0xE3, 0xE4, 0xE5, 0xE6, 0xE7, 0xE8, 0xE9, 0xEA, 0xEB, 0xEC, 0xED, 0xEE, 0xEF,
                    0xFE}


def copy_fixture(tmp_path: Path, name: str) -> Path:
    """Copy a fixture into tmp_path (the fixtures themselves are never touched)."""
    target = tmp_path / Path(name).name
    shutil.copyfile(FIXTURES / name, target)
    return target


def open_jpeg(prepared: PreparedImage) -> Image.Image:
    image = Image.open(io.BytesIO(prepared.jpeg))
    assert image.format == "JPEG"
    return image


def fingerprint(image: Image.Image) -> Image.Image:
    """A small grayscale, histogram-equalised thumbnail: insensitive to colour management, sensitive to layout."""
    return ImageOps.equalize(image.convert("L").resize((32, 24)))


def difference(first: Image.Image, second: Image.Image) -> float:
    return float(ImageStat.Stat(ImageChops.difference(first, second)).mean[0])


def jpeg_segments(data: bytes) -> list[int]:
    """Return the markers of the JPEG's header segments, up to the start of scan."""
    assert data[:2] == b"\xff\xd8", "not a JPEG"
    markers: list[int] = []
    position = 2
    while position < len(data):
        assert data[position] == 0xFF, f"bad JPEG segment at {position}"
        marker = data[position + 1]
        markers.append(marker)
        if marker == 0xDA:  # start of scan: metadata cannot follow before the image data
            break
        (length,) = struct.unpack(">H", data[position + 2:position + 4])
        position += 2 + length
    return markers


def assert_no_metadata(prepared: PreparedImage) -> None:
    image = open_jpeg(prepared)
    assert dict(image.getexif()) == {}
    for key in ("exif", "icc_profile", "comment", "xmp", "photoshop"):
        assert key not in image.info, f"the model's JPEG carries {key}: {image.info[key]!r:.80}"
    leaked = [hex(marker) for marker in jpeg_segments(prepared.jpeg) if marker in METADATA_MARKERS]
    assert leaked == [], f"metadata segments in the model's JPEG: {leaked}"


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bilevel_png(width: int, height: int) -> bytes:
    """Return a valid all-black 1-bit PNG of any size, made without ever holding its pixels in memory."""
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed pixels
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat)
            + png_chunk(b"IEND", b""))


def write_big_camera_jpeg(path: Path, size: tuple[int, int] = (6000, 4000)) -> Path:
    """Write a large JPEG with camera EXIF, a GPS position, an ICC profile and a comment."""
    image = Image.linear_gradient("L").resize(size).convert("RGB")
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "Canon"
    exif[ExifTags.Base.Model] = "Canon EOS R5"
    exif[ExifTags.Base.BodySerialNumber] = "012345678901"
    exif[ExifTags.Base.Orientation] = 1
    exif.get_ifd(ExifTags.IFD.GPSInfo).update({
        ExifTags.GPS.GPSLatitudeRef: "N", ExifTags.GPS.GPSLatitude: (48.0, 51.0, 30.0),
        ExifTags.GPS.GPSLongitudeRef: "E", ExifTags.GPS.GPSLongitude: (2.0, 17.0, 40.0),
    })
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    image.save(path, "JPEG", exif=exif, icc_profile=icc, comment=b"12 Rue de la Paix", quality=80)
    written = Image.open(path)
    assert written.getexif().get_ifd(ExifTags.IFD.GPSInfo), "test setup: the GPS position was not written"
    return path


# ------------------------------------------------------------------------------ orientation


@pytest.mark.parametrize("resolution", [720, 300])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_comes_out_upright(tmp_path: Path, orientation: int, resolution: int) -> None:
    reference = prepare_file(copy_fixture(tmp_path, "orientation/landscape_1.jpg"), resolution)
    prepared = prepare_file(copy_fixture(tmp_path, f"orientation/landscape_{orientation}.jpg"), resolution)

    assert (prepared.width, prepared.height) == (reference.width, reference.height)
    assert prepared.width > prepared.height, "landscape photos must stay landscape"
    assert max(prepared.width, prepared.height) <= resolution
    # Wrongly turned or mirrored pictures differ by ~60 on this scale; the same picture by ~3.
    assert difference(fingerprint(open_jpeg(prepared)), fingerprint(open_jpeg(reference))) < 15


# ------------------------------------------------------------------------------ formats


@pytest.mark.parametrize(("name", "size"), [
    ("IMG_5195.HEIC", (2566, 3313)),
    ("Arbitro.tiff", (174, 38)),
    ("PNG.png", (16, 16)),
    ("GIF.gif", (8, 8)),
    ("RIFF.webp", (1, 1)),
    ("Canon_PowerShot_S40.jpg", (480, 360)),
])
def test_each_supported_format_becomes_a_small_rgb_jpeg(tmp_path: Path, name: str, size: tuple[int, int]) -> None:
    prepared = prepare_file(copy_fixture(tmp_path, name), 720)

    image = open_jpeg(prepared)
    image.load()
    assert image.mode == "RGB"
    assert image.size == (prepared.width, prepared.height)
    assert (prepared.original_width, prepared.original_height) == size
    assert max(image.size) == min(720, max(size)), "downscaled to the resolution, never upscaled"
    assert abs(image.width / image.height - size[0] / size[1]) < 0.02, "aspect ratio kept"


def test_transparency_is_laid_on_white(tmp_path: Path) -> None:
    path = tmp_path / "logo.png"
    Image.new("RGBA", (40, 30), (255, 0, 0, 0)).save(path)

    pixel = open_jpeg(prepare_file(path, 720)).convert("RGB").getpixel((20, 15))

    assert isinstance(pixel, tuple) and min(pixel) > 240, f"transparent area should be white, got {pixel}"


# ------------------------------------------------------------------------------ privacy


@pytest.mark.parametrize("name", ["33-type_error.jpg", "no_exif.jpg", "MWG.jpg", "IPTC.jpg", "IMG_5195.HEIC",
                                  "RIFF.webp", "PNG.png", "GIF.gif", "Arbitro.tiff"])
def test_the_models_jpeg_carries_no_metadata(tmp_path: Path, name: str) -> None:
    assert_no_metadata(prepare_file(copy_fixture(tmp_path, name), 720))


def test_a_large_camera_jpeg_is_downscaled_and_loses_its_gps_position(tmp_path: Path) -> None:
    path = write_big_camera_jpeg(tmp_path / "IMG_0001.jpg")

    prepared = prepare_file(path, 720)

    assert (prepared.original_width, prepared.original_height) == (6000, 4000)
    assert (prepared.width, prepared.height) == (720, 480)
    image = open_jpeg(prepared)
    assert image.size == (720, 480)
    assert dict(image.getexif()) == {} and "exif" not in image.info and "icc_profile" not in image.info
    assert b"Canon" not in prepared.jpeg and b"012345678901" not in prepared.jpeg


def test_a_jpeg_comment_does_not_reach_the_model(tmp_path: Path) -> None:
    path = write_big_camera_jpeg(tmp_path / "IMG_0002.jpg", size=(1200, 800))

    prepared = prepare_file(path, 720)

    assert b"Rue de la Paix" not in prepared.jpeg
    assert_no_metadata(prepared)


def test_large_jpegs_are_decoded_reduced_not_at_full_size(tmp_path: Path) -> None:
    """A 6000x4000 JPEG decoded fully takes ~96 MB of pixels; decoded at 1/8 (draft) about 1.5 MB.

    Measured as the growth of the peak resident memory of a fresh process around prepare_file.
    """
    path = write_big_camera_jpeg(tmp_path / "big.jpg")
    script = (
        "import resource, sys\n"
        "from pathlib import Path\n"
        "from captiond.imaging import prepare_file\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "prepared = prepare_file(Path(sys.argv[1]), 720)\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(after - before, prepared.width, prepared.height)\n"
    )
    output = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, check=True,
                            env={"PYTHONPATH": str(SOURCE_ROOT), "PATH": "/usr/bin:/bin"}, timeout=60).stdout
    grown_kib, width, height = (int(value) for value in output.split())

    assert (width, height) == (720, 480)
    assert grown_kib < 40_000, f"peak memory grew by {grown_kib} KiB: the JPEG was decoded at full size"


# ------------------------------------------------------------------------------ RAW previews


def raw_preview(path: Path) -> bytes:
    """Extract the embedded preview JPEG of a RAW file as exiftool does for captiond."""
    if shutil.which("exiftool") is None:
        pytest.skip("exiftool is not installed")
    data = subprocess.run(["exiftool", "-b", "-PreviewImage", str(path)], capture_output=True, check=True,
                          timeout=30).stdout
    assert data[:2] == b"\xff\xd8", "test setup: no preview JPEG in the DNG"
    return data


def test_a_raw_preview_is_prepared_upright_with_the_raw_files_orientation(tmp_path: Path) -> None:
    preview = raw_preview(copy_fixture(tmp_path, "DNG_with_preview.dng"))

    plain = prepare_bytes(preview, 720)
    normal = prepare_bytes(preview, 720, orientation=1)
    rotated = prepare_bytes(preview, 720, orientation=6)
    upside_down = prepare_bytes(preview, 720, orientation=3)

    assert (plain.width, plain.height) == (normal.width, normal.height) == (480, 360)
    assert (rotated.width, rotated.height) == (360, 480)
    assert (upside_down.width, upside_down.height) == (480, 360)
    # Orientation 6 means "turn 90 degrees clockwise to view": its result turned back must match the plain one.
    turned_back = open_jpeg(rotated).transpose(Image.Transpose.ROTATE_90)
    assert difference(fingerprint(turned_back), fingerprint(open_jpeg(plain))) < 15
    flipped_back = open_jpeg(upside_down).transpose(Image.Transpose.ROTATE_180)
    assert difference(fingerprint(flipped_back), fingerprint(open_jpeg(plain))) < 15
    assert_no_metadata(rotated)


def test_the_preview_with_the_most_pixels_is_chosen_and_a_tiny_one_is_no_usable_preview() -> None:
    def jpeg(width: int, height: int, quality: int) -> bytes:
        buffer = io.BytesIO()
        noise = random.Random(width).randbytes(width * height * 3)
        Image.frombytes("RGB", (width, height), noise).save(buffer, format="JPEG", quality=quality)
        return buffer.getvalue()

    heavy_but_tiny, light_but_large = jpeg(64, 48, 100), jpeg(320, 240, 5)
    assert len(heavy_but_tiny) > len(light_but_large) // 2
    assert best_preview([b"\xff\xd8\xff\xdb placeholder", heavy_but_tiny, light_but_large]) == light_but_large
    with pytest.raises(ImageError, match=r"no usable preview: the largest embedded preview is 255x100 pixels"):
        best_preview([jpeg(255, 100, 90), jpeg(8, 8, 90)])
    with pytest.raises(ImageError, match="no usable preview: the RAW file holds no embedded preview"):
        best_preview([b"", b"not an image"])


def test_an_empty_raw_preview_is_an_image_error() -> None:
    with pytest.raises(ImageError, match="preview"):
        prepare_bytes(b"", 720, orientation=6)


# ------------------------------------------------------------------------------ bad files


BAD_FILES: dict[str, tuple[str, Callable[[], bytes], str]] = {
    "empty": ("empty.jpg", lambda: b"", r"empty"),
    "truncated": ("truncated.jpg", lambda: (ORIENTATION / "landscape_3.jpg").read_bytes()[:20_000], r"truncated"),
    "text": ("notes.jpg", lambda: b"Shopping list: bread, milk, a new lens cap.\n", r"not an image"),
    "random": ("noise.jpg", lambda: random.Random(1234).randbytes(50_000), r"not an image|corrupt|unsupported"),
    # 300 MP in a few kB on disk: a decompression bomb.
    "bomb": ("bomb.png", lambda: bilevel_png(20_000, 15_000), r"bomb|too large"),
    # 121 MP: PNG has no reduced decoding, so this would take gigabytes of memory.
    "too-large-png": ("poster.png", lambda: bilevel_png(11_000, 11_000), r"bomb|too large"),
}


@pytest.mark.parametrize("kind", BAD_FILES)
def test_a_bad_file_raises_an_image_error_naming_the_file_and_the_reason(tmp_path: Path, kind: str) -> None:
    name, content, reason = BAD_FILES[kind]
    path = tmp_path / name
    path.write_bytes(content())

    with pytest.raises(ImageError) as caught:
        prepare_file(path, 720)

    error = caught.value
    assert error.path == str(path)
    assert str(error).startswith(f"{path}: ")
    assert re.search(reason, error.reason, re.IGNORECASE), error.reason
    assert "Traceback" not in error.reason and "\n" not in error.reason
    assert not error.transient, "retrying a broken file cannot help"


def test_a_missing_file_raises_an_image_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "gone.jpg"

    with pytest.raises(ImageError) as caught:
        prepare_file(path, 720)

    assert caught.value.path == str(path)
    assert "No such file" in caught.value.reason


def test_bad_preview_bytes_raise_an_image_error() -> None:
    with pytest.raises(ImageError, match="not an image|corrupt"):
        prepare_bytes(b"this is not a JPEG preview" * 10, 720, orientation=6)
