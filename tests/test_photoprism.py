"""One vision.yml for PhotoPrism and captiond: every shipped file reads in PhotoPrism's reader (the real Go yaml.v2
with PhotoPrism's struct shapes, tests/photoprism/vision_reader.go) with usable endpoints, variables expand as
PhotoPrism expands them, old captiond-only forms still work with a warning, and `Run:` means what it means there."""

from __future__ import annotations

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

from captiond.config import (
    DEFAULT_OLLAMA_BASE_URL,
    RUN_TYPES,
    Config,
    ModelConfig,
    expand_variables,
    load_config,
)
from captiond.errors import ConfigError
from conftest import add_fixture, read_tags, run_captiond
from emulator import OllamaEmulator

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
