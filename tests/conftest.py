"""Shared test fixtures: a temporary library of real files, the Ollama emulator, and running captiond."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from captiond.state import FileState, StateStore
from emulator import OllamaEmulator

TESTS = Path(__file__).parent
FIXTURES = TESTS / "fixtures"
SOURCE_ROOT = TESTS.parent / "daemon"
MODEL = "qwen2.5vl:3b"


@dataclass(frozen=True)
class Result:
    """A finished captiond process."""

    exit_code: int
    stdout: str
    stderr: str


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test under tests/reliability `reliability`."""
    for item in items:
        if "reliability" in item.path.relative_to(TESTS).parts[:-1]:
            item.add_marker(pytest.mark.reliability)


@pytest.fixture(autouse=True)
def subprocess_marked(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail a test that starts `python -m captiond` without the subprocess mark: the unit-level run stays fast."""
    if request.node.get_closest_marker("subprocess") or request.node.get_closest_marker("reliability"):
        return
    original = subprocess.Popen.__init__

    def refuse_captiond(self: subprocess.Popen[Any], args: Any, *rest: Any, **options: Any) -> None:
        words = [os.fsdecode(word) for word in args] if isinstance(args, list | tuple) else [os.fsdecode(args)]
        if Path(words[0]).name == "captiond" or any(words[index:index + 2] == ["-m", "captiond"]
                                                     for index in range(len(words))):
            raise AssertionError(f"{request.node.nodeid} starts captiond: mark it @pytest.mark.subprocess")
        original(self, args, *rest, **options)

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse_captiond)


@pytest.fixture(autouse=True)
def private_state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Give every test its own default state folder, so no result cache is shared between tests."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)


@pytest.fixture
def emulator() -> Iterator[OllamaEmulator]:
    """An Ollama emulator on 127.0.0.1 with a vision model, a text-only model and a thinking model."""
    with OllamaEmulator() as server:
        yield server


@pytest.fixture
def originals(tmp_path: Path) -> Path:
    """An empty originals folder."""
    folder = tmp_path / "originals"
    folder.mkdir()
    return folder


def add_fixture(originals: Path, name: str, as_name: str | None = None) -> Path:
    """Copy a fixture into the library (optionally under another name or subfolder); return its path."""
    target = originals / (as_name or name)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(FIXTURES / name, target)
    return target


def write_config(directory: Path, url: str, *, model: str = MODEL, service: dict[str, object] | None = None,
                 daemon: dict[str, object] | None = None, entry: dict[str, object] | None = None) -> Path:
    """Write a vision.yml for the emulator with fast retries; return its path.

    The result cache is off unless `daemon` sets CacheSize: many tests copy one fixture many times to
    make work, and each copy must reach the model.
    """
    document = {
        "Models": [{"Type": "caption", "Model": model, "Engine": "ollama",
                    "Service": {"Uri": f"{url}/api/generate", **(service or {})}, **(entry or {})}],
        "Daemon": {"StateDir": str(directory / "state"), "Timeout": 10, "SelfTest": False, "CacheSize": 0,
                   "Retry": {"Attempts": 3, "Delay": 0.05, "MaxDelay": 0.2, "Total": 20}, **(daemon or {})},
    }
    path = directory / "vision.yml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def run_captiond(*arguments: str | os.PathLike[str], timeout: float = 120, env: dict[str, str] | None = None,
                 ) -> Result:
    """Run `python -m captiond ARGS` as a user would; return its exit code and output."""
    environment = {**os.environ, "PYTHONPATH": str(SOURCE_ROOT), **(env or {})}
    process = subprocess.run([sys.executable, "-m", "captiond", *map(str, arguments)], capture_output=True,
                             text=True, timeout=timeout, env=environment, stdin=subprocess.DEVNULL)
    return Result(process.returncode, process.stdout, process.stderr)


def file_hash(path: Path) -> str:
    """Return the sha256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree_hashes(folder: Path) -> dict[str, str]:
    """Return {relative path: sha256} of every file under a folder."""
    return {path.relative_to(folder).as_posix(): file_hash(path) for path in sorted(folder.rglob("*"))
            if path.is_file()}


def read_tags(path: Path, *tags: str) -> dict[str, str]:
    """Return tags read by a separate exiftool process (-G1, with our namespace config)."""
    config = SOURCE_ROOT / "captiond" / "exiftool.config"
    output = subprocess.run(["exiftool", "-config", str(config), "-j", "-G1", *[f"-{tag}" for tag in tags],
                             str(path)], capture_output=True, text=True, check=False).stdout
    record = json.loads(output)[0] if output.strip() else {}
    return {key: str(value) for key, value in record.items() if key != "SourceFile"}


def stored_row(state: StateStore, path: Path) -> FileState | None:
    """Return a file's row as the state database holds it (read here: captiond itself never asks for one row)."""
    with contextlib.closing(sqlite3.connect(f"file:{state.path}?mode=ro", uri=True, timeout=10)) as connection:
        row = connection.execute("SELECT size, mtime_ns, state, attempts, crashes, last_error, next_try, updated, "
                                 "changed FROM files WHERE path=?", (os.fsencode(path),)).fetchone()
    if row is None:
        return None
    size, mtime_ns, row_state, attempts, crashes, last_error, next_try, updated, changed = row
    return FileState(path, size, mtime_ns, row_state, attempts, crashes, last_error, next_try, updated, bool(changed))
