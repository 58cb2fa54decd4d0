"""Ollama keep_alive (Daemon.KeepAlive): the model stays loaded while photos wait and is released soon after."""

from __future__ import annotations

from pathlib import Path

import pytest

from captiond.config import load_config
from captiond.errors import ConfigError
from conftest import add_fixture, run_captiond, write_config
from emulator import OllamaEmulator


def keep_alives(emulator: OllamaEmulator) -> list[object]:
    return [request.body.get("keep_alive") for request in emulator.generation_requests()]


@pytest.mark.subprocess
def test_run_keeps_the_model_loaded_while_photos_wait_and_releases_it_after_the_last(
        tmp_path: Path, originals: Path, emulator: OllamaEmulator) -> None:
    for index in range(3):
        add_fixture(originals, "Canon_PowerShot_S40.jpg", f"{index}.jpg")
    result = run_captiond("run", "--config", write_config(tmp_path, emulator.url), "--originals", originals)
    assert result.exit_code == 0, result.stderr
    assert keep_alives(emulator)[0] == "1h"  # nothing was finished when the first request left
    emulator.clear()
    single = tmp_path / "single"
    add_fixture(single, "PNG_plain.png")
    assert run_captiond("run", "--config", write_config(tmp_path, emulator.url), "--originals", single).exit_code == 0
    assert keep_alives(emulator) == ["1m"]


@pytest.mark.subprocess
def test_a_configured_keep_alive_is_sent_as_given(tmp_path: Path, originals: Path, emulator: OllamaEmulator) -> None:
    add_fixture(originals, "PNG_plain.png")
    config = write_config(tmp_path, emulator.url, daemon={"KeepAlive": "-1"})
    assert run_captiond("run", "--config", config, "--originals", originals).exit_code == 0
    assert keep_alives(emulator) == ["-1"]


@pytest.mark.subprocess
def test_openai_servers_get_no_keep_alive(tmp_path: Path, originals: Path, emulator: OllamaEmulator) -> None:
    add_fixture(originals, "PNG_plain.png")
    config = write_config(tmp_path, emulator.url, service={"Uri": f"{emulator.url}/v1/chat/completions"},
                          entry={"Engine": "openai"})
    assert run_captiond("run", "--config", config, "--originals", originals).exit_code == 0
    assert keep_alives(emulator) == [None]


@pytest.mark.parametrize(("value", "expected"), [("30m", "30m"), (-1, -1), (0, 0), ("1h30m", "1h30m"), ("AUTO", "auto"),
                                                 ("-1", "-1"), (300, 300)])
def test_keep_alive_values(tmp_path: Path, value: object, expected: object) -> None:
    path = tmp_path / "vision.yml"
    path.write_text(f"Daemon:\n  KeepAlive: {value!r}\n".replace("'", '"'))
    assert load_config(path, {}).daemon.keep_alive == expected


@pytest.mark.parametrize("value", ["forever", "5 minutes", "true", "[1]"])
def test_bad_keep_alive_values(tmp_path: Path, value: str) -> None:
    path = tmp_path / "vision.yml"
    path.write_text(f"Daemon:\n  KeepAlive: {value}\n")
    with pytest.raises(ConfigError, match="KeepAlive"):
        load_config(path, {})
