"""Every answer a model server can give, sorted into the server's setup, the photo's fault or transient;
and hostile servers on loopback (trickled headers, endless or compressed bodies, closed connections).

The emulator gives the error bodies real servers send; `RawServer` below writes raw bytes for what no
well-behaved server does. Every call must come back with one of our errors within its deadline.
"""

from __future__ import annotations

import gzip
import json
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from captiond import errors
from captiond.config import parse_config
from captiond.model import ModelClient
from emulator import OllamaEmulator, Status

MODEL = "qwen2.5vl:3b"
JPEG = (Path(__file__).parent / "fixtures" / "Nikon_COOLPIX_P1.jpg").read_bytes()
GENERATE = ["/api/generate", "/api/chat", "/v1/chat/completions"]
RETURNS_SECONDS = 60.0  # a bound for "it came back at all", far above every deadline used here

# Setup problems as real servers word them (llama.cpp, Ollama, vLLM, OpenAI), each under the statuses they
# come with somewhere: whatever the status, the meaning is the same.
SETUP_MESSAGES: list[tuple[str, type[errors.ModelSetupError]]] = [
    ("model 'no-such-model' not found", errors.ModelNotFound),
    ("model \"qwen2.5vl:3b\" not found, try pulling it first", errors.ModelNotFound),
    ("model is required", errors.ModelNotFound),
    ("The model `gpt-x` does not exist.", errors.ModelNotFound),
    ("image input is not supported - hint: if this is unexpected, you may need to provide the mmproj",
     errors.ModelCannotSee),
    ("this model is missing data required for image input", errors.ModelCannotSee),
    ("\"llama3.2:1b\" does not support thinking", errors.ModelCannotThink),
    ("request (1050 tokens) exceeds the available context size (512 tokens), try increasing it",
     errors.ContextTooSmall),
    ("This model's maximum context length is 4096 tokens. However, you requested 5000 tokens.",
     errors.ContextTooSmall),
    ("model requires more system memory (12.0 GiB) than is available (4.0 GiB)", errors.ModelSetupError),
]
SETUP_STATUSES = [400, 404, 500]


Connect = Callable[..., ModelClient]


@pytest.fixture
def connect() -> Iterator[Connect]:
    """Return a factory of ModelClients (one attempt unless asked, short deadlines); closes them afterwards."""
    clients: list[ModelClient] = []

    def make(uri: str, *, stream: bool = True, timeout: float = 5, attempts: int = 1, model: str = MODEL,
             think: str = "false") -> ModelClient:
        document = {"Models": [{"Type": "caption", "Model": model,
                                "Service": {"Uri": uri, "Stream": stream, "Think": think}}],
                    "Daemon": {"Timeout": timeout,
                               "Retry": {"Attempts": attempts, "Delay": 0.01, "MaxDelay": 0.05, "Total": 10}}}
        config = parse_config(document, environ={}, path=None)
        caption = config.model("caption")
        assert caption is not None
        client = ModelClient(caption, config.daemon)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def returns(call: Callable[[], object]) -> BaseException | object:
    """Run call in a thread; return its exception or result; fail if it does not come back at all."""
    outcome: list[BaseException | object] = []

    def target() -> None:
        try:
            outcome.append(call())
        except BaseException as exc:  # noqa: BLE001 - handed to the test to judge
            outcome.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(RETURNS_SECONDS)
    assert not thread.is_alive(), "the call did not come back"
    return outcome[0]


# -- classification by status and body -----------------------------------------------------------


@pytest.mark.parametrize("path", GENERATE)
@pytest.mark.parametrize("status", SETUP_STATUSES)
@pytest.mark.parametrize(("message", "expected"), SETUP_MESSAGES, ids=[m[:30] for m, _ in SETUP_MESSAGES])
def test_a_setup_problem_is_one_whatever_its_status(emulator: OllamaEmulator, connect: Connect, path: str,
                                                    status: int, message: str,
                                                    expected: type[errors.ModelSetupError]) -> None:
    emulator.default_behaviour = Status(status, message)

    with pytest.raises(errors.ModelSetupError) as caught:
        connect(emulator.url + path, attempts=3).describe(JPEG, "Caption?", "")

    assert type(caught.value) is expected
    assert len(emulator.generation_requests()) == 1  # never retried
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("path", GENERATE)
def test_every_status_code_of_a_generation_is_one_of_our_errors(emulator: OllamaEmulator, connect: Connect,
                                                                path: str) -> None:
    client = connect(emulator.url + path)
    for status in range(201, 600):
        emulator.default_behaviour = Status(status, "something happened")
        outcome = returns(lambda: client.describe(JPEG, "Caption?", ""))
        assert isinstance(outcome, errors.CaptiondError), (status, outcome)
        if status in (401, 403, 404, 405, 413, 501) or 300 <= status < 400:
            assert isinstance(outcome, errors.ModelSetupError), (status, outcome)
        elif status in (408, 425, 429) or status >= 500 or status < 300:
            assert isinstance(outcome, errors.TransientModelError), (status, outcome)
        else:
            assert isinstance(outcome, errors.AnswerError), (status, outcome)


# -- hostile servers -------------------------------------------------------------------------------


@dataclass
class Request:
    """What RawServer received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    sequence: int = 1  # the how-manieth request on its connection


Respond = Callable[[Request, socket.socket], None]


class RawServer:
    """A loopback server that answers each request by calling `respond(request, socket)`: raw bytes, any behaviour."""

    def __init__(self, respond: Respond) -> None:
        self.respond = respond
        self.requests: list[Request] = []
        self.connections = 0
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                outer.connections += 1
                reader = self.request.makefile("rb")
                sequence = 0
                while True:
                    request = _read_request(reader)
                    if request is None:
                        return
                    sequence += 1
                    request.sequence = sequence
                    outer.requests.append(request)
                    try:
                        outer.respond(request, self.request)
                    except OSError:
                        return
                    if request.headers.get("x-close") == "1":
                        return

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        """Return the server's base URL."""
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


def _read_request(reader: Any) -> Request | None:
    line = reader.readline()
    if not line:
        return None
    method, path, _ = line.decode("latin-1").split(" ", 2)
    headers: dict[str, str] = {}
    while True:
        header = reader.readline().decode("latin-1").strip()
        if not header:
            break
        name, _, value = header.partition(":")
        headers[name.strip().lower()] = value.strip()
    body = reader.read(int(headers.get("content-length", "0")))
    return Request(method, path, headers, body)


@pytest.fixture
def raw_server() -> Iterator[Callable[[Respond], RawServer]]:
    """Return a factory of RawServers; stops them afterwards."""
    servers: list[RawServer] = []

    def make(respond: Respond) -> RawServer:
        server = RawServer(respond)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


def _send(connection: socket.socket, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
    head = f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    connection.sendall(head.encode("latin-1") + b"\r\n" + body)


OLLAMA_ANSWER = json.dumps({"model": MODEL, "response": "A red bicycle.", "done": True}).encode()
SHOW_ANSWER = json.dumps({"capabilities": ["completion", "vision"]}).encode()


def _ollama(request: Request, connection: socket.socket) -> None:
    """A correct, minimal Ollama: /api/show and a non-streamed /api/generate."""
    _send(connection, 200, SHOW_ANSWER if request.path == "/api/show" else OLLAMA_ANSWER,
          {"Content-Type": "application/json"})


@pytest.mark.parametrize("call", ["check", "describe"])
def test_headers_trickled_a_byte_at_a_time_end_at_the_deadline(raw_server: Callable[[Respond], RawServer],
                                                               connect: Connect, call: str) -> None:
    stop = threading.Event()

    def trickle(request: Request, connection: socket.socket) -> None:
        for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 100_000:
            if stop.wait(0.2):
                return
            connection.sendall(bytes([byte]))

    server = raw_server(trickle)
    client = connect(server.url + "/api/generate", timeout=2)
    try:
        outcome = returns(client.check if call == "check" else lambda: client.describe(JPEG, "Caption?", ""))
    finally:
        stop.set()
    expected = errors.ModelSetupError if call == "check" else errors.TransientModelError
    assert isinstance(outcome, expected), outcome


def test_an_endless_show_answer_is_cut_off(raw_server: Callable[[Respond], RawServer], connect: Connect) -> None:
    def endless(request: Request, connection: socket.socket) -> None:
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b'{"license": "' + b"x" * 65_000
        while True:
            connection.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")

    server = raw_server(endless)
    outcome = returns(connect(server.url + "/api/generate", timeout=30).check)

    assert isinstance(outcome, errors.ServerUnreachable) and "exceeded" in str(outcome), outcome


def test_no_compression_is_asked_for_but_gzip_is_decoded(raw_server: Callable[[Respond], RawServer],
                                                         connect: Connect) -> None:
    def compressed(request: Request, connection: socket.socket) -> None:
        body = SHOW_ANSWER if request.path == "/api/show" else OLLAMA_ANSWER
        _send(connection, 200, gzip.compress(body), {"Content-Type": "application/json", "Content-Encoding": "gzip"})

    server = raw_server(compressed)
    client = connect(server.url + "/api/generate", stream=False)

    client.check()
    answer = client.describe(JPEG, "Caption?", "")

    assert answer.text == "A red bicycle."
    assert {request.headers.get("accept-encoding") for request in server.requests} == {"identity"}


def test_a_compression_bomb_is_refused_in_bounded_memory(raw_server: Callable[[Respond], RawServer],
                                                         connect: Connect) -> None:
    bomb = gzip.compress(b"{" + b" " * 200_000_000)  # 200 MB of JSON whitespace in about 200 kB

    def compressed(request: Request, connection: socket.socket) -> None:
        _send(connection, 200, bomb, {"Content-Type": "application/json", "Content-Encoding": "gzip"})

    server = raw_server(compressed)
    outcome = returns(lambda: connect(server.url + "/api/generate", stream=False).describe(JPEG, "Caption?", ""))

    assert isinstance(outcome, errors.TransientModelError) and "exceeded" in str(outcome), outcome


def test_a_connection_the_server_closed_costs_no_attempt(raw_server: Callable[[Respond], RawServer],
                                                        connect: Connect) -> None:
    def one_answer_per_connection(request: Request, connection: socket.socket) -> None:
        # Says keep-alive but closes instead of answering a second request on the same connection:
        # what a client sees when the server closed a kept-alive connection just as it was reused.
        if request.sequence > 1:
            raise OSError("closed without an answer")
        _send(connection, 200, OLLAMA_ANSWER, {"Content-Type": "application/json", "Connection": "keep-alive"})

    server = raw_server(one_answer_per_connection)
    client = connect(server.url + "/api/generate", stream=False, attempts=1)

    for _ in range(3):
        assert client.describe(JPEG, "Caption?", "").text == "A red bicycle."
    assert server.connections >= 3


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
def test_a_plain_json_answer_to_a_request_for_a_stream_is_accepted(raw_server: Callable[[Respond], RawServer],
                                                                   connect: Connect, path: str) -> None:
    openai = {"model": "served.gguf", "choices": [{"message": {"content": "A red bicycle."}, "finish_reason": "stop"}]}
    ollama = {"model": "served", "message": {"content": "A red bicycle."}, "done": True}

    def plain(request: Request, connection: socket.socket) -> None:
        if request.path in ("/v1/models", "/props", "/api/show"):
            _send(connection, 404 if request.path != "/api/show" else 200, SHOW_ANSWER)
            return
        assert json.loads(request.body)["stream"] is True
        _send(connection, 200, json.dumps(openai if path.startswith("/v1") else ollama).encode(),
              {"Content-Type": "application/json"})

    server = raw_server(plain)
    client = connect(server.url + path, stream=True)
    client.check()

    answer = client.describe(JPEG, "Caption?", "")

    assert answer.text == "A red bicycle."
    assert client.answering_model() == answer.model == ("served.gguf" if path.startswith("/v1") else "served")


CHECK_PATHS = {"/api/generate": ["/api/show"], "/v1/chat/completions": ["/v1/models", "/props"]}


@pytest.mark.parametrize("uri_path", list(CHECK_PATHS))
def test_every_status_code_of_a_check_is_a_setup_problem_or_fine(raw_server: Callable[[Respond], RawServer],
                                                                 connect: Connect, uri_path: str) -> None:
    current = {"status": 200, "path": ""}

    def answer(request: Request, connection: socket.socket) -> None:
        status = current["status"] if request.path == current["path"] else 200
        body = SHOW_ANSWER if request.path == "/api/show" else b'{"data": []}'
        _send(connection, int(status), body if status == 200 else b'{"error": "no"}', {"Location": "/elsewhere"})

    server = raw_server(answer)
    client = connect(server.url + uri_path, timeout=5)
    for path in CHECK_PATHS[uri_path]:
        for status in range(200, 600):
            current.update(status=status, path=path)
            outcome = returns(lambda: client.check(retry=False))
            assert outcome is None or isinstance(outcome, errors.ModelSetupError), (path, status, outcome)


@pytest.mark.parametrize("path", ["/api/show", "/v1/models"])
def test_a_server_loading_its_model_is_waited_for(raw_server: Callable[[Respond], RawServer], connect: Connect,
                                                  path: str) -> None:
    loading_until = time.monotonic() + 1.5

    def loading(request: Request, connection: socket.socket) -> None:
        if time.monotonic() < loading_until and request.path in ("/api/show", "/v1/models"):
            _send(connection, 503, b'{"error": {"message": "Loading model", "type": "unavailable_error"}}')
        elif request.path == "/v1/models":
            _send(connection, 200, json.dumps({"data": [{"id": MODEL}]}).encode())
        else:
            _send(connection, 200 if request.path == "/api/show" else 404, SHOW_ANSWER)

    server = raw_server(loading)
    uri = server.url + ("/api/generate" if path == "/api/show" else "/v1/chat/completions")
    client = connect(uri)

    if path == "/v1/models":
        assert isinstance(returns(lambda: client.check(retry=False)), errors.ModelSetupError)  # a probe: not yet
    assert returns(client.check) is None  # a run waits while it loads
    assert sum(request.path == path for request in server.requests) >= 2


def test_think_is_sent_only_to_a_model_that_can_think(emulator: OllamaEmulator, connect: Connect) -> None:
    for model, expected in [("qwen3-vl:2b", "max"), ("qwen2.5vl:3b", None)]:
        emulator.clear()
        client = connect(emulator.url + "/api/generate", model=model, think="max")
        client.check()
        client.describe(JPEG, "Caption?", "")
        body = emulator.generation_requests()[-1].body
        assert body is not None and body.get("think") == expected, (model, body.get("think") if body else None)


@pytest.mark.parametrize(("configured", "served", "found"), [
    ("qwen2.5vl", "qwen2.5vl:latest", True), ("qwen2.5vl:latest", "qwen2.5vl", True),
    ("qwen2.5vl:3b", "qwen2.5vl:3b", True), ("qwen2.5vl:3b", "qwen2.5vl:7b", False),
    ("org/model", "org/model", True), ("other", "qwen2.5vl:3b", False)])
def test_a_listed_model_is_found_with_or_without_its_latest_tag(raw_server: Callable[[Respond], RawServer],
                                                                connect: Connect, configured: str, served: str,
                                                                found: bool) -> None:
    def models(request: Request, connection: socket.socket) -> None:
        listed = {"data": [{"id": served}, {"id": "another:1b"}]}
        _send(connection, 200 if request.path == "/v1/models" else 404, json.dumps(listed).encode())

    server = raw_server(models)
    outcome = returns(connect(server.url + "/v1/chat/completions", model=configured).check)

    if found:
        assert outcome is None
    else:
        assert isinstance(outcome, errors.ModelNotFound) and "it has: " in str(outcome), outcome
