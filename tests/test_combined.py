"""Caption and labels in one request (CombineOutputs): counted at the emulator, with the fallback to two requests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from captiond.combined import parse_combined
from captiond.config import load_config
from captiond.errors import AnswerError
from captiond.exiftool_process import Exiftool
from captiond.modelruns import model_runs
from captiond.pipeline import Captioner, RunOptions, Status
from conftest import add_fixture, read_tags, run_captiond, write_config
from emulator import OllamaEmulator

PHOTOS = ["Canon_PowerShot_S40.jpg", "Nikon_COOLPIX_P1.jpg", "Olympus_boilerplate.jpg"]
LABELS = [{"name": "ferris wheel", "confidence": 0.9, "topicality": 0.8},
          {"name": "Sky", "confidence": 0.7, "topicality": 0.5},
          {"name": "blur", "confidence": 0.1, "topicality": 0.9}]
COMBINED_ANSWER = json.dumps({"caption": "Sure! Here is a caption: **A fair at night.**", "labels": LABELS})


def schema_properties(body: dict[str, Any]) -> set[str]:
    """Return the top-level properties of the JSON schema a request asks for (Ollama or OpenAI shape)."""
    schema = body.get("format") or (body.get("response_format") or {}).get("json_schema", {}).get("schema")
    return set(schema.get("properties", {})) if isinstance(schema, dict) else set()


def reply(combined: str = COMBINED_ANSWER) -> Any:
    """An emulator reply for each kind of request: combined, labels only, caption only."""
    def answer(body: dict[str, Any]) -> str:
        properties = schema_properties(body)
        if properties == {"caption", "labels"}:
            return combined
        if properties == {"labels"}:
            return json.dumps({"labels": LABELS})
        return "A fair at night, asked alone."
    return answer


def kinds(emulator: OllamaEmulator) -> list[str]:
    """Return the kind of every generation request the emulator received, in order."""
    names = {frozenset({"caption", "labels"}): "combined", frozenset({"labels"}): "labels", frozenset(): "caption"}
    return [names[frozenset(schema_properties(request.body))] for request in emulator.generation_requests()]


def keywords(photo: Path) -> str:
    return read_tags(Path(f"{photo}.xmp"), "XMP-dc:Subject").get("XMP-dc:Subject", "")


@pytest.mark.subprocess
def test_caption_and_labels_in_one_request_per_photo(tmp_path: Path, originals: Path,
                                                     emulator: OllamaEmulator) -> None:
    photos = [add_fixture(originals, name) for name in PHOTOS]
    emulator.reply = reply()
    config = write_config(tmp_path, emulator.url, daemon={"CombineOutputs": True})

    result = run_captiond("run", "--config", config, "--originals", originals, "-m", "caption,labels")

    assert result.exit_code == 0, result.stderr
    assert "captioned 3, labelled 3, skipped 0, failed 0" in result.stdout
    assert kinds(emulator) == ["combined"] * 3
    request = emulator.generation_requests()[0].body
    assert request["options"]["num_predict"] == 512  # room for both answers
    assert '"caption"' in request["prompt"] and "Create a caption" in request["prompt"]
    for photo in photos:  # each part cleaned and selected exactly as a separate answer would be
        tags = read_tags(Path(f"{photo}.xmp"), "XMP-dc:Description", "XMP-captiond:all")
        assert tags["XMP-dc:Description"] == "A fair at night."
        assert tags["XMP-captiond:CaptionSource"] == tags["XMP-captiond:LabelsSource"] == "ollama"
        assert keywords(photo) in ("Ferris, Sky", "['Ferris', 'Sky']")


@pytest.mark.subprocess
def test_without_combine_outputs_caption_and_labels_are_two_requests(
        tmp_path: Path, originals: Path, emulator: OllamaEmulator) -> None:
    for name in PHOTOS:
        add_fixture(originals, name)
    emulator.reply = reply()
    config = write_config(tmp_path, emulator.url)

    result = run_captiond("run", "--config", config, "--originals", originals, "-m", "caption,labels")

    assert result.exit_code == 0, result.stderr
    assert sorted(kinds(emulator)) == ["caption"] * 3 + ["labels"] * 3


@pytest.mark.subprocess
def test_photoprisms_option_on_the_model_turns_it_on_and_only_the_missing_part_is_asked(
        tmp_path: Path, originals: Path, emulator: OllamaEmulator) -> None:
    photo = add_fixture(originals, PHOTOS[0])
    emulator.reply = reply()
    config = write_config(tmp_path, emulator.url, entry={"Options": {"CombineOutputs": "caption,labels"}})
    assert run_captiond("run", "--config", config, "--originals", originals, "-m", "caption").exit_code == 0
    assert kinds(emulator) == ["caption"]

    result = run_captiond("run", "--config", config, "--originals", originals, "-m", "caption,labels")

    assert result.exit_code == 0, result.stderr
    assert kinds(emulator) == ["caption", "labels"]  # the caption is there already: labels alone
    assert keywords(photo) in ("Ferris, Sky", "['Ferris', 'Sky']")


@pytest.mark.subprocess
def test_different_models_are_never_combined(tmp_path: Path, originals: Path, emulator: OllamaEmulator) -> None:
    add_fixture(originals, PHOTOS[0])
    emulator.reply = reply()
    config = write_config(tmp_path, emulator.url, daemon={"CombineOutputs": True})
    config.write_text(_append_model(config.read_text(), emulator.url))

    result = run_captiond("run", "--config", config, "--originals", originals, "-m", "caption,labels")

    assert result.exit_code == 0, result.stderr
    assert sorted(kinds(emulator)) == ["caption", "labels"]


def _append_model(document: str, url: str) -> str:
    """Return a vision.yml with a labels model of its own after the caption model."""
    models, daemon = document.split("Daemon:", 1)
    extra = (f"- Type: labels\n  Model: qwen3-vl:2b\n  Engine: ollama\n  Service:\n"
             f"    Uri: {url}/api/generate\n")
    return f"{models}{extra}Daemon:{daemon}"


def test_a_model_that_fails_the_combined_answer_twice_is_asked_in_two_requests(
        tmp_path: Path, originals: Path, emulator: OllamaEmulator) -> None:
    first, second = (add_fixture(originals, name) for name in PHOTOS[:2])
    emulator.reply = reply(combined="A fair at night. (no JSON, this model ignores the schema)")
    config = load_config(write_config(tmp_path, emulator.url, daemon={"CombineOutputs": True}))
    runs = model_runs(config, "caption,labels")
    try:
        with Exiftool() as exiftool:
            captioner = Captioner(config, runs, exiftool, RunOptions())
            outcome = captioner.process(first)
            assert outcome.status == Status.CAPTIONED, outcome.reason
            assert kinds(emulator) == ["combined", "combined", "caption", "labels"]
            assert outcome.caption == "A fair at night, asked alone." and outcome.keywords == ("Ferris", "Sky")

            assert captioner.process(second).status == Status.CAPTIONED
            assert kinds(emulator)[4:] == ["caption", "labels"]  # no third combined attempt
    finally:
        for run in runs.values():
            if run.client is not None:
                run.client.close()


@pytest.mark.subprocess
def test_copies_reuse_one_combined_answer(tmp_path: Path, originals: Path, emulator: OllamaEmulator) -> None:
    copies = [add_fixture(originals, PHOTOS[0], f"{folder}/{PHOTOS[0]}") for folder in ("a", "b")]
    emulator.reply = reply()
    config = write_config(tmp_path, emulator.url, daemon={"CombineOutputs": True, "CacheSize": 100})

    result = run_captiond("run", "--config", config, "--originals", originals, "-m", "caption,labels")

    assert result.exit_code == 0, result.stderr
    assert kinds(emulator) == ["combined"]
    for copy in copies:
        assert keywords(copy) in ("Ferris, Sky", "['Ferris', 'Sky']")


@pytest.mark.subprocess
def test_openai_compatible_server_gets_the_combined_schema(tmp_path: Path, originals: Path,
                                                           emulator: OllamaEmulator) -> None:
    photo = add_fixture(originals, PHOTOS[0])
    emulator.reply = reply()
    config = write_config(tmp_path, emulator.url, daemon={"CombineOutputs": True},
                          service={"Uri": f"{emulator.url}/v1/chat/completions", "RequestFormat": "openai"})

    result = run_captiond("run", "--config", config, "--originals", originals, "-m", "caption,labels")

    assert result.exit_code == 0, result.stderr
    assert kinds(emulator) == ["combined"]
    assert emulator.generation_requests()[0].body["response_format"]["type"] == "json_schema"
    assert keywords(photo) in ("Ferris, Sky", "['Ferris', 'Sky']")


@pytest.mark.parametrize(("answer", "expected"), [
    pytest.param(COMBINED_ANSWER, ("A fair at night.", ["ferris wheel", "Sky", "blur"]), id="plain"),
    pytest.param("<think>hm</think>```json\n" + json.dumps({"caption": {"text": "A cat.", "confidence": 0.9},
                                                            "labels": [{"name": "cat"}]}) + "\n```",
                 ("A cat.", ["cat"]), id="photoprism-envelope-fenced"),
])
def test_parse_combined_cleans_each_part(answer: str, expected: tuple[str, list[str]]) -> None:
    caption, labels = parse_combined(answer, 500)
    assert (caption, [label.name for label in labels]) == expected


@pytest.mark.parametrize("answer", [
    "A cat.", '{"caption": "A cat."}', '{"labels": []}', '{"caption": "", "labels": []}',
    '{"caption": 7, "labels": []}', '["cat"]', '{"caption": "A cat.", "labels": "cat"}',
])
def test_parse_combined_refuses_an_answer_missing_a_part(answer: str) -> None:
    with pytest.raises(AnswerError):
        parse_combined(answer, 500)


@pytest.mark.parametrize(("options", "expected"), [
    ({}, False), ({"CombineOutputs": "true"}, True), ({"CombineOutputs": "caption,labels"}, True),
    ({"CombineOutputs": True}, True), ({"CombineOutputs": "false"}, False), ({"CombineOutputs": ""}, False),
])
def test_photoprisms_combine_outputs_option_is_read_as_a_switch(options: dict[str, Any], expected: bool) -> None:
    from captiond.config import parse_config

    config = parse_config({"Models": [{"Type": "caption", "Options": options}]}, {}, None)
    model = config.model("caption")
    assert model is not None and model.combine_outputs is expected
    labels = config.model("labels")
    assert labels is not None and labels.combine_outputs is expected  # derived from the caption model
    assert parse_config({"Daemon": {"CombineOutputs": True}}, {}, None).daemon.combine_outputs
