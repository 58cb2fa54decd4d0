"""The result cache: byte-identical photos cost one model call; --force and a changed prompt ask again."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from captiond.cache import CachedResult, ResultCache, cache_key
from captiond.labels import Label
from captiond.state import StateStore
from conftest import FIXTURES, add_fixture, read_tags, run_captiond, write_config
from emulator import OllamaEmulator
from test_labels import labels_reply

PHOTO = "Canon_PowerShot_S40.jpg"
CACHE_ON = {"CacheSize": 100}


def tags_of(photo: Path) -> dict[str, str]:
    return read_tags(Path(f"{photo}.xmp"), "XMP-dc:Description", "XMP-dc:Subject", "XMP-captiond:all")


@pytest.mark.subprocess
def test_byte_identical_copies_in_different_folders_cost_one_model_call(
        tmp_path: Path, originals: Path, emulator: OllamaEmulator) -> None:
    copies = [add_fixture(originals, PHOTO, f"{folder}/{PHOTO}") for folder in ("2024", "Export", "Phone/backup")]
    other = add_fixture(originals, "Nikon_COOLPIX_P1.jpg")
    config = write_config(tmp_path, emulator.url, daemon=CACHE_ON)

    result = run_captiond("run", "--config", config, "--originals", originals, "-p", "1")

    assert result.exit_code == 0, result.stderr
    assert "captioned 4, skipped 0, failed 0" in result.stdout
    assert "from the result cache 2" in result.stdout
    assert len(emulator.generation_requests()) == 2  # one per distinct image
    written = [tags_of(copy) for copy in copies]
    assert len({tags["XMP-dc:Description"] for tags in written}) == 1
    for tags in written:  # same source and model as a model call; the provenance notes the cache
        assert tags["XMP-captiond:CaptionSource"] == "ollama"
        assert tags["XMP-captiond:CaptionModel"] == "qwen2.5vl:3b"
    assert sum(tags.get("XMP-captiond:CaptionCached") == "result cache" for tags in written) == 2
    assert "XMP-captiond:CaptionCached" not in tags_of(other)


@pytest.mark.subprocess
def test_a_later_run_and_a_new_copy_reuse_the_answer_and_force_asks_again(
        tmp_path: Path, originals: Path, emulator: OllamaEmulator) -> None:
    first = add_fixture(originals, PHOTO, f"a/{PHOTO}")
    config = write_config(tmp_path, emulator.url, daemon=CACHE_ON)
    assert run_captiond("run", "--config", config, "--originals", originals).exit_code == 0
    assert len(emulator.generation_requests()) == 1

    copy = add_fixture(originals, PHOTO, f"b/{PHOTO}")
    again = run_captiond("run", "--config", config, "--originals", originals)
    assert "captioned 1, skipped 1" in again.stdout, again.stdout
    assert len(emulator.generation_requests()) == 1
    assert tags_of(copy)["XMP-dc:Description"] == tags_of(first)["XMP-dc:Description"]
    assert tags_of(copy)["XMP-captiond:CaptionCached"] == "result cache"

    emulator.reply = lambda body: "A new answer for a forced run."
    forced = run_captiond("run", "--config", config, "--originals", originals, "--force", "--source", "ollama",
                          "-p", "1")
    assert "captioned 2" in forced.stdout, forced.stdout
    assert len(emulator.generation_requests()) == 3
    assert tags_of(copy)["XMP-dc:Description"] == "A new answer for a forced run."
    assert "XMP-captiond:CaptionCached" not in tags_of(copy)  # a fresh answer: the stale note is gone


@pytest.mark.subprocess
def test_a_different_prompt_language_or_model_is_asked_again(
        tmp_path: Path, originals: Path, emulator: OllamaEmulator) -> None:
    add_fixture(originals, PHOTO, f"a/{PHOTO}")
    add_fixture(originals, PHOTO, f"b/{PHOTO}")
    add_fixture(originals, PHOTO, f"c/{PHOTO}")
    folder_prompt = write_config(tmp_path, emulator.url, daemon=CACHE_ON,
                                 entry={"Prompt": "Describe this photo from {folder}."})

    result = run_captiond("run", "--config", folder_prompt, "--originals", originals, "-p", "1")

    assert result.exit_code == 0, result.stderr
    assert len(emulator.generation_requests()) == 3  # the prompts differ by folder: no reuse
    for photo in originals.rglob("*.xmp"):
        photo.unlink()
    german = write_config(tmp_path, emulator.url, daemon={**CACHE_ON, "Language": "de"})
    assert run_captiond("run", "--config", german, "--originals", originals, "-p", "1").exit_code == 0
    assert len(emulator.generation_requests()) == 4


@pytest.mark.subprocess
def test_labels_are_cached_with_their_scores_and_thresholds_apply_on_reuse(
        tmp_path: Path, originals: Path, emulator: OllamaEmulator) -> None:
    emulator.reply = labels_reply()
    add_fixture(originals, PHOTO, f"a/{PHOTO}")
    config = write_config(tmp_path, emulator.url, daemon=CACHE_ON)
    assert run_captiond("run", "--config", config, "--originals", originals, "-m", "caption,labels").exit_code == 0
    assert len(emulator.generation_requests()) == 2

    copy = add_fixture(originals, PHOTO, f"b/{PHOTO}")
    strict = config.read_text().replace("Models:", "Thresholds:\n  Confidence: 80\nModels:", 1)
    config.write_text(strict)
    result = run_captiond("run", "--config", config, "--originals", originals, "-m", "caption,labels")

    assert result.exit_code == 0, result.stderr
    assert len(emulator.generation_requests()) == 2
    tags = tags_of(copy)
    assert tags["XMP-dc:Description"] == "A fair at night."
    assert tags["XMP-dc:Subject"] == "Ferris"  # Sky (confidence 0.7) is below the new threshold
    assert tags["XMP-captiond:LabelsCached"] == "result cache"


@pytest.mark.subprocess
def test_an_unusable_state_folder_turns_the_cache_off_but_captions_are_written(
        tmp_path: Path, originals: Path, emulator: OllamaEmulator) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the state folder should be")
    add_fixture(originals, PHOTO, f"a/{PHOTO}")
    add_fixture(originals, PHOTO, f"b/{PHOTO}")
    config = write_config(tmp_path, emulator.url, daemon={**CACHE_ON, "StateDir": str(blocker / "state")})

    result = run_captiond("run", "--config", config, "--originals", originals)

    assert result.exit_code == 0, result.stderr
    assert "no result cache for this run" in result.stderr
    assert "captioned 2" in result.stdout
    assert len(emulator.generation_requests()) == 2


@pytest.mark.subprocess
def test_cache_size_zero_turns_it_off(tmp_path: Path, originals: Path, emulator: OllamaEmulator) -> None:
    add_fixture(originals, PHOTO, f"a/{PHOTO}")
    add_fixture(originals, PHOTO, f"b/{PHOTO}")
    config = write_config(tmp_path, emulator.url, daemon={"CacheSize": 0})
    assert run_captiond("run", "--config", config, "--originals", originals).exit_code == 0
    assert len(emulator.generation_requests()) == 2


def test_the_cache_is_bounded_and_evicts_the_least_recently_used(tmp_path: Path) -> None:
    state = StateStore(tmp_path / "state")
    cache = ResultCache(state, limit=3)
    keys = [cache_key(bytes([number]), "caption", "model", {"prompt": "p"}) for number in range(5)]
    for number, key in enumerate(keys[:3]):
        cache.put(key, CachedResult(caption=f"caption {number}"), "model")
    assert cache.get(keys[0]) == CachedResult(caption="caption 0")  # now the most recently used
    cache.put(keys[3], CachedResult(labels=(Label("Cat", 0.9, 0.8),)), "model")
    cache.put(keys[4], CachedResult(caption="caption 4"), "model")

    assert cache.size() == 3
    assert cache.get(keys[1]) is None and cache.get(keys[2]) is None
    assert cache.get(keys[0]) is not None
    assert cache.get(keys[3]) == CachedResult(labels=(Label("Cat", 0.9, 0.8),))
    state.close()
    reopened = ResultCache(StateStore(tmp_path / "state"), limit=3)
    assert reopened.get(keys[4]) == CachedResult(caption="caption 4")


def test_keys_differ_by_every_part_that_shapes_the_answer() -> None:
    base = {"prompt": "p", "system": "s", "options": {"temperature": 0.1}, "language": ""}
    variants = [cache_key(b"jpeg", "caption", "m", base), cache_key(b"jpeg2", "caption", "m", base),
                cache_key(b"jpeg", "labels", "m", base), cache_key(b"jpeg", "caption", "m2", base)]
    variants += [cache_key(b"jpeg", "caption", "m", {**base, name: value}) for name, value in
                 (("prompt", "q"), ("system", "t"), ("options", {"temperature": 0.2}), ("language", "de"))]
    assert len(set(variants)) == len(variants)
    assert cache_key(b"jpeg", "caption", "m", dict(reversed(list(base.items())))) == variants[0]


@pytest.mark.subprocess
def test_watch_reuses_answers_for_copies(tmp_path: Path, originals: Path, emulator: OllamaEmulator) -> None:
    """The daemon shares the cache: a copy arriving later is written without a model call."""
    from test_watch import Daemon, config_for, sidecar_caption, wait_for

    first = add_fixture(originals, PHOTO, f"a/{PHOTO}")
    daemon = Daemon(config_for(tmp_path, emulator.url, **CACHE_ON), originals, tmp_path / "daemon.log")
    try:
        assert wait_for(lambda: bool(sidecar_caption(first)), timeout=30), daemon.log()
        (originals / "b").mkdir()
        shutil.copyfile(FIXTURES / PHOTO, originals / "b" / PHOTO)
        assert wait_for(lambda: bool(sidecar_caption(originals / "b" / PHOTO)), timeout=30), daemon.log()
        assert daemon.stop() == 0
    finally:
        if daemon.process.poll() is None:
            daemon.kill()
    assert len(emulator.generation_requests()) == 1
    assert sidecar_caption(originals / "b" / PHOTO) == sidecar_caption(first)
    assert json.dumps(tags_of(originals / "b" / PHOTO)).count("CaptionCached") == 1


def test_the_cache_is_on_by_default() -> None:
    from captiond.config import parse_config

    assert parse_config({}, {}, None).daemon.cache_size == 20000
    assert parse_config({"Daemon": {"CacheSize": 0}}, {}, None).daemon.cache_size == 0
