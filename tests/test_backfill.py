"""`captiond run`'s use case called in-process (backfill.run): the real emulator on loopback, the real exiftool on
copies of the fixtures; and the one function that shows a path to the user."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from captiond import backfill, filters, redaction
from captiond.config import load_config
from captiond.errors import ModelSetupError
from captiond.library import shown
from captiond.modelruns import model_runs
from captiond.pipeline import RunOptions
from conftest import add_fixture, read_tags, write_config
from emulator import OllamaEmulator

PHOTOS = {"2024/a.jpg": "Canon_PowerShot_S40.jpg", "2024/b.jpg": "Nikon_COOLPIX_P1.jpg",
          "2023/c.jpg": "Canon_PowerShot_S40.jpg", "2023/person.jpg": "33-type_error.jpg"}


def caption_once(config_path: Path, originals: Path, *words: str, dry_run: bool = False, count: int | None = None,
                 report: Path | None = None) -> backfill.Summary:
    """Run the use case as `captiond run [--dry-run] [--count N] [--report FILE] WORDS...` does, without a process."""
    config = load_config(config_path).with_daemon(originals=originals)
    runs = model_runs(config, "caption", connect=not dry_run)
    query = filters.parse(words, originals, photoprism=False)
    return backfill.run(config, runs, RunOptions(dry_run=dry_run, count=count), originals, query,
                        filters.name_terms(query, None, originals), words=words, report=report)


@pytest.fixture(autouse=True)
def no_secrets_of_other_tests(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start from no registered secrets: other tests in this process register some ("1", ...) and the summary
    is redacted."""
    monkeypatch.setattr(redaction, "_secrets", ())


@pytest.fixture
def library(originals: Path) -> Path:
    for target, fixture in PHOTOS.items():
        add_fixture(originals, fixture, target)
    return originals


def test_a_run_captions_what_needs_it_and_counts_it(tmp_path: Path, library: Path, emulator: OllamaEmulator,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "report.json"

    summary = caption_once(write_config(tmp_path, emulator.url), library, report=report)

    assert (summary.captions, summary.counts["skipped"], summary.failed) == (3, 1, 0)
    assert sorted(path.relative_to(library).as_posix() for path in library.rglob("*.xmp")) == [
        "2023/c.jpg.xmp", "2024/a.jpg.xmp", "2024/b.jpg.xmp"]
    assert read_tags(library / "2024/a.jpg.xmp", "XMP-dc:Description")["XMP-dc:Description"]
    assert capsys.readouterr().out.startswith("captioned 3, skipped 1, failed 0")
    assert json.loads(report.read_text())["captioned"] == 3
    assert len(emulator.generation_requests()) == 3


def test_a_filtered_dry_run_asks_and_writes_nothing(tmp_path: Path, library: Path, emulator: OllamaEmulator,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    summary = caption_once(write_config(tmp_path, emulator.url), library, "path:2024", "name:a", dry_run=True)

    assert summary.counts["would caption"] == 1 and summary.total == 1
    assert "would caption 1" in capsys.readouterr().out
    assert not list(library.rglob("*.xmp"))
    assert emulator.generation_requests() == []


def test_a_metadata_filter_and_count_limit_the_run(tmp_path: Path, library: Path, emulator: OllamaEmulator) -> None:
    config = write_config(tmp_path, emulator.url)

    summary = caption_once(config, library, count=1)
    assert summary.captions == 1 and summary.counts["skipped"] == 3  # the person's caption, and --count reached
    first = [path.name for path in library.rglob("*.xmp")]
    assert len(first) == 1 and first[0] in ("a.jpg.xmp", "b.jpg.xmp", "c.jpg.xmp")

    expected = len({"a.jpg.xmp", "c.jpg.xmp"} - set(first))  # the Canon of 2003, where not captioned yet
    assert caption_once(config, library, "year:2003").captions == expected
    assert {"a.jpg.xmp", "c.jpg.xmp"} <= {path.name for path in library.rglob("*.xmp")}


def test_a_broken_photo_fails_with_its_reason_and_the_run_goes_on(
        tmp_path: Path, library: Path, emulator: OllamaEmulator) -> None:
    (library / "2024" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a JPEG after all")
    report = tmp_path / "report.json"

    summary = caption_once(write_config(tmp_path, emulator.url), library, report=report)

    assert (summary.captions, summary.failed) == (3, 1)
    failures = json.loads(report.read_text())["failures"]
    assert [failure["path"] for failure in failures] == ["2024/broken.jpg"] and failures[0]["reason"]


def test_a_model_server_that_cannot_be_used_stops_the_run_before_any_photo(
        tmp_path: Path, library: Path, emulator: OllamaEmulator) -> None:
    with pytest.raises(ModelSetupError):
        caption_once(write_config(tmp_path, emulator.url, model="no-such-model:1b"), library)

    assert not list(library.rglob("*.xmp"))


@pytest.mark.parametrize(("path", "originals", "expected"), [
    (Path("/photos/2024/a.jpg"), Path("/photos"), "2024/a.jpg"),
    (Path("/elsewhere/a.jpg"), Path("/photos"), "/elsewhere/a.jpg"),
    (Path("/photos/a.jpg"), None, "/photos/a.jpg"),
    (Path("/photos/line\nbreak.jpg"), Path("/photos"), "line\\x0abreak.jpg"),
    (Path("/photos/\x1b[31mred.jpg"), Path("/photos"), "\\x1b[31mred.jpg"),
    (Path("/photos/latin-1-\udce9.jpg"), Path("/photos"), "latin-1-\\xe9.jpg"),
])
def test_a_path_is_shown_relative_and_on_one_line(path: Path, originals: Path | None, expected: str) -> None:
    assert shown(path, originals) == expected
