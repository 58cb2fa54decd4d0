"""OLLAMA_HOST as Ollama reads it; Uris and OLLAMA_BASE_URL that carry an API path understood or refused clearly."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import yaml

from captiond.addresses import (
    DEFAULT_PATHS,
    GENERATION_PATHS,
    KNOWN_API_PATHS,
    ollama_base_url,
    ollama_host,
    understand_uri,
)
from captiond.config import parse_config
from conftest import add_fixture, run_captiond
from emulator import OllamaEmulator

# Ollama's own table (envconfig/config_test.go, TestHost and TestConnectableHost), as a client connects.
# Where Ollama leaves the host empty (":1234"), Go dials the local machine: we name it 127.0.0.1.
OLLAMA_HOST_CASES = {
    "": "http://127.0.0.1:11434",
    "1.2.3.4": "http://1.2.3.4:11434",
    ":1234": "http://127.0.0.1:1234",
    "1.2.3.4:1234": "http://1.2.3.4:1234",
    "example.com": "http://example.com:11434",
    "example.com:1234": "http://example.com:1234",
    ":66000": "http://127.0.0.1:11434",
    ":-1": "http://127.0.0.1:11434",
    "[::1]": "http://[::1]:11434",
    "::1": "http://[::1]:11434",
    "[::1]:1337": "http://[::1]:1337",
    " 1.2.3.4 ": "http://1.2.3.4:11434",
    '"1.2.3.4"': "http://1.2.3.4:11434",
    ' " 1.2.3.4 " ': "http://1.2.3.4:11434",
    "'1.2.3.4'": "http://1.2.3.4:11434",
    "http://1.2.3.4": "http://1.2.3.4:80",
    "http://1.2.3.4:4321": "http://1.2.3.4:4321",
    "https://1.2.3.4": "https://1.2.3.4:443",
    "https://1.2.3.4:4321": "https://1.2.3.4:4321",
    "https://example.com/ollama": "https://example.com:443/ollama",
    "ollama.com": "https://ollama.com:443",
    "0.0.0.0": "http://127.0.0.1:11434",
    "0.0.0.0:1234": "http://127.0.0.1:1234",
    "[::]": "http://[::1]:11434",
    "[::]:1234": "http://[::1]:1234",
    "https://0.0.0.0:4321": "https://127.0.0.1:4321",
    "192.168.1.5:8080": "http://192.168.1.5:8080",
}


@pytest.mark.parametrize("value, expected", OLLAMA_HOST_CASES.items())
def test_ollama_host_is_read_as_ollama_reads_it(value: str, expected: str) -> None:
    assert ollama_host(value) == expected


def test_ollama_base_url_wins_over_ollama_host_and_loses_its_api_path() -> None:
    default = "http://localhost:11434"
    assert ollama_base_url({}, default) == default
    assert ollama_base_url({"OLLAMA_HOST": "0.0.0.0:1234"}, default) == "http://127.0.0.1:1234"
    assert ollama_base_url({"OLLAMA_HOST": "gpu:1", "OLLAMA_BASE_URL": "http://ollama:11434/"}, default) \
        == "http://ollama:11434"
    for path in sorted(KNOWN_API_PATHS):
        assert ollama_base_url({"OLLAMA_BASE_URL": f"http://ollama:11434/proxy{path}/"}, default) \
            == "http://ollama:11434/proxy"


def test_the_default_uri_comes_from_ollama_host_when_ollama_base_url_is_unset() -> None:
    config = parse_config({"Models": [{"Type": "caption", "Model": "m"}]}, {"OLLAMA_HOST": "0.0.0.0"}, None)
    assert config.model("caption").service.uri == "http://127.0.0.1:11434/api/generate"  # type: ignore[union-attr]
    config = parse_config({}, {"OLLAMA_BASE_URL": "http://ollama:11434/api/generate"}, None)
    assert config.model("caption").service.uri == "http://ollama:11434/api/generate"  # type: ignore[union-attr]


@pytest.mark.parametrize("request_format", sorted(GENERATION_PATHS))
def test_every_api_path_a_uri_can_end_in_is_used_or_refused(request_format: str) -> None:
    for prefix, known in itertools.product(("", "/proxy"), sorted(KNOWN_API_PATHS)):
        for uri in (f"http://h:1{prefix}{known}", f"http://u:p@h:1{prefix}{known}/?x=1"):
            understood = understand_uri(uri, request_format)
            if understood.problem:
                assert understood.uri == uri and "expected" in understood.problem or "RequestFormat" in \
                    understood.problem, understood
            else:
                endpoint = understood.uri.split("?")[0].removeprefix("http://u:p@h:1").removeprefix("http://h:1")
                assert endpoint in {f"{prefix}{path}" for path in GENERATION_PATHS[request_format]}, understood


@pytest.mark.parametrize("request_format", sorted(GENERATION_PATHS))
def test_a_uri_holding_two_api_paths_keeps_the_last_one(request_format: str) -> None:
    for first, last in itertools.product(sorted(KNOWN_API_PATHS), GENERATION_PATHS[request_format]):
        understood = understand_uri(f"http://ollama:11434{first}{last}", request_format)
        assert understood.uri == f"http://ollama:11434{last}" and "more than one API path" in understood.warning


def test_a_uri_without_a_path_gets_the_formats_endpoint() -> None:
    for request_format, path in DEFAULT_PATHS.items():
        assert understand_uri("http://h:8080/", request_format).uri == f"http://h:8080{path}"
    assert understand_uri("https://proxy.example/ollama", "ollama").uri == "https://proxy.example/ollama"


def _config(directory: Path, uri: str | None) -> Path:
    service = {"Uri": uri} if uri else {}
    document = {"Models": [{"Type": "caption", "Model": "qwen2.5vl:3b", "Engine": "ollama", "Service": service}],
                "Daemon": {"StateDir": str(directory / "state"), "Timeout": 10,
                           "Retry": {"Attempts": 2, "Delay": 0.05, "MaxDelay": 0.2, "Total": 10}}}
    path = directory / "vision.yml"
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.mark.subprocess
def test_run_reaches_the_server_through_ollama_host_and_a_full_ollama_base_url(
        tmp_path: Path, originals: Path, emulator: OllamaEmulator) -> None:
    add_fixture(originals, "Canon_PowerShot_S40.jpg")
    config = _config(tmp_path, None)
    host = emulator.url.removeprefix("http://")
    port = host.rsplit(":", 1)[1]
    clean = {"OLLAMA_BASE_URL": "", "OLLAMA_HOST": ""}

    by_host = run_captiond("run", "--config", config, "--originals", originals,
                           env={**clean, "OLLAMA_HOST": f"0.0.0.0:{port}"})
    assert by_host.exit_code == 0, by_host.stderr
    assert by_host.stdout.startswith("captioned 1")

    full = run_captiond("run", "--force", "--config", config, "--originals", originals,
                        env={**clean, "OLLAMA_BASE_URL": f"{emulator.url}/api/generate"})
    assert full.exit_code == 0, full.stderr

    doubled = _config(tmp_path, "${OLLAMA_BASE_URL}/api/generate")
    extended = run_captiond("run", "--force", "--config", doubled, "--originals", originals,
                            env={**clean, "OLLAMA_BASE_URL": f"{emulator.url}/api/generate"})
    assert extended.exit_code == 0, extended.stderr
    assert "more than one API path" in extended.stderr
    assert {request.path for request in emulator.generation_requests()} == {"/api/generate"}


@pytest.mark.subprocess
def test_a_uri_ending_in_another_api_path_is_refused_with_the_fix(tmp_path: Path, originals: Path) -> None:
    result = run_captiond("run", "--config", _config(tmp_path, "http://127.0.0.1:9/api/tags"), "--originals",
                          originals)
    assert result.exit_code == 2
    assert "Models[0].Service.Uri: http://127.0.0.1:9/api/tags ends in /api/tags, which does not caption images: " \
        "expected /api/generate or /api/chat (e.g. http://127.0.0.1:9/api/generate)" in result.stderr
    assert "ollama pull" not in result.stderr
