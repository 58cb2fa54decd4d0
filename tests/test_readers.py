"""The reader matrix on a library of files as other apps leave them: after `captiond run` in either write mode,
every app still shows every caption and keyword a person had, and shows ours where the README says it does."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from captiond.sources import is_boilerplate
from conftest import FIXTURES, run_captiond, write_config
from emulator import OllamaEmulator
from readers import APPS, Shown, available, exiv2_problems
from test_labels import labels_reply

pytestmark = [pytest.mark.subprocess,  # every test here starts `python -m captiond`
              pytest.mark.skipif(bool(available()), reason=available() or "ready")]

OUR_CAPTION = "A fair at night."
OUR_KEYWORDS = ("Ferris", "Sky")
# A darktable sidecar as darktable 4 writes it: its own namespace, history, and its automatic tags.
DARKTABLE_SIDECAR = """<?xml version="1.0" encoding="UTF-8"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="XMP Core 4.4.0-Exiv2">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:xmpMM="http://ns.adobe.com/xap/1.0/mm/"
    xmlns:dc="http://purl.org/dc/elements/1.1/"
    xmlns:lr="http://ns.adobe.com/lightroom/1.0/"
    xmlns:darktable="http://darktable.sf.net/"
   xmp:Rating="1"
   xmpMM:DerivedFrom="IMG_2.jpg"
   darktable:import_timestamp="63855936000000000"
   darktable:xmp_version="5"
   darktable:raw_params="0"
   darktable:auto_presets_applied="1"
   darktable:history_end="1">
   <dc:subject>
    <rdf:Bag>
     <rdf:li>Holiday</rdf:li>
    </rdf:Bag>
   </dc:subject>
   <lr:hierarchicalSubject>
    <rdf:Bag>
     <rdf:li>Holiday</rdf:li>
     <rdf:li>darktable|format|jpg</rdf:li>
    </rdf:Bag>
   </lr:hierarchicalSubject>
   <darktable:history>
    <rdf:Seq>
     <rdf:li darktable:num="0" darktable:operation="exposure" darktable:enabled="1" darktable:modversion="6"
      darktable:params="0000000000000000" darktable:multi_name="" darktable:multi_priority="0"/>
    </rdf:Seq>
   </darktable:history>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
"""


def exiftool_write(*arguments: str) -> None:
    subprocess.run(["exiftool", "-q", "-overwrite_original", *arguments], check=True)


def build_library(originals: Path) -> list[Path]:
    """Return the photos of a library holding what other apps and people leave behind."""
    def copy(name: str, as_name: str) -> Path:
        target = originals / as_name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(FIXTURES / name, target)
        return target

    raw = copy("CR2_with_preview.cr2", "pair/IMG_1.CR2")  # RAW+JPEG pair with Lightroom's base-name sidecar
    jpeg = copy("Canon_PowerShot_S40.jpg", "pair/IMG_1.JPG")
    exiftool_write("-XMP-lr:HierarchicalSubject=Places|Berlin", "-XMP-dc:Subject=Places", "-XMP-dc:Subject=Berlin",
                   "-o", str(originals / "pair" / "IMG_1.xmp"), str(raw))
    tagged = copy("Canon_PowerShot_S40.jpg", "digikam/tagged.jpg")  # digiKam writes TagsList into the file
    exiftool_write("-XMP-digiKam:TagsList=People/Grandma", "-XMP-lr:HierarchicalSubject=People|Grandma",
                   "-XMP-dc:Subject=Grandma", "-IPTC:Keywords=Grandma", str(tagged))
    developed = copy("Olympus_boilerplate.jpg", "darktable/IMG_2.jpg")
    (originals / "darktable" / "IMG_2.jpg.xmp").write_text(DARKTABLE_SIDECAR)
    iptc = copy("IPTC.jpg", "iptc/IPTC.jpg")  # IPTC caption and keywords, no XMP, no hierarchy
    smoke = copy("Canon_PowerShot_S40.jpg", "comments/smoke.jpg")
    exiftool_write("-File:Comment=Lovely smoke effect here, from the bridge.", str(smoke))
    png = copy("PNG.png", "comments/PNG.png")
    person = copy("no_exif.jpg", "people/no_exif.jpg")  # a person's caption and keyword, XMP, EXIF and IPTC
    labelled = copy("Nikon_COOLPIX_P1.jpg", "people/labelled.jpg")  # a person's keyword in its own sidecar
    exiftool_write("-XMP-dc:Subject=Cake", "-o", str(originals / "people" / "labelled.jpg.xmp"), str(labelled))
    return [raw, jpeg, tagged, developed, iptc, smoke, png, person, labelled]


def shown_by_every_app(photos: list[Path]) -> dict[tuple[str, str], Shown]:
    return {(app, photo.name): read(photo) for photo in photos for app, read in APPS.items()}


ALL = {"IMG_1.CR2", "IMG_1.JPG", "tagged.jpg", "IMG_2.jpg", "IPTC.jpg", "smoke.jpg", "PNG.png", "no_exif.jpg",
       "labelled.jpg"}
CAPTIONED = {"IMG_1.CR2", "IMG_1.JPG", "tagged.jpg", "IMG_2.jpg", "labelled.jpg"}  # the others have a person's
RAW = {"IMG_1.CR2"}
# Where each app shows our caption and our keywords, (app, mode) -> (photos, photos); the README's app
# table says the same. The RAW's sidecar is Lightroom's IMG_1.xmp, which digiKam and darktable do not
# read (they look for IMG.ext.xmp); Lightroom reads sidecars of proprietary RAW only, JPEGs embedded only;
# PhotoPrism's released reader takes embedded keywords from IPTC only (IMG_1.JPG shows its stacked RAW's).
SHOWS_OURS: dict[tuple[str, str], tuple[set[str], set[str]]] = {
    ("PhotoPrism (release)", "sidecar"): (CAPTIONED, ALL),
    ("PhotoPrism (develop)", "sidecar"): (CAPTIONED, ALL),
    ("Immich", "sidecar"): (CAPTIONED, ALL),
    ("digiKam", "sidecar"): (CAPTIONED - RAW, ALL - RAW),
    ("darktable", "sidecar"): (CAPTIONED - RAW, ALL - RAW),
    ("Lightroom", "sidecar"): (RAW, RAW),
    ("PhotoPrism (release)", "embedded"): (CAPTIONED, ALL - {"smoke.jpg", "PNG.png"}),
    ("PhotoPrism (develop)", "embedded"): (CAPTIONED, ALL),
    ("Immich", "embedded"): (CAPTIONED, ALL),
    ("digiKam", "embedded"): (CAPTIONED - RAW, ALL - RAW),
    ("darktable", "embedded"): (CAPTIONED - RAW, ALL - RAW),
    ("Lightroom", "embedded"): (CAPTIONED, ALL),
}


@pytest.mark.parametrize("mode", ["sidecar", "embedded"])
def test_every_app_keeps_what_people_wrote_and_shows_ours_where_the_readme_says(
        tmp_path: Path, originals: Path, emulator: OllamaEmulator, mode: str) -> None:
    photos = build_library(originals)
    before = shown_by_every_app(photos)
    files_before = {path: path.stat().st_mtime_ns for path in originals.rglob("*") if path.is_file()}
    complaints_before = {path: exiv2_problems(path) for path in files_before}
    emulator.reply = labels_reply()
    config = write_config(tmp_path, emulator.url, daemon={"Write": mode})

    result = run_captiond("run", "--config", config, "--originals", originals, "-m", "caption,labels")

    assert result.exit_code == 0, result.stdout + result.stderr
    after = shown_by_every_app(photos)
    lost = []
    for (app, name), shown in before.items():
        if not is_boilerplate(shown.caption) and after[app, name].caption != shown.caption:
            lost.append(f"{app}, {name}: caption {shown.caption!r} became {after[app, name].caption!r}")
        lost += [f"{app}, {name}: keyword {keyword!r} gone ({after[app, name].keywords})"
                 for keyword in shown.keywords if not after[app, name].shows_keyword(keyword)]
    assert not lost, "\n".join(lost)

    wrong = []
    for app in APPS:
        captions, keywords = SHOWS_OURS[app, mode]
        for photo in photos:
            shown = after[app, photo.name]
            if (photo.name in captions) != (shown.caption == OUR_CAPTION):
                wrong.append(f"{app}, {photo.name}: caption {shown.caption!r}, ours expected: {photo.name in captions}")
            if (photo.name in keywords) != all(shown.shows_keyword(keyword) for keyword in OUR_KEYWORDS):
                wrong.append(f"{app}, {photo.name}: keywords {shown.keywords}, ours expected: {photo.name in keywords}")
    assert not wrong, "\n".join(wrong)

    written = [path for path in originals.rglob("*") if path.is_file() and files_before.get(path)
               != path.stat().st_mtime_ns]
    assert written
    # exiv2 parses everything we wrote with no complaint the file did not already cause (a camera's maker notes).
    problems = [f"{path.name}: {line}" for path in written for line in exiv2_problems(path).splitlines()
                if line not in complaints_before.get(path, "").splitlines()]
    assert not problems, "\n".join(problems)
