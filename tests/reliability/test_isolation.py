"""One bad answer is one photo's failure: generated hostile model answers never stop `run` or `watch`.

Captions and labels answers are generated from a class of pieces that broke captiond before (lone
surrogates, JSON nested a thousand levels, a label of 900 kB, thousands of labels, control characters,
option injection after line breaks) and random mixtures of them. Every photo must end captioned with
valid text and bounded keywords, or failed with a reason on one line; the daemon never exits.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import unicodedata
from pathlib import Path
from typing import Any

import pytest
import yaml
from reliability_support import (
    EXIFTOOL_CONFIG,
    REPORT,
    Daemon,
    Problems,
    daemons,
    environment,
    image_key,
    make_photos,
    model_jpeg,
    records_failures,
    rows_so_far,
    seeded,
    state_rows,
    wait_for,
)

from conftest import MODEL
from emulator import OllamaEmulator, decode_images, default_reply

TEXT_PIECES = ("\ud800", "\udfff", "\udc80", "\x00", "\ufffe", "\uffff", "\ufeff", "\u202e", "\u200b", "\n-o\n/tmp/x",
               "\r\n-execute\n", "\x1b[31m", "<think>", "</think>", "🙂", "🎉", "e\u0301", "\u0301" * 50, "%d", "'",
               '"', "<", "&", "]]>", "\\", "日本", " ", "\t", "a")
MAX_LENGTH = 500
MAX_LABEL_LENGTH = 100
MAX_LABELS = 20


def hostile_text(rng: random.Random, pieces: int) -> str:
    """Return a random mixture of hostile text pieces and ordinary words."""
    return "".join(rng.choice(TEXT_PIECES + ("A boat ", "at sea. ")) for _ in range(pieces))


def deep(depth: int, opening: str, closing: str) -> str:
    return opening * depth + closing * depth


def labels_document(labels: list[Any]) -> str:
    return json.dumps({"labels": labels})


def caption_answers(rng: random.Random) -> list[str]:
    """Return the caption answers of the class: fixed members and generated mixtures."""
    fixed = ["A boat \ud800 at sea.", "\ud800", "🙂🎉", "A" * 200_000, "\x00\x01\x02", "A dog\n-o\n/tmp/escaped.jpg",
             "[" * 5000, '{"caption": ' * 2000]
    return fixed + [hostile_text(rng, rng.randint(1, 40)) for _ in range(10)]


def labels_answers(rng: random.Random) -> list[str]:
    """Return the labels answers of the class: deep nesting, huge and many labels, odd values, mixtures."""
    label = {"name": "cat", "confidence": 0.9, "topicality": 0.9}
    fixed = [
        deep(1000, "[", "]"), deep(1000, '{"labels":', "}"), '{"labels":' + deep(100_000, "[", "]") + "}",
        labels_document([{**label, "name": "x" * 900_000}]),
        labels_document([{**label, "name": f"label{index}"} for index in range(5000)]),
        labels_document([{**label, "name": "\ud800cat\udfff"}, {**label, "name": "\n-o\n/tmp/x"}]),
        labels_document([{"name": 7, "confidence": "high"}, {"name": None}, {"name": ["a"]}, 5, None, [[]]]),
        '{"labels":[{"name":"dog","confidence":NaN,"topicality":Infinity}]}',
        "[{" * 300_000,
    ]
    generated = [labels_document([{**label, "name": hostile_text(rng, rng.randint(1, 12))}
                                  for _ in range(rng.randint(1, 30))]) for _ in range(8)]
    return fixed + generated


class Answers:
    """The emulator's reply: per image, a scripted caption answer or labels answer."""

    def __init__(self, photos: list[Path], rng: random.Random) -> None:
        captions, labels = caption_answers(rng), labels_answers(rng)
        self.by_image: dict[str, tuple[str, str]] = {}
        for index, photo in enumerate(photos):
            self.by_image[image_key(model_jpeg(photo))] = (captions[index % len(captions)],
                                                           labels[index % len(labels)])

    def reply(self, body: dict[str, Any]) -> str:
        images = decode_images(body)
        caption, labels = self.by_image.get(image_key(images[0]) if images else "", ("", ""))
        if not caption:
            return default_reply(body)
        return labels if body.get("format") or body.get("response_format") else caption


def write_config(directory: Path, url: str, **daemon: Any) -> Path:
    """A vision.yml with a caption and a labels model on the emulator."""
    service = {"Uri": f"{url}/api/generate"}
    document = {
        "Models": [{"Type": "caption", "Model": MODEL, "Engine": "ollama", "Service": service},
                   {"Type": "labels", "Model": MODEL, "Engine": "ollama", "Service": service}],
        "Daemon": {"StateDir": str(directory / "state"), "Timeout": 10, "Settle": 0.2, "Rescan": 3600,
                   "Retry": {"Attempts": 2, "Delay": 0.05, "MaxDelay": 0.2, "Total": 20}, **daemon},
    }
    path = directory / "vision.yml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def sidecar_tags(photos: list[Path]) -> dict[Path, dict[str, Any]]:
    """Return {photo: sidecar tags} read by a separate exiftool (keywords as a list of text)."""
    sidecars = [Path(f"{photo}.xmp") for photo in photos]
    output = subprocess.run(["exiftool", "-config", str(EXIFTOOL_CONFIG), "-j", "-G1", "-struct",
                             "-api", "struct=2", "-XMP-dc:Description", "-XMP-dc:Subject",
                             *[str(path) for path in sidecars if path.exists()]],
                            capture_output=True, check=False, timeout=120).stdout
    records = {record["SourceFile"]: record for record in json.loads(output or b"[]")}
    return {photo: records.get(str(sidecar), {}) for photo, sidecar in zip(photos, sidecars, strict=True)}


def text_problems(name: str, tags: dict[str, Any]) -> list[str]:
    """Return what is wrong with a written caption and its keywords (invalid text, unbounded length or count)."""
    problems = []
    caption = str(tags.get("XMP-dc:Description", ""))
    keywords = tags.get("XMP-dc:Subject", [])
    keywords = keywords if isinstance(keywords, list) else [keywords]
    for text in [caption, *map(str, keywords)]:
        if any(unicodedata.category(character) in ("Cs", "Cc") for character in text):
            problems.append(f"{name}: invalid or control characters written: {text[:80]!r}")
    if len(caption) > MAX_LENGTH:
        problems.append(f"{name}: a caption of {len(caption)} characters")
    if len(keywords) > MAX_LABELS or any(len(str(keyword)) > MAX_LABEL_LENGTH for keyword in keywords):
        problems.append(f"{name}: {len(keywords)} keywords, the longest {max(map(len, map(str, keywords)))}")
    return problems


@records_failures
def test_hostile_answers_are_each_one_photos_outcome_in_run(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Figure: `captiond run -m caption,labels` over 27 photos, each answered with one member of the class of
    hostile answers (lone surrogates, 1 000- and 100 000-deep JSON, a 900 kB label, 5 000 labels, control
    characters, option injection, and generated mixtures): no traceback, every photo is processed, each ends
    captioned with valid text (no surrogate or control character, at most MaxLength characters, at most 20
    keywords of at most 100 characters) or failed with a one-line reason."""
    photos = make_photos(tmp_path / "originals", 27)
    answers = Answers(photos, seeded("answers-run"))
    report = tmp_path / "report.json"
    with OllamaEmulator(reply=answers.reply) as emulator:
        config = write_config(tmp_path, emulator.url)
        process = subprocess.run([sys.executable, "-m", "captiond", "run", "--config", str(config), "--originals",
                                  str(tmp_path / "originals"), "-m", "caption,labels", "--report", str(report)],
                                 capture_output=True, timeout=600, env=environment(), stdin=subprocess.DEVNULL,
                                 check=False)
    output = process.stdout.decode("utf-8", "replace") + process.stderr.decode("utf-8", "replace")
    problems = Problems()
    problems.expect(process.returncode in (0, 1), f"exit code {process.returncode}")
    problems.expect("Traceback" not in output, "a traceback")
    summary = json.loads(report.read_text()) if report.exists() else {}
    problems.expect(summary.get("not_processed") == 0, f"not every photo was processed: {summary}")
    failed = {item["path"]: item["reason"] for item in summary.get("failures", [])}
    for reason in failed.values():
        problems.expect(reason and "\n" not in reason and "\r" not in reason, f"a reason over lines: {reason!r}")
    for photo, tags in sidecar_tags(photos).items():
        name = photo.relative_to(tmp_path / "originals").as_posix()
        problems.extend(text_problems(name, tags))
        problems.expect(tags.get("XMP-dc:Description") or name in failed, f"{name}: neither captioned nor failed")
    REPORT.record(request, hostile_inputs_tried=len(photos), photos=len(photos), failed=len(failed),
                  problems=list(problems))
    problems.assert_none(output[-3000:])


@records_failures
def test_hostile_answers_never_stop_the_daemon(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Figure: `captiond watch` with caption and labels models, every photo answered with a member of the
    class of hostile answers, stays alive and records every photo as done or failed with a reason."""
    photos = make_photos(tmp_path / "originals", 27)
    answers = Answers(photos, seeded("answers-watch"))
    with OllamaEmulator(reply=answers.reply) as emulator, daemons() as started:
        config = write_config(tmp_path, emulator.url)
        daemon = LabelsDaemon(config, tmp_path / "originals", tmp_path / "daemon.log", ["--models", "caption,labels"])
        started.append(daemon)

        def finished() -> bool:
            rows = rows_so_far(tmp_path)
            return not daemon.alive() or all(rows.get(str(photo), {}).get("state") in ("done", "failed",
                                                                                       "quarantined")
                                             for photo in photos)

        settled = wait_for(finished, timeout=300, interval=0.25)
        alive = daemon.alive()
        rows = state_rows(tmp_path)
        exit_code = daemon.stop()
    problems = Problems()
    problems.expect(settled, "the daemon did not finish within 300 s")
    problems.expect(alive and exit_code == 0, f"the daemon exited (code {exit_code})")
    problems.expect("Traceback" not in daemon.log(), "a traceback in the log")
    for photo in photos:
        row = rows.get(str(photo), {})
        if row.get("state") != "done":
            problems.expect(row.get("last_error") and "\n" not in row["last_error"],
                            f"{photo.name}: {row.get('state')} without a one-line reason: {row.get('last_error')!r}")
    for photo, tags in sidecar_tags(photos).items():
        problems.extend(text_problems(photo.name, tags))
    REPORT.record(request, hostile_inputs_tried=len(photos), daemon_exits_during_faults=0 if alive else 1,
                  problems=list(problems))
    problems.assert_none(daemon.log()[-3000:])


class LabelsDaemon(Daemon):
    """`captiond watch` with extra arguments (the models to run)."""

    def __init__(self, config: Path, originals: Path, log: Path, extra: list[str]) -> None:
        self.log_path = log
        self.log_offset = log.stat().st_size if log.exists() else 0
        with log.open("ab") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "captiond", "watch", "--config", str(config), "--originals", str(originals),
                 *extra], stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=environment())


@records_failures
def test_a_corrupt_state_database_is_set_aside_and_rebuilt(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Figure: `captiond watch` started on a state database that is not a database (garbage bytes) moves it
    aside as `captiond.db.corrupt-TIME`, says so in the log, builds a new one and captions every photo
    (before, it exited with code 2 at every restart)."""
    photos = make_photos(tmp_path / "originals", 4)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "captiond.db").write_bytes(b"this is not an SQLite database\n" * 200)
    with OllamaEmulator() as emulator, daemons() as started:
        config = write_config(tmp_path, emulator.url)
        daemon = Daemon(config, tmp_path / "originals", tmp_path / "daemon.log")
        started.append(daemon)
        done = wait_for(lambda: not daemon.alive() or all(
            rows_so_far(tmp_path).get(str(photo), {}).get("state") == "done" for photo in photos), timeout=120)
        alive = daemon.alive()
        exit_code = daemon.stop()
    problems = Problems()
    problems.expect(done and alive and exit_code == 0, f"the daemon did not rebuild its database (exit {exit_code})")
    problems.expect(list((tmp_path / "state").glob("captiond.db.corrupt-*")), "the corrupt database was not kept")
    problems.expect("corrupt" in daemon.log(), "the log does not say the database was corrupt")
    REPORT.record(request, problems=list(problems))
    problems.assert_none(daemon.log()[-3000:])


def test_normalize_false_is_accepted_as_documented(tmp_path: Path) -> None:
    """`Normalize: false` (a YAML boolean, as the README writes it) is a valid labels setting."""
    photos = make_photos(tmp_path / "originals", 1)
    with OllamaEmulator() as emulator:
        config = write_config(tmp_path, emulator.url)
        document = yaml.safe_load(config.read_text())
        document["Models"][1]["Normalize"] = False
        config.write_text(yaml.safe_dump(document))
        result = subprocess.run([sys.executable, "-m", "captiond", "run", "--config", str(config), "--originals",
                                 str(photos[0].parent.parent), "-m", "labels", "--dry-run"], capture_output=True,
                                text=True, timeout=120, env=environment(), stdin=subprocess.DEVNULL, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
