"""A person's work is never lost: edits made while the model answers, other languages, number-like keywords.

The emulator's reply makes the person's edit (with the real exiftool, as digiKam or a script would) at
the exact moment captiond waits for the model, so the write that follows must notice that the files
no longer hold what its decision was based on, read them again and decide again.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from reliability_support import (
    EXIFTOOL_CONFIG,
    REPORT,
    Daemon,
    Problems,
    captiond,
    daemons,
    image_key,
    jpeg_for_model,
    model_jpeg,
    photo_bytes,
    records_failures,
    rows_so_far,
    wait_for,
)

from conftest import MODEL
from emulator import OllamaEmulator, decode_images, default_reply, expected_caption

NUMBER_LIKE = ("2023.10", "1e3", "007", "-0", "1.50", "12", "0x1F", "1E-3")


def exiftool(*arguments: str | Path) -> None:
    """Write as a person's tool would (the real exiftool, in place)."""
    subprocess.run(["exiftool", "-config", str(EXIFTOOL_CONFIG), "-q", "-overwrite_original", *map(str, arguments)],
                   check=True, capture_output=True, timeout=60)


def tags(path: Path) -> dict[str, Any]:
    """Return every tag of a file (-G1, numbers kept as exiftool's text by parsing them as strings)."""
    output = subprocess.run(["exiftool", "-config", str(EXIFTOOL_CONFIG), "-j", "-G1", "-struct", "-a",
                             "-XMP:all", "-IFD0:ImageDescription", "-IPTC:all", str(path)],
                            capture_output=True, check=False, timeout=60).stdout
    records = json.loads(output or b"[{}]", parse_float=str, parse_int=str)
    record: dict[str, Any] = records[0]
    return record


def keyword_list(record: dict[str, Any]) -> list[str]:
    value = record.get("XMP-dc:Subject", [])
    return [str(item) for item in (value if isinstance(value, list) else [value])]


def write_config(directory: Path, url: str, write: str) -> Path:
    """A vision.yml with a caption and a labels model on the emulator."""
    service = {"Uri": f"{url}/api/generate"}
    document = {"Models": [{"Type": "caption", "Model": MODEL, "Engine": "ollama", "Service": service},
                           {"Type": "labels", "Model": MODEL, "Engine": "ollama", "Service": service}],
                "Daemon": {"StateDir": str(directory / "state"), "Timeout": 10, "Settle": 0.2, "Rescan": 3600,
                           "Write": write, "Retry": {"Attempts": 2, "Delay": 0.05, "MaxDelay": 0.2, "Total": 20}}}
    path = directory / "vision.yml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


LABELS = json.dumps({"labels": [{"name": "boat", "confidence": 0.9, "topicality": 0.9}]})


class Scenario:
    """Photos, and what a person does to each while the model answers its caption request."""

    def __init__(self, originals: Path, write: str) -> None:
        self.originals = originals
        self.embedded = write == "embedded"
        self.edits: dict[str, Callable[[], None]] = {}
        self.checks: list[Callable[[Problems], None]] = []
        self.index = 0

    def photo(self, name: str) -> Path:
        path = self.originals / name
        path.parent.mkdir(parents=True, exist_ok=True)
        self.index += 1
        path.write_bytes(photo_bytes(500 + self.index))
        return path

    def target(self, photo: Path) -> Path:
        return photo if self.embedded else Path(f"{photo}.xmp")

    def during_answer(self, photo: Path, edit: Callable[[], None]) -> None:
        self.edits[image_key(model_jpeg(photo))] = edit

    def reply(self, body: dict[str, Any]) -> str:
        labels = bool(body.get("format") or body.get("response_format"))
        images = decode_images(body)
        edit = self.edits.pop(image_key(images[0]), None) if images and not labels else None
        if edit is not None:
            edit()
        return LABELS if labels else default_reply(body)


def build(originals: Path, write: str) -> Scenario:
    """Every case of the class: caption and keywords edited meanwhile, other languages, number-like keywords,
    emoji captions, a photo replaced or deleted meanwhile."""
    scenario = Scenario(originals, write)

    caption_meanwhile = scenario.photo("caption-meanwhile.jpg")
    scenario.during_answer(caption_meanwhile, lambda: exiftool("-XMP-dc:Description=Grandma's boat",
                                                              scenario.target(caption_meanwhile)))

    def caption_kept(problems: Problems) -> None:
        record = tags(scenario.target(caption_meanwhile))
        problems.expect(record.get("XMP-dc:Description") == "Grandma's boat",
                        f"a caption written while the model answered was lost: {record.get('XMP-dc:Description')}")
    scenario.checks.append(caption_kept)

    keyword_meanwhile = scenario.photo("keyword-meanwhile.jpg")
    scenario.during_answer(keyword_meanwhile, lambda: exiftool("-XMP-dc:Subject+=Holiday",
                                                              scenario.target(keyword_meanwhile)))

    def keyword_kept(problems: Problems) -> None:
        record = tags(scenario.target(keyword_meanwhile))
        problems.expect({"Holiday", "Boat"} <= set(keyword_list(record)),
                        f"a keyword added while the model answered was lost: {keyword_list(record)}")
        problems.expect(str(record.get("XMP-captiond:CaptionSource")) == "ollama", "no caption of ours beside it")
    scenario.checks.append(keyword_kept)

    german = scenario.photo("german-only.jpg")
    exiftool("-XMP-dc:Description-de-DE=Ein Boot", scenario.target(german))

    def german_kept(problems: Problems) -> None:
        record = tags(scenario.target(german))
        problems.expect(record.get("XMP-dc:Description-de-DE") == "Ein Boot", f"the German caption was lost: {record}")
        problems.expect("XMP-captiond:CaptionSource" not in record, "a caption in another language was overwritten")
    scenario.checks.append(german_kept)

    ours_and_german = scenario.photo("ours-then-german.jpg")
    scenario.during_answer(ours_and_german, lambda: exiftool("-XMP-dc:Description-de-DE=Ein Boot",
                                                            scenario.target(ours_and_german)))

    def german_beside_ours(problems: Problems) -> None:
        record = tags(scenario.target(ours_and_german))
        problems.expect(record.get("XMP-dc:Description-de-DE") == "Ein Boot",
                        f"a German caption added while the model answered was deleted: {record}")
    scenario.checks.append(german_beside_ours)

    numbers = scenario.photo("number-keywords.jpg")
    exiftool(*[f"-XMP-dc:Subject={keyword}" for keyword in NUMBER_LIKE], scenario.target(numbers))

    def numbers_kept(problems: Problems) -> None:
        keywords = keyword_list(tags(scenario.target(numbers)))
        problems.expect(keywords[:len(NUMBER_LIKE)] == list(NUMBER_LIKE) and "Boat" in keywords,
                        f"number-like keywords changed: {keywords}")
    scenario.checks.append(numbers_kept)

    emoji = scenario.photo("emoji.jpg")
    exiftool("-XMP-dc:Description=🙂🎉", scenario.target(emoji))

    def emoji_kept(problems: Problems) -> None:
        record = tags(scenario.target(emoji))
        problems.expect(record.get("XMP-dc:Description") == "🙂🎉", f"an emoji caption was replaced: {record}")
    scenario.checks.append(emoji_kept)

    replaced = scenario.photo("replaced.jpg")
    new_image = photo_bytes(999)
    scenario.during_answer(replaced, lambda: (replaced.write_bytes(new_image)))

    def new_photos_caption(problems: Problems) -> None:
        caption = tags(scenario.target(replaced)).get("XMP-dc:Description")
        problems.expect(caption == expected_caption(jpeg_for_model(new_image)),
                        f"a photo replaced while the model answered got the old photo's caption: {caption}")
    scenario.checks.append(new_photos_caption)

    deleted = scenario.photo("deleted.jpg")
    scenario.during_answer(deleted, deleted.unlink)

    def no_orphan(problems: Problems) -> None:
        problems.expect(not os.path.lexists(f"{deleted}.xmp") and not deleted.exists(),
                        "a sidecar was written for a photo deleted while the model answered")
    scenario.checks.append(no_orphan)
    return scenario


@pytest.mark.parametrize("write", ["sidecar", "embedded"])
@records_failures
def test_a_persons_edits_while_the_model_answers_are_never_lost(write: str, tmp_path: Path,
                                                                request: pytest.FixtureRequest) -> None:
    """Figure: while the model answers, a person writes a caption, adds a keyword or a German caption,
    replaces the photo or deletes it; beforehand, photos hold a German-only caption, number-like keywords
    (2023.10, 1e3, 007, -0, ...) and an emoji caption. After `captiond run -m caption,labels` (sidecar and
    embedded) every caption, language alternative and keyword of the person is there exactly, the replaced
    photo has the new photo's caption, and the deleted photo has no sidecar."""
    originals = tmp_path / "originals"
    scenario = build(originals, write)
    with OllamaEmulator(reply=scenario.reply) as emulator:
        config = write_config(tmp_path, emulator.url, write)
        result = captiond("run", "--config", config, "--originals", originals, "-m", "caption,labels", timeout=300)
    problems = Problems()
    for check in scenario.checks:
        check(problems)
    problems.expect("Traceback" not in result.stderr, "a traceback")
    problems.expect(not scenario.edits, f"edits never made (no request for those photos): {len(scenario.edits)}")
    REPORT.record(request, write=write, hostile_inputs_tried=len(scenario.checks), problems=list(problems))
    problems.assert_none(result.stdout[-2000:] + result.stderr[-2000:])


@records_failures
def test_the_daemon_does_not_renew_its_caption_over_a_persons_exif_edit(tmp_path: Path,
                                                                        request: pytest.FixtureRequest) -> None:
    """Figure: in embedded mode a person changes only the EXIF ImageDescription (or only IPTC
    Caption-Abstract) of photos the daemon captioned; the daemon sees the changed photos and keeps each
    person's text (no caption of ours is renewed over it)."""
    originals = tmp_path / "originals"
    originals.mkdir()
    exif, iptc = originals / "exif.jpg", originals / "iptc.jpg"
    exif.write_bytes(photo_bytes(1))
    iptc.write_bytes(photo_bytes(2))
    exiftool("-IPTC:Keywords=old", iptc)  # a photo with IPTC: our caption goes there too
    with OllamaEmulator() as emulator, daemons() as started:
        config = write_config(tmp_path, emulator.url, "embedded")
        daemon = Daemon(config, originals, tmp_path / "daemon.log")
        started.append(daemon)

        def done(photo: Path, after: float = 0) -> bool:
            row = rows_so_far(tmp_path).get(str(photo), {})
            return row.get("state") == "done" and float(row.get("updated", 0)) > after

        first = wait_for(lambda: done(exif) and done(iptc), timeout=120)
        marker = float(rows_so_far(tmp_path)[str(exif)]["updated"])
        exiftool("-IFD0:ImageDescription=Uncle Bob's boat", exif)
        exiftool("-IPTC:Caption-Abstract=Aunt Mary's boat", iptc)
        second = wait_for(lambda: done(exif, marker) and done(iptc, marker), timeout=120)
        alive = daemon.alive()
        exit_code = daemon.stop()
    problems = Problems()
    problems.expect(first and second, "the daemon did not finish")
    problems.expect(alive and exit_code == 0, f"the daemon exited (code {exit_code})")
    problems.expect(tags(exif).get("IFD0:ImageDescription") == "Uncle Bob's boat", f"EXIF edit lost: {tags(exif)}")
    problems.expect(tags(iptc).get("IPTC:Caption-Abstract") == "Aunt Mary's boat", f"IPTC edit lost: {tags(iptc)}")
    REPORT.record(request, hostile_inputs_tried=2, problems=list(problems))
    problems.assert_none(daemon.log()[-3000:])
