"""captiond against a real llama.cpp llama-server (tests/llamaserver.py; prepared by .ci/llama-server/setup.sh).

These tests fail, naming the missing step, when the server is not prepared: the README's test command
includes them. The tiny models answer in milliseconds; deadlines are generous for a busy machine.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from conftest import Result, add_fixture, read_tags, run_captiond
from llamaserver import (
    BIG_PROJECTOR,
    CAPTION,
    READY_SECONDS,
    SLOW_PROJECTOR,
    TEXT,
    TINY_PROJECTOR,
    LlamaServer,
)
from test_watch import Daemon, start_daemon, wait_for

pytestmark = pytest.mark.subprocess  # every test here starts `python -m captiond`

PHOTOS = ("Canon_PowerShot_S40.jpg", "Nikon_COOLPIX_P1.jpg", "Olympus_boilerplate.jpg")
RUN_SECONDS = 600.0
WATCH_SECONDS = 180.0
__all__ = ["start_daemon"]  # the daemon fixture of test_watch, used here too


@pytest.fixture
def vision_server(tmp_path: Path) -> Iterator[LlamaServer]:
    """A single-model llama-server that sees images (the tiny projector), with its default 4 slots."""
    with LlamaServer(tmp_path, "-m", TEXT, "--mmproj", TINY_PROJECTOR, "-c", "4096") as server:
        yield server


def openai_config(folder: Path, server: LlamaServer, *, model: str = "text-chain", stream: bool = True,
                  daemon: dict[str, object] | None = None, service: dict[str, object] | None = None,
                  models: tuple[str, ...] = ("caption",)) -> Path:
    """Write a vision.yml that points captiond's caption (and labels) model at the server's OpenAI-compatible API."""
    entry = {"Model": model, "Engine": "openai",
             "Service": {"Uri": f"{server.url}/v1/chat/completions", "Stream": stream, **(service or {})}}
    document = {
        "Models": [{"Type": kind, **entry} for kind in models],
        # SelfTest off: the tiny test model says the same sentence whatever it is shown. CacheSize 0: copies of one
        # photo must reach the server (the result cache would answer them).
        "Daemon": {"StateDir": str(folder / "state"), "Timeout": 120, "SelfTest": False, "CacheSize": 0,
                   "Retry": {"Attempts": 3, "Delay": 0.1, "MaxDelay": 1, "Total": 60}, **(daemon or {})},
    }
    path = folder / "vision.yml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def run(config: Path, originals: Path, *arguments: str) -> Result:
    """Run `captiond run` on the library with the config."""
    return run_captiond("run", "--config", config, "--originals", originals, *arguments, timeout=RUN_SECONDS)


def caption_of(photo: Path) -> str:
    """Return the caption captiond wrote into a photo's sidecar."""
    return read_tags(Path(f"{photo}.xmp"), "XMP-dc:Description").get("XMP-dc:Description", "")


@pytest.mark.parametrize("stream", [True, False])
def test_captions_and_labels_from_the_real_server(tmp_path: Path, originals: Path, vision_server: LlamaServer,
                                                  stream: bool) -> None:
    photos = [add_fixture(originals, name) for name in PHOTOS]
    config = openai_config(tmp_path, vision_server, stream=stream, models=("caption", "labels"))

    result = run(config, originals, "--models", "caption,labels")

    assert result.exit_code == 0, result.stdout + result.stderr
    assert f"captioned {len(photos)}, labelled {len(photos)}, skipped 0, failed 0" in result.stdout
    for photo in photos:
        tags = read_tags(Path(f"{photo}.xmp"), "XMP-dc:Description", "XMP-dc:Subject")
        assert tags["XMP-dc:Description"] == CAPTION
        assert "cat" in tags["XMP-dc:Subject"].lower()


def test_two_slots_serve_two_requests_at_once(tmp_path: Path, originals: Path) -> None:
    photos = [add_fixture(originals, name, f"{index}-{name}") for index, name in enumerate(PHOTOS * 2)]
    with LlamaServer(tmp_path, "-m", TEXT, "--mmproj", TINY_PROJECTOR, "-c", "4096", "--parallel", "2") as server:
        config = openai_config(tmp_path, server, daemon={"Parallel": 2})
        result = run(config, originals)

    assert result.exit_code == 0, result.stdout + result.stderr
    assert all(caption_of(photo) == CAPTION for photo in photos)


def test_the_model_that_answered_is_recorded(tmp_path: Path, originals: Path, vision_server: LlamaServer) -> None:
    photo = add_fixture(originals, PHOTOS[0])
    config = openai_config(tmp_path, vision_server, model="some-other-name")

    result = run(config, originals)

    assert result.exit_code == 0, result.stdout + result.stderr
    tags = read_tags(Path(f"{photo}.xmp"), "XMP-captiond:CaptionModel")
    assert tags["XMP-captiond:CaptionModel"] == TEXT  # a single-model llama-server ignores `model` and names its file


def test_a_server_without_vision_stops_the_run_with_exit_3(tmp_path: Path, originals: Path) -> None:
    photos = [add_fixture(originals, name) for name in PHOTOS]
    with LlamaServer(tmp_path, "-m", TEXT, "-c", "4096") as server:
        result = run(openai_config(tmp_path, server), originals)

    assert result.exit_code == 3, result.stdout + result.stderr
    assert "cannot see images" in result.stderr and "--mmproj" in result.stderr
    assert not any(Path(f"{photo}.xmp").exists() for photo in photos)


def test_an_unknown_model_in_router_mode_stops_the_run_with_exit_3(tmp_path: Path, originals: Path) -> None:
    add_fixture(originals, PHOTOS[0])
    with LlamaServer(tmp_path, "--models-dir", "/models", "-c", "4096") as server:
        result = run(openai_config(tmp_path, server, model="no-such-model"), originals)

    assert result.exit_code == 3, result.stdout + result.stderr
    assert "model no-such-model not found" in result.stderr and "text-chain" in result.stderr


def test_an_image_larger_than_the_context_stops_the_run_and_charges_no_photo(tmp_path: Path,
                                                                             originals: Path) -> None:
    photos = [add_fixture(originals, name) for name in PHOTOS]
    with LlamaServer(tmp_path, "-m", TEXT, "--mmproj", BIG_PROJECTOR, "-c", "512") as server:
        result = run(openai_config(tmp_path, server), originals)

    assert result.exit_code == 3, result.stdout + result.stderr
    assert "does not fit into the context" in result.stderr
    assert "failed 0" in result.stdout
    assert not any(Path(f"{photo}.xmp").exists() for photo in photos)


def test_a_server_still_loading_its_model_is_waited_for(tmp_path: Path, originals: Path) -> None:
    photo = add_fixture(originals, PHOTOS[0])
    # The big projector takes a moment to load; the server answers 503 "Loading model" meanwhile.
    with LlamaServer(tmp_path, "-m", TEXT, "--mmproj", SLOW_PROJECTOR, "-c", "4096", wait=False) as server:
        assert wait_for(lambda: server.status("/health") is not None, READY_SECONDS), server.log()
        result = run(openai_config(tmp_path, server, daemon={"Timeout": 600}), originals)

    assert result.exit_code == 0, result.stdout + result.stderr
    assert caption_of(photo) == CAPTION


def test_the_api_key(tmp_path: Path, originals: Path) -> None:
    photo = add_fixture(originals, PHOTOS[0])
    with LlamaServer(tmp_path, "-m", TEXT, "--mmproj", TINY_PROJECTOR, "-c", "4096", api_key="s3cret") as server:
        refused = run(openai_config(tmp_path, server, service={"Key": "wrong"}), originals)
        accepted = run(openai_config(tmp_path, server, service={"Key": "s3cret"}), originals)

    assert refused.exit_code == 3, refused.stdout + refused.stderr
    assert "refused the API key (HTTP 401)" in refused.stderr and "wrong" not in refused.stderr
    assert accepted.exit_code == 0, accepted.stdout + accepted.stderr
    assert caption_of(photo) == CAPTION


def test_a_slow_server_with_one_slot_is_waited_for_not_given_up(tmp_path: Path, originals: Path) -> None:
    photos = [add_fixture(originals, name) for name in PHOTOS]
    # Seconds per image, one slot; the photos waiting for it wait far longer than Retry.Total.
    with LlamaServer(tmp_path, "-m", TEXT, "--mmproj", SLOW_PROJECTOR, "-c", "4096", "--parallel", "1") as server:
        config = openai_config(tmp_path, server, daemon={
            "Parallel": 1, "Timeout": 600, "Retry": {"Attempts": 2, "Delay": 0.1, "MaxDelay": 0.2, "Total": 1}})
        result = run(config, originals)

    assert result.exit_code == 0, result.stdout + result.stderr
    assert all(caption_of(photo) == CAPTION for photo in photos)


def status_counts(config: Path) -> dict[str, int]:
    """Return the state database's counts per state, as `captiond status --json` reports them."""
    result = run_captiond("status", "--config", config, "--json", timeout=120)
    counts: dict[str, int] = json.loads(result.stdout)["counts"]
    return counts


def test_watch_pauses_for_a_server_problem_and_resumes_when_it_is_fixed(
        tmp_path: Path, originals: Path, start_daemon: Callable[..., Daemon]) -> None:
    photos = [add_fixture(originals, name) for name in PHOTOS]
    server = LlamaServer(tmp_path, "-m", TEXT, "--mmproj", BIG_PROJECTOR, "-c", "512").start()
    try:
        config = openai_config(tmp_path, server, daemon={"Settle": 0.5})
        daemon = start_daemon(config, originals)
        # The context is too small for the image: the daemon pauses, and no photo is charged.
        assert wait_for(lambda: "pausing until it answers again" in daemon.log(), WATCH_SECONDS), daemon.log()
        assert "does not fit into the context" in daemon.log()
        counts = status_counts(config)
        assert counts["failed"] == 0 and counts["done"] == 0, counts
        # Fixed (a larger context) and, while at it, killed and restarted: everything gets captioned.
        server.kill()
        server.arguments = ["-m", TEXT, "--mmproj", TINY_PROJECTOR, "-c", "4096"]
        server.start()
        assert wait_for(lambda: all(caption_of(photo) == CAPTION for photo in photos), WATCH_SECONDS), daemon.log()
        server.kill()
        late = add_fixture(originals, PHOTOS[0], "late.jpg")
        assert wait_for(lambda: "pausing until it answers again" in daemon.log().split("resuming")[-1],
                        WATCH_SECONDS), daemon.log()
        server.start()
        assert wait_for(lambda: caption_of(late) == CAPTION, WATCH_SECONDS), daemon.log()
        assert daemon.stop(timeout=60) == 0
        counts = status_counts(config)
        assert counts["failed"] == 0 and counts["done"] == len(photos) + 1, counts
    finally:
        server.kill()
