"""vision.yml: defaults, PhotoPrism's format, environment variables, and every problem reported at once."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from captiond.config import Config, ModelConfig, load_config, parse_config
from captiond.errors import ConfigError

EXAMPLE = Path(__file__).parent.parent / "vision.yml.example"


def load(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> Config:
    """Write `text` (dedented) as vision.yml and load it with only `environ` as the environment."""
    path = tmp_path / "vision.yml"
    path.write_text(textwrap.dedent(text))
    return load_config(path, environ or {})


def caption_model(config: Config) -> ModelConfig:
    model = config.model("caption")
    assert model is not None
    return model


def problems_of(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> list[str]:
    """Return the problems of an invalid vision.yml (fails when it loads)."""
    with pytest.raises(ConfigError) as raised:
        load(tmp_path, text, environ)
    return raised.value.problems


def test_a_file_with_one_caption_model_gets_every_default(tmp_path: Path) -> None:
    config = load(tmp_path, """
        Models:
          - Type: caption
            Model: qwen2.5vl:3b
    """)

    model = caption_model(config)
    assert model.name == "qwen2.5vl:3b"
    assert model.engine == "ollama"
    assert model.resolution == 720
    assert dict(model.options) == {"temperature": 0.1, "num_predict": 256}
    assert model.service.uri == "http://localhost:11434/api/generate"
    assert model.service.think == "false"
    assert (model.service.request_format, model.service.file_scheme) == ("ollama", "base64")
    assert model.prompt.startswith("Create a caption with exactly one sentence")
    daemon = config.daemon
    assert (daemon.write, daemon.sidecar_name, daemon.parallel, daemon.max_length) == ("sidecar", "ext", 1, 500)
    assert config.warnings == ()


def test_an_empty_file_or_document_still_has_a_caption_model(tmp_path: Path) -> None:
    assert caption_model(load(tmp_path, "")).service.uri == "http://localhost:11434/api/generate"
    assert caption_model(parse_config({}, {}, None)).name == "gemma3:latest"
    with pytest.raises(ConfigError) as raised:
        parse_config(["Models"], {}, None)
    assert "expected a mapping" in raised.value.problems[0]


def test_pascal_case_options_are_mapped_to_ollama_names(tmp_path: Path) -> None:
    config = load(tmp_path, r"""
        Models:
          - Type: caption
            Options:
              Temperature: 0.3
              TopP: 0.8
              NumCtx: 4096
              Seed: 42
              Stop: ["\n\n", "END"]
    """)

    assert dict(caption_model(config).options) == {
        "temperature": 0.3, "top_p": 0.8, "num_ctx": 4096, "seed": 42, "stop": ["\n\n", "END"], "num_predict": 256,
    }


def test_the_last_enabled_caption_entry_wins_and_disabled_entries_are_skipped(tmp_path: Path) -> None:
    config = load(tmp_path, """
        Models:
          - Type: caption
            Model: first
          - Type: caption
            Model: second
          - Type: caption
            Model: third
            Disabled: true
    """)

    assert caption_model(config).name == "second"


def test_variables_are_expanded_where_photoprism_expands_them(tmp_path: Path) -> None:
    config = load(tmp_path, """
        Models:
          - Type: caption
            Model: ${CAPTION_MODEL}
            Prompt: ${CAPTION_PROMPT:-Describe the photo.}
            System: ${MISSING_SYSTEM}
            Service:
              Uri: ${OLLAMA_HOST_URL:-http://gpu-box:11434}/api/generate
              Key: ${MY_TOKEN}
    """, {"CAPTION_MODEL": "gemma3:4b", "MY_TOKEN": "secret"})

    model = caption_model(config)
    # PhotoPrism expands Model (*_MODEL), Uri (*_URL, *_URI, *_HOST) and Key; Prompt and System are used as written.
    assert (model.name, model.prompt, model.system) == (
        "gemma3:4b", "${CAPTION_PROMPT:-Describe the photo.}", "${MISSING_SYSTEM}")
    assert model.service.uri == "http://gpu-box:11434/api/generate"  # the old form still works, with a warning
    assert model.service.key == "secret"
    assert [warning for warning in config.warnings if "Models[0].System" in warning][0].endswith("used as written")
    assert any(warning.startswith("Models[0].Service.Uri: ${OLLAMA_HOST_URL:-http://gpu-box:11434} is captiond's "
                                  "old form") for warning in config.warnings)


def test_variables_are_expanded_in_numbers_too(tmp_path: Path) -> None:
    # vision.yml.example promises "${VAR} and ${VAR:-default} are replaced by environment variables".
    config = load(tmp_path, """
        Models:
          - Type: caption
            Resolution: ${CAPTION_RESOLUTION:-512}
        Daemon:
          Parallel: ${CAPTIOND_PARALLEL}
    """, {"CAPTIOND_PARALLEL": "4"})

    assert caption_model(config).resolution == 512
    assert config.daemon.parallel == 4


def test_ollama_environment_variables_fill_the_defaults(tmp_path: Path) -> None:
    config = load(tmp_path, """
        Models:
          - Type: caption
    """, {"OLLAMA_BASE_URL": "http://gpu-box:11434/", "OLLAMA_API_KEY": "ollama-token"})

    service = caption_model(config).service
    assert (service.uri, service.key) == ("http://gpu-box:11434/api/generate", "ollama-token")


def test_unknown_keys_are_warnings_naming_where_they_are(tmp_path: Path) -> None:
    config = load(tmp_path, """
        Modles: []
        Models:
          - Type: caption
            Resolutoin: 512
            Options:
              Temprature: 0.5
            Service:
              Url: http://x/api/generate
        Daemon:
          Paralel: 2
    """)

    warnings = "\n".join(config.warnings)
    for location in ("Modles", "Models[0].Resolutoin", "Models[0].Options.Temprature", "Models[0].Service.Url",
                     "Daemon.Paralel"):
        assert location in warnings
    assert caption_model(config).resolution == 720


def test_a_bad_file_lists_every_problem_with_its_location_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        load(tmp_path, """
        Models:
          - Type: caption
            Model: ok
          - Type: caption
            Resolution: big
            Options:
              Temperature: hot
        Thresholds:
          Confidence: 150
        Daemon:
          Write: cloud
    """)

    problems = raised.value.problems
    assert raised.value.exit_code == 2
    assert "4 problem(s)" in str(raised.value)
    assert all(problem in str(raised.value) for problem in problems)
    assert 'Models[1].Resolution: expected a positive integer, got "big"' in problems
    assert any(problem.startswith("Models[1].Options.Temperature:") and '"hot"' in problem for problem in problems)
    assert any(problem.startswith("Thresholds.Confidence:") and "150" in problem for problem in problems)
    assert any(problem.startswith("Daemon.Write:") and '"cloud"' in problem for problem in problems)
    assert len(problems) == 4


@pytest.mark.parametrize(("text", "line", "column"), [
    pytest.param("Models:\n  - Type: caption\n   Model: x\n", 3, 4, id="bad indentation"),
    pytest.param("Models: [\n", 2, 1, id="unclosed list"),
])
def test_invalid_yaml_reports_line_and_column(tmp_path: Path, text: str, line: int, column: int) -> None:
    problems = problems_of(tmp_path, text)

    assert len(problems) == 1
    assert f"line {line}, column {column}" in problems[0]
    assert "not valid YAML" in problems[0]


def test_an_openai_chat_completions_uri_infers_the_openai_format(tmp_path: Path) -> None:
    config = load(tmp_path, """
        Models:
          - Type: caption
            Model: qwen2.5-vl-7b-instruct
            Engine: openai
            Service:
              Uri: http://localhost:8080/v1/chat/completions
    """, {"OPENAI_API_KEY": "sk-local"})

    model = caption_model(config)
    assert (model.engine, model.service.request_format, model.service.file_scheme) == ("openai", "openai", "data")
    assert model.service.key == "sk-local"


def test_the_openai_engine_without_a_uri_is_openais_responses_api_as_in_photoprism(tmp_path: Path) -> None:
    config = load(tmp_path, """
        Models:
          - Type: caption
            Engine: openai
    """)

    assert caption_model(config).service.uri == "https://api.openai.com/v1/responses"


def test_a_photoprism_file_with_builtin_tensorflow_models_still_finds_the_caption_model(tmp_path: Path) -> None:
    config = load(tmp_path, """
        Models:
          - Type: labels
            Default: true
          - Type: nsfw
            Default: true
          - Type: labels
            Name: NASNet
            Engine: tensorflow
            Path: nasnet
            Resolution: 224
            TensorFlow:
              Output:
                Logits: true
              Tags: [serve]
          - Type: caption
            Model: gemma3:latest
            Engine: ollama
            Run: on-schedule
            Service:
              Uri: http://ollama:11434/api/generate
        Thresholds:
          Confidence: 10
    """)

    model = caption_model(config)
    assert model.index == 3
    assert model.name == "gemma3:latest"
    assert model.service.uri == "http://ollama:11434/api/generate"
    assert config.thresholds.confidence == 10
    assert config.warnings == ()


def test_the_shipped_example_loads_without_problems() -> None:
    if not EXAMPLE.is_file():
        pytest.skip("vision.yml.example does not exist yet")

    config = load_config(EXAMPLE, {})

    assert config.warnings == ()
    assert caption_model(config).type == "caption"
