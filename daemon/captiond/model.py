"""The only code that speaks HTTP: ask an Ollama or OpenAI-compatible server to describe an image.

httpx errors never leave this module: they become ServerUnreachable, TransientModelError,
AnswerError or a ModelSetupError. Transient failures (connection refused or reset, timeouts,
429, 5xx, a stream cut before its end) are retried here with exponential backoff and jitter,
honouring Retry-After, bounded in attempts and in total time. Every request is bounded: the
answer's length (num_predict / max_tokens), the whole request's duration (a deadline checked
while reading, not only a per-read timeout) and the answer's size in bytes.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import email.utils
import json
import logging
import random
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, stop_after_delay

from .config import DaemonConfig, Endpoint, ModelConfig, RetryPolicy
from .endpoints import AllEndpointsDown, EndpointPool, EndpointState
from .errors import (
    AnswerError,
    ModelCannotSee,
    ModelNotFound,
    ModelSetupError,
    ServerUnreachable,
    TransientModelError,
)
from .responses import is_responses_uri, parse_responses, responses_body

log = logging.getLogger(__name__)

# Nobody answers at the address: after retries this stops a run instead of failing every file.
_UNREACHABLE = (httpx.ConnectError, httpx.ConnectTimeout, httpx.UnsupportedProtocol, httpx.ProxyError)

OPENAI_OPTIONS = {"temperature": "temperature", "top_p": "top_p", "seed": "seed", "stop": "stop",
                  "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty",
                  "num_predict": "max_tokens"}
# The runner died while answering: transient once, but an image that does it again is poison.
# Ollama's own figures on its final answer line (nanoseconds and token counts); any may be missing.
FIGURES = ("eval_count", "eval_duration", "prompt_eval_count", "prompt_eval_duration", "load_duration",
           "total_duration")
RUNNER_CRASHES = ("runner process has terminated", "runner has unexpectedly stopped", "runner process no longer")
# Ollama answers these with HTTP 500 although no retry can help.
PERMANENT_SERVER_ERRORS = ("requires more system memory", "unknown model architecture", "does not support")


@dataclass(frozen=True)
class Answer:
    """What the model said about one image."""

    text: str
    thinking: str = ""
    done_reason: str = ""
    seconds: float = 0.0
    figures: Mapping[str, float] = dataclasses.field(default_factory=dict)  # Ollama's FIGURES it sent

    @property
    def best_text(self) -> str:
        """Return the answer text, or the thinking when the model put everything there."""
        return self.text if self.text.strip() else self.thinking


class _ConnectionFailed(TransientModelError):
    """Nobody answered at the address (refused, reset before any answer, DNS, connect timeout)."""


class _Refused(TransientModelError):
    """One endpoint refused the connection (another one may answer)."""

    def __init__(self, reason: str, state: EndpointState) -> None:
        super().__init__(reason)
        self.state = state


class ModelClient:
    """Talks to the server(s) of one model; thread-safe, one connection pool, requests spread over endpoints."""

    def __init__(self, model: ModelConfig, daemon: DaemonConfig,
                 on_answer: Callable[[str, float], None] | None = None, pool: EndpointPool | None = None) -> None:
        self.model = model
        self.retry = daemon.retry
        self.deadline = daemon.timeout
        self.max_answer_bytes = daemon.max_answer_bytes
        # Models on the same servers share one pool, so together they never exceed the servers' slots.
        self.pool = pool or EndpointPool(model.service.all_endpoints(), daemon.parallel, daemon.retry.delay,
                                         daemon.retry.max_delay)
        self.on_answer = on_answer
        # Called with the endpoint's name and each answer (health.py keeps throughput from its figures).
        self.on_figures: Callable[[str, Answer], None] | None = None
        # Ollama's keep_alive for the next request (None: the server's default), e.g. "1h" while work waits.
        self.keep_alive: Callable[[], str | float | None] | None = None
        capacity = self.pool.capacity
        self._http = httpx.Client(
            headers={"User-Agent": "captiond"},
            timeout=httpx.Timeout(connect=10.0, read=daemon.timeout, write=30.0, pool=None),
            limits=httpx.Limits(max_connections=capacity * 2 + 4, max_keepalive_connections=capacity + 2),
        )
        self.openai = model.service.request_format == "openai"
        self.responses = self.openai and is_responses_uri(model.service.uri)  # OpenAI's Responses API
        self._closed = False

    def close(self) -> None:
        """Close the connection pool; requests under way fail as transient and are not retried."""
        self._closed = True
        self._http.close()

    @property
    def uri(self) -> str:
        """Return the endpoint(s) with secrets redacted, for messages."""
        return self.model.service.redacted_uri()

    @property
    def capacity(self) -> int:
        """Return how many requests may be in flight at once (the sum of the endpoints' Parallel)."""
        return self.pool.capacity

    def check(self, retry: bool = True) -> None:
        """Make sure a server is up and has the model, which can see; raise a ModelSetupError if none is usable.

        Endpoints that fail the check are set aside (and tried again later) while another one works.
        """
        errors: list[ModelSetupError] = []
        for state in self.pool.states:
            problem = self._check_endpoint(state.endpoint, retry)
            if problem is None:
                self.pool.succeeded(state)
            else:
                errors.append(problem)
                self.pool.failed(state, str(problem), set_aside=True)
        if len(errors) == len(self.pool.states):
            raise errors[0]
        for problem in errors:
            log.warning("%s", problem)

    def _check_endpoint(self, endpoint: Endpoint, retry: bool) -> ModelSetupError | None:
        """Return why an endpoint cannot serve the model, or None when it can."""
        try:
            if retry:
                self._with_retries(lambda: self._check_once(endpoint))
            else:
                self._check_once(endpoint)
        except ModelSetupError as error:
            return error
        except _ConnectionFailed as exc:
            return ServerUnreachable(f"cannot reach the model server at {endpoint.redacted_uri()}: {exc.reason}")
        except TransientModelError as exc:
            return ServerUnreachable(f"the model server at {endpoint.redacted_uri()} keeps failing: {exc.reason}")
        return None

    def describe(self, jpeg: bytes, prompt: str, system: str, schema: dict[str, Any] | None = None,
                 subject: str = "") -> Answer:
        """Return the model's answer for one JPEG (as JSON following `schema` if given), retrying transient failures.

        `subject` names the photo in log lines about retries.
        """
        if self.responses:
            body = responses_body(self.model, jpeg, prompt, system, schema)
        else:
            body = (self._openai_body(jpeg, prompt, system, schema) if self.openai
                    else self._ollama_body(jpeg, prompt, system, schema))
        keep_alive = None if self.openai or self.keep_alive is None else self.keep_alive()
        if keep_alive is not None:
            body["keep_alive"] = keep_alive
        try:
            answer: Answer = self._with_retries(lambda: self._generate_once(body), subject)
            return answer
        except _ConnectionFailed as exc:
            raise ServerUnreachable(f"the model server at {self.uri} stopped answering: {exc.reason}") from exc

    def figures(self) -> list[dict[str, object]]:
        """Return requests, errors and mean seconds per endpoint."""
        return self.pool.figures()

    def loaded_models(self) -> list[tuple[str, list[dict[str, Any]]]]:
        """Return each Ollama endpoint's /api/ps list of loaded models (endpoints that do not answer are left out)."""
        found: list[tuple[str, list[dict[str, Any]]]] = []
        for state in [] if self.openai else self.pool.states:
            try:
                response = self._request("GET", f"{state.endpoint.base_url()}/api/ps", None, state.endpoint)
                models = response.json().get("models") if response.status_code == 200 else None
            except (TransientModelError, ValueError, AttributeError):
                continue
            if isinstance(models, list):
                found.append((state.name, [model for model in models if isinstance(model, dict)]))
        return found

    # -- retries -------------------------------------------------------------------------------

    def _with_retries(self, call: Any, subject: str = "") -> Any:
        crashes = 0

        def worth_retrying(error: BaseException) -> bool:
            # A runner crash is retried once: the same image crashing it again is poison.
            nonlocal crashes
            if not isinstance(error, TransientModelError) or self._closed:
                return False
            crashes += error.crashed
            return crashes < 2

        retrying = Retrying(
            retry=retry_if_exception(worth_retrying),
            stop=stop_after_attempt(self.retry.attempts) | stop_after_delay(self.retry.total),
            wait=_Backoff(self.retry),
            before_sleep=lambda state: log.warning(
                "%s%s: %s; trying again in %.1fs", f"{subject}: " if subject else "", self.uri,
                state.outcome.exception() if state.outcome else "",
                state.next_action.sleep if state.next_action else 0),
            reraise=True,
        )
        return retrying(call)

    # -- requests ------------------------------------------------------------------------------

    def _headers(self, endpoint: Endpoint) -> dict[str, str]:
        key = endpoint.key or self.model.service.key
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        if self.openai:  # PhotoPrism's Service.Org / Project
            headers.update({name: value for name, value in (("OpenAI-Organization", self.model.service.org),
                                                             ("OpenAI-Project", self.model.service.project)) if value})
        return headers

    def _check_once(self, endpoint: Endpoint) -> None:
        base = endpoint.base_url()
        if self.openai:
            response = self._request("GET", f"{base}/v1/models", None, endpoint)
            if response.status_code in (401, 403):
                raise ModelSetupError(f"{endpoint.redacted_uri()} refused the API key (HTTP {response.status_code}): "
                                      "set Service.Key (or OPENAI_API_KEY)")
            return
        response = self._request("POST", f"{base}/api/show", {"model": self.model.model_id}, endpoint)
        if response.status_code == 404:
            raise ModelNotFound(f"model {self.model.model_id} not found on {base}: "
                                f"run `ollama pull {self.model.model_id}`")
        if response.status_code in (401, 403):
            raise ModelSetupError(f"{endpoint.redacted_uri()} refused the API key (HTTP {response.status_code}): "
                                  "set Service.Key (or OLLAMA_API_KEY)")
        if response.status_code != 200:
            self._raise_for_status(response.status_code, response.content, response.headers, endpoint)
        try:
            info = response.json()
        except ValueError:
            info = {}
        if not _can_see(info):
            capabilities = ", ".join(info.get("capabilities") or []) or "unknown"
            raise ModelCannotSee(f"model {self.model.model_id} on {base} cannot see images "
                                 f"(capabilities: {capabilities}): choose a vision model such as qwen2.5vl:3b")

    def _request(self, method: str, url: str, body: dict[str, Any] | None, endpoint: Endpoint) -> httpx.Response:
        with _translated_errors(self.deadline):
            return self._http.request(method, url, json=body, headers=self._headers(endpoint))

    def _generate_once(self, body: dict[str, Any]) -> Answer:
        # A server that refuses connections costs no attempt while another endpoint is up: go there.
        for _ in range(len(self.pool.states)):
            try:
                return self._generate_on_one(body)
            except _Refused as refused:
                if not self.pool.others_healthy(refused.state):
                    raise _ConnectionFailed(refused.reason) from refused
        raise _ConnectionFailed("no endpoint answers")

    def _generate_on_one(self, body: dict[str, Any]) -> Answer:
        try:
            with self.pool.slot(deadline=time.monotonic() + self.retry.total) as state:
                started = time.monotonic()
                try:
                    answer = self._post(state.endpoint, body, started + self.deadline)
                except _ConnectionFailed as error:
                    self.pool.failed(state, error.reason, set_aside=True)
                    raise _Refused(error.reason, state) from error
                except TransientModelError as error:
                    busy = error.reason.startswith(("HTTP 503", "HTTP 429"))
                    self.pool.failed(state, error.reason, set_aside=busy, delay=error.retry_after)
                    raise
                except Exception as error:
                    self.pool.failed(state, str(error), set_aside=False)
                    raise
                seconds = time.monotonic() - started
                self.pool.succeeded(state, seconds)
                answer = dataclasses.replace(answer, seconds=seconds)
                if self.on_answer is not None:
                    self.on_answer(state.name, seconds)
                if self.on_figures is not None:
                    self.on_figures(state.name, answer)
        except AllEndpointsDown as exc:
            raise _ConnectionFailed("no endpoint answers") from exc
        return answer

    def _post(self, endpoint: Endpoint, body: dict[str, Any], deadline: float) -> Answer:
        with (_translated_errors(self.deadline),
              self._http.stream("POST", endpoint.uri, json=body, headers=self._headers(endpoint)) as response):
            if response.status_code != 200:
                content = b"".join(self._read_bounded(response, deadline))
                self._raise_for_status(response.status_code, content, response.headers, endpoint)
            chunks = self._read_bounded(response, deadline)
            if body.get("stream"):
                return _parse_sse(chunks) if self.openai else _parse_ndjson(chunks)
            if self.responses:
                document = _json_object(b"".join(chunks))
                if document.get("error"):
                    raise _stream_error(_error_message(json.dumps(document).encode()))
                return Answer(*parse_responses(document))
            return _parse_single(b"".join(chunks), self.openai)

    def _read_bounded(self, response: httpx.Response, deadline: float) -> Iterator[bytes]:
        received = 0
        for chunk in response.iter_raw():
            received += len(chunk)
            if received > self.max_answer_bytes:
                raise TransientModelError(f"the answer exceeded {self.max_answer_bytes} bytes")
            if time.monotonic() > deadline:
                raise TransientModelError(f"no complete answer within {self.deadline:.0f}s")
            yield chunk

    def _raise_for_status(self, status: int, content: bytes, headers: httpx.Headers, endpoint: Endpoint) -> None:
        message = _error_message(content) or f"HTTP {status}"
        where = endpoint.redacted_uri()
        if status == 404:
            raise ModelNotFound(f"model {self.model.model_id} not found on {where}: {message}"
                                + ("" if self.openai else f" (run `ollama pull {self.model.model_id}`)"))
        if status in (401, 403):
            raise ModelSetupError(f"{where} refused the request (HTTP {status}): {message}: check Service.Key")
        if status == 429 or status >= 500:
            if any(text in message for text in PERMANENT_SERVER_ERRORS):
                raise ModelSetupError(f"{where} cannot run {self.model.model_id}: {message}")
            raise TransientModelError(f"HTTP {status}: {message}", retry_after=_retry_after(headers),
                                      crashed=_is_crash(message))
        raise AnswerError(f"the model server refused the image (HTTP {status}): {message}")

    # -- request bodies ------------------------------------------------------------------------

    def _ollama_body(self, jpeg: bytes, prompt: str, system: str, schema: dict[str, Any] | None) -> dict[str, Any]:
        image = base64.b64encode(jpeg).decode("ascii")
        body: dict[str, Any] = {"model": self.model.model_id, "stream": self.model.service.stream,
                                "options": dict(self.model.options)}
        think = self.model.service.think
        body["think"] = think == "true" if think in ("true", "false") else think
        if schema is not None and self.model.format in ("", "json"):
            body["format"] = schema
        elif self.model.format:
            body["format"] = self.model.format
        if self.model.service.uri.rstrip("/").endswith("/api/chat"):
            messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
            messages.append({"role": "user", "content": prompt, "images": [image]})
            body["messages"] = messages
        else:
            body.update(prompt=prompt, images=[image])
            if system:
                body["system"] = system
        return body

    def _openai_body(self, jpeg: bytes, prompt: str, system: str, schema: dict[str, Any] | None) -> dict[str, Any]:
        url = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")
        messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": [{"type": "text", "text": prompt},
                                                     {"type": "image_url", "image_url": {"url": url}}]})
        body: dict[str, Any] = {"model": self.model.model_id, "messages": messages,
                                "stream": self.model.service.stream}
        for name, value in self.model.options.items():
            if name in OPENAI_OPTIONS:
                body[OPENAI_OPTIONS[name]] = value
        body.setdefault("top_p", 0.9)
        if schema is not None:
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "labels", "schema": schema, "strict": True}}
        return body


class _Backoff:
    """tenacity wait: Retry-After when the server gave one, else exponential backoff with full jitter."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy

    def __call__(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            # The server's word is the minimum wait; only the whole retry budget bounds it.
            return float(min(retry_after, self.policy.total))
        ceiling = min(self.policy.max_delay, self.policy.delay * 2 ** (state.attempt_number - 1))
        return random.uniform(ceiling / 2, ceiling)


@contextmanager
def _translated_errors(deadline: float) -> Iterator[None]:
    """Turn httpx's exceptions into ours at the boundary: they never leave this module."""
    try:
        yield
    except _UNREACHABLE as exc:
        raise _ConnectionFailed(_describe_connection_error(exc)) from exc
    except httpx.TimeoutException as exc:
        raise TransientModelError(f"no answer within {deadline:.0f}s ({type(exc).__name__})") from exc
    except httpx.HTTPError as exc:
        raise TransientModelError(f"the connection broke: {type(exc).__name__}: {exc}") from exc
    except RuntimeError as exc:  # httpx: "the client has been closed" while stopping
        raise TransientModelError(f"stopped: {exc}") from exc


def _can_see(info: dict[str, Any]) -> bool:
    capabilities = info.get("capabilities")
    if isinstance(capabilities, list):
        return "vision" in capabilities
    families = (info.get("details") or {}).get("families") or []
    return bool(info.get("projector_info")) or any(family in ("clip", "mllama") for family in families)


def _describe_connection_error(exc: httpx.HTTPError) -> str:
    text = str(exc) or type(exc).__name__
    if "Connection refused" in text or "Errno 111" in text:
        return "connection refused"
    return text


def _error_message(content: bytes) -> str:
    """Return the error text of an Ollama ({"error": "..."}) or OpenAI ({"error": {"message"}}) body."""
    try:
        document = json.loads(content)
    except ValueError:
        return content.decode("utf-8", "replace").strip()[:300]
    error = document.get("error") if isinstance(document, dict) else None
    if isinstance(error, dict):
        return str(error.get("message") or error)[:300]
    if error is not None:
        return str(error)[:300]
    if isinstance(document, dict) and document.get("message"):
        return str(document["message"])[:300]
    return content.decode("utf-8", "replace").strip()[:300]


def _retry_after(headers: httpx.Headers) -> float | None:
    value = headers.get("retry-after")
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    buffer = b""
    for chunk in chunks:
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        yield from (line.strip() for line in complete if line.strip())
    if buffer.strip():
        yield buffer.strip()


def _is_crash(message: str) -> bool:
    return any(text in message for text in RUNNER_CRASHES)


def _stream_error(message: str) -> Exception:
    """Return the error for a failure the server reported after its answer began (HTTP 200): the server's fault."""
    if any(text in message for text in PERMANENT_SERVER_ERRORS):
        return AnswerError(f"the model failed while answering: {message}")
    return TransientModelError(f"the model failed while answering: {message}", crashed=_is_crash(message))


def _json_object(data: bytes) -> dict[str, Any]:
    """Return a JSON object the server sent; anything else is a transient server fault."""
    try:
        document = json.loads(data)
    except ValueError as exc:
        raise TransientModelError(f"the server sent something that is not JSON: {data[:80]!r}") from exc
    if not isinstance(document, dict):
        raise TransientModelError("the server sent an unexpected answer")
    return document


def _drain(chunks: Iterator[bytes]) -> None:
    """Read what is left of a finished stream, so its connection goes back to the pool for the next request."""
    with contextlib.suppress(TransientModelError):  # the answer is complete; the connection is merely not reused
        for _ in chunks:
            pass


def _parse_ndjson(chunks: Iterator[bytes]) -> Answer:
    """Return the answer assembled from Ollama's NDJSON stream; a stream without `done` was cut short."""
    text: list[str] = []
    thinking: list[str] = []
    for line in _lines(chunks):
        part = _json_object(line)
        if part.get("error"):
            raise _stream_error(str(part["error"]))
        message: dict[str, Any] = part["message"] if isinstance(part.get("message"), dict) else part
        text.append(str(message.get("content", message.get("response", "")) or ""))
        thinking.append(str(message.get("thinking", "") or ""))
        if part.get("done"):
            _drain(chunks)
            return Answer("".join(text), "".join(thinking), str(part.get("done_reason", "")), figures=_figures(part))
    raise TransientModelError("the answer stream ended before it was done")


def _parse_sse(chunks: Iterator[bytes]) -> Answer:
    """Return the answer assembled from an OpenAI server-sent-event stream ending in `data: [DONE]`."""
    text: list[str] = []
    thinking: list[str] = []
    finish = ""
    for line in _lines(chunks):
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            _drain(chunks)
            return Answer("".join(text), "".join(thinking), finish)
        event = _json_object(data)
        if event.get("error"):
            raise _stream_error(_error_message(data))
        for choice in event.get("choices") or []:
            delta = choice.get("delta") or {}
            text.append(str(delta.get("content") or ""))
            thinking.append(str(delta.get("reasoning_content") or delta.get("reasoning") or ""))
            finish = str(choice.get("finish_reason") or finish)
    raise TransientModelError("the answer stream ended before [DONE]")


def _parse_single(content: bytes, openai: bool) -> Answer:
    """Return the answer of a non-streamed response."""
    document = _json_object(content)
    if document.get("error"):
        raise _stream_error(_error_message(content))
    if openai:
        choices = document.get("choices") or [{}]
        reply = choices[0].get("message") or {}
        return Answer(str(reply.get("content") or ""),
                      str(reply.get("reasoning_content") or reply.get("reasoning") or ""),
                      str(choices[0].get("finish_reason") or ""))
    message: dict[str, Any] = document["message"] if isinstance(document.get("message"), dict) else document
    return Answer(str(message.get("content", message.get("response", "")) or ""),
                  str(message.get("thinking", "") or ""), str(document.get("done_reason", "")),
                  figures=_figures(document))


def _figures(part: dict[str, Any]) -> dict[str, float]:
    """Return the figures Ollama put on its final answer (numbers only; the rest is ignored)."""
    return {name: float(part[name]) for name in FIGURES
            if isinstance(part.get(name), int | float) and not isinstance(part.get(name), bool)}
