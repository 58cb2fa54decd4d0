"""`captiond retry` and `captiond status` act on the daemon's own database and settings, as an operator runs them."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from captiond import admin
from captiond.errors import StateError
from captiond.state import RowState, Stat, StateStore
from conftest import MODEL, add_fixture, run_captiond, stored_row, write_config
from emulator import OllamaEmulator, Status
from test_watch import Daemon, sidecar_caption, wait_for

SETTLE = 0.3


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    daemons: list[Daemon] = []

    def start(config: Path, originals: Path, *extra: str, env: dict[str, str] | None = None) -> Daemon:
        saved = dict(os.environ)
        os.environ.update(env or {})
        try:
            daemon = Daemon(config, originals, tmp_path / "daemon.log", *extra)
        finally:
            os.environ.clear()
            os.environ.update(saved)
        daemons.append(daemon)
        return daemon

    yield start
    for daemon in daemons:
        if daemon.process.poll() is None:
            daemon.kill()


def rows(state_dir: Path) -> dict[str, tuple[str, int, str]]:
    if not (state_dir / "captiond.db").exists():
        return {}
    state = StateStore(state_dir, readonly=True)
    try:
        return {path.name: (row.state, row.attempts, row.last_error)
                for path in (Path(os.fsdecode(key)) for key in state.known_stats())
                if (row := stored_row(state, path)) is not None}
    except StateError as error:
        if "no such table" in str(error):
            return {}  # the daemon has created the file, not yet its schema
        raise
    finally:
        state.close()


@pytest.mark.subprocess
def test_retry_requeues_a_failed_photo_and_the_running_daemon_captions_it(
        tmp_path: Path, originals: Path, emulator: OllamaEmulator, start_daemon: Callable[..., Daemon]) -> None:
    photo = add_fixture(originals, "Canon_PowerShot_S40.jpg")
    emulator.enqueue(Status(400, "the server refused this image"))
    config = write_config(tmp_path, emulator.url, daemon={"Settle": SETTLE})
    daemon = start_daemon(config, originals)
    assert wait_for(lambda: rows(tmp_path / "state").get(photo.name, ("",))[0] == RowState.FAILED,
                    timeout=30), daemon.log()

    status = run_captiond("status", "--config", config)
    assert status.exit_code == 0, status.stderr
    assert "1 failed" in status.stdout and "captiond retry" in status.stdout

    retry = run_captiond("retry", "--config", config)
    assert retry.exit_code == 0, retry.stderr
    assert "queued again: 1 files (1 failed" in retry.stdout
    assert wait_for(lambda: bool(sidecar_caption(photo)), timeout=30), daemon.log()
    assert rows(tmp_path / "state")[photo.name][0] == RowState.DONE
    assert daemon.stop() == 0


@pytest.mark.subprocess
def test_retry_takes_failed_quarantined_and_waiting_rows_that_match_the_filter(tmp_path: Path, originals: Path,
                                                                              emulator: OllamaEmulator) -> None:
    config = write_config(tmp_path, emulator.url)
    config_document = yaml.safe_load(config.read_text())
    config_document["Daemon"]["Originals"] = str(originals)
    config.write_text(yaml.safe_dump(config_document))
    names = ["2024/a.jpg", "2024/b.jpg", "2024/c.jpg", "2023/d.jpg", "2024/e.jpg"]
    paths = [add_fixture(originals, "Canon_PowerShot_S40.jpg", name) for name in names]
    state = StateStore(tmp_path / "state")
    try:
        state.enqueue([(path, Stat.of(path), 0.0) for path in paths])  # type: ignore[misc]
        state.claim(10)
        state.finish(paths[0], RowState.FAILED, Stat.of(paths[0]), "the folder is read-only")
        state.finish(paths[1], RowState.QUARANTINED, Stat.of(paths[1]), "crashed the model server twice", crashed=True)
        state.retry_later(paths[2], "server busy", delay=900)
        state.finish(paths[3], RowState.FAILED, Stat.of(paths[3]), "the folder is read-only")
        state.finish(paths[4], RowState.DONE, Stat.of(paths[4]))
    finally:
        state.close()

    retry = run_captiond("retry", "--config", config, "2024")
    assert retry.exit_code == 0, retry.stderr
    assert "queued again: 3 files (1 failed, 1 quarantined, 1 waiting for a retry)" in retry.stdout
    after = rows(tmp_path / "state")
    assert after["a.jpg"] == after["b.jpg"] == after["c.jpg"] == (RowState.PENDING, 0, "")
    assert after["d.jpg"][0] == RowState.FAILED and after["e.jpg"][0] == RowState.DONE
    assert run_captiond("retry", "--config", config, "name:d.jpg").stdout.startswith("queued again: 1 files")


@pytest.mark.subprocess
def test_status_checks_the_server_the_daemon_uses_not_the_shells(tmp_path: Path, originals: Path,
                                                                 emulator: OllamaEmulator,
                                                                 start_daemon: Callable[..., Daemon]) -> None:
    """The unit sets OLLAMA_BASE_URL in Environment=; a shell does not see it, but status checks that server."""
    photo = add_fixture(originals, "Canon_PowerShot_S40.jpg")
    config = tmp_path / "vision.yml"
    config.write_text(yaml.safe_dump({
        "Models": [{"Type": "caption", "Model": MODEL, "Engine": "ollama"}],
        "Daemon": {"StateDir": str(tmp_path / "state"), "Settle": SETTLE}}))
    daemon = start_daemon(config, originals, env={"OLLAMA_BASE_URL": f"http://user:secret@127.0.0.1:{emulator.port}"})
    assert wait_for(lambda: bool(sidecar_caption(photo)), timeout=30), daemon.log()

    status = run_captiond("status", "--config", config, env={"OLLAMA_BASE_URL": "http://127.0.0.1:9"})
    assert status.exit_code == 0, status.stderr
    assert f"127.0.0.1:{emulator.port}" in status.stdout and ": ok" in status.stdout, status.stdout
    assert "secret" not in status.stdout and "user:***@" in status.stdout
    assert f"pid {daemon.process.pid}" in status.stdout and str(originals) in status.stdout
    assert daemon.stop() == 0


@pytest.mark.subprocess
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: checks what root does to a non-root daemon's database")
def test_retry_as_root_acts_as_the_owner_of_the_database(tmp_path: Path, emulator: OllamaEmulator) -> None:
    """Root's -wal/-shm files would lock the daemon out: root becomes the database's owner instead."""
    home = Path(tempfile.mkdtemp(prefix="captiond-retry-"))  # not under pytest's root-only folder
    try:
        home.chmod(0o755)
        config = write_config(home, emulator.url)
        photo = add_fixture(home / "originals", "Canon_PowerShot_S40.jpg")
        state = StateStore(home / "state")
        state.enqueue([(photo, Stat.of(photo), 0.0)])  # type: ignore[list-item]
        state.claim(1)
        state.finish(photo, RowState.FAILED, Stat.of(photo), "the folder is read-only")
        state.close()
        for path in [home / "state", *(home / "state").iterdir()]:
            os.chown(path, 1500, 1500)

        retry = run_captiond("retry", "--config", config)
        assert retry.exit_code == 0, retry.stderr
        assert "queued again: 1 files" in retry.stdout
        assert {path.name: path.stat().st_uid for path in (home / "state").iterdir()} == dict.fromkeys(
            [path.name for path in (home / "state").iterdir()], 1500)
    finally:
        shutil.rmtree(home)


@pytest.mark.subprocess
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: checks what root is told about another user's library")
def test_run_as_root_over_another_users_library_says_how_to_run_as_its_owner(tmp_path: Path, originals: Path,
                                                                             emulator: OllamaEmulator) -> None:
    """`docker compose exec captiond captiond run` runs as root: its new sidecars would lock the daemon out."""
    add_fixture(originals, "Canon_PowerShot_S40.jpg")
    os.chown(originals, 1500, 1500)
    result = run_captiond("run", "--config", write_config(tmp_path, emulator.url), "--originals", originals)
    assert result.exit_code == 0, result.stderr
    assert "running as root over" in result.stderr and "--user 1500" in result.stderr
    os.chown(originals, 0, 0)
    quiet = run_captiond("run", "--config", tmp_path / "vision.yml", "--originals", originals)
    assert "running as root over" not in quiet.stderr


def test_a_user_without_a_name_is_recorded_by_number() -> None:
    """`docker run --user 1500:1500`: the daemon's uid has no passwd entry, and must still start."""
    uid = next(number for number in range(1500, 60000) if number not in {entry.pw_uid for entry in pwd.getpwall()})
    assert admin._user_name(uid) == str(uid)
    assert admin._user_name(0) == "root"
