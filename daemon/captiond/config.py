"""Load and validate vision.yml (PhotoPrism's `Models`/`Thresholds` plus our `Daemon:`) into frozen dataclasses.

Every problem in the file is collected with its location (``Models[1].Resolution: ...``) and
reported at once as one ConfigError; unknown keys are warnings. PhotoPrism ignores `Daemon:`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, TypeVar, get_args
from urllib.parse import quote

import yaml

from .addresses import ollama_base_url, understand_uri
from .errors import ConfigError
from .redaction import redact, register_secret, register_uri
from .schedule import Schedule, parse_schedule

# The vocabularies of vision.yml: mypy --strict reports a misspelt value (`write == "embeded"`) as a
# non-overlapping comparison, and the tuples below are read from the same types.
# PhotoPrism's engines; captiond runs the remote ones and leaves the others to PhotoPrism.
Engine = Literal["ollama", "openai", "tensorflow", "onnx", "local", "vision"]
ApiFormat = Literal["ollama", "openai", "vision", "url", "images"]  # Service.RequestFormat and ResponseFormat
FileScheme = Literal["base64", "data", "https", "url"]
RunType = Literal["auto", "never", "manual", "always", "newly-indexed", "on-demand", "on-schedule", "on-index"]
Detail = Literal["", "auto", "low", "high"]  # Options.Detail; "": not sent
WriteMode = Literal["sidecar", "embedded"]
SidecarName = Literal["ext", "base"]
WatcherKind = Literal["auto", "inotify", "polling"]

MODEL_TYPES = ("caption", "labels", "nsfw", "face", "generate")
CAPTIOND_TYPES = ("caption", "labels")
REMOTE_ENGINES: tuple[Engine, ...] = ("ollama", "openai")
KNOWN_ENGINES: tuple[Engine, ...] = get_args(Engine)
API_FORMATS: tuple[ApiFormat, ...] = get_args(ApiFormat)
# PhotoPrism's ApiFormats (api_format.go): its Vision service speaks vision, url and images.
VISION_FORMATS: tuple[ApiFormat, ...] = ("vision", "url", "images")
FILE_SCHEMES: tuple[FileScheme, ...] = get_args(FileScheme)
WRITE_MODES: tuple[WriteMode, ...] = get_args(WriteMode)
SIDECAR_NAMES: tuple[SidecarName, ...] = get_args(SidecarName)
WATCHERS: tuple[WatcherKind, ...] = get_args(WatcherKind)
_Choice = TypeVar("_Choice", bound=str)


class Think(StrEnum):
    """Service.Think: Ollama's ThinkValue (off, on, or an effort); the value is what vision.yml says."""

    FALSE = "false"
    TRUE = "true"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    MAX = "max"

    @property
    def request_value(self) -> bool | str:
        """Return what Ollama's `think` field takes: true or false, else the effort's name."""
        if self in (Think.TRUE, Think.FALSE):
            return self is Think.TRUE
        return self.value

    @property
    def effort(self) -> str:
        """Return the reasoning effort OpenAI's Responses API takes (low, medium, high), or ""."""
        return self.value if self in (Think.LOW, Think.MEDIUM, Think.HIGH) else ""


# PhotoPrism's RunTypes (internal/ai/vision/model_run.go): what a `Run:` value means, aliases included.
RUN_TYPES: Mapping[str, RunType] = MappingProxyType(
    {
        "": "auto", "auto": "auto", "never": "never", "manual": "manual", "manually": "manual", "command": "manual",
        "always": "always", "newly-indexed": "newly-indexed", "on-newly-indexed": "newly-indexed",
        "indexed": "newly-indexed", "on-indexed": "newly-indexed", "after-index": "newly-indexed",
        "on-demand": "on-demand", "on-schedule": "on-schedule", "schedule": "on-schedule", "on-index": "on-index",
        "index": "on-index",
    }
)

DEFAULT_MODEL = "gemma3:latest"
DEFAULT_OPENAI_MODEL = "gpt-5-mini"
DEFAULT_OLLAMA_BASE_URL = "http://localhost:11434"
DEFAULT_OPENAI_BASE_URL = "https://api.openai.com/v1"
DEFAULT_CAPTION_PROMPT = (
    "Create a caption with exactly one sentence in the active voice that describes the main visual "
    "content. Begin with the main subject and clear action. Avoid text formatting, meta-language, "
    "and filler words."
)
DEFAULT_LABELS_PROMPT = "Analyze the image and return label objects with name, confidence (0-1), and topicality (0-1)."
DEFAULT_PROMPTS = MappingProxyType({"caption": DEFAULT_CAPTION_PROMPT, "labels": DEFAULT_LABELS_PROMPT})
DEFAULT_TEMPERATURE = 0.1
DEFAULT_LABELS_TOP_P = 0.9  # PhotoPrism's top_p of a labels model unless its Options say otherwise
DEFAULT_NUM_PREDICT = 256  # captiond's bound on an Ollama answer when the file sets none (Ollama's own is unbounded)
MAX_TEMPERATURE = 2.0  # PhotoPrism caps Temperature (normalizeOptions; its vision README: 0.01 to 2.0)
# PhotoPrism's ollamaDefaults.Options (internal/ai/vision/engine_ollama.go), filled in where the file sets none.
OLLAMA_OPTION_DEFAULTS: Mapping[str, Mapping[str, Any]] = MappingProxyType({
    "caption": MappingProxyType({"temperature": DEFAULT_TEMPERATURE}),
    "labels": MappingProxyType({"temperature": DEFAULT_TEMPERATURE, "top_p": DEFAULT_LABELS_TOP_P,
                                "stop": ("\n\n",)}),
})
# PhotoPrism's openaiDefaults (internal/ai/vision/engine_openai.go, openai/defaults.go): the Responses API.
OPENAI_DETAIL = "low"
OPENAI_MAX_OUTPUT_TOKENS = MappingProxyType({"caption": 512, "labels": 1024})  # lower values are raised to these
OPENAI_CAPTION_SYSTEM = ("You are a PhotoPrism vision model. Return concise, user-friendly captions that describe "
                         "the main subjects accurately.")
OPENAI_CAPTION_PROMPT = ("Provide exactly one sentence describing the key subject and action in the image. Avoid "
                         "filler words and technical jargon.")
OLLAMA_LABELS_SYSTEM = ("You are a PhotoPrism vision model. Output concise JSON that matches the schema. Each label "
                        "name MUST be a single-word noun in its canonical singular form. Avoid spaces, punctuation, "
                        "emoji, or descriptive phrases.")
# A labels prompt ends with PhotoPrism's SchemaInstructions (labels.go): this line and the model's schema, which is
# Schema, SchemaFile or $PHOTOPRISM_VISION_LABEL_SCHEMA_FILE, else Ollama's example document (schema.LabelsJson)
# or, on the Responses API, the JSON Schema (schema.LabelsJsonSchemaDefault), also sent as text.format there.
SCHEMA_PROMPT = "Return JSON that matches this schema:\n"
LABEL_SCHEMA_FILE_VARIABLE = "PHOTOPRISM_VISION_LABEL_SCHEMA_FILE"
OLLAMA_LABELS_EXAMPLE = '{\n  "labels": [{\n    "name": "",\n    "confidence": 0,\n    "topicality": 0 }]\n}'
PHOTOPRISM_LABELS_JSON_SCHEMA = """{
  "type": "object",
  "properties": {
    "labels": {
      "type": "array",
      "items": {
        "type": "object",
        "properties": {
          "name": {
            "type": "string",
            "minLength": 1
          },
          "confidence": {
            "type": "number",
            "minimum": 0,
            "maximum": 1
          },
          "topicality": {
            "type": "number",
            "minimum": 0,
            "maximum": 1
          }
        },
        "required": ["name", "confidence", "topicality"],
        "additionalProperties": false
      },
      "default": []
    }
  },
  "required": ["labels"],
  "additionalProperties": false
}"""
OPENAI_LABELS_SYSTEM = ("You are a PhotoPrism vision model. Emit JSON that matches the provided schema and keep "
                        "label names short, singular nouns.")

# PhotoPrism's ModelOptions: YAML key -> Ollama option name (internal/ai/vision/model_options.go).
OPTION_NAMES: Mapping[str, str] = MappingProxyType(
    {
        "Temperature": "temperature", "TopK": "top_k", "TopP": "top_p", "MinP": "min_p",
        "TypicalP": "typical_p", "TfsZ": "tfs_z", "Seed": "seed", "NumKeep": "num_keep",
        "RepeatLastN": "repeat_last_n", "RepeatPenalty": "repeat_penalty",
        "PenalizeNewline": "penalize_newline", "Stop": "stop", "Mirostat": "mirostat",
        "MirostatTau": "mirostat_tau", "MirostatEta": "mirostat_eta", "NumPredict": "num_predict",
        "NumCtx": "num_ctx", "NumThread": "num_thread", "NumBatch": "num_batch", "NumGpu": "num_gpu",
        "MainGpu": "main_gpu", "LowVram": "low_vram", "VocabOnly": "vocab_only", "UseMmap": "use_mmap",
        "UseMlock": "use_mlock", "Numa": "numa", "PresencePenalty": "presence_penalty",
        "FrequencyPenalty": "frequency_penalty", "MaxOutputTokens": "max_output_tokens",
    }
)
BOOLEAN_OPTIONS = frozenset({"PenalizeNewline", "LowVram", "VocabOnly", "UseMmap", "UseMlock", "Numa"})
# Options PhotoPrism uses for its own answer handling; captiond accepts them and says it does not use them.
PHOTOPRISM_ONLY_OPTIONS = frozenset({"ForceJson"})
# Options captiond reads itself (model()), not sent as they are.
READ_OPTIONS = frozenset({"Detail", "CombineOutputs", "SchemaVersion"})
DETAILS: tuple[Detail, ...] = get_args(Detail)
MODEL_KEYS = frozenset(
    {
        "Type", "Default", "Name", "Model", "Version", "Engine", "Run", "System", "Prompt", "Format",
        "Normalize", "Schema", "SchemaFile", "Resolution", "TensorFlow", "ONNX", "Meta", "LabelFile",
        "CanonicalOrder", "Options", "Service", "Path", "Disabled", "Reduction", "UnsafeClassIndex",
        "NeutralClassIndex", "DefaultThreshold",
    }
)
SERVICE_KEYS = frozenset(
    {
        "Uri", "Method", "Key", "Username", "Password", "Model", "Org", "Project", "Tier", "FileScheme",
        "RequestFormat", "ResponseFormat", "Think", "Disabled", "Stream", "Endpoints",
    }
)
ENDPOINT_KEYS = frozenset({"Uri", "Parallel", "Key"})
THRESHOLD_KEYS = frozenset({"Confidence", "Topicality", "NSFW", "NSFWUpload", "NSFWIndex"})
DAEMON_KEYS = frozenset(
    {
        "Originals", "Write", "SidecarName", "StateDir", "Parallel", "Timeout", "MaxLength", "MaxAnswerBytes",
        "Settle", "Rescan", "Watcher", "PollInterval", "Listen", "Retry", "Language", "Exclude",
        "Schedule", "SelfTest", "SelfTestInterval", "KeepAlive",
        "DegradedFraction", "DegradedImages", "OnDegraded", "OnDegradedInterval",
        "CacheSize",
        "CombineOutputs",
        "PhotoPrism", "Immich",
        "Endpoints",
    }
)
APP_KEYS = frozenset({"Url", "Interval", "Originals"})
RETRY_KEYS = frozenset({"Attempts", "Delay", "MaxDelay", "Total"})
TOP_KEYS = frozenset({"Models", "Thresholds", "Daemon"})


@dataclass(frozen=True)
class Endpoint:
    """One model server; `parallel` is its request slots (its OLLAMA_NUM_PARALLEL); None: Daemon.Parallel."""

    uri: str
    parallel: int | None = None
    key: str = ""

    def redacted_uri(self) -> str:
        """Return the Uri with any credential in it (user part, key or token parameters) replaced by ***."""
        return redact(self.uri)

    def base_url(self) -> str:
        """Return scheme://host:port of the Uri (where /api/show and friends live)."""
        match = re.match(r"^(https?://[^/]+)", self.uri)
        return match.group(1) if match else self.uri


@dataclass(frozen=True)
class Service:
    """Where and how a model is reached."""

    uri: str
    method: str = "POST"
    key: str = ""
    file_scheme: FileScheme = "base64"
    request_format: ApiFormat = "ollama"
    response_format: ApiFormat = "ollama"
    think: Think = Think.FALSE
    stream: bool = True
    org: str = ""  # OpenAI-Organization header
    project: str = ""  # OpenAI-Project header
    tier: str = ""  # OpenAI service_tier (Responses API)
    disabled: bool = False
    endpoints: tuple[Endpoint, ...] = ()

    def all_endpoints(self) -> tuple[Endpoint, ...]:
        """Return every server this model is reached at (Uri list or Endpoints; else the one Uri)."""
        return self.endpoints or (Endpoint(self.uri, None, self.key),)

    def redacted_uri(self) -> str:
        """Return the Uri(s) with any password or token replaced by ***."""
        return ", ".join(endpoint.redacted_uri() for endpoint in self.all_endpoints())

    def base_url(self) -> str:
        """Return scheme://host:port of the first Uri."""
        return self.all_endpoints()[0].base_url()


@dataclass(frozen=True)
class ModelConfig:
    """One entry of `Models:`, with every default filled in."""

    index: int
    type: str
    name: str = DEFAULT_MODEL
    version: str = ""
    engine: Engine = "ollama"
    run: RunType = "auto"
    prompt: str = DEFAULT_CAPTION_PROMPT
    system: str = ""
    format: str = ""
    normalize: str = ""
    detail: Detail = ""  # Options.Detail: the image detail OpenAI is asked for (auto, low, high)
    resolution: int = 720
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))  # as sent (engine_options)
    given_options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))  # as the file sets them
    service: Service = field(default_factory=lambda: Service(uri=f"{DEFAULT_OLLAMA_BASE_URL}/api/generate"))
    default: bool = False
    disabled: bool = False
    implied: bool = False  # not in the file: derived from the caption model
    combine_outputs: bool = False  # Options.CombineOutputs: caption and labels may share one request
    schema: str = ""  # Schema, SchemaFile or $PHOTOPRISM_VISION_LABEL_SCHEMA_FILE ("": PhotoPrism's default)
    schema_version: str = ""  # Options.SchemaVersion: the name of the Responses API's json_schema

    @property
    def responses(self) -> bool:
        """Return whether this model is asked through OpenAI's Responses API (PhotoPrism's openai engine)."""
        return self.service.request_format == "openai" and is_responses_uri(self.service.uri)

    @property
    def schema_instructions(self) -> str:
        """Return PhotoPrism's SchemaInstructions, which a labels prompt ends with after a blank line."""
        return SCHEMA_PROMPT + (self.schema or (PHOTOPRISM_LABELS_JSON_SCHEMA if self.responses
                                                else OLLAMA_LABELS_EXAMPLE))

    def labels_json_schema(self) -> dict[str, Any]:
        """Return the JSON Schema the Responses API is given for labels: Schema when it is one, else PhotoPrism's."""
        try:
            document = json.loads(self.schema) if self.schema else None
        except ValueError:
            document = None
        if isinstance(document, dict) and ("type" in document or "properties" in document):
            return document
        default: dict[str, Any] = json.loads(PHOTOPRISM_LABELS_JSON_SCHEMA)
        return default

    @property
    def model_id(self) -> str:
        """Return the model name as sent to the server, as PhotoPrism's GetModel makes it.

        Ollama: name:version, the version defaulting to latest (`gemma3` is `gemma3:latest`). OpenAI-compatible
        services: the name verbatim, colons included.
        """
        name, _, tag = self.name.partition(":")
        if self.engine == "openai" or not name:
            return self.name
        return f"{name}:{tag or self.version or 'latest'}"

    def should_run(self, when: str) -> bool:
        """Return whether PhotoPrism runs this model in a context (`manual`: `vision run`; `newly-indexed`, ...).

        PhotoPrism's Model.ShouldRun, with IsDefault read from `Default:`.
        """
        when = RUN_TYPES.get(when, "auto")
        index_modes = {"always": self.default, "on-index": self.default, "newly-indexed": not self.default}
        allowed = {
            "auto": when in ("auto", "manual", "on-demand", "on-schedule") or index_modes.get(when, False),
            "never": False,
            "manual": when == "manual",
            "always": when != "never",
            "newly-indexed": when in ("manual", "newly-indexed", "on-demand"),
            "on-demand": when in ("auto", "manual", "newly-indexed", "on-demand", "on-schedule"),
            "on-schedule": when in ("auto", "manual", "on-schedule", "on-demand"),
            "on-index": when in ("manual", "on-index"),
        }
        return allowed.get(self.run, False)

    @property
    def runs_in_watch(self) -> bool:
        """Return whether `captiond watch` runs this model: every index-time Run mode, not manual or never."""
        return self.run not in ("manual", "never")

    @property
    def usable(self) -> bool:
        """Return whether captiond can run this model itself (a remote engine it speaks)."""
        return (self.engine in REMOTE_ENGINES and self.type in CAPTIOND_TYPES
                and self.service.request_format in REMOTE_ENGINES and not self.service.disabled)


@dataclass(frozen=True)
class Thresholds:
    """PhotoPrism's label thresholds in percent."""

    confidence: int = 20
    topicality: int = 0
    nsfw: int = 75  # checked and kept for PhotoPrism, which runs the nsfw model; captiond does not use it


@dataclass(frozen=True)
class AppConfig:
    """A photo app to tell about written files (Daemon.PhotoPrism, Daemon.Immich); `token` is a secret."""

    url: str
    token: str = field(repr=False)
    interval: float = 30.0  # at most one request per folder (PhotoPrism) or batch (Immich) this often
    originals: str = ""  # Immich: where it sees the originals folder, when that differs from ours

    def redacted(self) -> str:
        """Return the address with the secret left out, for ls, status and log lines."""
        return f"{redact(self.url)} (token {'set' if self.token else 'missing'})"


@dataclass(frozen=True)
class RetryPolicy:
    """How transient model failures are retried within one request."""

    attempts: int = 4
    delay: float = 1.0
    max_delay: float = 30.0
    total: float = 300.0


@dataclass(frozen=True)
class DaemonConfig:
    """captiond's own settings (`Daemon:`), ignored by PhotoPrism."""

    originals: Path | None = None
    write: WriteMode = "sidecar"
    sidecar_name: SidecarName = "ext"
    state_dir: Path = field(default_factory=lambda: default_state_dir(os.environ))
    parallel: int = 1
    timeout: float = 120.0
    max_length: int = 500
    max_answer_bytes: int = 1_000_000
    settle: float = 3.0
    rescan: float = 3600.0
    watcher: WatcherKind = "auto"
    poll_interval: float = 30.0
    listen: str = ""
    language: str = ""
    cache_size: int = 20000  # answers kept in the result cache; 0 turns it off
    combine_outputs: bool = False  # ask for caption and labels in one request where the same model serves both
    photoprism: AppConfig | None = None
    immich: AppConfig | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    exclude: tuple[str, ...] = ()
    schedule: Schedule | None = None
    self_test: bool = True
    self_test_interval: float = 6 * 3600.0
    keep_alive: str | float = "auto"
    degraded_fraction: float = 0.5
    degraded_images: int = 5
    on_degraded: tuple[str, ...] = ()
    on_degraded_interval: float = 3600.0


@dataclass(frozen=True)
class Config:
    """The whole effective configuration."""

    models: tuple[ModelConfig, ...]
    thresholds: Thresholds = field(default_factory=Thresholds)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    path: Path | None = None
    warnings: tuple[str, ...] = ()

    def model(self, model_type: str) -> ModelConfig | None:
        """Return the effective model of a type: the last enabled entry, as in PhotoPrism."""
        for model in reversed(self.models):
            if model.type == model_type and not model.disabled:
                return model
        return None

    def with_daemon(self, **changes: Any) -> Config:
        """Return a copy with some Daemon settings replaced (command-line flags win over the file)."""
        changes = {key: value for key, value in changes.items() if value is not None}
        return dataclasses.replace(self, daemon=dataclasses.replace(self.daemon, **changes))


def is_responses_uri(uri: str) -> bool:
    """Return whether a Uri is a Responses API endpoint (`.../v1/responses`)."""
    return uri.split("?", 1)[0].rstrip("/").endswith("/responses")


def default_prompt(model_type: str, responses: bool) -> str:
    """Return PhotoPrism's default prompt for a model type (its openai engine's on the Responses API)."""
    if responses and model_type == "caption":
        return OPENAI_CAPTION_PROMPT
    return DEFAULT_PROMPTS.get(model_type, "")


def default_system(model_type: str, responses: bool) -> str:
    """Return PhotoPrism's default system prompt for a model type (its openai engine's on the Responses API)."""
    if not responses:
        return OLLAMA_LABELS_SYSTEM if model_type == "labels" else ""
    return {"caption": OPENAI_CAPTION_SYSTEM, "labels": OPENAI_LABELS_SYSTEM}.get(model_type, "")


def default_state_dir(environ: Mapping[str, str]) -> Path:
    """Return systemd's $STATE_DIRECTORY, else $XDG_STATE_HOME/captiond, else ~/.local/state/captiond."""
    if environ.get("STATE_DIRECTORY"):
        return Path(environ["STATE_DIRECTORY"].split(":")[0])
    if environ.get("XDG_STATE_HOME"):
        return Path(environ["XDG_STATE_HOME"]) / "captiond"
    if environ.get("HOME"):
        return Path(environ["HOME"]) / ".local" / "state" / "captiond"
    return Path("/var/lib/captiond")


def find_config_file(explicit: str | None, environ: Mapping[str, str]) -> Path | None:
    """Return the config file to read: --config, $CAPTIOND_CONFIG, ./vision.yml, or None for defaults."""
    if explicit:
        return Path(explicit)
    if environ.get("CAPTIOND_CONFIG"):
        return Path(environ["CAPTIOND_CONFIG"])
    candidates = [Path("vision.yml")]
    if environ.get("XDG_CONFIG_HOME"):
        candidates.append(Path(environ["XDG_CONFIG_HOME"]) / "captiond" / "vision.yml")
    elif environ.get("HOME"):
        candidates.append(Path(environ["HOME"]) / ".config" / "captiond" / "vision.yml")
    candidates.append(Path("/etc/captiond/vision.yml"))
    return next((candidate for candidate in candidates if candidate.is_file()), None)


def load_config(path: Path | None, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate a vision.yml (None: all defaults); raise ConfigError listing every problem."""
    environ = os.environ if environ is None else environ
    if path is None:
        return parse_config({}, environ, None)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"cannot read: {exc}"], str(path)) from exc
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{where}not valid YAML: {problem}"], str(path)) from exc
    return parse_config(document if document is not None else {}, environ, path)


def parse_config(document: Any, environ: Mapping[str, str], path: Path | None) -> Config:
    """Validate a parsed YAML document into a Config; raise ConfigError listing every problem."""
    reader = _Reader(environ)
    _register_secrets(document, environ)
    if not isinstance(document, dict):
        raise ConfigError([f"expected a mapping at the top, got {_kind(document)}"], str(path or "vision.yml"))
    reader.check_keys(document, TOP_KEYS, "")
    reader.daemon_servers = reader.daemon_endpoints(document.get("Daemon"))
    models = reader.models(document.get("Models"))
    thresholds = reader.thresholds(document.get("Thresholds"))
    daemon = reader.daemon(document.get("Daemon"))
    if reader.problems:
        raise ConfigError(reader.problems, str(path or "vision.yml"), reader.warnings)
    if not any(model.type == "caption" and not model.disabled for model in models):
        models = (*models, reader.model({}, len(models), implied_type="caption"))
    if not any(model.type == "labels" and not model.disabled and model.usable for model in models):
        # No labels model captiond can run: ask the caption model for labels (PhotoPrism's built-in labels
        # model is TensorFlow, which captiond does not run).
        caption = next(model for model in reversed(models) if model.type == "caption" and not model.disabled)
        responses = caption.service.request_format == "openai" and is_responses_uri(caption.service.uri)
        models = (*models, dataclasses.replace(
            caption, index=len(models), type="labels", prompt=default_prompt("labels", responses),
            system=default_system("labels", responses), implied=True,
            options=engine_options(caption.given_options, "labels", caption.service.request_format, responses)))
    return Config(models, thresholds, daemon, path, tuple(reader.warnings))


def _register_secrets(document: Any, environ: Mapping[str, str]) -> None:
    """Register every Key, Password and credential in a Uri of the document (and the environment's) as secret."""
    for name in ("OPENAI_API_KEY", "OLLAMA_API_KEY"):
        register_secret(environ.get(name, ""))
    for name in ("OLLAMA_BASE_URL", "OLLAMA_HOST"):
        register_uri(environ.get(name, ""))
    pending: list[tuple[Any, Any]] = [("", document)]
    while pending:
        key, value = pending.pop()
        if isinstance(value, dict):
            pending.extend(value.items())
        elif isinstance(value, list):
            pending.extend((key, item) for item in value)
        elif isinstance(value, str | int | float) and not isinstance(value, bool):
            text = expand_variables(str(value), environ)[0]
            if key in ("Key", "Password"):
                register_secret(text)
            elif key == "Uri":
                register_uri(text)


# Variables PhotoPrism gives a value when they are unset (vision_env.go); captiond's defaults are local servers.
BASE_URL_DEFAULTS: Mapping[str, str] = MappingProxyType(
    {"OLLAMA_BASE_URL": DEFAULT_OLLAMA_BASE_URL, "OPENAI_BASE_URL": DEFAULT_OPENAI_BASE_URL})
# PhotoPrism's service_env.go: which variables a field expands (None: any); every other one becomes "".
URI_SUFFIXES = ("_URL", "_URI", "_HOST")
MODEL_SUFFIXES = ("_MODEL",)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LEGACY = re.compile(r"([A-Za-z_][A-Za-z0-9_]*):-(.*)", re.S)


def expand_variables(text: str, environ: Mapping[str, str], suffixes: tuple[str, ...] | None = None,
                     legacy: bool = True) -> tuple[str, list[str]]:
    """Expand $VAR and ${VAR} as Go's os.Expand does in PhotoPrism; return the text and what to warn about.

    Only names ending in one of `suffixes` expand (None: any name); others, unset ones and invalid ones
    become "". captiond's old `${VAR:-default}` (which PhotoPrism expands to "") still works when `legacy`,
    with a warning. Unset OLLAMA_BASE_URL / OPENAI_BASE_URL take captiond's defaults.
    """
    notes: list[str] = []
    output: list[str] = []
    index = 0
    while index < len(text):
        if text[index] != "$" or index + 1 == len(text):
            output.append(text[index])
            index += 1
            continue
        name, width = _shell_name(text[index + 1:])
        if not name:
            if width == 0:
                output.append("$")  # "$" not followed by a name stays, as in Go
            index += 1 + width
            continue
        output.append(_variable(name, environ, suffixes, legacy, notes))
        index += 1 + width
    return "".join(output), notes


def _shell_name(rest: str) -> tuple[str, int]:
    """Return Go's getShellName: the name after a "$" and how many characters it takes."""
    if rest[0] == "{":
        closing = rest.find("}")
        if closing == -1:
            return "", 1  # bad syntax: Go eats the "${"
        if closing == 1:
            return "", 2
        return rest[1:closing], closing + 1
    if rest[0] in "*#$@!?-0123456789":
        return rest[0], 1
    match = re.match(r"[A-Za-z0-9_]*", rest)
    width = match.end() if match else 0
    return rest[:width], width


def _variable(name: str, environ: Mapping[str, str], suffixes: tuple[str, ...] | None, legacy: bool,
              notes: list[str]) -> str:
    """Return the value of one ${name} (see expand_variables), noting what a user should hear about."""
    old = _LEGACY.fullmatch(name)
    if old and legacy:
        variable, default = old.group(1), old.group(2)
        if suffixes is not None:
            notes.append(f"${{{name}}} is captiond's old form: PhotoPrism expands it to nothing; write ${{{variable}}}"
                         + (" (captiond defaults it to a local server)" if variable in BASE_URL_DEFAULTS else "")
                         + " and set the variable")
        return environ.get(variable) or default
    if not _NAME.fullmatch(name) or (suffixes is not None and not any(
            name.endswith(suffix) and len(name) > len(suffix) for suffix in suffixes)):
        notes.append(f"${{{name}}} expands to nothing here, as in PhotoPrism"
                     + (f" (only variables ending in {', '.join(suffixes)})" if suffixes else ""))
        return ""
    value = environ.get(name, "")
    if name == "OLLAMA_BASE_URL" and not value.strip():
        return ollama_base_url(environ, DEFAULT_OLLAMA_BASE_URL)  # unset: OLLAMA_HOST, else a local server
    if name in BASE_URL_DEFAULTS:
        return value.strip().rstrip("/") or BASE_URL_DEFAULTS[name]
    if not value:
        notes.append(f"environment variable {name} is not set")
    return value


def engine_options(given: Mapping[str, Any], model_type: str, request_format: str,
                   responses: bool) -> Mapping[str, Any]:
    """Return the options a request carries: the file's, with PhotoPrism's engine defaults where it sets none.

    As PhotoPrism's GetOptions: a zero value counts as unset (its fields are `omitempty`), Temperature is capped.
    Ollama: temperature 0.1, labels also top_p 0.9 and stop ["\\n\\n"]; `num_predict` is NumPredict, else
    MaxOutputTokens, else captiond's bound. The Responses API: `num_predict` holds max_output_tokens, raised to
    512 (caption) or 1024 (labels) as PhotoPrism raises it; NumPredict is Ollama's and not sent there.
    """
    options: dict[str, Any] = {name: value for name, value in given.items()
                               if not (value is False or value == 0 or value == [])}
    if responses:
        options.pop("num_predict", None)
        floor = OPENAI_MAX_OUTPUT_TOKENS.get(model_type, OPENAI_MAX_OUTPUT_TOKENS["caption"])
        options["num_predict"] = max(int(options.pop("max_output_tokens", 0)), floor)
    else:
        defaults = OLLAMA_OPTION_DEFAULTS.get(model_type, OLLAMA_OPTION_DEFAULTS["caption"])
        if request_format != "ollama":  # a local OpenAI-compatible server (Chat Completions): captiond's own
            defaults = {"temperature": DEFAULT_TEMPERATURE,
                        **({"top_p": DEFAULT_LABELS_TOP_P} if model_type == "labels" else {})}
        for name, value in defaults.items():
            options.setdefault(name, list(value) if isinstance(value, tuple) else value)
        limit = options.pop("max_output_tokens", None)
        options.setdefault("num_predict", limit or DEFAULT_NUM_PREDICT)
    if "temperature" in options:
        options["temperature"] = min(options["temperature"], MAX_TEMPERATURE)
    return MappingProxyType(options)


def with_user(uri: str, username: str, password: str) -> str:
    """Return a Uri with Username/Password as its user part, unless it has one: HTTP basic auth, as in PhotoPrism."""
    match = re.match(r"^(https?://)([^/?#]*)(.*)$", uri, re.S)
    if not match or "@" in match.group(2):
        return uri
    user = quote(username, safe="") + (":" + quote(password, safe="") if password else "")
    return f"{match.group(1)}{user}@{match.group(2)}{match.group(3)}"


def parse_duration(value: Any) -> float | None:
    """Return seconds from a number or a string like '90', '5s', '30m', '1h', '1h30m'; None if invalid."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if value >= 0 else None
    if not isinstance(value, str):
        return None
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?", value.strip())
    if not parts or re.sub(r"[\d.\s]|ms|[smhd]", "", value.strip()):
        return None
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "": 1.0}
    return sum(float(number) * units[unit] for number, unit in parts)


def _kind(value: Any) -> str:
    """Return a short description of a YAML value for error messages."""
    if value is None:
        return "nothing"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return {"dict": "a mapping", "list": "a list"}.get(type(value).__name__, type(value).__name__)


def _expansion(where: str, key: str) -> tuple[str, ...] | bool:
    """Return how a text field expands variables: PhotoPrism's rule for its own keys, any variable in Daemon."""
    if where.startswith("Daemon"):
        return True
    if key == "Uri":
        return URI_SUFFIXES
    if key in ("Model", "Name"):
        return MODEL_SUFFIXES
    return key in ("Key", "Username", "Password", "Org", "Project")


class _Reader:
    """Walks the document, reads typed values and collects problems and warnings with their locations."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.problems: list[str] = []
        self.warnings: list[str] = []
        self.current_type = "caption"
        self.daemon_servers: dict[str, tuple[Endpoint, ...]] = {}

    def problem(self, where: str, message: str) -> None:
        self.problems.append(f"{where}: {message}")

    def check_keys(self, mapping: Mapping[str, Any], known: frozenset[str], where: str) -> None:
        for key in mapping:
            if key not in known:
                location = f"{where}.{key}" if where else str(key)
                self.warnings.append(f"{location}: unknown key, ignored")

    def mapping(self, value: Any, where: str) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.problem(where, f"expected a mapping, got {_kind(value)}")
            return {}
        return value

    def string(self, mapping: Mapping[str, Any], key: str, where: str, default: str) -> str:
        value = mapping.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            self.problem(f"{where}.{key}", f"expected text, got {_kind(value)}")
            return default
        rule = _expansion(where, key)
        if rule is False:
            if "${" in str(value):
                self.warnings.append(f"{where}.{key}: PhotoPrism does not expand variables here; "
                                     "the text is used as written")
            return str(value)
        text, notes = expand_variables(str(value), self.environ, rule if isinstance(rule, tuple) else None,
                                       legacy=True)
        for note in notes:
            self.warnings.append(f"{where}.{key}: {note}")
        return text

    def choice(self, mapping: Mapping[str, Any], key: str, where: str, default: _Choice,
               allowed: tuple[_Choice, ...]) -> _Choice:
        text = self.string(mapping, key, where, default).strip().lower()
        chosen = one_of(text, allowed)
        if chosen is None:
            self.problem(f"{where}.{key}", f"expected one of {', '.join(allowed)}, got {_kind(mapping.get(key))}")
            return default
        return chosen

    def value(self, mapping: Mapping[str, Any], key: str, where: str) -> Any:
        """Return a raw value; text holding ${VAR} is expanded and read again as YAML (so numbers work)."""
        value = mapping.get(key)
        if isinstance(value, str) and "${" in value:
            if not where.startswith("Daemon"):
                self.warnings.append(f"{where}.{key}: PhotoPrism cannot read a variable here (it expects a "
                                     f"{'number' if key != 'Stop' else 'list'} or true/false): its whole "
                                     "vision.yml fails to load; write the value itself")
            text, notes = expand_variables(value, self.environ)
            for note in notes:
                self.warnings.append(f"{where}.{key}: {note}")
            try:
                value = yaml.safe_load(text) if text.strip() else None
            except yaml.YAMLError:
                value = text
        return value

    def strings(self, mapping: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
        """Return a list of texts (one text is a list of one)."""
        value = mapping.get(key)
        items = [value] if isinstance(value, str) else value if isinstance(value, list) else None
        if value is None:
            return ()
        if items is None or not all(isinstance(item, str) for item in items):
            self.problem(f"{where}.{key}", f"expected a list of texts, got {_kind(value)}")
            return ()
        return tuple(self.string({key: item}, key, where, "") for item in items)

    def fraction(self, mapping: Mapping[str, Any], key: str, where: str, default: float) -> float:
        value = self.value(mapping, key, where)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
            self.problem(f"{where}.{key}", f"expected a fraction between 0 and 1 such as 0.5, got {_kind(value)}")
            return default
        return float(value)

    def arguments(self, mapping: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
        """Return a command as a list of arguments (run without a shell); one text is refused as ambiguous."""
        value = mapping.get(key)
        if value is None:
            return ()
        if not isinstance(value, list) or not value or not all(isinstance(item, str | int) for item in value):
            self.problem(f"{where}.{key}", f"expected a command as a list of arguments such as [docker, restart, "
                         f"ollama] (no shell), got {_kind(value)}")
            return ()
        return tuple(str(item) for item in value)

    def keep_alive(self, mapping: Mapping[str, Any], where: str) -> str | float:
        """Return Ollama's keep_alive as given (a number of seconds or a Go duration like 30m, -1, 0), or auto."""
        value = self.value(mapping, "KeepAlive", where)
        if value is None:
            return "auto"
        if isinstance(value, int | float) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and (value.strip().lower() == "auto" or re.fullmatch(
                r"-?\d+|-?(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+", value.strip())):
            return value.strip().lower() if value.strip().lower() == "auto" else value.strip()
        self.problem(f"{where}.KeepAlive", f"expected auto, seconds or a duration such as 30m, -1 or 0, "
                     f"got {_kind(value)}")
        return "auto"

    def schedule(self, mapping: Mapping[str, Any], where: str) -> Schedule | None:
        schedule, problems = parse_schedule(self.strings(mapping, "Schedule", where))
        for problem in problems:
            self.problem(f"{where}.Schedule", problem)
        return schedule

    def boolean(self, mapping: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
        value = self.value(mapping, key, where)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no"):
            return value.strip().lower() in ("true", "yes")
        self.problem(f"{where}.{key}", f"expected true or false, got {_kind(value)}")
        return default

    def positive_int(self, mapping: Mapping[str, Any], key: str, where: str, default: int) -> int:
        value = self.value(mapping, key, where)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            self.problem(f"{where}.{key}", f"expected a positive integer, got {_kind(value)}")
            return default
        return value

    def count(self, mapping: Mapping[str, Any], key: str, where: str, default: int) -> int:
        value = self.value(mapping, key, where)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            self.problem(f"{where}.{key}", f"expected a whole number of 0 or more, got {_kind(value)}")
            return default
        return value

    def percent(self, mapping: Mapping[str, Any], key: str, where: str, default: int) -> int:
        value = self.value(mapping, key, where)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100:
            self.problem(f"{where}.{key}", f"expected a percentage from 0 to 100, got {_kind(value)}")
            return default
        return int(value)

    def duration(self, mapping: Mapping[str, Any], key: str, where: str, default: float) -> float:
        value = self.value(mapping, key, where)
        if value is None:
            return default
        seconds = parse_duration(value)
        if seconds is None:
            self.problem(f"{where}.{key}", f"expected a duration such as 30, 5s, 10m or 1h, got {_kind(value)}")
            return default
        return seconds

    def models(self, value: Any) -> tuple[ModelConfig, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            self.problem("Models", f"expected a list of models, got {_kind(value)}")
            return ()
        return tuple(self.model(entry, index) for index, entry in enumerate(value))

    def model(self, entry: Any, index: int, implied_type: str | None = None) -> ModelConfig:
        where = f"Models[{index}]"
        entry = self.mapping(entry, where)
        self.check_keys(entry, MODEL_KEYS, where)
        model_type = implied_type or self.choice(entry, "Type", where, "caption", MODEL_TYPES)
        if implied_type is None and "Type" not in entry:
            self.problem(f"{where}.Type", f"required, one of {', '.join(MODEL_TYPES)}")
        self.current_type = model_type
        engine_text = self.string(entry, "Engine", where, "").strip().lower()
        engine = one_of(engine_text, KNOWN_ENGINES)
        if not engine_text and (any(key in entry for key in ("TensorFlow", "ONNX", "Meta", "Path", "LabelFile"))
                                or (self.boolean(entry, "Default", where, False) and model_type != "caption")):
            # PhotoPrism's built-in models (labels, nsfw, face), run by PhotoPrism only (its EngineName)
            engine = "onnx" if "ONNX" in entry and "TensorFlow" not in entry else "tensorflow"
        service_entry = entry.get("Service") if isinstance(entry.get("Service"), dict) else {}
        if not engine_text and engine is None and model_type != "caption" and not any(
                service_entry.get(key) for key in ("Uri", "RequestFormat", "Endpoints")) \
                and model_type not in self.daemon_servers:
            engine = "local"  # no engine and no service: PhotoPrism's local model (its EngineName), not Ollama
        if engine_text and engine is None:
            self.problem(f"{where}.Engine", f"expected one of {', '.join(KNOWN_ENGINES)}, got {_kind(engine_text)}")
        service = self.service(entry.get("Service"), f"{where}.Service", engine, model_type)
        if engine is None:  # PhotoPrism's EngineName: the request format, its Vision service's formats are vision
            request_format = service.request_format
            engine = "vision" if request_format in VISION_FORMATS else "openai" if request_format == "openai" \
                else "ollama"
        name = self.string(entry, "Model", where, "") or self.string(entry, "Name", where, "")
        service_model = self.string(self.mapping(entry.get("Service"), f"{where}.Service"), "Model", where, "")
        if engine == "openai":  # PhotoPrism's openai engine default: $OPENAI_MODEL, else gpt-5-mini
            name = service_model or name or self.environ.get("OPENAI_MODEL", "").strip() or DEFAULT_OPENAI_MODEL
        else:
            name = service_model or name or self.environ.get("OLLAMA_MODEL", "") or DEFAULT_MODEL
        given = self.options(entry.get("Options"), f"{where}.Options")
        responses = service.request_format == "openai" and is_responses_uri(service.uri)
        for key in ("Schema", "SchemaFile"):
            if entry.get(key) and model_type == "caption":
                self.warnings.append(f"{where}.{key}: captiond asks for plain-text captions; {key} is used by "
                                     "PhotoPrism only")
        return ModelConfig(
            index=index,
            type=model_type,
            name=name,
            version=self.string(entry, "Version", where, ""),
            engine=engine,
            run=self.run_type(entry, where),
            prompt=self.string(entry, "Prompt", where, default_prompt(model_type, responses)),
            system=self.string(entry, "System", where, default_system(model_type, responses)),
            format=self.string(entry, "Format", where, ""),
            normalize=({False: "false", True: ""}[entry["Normalize"]] if isinstance(entry.get("Normalize"), bool)
                       else self.string(entry, "Normalize", where, "")),  # `Normalize: false`, as documented
            detail=self.choice(self.mapping(entry.get("Options"), f"{where}.Options"), "Detail", f"{where}.Options",
                               "", ("", *DETAILS)),
            resolution=self.positive_int(entry, "Resolution", where, 720),
            options=engine_options(given, model_type, service.request_format, responses),
            given_options=given,
            service=service,
            default=self.boolean(entry, "Default", where, False),
            disabled=self.boolean(entry, "Disabled", where, False),
            combine_outputs=self.combine_outputs(entry.get("Options")),
            schema=self.labels_schema(entry, where) if model_type == "labels" else "",
            schema_version=self.string(self.mapping(entry.get("Options"), f"{where}.Options"), "SchemaVersion",
                                       f"{where}.Options", "").strip(),
        )

    def labels_schema(self, entry: Mapping[str, Any], where: str) -> str:
        """Return the schema text a labels prompt ends with, as PhotoPrism's SchemaTemplate picks it ("": default).

        $PHOTOPRISM_VISION_LABEL_SCHEMA_FILE first, then Schema, then SchemaFile; a file that cannot be read is
        skipped with a warning, as PhotoPrism does.
        """
        candidates = [(LABEL_SCHEMA_FILE_VARIABLE, self.environ.get(LABEL_SCHEMA_FILE_VARIABLE, "").strip(), True),
                      (f"{where}.Schema", self.string(entry, "Schema", where, "").strip(), False),
                      (f"{where}.SchemaFile", self.string(entry, "SchemaFile", where, "").strip(), True)]
        for name, value, is_file in candidates:
            if not value:
                continue
            if not is_file:
                return value
            try:
                return Path(value).expanduser().read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                self.warnings.append(f"{name}: cannot read the schema {value} ({exc}); it is not used")
        return ""

    def combine_outputs(self, options: Any) -> bool:
        """Return PhotoPrism's Options.CombineOutputs (a string there) as a switch: any value but off/false."""
        value = options.get("CombineOutputs") if isinstance(options, dict) else None
        if value is None or isinstance(value, bool):
            return bool(value)
        return str(value).strip().lower() not in ("", "false", "no", "off", "none", "0")

    def run_type(self, entry: Mapping[str, Any], where: str) -> RunType:
        """Return the canonical Run mode; an unknown one is auto, as in PhotoPrism, with a warning."""
        text = self.string(entry, "Run", where, "").strip().lower().replace("_", "-").replace(" ", "-")
        if text not in RUN_TYPES:
            self.warnings.append(f"{where}.Run: unknown mode {_kind(entry.get('Run'))}, PhotoPrism and captiond "
                                 "read it as auto (one of auto, always, on-index, newly-indexed, on-schedule, "
                                 "on-demand, manual, never)")
            return "auto"
        return RUN_TYPES[text]

    def service(self, value: Any, where: str, engine: Engine | None, model_type: str) -> Service:
        mapping = self.mapping(value, where)
        self.check_keys(mapping, SERVICE_KEYS, where)
        endpoints = self.daemon_servers.get(model_type, ()) or self.endpoints(mapping, where)
        if isinstance(mapping.get("Uri"), list):
            uri = endpoints[0].uri if endpoints else ""
        else:
            uri = self.string(mapping, "Uri", where, "").strip() or (endpoints[0].uri if endpoints else "")
        openai_uri = uri.rstrip("/").endswith(("/v1/chat/completions", "/responses"))
        inferred: ApiFormat = "openai" if engine == "openai" or openai_uri else "ollama"
        request_format = self.choice(mapping, "RequestFormat", where, inferred, API_FORMATS)
        if request_format in VISION_FORMATS and model_type in CAPTIOND_TYPES:
            self.warnings.append(f"{where}.RequestFormat: {request_format} is PhotoPrism's own Vision service API, "
                                 "which captiond does not speak: this model is left to PhotoPrism")
        response_format = self.choice(mapping, "ResponseFormat", where, request_format, API_FORMATS)
        if not uri:
            if request_format == "openai":
                # PhotoPrism's default for Engine: openai: ${OPENAI_BASE_URL}/responses (engine_base_url.go)
                base = self.environ.get("OPENAI_BASE_URL", "").strip() or DEFAULT_OPENAI_BASE_URL
                path, _, query = base.partition("?")  # a query (Azure's ?api-version=...) goes to the end
                uri = f"{path.rstrip('/')}/responses" + (f"?{query}" if query else "")
            else:
                uri = f"{ollama_base_url(self.environ, DEFAULT_OLLAMA_BASE_URL)}/api/generate"
        elif not re.match(r"^https?://[^/\s]+", uri):
            self.problem(f"{where}.Uri", f"expected an http:// or https:// address, got {_kind(uri)}")
        elif request_format in REMOTE_ENGINES:
            uri = self.understood(uri, request_format, f"{where}.Uri")
        if request_format in REMOTE_ENGINES:
            endpoints = tuple(dataclasses.replace(endpoint, uri=self.understood(endpoint.uri, request_format,
                                                                                f"{where}.Endpoints[{index}].Uri"))
                              for index, endpoint in enumerate(endpoints))
        # PhotoPrism sends OpenAI a data URL and Ollama plain base64 whatever FileScheme says; so does captiond.
        file_scheme = self.choice(mapping, "FileScheme", where, "data" if request_format == "openai" else "base64",
                                  FILE_SCHEMES)
        disabled = self.boolean(mapping, "Disabled", where, False)
        if disabled and model_type in CAPTIOND_TYPES:
            self.warnings.append(f"{where}.Disabled: the service is disabled, so neither PhotoPrism nor captiond "
                                 "can reach this model")
        key_default = self.environ.get("OPENAI_API_KEY" if request_format == "openai" else "OLLAMA_API_KEY", "")
        think = mapping.get("Think", "false")
        think_text = str(think).lower() if isinstance(think, bool | str) else "false"
        think_value = one_of(think_text, tuple(Think))
        if think_value is None:
            self.problem(f"{where}.Think", f"expected true, false, low, medium, high or max, got {_kind(think)}")
        key = self.string(mapping, "Key", where, key_default)
        username, password = (self.string(mapping, name, where, "") for name in ("Username", "Password"))
        if (username or password) and not key:  # with a Key, its Bearer header wins, as in Go's client
            register_secret(password)
            uri = with_user(uri, username, password)
            endpoints = tuple(dataclasses.replace(endpoint, uri=with_user(endpoint.uri, username, password))
                              for endpoint in endpoints)
        return Service(
            uri=uri,
            method=self.method(mapping, where),
            key=key,
            endpoints=tuple(dataclasses.replace(endpoint, key=endpoint.key or key) for endpoint in endpoints),
            file_scheme=file_scheme,
            request_format=request_format,
            response_format=response_format,
            think=think_value or Think.FALSE,
            stream=self.boolean(mapping, "Stream", where, True),
            org=self.string(mapping, "Org", where, "").strip(),
            project=self.string(mapping, "Project", where, "").strip(),
            tier=self.string(mapping, "Tier", where, "").strip(),
            disabled=disabled,
        )

    def method(self, mapping: Mapping[str, Any], where: str) -> str:
        """Return Service.Method: POST; another verb (PhotoPrism sends what it says) is named in a warning."""
        method = self.string(mapping, "Method", where, "POST").strip().upper() or "POST"
        if method != "POST":
            self.warnings.append(f"{where}.Method: {method} is used by PhotoPrism only; captiond sends POST, which "
                                 "Ollama's and OpenAI's generation endpoints take")
        return "POST"

    def understood(self, uri: str, request_format: str, where: str) -> str:
        """Return the endpoint a Uri means (see addresses.understand_uri), noting a warning or a problem."""
        understood = understand_uri(uri, request_format)
        if understood.warning:
            self.warnings.append(f"{where}: {understood.warning}")
        if understood.problem:
            self.problem(where, understood.problem)
        return understood.uri

    def listen(self, mapping: Mapping[str, Any], where: str) -> str:
        text = self.string(mapping, "Listen", where, "").strip()
        if text and not re.match(r"^(\[[0-9a-fA-F:]+\]|[^:\s]+)?:\d{1,5}$", text):
            self.problem(f"{where}.Listen", f"expected HOST:PORT such as 127.0.0.1:9780, got {_kind(text)}")
            return ""
        return text

    def endpoints(self, mapping: Mapping[str, Any], where: str) -> tuple[Endpoint, ...]:
        """Return the servers of the old in-Service forms, a `Uri:` list or `Endpoints:` (empty for one Uri).

        Both still work, with a warning: a list under Uri makes PhotoPrism's whole file fail to load, and
        servers belong in `Daemon.Endpoints`, which PhotoPrism does not read.
        """
        model_type = self.current_type
        move = (f"move the servers to Daemon.Endpoints.{model_type}: [{{Uri: ..., Parallel: N}}, ...] and keep one "
                "Uri here")
        uris = mapping.get("Uri")
        if isinstance(uris, list):
            self.warnings.append(f"{where}.Uri: a list makes PhotoPrism's whole vision.yml fail to load "
                                 f"(cannot unmarshal !!seq into string); {move}")
            entries = [{"Uri": uri} for uri in uris]
            found = self.endpoint_list(entries, f"{where}.Uri")
        else:
            found = ()
        if mapping.get("Endpoints") is not None:
            self.warnings.append(f"{where}.Endpoints: deprecated, PhotoPrism does not know it; {move}")
            found += self.endpoint_list(mapping["Endpoints"], f"{where}.Endpoints")
        return found

    def endpoint_list(self, entries: Any, where: str) -> tuple[Endpoint, ...]:
        """Return the servers of a list of {Uri, Parallel, Key}."""
        if not isinstance(entries, list) or not entries:
            self.problem(where, f"expected a list of {{Uri, Parallel}}, got {_kind(entries)}")
            return ()
        endpoints = []
        for index, entry in enumerate(entries):
            location = f"{where}[{index}]"
            entry = self.mapping(entry, location)
            self.check_keys(entry, ENDPOINT_KEYS, location)
            uri = self.string(entry, "Uri", location, "").strip()
            if not re.match(r"^https?://[^/\s]+", uri):
                self.problem(f"{location}.Uri", f"expected an http:// or https:// address, got {_kind(uri)}")
                continue
            parallel = self.positive_int(entry, "Parallel", location, 0) or None
            endpoints.append(Endpoint(uri, parallel, self.string(entry, "Key", location, "")))
        return tuple(endpoints)

    def daemon_endpoints(self, daemon: Any) -> dict[str, tuple[Endpoint, ...]]:
        """Return `Daemon.Endpoints`: model type -> the servers that model is spread over."""
        mapping = daemon.get("Endpoints") if isinstance(daemon, dict) else None
        if mapping is None:
            return {}
        if not isinstance(mapping, dict):
            self.problem("Daemon.Endpoints", f"expected a mapping of model type to a list of {{Uri, Parallel}}, "
                         f"got {_kind(mapping)}")
            return {}
        found = {}
        for model_type, entries in mapping.items():
            if model_type not in CAPTIOND_TYPES:
                self.problem(f"Daemon.Endpoints.{model_type}", f"expected a model type captiond runs "
                             f"({', '.join(CAPTIOND_TYPES)})")
                continue
            found[str(model_type)] = self.endpoint_list(entries, f"Daemon.Endpoints.{model_type}")
        return found

    def options(self, value: Any, where: str) -> Mapping[str, Any]:
        """Return the options the file sets, under Ollama's names (engine defaults come later: engine_options)."""
        mapping = self.mapping(value, where)
        options: dict[str, Any] = {}
        for key in mapping:
            option_value = self.value(mapping, key, where)
            if key in PHOTOPRISM_ONLY_OPTIONS:
                self.warnings.append(f"{where}.{key}: used by PhotoPrism only; captiond does not need it")
                continue
            if key in READ_OPTIONS:
                continue  # read by model()
            if key not in OPTION_NAMES:
                self.warnings.append(f"{where}.{key}: unknown option, ignored")
                continue
            if key == "Stop":
                if isinstance(option_value, str):
                    option_value = [option_value]
                if not isinstance(option_value, list) or not all(isinstance(item, str) for item in option_value):
                    self.problem(f"{where}.Stop", f"expected a list of texts, got {_kind(option_value)}")
                    continue
            elif key in BOOLEAN_OPTIONS and not isinstance(option_value, bool):
                self.problem(f"{where}.{key}", f"expected true or false, got {_kind(option_value)}")
                continue
            elif key not in BOOLEAN_OPTIONS and (
                isinstance(option_value, bool) or not isinstance(option_value, int | float)
            ):
                self.problem(f"{where}.{key}", f"expected a number, got {_kind(option_value)}")
                continue
            if key in ("NumPredict", "NumCtx", "MaxOutputTokens") and option_value <= 0:
                self.problem(f"{where}.{key}", f"expected a positive integer, got {_kind(option_value)}")
                continue
            options[OPTION_NAMES[key]] = option_value
        return MappingProxyType(options)

    def thresholds(self, value: Any) -> Thresholds:
        mapping = self.mapping(value, "Thresholds")
        self.check_keys(mapping, THRESHOLD_KEYS, "Thresholds")
        return Thresholds(
            confidence=self.percent(mapping, "Confidence", "Thresholds", 20),
            topicality=self.percent(mapping, "Topicality", "Thresholds", 0),
            nsfw=-1 if self.value(mapping, "NSFW", "Thresholds") == -1  # PhotoPrism: -1 turns the check off
            else self.percent(mapping, "NSFW", "Thresholds", 75),
        )

    def app(self, daemon: Mapping[str, Any], name: str, secret: str) -> AppConfig | None:
        """Return Daemon.PhotoPrism / Daemon.Immich ({Url, Token or Key, Interval}), or None when not set."""
        where = f"Daemon.{name}"
        if daemon.get(name) is None:
            return None
        mapping = self.mapping(daemon.get(name), where)
        self.check_keys(mapping, APP_KEYS | {secret}, where)
        url = self.string(mapping, "Url", where, "").strip().rstrip("/")
        if not re.match(r"^https?://[^/\s]+", url):
            self.problem(f"{where}.Url", f"expected an http:// or https:// address, got {_kind(mapping.get('Url'))}")
        token = self.string(mapping, secret, where, "").strip()
        if not token:
            self.problem(f"{where}.{secret}", "required (an app password or API key)")
        register_secret(token)
        register_uri(url)
        return AppConfig(url, token, self.duration(mapping, "Interval", where, 30.0),
                         self.string(mapping, "Originals", where, "").rstrip("/"))

    def daemon(self, value: Any) -> DaemonConfig:
        where = "Daemon"
        mapping = self.mapping(value, where)
        self.check_keys(mapping, DAEMON_KEYS, where)
        originals = self.string(mapping, "Originals", where, self.environ.get("PHOTOPRISM_ORIGINALS_PATH", ""))
        state_dir = self.string(mapping, "StateDir", where, "")
        retry = self.mapping(mapping.get("Retry"), f"{where}.Retry")
        self.check_keys(retry, RETRY_KEYS, f"{where}.Retry")
        defaults = RetryPolicy()
        return DaemonConfig(
            originals=Path(originals).expanduser() if originals else None,
            write=self.choice(mapping, "Write", where, "sidecar", WRITE_MODES),
            sidecar_name=self.choice(mapping, "SidecarName", where, "ext", SIDECAR_NAMES),
            state_dir=Path(state_dir).expanduser() if state_dir else default_state_dir(self.environ),
            parallel=self.positive_int(mapping, "Parallel", where, 1),
            timeout=self.duration(mapping, "Timeout", where, 120.0) or 120.0,
            max_length=self.positive_int(mapping, "MaxLength", where, 500),
            max_answer_bytes=self.positive_int(mapping, "MaxAnswerBytes", where, 1_000_000),
            settle=self.duration(mapping, "Settle", where, 3.0),
            rescan=self.duration(mapping, "Rescan", where, 3600.0),
            watcher=self.choice(mapping, "Watcher", where, "auto", WATCHERS),
            poll_interval=self.duration(mapping, "PollInterval", where, 30.0) or 30.0,
            listen=self.listen(mapping, where),
            language=self.string(mapping, "Language", where, "").strip(),
            exclude=self.strings(mapping, "Exclude", where),
            schedule=self.schedule(mapping, where),
            keep_alive=self.keep_alive(mapping, where),
            degraded_fraction=self.fraction(mapping, "DegradedFraction", where, 0.5),
            degraded_images=self.positive_int(mapping, "DegradedImages", where, 5),
            on_degraded=self.arguments(mapping, "OnDegraded", where),
            on_degraded_interval=self.duration(mapping, "OnDegradedInterval", where, 3600.0),
            self_test=self.boolean(mapping, "SelfTest", where, True),
            self_test_interval=self.duration(mapping, "SelfTestInterval", where, 6 * 3600.0) or 6 * 3600.0,
            cache_size=self.count(mapping, "CacheSize", where, 20000),
            combine_outputs=self.boolean(mapping, "CombineOutputs", where, False),
            photoprism=self.app(mapping, "PhotoPrism", "Token"),
            immich=self.app(mapping, "Immich", "Key"),
            retry=RetryPolicy(
                attempts=self.positive_int(retry, "Attempts", f"{where}.Retry", defaults.attempts),
                delay=self.duration(retry, "Delay", f"{where}.Retry", defaults.delay),
                max_delay=self.duration(retry, "MaxDelay", f"{where}.Retry", defaults.max_delay),
                total=self.duration(retry, "Total", f"{where}.Retry", defaults.total),
            ),
        )


def one_of(text: str, allowed: tuple[_Choice, ...]) -> _Choice | None:
    """Return the allowed value `text` names, or None."""
    return next((option for option in allowed if option == text), None)
