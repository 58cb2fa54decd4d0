"""The SQLite state queue: what a rescan, a crash and a retry do to a file's row."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from captiond.errors import StateError
from captiond.state import RowState, Stat, StateStore
from conftest import stored_row


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    return StateStore(tmp_path / "state")


def test_new_file_is_queued_once_and_unchanged_file_stays_done(store: StateStore, tmp_path: Path) -> None:
    photo = tmp_path / "a.jpg"
    assert store.enqueue([(photo, Stat(10, 1), 0)]) == 1
    assert store.enqueue([(photo, Stat(10, 1), 0)]) == 0
    [row] = store.claim(10)
    assert row.path == photo and row.state == RowState.RUNNING
    store.finish(photo, RowState.DONE, Stat(10, 1), "captioned")
    assert store.enqueue([(photo, Stat(10, 1), 0)]) == 0
    assert store.counts()[RowState.DONE] == 1


def test_changed_file_is_queued_again_and_marked_changed(store: StateStore, tmp_path: Path) -> None:
    photo = tmp_path / "a.jpg"
    store.enqueue([(photo, Stat(10, 1), 0)])
    store.claim(1)
    store.finish(photo, RowState.DONE, Stat(10, 1))
    assert store.enqueue([(photo, Stat(12, 2), 0)]) == 1
    [row] = store.claim(1)
    assert row.changed and (row.size, row.mtime_ns) == (12, 2)


def test_crash_recovery_puts_running_rows_back(store: StateStore, tmp_path: Path) -> None:
    store.enqueue([(tmp_path / name, Stat(1, 1), 0) for name in ("a.jpg", "b.jpg")])
    store.claim(2)
    reopened = StateStore(tmp_path / "state")
    assert reopened.recover() == 2
    assert reopened.counts()[RowState.PENDING] == 2


def test_transient_failure_waits_and_counts_attempts(store: StateStore, tmp_path: Path) -> None:
    photo = tmp_path / "a.jpg"
    store.enqueue([(photo, Stat(1, 1), 0)])
    store.claim(1)
    row = store.retry_later(photo, "HTTP 503: busy", delay=60)
    assert row is not None and (row.state, row.attempts, row.last_error) == (RowState.PENDING, 1, "HTTP 503: busy")
    assert store.claim(1) == []
    assert [row.path for row in store.claim(1, now=time.time() + 61)] == [photo]
    # A rescan of the unchanged file does not reset the waiting row.
    store.retry_later(photo, "HTTP 503: busy", delay=60)
    assert store.enqueue([(photo, Stat(1, 1), 0)]) == 0
    assert stored_row(store, photo).attempts == 2  # type: ignore[union-attr]


def test_permanent_failure_is_kept_until_the_file_changes(store: StateStore, tmp_path: Path) -> None:
    photo = tmp_path / "broken.jpg"
    store.enqueue([(photo, Stat(5, 5), 0)])
    store.claim(1)
    store.finish(photo, RowState.FAILED, Stat(5, 5), "corrupt or truncated image")
    assert store.enqueue([(photo, Stat(5, 5), 0)]) == 0
    assert [row.last_error for row in store.recent_failures()] == ["corrupt or truncated image"]
    assert store.enqueue([(photo, Stat(6, 6), 0)]) == 1


def test_any_file_name_round_trips(store: StateStore, tmp_path: Path) -> None:
    odd = tmp_path / "new\nline-\udce9.jpg"  # a line break and a byte that is not UTF-8
    store.enqueue([(odd, Stat(1, 1), 0)])
    assert store.claim(1)[0].path == odd


def test_readers_see_the_queue_while_the_daemon_writes(store: StateStore, tmp_path: Path) -> None:
    store.enqueue([(tmp_path / "a.jpg", Stat(1, 1), 0)])
    reader = StateStore(tmp_path / "state", readonly=True)
    assert reader.counts()[RowState.PENDING] == 1
    store.claim(1)
    assert reader.counts()[RowState.RUNNING] == 1


def test_unusable_state_directory_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StateError, match="cannot open the state database"):
        StateStore(blocker / "state")
