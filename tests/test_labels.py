"""Labels (keywords), prompts with the photo's context, and several model servers at once."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from captiond.config import Thresholds
from captiond.errors import AnswerError
from captiond.labels import Label, merge_keywords, normalize_name, parse_labels, select_labels
from conftest import add_fixture, read_tags, run_captiond, write_config
from emulator import OllamaEmulator, Reply

LABELS_JSON = json.dumps({"labels": [
    {"name": "ferris wheel", "confidence": 0.9, "topicality": 0.8},
    {"name": "Sky", "confidence": 0.7, "topicality": 0.5},
    {"name": "blur", "confidence": 0.1, "topicality": 0.9},  # below Confidence 20
]})


def labels_reply(text: str = LABELS_JSON) -> Any:
    """An emulator reply: `text` for label requests (they carry a JSON schema), a caption otherwise."""
    def reply(body: dict[str, Any]) -> str:
        return text if body.get("format") or body.get("response_format") else "A fair at night."
    return reply


@pytest.mark.parametrize(("answer", "expected"), [
    pytest.param('{"labels":[{"name":"cat","confidence":0.8,"topicality":0.7}]}', [("cat", 0.8, 0.7)], id="plain"),
    pytest.param('Here you go:\n```json\n{"labels":[{"name":"cat","confidence":0.8,"topicality":0.7}]}\n```',
                 [("cat", 0.8, 0.7)], id="fenced-in-prose"),
    pytest.param('Sure {"labels":[{"name":"cat"}]} hope it helps', [("cat", 0.5, 0.5)], id="missing-fields"),
    pytest.param('{"labels":[{"name":"cat","confidence":80,"topicality":60}]}', [("cat", 0.8, 0.6)], id="percent"),
    pytest.param('{"labels":[{"name":"cat","confidence":0.9}]}', [("cat", 0.9, 0.9)], id="topicality-defaults"),
    pytest.param('["cat", "dog"]', [("cat", 0.5, 0.5), ("dog", 0.5, 0.5)], id="bare-list-of-names"),
    pytest.param('<think>a cat?</think>{"labels":[{"name":"cat","confidence":0.6,"topicality":0.6},{"name":""}]}',
                 [("cat", 0.6, 0.6)], id="thinking-and-empty-name"),
])
def test_parse_labels_tolerates_what_models_write(answer: str, expected: list[tuple[str, float, float]]) -> None:
    assert [(label.name, label.confidence, label.topicality) for label in parse_labels(answer)] == expected


@pytest.mark.parametrize("answer", ["A cat on a sofa.", "", "```json\n{broken\n```", '{"labels": "cat"}'])
def test_parse_labels_refuses_answers_without_usable_json(answer: str) -> None:
    with pytest.raises(AnswerError):
        parse_labels(answer)


@pytest.mark.parametrize(("name", "mode", "expected"), [
    ("ferris wheel", "single-word", "Ferris"), ("ferris wheel", "phrase", "Ferris Wheel"),
    ("ferris wheel", "false", "ferris wheel"), ("  **Dog.** ", "single-word", "Dog"),
    ("東京タワー", "single-word", "東京タワー"), ("Straßenbahn", "single-word", "Straßenbahn"),
])
def test_normalize_name_like_photoprism(name: str, mode: str, expected: str) -> None:
    assert normalize_name(name, mode) == expected


def test_select_labels_applies_thresholds_and_drops_repeats() -> None:
    labels = [Label("dog", 0.9, 0.9), Label("Dog ", 0.8, 0.7), Label("grass", 0.3, 0.2), Label("tree", 0.25, 0.05)]
    assert select_labels(labels, Thresholds(confidence=20, topicality=10), "single-word") == ["Dog", "Grass"]
    assert select_labels(labels, Thresholds(confidence=50, topicality=0), "false") == ["dog"]


def test_merge_keeps_every_keyword_a_person_added() -> None:
    keywords, added = merge_keywords(["Grandma", "Dog", "Beach"], ["Dog", "Beach"], ["Cat", "grandma"])
    assert keywords == ["Grandma", "Cat"]
    assert added == ["Cat"]


@pytest.mark.subprocess
def test_caption_and_labels_written_together_and_human_keywords_kept(
        tmp_path: Path, originals: Path, emulator: OllamaEmulator) -> None:
    photo = add_fixture(originals, "no_exif.jpg", "Fair/no_exif.jpg")  # a person's caption and keyword "tag"
    plain = add_fixture(originals, "Canon_PowerShot_S40.jpg", "Fair/plain.jpg")
    emulator.reply = labels_reply()
    config = write_config(tmp_path, emulator.url)

    result = run_captiond("run", "--config", config, "--originals", originals, "-m", "caption,labels")

    assert result.exit_code == 0, result.stderr
    assert "captioned 1, labelled 2, skipped 0, failed 0" in result.stdout
    tags = read_tags(Path(f"{photo}.xmp"), "XMP-dc:all", "XMP-lr:all", "XMP-captiond:all")
    # digiKam replaces the photo's XMP with the sidecar's: the person's caption is carried, as theirs.
    assert tags["XMP-dc:Description"] == "Der Goalie bin ig"
    assert "XMP-captiond:CaptionSource" not in tags
    assert tags["XMP-dc:Subject"] == "['tag', 'Ferris', 'Sky']" or tags["XMP-dc:Subject"] == "tag, Ferris, Sky"
    assert tags["XMP-captiond:LabelsSource"] == "ollama"
    assert read_tags(Path(f"{plain}.xmp"), "XMP-dc:Description")["XMP-dc:Description"] == "A fair at night."

    # A person adds a keyword and removes nothing; a forced re-run replaces only our keywords.
    sidecar = Path(f"{plain}.xmp")
    subprocess_exiftool(["-XMP-dc:Subject+=Grandma", str(sidecar)])
    emulator.reply = labels_reply(json.dumps({"labels": [{"name": "carousel", "confidence": 0.9,
                                                          "topicality": 0.9}]}))
    again = run_captiond("run", "--config", config, "--originals", originals, "-m", "labels", "--force")
    assert again.exit_code == 0, again.stderr
    keywords = keyword_list(sidecar)
    assert keywords == ["Grandma", "Carousel"]
    assert keyword_list(Path(f"{photo}.xmp")) == ["tag", "Carousel"]


@pytest.mark.subprocess
def test_labels_we_added_that_a_person_removed_count_as_theirs(
        tmp_path: Path, originals: Path, emulator: OllamaEmulator) -> None:
    photo = add_fixture(originals, "Canon_PowerShot_S40.jpg")
    emulator.reply = labels_reply()
    config = write_config(tmp_path, emulator.url)
    run_captiond("run", "--config", config, "--originals", originals, "-m", "labels")
    subprocess_exiftool(["-XMP-dc:Subject-=Sky", str(Path(f"{photo}.xmp"))])

    result = run_captiond("run", "--config", config, "--originals", originals, "-m", "labels", "--force")

    assert "has labels from xmp (32), higher than ollama (16)" in result.stdout
    assert keyword_list(Path(f"{photo}.xmp")) == ["Ferris"]


@pytest.mark.subprocess
def test_embedded_keywords_go_to_iptc_where_it_exists(tmp_path: Path, originals: Path,
                                                     emulator: OllamaEmulator) -> None:
    photo = add_fixture(originals, "IPTC.jpg")
    emulator.reply = labels_reply(json.dumps({"labels": [
        {"name": "Überraschungsei" * 6, "confidence": 0.9, "topicality": 0.9}]}))
    config = write_config(tmp_path, emulator.url, daemon={"Write": "embedded"}, entry={"Normalize": "false"})
    result = run_captiond("run", "--config", config, "--originals", originals, "-m", "labels")
    assert result.exit_code == 0, result.stderr
    tags = read_tags(photo, "IPTC:Keywords", "IPTC:CodedCharacterSet", "XMP-dc:Subject")
    iptc = tags["IPTC:Keywords"].strip("[]'").split("', '")[-1]
    assert len(iptc.encode("utf-8")) <= 64 and ("Überraschungsei" * 6).startswith(iptc)
    assert tags["IPTC:CodedCharacterSet"] == "UTF8"
    assert ("Überraschungsei" * 6) in tags["XMP-dc:Subject"]


@pytest.mark.subprocess
def test_labels_answer_without_json_is_asked_once_more_then_fails(
        tmp_path: Path, originals: Path, emulator: OllamaEmulator) -> None:
    good = add_fixture(originals, "Canon_PowerShot_S40.jpg")
    bad = add_fixture(originals, "Konica_Minolta_DiMAGE_Z3.jpg")
    emulator.reply = labels_reply()
    emulator.enqueue(Reply("I see a fair."), Reply("Still no JSON, sorry."), Reply("A dog."), Reply(LABELS_JSON))
    config = write_config(tmp_path, emulator.url, daemon={"Parallel": 1})
    result = run_captiond("run", "--config", config, "--originals", originals, "-m", "labels", "--parallel", "1")
    assert result.exit_code == 1
    assert "labelled 1, skipped 0, failed 1" in result.stdout
    assert "the labels answer held no JSON" in result.stdout
    assert sum(Path(f"{photo}.xmp").exists() for photo in (good, bad)) == 1


@pytest.mark.subprocess
def test_prompt_context_is_sent_only_when_the_prompt_asks(tmp_path: Path, originals: Path,
                                                           emulator: OllamaEmulator) -> None:
    add_fixture(originals, "Canon_PowerShot_S40.jpg", "Rome 2003/IMG_1.jpg")
    config = write_config(tmp_path, emulator.url, daemon={"Language": "de"},
                          entry={"Prompt": "Caption this photo from {folder}, taken {date} with a {camera}."})
    assert run_captiond("run", "--config", config, "--originals", originals).exit_code == 0
    prompt = emulator.generation_requests()[0].body["prompt"]  # type: ignore[index]
    assert prompt == ("Caption this photo from Rome 2003, taken 2003-12-14 with a Canon PowerShot S40. "
                      "Answer in German.")

    plain = write_config(tmp_path, emulator.url)
    add_fixture(originals, "Canon_PowerShot_S40.jpg", "Rome 2003/IMG_2.jpg")
    assert run_captiond("run", "--config", plain, "--originals", originals).exit_code == 0
    body = json.dumps(emulator.generation_requests()[-1].body)
    assert "Rome" not in body and "Canon" not in body and "2003" not in body


@pytest.mark.subprocess
def test_work_is_spread_over_endpoints_and_survives_one_dying(tmp_path: Path, originals: Path) -> None:
    for index in range(16):
        add_fixture(originals, "Canon_PowerShot_S40.jpg", f"photo{index:02d}.jpg")
    with OllamaEmulator(latency=0.2) as first, OllamaEmulator(latency=0.2) as second:
        def stop_second_after_three(body: dict[str, Any]) -> str:
            if len(second.generation_requests()) == 3:
                threading.Thread(target=second.stop).start()
            return "A photo of a field."
        second.reply = stop_second_after_three
        config = write_config(tmp_path, first.url, service={
            "Uri": None, "Endpoints": [{"Uri": f"{first.url}/api/generate", "Parallel": 2},
                                       {"Uri": f"{second.url}/api/generate", "Parallel": 2}]})
        result = run_captiond("run", "--config", config, "--originals", originals, "--report", tmp_path / "r.json")

        assert result.exit_code == 0, result.stdout + result.stderr
        assert "captioned 16, skipped 0, failed 0" in result.stdout
        assert first.max_processing <= 2 and second.max_processing <= 2  # never more than its slots at once
        assert len(second.generation_requests()) >= 3
        report = json.loads((tmp_path / "r.json").read_text())
        assert [endpoint["parallel"] for endpoint in report["endpoints"]] == [2, 2]
        assert sum(endpoint["requests"] - endpoint["errors"] for endpoint in report["endpoints"]) == 16


@pytest.mark.subprocess
def test_two_endpoints_share_the_work(tmp_path: Path, originals: Path) -> None:
    for index in range(12):
        add_fixture(originals, "Canon_PowerShot_S40.jpg", f"photo{index:02d}.jpg")
    with OllamaEmulator(latency=0.1) as first, OllamaEmulator(latency=0.1) as second:
        config = write_config(tmp_path, first.url, service={"Uri": [f"{first.url}/api/generate",
                                                                    f"{second.url}/api/generate"]},
                              daemon={"Parallel": 2})
        result = run_captiond("run", "--config", config, "--originals", originals)
        assert result.exit_code == 0, result.stderr
        assert len(first.generation_requests()) >= 4 and len(second.generation_requests()) >= 4
        assert first.max_processing <= 2 and second.max_processing <= 2


def subprocess_exiftool(arguments: list[str]) -> None:
    import subprocess

    subprocess.run(["exiftool", "-q", "-overwrite_original", *arguments], check=True)


def keyword_list(sidecar: Path) -> list[str]:
    import subprocess

    output = subprocess.run(["exiftool", "-j", "-XMP-dc:Subject", str(sidecar)], capture_output=True, text=True,
                            check=True).stdout
    value = json.loads(output)[0].get("Subject", [])
    return value if isinstance(value, list) else [value]


@pytest.mark.subprocess
def test_digikam_tags_list_gets_our_keywords_too(tmp_path: Path, originals: Path, emulator: OllamaEmulator) -> None:
    photo = add_fixture(originals, "Canon_PowerShot_S40.jpg")
    sidecar = Path(f"{photo}.xmp")
    subprocess_exiftool(["-XMP-digiKam:TagsList=People/Grandma", "-XMP-dc:Subject=Grandma", str(sidecar)])
    emulator.reply = labels_reply()
    config = write_config(tmp_path, emulator.url)
    assert run_captiond("run", "--config", config, "--originals", originals, "-m", "labels").exit_code == 0
    tags = read_tags(sidecar, "XMP-digiKam:TagsList")
    assert tags["XMP-digiKam:TagsList"] in ("['People/Grandma', 'Ferris', 'Sky']", "People/Grandma, Ferris, Sky")
    assert keyword_list(sidecar) == ["Grandma", "Ferris", "Sky"]


@pytest.mark.subprocess
def test_a_labels_failure_does_not_throw_away_the_caption(tmp_path: Path, originals: Path,
                                                          emulator: OllamaEmulator) -> None:
    photo = add_fixture(originals, "Canon_PowerShot_S40.jpg")
    emulator.reply = labels_reply("No JSON from me.")
    config = write_config(tmp_path, emulator.url)
    result = run_captiond("run", "--config", config, "--originals", originals, "-m", "caption,labels")
    assert result.exit_code == 1
    assert "captioned 1, labelled 0, skipped 0, failed 1" in result.stdout
    assert "Canon_PowerShot_S40.jpg: labels: the labels answer held no JSON" in result.stdout
    assert read_tags(Path(f"{photo}.xmp"), "XMP-dc:Description")["XMP-dc:Description"] == "A fair at night."

    emulator.reply = labels_reply()
    again = run_captiond("run", "--config", config, "--originals", originals, "-m", "caption,labels")
    assert "captioned 0, labelled 1, skipped 0, failed 0" in again.stdout
    assert keyword_list(Path(f"{photo}.xmp")) == ["Ferris", "Sky"]
