"""No credential in anything captiond prints or exports: the shapes of a credential are generated, not listed.

Unit part: `redact` over generated addresses (user part, secret-named query parameters in every position,
percent-encoded forms) and registered Keys in arbitrary text and log records. Process part: real captiond
commands (`ls`, `run -vv`, an unreachable server, `watch` with /healthz and /metrics, `status`) against the
emulator with several credential shapes at once; no secret may appear in stdout, stderr, the report, the
HTTP answers or the state database.
"""

from __future__ import annotations

import io
import itertools
import logging
import os
import random
import re
import signal
import string
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import yaml

from captiond.redaction import MASK, RedactingFilter, redact, register_secret, register_uri
from conftest import SOURCE_ROOT, add_fixture, run_captiond
from emulator import OllamaEmulator

RANDOM = random.Random(20261206)
PARAMETER_NAMES = ("key", "api_key", "apiKey", "API-KEY", "x-api-key", "token", "access_token", "Token",
                   "auth", "authorization", "oauth_token", "secret", "client_secret", "password", "passwd", "pwd",
                   "pass", "sig", "signature", "X-Amz-Signature", "X-Goog-Signature", "session", "sessionid",
                   "credential", "X-Amz-Credential")
HOSTS = ("127.0.0.1:11434", "ollama", "[::1]:8080", "models.example.com", "gpu-box.lan:443")
PATHS = ("", "/", "/api/generate", "/v1/chat/completions", "/proxy/ollama/api/chat")


def _secret(alphabet: str = string.ascii_letters + string.digits + "-._~", length: int | None = None) -> str:
    """Return a fresh random credential (long enough to be unmistakable in output)."""
    size = length or RANDOM.randint(12, 48)
    return "S3cr" + "".join(RANDOM.choice(alphabet) for _ in range(size))


def _address_shapes() -> list[tuple[str, str]]:
    """Return (address, secret) for every shape a credential takes in an address."""
    shapes = []
    for host, path in itertools.product(HOSTS, PATHS):
        for scheme in ("http", "https"):
            secret = _secret()
            shapes.append((f"{scheme}://user:{secret}@{host}{path}", secret))
            secret = _secret()
            shapes.append((f"{scheme}://{secret}@{host}{path}", secret))
            secret = _secret()
            encoded = quote(secret + "@:/?#", safe="")
            shapes.append((f"{scheme}://me%40example.com:{encoded}@{host}{path}", encoded))
    for name in PARAMETER_NAMES:
        for before, after in (("", ""), ("model=x&", ""), ("", "&stream=true"), ("a=1&", "&b=2#frag")):
            secret = _secret()
            shapes.append((f"https://{RANDOM.choice(HOSTS)}/api/generate?{before}{name}={secret}{after}", secret))
    return shapes


ADDRESS_SHAPES = _address_shapes()


@pytest.mark.parametrize("address, secret", ADDRESS_SHAPES)
def test_redact_hides_every_credential_shape_of_an_address(address: str, secret: str) -> None:
    for text in (address, f"cannot reach the model server at {address}: refused",
                 f'HTTP Request: POST {address} "HTTP/1.1 200 OK"', f"({address})", f"'{address}'",
                 f'{{"endpoint": "{address}"}}'):
        shown = redact(text)
        assert secret not in shown, shown
        assert MASK in shown
    assert redact(f"the server at {address}: ok").endswith(": ok")  # the sentence around it stays


def test_an_address_without_credentials_is_left_alone() -> None:
    for text in ("http://127.0.0.1:11434/api/generate", "https://models.example.com/v1/chat/completions?model=x",
                 "http://ollama:11434/api/generate?stream=true&keep_alive=30m", "IMG_1.jpg: a photo of a dog"):
        assert redact(text) == text


def test_registered_keys_are_hidden_in_any_text_and_in_any_encoding() -> None:
    alphabets = (string.ascii_letters + string.digits, string.ascii_letters + string.digits + "-_",
                 string.printable.strip(), "äöü€漢字" + string.ascii_letters)
    for alphabet in alphabets:
        for _ in range(20):
            key = _secret(alphabet)
            register_secret(key)
            for text in (f"refused the API key {key}", f"Authorization: Bearer {key}", f"x{key}y",
                         f"https://host/api?model=m&k={quote(key, safe='')}", f"{key}\n{key}"):
                shown = redact(text)
                assert key not in shown and quote(key, safe="") not in shown, shown


def test_credentials_of_a_registered_address_are_hidden_on_their_own() -> None:
    for address, secret in ADDRESS_SHAPES:
        register_uri(address)
        assert secret not in redact(f"the server said: invalid credential {secret}")


def test_log_records_are_redacted_in_message_arguments_and_tracebacks() -> None:
    secret = _secret()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("test-redaction")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("posting to %s", f"http://u:{secret}@host/api/generate")
        try:
            raise ValueError(f"https://host/api/generate?token={secret}")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    assert secret not in stream.getvalue()
    assert stream.getvalue().count(MASK) >= 2


# ---------------------------------------------------------------- real processes


def _labels_or_caption(body: dict[str, Any]) -> str:
    """The emulator's answer: labels JSON to a labels request (it carries a schema), a caption otherwise."""
    if body.get("format") or body.get("response_format"):
        return '{"labels": [{"name": "cat", "confidence": 0.9, "topicality": 0.8}]}'
    return "A cat on a sofa."


def _credentialled_config(directory: Path, url: str, secrets: dict[str, str]) -> Path:
    """A vision.yml whose endpoints all reach the emulator, each carrying credentials of another shape."""
    host = url.removeprefix("http://")
    endpoints = [
        {"Uri": f"http://alice:{secrets['password']}@{host}/api/generate", "Key": secrets["endpoint_key"],
         "Parallel": 1},
        {"Uri": f"http://{secrets['user_token']}@{host}/api/generate", "Parallel": 1},
        {"Uri": f"http://{host}/api/generate?model=x&api_key={secrets['query_key']}", "Parallel": 1},
        {"Uri": f"http://{host}/api/generate?X-Amz-Signature={secrets['signature']}", "Parallel": 1},
    ]
    document = {
        "Models": [
            {"Type": "caption", "Model": "qwen2.5vl:3b", "Engine": "ollama",
             "Service": {"Key": secrets["service_key"], "Endpoints": endpoints}},
            {"Type": "labels", "Model": "qwen2.5vl:3b", "Engine": "ollama",
             "Service": {"Uri": f"http://{host}/api/generate?token={secrets['labels_token']}",
                         "Key": "${LABELS_KEY}"}},
        ],
        "Daemon": {"StateDir": str(directory / "state"), "Timeout": 10, "SelfTest": False,
                   "Retry": {"Attempts": 2, "Delay": 0.05, "MaxDelay": 0.2, "Total": 10}},
    }
    path = directory / "vision.yml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def _secrets() -> dict[str, str]:
    names = ("password", "endpoint_key", "user_token", "query_key", "signature", "service_key", "labels_token",
             "labels_key", "ollama_api_key")
    return {name: _secret(string.ascii_letters + string.digits) for name in names}


def _environment(secrets: dict[str, str]) -> dict[str, str]:
    return {"LABELS_KEY": secrets["labels_key"], "OLLAMA_API_KEY": secrets["ollama_api_key"]}


def _assert_no_secret(secrets: dict[str, str], *outputs: str) -> None:
    for output in outputs:
        for name, secret in secrets.items():
            assert secret not in output, f"{name} shown in:\n{output}"


@pytest.mark.subprocess
def test_ls_run_and_errors_never_show_a_credential(tmp_path: Path, originals: Path,
                                                   emulator: OllamaEmulator) -> None:
    secrets = _secrets()
    config = _credentialled_config(tmp_path, emulator.url, secrets)
    environment = _environment(secrets)
    emulator.reply = _labels_or_caption
    for index in range(4):
        add_fixture(originals, "Canon_PowerShot_S40.jpg", f"photo{index}.jpg")

    table = run_captiond("ls", "--config", config, env=environment)
    listing = run_captiond("ls", "--json", "--config", config, env=environment)
    assert table.exit_code == listing.exit_code == 0, table.stderr + listing.stderr
    assert MASK in table.stdout and MASK in listing.stdout

    report = tmp_path / "report.json"
    run = run_captiond("run", "-vv", "--models", "caption,labels", "--config", config, "--originals", originals,
                       "--report", report, env=environment)
    assert run.exit_code == 0, run.stderr
    assert "HTTP Request: POST" in run.stderr and MASK in run.stderr

    emulator.stop()  # every endpoint refuses now
    unreachable = run_captiond("run", "-vv", "--force", "--config", config, "--originals", originals,
                               env=environment)
    assert unreachable.exit_code == 3, unreachable.stderr

    _assert_no_secret(secrets, table.stdout, table.stderr, listing.stdout, listing.stderr, run.stdout, run.stderr,
                      report.read_text(), unreachable.stdout, unreachable.stderr)


@pytest.mark.subprocess
def test_watch_health_metrics_status_and_state_never_show_a_credential(tmp_path: Path, originals: Path,
                                                                       emulator: OllamaEmulator) -> None:
    secrets = _secrets()
    config = _credentialled_config(tmp_path, emulator.url, secrets)
    emulator.reply = _labels_or_caption
    photo = add_fixture(originals, "Canon_PowerShot_S40.jpg")
    add_fixture(originals, "33-type_error.jpg")  # a failure with its reason in the state database
    log_path = tmp_path / "watch.log"
    environment = {**os.environ, "PYTHONPATH": str(SOURCE_ROOT), **_environment(secrets)}
    with log_path.open("wb") as log_file:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "captiond", "watch", "-vv", "--config", str(config), "--originals", str(originals),
             "--listen", "127.0.0.1:0", "--models", "caption,labels"], stdout=log_file, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=environment)
    try:
        address = _wait_for(lambda: re.search(r"serving /healthz and /metrics on (http://\S+)",
                                              log_path.read_text(errors="replace")))
        assert address, log_path.read_text(errors="replace")
        assert _wait_for(lambda: Path(f"{photo}.xmp").exists()), log_path.read_text(errors="replace")
        health = httpx.get(f"{address.group(1)}/healthz", timeout=10).text
        metrics = httpx.get(f"{address.group(1)}/metrics", timeout=10).text
        assert "captiond_model_seconds" in metrics
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(60)

    status = run_captiond("status", "--config", config, env=_environment(secrets))
    status_json = run_captiond("status", "--json", "--config", config, env=_environment(secrets))
    emulator.stop()
    status_down = run_captiond("status", "--config", config, env=_environment(secrets))
    assert status.exit_code == status_json.exit_code == status_down.exit_code == 0, status.stderr
    database = b"".join(path.read_bytes() for path in (tmp_path / "state").iterdir() if path.is_file())
    _assert_no_secret(secrets, log_path.read_text(errors="replace"), health, metrics, status.stdout, status.stderr,
                      status_json.stdout, status_down.stdout, status_down.stderr,
                      database.decode("utf-8", "replace"))


def _wait_for(condition: object, timeout: float = 30.0) -> object:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    return condition()


@pytest.mark.subprocess
def test_status_checks_a_redacted_recorded_address_with_the_configurations_credentials(
        tmp_path: Path, originals: Path) -> None:
    """The daemon records its addresses redacted; status must not send *** where the token was."""
    secrets = _secrets()
    photo = add_fixture(originals, "Canon_PowerShot_S40.jpg")
    with OllamaEmulator(api_key=secrets["endpoint_key"]) as server:
        host = server.url.removeprefix("http://")
        config = tmp_path / "vision.yml"
        config.write_text(yaml.safe_dump({
            "Models": [{"Type": "caption", "Model": "qwen2.5vl:3b", "Engine": "ollama", "Service": {"Endpoints": [
                {"Uri": f"http://{host}/api/generate?token={secrets['query_key']}", "Key": secrets["endpoint_key"]}]}}],
            "Daemon": {"StateDir": str(tmp_path / "state"), "Settle": 0.2}}))
        log_path = tmp_path / "watch.log"
        environment = {**os.environ, "PYTHONPATH": str(SOURCE_ROOT)}
        with log_path.open("wb") as log_file:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "captiond", "watch", "--config", str(config), "--originals", str(originals)],
                stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=environment)
        try:
            assert _wait_for(lambda: Path(f"{photo}.xmp").exists()), log_path.read_text(errors="replace")
            status = run_captiond("status", "--config", config)
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(60)
        tokens = [request.path for request in server.requests]
    assert status.exit_code == 0, status.stderr
    assert f"on http://{host}/api/generate?token={MASK}: ok" in status.stdout, status.stdout
    assert tokens  # the emulator saw the requests (it answers 401 to a wrong key)
    _assert_no_secret(secrets, status.stdout, status.stderr, log_path.read_text(errors="replace"))
