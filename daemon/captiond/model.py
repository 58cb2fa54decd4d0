"""The only code that speaks HTTP: ask an Ollama or OpenAI-compatible server to describe an image.

httpx errors never leave this module. Every answer is classified, by its status code and its text
together (servers say the same thing with 400, 404 or 500), as one of:

- the server's setup (a ModelSetupError: no such model, no vision, no thinking, a context too small for
  the image, a wrong key or address): `run` stops with exit 3 and `watch` pauses and probes again; no
  photo is charged for it;
- the photo's fault (an AnswerError: the server refused this image, or answered nothing usable);
- transient (a TransientModelError: connection refused or reset, timeouts, 408, 429, 5xx, a stream cut
  before its end), retried here with exponential backoff and jitter, honouring Retry-After, bounded in
  attempts and in total time.

Every request is bounded: the answer's length (num_predict / max_tokens), the whole exchange's duration
(a deadline on every socket operation, headers included: transport.py) and the answer's size in bytes.
"""

from __future__ import annotations

import base64
import dataclasses
import email.utils
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, stop_after_delay

from . import transport
from .backoff import Backoff
from .config import DaemonConfig, Endpoint, ModelConfig, RetryPolicy, Think, is_responses_uri
from .endpoints import EndpointPool, EndpointState
from .errors import (
    AllEndpointsDown,
    AnswerError,
    CaptiondError,
    ContextTooSmall,
    ModelCannotSee,
    ModelCannotThink,
    ModelNotFound,
    ModelSetupError,
    ServerUnreachable,
    TransientModelError,
)
from .responses import parse_responses, responses_body

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

# What a server's error text means whatever its status code, matched against the message, type and code of
# the error (llama.cpp, Ollama, vLLM, LM Studio, OpenAI).
NO_SUCH_MODEL = re.compile(r"model\b[^\n]{0,200}?\b(not found|does not exist|is not available)|model is required"
                           r"|model_not_found|no such model|try pulling it|pull model manifest", re.IGNORECASE)
CANNOT_SEE = re.compile(r"image input is not supported|does not support (images|image input|vision|multimodal)"
                        r"|missing data required for image input|not a multimodal model"
                        r"|(vision|multimodal) is not supported", re.IGNORECASE)
CANNOT_THINK = re.compile(r"does not support thinking", re.IGNORECASE)
CONTEXT_TOO_SMALL = re.compile(r"exceed_context_size|exceeds? the (available )?context|maximum context length"
                               r"|context (length|size|window) (exceeded|is too small)|prompt is too long"
                               r"|input is too long", re.IGNORECASE)
CANNOT_RUN = re.compile(r"requires more system memory|unknown model architecture"
                        r"|does not support (generate|chat|completion)", re.IGNORECASE)

CHECK_SECONDS = 30.0  # a capability check is a small answer: no need to wait the whole request deadline
CHECK_BYTES = 8_000_000  # /api/show carries the model's license and template; 8 MB is far beyond any real one


@dataclass(frozen=True)
class Answer:
    """What the model said about one image, and which model said it (as the server names it)."""

    text: str
    thinking: str = ""
    done_reason: str = ""
    seconds: float = 0.0
    figures: Mapping[str, float] = dataclasses.field(default_factory=dict)  # Ollama's FIGURES it sent
    model: str = ""

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


class _Loading(Exception):
    """The server answers 503 while it loads the model: wait, it is not down."""


class _StaleConnection(Exception):
    """A kept-alive connection the server had closed: the request never reached it (retried at once, for free)."""


class _ServerSaid(Exception):
    """An error the server reported inside an answer that began as HTTP 200."""


class AnswerMetrics(Protocol):
    """Where a client records each answer's latency (health.Metrics), handed to it when it is made."""

    def observe_answer(self, endpoint: str, seconds: float) -> None:
        """Record one answer's seconds for its endpoint."""


class ModelClient:
    """Talks to the server(s) of one model; thread-safe, one connection pool, requests spread over endpoints."""

    def __init__(self, model: ModelConfig, daemon: DaemonConfig, pool: EndpointPool | None = None,
                 metrics: AnswerMetrics | None = None) -> None:
        self.model = model
        self.retry = daemon.retry
        self.deadline = daemon.timeout
        self.max_answer_bytes = daemon.max_answer_bytes
        # Models on the same servers share one pool, so together they never exceed the servers' slots.
        self.pool = pool or EndpointPool(model.service.all_endpoints(), daemon.parallel, daemon.retry.delay,
                                         daemon.retry.max_delay)
        self.metrics = metrics  # each answer's latency, per endpoint (the daemon's /metrics)
        # Called with the endpoint's name and each answer (health.py keeps throughput from its figures).
        self.on_figures: Callable[[str, Answer], None] | None = None
        # Ollama's keep_alive for the next request (None: the server's default), e.g. "1h" while work waits.
        self.keep_alive: Callable[[], str | float | None] | None = None
        capacity = self.pool.capacity
        self._http = transport.client(
            httpx.Timeout(connect=10.0, read=daemon.timeout, write=30.0, pool=None),
            httpx.Limits(max_connections=capacity * 2 + 4, max_keepalive_connections=capacity + 2))
        self.openai = model.service.request_format == "openai"
        self.responses = self.openai and is_responses_uri(model.service.uri)  # OpenAI's Responses API
        self.key_variable = "OPENAI_API_KEY" if self.openai else "OLLAMA_API_KEY"
        # Whether every checked server says the model can think (Ollama's `thinking` capability); None: unknown.
        self.can_think: bool | None = None
        self._answered = threading.local()
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

    def answering_model(self) -> str:
        """Return the model that gave this thread's latest answer, as the server named it (else the configured one)."""
        return str(getattr(self._answered, "model", "") or self.model.model_id)

    def check(self, retry: bool = True) -> None:
        """Make sure a server is up and has the model, which can see; raise a ModelSetupError if none is usable.

        A server still loading its model (503) is waited for, up to Retry.Total, when `retry` is set.
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
        where = endpoint.redacted_uri()
        started = time.monotonic()
        while True:
            try:
                if retry:
                    self._with_retries(lambda: self._check_once(endpoint))
                else:
                    self._check_once(endpoint)
                return None
            except _Loading as loading:
                if not retry or time.monotonic() - started > self.retry.total:
                    return ModelSetupError(f"the model server at {where} is still loading the model ({loading})")
                log.info("the model server at %s is loading the model (%s); waiting", where, loading)
                time.sleep(min(5.0, max(0.5, self.retry.delay)))
            except ModelSetupError as error:
                return error
            except _ConnectionFailed as exc:
                return ServerUnreachable(f"cannot reach the model server at {where}: {exc.reason}")
            except TransientModelError as exc:
                return ServerUnreachable(f"the model server at {where} keeps failing: {exc.reason}")

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
        except _ConnectionFailed as exc:
            raise ServerUnreachable(f"the model server at {self.uri} stopped answering: {exc.reason}") from exc
        self._answered.model = answer.model
        return answer

    def figures(self) -> list[dict[str, object]]:
        """Return requests, errors and mean seconds per endpoint."""
        return self.pool.figures()

    def loaded_models(self) -> list[tuple[str, list[dict[str, Any]]]]:
        """Return each Ollama endpoint's /api/ps list of loaded models (endpoints that do not answer are left out)."""
        found: list[tuple[str, list[dict[str, Any]]]] = []
        for state in [] if self.openai else self.pool.states:
            try:
                status, _, content = self._fetch("GET", f"{state.endpoint.base_url()}/api/ps", None, state.endpoint)
            except CaptiondError:
                continue
            models = _json_or_empty(content).get("models") if status == 200 else None
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

    # -- the capability check ------------------------------------------------------------------

    def _headers(self, endpoint: Endpoint) -> dict[str, str]:
        key = endpoint.key or self.model.service.key
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        if self.openai:  # PhotoPrism's Service.Org / Project
            headers.update({name: value for name, value in (("OpenAI-Organization", self.model.service.org),
                                                             ("OpenAI-Project", self.model.service.project)) if value})
        return headers

    def _check_once(self, endpoint: Endpoint) -> None:
        if self.openai:
            self._check_openai(endpoint)
        else:
            self._check_ollama(endpoint)

    def _check_ollama(self, endpoint: Endpoint) -> None:
        """Ask Ollama's /api/show whether the model exists, can see and can think."""
        base = endpoint.base_url()
        status, headers, content = self._fetch("POST", f"{base}/api/show", {"model": self.model.model_id}, endpoint)
        if status == 503:
            raise _Loading(_error_message(content) or "HTTP 503")
        if status != 200:
            raise self._error_for(status, content, headers, endpoint, checking=True)
        info = _json_or_empty(content)
        capabilities = info.get("capabilities")
        if not _can_see(info):
            listed = ", ".join(map(str, capabilities)) if isinstance(capabilities, list) and capabilities else "unknown"
            raise ModelCannotSee(f"model {self.model.model_id} on {base} cannot see images "
                                 f"(capabilities: {listed}): choose a vision model such as qwen2.5vl:3b")
        if isinstance(capabilities, list):
            thinks = "thinking" in capabilities
            self.can_think = thinks if self.can_think is None else self.can_think and thinks
            if not thinks and self.model.service.think is not Think.FALSE:
                log.warning("model %s on %s cannot think: Service.Think: %s is not sent", self.model.model_id,
                            base, self.model.service.think)

    def _check_openai(self, endpoint: Endpoint) -> None:
        """Ask an OpenAI-compatible server's /v1/models (and llama.cpp's /props) whether the model exists and can see.

        Servers that have neither answer 404 or 405: then there is nothing to learn before the first request.
        """
        status, headers, content = self._fetch("GET", _models_url(endpoint), None, endpoint)
        if status == 503:
            raise _Loading(_error_message(content) or "HTTP 503")
        if status in (404, 405, 501):
            return
        if status != 200:
            raise self._error_for(status, content, headers, endpoint, checking=True)
        listed = [entry for entry in _json_or_empty(content).get("data") or [] if isinstance(entry, dict)]
        router = any(isinstance(entry.get("status"), dict) for entry in listed)
        entry = self._listed_model(listed, router, endpoint)
        modalities = (entry.get("architecture") or {}).get("input_modalities") if entry else None
        if isinstance(modalities, list) and "image" not in modalities:
            raise self._cannot_see(endpoint, f"its input modalities are {', '.join(map(str, modalities))}")
        if not router:
            self._check_props(endpoint)

    def _listed_model(self, listed: list[dict[str, Any]], router: bool, endpoint: Endpoint) -> dict[str, Any] | None:
        """Return the /v1/models entry of our model; raise ModelNotFound when a server that picks models lacks it."""
        wanted = _with_tag(self.model.model_id)
        for entry in listed:
            aliases = entry.get("aliases")
            names = [entry.get("id"), *(aliases if isinstance(aliases, list) else [])]
            if wanted in (_with_tag(str(name)) for name in names):
                return entry
        if len(listed) == 1 and not router:
            return listed[0]  # a single-model server (llama-server, vLLM with one model) answers with its model
        if listed:
            served = ", ".join(str(entry.get("id")) for entry in listed[:10])
            raise ModelNotFound(f"model {self.model.model_id} not found on {endpoint.redacted_uri()} "
                                f"(it has: {served}): set Model to one of them")
        return None

    def _check_props(self, endpoint: Endpoint) -> None:
        """Read llama.cpp's /props: `modalities.vision` false means no projector was loaded."""
        status, _, content = self._fetch("GET", f"{endpoint.base_url()}/props", None, endpoint)
        if status == 503:
            raise _Loading(_error_message(content) or "HTTP 503")
        if status != 200:
            return  # not llama.cpp: nothing more to learn
        modalities = _json_or_empty(content).get("modalities")
        if isinstance(modalities, dict) and modalities.get("vision") is False:
            raise self._cannot_see(endpoint, "it was started without a vision projector")

    def _cannot_see(self, endpoint: Endpoint, why: str) -> ModelCannotSee:
        return ModelCannotSee(f"model {self.model.model_id} on {endpoint.redacted_uri()} cannot see images ({why}): "
                              "start the server with the model's vision projector (llama-server --mmproj) "
                              "or choose a vision model")

    def _fetch(self, method: str, url: str, body: dict[str, Any] | None,
               endpoint: Endpoint) -> tuple[int, httpx.Headers, bytes]:
        """Return status, headers and body of a small request (a check), bounded in time and size."""
        seconds = min(self.deadline, CHECK_SECONDS)
        deadline = time.monotonic() + seconds
        with (_translated_errors(seconds), transport.deadline(deadline),
              self._http.stream(method, url, json=body, headers=self._headers(endpoint)) as response):
            content = b"".join(self._read(response, deadline, CHECK_BYTES))
            return response.status_code, response.headers, content

    # -- generation ----------------------------------------------------------------------------

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
            # Waiting for a free slot of a healthy server has no limit of its own: every request holding one
            # ends by its deadline. Only endpoints that are all set aside for longer than Retry.Total fail here.
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
                except ModelSetupError as error:
                    self.pool.failed(state, str(error), set_aside=True)
                    raise
                except Exception as error:
                    self.pool.failed(state, str(error), set_aside=False)
                    raise
                seconds = time.monotonic() - started
                self.pool.succeeded(state, seconds)
                answer = dataclasses.replace(answer, seconds=seconds)
                if self.metrics is not None:
                    self.metrics.observe_answer(state.name, seconds)
                if self.on_figures is not None:
                    self.on_figures(state.name, answer)
        except AllEndpointsDown as exc:
            raise _ConnectionFailed("no endpoint answers") from exc
        return answer

    def _post(self, endpoint: Endpoint, body: dict[str, Any], deadline: float) -> Answer:
        """Send one request; a kept-alive connection the server had already closed is replaced once, for free."""
        try:
            return self._post_once(endpoint, body, deadline)
        except _StaleConnection as stale:
            log.debug("%s closed a kept-alive connection (%s): sending again", endpoint.redacted_uri(), stale)
        try:
            return self._post_once(endpoint, body, deadline)
        except _StaleConnection as stale:
            raise TransientModelError(f"the connection broke: {stale}") from stale

    def _post_once(self, endpoint: Endpoint, body: dict[str, Any], deadline: float) -> Answer:
        request = self._http.build_request("POST", endpoint.uri, json=body, headers=self._headers(endpoint))
        with _translated_errors(self.deadline), transport.deadline(deadline):
            try:
                response = self._http.send(request, stream=True)
            except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
                raise _StaleConnection(str(exc) or type(exc).__name__) from exc
            try:
                return self._answer(response, body, endpoint, deadline)
            finally:
                response.close()

    def _answer(self, response: httpx.Response, body: dict[str, Any], endpoint: Endpoint, deadline: float) -> Answer:
        """Return the answer in a response, whatever its shape; raise the error it carries."""
        if response.status_code != 200:
            content = b"".join(self._read(response, deadline, self.max_answer_bytes))
            raise self._error_for(response.status_code, content, response.headers, endpoint)
        chunks = self._read(response, deadline, self.max_answer_bytes)
        content_type = response.headers.get("content-type", "").lower()
        # Several servers answer a request for a stream with one plain JSON body: take it as it is.
        streamed = body.get("stream") and not ("json" in content_type and "ndjson" not in content_type)
        try:
            if streamed:
                return _parse_sse(chunks) if self.openai else _parse_ndjson(chunks)
            if self.responses:
                document = _json_object(b"".join(chunks))
                if document.get("error"):
                    raise _ServerSaid(_error_message(json.dumps(document).encode()))
                return Answer(*parse_responses(document))
            return _parse_single(b"".join(chunks), self.openai)
        except _ServerSaid as said:
            raise self._stream_error(str(said), endpoint) from None

    def _read(self, response: httpx.Response, deadline: float, limit: int) -> Iterator[bytes]:
        """Yield a response's body; raise our errors when it is too large, too slow or oddly encoded."""
        try:
            for chunk in transport.read_bounded(response, limit):
                if time.monotonic() > deadline:
                    raise TransientModelError(f"no complete answer within {self.deadline:.0f}s")
                yield chunk
        except transport.TooLarge as exc:
            raise TransientModelError(str(exc)) from exc
        except transport.UnknownEncoding as exc:
            raise ModelSetupError(f"the model server's answer cannot be read: {exc}") from exc

    # -- what an answer means ------------------------------------------------------------------

    def _error_for(self, status: int, content: bytes, headers: httpx.Headers, endpoint: Endpoint,
                   checking: bool = False) -> CaptiondError:
        """Return the error an unsuccessful answer means: the server's setup, the photo's fault, or transient."""
        message = _error_message(content) or f"HTTP {status}"
        where = endpoint.redacted_uri()
        setup = self._setup_problem(_error_text(content) or message, message, where)
        if setup is not None:
            return setup
        if status in (401, 403):
            return ModelSetupError(f"{where} refused the API key (HTTP {status}): {message}: "
                                   f"set Service.Key (or {self.key_variable})")
        if 300 <= status < 400:
            return ModelSetupError(f"{where} redirects (HTTP {status}) to {headers.get('location', 'elsewhere')}: "
                                   "set Service.Uri to the address it names")
        if status == 404:
            return ModelSetupError(f"{where} answered 404 Not Found ({message}): check Service.Uri")
        if status in (405, 501):
            return ModelSetupError(f"{where} does not offer this API (HTTP {status}: {message}): check Service.Uri")
        if status == 413:
            return ModelSetupError(f"{where} refuses requests this large (HTTP 413: {message}): "
                                   "raise its request size limit or lower Resolution")
        if status in (408, 425, 429) or status >= 500 or 200 <= status < 300:
            return TransientModelError(f"HTTP {status}: {message}", retry_after=_retry_after(headers),
                                       crashed=_is_crash(message))
        if checking:
            return ModelSetupError(f"{where} refused the check (HTTP {status}): {message}")
        return AnswerError(f"the model server refused the image (HTTP {status}): {message}")

    def _stream_error(self, message: str, endpoint: Endpoint) -> CaptiondError:
        """Return the error for a failure the server reported after its answer began (HTTP 200)."""
        setup = self._setup_problem(message, message, endpoint.redacted_uri())
        if setup is not None:
            return setup
        return TransientModelError(f"the model failed while answering: {message}", crashed=_is_crash(message))

    def _setup_problem(self, text: str, message: str, where: str) -> ModelSetupError | None:
        """Return the setup problem an error text names (whatever the status code), or None."""
        model = self.model.model_id
        if CANNOT_SEE.search(text):
            return ModelCannotSee(f"model {model} on {where} cannot see images ({message}): start the server with "
                                  "the model's vision projector (llama-server --mmproj) or choose a vision model")
        if CANNOT_THINK.search(text):
            return ModelCannotThink(f"model {model} on {where} cannot think ({message}): set Service.Think: false")
        if CONTEXT_TOO_SMALL.search(text):
            return ContextTooSmall(f"the image does not fit into the context of {model} on {where} ({message}): "
                                   "give the server a larger context (llama-server -c, Options.NumCtx for Ollama) "
                                   "or lower Resolution")
        if CANNOT_RUN.search(text):
            return ModelSetupError(f"{where} cannot run {model}: {message}")
        if NO_SUCH_MODEL.search(text):
            if self.openai:
                return ModelNotFound(f"model {model} not found on {where}: {message}")
            return ModelNotFound(f"model {model} not found on {_base(where)}: run `ollama pull {model}` "
                                 f"(the server said: {message})")
        return None

    # -- request bodies ------------------------------------------------------------------------

    def _ollama_body(self, jpeg: bytes, prompt: str, system: str, schema: dict[str, Any] | None) -> dict[str, Any]:
        image = base64.b64encode(jpeg).decode("ascii")
        body: dict[str, Any] = {"model": self.model.model_id, "stream": self.model.service.stream,
                                "options": dict(self.model.options)}
        think = self.model.service.think
        # `think: false` is accepted by every model; asking a model that cannot think to think is a 400.
        if think is Think.FALSE or self.can_think is not False:
            body["think"] = think.request_value
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
        return Backoff(self.policy.delay, self.policy.max_delay, (0.5, 1.0)).delay(state.attempt_number - 1)


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
    details = info.get("details")
    families = (details.get("families") if isinstance(details, dict) else None) or []
    return bool(info.get("projector_info")) or any(family in ("clip", "mllama") for family in families)


def _models_url(endpoint: Endpoint) -> str:
    """Return the /v1/models address beside an OpenAI-compatible Uri (which may sit under a path prefix)."""
    uri = endpoint.uri.split("?", 1)[0].rstrip("/")
    if uri.endswith("/chat/completions"):
        return uri[: -len("/chat/completions")] + "/models"
    return f"{endpoint.base_url()}/v1/models"


def _with_tag(name: str) -> str:
    """Return an Ollama-style model name with its tag (`qwen2.5vl` is `qwen2.5vl:latest` there)."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def _base(uri: str) -> str:
    """Return scheme://host:port of a (redacted) Uri."""
    match = re.match(r"^(https?://[^/]+)", uri)
    return match.group(1) if match else uri


def _describe_connection_error(exc: httpx.HTTPError) -> str:
    text = str(exc) or type(exc).__name__
    if "Connection refused" in text or "Errno 111" in text:
        return "connection refused"
    return text


def _loads(content: bytes) -> Any:
    """Return parsed JSON; ValueError for anything that is not (also for nesting too deep to parse)."""
    try:
        return json.loads(content)
    except RecursionError as exc:
        raise ValueError("JSON nested too deeply") from exc


def _json_or_empty(content: bytes) -> dict[str, Any]:
    """Return a JSON object body, or {} when the body is anything else (capability checks are tolerant)."""
    try:
        document = _loads(content)
    except ValueError:
        return {}
    return document if isinstance(document, dict) else {}


def _error_message(content: bytes) -> str:
    """Return the error text of an Ollama ({"error": "..."}) or OpenAI ({"error": {"message"}}) body."""
    try:
        document = _loads(content)
    except ValueError:
        return _printable(content.decode("utf-8", "replace"))
    error = document.get("error") if isinstance(document, dict) else None
    if isinstance(error, dict):
        return _printable(str(error.get("message") or error))
    if error is not None:
        return _printable(str(error))
    if isinstance(document, dict) and document.get("message"):
        return _printable(str(document["message"]))
    return _printable(content.decode("utf-8", "replace"))


def _error_text(content: bytes) -> str:
    """Return the message, type and code of an error body together, for classifying it."""
    document = _json_or_empty(content)
    error = document.get("error")
    if isinstance(error, dict):
        return " ".join(str(error.get(key) or "") for key in ("message", "type", "code"))
    return _error_message(content)


def _printable(text: str) -> str:
    """Return a server's text on one line, at most 300 characters (it ends up in logs and the state database)."""
    return " ".join(text.split())[:300]


def _retry_after(headers: httpx.Headers) -> float | None:
    value = headers.get("retry-after")
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
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


def _json_object(data: bytes) -> dict[str, Any]:
    """Return a JSON object the server sent; anything else is a transient server fault."""
    try:
        document = _loads(data)
    except ValueError as exc:
        raise TransientModelError(f"the server sent something that is not JSON: {data[:80]!r}") from exc
    if not isinstance(document, dict):
        raise TransientModelError("the server sent an unexpected answer")
    return document


def _drain(chunks: Iterator[bytes]) -> None:
    """Read what is left of a finished stream, so its connection goes back to the pool for the next request."""
    try:
        for _ in chunks:
            pass
    except (CaptiondError, httpx.HTTPError):
        pass  # the answer is complete; the connection is merely not reused


def _parse_ndjson(chunks: Iterator[bytes]) -> Answer:
    """Return the answer assembled from Ollama's NDJSON stream; a stream without `done` was cut short."""
    text: list[str] = []
    thinking: list[str] = []
    model = ""
    for line in _lines(chunks):
        part = _json_object(line)
        if part.get("error"):
            raise _ServerSaid(_error_message(line))
        message: dict[str, Any] = part["message"] if isinstance(part.get("message"), dict) else part
        text.append(str(message.get("content", message.get("response", "")) or ""))
        thinking.append(str(message.get("thinking", "") or ""))
        model = str(part.get("model") or model)
        if part.get("done"):
            _drain(chunks)
            return Answer("".join(text), "".join(thinking), str(part.get("done_reason", "")),
                          figures=_figures(part), model=model)
    raise TransientModelError("the answer stream ended before it was done")


def _parse_sse(chunks: Iterator[bytes]) -> Answer:
    """Return the answer assembled from an OpenAI server-sent-event stream ending in `data: [DONE]`.

    A body without any event but holding one JSON answer (a server that does not stream) is taken as that answer.
    """
    text: list[str] = []
    thinking: list[str] = []
    other: list[bytes] = []
    finish = model = ""
    events = 0
    for line in _lines(chunks):
        if not line.startswith(b"data:"):
            if not events:
                other.append(line)
            continue
        events += 1
        data = line[5:].strip()
        if data == b"[DONE]":
            _drain(chunks)
            return Answer("".join(text), "".join(thinking), finish, model=model)
        event = _json_object(data)
        if event.get("error"):
            raise _ServerSaid(_error_message(data))
        model = str(event.get("model") or model)
        for choice in event.get("choices") or []:
            delta = (choice.get("delta") if isinstance(choice, dict) else None) or {}
            text.append(str(delta.get("content") or ""))
            thinking.append(str(delta.get("reasoning_content") or delta.get("reasoning") or ""))
            finish = str(choice.get("finish_reason") or finish)
    if not events and other and other[0].startswith(b"{"):
        return _parse_single(b"\n".join(other), openai=True)
    raise TransientModelError("the answer stream ended before [DONE]")


def _parse_single(content: bytes, openai: bool) -> Answer:
    """Return the answer of a non-streamed response."""
    document = _json_object(content)
    if document.get("error"):
        raise _ServerSaid(_error_message(content))
    model = str(document.get("model") or "")
    if openai:
        choices = document.get("choices") or [{}]
        first = choices[0] if isinstance(choices, list) and isinstance(choices[0], dict) else {}
        reply = first.get("message") or {}
        if not isinstance(reply, dict):
            raise TransientModelError("the server sent an unexpected answer")
        return Answer(str(reply.get("content") or ""),
                      str(reply.get("reasoning_content") or reply.get("reasoning") or ""),
                      str(first.get("finish_reason") or ""), model=model)
    message: dict[str, Any] = document["message"] if isinstance(document.get("message"), dict) else document
    return Answer(str(message.get("content", message.get("response", "")) or ""),
                  str(message.get("thinking", "") or ""), str(document.get("done_reason", "")),
                  figures=_figures(document), model=model)


def _figures(part: dict[str, Any]) -> dict[str, float]:
    """Return the figures Ollama put on its final answer (numbers only; the rest is ignored)."""
    return {name: float(part[name]) for name in FIGURES
            if isinstance(part.get(name), int | float) and not isinstance(part.get(name), bool)}
