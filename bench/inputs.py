"""The benchmark's inputs, generated deterministically and cached under bench/out/inputs/.

Photos are made from a seeded random generator: a two-colour gradient with random shapes
(softened), a mid-frequency texture and fine luminance grain, so they compress and decode like
camera photos (about 2.5 bits per pixel at JPEG quality 92: a 12 MP one is 3.7 MB) - not like flat
test cards, which decode several times faster. Each carries EXIF Make, Model, DateTime, DateTimeOriginal and
Orientation. Every folder of inputs ends with a hidden marker holding its recipe; a folder whose
marker matches is reused as it is, anything else is rebuilt from scratch.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any

from harness import PROJECT_DIRECTORY
from PIL import Image, ImageChops, ImageDraw, ImageFilter

MARKER_NAME = ".bench-inputs.json"
RECIPE_VERSION = 1  # bump when the generator changes, so cached inputs are rebuilt
DNG_FIXTURE = PROJECT_DIRECTORY / "tests" / "fixtures" / "DNG_with_preview.dng"
CAMERAS = (("Canon", "Canon EOS 80D"), ("NIKON CORPORATION", "NIKON D7500"), ("SONY", "ILCE-6400"),
           ("FUJIFILM", "X-T30"), ("OLYMPUS CORPORATION", "E-M10MarkIII"), ("Apple", "iPhone 12"))
EXIF_MAKE, EXIF_MODEL, EXIF_ORIENTATION, EXIF_DATE_TIME = 0x010F, 0x0110, 0x0112, 0x0132
EXIF_SUB_IFD, EXIF_DATE_TIME_ORIGINAL = 0x8769, 0x9003


@dataclass(frozen=True)
class PhotoRecipe:
    """How one kind of photo is made: pixel size, JPEG quality and the share of portrait-tagged ones."""

    width: int
    height: int
    quality: int = 92
    rotated_every: int = 5  # every Nth photo is stored landscape with EXIF Orientation 6 (portrait)


@dataclass(frozen=True)
class LibraryRecipe:
    """A folder of `count` photos, `per_folder` to a subfolder, cycling through `distinct` generated ones."""

    photo: PhotoRecipe
    count: int
    distinct: int
    per_folder: int
    version: int = RECIPE_VERSION


# ---------------------------------------------------------------- one photo

def _noise_table(sigma: float) -> list[int]:
    """A lookup table turning uniform bytes into grain centred on 128 with a normal spread of `sigma`."""
    distribution = NormalDist(0, sigma)
    return [max(0, min(255, 128 + round(distribution.inv_cdf((value + 0.5) / 256)))) for value in range(256)]


FINE_GRAIN = _noise_table(4)
TEXTURE = _noise_table(14)


def _random_colour(generator: random.Random) -> tuple[int, int, int]:
    return (generator.randrange(256), generator.randrange(256), generator.randrange(256))


def _scene(generator: random.Random, size: tuple[int, int]) -> Image.Image:
    """A small picture: a rotated two-colour gradient with 15-40 random shapes, slightly blurred."""
    gradient = Image.linear_gradient("L").rotate(generator.uniform(0, 360)).resize(size)
    scene = Image.composite(Image.new("RGB", size, _random_colour(generator)),
                            Image.new("RGB", size, _random_colour(generator)), gradient)
    draw = ImageDraw.Draw(scene)
    width, height = size
    for _ in range(generator.randint(15, 40)):
        left, top = generator.randrange(width), generator.randrange(height)
        box = (left, top, left + generator.randrange(5, width // 2), top + generator.randrange(5, height // 2))
        shape = generator.randrange(3)
        if shape == 0:
            draw.ellipse(box, fill=_random_colour(generator))
        elif shape == 1:
            draw.rectangle(box, fill=_random_colour(generator))
        else:
            corners = [(generator.randrange(width), generator.randrange(height))
                       for _ in range(generator.randint(3, 7))]
            draw.polygon(corners, fill=_random_colour(generator))
    return scene.filter(ImageFilter.GaussianBlur(1.2))


def _grain(generator: random.Random, size: tuple[int, int], table: list[int]) -> Image.Image:
    """Seeded luminance grain of a given spread (Pillow's own noise is not seedable)."""
    return Image.frombytes("L", size, generator.randbytes(size[0] * size[1])).point(table)


def render_photo(seed: int, width: int, height: int) -> Image.Image:
    """Return the RGB pixels of photo number `seed` (the same pixels on every machine and run)."""
    generator = random.Random(seed)
    size = (width, height)
    picture = _scene(generator, (max(8, width // 8), max(8, height // 8))).resize(size, Image.Resampling.BICUBIC)
    texture = _grain(generator, (max(2, width // 4), max(2, height // 4)), TEXTURE).resize(
        size, Image.Resampling.BICUBIC)
    luminance = ImageChops.add(texture, _grain(generator, size, FINE_GRAIN), 1.0, -128)
    return ImageChops.add(picture, Image.merge("RGB", (luminance, luminance, luminance)), 1.0, -128)


def camera_exif(seed: int, orientation: int) -> Image.Exif:
    """EXIF as a camera writes it: Make, Model, DateTime, DateTimeOriginal and Orientation."""
    generator = random.Random(seed * 7919 + 1)
    make, model = CAMERAS[seed % len(CAMERAS)]
    moment = (f"{2015 + generator.randrange(10)}:{1 + generator.randrange(12):02d}:{1 + generator.randrange(28):02d} "
              f"{generator.randrange(24):02d}:{generator.randrange(60):02d}:{generator.randrange(60):02d}")
    exif = Image.Exif()
    exif[EXIF_MAKE], exif[EXIF_MODEL], exif[EXIF_DATE_TIME], exif[EXIF_ORIENTATION] = make, model, moment, orientation
    exif.get_ifd(EXIF_SUB_IFD)[EXIF_DATE_TIME_ORIGINAL] = moment
    return exif


def photo_jpeg(seed: int, recipe: PhotoRecipe) -> bytes:
    """Return photo number `seed` as camera-like JPEG bytes."""
    orientation = 6 if recipe.rotated_every and seed % recipe.rotated_every == recipe.rotated_every - 1 else 1
    buffer = io.BytesIO()
    render_photo(seed, recipe.width, recipe.height).save(
        buffer, format="JPEG", quality=recipe.quality, exif=camera_exif(seed, orientation).tobytes())
    return buffer.getvalue()


# ---------------------------------------------------------------- cached folders

def _marker_matches(directory: Path, recipe: dict[str, Any]) -> bool:
    try:
        return bool(json.loads((directory / MARKER_NAME).read_text()) == _recipe_data(recipe))
    except (OSError, ValueError):
        return False


def _recipe_data(recipe: dict[str, Any]) -> Any:
    return json.loads(json.dumps(recipe))  # as it reads back from the marker (tuples become lists)


def cached_directory(directory: Path, recipe: dict[str, Any], build: Callable[[Path], None]) -> tuple[Path, bool]:
    """Return a folder built by `build` for this recipe (reused when cached) and whether it was built now."""
    if _marker_matches(directory, recipe):
        return directory, False
    if directory.exists():
        shutil.rmtree(directory)
    partial = directory.with_name(f"{directory.name}.partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    build(partial)
    (partial / MARKER_NAME).write_text(json.dumps(_recipe_data(recipe), indent=2))
    partial.rename(directory)
    return directory, True


def library_path(index: int, per_folder: int) -> str:
    """The relative path of photo number `index` in a library: album-NNNN/IMG_NNNNNN.jpg."""
    return f"album-{index // per_folder:04d}/IMG_{index:06d}.jpg"


def photo_library(directory: Path, recipe: LibraryRecipe) -> tuple[Path, bool]:
    """A cached library of JPEG photos (see LibraryRecipe); return it and whether it was built now."""

    def build(target: Path) -> None:
        for index in range(recipe.count):
            destination = target / library_path(index, recipe.per_folder)
            destination.parent.mkdir(parents=True, exist_ok=True)
            if index < recipe.distinct:
                destination.write_bytes(photo_jpeg(index, recipe.photo))
            else:
                shutil.copyfile(target / library_path(index % recipe.distinct, recipe.per_folder), destination)

    return cached_directory(directory, asdict(recipe), build)


def library_photos(directory: Path, recipe: LibraryRecipe) -> list[Path]:
    """Return the paths of a library's photos, in order."""
    return [directory / library_path(index, recipe.per_folder) for index in range(recipe.count)]


def heic_photo(directory: Path, recipe: PhotoRecipe, seed: int = 9001) -> tuple[Path, bool]:
    """A cached HEIC photo (pillow-heif; encoding a 12 MP one takes about ten seconds, once)."""
    import pillow_heif

    def build(target: Path) -> None:
        pillow_heif.register_heif_opener()
        render_photo(seed, recipe.width, recipe.height).save(
            target / "photo.heic", format="HEIF", quality=80, exif=camera_exif(seed, 1).tobytes())

    folder, built = cached_directory(directory, {"heic": asdict(recipe), "seed": seed, "version": RECIPE_VERSION},
                                     build)
    return folder / "photo.heic", built


def raw_with_preview(directory: Path, recipe: PhotoRecipe, seed: int = 9002) -> tuple[Path, bool]:
    """A cached DNG (the tests' fixture) whose PreviewImage is replaced by a photo of the recipe's size,
    as cameras embed a full-size JPEG preview in their RAW files."""

    def build(target: Path) -> None:
        preview = target / "preview.jpg"
        preview.write_bytes(photo_jpeg(seed, PhotoRecipe(recipe.width, recipe.height, recipe.quality, 0)))
        raw = target / "photo.dng"
        shutil.copyfile(DNG_FIXTURE, raw)
        subprocess.run(["exiftool", "-q", "-overwrite_original", f"-PreviewImage<={preview}", str(raw)], check=True)
        preview.unlink()

    folder, built = cached_directory(directory, {"dng": asdict(recipe), "seed": seed, "version": RECIPE_VERSION},
                                     build)
    return folder / "photo.dng", built


def tiny_library(directory: Path, count: int, per_folder: int = 100) -> tuple[Path, bool]:
    """A cached library of `count` copies of one small JPEG (160x120, with EXIF), `per_folder` to a folder."""
    recipe = {"tiny": count, "per_folder": per_folder, "version": RECIPE_VERSION}

    def build(target: Path) -> None:
        data = photo_jpeg(424242, PhotoRecipe(160, 120, 85, 0))
        for index in range(count):
            destination = target / library_path(index, per_folder)
            if index % per_folder == 0:
                destination.parent.mkdir(parents=True, exist_ok=True)
            with open(destination, "wb") as stream:
                stream.write(data)

    return cached_directory(directory, recipe, build)


def directory_size_bytes(directory: Path) -> int:
    """Return the bytes of every file under a folder."""
    total = 0
    for folder, _, names in os.walk(directory):
        total += sum(os.path.getsize(os.path.join(folder, name)) for name in names)
    return total
