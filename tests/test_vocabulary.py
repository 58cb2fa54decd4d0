"""The vocabularies are types: mypy --strict reports a misspelt mode, status or row state."""

from __future__ import annotations

from pathlib import Path

from mypy import api

from captiond.config import API_FORMATS, KNOWN_ENGINES, WATCHERS, WRITE_MODES, Think, parse_config
from captiond.pipeline import Status
from captiond.state import RowState

SOURCE_ROOT = Path(__file__).parent.parent / "daemon"

MISSPELT = '''
from pathlib import Path

from captiond.config import Config
from captiond.pipeline import Outcome, Status
from captiond.state import RowState, StateStore


def misspelt(config: Config, store: StateStore) -> object:
    store.finish(Path("a.jpg"), "faild", None)
    return (config.daemon.write == "embeded", Status.CAPTIOND, Outcome(Path("a.jpg"), "captiond"),
            store.counts()["pendng"], RowState.DONE)
'''


def test_mypy_reports_a_misspelt_mode_status_or_row_state(tmp_path: Path) -> None:
    checked = tmp_path / "misspelt.py"
    checked.write_text(MISSPELT)
    settings = tmp_path / "mypy.ini"
    settings.write_text(f"[mypy]\nmypy_path = {SOURCE_ROOT}\npython_version = 3.11\nstrict = True\n")
    # The project's own cache (as `mypy` in the checkout keeps it): a second run takes a second or two.
    stdout, stderr, status = api.run(["--config-file", str(settings), "--no-error-summary",
                                      "--cache-dir", str(SOURCE_ROOT.parent / ".mypy_cache"), str(checked)])
    assert status == 1, stdout + stderr
    errors = [line for line in stdout.splitlines() if ": error:" in line]
    assert any("Non-overlapping equality check" in line and "'embeded'" in line for line in errors), stdout
    assert any('Argument 2 to "finish"' in line and "RowState" in line for line in errors), stdout
    assert any("CAPTIOND" in line for line in errors), stdout
    assert any('Argument 2 to "Outcome"' in line and "Status" in line for line in errors), stdout
    assert any("Invalid index type" in line and "RowState" in line for line in errors), stdout
    assert len(errors) == 5, stdout


def test_the_values_are_the_words_of_vision_yml_and_the_database() -> None:
    assert WRITE_MODES == ("sidecar", "embedded") and WATCHERS == ("auto", "inotify", "polling")
    assert API_FORMATS == ("ollama", "openai", "vision", "url", "images") and KNOWN_ENGINES[:2] == ("ollama", "openai")
    assert [state.value for state in RowState] == ["pending", "running", "done", "failed", "quarantined"]
    assert Status.WOULD_CAPTION == "would caption" and f"{Status.FAILED}" == "failed"


def test_think_is_read_into_the_value_each_server_takes() -> None:
    def think(value: object) -> Think:
        document = {"Models": [{"Type": "caption", "Service": {"Think": value}}]}
        model = parse_config(document, environ={}, path=None).model("caption")
        assert model is not None
        return model.service.think

    assert think(False) is Think.FALSE and think(False).request_value is False
    assert think(True) is Think.TRUE and think("true").request_value is True
    assert think("High") is Think.HIGH and think("high").request_value == "high" and think("high").effort == "high"
    assert think("max").request_value == "max" and think("max").effort == ""
