"""One vision.yml for PhotoPrism and captiond: every shipped file reads in PhotoPrism's reader (the real Go yaml.v2
with PhotoPrism's struct shapes, tests/photoprism/vision_reader.go) with usable endpoints, variables expand as
PhotoPrism expands them, old captiond-only forms still work with a warning, and `Run:` means what it means there."""

from __future__ import annotations

import base64
import io
import itertools
import json
import os
import re
import shutil
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from PIL import Image

from captiond.config import (
    DEFAULT_OLLAMA_BASE_URL,
    RUN_TYPES,
    Config,
    ModelConfig,
    expand_variables,
    load_config,
)
from captiond.errors import ConfigError
from conftest import FIXTURES, add_fixture, read_tags, run_captiond
from emulator import OllamaEmulator, RecordedRequest, default_reply

ROOT = Path(__file__).parent.parent
READER = Path(__file__).parent / "photoprism" / "vision_reader.go"
GOPATH = "/usr/share/gocode"  # Debian's golang-gopkg-yaml.v2-dev


@pytest.fixture(scope="module")
def photoprism_reader(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the Go reader once (Debian: golang-go, golang-gopkg-yaml.v2-dev; .ci/run installs them)."""
    go = shutil.which("go")
    assert go, "the Go toolchain is missing: apt-get install golang-go golang-gopkg-yaml.v2-dev"
    assert Path(GOPATH, "src/gopkg.in/yaml.v2").is_dir(), "apt-get install golang-gopkg-yaml.v2-dev"
    folder = tmp_path_factory.mktemp("go")
    binary = folder / "vision_reader"
    environment = {**os.environ, "GO111MODULE": "off", "GOPATH": GOPATH, "GOCACHE": str(folder / "cache"),
                   "HOME": str(folder)}
    subprocess.run([go, "build", "-o", str(binary), str(READER)], check=True, env=environment, timeout=600,
                   capture_output=True)
    return binary


def photoprism_reads(reader: Path, path: Path, environ: dict[str, str]) -> dict[str, object]:
    """Return what PhotoPrism makes of a vision.yml (fails the test with yaml.v2's error if it cannot load it)."""
    result = subprocess.run([str(reader), str(path)], env={"PATH": os.environ["PATH"], **environ},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"PhotoPrism cannot load {path.name}: {result.stderr.strip()}"
    document: dict[str, object] = json.loads(result.stdout)
    return document


def shipped_vision_files(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """Every vision.yml the project ships: the example (compose mounts a copy) and README's YAML snippets."""
    yield "vision.yml.example", ROOT / "vision.yml.example"
    readme = (ROOT / "README.md").read_text()
    for number, block in enumerate(re.findall(r"```ya?ml\n(.*?)```", readme, re.S)):
        document = yaml.safe_load(block)
        if isinstance(document, dict) and ("Models" in document or "Service" in document):
            if "Models" not in document:  # a fragment of a model entry: wrap it as PhotoPrism would read it
                block = yaml.safe_dump({"Models": [{"Type": "caption", "Engine": "ollama", **document}]})
            path = tmp_path / f"readme-{number}.yml"
            path.write_text(block)
            yield f"README snippet {number}", path


ENVIRONMENTS = {
    "OLLAMA_BASE_URL set": {"OLLAMA_BASE_URL": "http://gpu-box:11434/"},
    "nothing set": {},
}


@pytest.mark.parametrize("environ", ENVIRONMENTS.values(), ids=ENVIRONMENTS.keys())
def test_every_shipped_vision_file_reads_in_photoprism_with_usable_endpoints(
        photoprism_reader: Path, tmp_path: Path, environ: dict[str, str]) -> None:
    checked = 0
    for name, path in shipped_vision_files(tmp_path):
        photoprism = photoprism_reads(photoprism_reader, path, environ)
        config = load_config(path, environ)
        for model in photoprism["models"]:  # type: ignore[attr-defined]
            if model["type"] in ("caption", "labels") and model["engine"] in ("ollama", "openai"):
                assert re.match(r"^https?://[^/]+/", model["uri"]), f"{name}: PhotoPrism gets Uri {model['uri']!r}"
                ours = config.model(model["type"])
                assert ours is not None
                expected = model["uri"].replace("http://ollama:11434", DEFAULT_OLLAMA_BASE_URL)
                assert ours.service.uri == expected, name  # the same server (PhotoPrism's own default host aside)
                assert ours.name == model["model"], name
                checked += 1
        assert not [warning for warning in config.warnings if "PhotoPrism" in warning], (name, config.warnings)
    assert checked >= 1


# --- variables: exactly PhotoPrism's expansion (Go's os.Expand plus service_env.go's name rules) ----------------

TEXTS = ["${OLLAMA_BASE_URL}/api/generate", "$OLLAMA_BASE_URL/api/chat", "${GPU_HOST}:11434/api/generate",
         "${OLLAMA_BASE_URL:-http://localhost:11434}/api/generate", "$HOME/x", "${HOME}", "a$", "$$x", "${}x", "${",
         "$1x", "${UNSET_URL}/v1", "http://h/$", "${MY_MODEL}", "${OLLAMA_MODEL}:3b", "Bearer $OPENAI_API_KEY",
         "${A}${B_URL}", "$-", "${OLLAMA_BASE_URL}"]
FIELDS = {"uri": ("_URL", "_URI", "_HOST"), "model": ("_MODEL",), "key": None}
ENVIRONMENT = {"OLLAMA_BASE_URL": "http://gpu-box:11434", "GPU_HOST": "http://10.0.0.7", "HOME": "/root",
               "MY_MODEL": "gemma3:4b", "OPENAI_API_KEY": "sk-test", "A": "a", "B_URL": "http://b"}


def test_variables_expand_as_in_photoprism(photoprism_reader: Path) -> None:
    cases = [[text, field] for text, field in itertools.product(TEXTS, FIELDS) if ":-" not in text]
    result = subprocess.run([str(photoprism_reader), "-expand"], input=json.dumps(cases), capture_output=True,
                            text=True, env={"PATH": os.environ["PATH"], **ENVIRONMENT}, timeout=60, check=True)
    expected = json.loads(result.stdout)

    ours = [expand_variables(text, ENVIRONMENT, FIELDS[field], legacy=False)[0] for text, field in cases]

    assert ours == expected


def test_an_unset_ollama_base_url_is_a_local_server_for_captiond() -> None:
    assert expand_variables("${OLLAMA_BASE_URL}/api/generate", {}, FIELDS["uri"])[0] == (
        "http://localhost:11434/api/generate")
    assert expand_variables("${OPENAI_BASE_URL}/responses", {}, FIELDS["uri"])[0] == "https://api.openai.com/v1/responses"


def load(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> Config:
    path = tmp_path / "vision.yml"
    path.write_text(textwrap.dedent(text))
    return load_config(path, environ or {})


def caption(config: Config) -> ModelConfig:
    model = config.model("caption")
    assert model is not None
    return model


def test_the_old_default_form_still_works_and_says_how_to_move(tmp_path: Path) -> None:
    config = load(tmp_path, """
        Models:
          - Type: caption
            Service:
              Uri: ${OLLAMA_BASE_URL:-http://box:11434}/api/generate
        """)

    assert caption(config).service.uri == "http://box:11434/api/generate"
    assert any("PhotoPrism expands it to nothing" in warning and "${OLLAMA_BASE_URL}" in warning
               for warning in config.warnings)


def test_a_variable_photoprism_does_not_expand_in_a_uri_expands_to_nothing_with_a_warning(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        load(tmp_path, """
            Models:
              - Type: caption
                Service:
                  Uri: ${SERVER}/api/generate
            """, {"SERVER": "http://box:11434"})

    assert any("Uri" in problem for problem in raised.value.problems)
    assert any("${SERVER} expands to nothing here" in warning for warning in raised.value.warnings)


# --- several servers: Daemon.Endpoints, and the old forms with a deprecation warning --------------------------

def test_daemon_endpoints_spread_a_model_over_servers_and_photoprism_still_reads_the_file(
        photoprism_reader: Path, tmp_path: Path) -> None:
    config = load(tmp_path, """
        Models:
          - Type: caption
            Engine: ollama
            Service:
              Uri: http://gpu-box-1:11434/api/generate
        Daemon:
          Endpoints:
            caption:
              - Uri: http://gpu-box-1:11434/api/generate
                Parallel: 2
              - Uri: http://gpu-box-2:11434/api/generate
        """)

    servers = caption(config).service.all_endpoints()
    assert [(server.uri, server.parallel) for server in servers] == [
        ("http://gpu-box-1:11434/api/generate", 2), ("http://gpu-box-2:11434/api/generate", None)]
    assert not config.warnings
    photoprism = photoprism_reads(photoprism_reader, tmp_path / "vision.yml", {})
    assert photoprism["models"][0]["uri"] == "http://gpu-box-1:11434/api/generate"  # type: ignore[index]


OLD_FORMS = {
    "a list under Uri": """
        Models:
          - Type: caption
            Service:
              Uri: [http://a:11434/api/generate, http://b:11434/api/generate]
        """,
    "Service.Endpoints": """
        Models:
          - Type: caption
            Service:
              Endpoints:
                - {Uri: http://a:11434/api/generate}
                - {Uri: http://b:11434/api/generate}
        """,
}


@pytest.mark.parametrize("text", OLD_FORMS.values(), ids=OLD_FORMS.keys())
def test_old_multi_server_forms_still_work_with_a_warning_that_says_how_to_move(tmp_path: Path, text: str) -> None:
    config = load(tmp_path, text)

    assert [server.uri for server in caption(config).service.all_endpoints()] == [
        "http://a:11434/api/generate", "http://b:11434/api/generate"]
    assert any("Daemon.Endpoints.caption" in warning for warning in config.warnings)


def test_a_uri_list_is_what_breaks_photoprism(photoprism_reader: Path, tmp_path: Path) -> None:
    path = tmp_path / "vision.yml"
    path.write_text(textwrap.dedent(OLD_FORMS["a list under Uri"]))

    result = subprocess.run([str(photoprism_reader), str(path)], capture_output=True, text=True, timeout=60)

    assert result.returncode == 1
    assert "cannot unmarshal !!seq into string" in result.stderr


# --- Run: PhotoPrism's modes ------------------------------------------------------------------------------------

# internal/ai/vision/model_run.go, Model.ShouldRun: model's Run -> contexts it runs in (Default: false).
SHOULD_RUN = {
    "auto": {"auto", "manual", "on-demand", "on-schedule", "newly-indexed"},
    "never": set(),
    "manual": {"manual"},
    "always": {"auto", "manual", "on-demand", "on-schedule", "newly-indexed", "always", "on-index"},
    "newly-indexed": {"manual", "newly-indexed", "on-demand"},
    "on-demand": {"auto", "manual", "newly-indexed", "on-demand", "on-schedule"},
    "on-schedule": {"auto", "manual", "on-schedule", "on-demand"},
    "on-index": {"manual", "on-index"},
}
CONTEXTS = ("auto", "never", "manual", "always", "newly-indexed", "on-demand", "on-schedule", "on-index")


@pytest.mark.parametrize(("run", "contexts"), SHOULD_RUN.items(), ids=SHOULD_RUN.keys())
def test_run_modes_mean_what_they_mean_in_photoprism(tmp_path: Path, run: str, contexts: set[str]) -> None:
    model = caption(load(tmp_path, f"""
        Models:
          - Type: caption
            Run: {run}
        """))

    assert {context for context in CONTEXTS if model.should_run(context)} == contexts
    assert model.runs_in_watch is (run not in ("manual", "never"))


def test_run_aliases_and_unknown_modes_are_read_as_photoprism_reads_them(tmp_path: Path) -> None:
    for alias, canonical in RUN_TYPES.items():
        if alias:
            assert caption(load(tmp_path, f"Models: [{{Type: caption, Run: {alias}}}]\n")).run == canonical
    config = load(tmp_path, "Models: [{Type: caption, Run: sometimes}]\n")
    assert caption(config).run == "auto"
    assert any("Run: unknown mode" in warning for warning in config.warnings)


def test_nsfw_threshold_minus_one_is_accepted(tmp_path: Path) -> None:
    assert load(tmp_path, "Thresholds: {NSFW: -1}\n").thresholds.nsfw == -1


# --- Run: and the commands; `captiond ls` ------------------------------------------------------------------------

def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "vision.yml"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.subprocess
def test_run_never_is_never_run_and_manual_is_not_watched(tmp_path: Path, originals: Path) -> None:
    never = write(tmp_path, f"""
        Models:
          - Type: caption
            Run: never
            Service: {{Uri: "http://127.0.0.1:9/api/generate"}}
        Daemon: {{StateDir: {tmp_path / "state"}}}
        """)
    result = run_captiond("run", "--dry-run", "--config", never, "--originals", originals)
    assert result.exit_code == 2
    assert "Run: no caption model may run in `captiond run`" in result.stderr

    manual = write(tmp_path, never.read_text().replace("Run: never", "Run: manual"))
    result = run_captiond("watch", "--config", manual, "--originals", originals)
    assert result.exit_code == 2
    assert "Run: manual: not run by `captiond watch`" in result.stderr
    assert run_captiond("run", "--dry-run", "--config", manual, "--originals", originals).exit_code == 0


@pytest.mark.subprocess
def test_nsfw_and_face_models_are_left_to_photoprism_with_a_warning(tmp_path: Path, originals: Path) -> None:
    config = write(tmp_path, f"Daemon: {{StateDir: {tmp_path / 'state'}}}\n")

    result = run_captiond("run", "--dry-run", "-m", "caption,nsfw,face", "--config", config, "--originals", originals)

    assert result.exit_code == 0, result.stderr
    assert "PhotoPrism runs nsfw and face models itself" in result.stderr


LS_FILE = """
    Models:
      - Type: labels
        Default: true
        Name: nasnet
        TensorFlow: {Tags: [photoprism]}
      - Type: caption
        Model: gemma3:4b
        Engine: ollama
        Run: manual
        Service: {Uri: "http://127.0.0.1:9/api/generate"}
    """


@pytest.mark.subprocess
@pytest.mark.parametrize("flag", ["--md", "--csv", "--tsv", "--json", None])
def test_ls_shows_the_run_mode_in_every_format(tmp_path: Path, flag: str | None) -> None:
    config = write(tmp_path, LS_FILE)

    result = run_captiond("ls", "--config", config, *([flag] if flag else []))

    assert result.exit_code == 0, result.stderr
    if flag == "--json":
        rows = json.loads(result.stdout)
        assert [(row["type"], row["engine"], row["run"]) for row in rows] == [
            ("labels", "tensorflow", "auto"), ("caption", "ollama", "manual"),
            ("labels", "ollama", "manual")]  # the labels captiond asks of the caption model
        assert rows[0]["endpoint"] == ""  # a built-in model, shown as PhotoPrism shows it
        return
    lines = result.stdout.splitlines()
    separator = {"--csv": ",", "--tsv": "\t", "--md": "|"}.get(flag or "", "  ")
    assert "Run" in [cell.strip() for cell in lines[0].split(separator)]
    assert any("manual" in line and "gemma3:4b" in line for line in lines)
    if flag == "--md":
        assert lines[1].startswith("|:---|")


# --- PhotoPrism's example configs: they load, and captiond sends the request PhotoPrism would ------------------

def test_openai_without_uri_is_photoprisms_responses_endpoint(tmp_path: Path) -> None:
    config = load(tmp_path, """
        Models:
          - Type: caption
            Name: gpt-5-mini
            Version: latest
            Engine: openai
            Service:
              Key: ${OPENAI_API_KEY}
        """, {"OPENAI_API_KEY": "sk-test"})

    model = caption(config)
    assert model.service.uri == "https://api.openai.com/v1/responses"
    assert (model.model_id, model.service.request_format, model.service.key) == ("gpt-5-mini", "openai", "sk-test")
    assert model.usable


@pytest.mark.subprocess
def test_a_responses_uri_gets_photoprisms_responses_body(tmp_path: Path, originals: Path,
                                                         emulator: OllamaEmulator) -> None:
    emulator.models["gpt-5-mini"] = ["completion", "vision"]
    photo = add_fixture(originals, "Canon_PowerShot_S40.jpg")
    config = write(tmp_path, f"""
        Models:
          - Type: caption
            Model: gpt-5-mini
            Engine: openai
            Options: {{MaxOutputTokens: 300, Detail: low, Temperature: 0.4}}
            Service:
              Uri: {emulator.url}/v1/responses
              Key: sk-test
              Org: org-1
              Project: proj-1
              FileScheme: base64
        Daemon: {{StateDir: {tmp_path / "state"}}}
        """)

    result = run_captiond("run", "--config", config, "--originals", originals)

    assert result.exit_code == 0, result.stderr
    request = emulator.generation_requests()[0]
    assert request.path == "/v1/responses"
    assert request.headers["authorization"] == "Bearer sk-test"
    assert (request.headers["openai-organization"], request.headers["openai-project"]) == ("org-1", "proj-1")
    body = request.body
    assert body["model"] == "gpt-5-mini"  # verbatim, no :latest
    assert body["max_output_tokens"] == 512  # PhotoPrism raises a caption's MaxOutputTokens below 512 to 512
    assert "temperature" not in body and "top_p" not in body  # GPT-5 models take no sampling parameters
    assert body["reasoning"] == {"effort": "low"}  # PhotoPrism's for every GPT-5 model
    user = body["input"][-1]
    assert user["role"] == "user"
    assert [part["type"] for part in user["content"]] == ["input_text", "input_image"]
    assert user["content"][1]["image_url"].startswith("data:image/jpeg;base64,")  # a data URL whatever FileScheme
    assert user["content"][1]["detail"] == "low"
    assert read_tags(Path(f"{photo}.xmp"), "XMP-dc:Description")["XMP-dc:Description"].startswith("A photo")


# Shaped like PhotoPrism's internal/ai/vision/testdata/vision.yml: built-in ONNX/TensorFlow models, NSFW -1,
# a caption model on Ollama with Think as text, base64 and explicit formats.
PHOTOPRISM_TESTDATA_SHAPE = """
    Models:
    - Type: labels
      Default: true
      Name: efficientformerv2_s2
      Version: latest
      Resolution: 224
      ONNX:
        File: efficientformerv2_s2.onnx
        Input: {Name: input, Width: 224, Height: 224, Normalization: {Mean: [123.675, 116.28, 103.53]}}
        Output: {Name: logits, Width: 1000, Logits: true}
      CanonicalOrder: true
    - Type: nsfw
      Default: true
      Name: yahoo_open_nsfw
      Reduction: softmax-unsafe
      UnsafeClassIndex: 1
      DefaultThreshold: 0.8
    - Type: face
      Default: true
      Name: facenet
      TensorFlow: {Tags: [serve], Output: {Name: embeddings, Outputs: 512}}
    - Type: caption
      Model: gemma3:latest
      Engine: ollama
      Run: manual
      Resolution: 720
      Service:
        Uri: ${OLLAMA_BASE_URL}/api/generate
        Key: ${OLLAMA_API_KEY}
        Think: "false"
        FileScheme: base64
        RequestFormat: ollama
        ResponseFormat: ollama
    Thresholds:
      Confidence: 10
      NSFW: -1
    """


def test_photoprisms_test_configuration_loads_and_reads_in_photoprism(photoprism_reader: Path,
                                                                      tmp_path: Path) -> None:
    config = load(tmp_path, PHOTOPRISM_TESTDATA_SHAPE, {"OLLAMA_BASE_URL": "http://gpu-box:11434"})

    model = caption(config)
    assert (model.model_id, model.run, model.service.uri, model.service.think) == (
        "gemma3:latest", "manual", "http://gpu-box:11434/api/generate", "false")
    assert [(entry.type, entry.engine) for entry in config.models[:3]] == [
        ("labels", "onnx"), ("nsfw", "tensorflow"), ("face", "tensorflow")]
    assert config.thresholds.nsfw == -1
    photoprism_reads(photoprism_reader, tmp_path / "vision.yml", {})


def test_the_vision_service_format_is_named_and_left_to_photoprism(tmp_path: Path) -> None:
    config = load(tmp_path, """
        Models:
          - Type: caption
            Name: kosmos-2
            Service: {Uri: "http://vision:5000/api/v1/vision/caption", RequestFormat: vision}
        """)

    model = caption(config)
    assert not model.usable
    assert any("PhotoPrism's own Vision service API" in warning for warning in config.warnings)


# --- options, model names and prompts as PhotoPrism's engines set them ---------------------------------------------

def labels(config: Config) -> ModelConfig:
    model = config.model("labels")
    assert model is not None
    return model


def test_ollama_option_defaults_per_model_type_are_photoprisms(tmp_path: Path) -> None:
    # engine_ollama.go ollamaDefaults.Options: caption temperature 0.1; labels also top_p 0.9 and stop ["\n\n"].
    # GetOptions fills a default where the file's value is unset or 0 and caps Temperature at 2; zero values are
    # not sent (omitempty). num_predict is captiond's bound on an answer (PhotoPrism sends none).
    config = load(tmp_path, r"""
        Models:
          - Type: caption
            Model: gemma3
            Engine: ollama
            Options: {Temperature: 5, TopK: 0, Seed: 0}
          - Type: labels
            Model: gemma3:4b
            Engine: ollama
            Options: {Temperature: 0, Seed: 3407, MaxOutputTokens: 300}
        """)

    assert dict(caption(config).options) == {"temperature": 2.0, "num_predict": 256}
    assert dict(labels(config).options) == {"seed": 3407, "temperature": 0.1, "top_p": 0.9, "stop": ["\n\n"],
                                            "num_predict": 300}
    assert (caption(config).model_id, labels(config).model_id) == ("gemma3:latest", "gemma3:4b")


def test_a_labels_model_the_file_does_not_set_gets_photoprisms_labels_options(tmp_path: Path) -> None:
    config = load(tmp_path, """
        Models:
          - Type: caption
            Model: qwen2.5vl
            Version: 3b
            Engine: ollama
            Options: {NumPredict: 100, TopP: 0.5}
        """)

    assert labels(config).implied
    assert labels(config).model_id == "qwen2.5vl:3b"
    assert dict(labels(config).options) == {"num_predict": 100, "top_p": 0.5, "temperature": 0.1, "stop": ["\n\n"]}


def test_openai_responses_options_prompts_and_names_are_photoprisms(tmp_path: Path) -> None:
    # engine_openai.go: Detail low, MaxOutputTokens raised to 512 (caption) / 1024 (labels), no temperature
    # unless set; openai/defaults.go prompts; GetModel sends an OpenAI identifier verbatim, colons included.
    config = load(tmp_path, """
        Models:
          - Type: caption
            Model: gpt-5-nano:latest
            Engine: openai
            Options: {MaxOutputTokens: 2000, NumPredict: 50}
          - Type: labels
            Model: gpt-4.1-mini
            Engine: openai
            Options: {Temperature: 0.3, Detail: high}
        """, {"OPENAI_BASE_URL": "https://llm.example.com/v1/"})

    model = caption(config)
    assert (model.model_id, model.service.uri) == ("gpt-5-nano:latest", "https://llm.example.com/v1/responses")
    assert dict(model.options) == {"num_predict": 2000}
    assert model.system.startswith("You are a PhotoPrism vision model. Return concise, user-friendly captions")
    assert model.prompt.startswith("Provide exactly one sentence describing the key subject and action")
    assert dict(labels(config).options) == {"temperature": 0.3, "num_predict": 1024}
    assert labels(config).detail == "high"
    assert labels(config).system.startswith("You are a PhotoPrism vision model. Emit JSON that matches")


# --- PhotoPrism's documented example configs (tests/fixtures/photoprism-vision, origins in tests/fixtures/README.md)
# load in captiond and produce the request PhotoPrism sends: endpoint, model, prompt, system, options, image
# scheme, think. Each expectation below is read from PhotoPrism's code (internal/ai/vision: engine_ollama.go,
# engine_openai.go, model.go GetModel/GetOptions/GetPrompt/GetSystemPrompt, labels.go, api_request.go openAIJSON,
# ollama/const.go, openai/defaults.go, schema/labels.go), not from captiond's.

EXAMPLES = FIXTURES / "photoprism-vision"
OLLAMA_CAPTION_PROMPT = ("Create a caption with exactly one sentence in the active voice that describes the main "
                         "visual content. Begin with the main subject and clear action. Avoid text formatting, "
                         "meta-language, and filler words.")
OLLAMA_LABELS_SYSTEM = ("You are a PhotoPrism vision model. Output concise JSON that matches the schema. Each label "
                        "name MUST be a single-word noun in its canonical singular form. Avoid spaces, punctuation, "
                        "emoji, or descriptive phrases.")
LABELS_PROMPT = "Analyze the image and return label objects with name, confidence (0-1), and topicality (0-1)."
# labels.go: the prompt, a blank line, model.SchemaInstructions(): Ollama's example document (schema.LabelsJson)
OLLAMA_SCHEMA = ('Return JSON that matches this schema:\n{\n  "labels": [{\n    "name": "",\n    "confidence": 0,\n'
                 '    "topicality": 0 }]\n}')
OPENAI_CAPTION_SYSTEM = ("You are a PhotoPrism vision model. Return concise, user-friendly captions that describe the "
                         "main subjects accurately.")
OPENAI_CAPTION_PROMPT = ("Provide exactly one sentence describing the key subject and action in the image. Avoid "
                         "filler words and technical jargon.")
OPENAI_LABELS_SYSTEM = ("You are a PhotoPrism vision model. Emit JSON that matches the provided schema and keep label "
                        "names short, singular nouns.")
# schema.LabelsJsonSchemaDefault: in the OpenAI labels prompt and as text.format's schema
OPENAI_LABELS_SCHEMA = {
    "type": "object",
    "properties": {"labels": {"type": "array", "items": {
        "type": "object",
        "properties": {"name": {"type": "string", "minLength": 1},
                       "confidence": {"type": "number", "minimum": 0, "maximum": 1},
                       "topicality": {"type": "number", "minimum": 0, "maximum": 1}},
        "required": ["name", "confidence", "topicality"], "additionalProperties": False}, "default": []}},
    "required": ["labels"], "additionalProperties": False}
OLLAMA_CAPTION_OPTIONS = {"temperature": 0.1}
OLLAMA_LABELS_OPTIONS = {"temperature": 0.1, "top_p": 0.9, "stop": ["\n\n"]}
QWEN_LABELS_PROMPT = (
    "Analyze the image and return JSON label objects with name, confidence (0-1), and topicality (0-1):\n"
    "- Return AT MOST 3 labels.\n- Each label name MUST be a single-word noun in canonical singular form.\n"
    "- Do NOT repeat the same label name more than once.\n"
    "- Do NOT add any fields other than name, confidence, topicality.\n"
    "- Do NOT output any text before or after the JSON.\n")
QWEN_CAPTION_PROMPT = (
    "Write one or two concise sentences that describe the main subject, key actions, and setting of the image:\n"
    "- Describe only what is clearly visible in the image; do not invent names, ages, or backstories.\n"
    "- Use natural, fluent language without bullet points or lists.\n"
    '- Do NOT start with phrases like "The image shows" or "In this picture".\n'
    "- Do NOT mention camera settings, image quality, filters, or art style unless they are essential to "
    "understanding the content.\n- Do NOT include quotation marks around the caption.\n"
    "- Respond with the caption text only, and nothing else.\n")


def ollama(model: str, prompt: str, options: dict[str, object], system: str = "",
           path: str = "/api/generate") -> dict[str, object]:
    """The Ollama request PhotoPrism sends: plain base64 images, think false (the engine's default)."""
    return {"path": path, "model": model, "prompt": prompt, "system": system, "options": options, "think": False,
            "image": "base64"}


def openai(model: str, system: str, prompt: str, max_output_tokens: int, detail: str = "low",
           **extra: object) -> dict[str, object]:
    """The Responses API request PhotoPrism's openai engine sends: a data URL, GPT-5 reasoning effort low."""
    return {"path": "/v1/responses", "model": model, "system": system, "prompt": prompt,
            "max_output_tokens": max_output_tokens, "detail": detail, "image": "data", **extra}


EXPECTED: dict[str, dict[str, dict[str, object]]] = {
    "testdata-vision.yml": {
        "caption": ollama("gemma4:latest", OLLAMA_CAPTION_PROMPT, OLLAMA_CAPTION_OPTIONS)},
    "testdata-vision-251130.yml": {
        "caption": ollama("gemma3:latest", OLLAMA_CAPTION_PROMPT, OLLAMA_CAPTION_OPTIONS)},
    "docs-using-ollama.yml": {
        "caption": ollama("gemma3:latest", OLLAMA_CAPTION_PROMPT, OLLAMA_CAPTION_OPTIONS),
        "labels": ollama("gemma3:latest", f"{LABELS_PROMPT}\n\n{OLLAMA_SCHEMA}", OLLAMA_LABELS_OPTIONS,
                         OLLAMA_LABELS_SYSTEM)},
    "docs-using-ollama-thinking.yml": {
        "caption": ollama("qwen3-vl:235b-instruct", OLLAMA_CAPTION_PROMPT, OLLAMA_CAPTION_OPTIONS)},
    "docs-ollama-cloud.yml": {
        "caption": ollama("minimax-m3:cloud", OLLAMA_CAPTION_PROMPT, OLLAMA_CAPTION_OPTIONS),
        "labels": ollama("minimax-m3:cloud", f"{LABELS_PROMPT}\n\n{OLLAMA_SCHEMA}", OLLAMA_LABELS_OPTIONS,
                         OLLAMA_LABELS_SYSTEM)},
    "docs-ollama-models-phrase.yml": {  # PhotoPrism keeps its single-word system prompt: the docs say to set System
        "labels": ollama("qwen3.5:4b", f"{LABELS_PROMPT}\n\n{OLLAMA_SCHEMA}", OLLAMA_LABELS_OPTIONS,
                         OLLAMA_LABELS_SYSTEM)},
    "docs-ollama-models-gemma4-labels.yml": {
        "labels": ollama("gemma4:latest", f"{LABELS_PROMPT}\n\n{OLLAMA_SCHEMA}", OLLAMA_LABELS_OPTIONS,
                         OLLAMA_LABELS_SYSTEM)},
    "docs-ollama-models-gemma4-caption.yml": {  # a folded scalar ends in a line break, sent as written
        "caption": ollama("gemma4:latest", OLLAMA_CAPTION_PROMPT + "\n", OLLAMA_CAPTION_OPTIONS)},
    "docs-ollama-models-qwen35-labels.yml": {  # labels.go trims the prompt before the schema is appended
        "labels": ollama("qwen3.5:4b", f"{QWEN_LABELS_PROMPT.strip()}\n\n{OLLAMA_SCHEMA}",
                         {"seed": 3407, "temperature": 0.01, "top_k": 40, "top_p": 0.9, "min_p": 0.05,
                          "typical_p": 1.0, "repeat_last_n": 128, "repeat_penalty": 1.2, "num_predict": 512,
                          "stop": ["\n\n"]}, OLLAMA_LABELS_SYSTEM)},
    "docs-ollama-models-qwen35-caption.yml": {
        "caption": ollama("qwen3.5:4b", QWEN_CAPTION_PROMPT,
                          {"seed": 3407, "temperature": 0.25, "top_k": 20, "top_p": 0.8, "min_p": 0.05,
                           "typical_p": 1.0, "repeat_last_n": 64, "repeat_penalty": 1.1, "num_predict": 128},
                          "You are an image captioning assistant.")},
    "readme-ollama-labels.yml": {
        "labels": ollama("gemma4:latest", f"{LABELS_PROMPT}\n\n{OLLAMA_SCHEMA}", OLLAMA_LABELS_OPTIONS,
                         OLLAMA_LABELS_SYSTEM)},
    "readme-ollama-labels-phrase.yml": {
        "labels": ollama("gemma4:latest", f"{LABELS_PROMPT}\n\n{OLLAMA_SCHEMA}", OLLAMA_LABELS_OPTIONS,
                         "You are a PhotoPrism vision model. Output concise JSON that matches the schema.\n")},
    "docs-using-openai.yml": {
        "caption": openai("gpt-5-nano", OPENAI_CAPTION_SYSTEM, OPENAI_CAPTION_PROMPT, 512),
        "labels": openai("gpt-5-mini", OPENAI_LABELS_SYSTEM,
                         f"{LABELS_PROMPT}\n\nReturn JSON that matches this schema:\n", 1024)},
    "docs-using-openai-labels-prompt.yml": {
        "labels": openai("gpt-5-mini", OPENAI_LABELS_SYSTEM,
                         "Analyze the image and return up to 3 label objects with German singular name, confidence "
                         "(0-1), and topicality (0-1).\n\nReturn JSON that matches this schema:\n", 1024)},
    "docs-using-openai-caption-prompt.yml": {
        "caption": openai("gpt-5-mini", OPENAI_CAPTION_SYSTEM,
                          "Provide one or two German sentences describing the key subject and action in the image. "
                          "Avoid filler words and technical jargon.", 512)},
    "readme-openai-captions.yml": {
        "caption": openai("gpt-5-mini", OPENAI_CAPTION_SYSTEM, OPENAI_CAPTION_PROMPT, 512,
                          headers={"openai-organization": "org-1", "openai-project": "proj-1"})},
}
# Examples with no model captiond runs: PhotoPrism's built-in ONNX/TensorFlow models and its Vision service.
LEFT_TO_PHOTOPRISM = ["testdata-vision-250707.yml", "testdata-vision-custom-tensorflow.yml",
                      "readme-builtin-defaults.yml", "readme-onnx-labels.yml"]
EXAMPLE_ENVIRONMENT = {"OPENAI_API_KEY": "sk-test", "OPENAI_ORG": "org-1", "OPENAI_PROJECT": "proj-1",
                       "OLLAMA_API_KEY": ""}


def test_every_photoprism_example_is_a_fixture_with_an_expectation() -> None:
    assert sorted(path.name for path in EXAMPLES.glob("*.yml")) == sorted([*EXPECTED, *LEFT_TO_PHOTOPRISM])


def example_config(name: str, tmp_path: Path, url: str) -> Path:
    """Return the example pointed at the emulator (only its hosts rewritten), with captiond's test settings added."""
    text = (EXAMPLES / name).read_text().replace("http://ollama:11434", url).replace("https://api.openai.com", url)
    daemon = {"StateDir": str(tmp_path / "state"), "SelfTest": False, "CacheSize": 0, "Timeout": 20,
              "Retry": {"Attempts": 2, "Delay": 0.05, "MaxDelay": 0.2, "Total": 20}}
    path = tmp_path / name
    path.write_text(text + yaml.safe_dump({"Daemon": daemon}))
    return path


def prompt_and_system(body: dict[str, object]) -> tuple[str, str]:
    """Return the prompt and system prompt of an Ollama or Responses API request."""
    if "input" not in body:
        return str(body.get("prompt", "")), str(body.get("system", ""))
    texts = {message["role"]: [part.get("text", "") for part in message["content"]  # type: ignore[index]
                               if part.get("type") == "input_text"][0] for message in body["input"]}  # type: ignore[attr-defined]
    return texts.get("user", ""), texts.get("system", "")


LABELS_ANSWER = '{"labels":[{"name":"cat","confidence":0.9,"topicality":0.8}]}'


def answer(body: dict[str, object]) -> str:
    """The emulator's answer: labels JSON to a labels request, its usual caption otherwise."""
    prompt, _ = prompt_and_system(body)
    return LABELS_ANSWER if "label objects" in prompt else default_reply(body)


@pytest.mark.subprocess
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_photoprisms_example_configs_send_photoprisms_request(name: str, tmp_path: Path, originals: Path,
                                                              emulator: OllamaEmulator) -> None:
    expected = EXPECTED[name]
    emulator.reply = answer
    for model in ("gemma3:latest", *(str(request["model"]) for request in expected.values())):
        emulator.models[model] = ["completion", "vision"]
    add_fixture(originals, "Canon_PowerShot_S40.jpg")
    environ = {**EXAMPLE_ENVIRONMENT, "OLLAMA_BASE_URL": emulator.url, "OPENAI_BASE_URL": f"{emulator.url}/v1"}
    config = example_config(name, tmp_path, emulator.url)

    result = run_captiond("run", "--config", config, "--originals", originals, "-m", ",".join(expected), env=environ)

    assert result.exit_code == 0, result.stderr
    requests = emulator.generation_requests()
    for model_type, request in expected.items():
        sent = [each for each in requests if each.body["model"] == request["model"]
                and ("label objects" in prompt_and_system(each.body)[0]) == (model_type == "labels")]
        assert len(sent) == 1, (model_type, [each.body.get("model") for each in requests])
        check_request(sent[0], request)


def check_request(sent: RecordedRequest, expected: dict[str, object]) -> None:
    """Compare a captured request with PhotoPrism's: endpoint, model, prompt, system, options, image scheme, think."""
    body = sent.body
    prompt, system = prompt_and_system(body)
    with Image.open(io.BytesIO(sent.images()[0])) as image:
        assert max(image.size) <= 720  # PhotoPrism's 720 px thumbnail (Resolution) for Ollama and OpenAI
    assert sent.path == expected["path"]
    assert body["model"] == expected["model"]
    assert system == expected["system"]
    if sent.path == "/v1/responses":
        schema_text = "Return JSON that matches this schema:\n"
        if str(expected["prompt"]).endswith(schema_text):  # the schema follows as text: compare it as JSON
            assert prompt.startswith(str(expected["prompt"]))
            assert json.loads(prompt[len(str(expected["prompt"])):]) == OPENAI_LABELS_SCHEMA
            assert body["text"]["format"]["schema"] == OPENAI_LABELS_SCHEMA
        else:
            assert prompt == expected["prompt"]
            assert "text" not in body
        assert body["max_output_tokens"] == expected["max_output_tokens"]
        image = body["input"][-1]["content"][-1]
        assert (image["type"], image["detail"]) == ("input_image", expected["detail"])
        assert image["image_url"].startswith("data:image/jpeg;base64,")
        assert body["reasoning"] == {"effort": "low"}  # every example is a GPT-5 model
        assert "think" not in body  # openAIJSON sends no think
        assert "temperature" not in body and "top_p" not in body
        assert sent.headers["authorization"] == "Bearer sk-test"
        for header, value in dict(expected.get("headers", {})).items():  # type: ignore[call-overload]
            assert sent.headers[header] == value
    else:
        assert prompt == expected["prompt"]
        options = dict(body["options"])
        assert options.pop("num_predict") == dict(expected["options"]).get("num_predict", 256)  # type: ignore[call-overload]
        assert options == {key: value for key, value in dict(expected["options"]).items()  # type: ignore[call-overload]
                           if key != "num_predict"}
        assert body["think"] is expected["think"]
        assert not body["images"][0].startswith("data:")  # plain base64, whatever FileScheme says
        # captiond asks for its labels JSON schema as `format` where PhotoPrism sends "json"; a caption has none
        assert ("format" in body) == ("label objects" in prompt)
        assert "authorization" not in sent.headers  # OLLAMA_API_KEY is empty


@pytest.mark.parametrize("name", LEFT_TO_PHOTOPRISM)
def test_photoprisms_examples_for_its_own_models_load_and_are_left_to_it(name: str, tmp_path: Path) -> None:
    config = load_config(example_config(name, tmp_path, "http://127.0.0.1:9"), {})

    entries = len(yaml.safe_load((EXAMPLES / name).read_text())["Models"])
    assert [model for model in config.models[:entries] if model.usable] == []
    assert config.model("caption") is not None  # captiond's own default caption model


@pytest.mark.subprocess
def test_username_and_password_are_basic_auth_as_in_photoprism(tmp_path: Path, originals: Path,
                                                                emulator: OllamaEmulator) -> None:
    add_fixture(originals, "Canon_PowerShot_S40.jpg")
    config = write(tmp_path, f"""
        Models:
          - Type: caption
            Model: qwen2.5vl:3b
            Engine: ollama
            Service: {{Uri: "{emulator.url}/api/generate", Username: alice, Password: "s3cret/+"}}
        Daemon: {{StateDir: {tmp_path / "state"}, SelfTest: false}}
        """)

    result = run_captiond("run", "--config", config, "--originals", originals, env={"OLLAMA_API_KEY": ""})

    assert result.exit_code == 0, result.stderr
    assert "s3cret" not in result.stderr + result.stdout
    credentials = base64.b64encode(b"alice:s3cret/+").decode()
    assert emulator.generation_requests()[0].headers["authorization"] == f"Basic {credentials}"


@pytest.mark.subprocess
def test_schema_version_names_the_responses_json_schema(tmp_path: Path, originals: Path,
                                                         emulator: OllamaEmulator) -> None:
    emulator.models["gpt-5-mini"] = ["completion", "vision"]
    emulator.reply = answer
    add_fixture(originals, "Canon_PowerShot_S40.jpg")
    schema = tmp_path / "labels.json"
    schema.write_text(json.dumps(OPENAI_LABELS_SCHEMA))
    config = write(tmp_path, f"""
        Models:
          - Type: labels
            Model: gpt-5-mini
            Engine: openai
            SchemaFile: {schema}
            Options: {{SchemaVersion: labels_v2}}
            Service: {{Uri: "{emulator.url}/v1/responses", Key: sk-test}}
        Daemon: {{StateDir: {tmp_path / "state"}, SelfTest: false}}
        """)

    result = run_captiond("run", "--config", config, "--originals", originals, "-m", "labels")

    assert result.exit_code == 0, result.stderr
    body = next(request.body for request in emulator.generation_requests() if request.path == "/v1/responses")
    assert body["text"]["format"] == {"type": "json_schema", "name": "labels_v2", "schema": OPENAI_LABELS_SCHEMA}
    prompt, _ = prompt_and_system(body)
    assert json.loads(prompt.split("Return JSON that matches this schema:\n", 1)[1]) == OPENAI_LABELS_SCHEMA
    assert "SchemaVersion" not in " ".join(load_config(config, {}).warnings)


def test_an_openai_model_without_a_name_is_photoprisms_default(tmp_path: Path) -> None:
    document = "Models:\n  - Type: caption\n    Engine: openai\n"
    assert caption(load(tmp_path, document)).model_id == "gpt-5-mini"
    assert caption(load(tmp_path, document, {"OPENAI_MODEL": "gpt-5-nano", "OLLAMA_MODEL": "x"})).model_id == (
        "gpt-5-nano")


def test_a_query_in_openai_base_url_moves_to_the_end_as_in_photoprism(tmp_path: Path) -> None:
    base = "https://example.openai.azure.com/openai/v1/?api-version=preview"
    config = load(tmp_path, "Models:\n  - Type: caption\n    Engine: openai\n", {"OPENAI_BASE_URL": base})
    assert caption(config).service.uri == "https://example.openai.azure.com/openai/v1/responses?api-version=preview"


def test_another_method_is_accepted_and_named_in_a_warning(tmp_path: Path) -> None:
    config = load(tmp_path, "Models:\n  - Type: caption\n    Engine: ollama\n    Service: {Method: PUT}\n")
    assert caption(config).service.method == "POST"
    assert any(warning.startswith("Models[0].Service.Method: PUT is used by PhotoPrism only")
               for warning in config.warnings)
