"""ModelClient against the Ollama emulator: request shapes, answers, setup checks, retries and bounds."""

from __future__ import annotations

import base64
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from captiond import errors
from captiond.config import parse_config
from captiond.model import ModelClient
from emulator import (
    BUSY,
    OUT_OF_MEMORY,
    RATE_LIMITED,
    RUNNER_CRASHED,
    Behaviour,
    CutStream,
    Drop,
    Endless,
    Garbage,
    Hang,
    OllamaEmulator,
    Reply,
    Status,
    StreamError,
    ThinkingOnly,
    expected_caption,
)

MODEL = "qwen2.5vl:3b"
JPEG = (Path(__file__).parent / "fixtures" / "Nikon_COOLPIX_P1.jpg").read_bytes()
B64 = base64.b64encode(JPEG).decode("ascii")
PROMPT = "Describe the photo in one sentence."
FAST_RETRY: dict[str, Any] = {"Attempts": 3, "Delay": 0.01, "MaxDelay": 0.05, "Total": 30}
CRASH = "llama runner process has terminated: exit status 2"
API_PATHS = ["/api/generate", "/api/chat", "/v1/chat/completions"]

Connect = Callable[..., ModelClient]


@pytest.fixture
def connect() -> Iterator[Connect]:
    """Return a factory of ModelClients built from a vision.yml-like document; closes them afterwards."""
    clients: list[ModelClient] = []

    def make(uri: str, *, stream: bool = True, key: str = "", system: str = "", model: str = MODEL,
             options: dict[str, Any] | None = None, retry: dict[str, Any] | None = None,
             **daemon: Any) -> ModelClient:
        service: dict[str, Any] = {"Uri": uri, "Stream": stream, **({"Key": key} if key else {})}
        entry: dict[str, Any] = {"Type": "caption", "Model": model, "Service": service,
                                 **({"System": system} if system else {}), **({"Options": options} if options else {})}
        document = {"Models": [entry], "Daemon": {"Timeout": 10, "Retry": {**FAST_RETRY, **(retry or {})}, **daemon}}
        config = parse_config(document, environ={}, path=None)
        caption_model = config.model("caption")
        assert caption_model is not None
        client = ModelClient(caption_model, config.daemon)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
@pytest.mark.parametrize("path", API_PATHS)
def test_the_answer_comes_back_from_every_api(emulator: OllamaEmulator, connect: Connect, path: str,
                                              stream: bool) -> None:
    client = connect(emulator.url + path, stream=stream)

    answer = client.describe(JPEG, PROMPT, "")

    assert answer.text == expected_caption(JPEG)
    assert answer.best_text == answer.text
    assert answer.done_reason == "stop"
    [request] = emulator.generation_requests()
    assert request.path == path
    assert request.body["stream"] is stream
    assert request.images() == [JPEG]


@pytest.mark.parametrize("path", ["/api/generate", "/api/chat"])
def test_ollama_requests_carry_bare_base64_no_thinking_and_a_length_limit(
        emulator: OllamaEmulator, connect: Connect, path: str) -> None:
    connect(emulator.url + path).describe(JPEG, PROMPT, "")

    body = emulator.generation_requests()[0].body
    images = body["images"] if path == "/api/generate" else body["messages"][-1]["images"]
    assert images == [B64]
    assert not images[0].startswith("data:")
    assert body["think"] is False
    assert body["model"] == MODEL
    assert isinstance(body["options"]["num_predict"], int) and body["options"]["num_predict"] > 0
    assert "system" not in body and all(m["role"] != "system" for m in body.get("messages", []))


def test_openai_requests_carry_a_data_url_and_max_tokens(emulator: OllamaEmulator, connect: Connect) -> None:
    connect(emulator.url + "/v1/chat/completions").describe(JPEG, PROMPT, "")

    body = emulator.generation_requests()[0].body
    [message] = body["messages"]
    parts = {part["type"]: part for part in message["content"]}
    assert parts["text"]["text"] == PROMPT
    assert parts["image_url"]["image_url"]["url"] == "data:image/jpeg;base64," + B64
    assert isinstance(body["max_tokens"], int) and body["max_tokens"] > 0
    assert "temperature" in body and "top_p" in body


@pytest.mark.parametrize("path", API_PATHS)
def test_the_system_prompt_is_sent_when_configured(emulator: OllamaEmulator, connect: Connect, path: str) -> None:
    system = "You write captions for a family photo archive."

    connect(emulator.url + path, system=system).describe(JPEG, PROMPT, system)

    body = emulator.generation_requests()[0].body
    if path == "/api/generate":
        assert body["system"] == system and body["prompt"] == PROMPT
    else:
        assert body["messages"][0] == {"role": "system", "content": system}
        assert body["messages"][-1]["role"] == "user"


@pytest.mark.parametrize("path", API_PATHS)
def test_the_configured_length_limit_cuts_the_answer(emulator: OllamaEmulator, connect: Connect, path: str) -> None:
    emulator.enqueue(Reply("A red bicycle leans against a blue wall in the sun."))

    answer = connect(emulator.url + path, options={"NumPredict": 3}).describe(JPEG, PROMPT, "")

    assert answer.text == "A red bicycle"
    assert answer.done_reason == "length"


@pytest.mark.parametrize("path", ["/api/generate", "/v1/chat/completions"])
def test_the_key_is_sent_as_a_bearer_token(connect: Connect, path: str) -> None:
    with OllamaEmulator(api_key="s3cret-token") as server:
        client = connect(server.url + path, key="s3cret-token")
        client.check()
        answer = client.describe(JPEG, PROMPT, "")

        assert answer.text == expected_caption(JPEG)
        assert {request.headers.get("authorization") for request in server.requests} == {"Bearer s3cret-token"}


@pytest.mark.parametrize("path", ["/api/generate", "/v1/chat/completions"])
def test_a_wrong_key_stops_the_run_without_retrying(connect: Connect, path: str) -> None:
    with OllamaEmulator(api_key="s3cret-token") as server:
        client = connect(server.url + path, key="wrong")
        with pytest.raises(errors.ModelSetupError, match="Key"):
            client.describe(JPEG, PROMPT, "")
        assert len(server.generation_requests()) == 1
        with pytest.raises(errors.ModelSetupError, match="Key"):
            client.check()


@pytest.mark.parametrize("path", API_PATHS)
def test_check_accepts_a_vision_model(emulator: OllamaEmulator, connect: Connect, path: str) -> None:
    connect(emulator.url + path).check()


@pytest.mark.parametrize("call", ["check", "describe"])
def test_a_missing_model_is_reported_with_the_pull_command(emulator: OllamaEmulator, connect: Connect,
                                                           call: str) -> None:
    client = connect(emulator.url + "/api/generate", model="gemma9:27b")

    with pytest.raises(errors.ModelNotFound, match=r"run `ollama pull gemma9:27b`"):
        client.check() if call == "check" else client.describe(JPEG, PROMPT, "")

    assert len(emulator.generation_requests()) == (call == "describe")


def test_check_refuses_a_model_that_cannot_see(emulator: OllamaEmulator, connect: Connect) -> None:
    with pytest.raises(errors.ModelCannotSee, match="llama3.2:1b"):
        connect(emulator.url + "/api/generate", model="llama3.2:1b").check()


@pytest.mark.parametrize("call", ["check", "describe"])
def test_nothing_listening_is_server_unreachable_naming_the_uri(connect: Connect, call: str) -> None:
    uri = f"http://127.0.0.1:{free_port()}/api/generate"
    client = connect(uri)
    started = time.monotonic()

    with pytest.raises(errors.ServerUnreachable) as caught:
        client.check() if call == "check" else client.describe(JPEG, PROMPT, "")

    assert uri in str(caught.value) or uri.rsplit("/api", 1)[0] in str(caught.value)
    assert time.monotonic() - started < 10


def test_an_unreachable_uri_is_named_without_its_password(connect: Connect) -> None:
    client = connect(f"http://captiond:hunter2@127.0.0.1:{free_port()}/api/generate")

    with pytest.raises(errors.ServerUnreachable) as caught:
        client.check()

    assert "hunter2" not in str(caught.value) and "***" in str(caught.value)


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
@pytest.mark.parametrize("fault", [BUSY, RUNNER_CRASHED, Drop(), CutStream(), CutStream(clean_end=True), Garbage(),
                                   StreamError(CRASH)],
                         ids=["busy", "runner-crashed", "drop", "cut", "cut-clean", "garbage", "stream-error"])
def test_a_transient_failure_is_retried(emulator: OllamaEmulator, connect: Connect, fault: Behaviour,
                                        stream: bool) -> None:
    emulator.enqueue(fault)

    answer = connect(emulator.url + "/api/generate", stream=stream).describe(JPEG, PROMPT, "")

    assert answer.text == expected_caption(JPEG)
    assert len(emulator.generation_requests()) == 2


@pytest.mark.parametrize("path", API_PATHS)
def test_two_failures_in_a_row_are_retried_within_the_attempts(emulator: OllamaEmulator, connect: Connect,
                                                               path: str) -> None:
    emulator.enqueue(BUSY, CutStream(chunks=1))

    answer = connect(emulator.url + path).describe(JPEG, PROMPT, "")

    assert answer.text == expected_caption(JPEG)
    assert len(emulator.generation_requests()) == 3


@pytest.mark.parametrize("max_delay", [5.0, 0.05])
def test_retry_after_is_honoured(emulator: OllamaEmulator, connect: Connect, max_delay: float) -> None:
    emulator.enqueue(RATE_LIMITED)  # HTTP 429 with Retry-After: 1

    answer = connect(emulator.url + "/api/generate", retry={"MaxDelay": max_delay}).describe(JPEG, PROMPT, "")

    assert answer.text == expected_caption(JPEG)
    first, second = emulator.generation_requests()
    assert 0.9 <= second.time - first.time < 5


@pytest.mark.parametrize(("fault", "error", "message"), [
    (Status(400, "illegal base64 data at input byte 0"), errors.AnswerError, "illegal base64 data"),
    (OUT_OF_MEMORY, errors.ModelSetupError, "more system memory"),
], ids=["bad-request", "out-of-memory"])
def test_a_permanent_failure_is_not_retried(emulator: OllamaEmulator, connect: Connect, fault: Behaviour,
                                            error: type[Exception], message: str) -> None:
    emulator.enqueue(fault)

    with pytest.raises(error, match=message):
        connect(emulator.url + "/api/generate").describe(JPEG, PROMPT, "")

    assert len(emulator.generation_requests()) == 1


@pytest.mark.parametrize("path", API_PATHS)
def test_a_server_that_stays_busy_fails_after_exactly_the_attempts(emulator: OllamaEmulator, connect: Connect,
                                                                   path: str) -> None:
    emulator.default_behaviour = BUSY

    with pytest.raises(errors.TransientModelError) as caught:
        connect(emulator.url + path).describe(JPEG, PROMPT, "")

    assert caught.value.transient
    assert len(emulator.generation_requests()) == FAST_RETRY["Attempts"]


@pytest.mark.parametrize(("fault", "stream"), [(Hang(60), True), (Hang(60), False), (Endless(interval=0.01), True)],
                         ids=["hang-streamed", "hang-whole", "endless-trickle"])
@pytest.mark.parametrize("path", API_PATHS)
def test_a_hanging_or_endless_answer_fails_at_the_deadline(emulator: OllamaEmulator, connect: Connect,
                                                           fault: Behaviour, stream: bool, path: str) -> None:
    emulator.default_behaviour = fault
    client = connect(emulator.url + path, stream=stream, Timeout=0.5)
    started = time.monotonic()

    with pytest.raises(errors.TransientModelError):
        client.describe(JPEG, PROMPT, "")

    assert time.monotonic() - started < 8, "three attempts of 0.5 s each"
    assert len(emulator.generation_requests()) == FAST_RETRY["Attempts"]


def test_an_endless_stream_stops_at_the_size_cap(emulator: OllamaEmulator, connect: Connect) -> None:
    emulator.default_behaviour = Endless(interval=0.001)
    client = connect(emulator.url + "/api/chat", Timeout=120, MaxAnswerBytes=20_000)
    started = time.monotonic()

    with pytest.raises(errors.TransientModelError, match="20000 bytes"):
        client.describe(JPEG, PROMPT, "")

    assert time.monotonic() - started < 20


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
@pytest.mark.parametrize("path", API_PATHS)
def test_an_answer_only_in_thinking_is_used(emulator: OllamaEmulator, connect: Connect, path: str,
                                            stream: bool) -> None:
    emulator.enqueue(ThinkingOnly("A dog sleeps on a red sofa."))

    answer = connect(emulator.url + path, stream=stream).describe(JPEG, PROMPT, "")

    assert answer.text == ""
    assert answer.best_text == "A dog sleeps on a red sofa."


@pytest.mark.parametrize("fault", [
    BUSY, RUNNER_CRASHED, OUT_OF_MEMORY, RATE_LIMITED, Status(400, "bad"), Status(401, "unauthorized"),
    Status(404, "model 'x' not found"), Status(502, "bad gateway"), Drop(), CutStream(), Garbage(),
    StreamError(CRASH), StreamError("something unexpected"), Hang(60), Endless(),
], ids=lambda fault: type(fault).__name__ + str(getattr(fault, "code", "")))
@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
@pytest.mark.parametrize("path", API_PATHS)
def test_every_failure_is_a_captiond_error(emulator: OllamaEmulator, connect: Connect, path: str, stream: bool,
                                           fault: Behaviour) -> None:
    emulator.default_behaviour = fault
    client = connect(emulator.url + path, stream=stream, Timeout=0.5, retry={"MaxDelay": 0.05})

    with pytest.raises(errors.CaptiondError) as caught:
        client.describe(JPEG, PROMPT, "")

    assert "httpx" not in type(caught.value).__module__
    assert str(caught.value)
