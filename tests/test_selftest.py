"""The self-test: a model that answers without seeing its images stops captioning before anything is written."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from captiond.selftest import names_the_disc, probe_image
from conftest import add_fixture, run_captiond, write_config
from emulator import CANT_SEE, OllamaEmulator, expected_caption
from test_watch import SETTLE, Daemon, sidecar_caption, start_daemon, wait_for

__all__ = ["start_daemon"]  # the fixture, used by name


@pytest.mark.parametrize(("answer", "sees"), [
    ("A large red circle on a white background.", True), ("Red disc.", True), ("Ein roter Kreis auf Weiß.", True),
    ("Un cercle rouge sur fond blanc.", True), ("Un círculo rojo.", True), ("Красный круг на белом фоне.", True),
    ("白い背景に赤い円。", True), ("RED CIRCLE", True),
    (CANT_SEE, False), ("A photo with a calm scene.", False), ("A credit card on a table.", False),
    ("Fred and a bored dog in a shredded box.", False), ("", False), ("A blue square.", False),
])
def test_answers_that_name_the_disc(answer: str, sees: bool) -> None:
    assert names_the_disc(answer) is sees


def test_the_emulator_answers_from_the_image_it_receives() -> None:
    assert "red" in expected_caption(probe_image())
    assert "red" not in expected_caption(b"not an image")


def self_test_config(tmp_path: Path, url: str, **daemon: object) -> Path:
    return write_config(tmp_path, url, daemon={"SelfTest": True, "Settle": SETTLE, **daemon})


@pytest.mark.subprocess
def test_run_checks_the_model_sees_before_captioning(tmp_path: Path, originals: Path,
                                                     emulator: OllamaEmulator) -> None:
    photo = add_fixture(originals, "Canon_PowerShot_S40.jpg")
    result = run_captiond("run", "--config", self_test_config(tmp_path, emulator.url), "--originals", originals)
    assert result.exit_code == 0, result.stderr
    requests = emulator.generation_requests()
    assert len(requests) == 2 and requests[0].images() == [probe_image()]
    assert sidecar_caption(photo).startswith("A photo with a calm scene")


@pytest.mark.subprocess
def test_run_stops_with_exit_3_when_the_model_answers_without_seeing(tmp_path: Path, originals: Path,
                                                                    emulator: OllamaEmulator) -> None:
    photo = add_fixture(originals, "Canon_PowerShot_S40.jpg")
    emulator.blind = True
    result = run_captiond("run", "--config", self_test_config(tmp_path, emulator.url), "--originals", originals)
    assert result.exit_code == 3
    assert "answers without seeing images" in result.stderr and "A photo with a calm scene." in result.stderr
    assert len(emulator.generation_requests()) == 1
    assert not Path(f"{photo}.xmp").exists()
    # SelfTest: false turns the check off (and the blind model's made-up caption is written).
    result = run_captiond("run", "--config", self_test_config(tmp_path, emulator.url, SelfTest=False),
                          "--originals", originals)
    assert result.exit_code == 0 and sidecar_caption(photo) == "A photo with a calm scene."


@pytest.mark.subprocess
def test_watch_pauses_while_the_model_is_blind_and_resumes_when_it_sees(
        tmp_path: Path, originals: Path, emulator: OllamaEmulator, start_daemon: Callable[..., Daemon]) -> None:
    photo = add_fixture(originals, "Canon_PowerShot_S40.jpg")
    emulator.blind = True
    daemon = start_daemon(self_test_config(tmp_path, emulator.url, Listen="127.0.0.1:0"), originals)
    assert wait_for(lambda: "answers without seeing images" in daemon.log() and "pausing" in daemon.log()), \
        daemon.log()
    address = re.search(r"serving /healthz and /metrics on (http://\S+)", daemon.log())
    assert address is not None
    health = httpx.get(f"{address.group(1)}/healthz", timeout=5)
    assert health.status_code == 503 and "answers without seeing images" in health.text
    assert wait_for(lambda: len(emulator.generation_requests()) >= 2), daemon.log()  # it probes again
    assert not Path(f"{photo}.xmp").exists()
    assert all(request.images() == [probe_image()] for request in emulator.generation_requests())
    emulator.blind = False
    assert wait_for(lambda: bool(sidecar_caption(photo)), timeout=60), daemon.log()
    assert daemon.stop() == 0
    assert sidecar_caption(photo).startswith("A photo with a calm scene, image")


@pytest.mark.subprocess
def test_watch_tests_again_when_the_model_was_loaded_again(
        tmp_path: Path, originals: Path, emulator: OllamaEmulator, start_daemon: Callable[..., Daemon]) -> None:
    first = add_fixture(originals, "Canon_PowerShot_S40.jpg")
    daemon = start_daemon(self_test_config(tmp_path, emulator.url), originals)
    assert wait_for(lambda: bool(sidecar_caption(first))), daemon.log()
    # The server restarts with a release that drops images: the next answer reports a model load.
    emulator.load_seconds, emulator.blind = 6.0, True
    reloaded = add_fixture(originals, "Nikon_COOLPIX_P1.jpg")
    assert wait_for(lambda: "loaded the model again" in daemon.log() and "answers without seeing" in daemon.log()), \
        daemon.log()
    later = add_fixture(originals, "Konica_Minolta_DiMAGE_Z3.jpg")
    assert wait_for(lambda: len(emulator.generation_requests()) >= 5), daemon.log()  # probes, no captions
    assert not Path(f"{later}.xmp").exists()
    assert sidecar_caption(reloaded) == "A photo with a calm scene."  # the answer that revealed the load
    assert daemon.stop() == 0
