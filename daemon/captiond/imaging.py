"""Open any supported image, orient it, downscale it and encode the small JPEG sent to the model.

The JPEG carries no metadata at all: no GPS position, camera serial or file name leaves the machine.
RAW files are not decoded here: exiftool_process.py extracts their embedded previews, `best_preview` picks
the one with the most pixels, which is prepared together with the RAW file's orientation.
"""

from __future__ import annotations

import io
import os
import stat
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from .errors import ImageError

try:
    import pillow_heif

    pillow_heif.register_heif_opener()
except ImportError:  # pragma: no cover - pillow-heif is a dependency, but stay usable without it
    pass

RASTER_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".tif", ".tiff", ".webp", ".gif", ".heic",
                               ".heif", ".hif", ".avif", ".bmp"})
RAW_EXTENSIONS = frozenset({".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".dng", ".raf",
                            ".rw2", ".rwl", ".orf", ".pef", ".srw", ".mrw", ".3fr", ".erf", ".kdc", ".mef",
                            ".mos", ".x3f", ".iiq", ".raw"})
SUPPORTED_EXTENSIONS = RASTER_EXTENSIONS | RAW_EXTENSIONS
# Honest photos are decoded downscaled; only a file claiming more pixels than this is refused.
MAX_PIXELS = 250_000_000
# Formats without reduced decoding (PNG, TIFF, WebP, ...) above this are refused rather than
# decoded at full size, which would take gigabytes of memory.
MAX_FULL_DECODE_PIXELS = 120_000_000
JPEG_QUALITY = 85
# A RAW preview smaller than this on its long side is no usable picture of the photo.
MIN_PREVIEW_SIDE = 256

# We check sizes ourselves (above), so Pillow's own bomb warning is noise; its hard error stays.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)
Image.MAX_IMAGE_PIXELS = MAX_PIXELS // 2


@dataclass(frozen=True)
class PreparedImage:
    """The JPEG sent to the model and what it was made from."""

    jpeg: bytes
    width: int
    height: int
    original_width: int
    original_height: int
    decode_seconds: float = 0.0
    encode_seconds: float = 0.0


def is_raw(path: Path) -> bool:
    """Return whether the file is a camera RAW format (decoded through its embedded preview)."""
    return path.suffix.lower() in RAW_EXTENSIONS


def prepare_file(path: Path, resolution: int) -> PreparedImage:
    """Return the model's JPEG for an image file on disk; raise ImageError naming the reason."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ImageError(f"cannot read: {exc.strerror or exc}", str(path)) from exc
    if size == 0:
        raise ImageError("empty file (0 bytes)", str(path))
    try:
        # No symlink followed, and a FIFO or device never blocks the open nor is read.
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(descriptor, "rb") as stream:
            if not stat.S_ISREG(os.fstat(descriptor).st_mode):
                raise ImageError("not a regular file (a FIFO, device or socket is never read)", str(path))
            return _prepare(stream, resolution, orientation=None)
    except ImageError as error:
        raise error.for_file(str(path)) from error.__cause__
    except OSError as exc:
        raise ImageError(f"cannot read: {exc.strerror or exc}", str(path)) from exc


def best_preview(previews: list[bytes]) -> bytes:
    """Return the embedded preview with the most pixels; raise ImageError when none is usable.

    RAW files carry several previews (PreviewImage, JpgFromRaw, OtherImage, ThumbnailImage) and the
    largest in bytes is not always the largest in pixels (a RAF's 12 kB PreviewImage is 8x8 pixels).
    A preview under MIN_PREVIEW_SIDE pixels on its long side tells a model nothing: no usable preview.
    """
    sized = []
    for data in previews:
        try:
            with Image.open(io.BytesIO(data)) as image:
                sized.append((image.width * image.height, image.width, image.height, data))
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError):
            continue  # cameras leave placeholders of a few bytes where a preview could be
    if not sized:
        raise ImageError("no usable preview: the RAW file holds no embedded preview image, and captiond does not "
                         "decode RAW data itself")
    _, width, height, data = max(sized, key=lambda item: item[0])
    if max(width, height) < MIN_PREVIEW_SIDE:
        raise ImageError(f"no usable preview: the largest embedded preview is {width}x{height} pixels (under "
                         f"{MIN_PREVIEW_SIDE} on its long side), and captiond does not decode RAW data itself")
    return data


def prepare_bytes(data: bytes, resolution: int, orientation: int | None = None) -> PreparedImage:
    """Return the model's JPEG for an encoded image (a RAW preview), applying `orientation` if it has none."""
    if not data:
        raise ImageError("no embedded preview image")
    return _prepare(io.BytesIO(data), resolution, orientation)


def _prepare(stream: io.BufferedReader | io.BytesIO, resolution: int, orientation: int | None) -> PreparedImage:
    started = time.perf_counter()
    try:
        with Image.open(stream) as image:
            original_width, original_height = image.size
            _check_size(image)
            _draft(image, resolution)
            image.load()
            method = _transpose_method(image, orientation)
            # Turned after the downscale: a quarter of the pixels to move, and no EXIF block rewritten.
            small = _downscale(_to_rgb(image), resolution)
            if method is not None:
                small = small.transpose(method)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"refused as a decompression bomb: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageError("not an image, or an unsupported or corrupt format") from exc
    except (OSError, SyntaxError, ValueError, IndexError, TypeError, EOFError, MemoryError) as exc:
        # Pillow reports truncated and corrupt data with any of these.
        raise ImageError(f"corrupt or truncated image: {exc}") from exc
    decoded = time.perf_counter()
    small.info = {}  # Pillow would copy a comment (often a caption or an address) into the JPEG
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return PreparedImage(buffer.getvalue(), small.width, small.height, original_width, original_height,
                         decoded - started, time.perf_counter() - decoded)


def _check_size(image: Image.Image) -> None:
    pixels = image.width * image.height
    if pixels > MAX_PIXELS:
        raise ImageError(f"refused as a decompression bomb: {image.width}x{image.height} pixels")
    if image.format != "JPEG" and pixels > MAX_FULL_DECODE_PIXELS:
        raise ImageError(f"too large to decode safely: {image.width}x{image.height} {image.format}")


def _draft(image: Image.Image, resolution: int) -> None:
    """Let the JPEG decoder scale by 1/2, 1/4 or 1/8 while decoding (no full-size decode)."""
    if image.format != "JPEG":
        return
    scale = resolution / max(image.size)
    if scale < 1:
        image.draft("RGB", (max(1, int(image.width * scale)), max(1, int(image.height * scale))))


def _transpose_method(image: Image.Image, orientation: int | None) -> Image.Transpose | None:
    """Return what turns the image upright: its EXIF Orientation, else the given one (RAW previews)."""
    exif_orientation = image.getexif().get(0x0112)
    if exif_orientation and exif_orientation != 1:
        return _TRANSPOSE.get(exif_orientation) if isinstance(exif_orientation, int) else None
    if orientation and orientation in _TRANSPOSE:
        return _TRANSPOSE[orientation]
    return None


_TRANSPOSE: dict[int, Image.Transpose | None] = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _to_rgb(image: Image.Image) -> Image.Image:
    """Return an RGB image; transparency is laid on white, 16-bit and CMYK are converted."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode.startswith("I;16") or image.mode == "I":
        return image.convert("I").point(lambda value: value * (1 / 256)).convert("L").convert("RGB")
    return image.convert("RGB")


def _downscale(image: Image.Image, resolution: int) -> Image.Image:
    if max(image.size) <= resolution:
        return image
    image.thumbnail((resolution, resolution), Image.Resampling.BICUBIC, reducing_gap=2.0)
    return image
