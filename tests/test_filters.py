"""FILTER words as PhotoPrism's search query: every term must match, each key means what PhotoPrism's search
means by it (internal/form/search_photos.go, internal/entity/search/photos.go), answered from the files (read
with the real exiftool from copies of the fixtures), by PhotoPrism's search (its emulator on loopback), or
refused by name."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from app_emulators import PhotoPrismEmulator
from captiond import filters
from captiond.config import AppConfig
from captiond.errors import UsageError
from captiond.exiftool_process import Exiftool
from captiond.library import scan
from captiond.metadata import FileMetadata
from conftest import add_fixture, run_captiond, write_config

PHOTOS = {
    "2003/Canon_PowerShot_S40.jpg": "Canon_PowerShot_S40.jpg",  # 2003-12-14, Canon PowerShot S40, no caption
    "2005/Olympus_boilerplate.jpg": "Olympus_boilerplate.jpg",  # 2005-03-10, KONICA MINOLTA DiMAGE Z3, boilerplate
    "2008/33-type_error.jpg": "33-type_error.jpg",  # 2008-05-25, Canon PowerShot G9, "El cielo sobre Berlin (...)"
    "2008/Nikon_COOLPIX_P1.jpg": "Nikon_COOLPIX_P1.jpg",  # 2008-03-07, NIKON COOLPIX P1, no caption
    "2008/trip/IMG_1.JPG": "Canon_PowerShot_S40.jpg",  # 2003-12-14, Canon PowerShot S40, in a subfolder
    "misc/IPTC.jpg": "IPTC.jpg",  # keywords ExifTool, Test, IPTC; caption "A witty caption"; no date
}
A, B, C, D, F, E = PHOTOS  # E: misc/IPTC.jpg, F: 2008/trip/IMG_1.JPG

# One term each, with the photos PhotoPrism's search would find for it.
SINGLE = {
    "2008": {C, D, F},  # captiond's own: a folder and everything below it
    "*/IPTC.jpg": {E},  # captiond's own: a glob
    "path:2008": {C, D},  # PhotoPrism: the photo's folder, matched whole
    "path:2008*": {C, D, F},
    "path:2008/": {C, D},
    "folder:2008/trip": {F},
    "path:2003|misc": {A, E},
    "name:IMG_1": {F},
    "name:img_1.jpg": {F},  # known extensions are stripped from the value, case is ignored
    "name:Nikon*": {D},
    "name:*_P1|IPTC": {D, E},
    "filename:2008/trip/IMG_1.JPG": {F},
    "filename:IMG_1.JPG": set(),  # the whole path relative to the originals
    "filename:*.jpg": {A, B, C, D, E, F},
    "year:2008": {C, D},
    "year:2003|2005": {A, B, F},
    "month:3": {B, D},
    "day:14": {A, F},
    "camera:canon": {A, C, F},  # a prefix of make and model, of the model, or of the slug
    "camera:PowerShot G9": {C},
    "camera:konica-minolta": {B},
    "camera:COOLPIX": {D},
    "camera:minolta": set(),
    "keywords:test": {E},
    "keywords:berl": {C},  # the caption's words are keywords too
    "keywords:test&iptc": {E},
    "keywords:test&berlin": set(),
    "keywords:cat|exiftool": {E},
    "label:iptc": {E},
    "label:cat": set(),
    "label:Test|cat": {E},
    "caption:false": {A, B, D, F},  # the camera's boilerplate is no caption
    "caption:true": {C, E},
    "caption:a witty*": {E},
    "caption:witty": set(),  # matched whole, as PhotoPrism's LIKE
    "caption:*BERLIN*": {C},
}


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    originals = tmp_path_factory.mktemp("originals")
    for target, fixture in PHOTOS.items():
        add_fixture(originals, fixture, target)
    return originals


@pytest.fixture(scope="module")
def read(library: Path) -> dict[Path, FileMetadata]:
    """What exiftool reads from every photo, once for the module."""
    with Exiftool() as exiftool:
        return {library / name: exiftool.read(library / name) for name in PHOTOS}


def selected(library: Path, read: dict[Path, FileMetadata], *words: str) -> set[str]:
    """Return the photos (relative to the library) a run with these FILTER words would take."""
    query = filters.parse(words, library, photoprism=False)
    paths = [path for path in scan(library, query.names) if filters.matches_metadata(query.metadata, read[path])]
    return {path.relative_to(library).as_posix() for path in paths}


@pytest.mark.parametrize(("word", "expected"), SINGLE.items(), ids=SINGLE.keys())
def test_each_key_means_what_photoprism_means(library: Path, read: dict[Path, FileMetadata], word: str,
                                              expected: set[str]) -> None:
    assert selected(library, read, word) == expected


def test_every_pair_of_terms_finds_what_both_find(library: Path, read: dict[Path, FileMetadata]) -> None:
    for first, second in itertools.combinations(SINGLE, 2):
        assert selected(library, read, first, second) == SINGLE[first] & SINGLE[second], (first, second)


@pytest.mark.parametrize(("query", "words"), [
    ("path:2008 name:Nikon*", ("path:2008", "name:Nikon*")),
    ("year:2008 caption:false camera:nikon", ("year:2008", "caption:false", "camera:nikon")),
    ('caption:"a witty*" keywords:test', ("caption:a witty*", "keywords:test")),
])
def test_one_word_may_hold_photoprisms_whole_query(library: Path, read: dict[Path, FileMetadata], query: str,
                                                   words: tuple[str, ...]) -> None:
    assert selected(library, read, query) == selected(library, read, *words)
    assert selected(library, read, query)


@pytest.mark.parametrize("word", ["album:Holidays", "person:Jane", "subject:x", "favorite:true", "color:red",
                                  "camera:2", "ALBUMS:x"])
def test_a_key_only_photoprism_answers_is_refused_by_name_without_it(library: Path, word: str) -> None:
    with pytest.raises(UsageError) as raised:
        filters.parse([word], library, photoprism=False)

    assert f"{word.split(':')[0].lower()}:" in str(raised.value)
    assert "Daemon.PhotoPrism" in str(raised.value)


@pytest.mark.parametrize("word", ["albm:Holidays", "year:abc", "month:13", "day:0", "keywords:&", "name:"])
def test_a_bad_term_is_a_usage_error(library: Path, word: str) -> None:
    with pytest.raises(UsageError) as raised:
        filters.parse([word], library, photoprism=False)

    assert word.split(":")[0].lower() in str(raised.value)


def test_a_name_with_a_colon_is_a_path(tmp_path: Path) -> None:
    add_fixture(tmp_path, "IPTC.jpg", "notes:2024/IPTC.jpg")

    query = filters.parse(["notes:2024"], tmp_path, photoprism=False)

    assert [path.relative_to(tmp_path).as_posix() for path in scan(tmp_path, query.names)] == ["notes:2024/IPTC.jpg"]


@pytest.mark.parametrize("word", ["year:2008", "caption:false", "album:Holidays"])
def test_retry_selects_by_names_only(library: Path, word: str) -> None:
    with pytest.raises(UsageError) as raised:
        filters.parse(["path:2008", word], library, photoprism=True, metadata=False)

    assert "retry selects files by path:, name:, filename:" in str(raised.value)
    assert word.split(":")[0] in str(raised.value)


def test_photoprism_answers_its_keys_in_one_query_anded_with_the_rest(
        library: Path, read: dict[Path, FileMetadata]) -> None:
    with PhotoPrismEmulator(token="app-password-0123") as photoprism:
        photoprism.search_results = {"album:Holidays": [C, D, E], "person:Jane Doe": [A, C, D],
                                     "label:volcano": [C, D, F]}
        app = AppConfig(photoprism.url, "app-password-0123")
        query = filters.parse(["album:Holidays", "person:Jane Doe", "label:volcano", "path:2008", "caption:false"],
                              library, photoprism=True)

        terms = filters.name_terms(query, app, library)
        paths = {path.relative_to(library).as_posix() for path in scan(library, terms)
                 if filters.matches_metadata(query.metadata, read[path])}

        searches = [call.query["q"][0] for call in photoprism.calls if call.path == "/api/v1/photos"]
    assert searches == ['album:Holidays person:"Jane Doe" label:volcano']  # label: is PhotoPrism's when it is set
    assert paths == {D}  # C has a caption; PhotoPrism's answer is one more AND term


def test_photoprism_finding_nothing_selects_nothing(library: Path) -> None:
    with PhotoPrismEmulator(token="app-password-0123") as photoprism:
        app = AppConfig(photoprism.url, "app-password-0123")
        query = filters.parse(["album:Empty"], library, photoprism=True)

        assert list(scan(library, filters.name_terms(query, app, library))) == []


@pytest.mark.subprocess
def test_photoprisms_docs_example_exits_2_instead_of_an_empty_run(tmp_path: Path, originals: Path) -> None:
    add_fixture(originals, "IPTC.jpg")
    config = write_config(tmp_path, "http://127.0.0.1:9")

    result = run_captiond("run", "--dry-run", "--config", config, "--originals", originals, "-m", "caption",
                          "album:Holidays")

    assert result.exit_code == 2
    assert "album:" in result.stderr


@pytest.mark.subprocess
def test_a_metadata_filter_limits_a_real_run(tmp_path: Path, originals: Path) -> None:
    for target, fixture in PHOTOS.items():
        add_fixture(originals, fixture, target)
    config = write_config(tmp_path, "http://127.0.0.1:9")

    result = run_captiond("run", "--dry-run", "--config", config, "--originals", originals, "year:2008",
                          "caption:false")

    assert result.exit_code == 0, result.stderr
    assert "would caption 1" in result.stdout
    assert "Nikon_COOLPIX_P1.jpg" in result.stderr
    assert "Canon_PowerShot_S40" not in result.stderr and "IMG_1" not in result.stderr
