"""A small in-process emulator of Ollama's HTTP API (and its OpenAI-compatible /v1 endpoints) for tests.

Usage::

    from tests.emulator import BUSY, Drop, OllamaEmulator, Reply

    with OllamaEmulator(latency=0.05, parallel=1) as server:
        server.enqueue(BUSY, Reply("A red bicycle."))   # the next two generation requests
        ...  # point the code under test at server.url ("http://127.0.0.1:PORT")
        assert len(server.generation_requests()) == 3
        assert server.max_processing <= 2

Endpoints (shapes of Ollama 0.12, docs/api.md): GET / (and HEAD), /api/version, /api/tags, /api/ps,
/v1/models; POST /api/show, /api/generate, /api/chat, /v1/chat/completions. /api streams NDJSON
(``stream`` defaults to true there), /v1 streams SSE ending in ``data: [DONE]``. Errors are
``{"error": "..."}`` on /api and ``{"error": {"message", "type", "code"}}`` on /v1. Validation as in
Ollama: unknown model -> 404, an image that is not plain base64 (``data:`` prefix) -> 400
``illegal base64 data at input byte N``, ``think`` on a model without "thinking" -> 400, images to a
model without "vision" -> 200 ``I'm sorry, I can't see images.``;
``options.num_predict`` / ``max_tokens`` cut the answer to that many words (reason "length").

Faults: ``server.enqueue(*behaviours)`` scripts the NEXT generation requests, one behaviour each; with the
queue empty ``server.default_behaviour`` (None = normal) applies. Status/Drop/Garbage/Hang act before
validation. ``server.blind = True``: the vision model answers without looking at its images (a red shape on
white is otherwise described as such). ``tokens_per_second`` sets the reported eval_duration (slow it down to
emulate a degraded GPU), ``vram_fraction`` the /api/ps size_vram of loaded models, ``load_seconds`` the
load_duration. Records: ``server.requests`` (snapshot; ``time`` is time.monotonic()),
``generation_requests()``, ``active``/``max_active`` (generations in flight, arrival to end) and
``processing``/``max_processing`` (inside the ``parallel`` slots). ``stop()`` wakes waiting handlers and shuts
open connections; ``start()`` after ``stop()`` binds the same port again (a "restarted" server).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import io
import json
import re
import socket
import socketserver
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = [
    "BUSY", "CANT_SEE", "DEFAULT_MODELS", "GENERATION_PATHS", "OUT_OF_MEMORY", "RATE_LIMITED",
    "RUNNER_CRASHED", "VERSION", "Behaviour", "CutStream", "Drop", "Endless", "Garbage", "Hang",
    "OllamaEmulator", "RecordedRequest", "Reply", "Status", "StreamError", "ThinkingOnly",
    "decode_images", "default_reply", "expected_caption",
]

VERSION = "0.12.6"
DEFAULT_MODELS: dict[str, list[str]] = {
    "qwen2.5vl:3b": ["completion", "vision"],
    "llama3.2:1b": ["completion"],
    "qwen3-vl:2b": ["completion", "vision", "thinking"],
}
GENERATION_PATHS = ("/api/generate", "/api/chat", "/v1/chat/completions", "/v1/responses")
CANT_SEE = "I'm sorry, I can't see images."
DEFAULT_THINKING = "The user wants a short caption, so I describe what the picture shows."
_B64_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")
_OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                 404: "not_found_error", 429: "rate_limit_error"}


# ---------------------------------------------------------------- behaviours
@dataclass(frozen=True)
class Status:
    """Answer with HTTP `code` and an error body (Ollama- or OpenAI-shaped by path)."""
    code: int
    message: str
    retry_after: str | None = None


@dataclass(frozen=True)
class Hang:
    """Wait `seconds` then answer normally; None = until stop. Stop closes the connection unanswered."""
    seconds: float | None = None


@dataclass(frozen=True)
class Drop:
    """Close the connection without any HTTP response."""


@dataclass(frozen=True)
class CutStream:
    """Stream `chunks` content chunks then close without a done line (clean_end: end the HTTP body
    properly instead of cutting the connection). Non-stream: Content-Length larger than the body sent."""
    chunks: int = 2
    clean_end: bool = False


@dataclass(frozen=True)
class StreamError:
    """Stream `after_chunks` chunks, then an error line under HTTP 200. Non-stream: 500 with `message`."""
    message: str
    after_chunks: int = 1


@dataclass(frozen=True)
class Reply:
    """Answer exactly this text (subject to num_predict / max_tokens)."""
    text: str


@dataclass(frozen=True)
class ThinkingOnly:
    """Empty answer; the text goes to `thinking` (message.thinking for chat, message.reasoning on /v1)."""
    text: str


@dataclass(frozen=True)
class Endless:
    """Stream `word` every `interval` seconds until the client disconnects or stop (non-stream: hang)."""
    word: str = " and"
    interval: float = 0.01


@dataclass(frozen=True)
class Garbage:
    """HTTP 200 with a body that is not JSON."""
    body: bytes = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
    content_type: str = "text/html"


Behaviour = Status | Hang | Drop | CutStream | StreamError | Reply | ThinkingOnly | Endless | Garbage

BUSY = Status(503, "server busy, please try again.  maximum pending requests exceeded")
RUNNER_CRASHED = Status(500, "llama runner process has terminated: signal: killed")
OUT_OF_MEMORY = Status(500, "model requires more system memory (9.1 GiB) than is available (2.0 GiB)")
RATE_LIMITED = Status(429, "too many requests", retry_after="1")


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    time: float
    raw: bytes = b""

    def images(self) -> list[bytes]:
        return decode_images(self.body) if isinstance(self.body, dict) else []


# ---------------------------------------------------------------- helpers
def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    msgs = body.get("messages", body.get("input"))  # chat messages, or the Responses API's input
    return [m for m in msgs if isinstance(m, dict)] if isinstance(msgs, list) else []


def _ollama_images(body: dict[str, Any]) -> list[Any]:
    images = list(body.get("images") or [])
    for m in _messages(body):
        images += list(m.get("images") or [])
    return images


def _openai_urls(body: dict[str, Any]) -> list[Any]:
    urls = []
    for m in _messages(body):
        content = m.get("content")
        for part in content if isinstance(content, list) else []:
            if isinstance(part, dict) and part.get("type") in ("image_url", "input_image"):
                iu = part.get("image_url")
                urls.append(iu.get("url") if isinstance(iu, dict) else iu)
    return urls


def _data_url_payload(url: Any) -> str | None:
    if not isinstance(url, str) or not url.startswith("data:") or "," not in url:
        return None
    header, payload = url.split(",", 1)
    return payload if header.endswith(";base64") else None


def _b64_error(s: Any) -> str | None:
    """The error Go's encoding/json gives for a []byte field that is not standard base64 (None: valid)."""
    if not isinstance(s, str):
        return f"json: cannot unmarshal {type(s).__name__} into Go value of type []uint8"
    data = s.replace("\r", "").replace("\n", "")
    for i, ch in enumerate(data):
        if ch not in _B64_CHARS:
            return f"illegal base64 data at input byte {i}"
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return f"illegal base64 data at input byte {len(data)}"
    return None


def _b64decode(s: str) -> bytes:
    return base64.b64decode(s.replace("\r", "").replace("\n", ""), validate=True)


def decode_images(body: dict[str, Any]) -> list[bytes]:
    """Image bytes of a generate, chat or /v1 chat body, in order. Raises ValueError on invalid data."""
    out = [_b64decode(s) for s in _ollama_images(body)]
    for url in _openai_urls(body):
        payload = _data_url_payload(url)
        if payload is None:
            raise ValueError(f"not a base64 data: URL: {str(url)[:40]!r}")
        out.append(_b64decode(payload))
    return out


def expected_caption(image: bytes | None) -> str:
    """The default reply for a request whose first image is `image` (what it shows when mostly red)."""
    if image is None:
        return "A photo with a calm scene."
    if _mostly_red(image):
        return "A large red circle on a white background."
    return f"A photo with a calm scene, image {hashlib.sha256(image).hexdigest()[:8]}."


def _mostly_red(image: bytes) -> bool:
    """Whether the image is a red shape on white (as the self-test's disc): a model that looks would say so."""
    try:
        from PIL import Image

        with Image.open(io.BytesIO(image)) as opened:
            data = opened.convert("RGB").resize((16, 16)).tobytes()
    except Exception:  # not an image the emulator can read: answer as for any photo
        return False
    pixels = [tuple(data[index:index + 3]) for index in range(0, len(data), 3)]
    red = sum(1 for r, g, b in pixels if r > 150 and g < 90 and b < 90)
    white = sum(1 for r, g, b in pixels if min(r, g, b) > 200)
    return red >= len(pixels) // 5 and white >= len(pixels) // 5


def default_reply(body: dict[str, Any]) -> str:
    try:
        images = decode_images(body)
    except ValueError:
        images = []
    return expected_caption(images[0] if images else None)


def _words(text: str) -> list[str]:
    return re.findall(r"\s*\S+", text)


def _limit(text: str, limit: Any) -> tuple[str, str]:
    words = _words(text)
    if isinstance(limit, int) and not isinstance(limit, bool) and 0 <= limit < len(words):
        return "".join(words[:limit]), "length"
    return text, "stop"


def _pieces(text: str, n: int = 6) -> list[str]:
    """Split text into at most n pieces (at word starts) whose concatenation is text."""
    words = _words(text)
    tail = text[len("".join(words)):]
    if not words:
        return [text] if text else []
    size = -(-len(words) // n)
    pieces = ["".join(words[i:i + size]) for i in range(0, len(words), size)]
    pieces[-1] += tail
    return pieces


def _now() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e9):09d}Z"


def _family(name: str) -> str:
    return "".join(c for c in name.split(":")[0] if c.isalnum()) or "llama"


def _details(name: str) -> dict[str, Any]:
    tag = name.split(":", 1)[1] if ":" in name else ""
    size = tag[:-1].upper() + "B" if tag.endswith("b") and tag[:-1].replace(".", "").isdigit() else "3.8B"
    return {"parent_model": "", "format": "gguf", "family": _family(name), "families": [_family(name)],
            "parameter_size": size, "quantization_level": "Q4_K_M"}


# ---------------------------------------------------------------- HTTP plumbing
class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], emulator: OllamaEmulator) -> None:
        self.emulator = emulator
        self.connections: set[socket.socket] = set()
        self.conn_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:  # skip HTTPServer's getfqdn() (can be slow)
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.conn_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.conn_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self.conn_lock:
            conns = list(self.connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # client went away: not worth a traceback
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # as Ollama (Go) sends: no delayed-ACK stalls on reused connections
    server: _Server
    _openai = False

    def log_message(self, format: str, *args: Any) -> None:
        pass


    # --- low-level output
    def _send(self, code: int, data: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _json(self, code: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self._send(code, json.dumps(obj).encode(), "application/json; charset=utf-8", headers)

    def _error(self, code: int, message: str, retry_after: str | None = None) -> None:
        if self._openai:
            kind = _OPENAI_TYPES.get(code, "api_error")
            obj: Any = {"error": {"message": message, "type": kind, "code": code}}
        else:
            obj = {"error": message}
        self._json(code, obj, {"Retry-After": retry_after} if retry_after else None)

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _start_chunked(self, ctype: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()

    def _chunk(self, data: bytes) -> None:
        if data:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

    def _end_chunked(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    # --- routing
    def _dispatch(self) -> None:
        emu = self.server.emulator
        try:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length > 0 else b""
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = None
            path = self.path.split("?", 1)[0]
            headers = {k.lower(): v for k, v in self.headers.items()}
            emu._record(RecordedRequest(self.command, path, headers, body, time.monotonic(), raw))
            self._openai = path.startswith("/v1/")
            if emu.api_key is not None and headers.get("authorization") != f"Bearer {emu.api_key}":
                return self._error(401, "Incorrect API key provided" if self._openai else "unauthorized")
            self._route(self.command, path, body, raw)
        except OSError:
            self.close_connection = True

    do_GET = do_POST = do_HEAD = _dispatch

    def _route(self, method: str, path: str, body: Any, raw: bytes) -> None:
        emu = self.server.emulator
        if method in ("GET", "HEAD") and path == "/":
            self._send(200, b"Ollama is running", "text/plain; charset=utf-8")
        elif method == "GET" and path == "/api/version":
            self._json(200, {"version": VERSION})
        elif method == "GET" and path == "/api/tags":
            self._json(200, {"models": [
                {"name": n, "model": n, "modified_at": "2025-10-16T09:30:00.000000000Z",
                 "size": 2_000_000_000 + len(n), "digest": hashlib.sha256(n.encode()).hexdigest(),
                 "details": _details(n)} for n in emu.models]})
        elif method == "GET" and path == "/api/ps":
            with emu._lock:
                loaded = sorted(emu.loaded)
            size = 3_400_000_000
            in_vram = int(size * (1.0 if emu.vram_fraction is None else emu.vram_fraction))
            self._json(200, {"models": [
                {"name": n, "model": n, "size": size, "digest": hashlib.sha256(n.encode()).hexdigest(),
                 "details": _details(n), "expires_at": "2026-12-06T05:00:00.000000000Z", "size_vram": in_vram,
                 "context_length": 4096} for n in loaded]})
        elif method == "GET" and path == "/v1/models":
            data = [{"id": n, "object": "model", "created": 1760607000, "owned_by": "library"}
                    for n in emu.models]
            self._json(200, {"object": "list", "data": data})
        elif method == "POST" and path == "/api/show":
            self._show(body)
        elif method == "POST" and path == "/v1/responses":
            self._responses(body)
        elif method == "POST" and path in GENERATION_PATHS:
            behaviour = emu._next_behaviour()
            emu._count_active(+1)
            try:
                self._generation(path, body, raw, behaviour)
            finally:
                emu._count_active(-1)
        else:
            self._send(404, b"404 page not found", "text/plain; charset=utf-8")

    def _responses(self, body: Any) -> None:
        """OpenAI's Responses API, not streamed: `input` messages with input_text / input_image parts."""
        if not isinstance(body, dict) or not body.get("model") or not isinstance(body.get("input"), list):
            return self._error(400, "Missing required parameter: 'input'.")
        for url in _openai_urls(body):
            payload = _data_url_payload(url)
            if payload is None or _b64_error(payload):
                return self._error(400, "Invalid 'input[1].content[1].image_url'.")
        text = self.server.emulator.reply(body)
        self._json(200, {"id": "resp_emulator", "object": "response", "status": "completed", "model": body["model"],
                         "output": [{"type": "message", "role": "assistant", "status": "completed",
                                     "content": [{"type": "output_text", "text": text, "annotations": []}]}]})

    def _show(self, body: Any) -> None:
        name = (body.get("model") or body.get("name")) if isinstance(body, dict) else None
        if not name:
            return self._error(400, "model is required")
        caps = self.server.emulator._capabilities(name)
        if caps is None:
            return self._error(404, f"model '{name}' not found")
        fam = _family(name)
        self._json(200, {
            "modelfile": f'# Modelfile generated by "ollama show"\nFROM {name}\nTEMPLATE {{{{ .Prompt }}}}\n',
            "parameters": 'temperature 0.1\nstop "<|im_end|>"',
            "template": "{{ .Prompt }}",
            "details": _details(name),
            "model_info": {"general.architecture": fam, "general.parameter_count": 3_754_622_976,
                           f"{fam}.context_length": 128000},
            "capabilities": list(caps),
            "modified_at": "2025-10-16T09:30:00.000000000Z",
        })

    # --- generation
    def _check(self, kind: str, body: dict[str, Any]) -> tuple[int, str] | None:
        if kind == "openai":
            for url in _openai_urls(body):
                payload = _data_url_payload(url)
                if payload is None or _b64_error(payload):
                    return 400, "invalid image input"
        else:
            for image in _ollama_images(body):
                if err := _b64_error(image):
                    return 400, err
            for m in _messages(body):
                if not isinstance(m.get("content", ""), str):
                    return 400, ("json: cannot unmarshal array into Go struct field "
                                 "Message.messages.content of type string")
        name = body.get("model")
        if not name:
            return 400, "model is required"
        caps = self.server.emulator._capabilities(name)
        if caps is None:
            return 404, f"model '{name}' not found"
        think = body.get("think")
        if kind != "openai" and think not in (None, False):
            if think not in (True, "low", "medium", "high", "max"):
                return 400, f'invalid think value: "{think}" (must be "high", "medium", "low", "max", true or false)'
            if "thinking" not in caps:
                return 400, f'"{name}" does not support thinking'
        if "completion" not in caps:
            return 400, f'"{name}" does not support {"generate" if kind == "generate" else "chat"}'
        return None

    def _generation(self, path: str, body: Any, raw: bytes, b: Behaviour | None) -> None:
        emu = self.server.emulator
        t0 = time.monotonic()
        if isinstance(b, Hang) and emu._wait(b.seconds):  # None: until stop
            return self._drop()
        if isinstance(b, Drop):
            return self._drop()
        if isinstance(b, Status):
            return self._error(b.code, b.message, b.retry_after)
        if isinstance(b, Garbage):
            return self._send(200, b.body, b.content_type)
        if not isinstance(body, dict):
            return self._error(400, "invalid character in request body" if raw else "missing request body")
        kind = "openai" if self._openai else path.rsplit("/", 1)[1]
        problem = self._check(kind, body)
        if problem:
            return self._error(*problem)
        caps = emu._capabilities(body["model"]) or []
        with emu._lock:
            emu.loaded.add(body["model"])
        if not emu._acquire():
            return self._drop()
        try:
            if emu.latency and emu._wait(emu.latency):
                return self._drop()
            thinking = ""
            if isinstance(b, Reply):
                text = b.text
            elif isinstance(b, ThinkingOnly):
                text, thinking = "", b.text
            elif (_ollama_images(body) or _openai_urls(body)) and "vision" not in caps:
                text = CANT_SEE
            elif emu.blind:
                text = expected_caption(None)  # answers as if there were no image (ollama/ollama#13549)
            else:
                text = emu.reply(body)
            if not thinking and kind != "openai" and body.get("think") not in (None, False):
                thinking = DEFAULT_THINKING
            if kind == "openai":
                limit = body.get("max_tokens", body.get("max_completion_tokens"))
            else:
                limit = (body.get("options") or {}).get("num_predict")
            text, reason = _limit(text, limit)
        finally:
            # The slot is free once the answer is ready, before it is sent: a client that sends its
            # next request on receiving this answer never sees an overlap that is only our bookkeeping.
            emu._release()
        self._answer(kind, body, text, thinking, reason, b, t0)

    def _answer(self, kind: str, body: dict[str, Any], text: str, thinking: str, reason: str,
                b: Behaviour | None, t0: float) -> None:
        emu = self.server.emulator
        name = body["model"]
        openai = kind == "openai"
        stream = bool(body.get("stream", not openai))
        cid, created = f"chatcmpl-{int(t0 * 1000) % 1000000}", int(time.time())

        def obj(content: str, think: str, done: bool, final: bool = False) -> dict[str, Any]:
            if openai:
                msg: dict[str, Any] = {"role": "assistant", "content": content}
                if think:
                    msg["reasoning"] = think
                choice = {"index": 0, ("delta" if stream else "message"): msg,
                          "finish_reason": reason if done else None}
                out = {"id": cid, "object": "chat.completion.chunk" if stream else "chat.completion",
                       "created": created, "model": name, "system_fingerprint": "fp_ollama",
                       "choices": [choice]}
                if final and (not stream or (body.get("stream_options") or {}).get("include_usage")):
                    n = len(_words(text))
                    out["usage"] = {"prompt_tokens": 12, "completion_tokens": n, "total_tokens": 12 + n}
                return out
            out = {"model": name, "created_at": _now()}
            if kind == "chat":
                out["message"] = {"role": "assistant", "content": content}
                if think:
                    out["message"]["thinking"] = think
            else:
                out["response"] = content
                if think:
                    out["thinking"] = think
            out["done"] = done
            if done:
                total = int((time.monotonic() - t0) * 1e9) + 1000
                out["done_reason"] = reason
                if kind == "generate":
                    out["context"] = [151644, 872, 198, 151645]
                out.update({"total_duration": total, "load_duration": total // 10,
                            "prompt_eval_count": 12 + 256 * len(_ollama_images(body)),
                            "prompt_eval_duration": total // 4, "eval_count": len(_words(text)),
                            "eval_duration": total // 2})
                if emu.load_seconds is not None:
                    out["load_duration"] = int(emu.load_seconds * 1e9)
                if emu.tokens_per_second:
                    out["eval_duration"] = int(max(1, len(_words(text))) / emu.tokens_per_second * 1e9)
            return out

        def line(o: Any) -> bytes:
            return (b"data: %s\n\n" if openai else b"%s\n") % json.dumps(o).encode()

        if not stream:
            if isinstance(b, Endless):
                emu._wait(None)
                return self._drop()
            if isinstance(b, StreamError):
                return self._error(500, b.message)
            data = json.dumps(obj(text, thinking, True, final=True)).encode()
            if isinstance(b, CutStream):
                self.send_response(200)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                return self._drop()
            return self._send(200, data, "application/json; charset=utf-8")

        self._start_chunked("text/event-stream" if openai else "application/x-ndjson")
        lines = [line(obj("", thinking, False))] if thinking else []
        lines += [line(obj(piece, "", False)) for piece in _pieces(text)]
        final = [line(obj("", "", True, final=True))] + ([b"data: [DONE]\n\n"] if openai else [])
        if isinstance(b, Endless):
            self._chunk(line(obj(b.word.lstrip(), "", False)))
            while not emu._wait(b.interval):
                self._chunk(line(obj(b.word, "", False)))
            return self._drop()
        if isinstance(b, CutStream):
            for data in lines[: b.chunks]:
                self._chunk(data)
            return self._end_chunked() if b.clean_end else self._drop()
        if isinstance(b, StreamError):
            err: Any = {"error": {"message": b.message, "type": "api_error", "code": 500}} if openai \
                else {"error": b.message}
            for data in [*lines[: b.after_chunks], line(err)]:
                self._chunk(data)
            return self._end_chunked()
        for data in lines + final:
            self._chunk(data)
        self._end_chunked()


# ---------------------------------------------------------------- the emulator
class OllamaEmulator:
    """A fake Ollama server on 127.0.0.1 (see the module docstring)."""

    def __init__(self, *, models: dict[str, list[str]] | None = None, latency: float = 0.0,
                 reply: Callable[[dict[str, Any]], str] | None = None, parallel: int | None = None,
                 api_key: str | None = None, host: str = "127.0.0.1") -> None:
        self.models: dict[str, list[str]] = dict(DEFAULT_MODELS if models is None else models)
        self.latency = latency
        self.reply: Callable[[dict[str, Any]], str] = reply or default_reply
        self.parallel = parallel
        self.api_key = api_key
        self.host = host  # the deploy scripts serve other containers: 0.0.0.0
        self.default_behaviour: Behaviour | None = None
        self.blind = False  # a vision model that no longer receives images and answers anyway
        self.tokens_per_second: float | None = None  # reported generation speed (eval_duration); None: as measured
        self.load_seconds: float | None = None  # reported load_duration (a long one: the model was loaded again)
        self.vram_fraction: float | None = None  # /api/ps size_vram / size of loaded models (None: all on the GPU)
        self.loaded: set[str] = set()  # models that answered a generation request (listed by /api/ps)
        self.active = self.max_active = 0
        self.processing = self.max_processing = 0
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._requests: list[RecordedRequest] = []
        self._queue: deque[Behaviour] = deque()
        self._stopped = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._port = 0

    # --- lifecycle
    def start(self) -> OllamaEmulator:
        if self._server is None:
            self._stopped.clear()
            self._server = _Server((self.host, self._port), self)
            self._port = self._server.server_address[1]
            self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                            name=f"ollama-emulator-{self._port}", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._stopped.set()
        with self._cond:
            self._cond.notify_all()
        server.close_connections()
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def __enter__(self) -> OllamaEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        if not self._port:
            raise RuntimeError("OllamaEmulator not started")
        return f"http://127.0.0.1:{self._port}"

    # --- scripting and records
    def enqueue(self, *behaviours: Behaviour) -> None:
        with self._lock:
            self._queue.extend(behaviours)

    @property
    def queued(self) -> int:
        """Scripted behaviours not yet consumed."""
        with self._lock:
            return len(self._queue)

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def generation_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path in GENERATION_PATHS]

    def clear(self) -> None:
        """Forget recorded requests, scripted behaviours and peaks."""
        with self._lock:
            self._requests.clear()
            self._queue.clear()
            self.max_active, self.max_processing = self.active, self.processing

    # --- used by the handler
    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _next_behaviour(self) -> Behaviour | None:
        with self._lock:
            return self._queue.popleft() if self._queue else self.default_behaviour

    def _capabilities(self, name: Any) -> list[str] | None:
        if not isinstance(name, str):
            return None
        if name not in self.models and ":" not in name:
            name += ":latest"
        return self.models.get(name)

    def _wait(self, seconds: float | None) -> bool:
        """Sleep, waking early on stop. True when stopped."""
        return self._stopped.wait(seconds)

    def _count_active(self, delta: int) -> None:
        with self._lock:
            self.active += delta
            self.max_active = max(self.max_active, self.active)

    def _acquire(self) -> bool:
        with self._cond:
            while self.parallel is not None and self.processing >= self.parallel:
                if self._stopped.is_set():
                    return False
                self._cond.wait(0.05)
            if self._stopped.is_set():
                return False
            self.processing += 1
            self.max_processing = max(self.max_processing, self.processing)
            return True

    def _release(self) -> None:
        with self._cond:
            self.processing -= 1
            self._cond.notify_all()
