"""The durable queue: one SQLite database (WAL) in Daemon.StateDir with a row per photo.

    pending ──claim──▶ running ──▶ done          (captioned, or rightly skipped)
       ▲                  │──────▶ failed        (permanent: looked at again only when the file changes)
       │                  │──────▶ quarantined   (crashed the model server twice)
       └──── transient ───┘                      (waits next_try, attempts grow; never done)

A row remembers the file's size and mtime when it was finished, so a rescan of an unchanged
library costs one stat and one lookup per file. Paths are stored as bytes (any file name works).
Where a processed row goes is decided by `transition`, a pure function of the row and the outcome.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from .backoff import Backoff, Uniform
from .errors import StateError
from .redaction import redact

log = logging.getLogger(__name__)



class RowState(StrEnum):
    """Where a file is in the daemon's queue; the value is what the database holds."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    QUARANTINED = "quarantined"


DATABASE_NAME = "captiond.db"
CRASHES_BEFORE_QUARANTINE = 2
UNEXPECTED_BEFORE_QUARANTINE = 3  # attempts that end in an error no check foresaw (a defect of ours)
REQUEUE_MAX_DELAY = 3600.0  # the longest a file waits between the daemon's tries (they go on forever)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path BLOB PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    crashes INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    next_try REAL NOT NULL DEFAULT 0,
    updated REAL NOT NULL,
    changed INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS files_queue ON files (state, next_try);
CREATE TABLE IF NOT EXISTS settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class FileState:
    """One row of the state database."""

    path: Path
    size: int
    mtime_ns: int
    state: RowState
    attempts: int = 0
    crashes: int = 0
    last_error: str = ""
    next_try: float = 0.0
    updated: float = 0.0
    changed: bool = False  # the photo changed after it was done: our own caption is renewed


class Result(Protocol):
    """What processing a file ended in (pipeline.Outcome), as far as the queue cares."""

    @property
    def failed(self) -> bool:
        """Whether the file failed (else it is done: captioned or rightly skipped)."""

    @property
    def reason(self) -> str:
        """Why, in one line."""

    @property
    def transient(self) -> bool:
        """Whether trying again later may succeed."""

    @property
    def crashed(self) -> bool:
        """Whether the file crashed the model server."""

    @property
    def unexpected(self) -> bool:
        """Whether an error no check foresaw ended it (a defect of ours)."""


@dataclass(frozen=True)
class Finish:
    """The row is finished: done, failed or quarantined (looked at again only when the file changes)."""

    state: RowState
    reason: str
    crashed: bool = False


@dataclass(frozen=True)
class Requeue:
    """The row goes back to the queue, due after `delay` seconds, with one more attempt counted."""

    delay: float
    reason: str
    crashed: bool = False


def requeue_backoff(first_delay: float) -> Backoff:
    """Return the daemon's requeue delays: from `first_delay` (Retry.MaxDelay) doubling to an hour, jittered ±20%."""
    return Backoff(first_delay, REQUEUE_MAX_DELAY, (0.8, 1.2))


def transition(row: FileState, result: Result, requeue: Backoff,
               uniform: Uniform = random.uniform) -> Finish | Requeue:
    """Return where a processed row goes: finished (done, failed, quarantined) or back to the queue after a delay.

    A transient failure is tried again for as long as it takes, with growing delays, except a file that
    crashed the model server twice, or failed three times with an error no check foresaw: quarantined.
    """
    if not result.failed:
        return Finish(RowState.DONE, result.reason)
    if not result.transient:
        return Finish(RowState.FAILED, result.reason)
    if result.unexpected and row.attempts + 1 >= UNEXPECTED_BEFORE_QUARANTINE:
        return Finish(RowState.QUARANTINED, f"failed {UNEXPECTED_BEFORE_QUARANTINE} times: {result.reason}")
    if result.crashed and row.crashes + 1 >= CRASHES_BEFORE_QUARANTINE:
        return Finish(RowState.QUARANTINED, f"crashed the model server twice: {result.reason}", crashed=True)
    return Requeue(requeue.delay(row.attempts, uniform), result.reason, result.crashed)


@dataclass(frozen=True)
class Stat:
    """The size and modification time that say whether a file changed."""

    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> Stat | None:
        """Return a file's stat without following symlinks, or None if it is gone."""
        try:
            status = os.lstat(path)
        except OSError:
            return None
        return cls(status.st_size, status.st_mtime_ns)


class StateStore:
    """The SQLite state database; safe to use from several threads (one connection, one lock)."""

    def __init__(self, directory: Path, readonly: bool = False, rebuild: bool = False) -> None:
        """Open (or create) the database; with `rebuild`, a corrupt one is set aside and a new one made.

        The daemon rebuilds: its first rescan queues every photo again, and photos already captioned are
        recognised by their captions (an exiftool read each, no model request).
        """
        self.path = directory / DATABASE_NAME
        self._lock = threading.RLock()
        try:
            if readonly:
                self._connection = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False,
                                                   timeout=10)
            else:
                directory.mkdir(parents=True, exist_ok=True)
                try:
                    self._connection = self._open_writable()
                except sqlite3.DatabaseError as exc:
                    if not rebuild or isinstance(exc, sqlite3.OperationalError):  # permissions, read-only: not ours
                        raise
                    aside = self._set_aside()
                    log.error("the state database %s is corrupt (%s): moved to %s, starting a new one", self.path,
                              exc, aside)
                    self._connection = self._open_writable()
        except (sqlite3.Error, OSError) as exc:
            raise StateError(f"cannot open the state database {self.path}: {exc}") from exc

    def _open_writable(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, check_same_thread=False, timeout=30, isolation_level=None)
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.executescript(_SCHEMA)
            connection.execute("SELECT COUNT(*) FROM files").fetchone()
        except sqlite3.Error:
            connection.close()
            raise
        return connection

    def _set_aside(self) -> Path:
        """Rename the database and its WAL files to `captiond.db.corrupt-TIME`; return the new name."""
        aside = self.path.with_name(f"{DATABASE_NAME}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
        for suffix in ("", "-wal", "-shm"):
            with suppress(FileNotFoundError):
                os.replace(f"{self.path}{suffix}", f"{aside}{suffix}")
        return aside

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._connection.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Run several statements as one transaction (one fsync), under the lock."""
        with self._lock:
            try:
                self._connection.execute("BEGIN IMMEDIATE")
                yield self._connection
                self._connection.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise StateError(f"state database {self.path}: {exc}") from exc
            except BaseException:
                self._rollback()
                raise

    def _rollback(self) -> None:
        with suppress(sqlite3.Error):
            self._connection.execute("ROLLBACK")

    def _query(self, sql: str, parameters: tuple[object, ...] = ()) -> list[Any]:
        with self._lock:
            try:
                return self._connection.execute(sql, parameters).fetchall()
            except sqlite3.Error as exc:
                raise StateError(f"state database {self.path}: {exc}") from exc

    # -- producers ---------------------------------------------------------------------------

    def recover(self) -> int:
        """Put rows left `running` by a crash back to pending; return how many."""
        with self.transaction() as connection:
            return connection.execute("UPDATE files SET state=? WHERE state=?",
                                      (RowState.PENDING, RowState.RUNNING)).rowcount

    def known_stats(self) -> dict[bytes, tuple[int, int, str]]:
        """Return {path: (size, mtime_ns, state)} of every row, for a rescan."""
        return {bytes(path): (size, mtime, state)
                for path, size, mtime, state in self._query("SELECT path, size, mtime_ns, state FROM files")}

    def enqueue(self, items: list[tuple[Path, Stat, float]]) -> int:
        """Queue files (path, stat, not before) that are new or changed; return how many were queued.

        A file whose stat is unchanged keeps its row (finished, or waiting for a retry); a changed file
        starts again from zero attempts. A running row is left alone: it is finished with the stat it
        had when it was claimed, so a change during processing is seen by the next rescan.
        """
        queued = 0
        now = time.time()
        with self.transaction() as connection:
            for path, stat, not_before in items:
                key = os.fsencode(path)
                row = connection.execute("SELECT size, mtime_ns, state, changed FROM files WHERE path=?",
                                         (key,)).fetchone()
                if row is not None and ((row[0], row[1]) == (stat.size, stat.mtime_ns) or row[2] == RowState.RUNNING):
                    continue
                changed = row is not None and (row[2] == RowState.DONE or row[3])
                connection.execute(
                    "INSERT INTO files (path, size, mtime_ns, state, attempts, crashes, last_error, next_try, updated,"
                    " changed) VALUES (?, ?, ?, ?, 0, 0, '', ?, ?, ?) ON CONFLICT(path) DO UPDATE SET"
                    " size=excluded.size, mtime_ns=excluded.mtime_ns, state=excluded.state, attempts=0, crashes=0,"
                    " last_error='', next_try=excluded.next_try, updated=excluded.updated, changed=excluded.changed",
                    (key, stat.size, stat.mtime_ns, RowState.PENDING, not_before, now, int(changed)))
                queued += 1
        return queued

    def forget(self, paths: list[Path]) -> None:
        """Delete the rows of files that no longer exist."""
        with self.transaction() as connection:
            connection.executemany("DELETE FROM files WHERE path=?", [(os.fsencode(path),) for path in paths])

    # -- the consumer ------------------------------------------------------------------------

    def claim(self, limit: int, now: float | None = None) -> list[FileState]:
        """Mark up to `limit` due pending rows as running and return them, oldest due first."""
        now = time.time() if now is None else now
        with self.transaction() as connection:
            rows = connection.execute("SELECT * FROM files WHERE state=? AND next_try<=? ORDER BY next_try, path "
                                      "LIMIT ?", (RowState.PENDING, now, limit)).fetchall()
            connection.executemany("UPDATE files SET state=?, updated=? WHERE path=?",
                                   [(RowState.RUNNING, now, row[0]) for row in rows])
        return [dataclasses.replace(_row(row), state=RowState.RUNNING) for row in rows]

    def next_due(self) -> float | None:
        """Return when the next pending row is due, or None when nothing is pending."""
        rows = self._query("SELECT MIN(next_try) FROM files WHERE state=?", (RowState.PENDING,))
        value = rows[0][0] if rows else None
        return float(value) if isinstance(value, int | float) else None

    def finish(self, path: Path, state: RowState, stat: Stat | None, reason: str = "", crashed: bool = False) -> None:
        """Record a finished file (done, failed, quarantined) with the stat it had when finished."""
        with self.transaction() as connection:
            if stat is None:
                connection.execute("DELETE FROM files WHERE path=?", (os.fsencode(path),))
                return
            connection.execute("UPDATE files SET state=?, size=?, mtime_ns=?, last_error=?, updated=?,"
                               " crashes=crashes+?, changed=0 WHERE path=?",
                               (state, stat.size, stat.mtime_ns, redact(reason), time.time(), int(crashed),
                                os.fsencode(path)))

    def retry_later(self, path: Path, reason: str, delay: float, count_attempt: bool = True,
                    crashed: bool = False) -> FileState | None:
        """Put a file back in the queue after a transient failure; return its updated row."""
        with self.transaction() as connection:
            connection.execute("UPDATE files SET state=?, attempts=attempts+?, crashes=crashes+?, last_error=?,"
                               " next_try=?, updated=? WHERE path=?",
                               (RowState.PENDING, int(count_attempt), int(crashed), redact(reason),
                                time.time() + delay, time.time(), os.fsencode(path)))
            row = connection.execute("SELECT * FROM files WHERE path=?", (os.fsencode(path),)).fetchone()
        return _row(row) if row else None

    def postpone(self, path: Path, stat: Stat, delay: float) -> None:
        """Put a file that is still changing back in the queue with its new stat."""
        with self.transaction() as connection:
            connection.execute("UPDATE files SET state=?, size=?, mtime_ns=?, next_try=?, updated=? WHERE path=?",
                               (RowState.PENDING, stat.size, stat.mtime_ns, time.time() + delay, time.time(),
                                os.fsencode(path)))

    def requeue(self, selected: Callable[[Path], bool], now: float | None = None) -> dict[RowState, int]:
        """Queue failed and quarantined files, and files waiting for a retry, to be tried now from zero attempts.

        Return how many of each state were requeued (only rows whose path `selected` accepts).
        """
        now = time.time() if now is None else now
        requeued = dict.fromkeys((RowState.FAILED, RowState.QUARANTINED, RowState.PENDING), 0)
        with self.transaction() as connection:
            rows = connection.execute("SELECT path, state FROM files WHERE state IN (?, ?) OR (state=? AND "
                                      "(attempts>0 OR next_try>?))",
                                      (RowState.FAILED, RowState.QUARANTINED, RowState.PENDING, now)).fetchall()
            keys = []
            for key, state in rows:
                if selected(Path(os.fsdecode(bytes(key)))):
                    keys.append((RowState.PENDING, now, now, bytes(key)))
                    requeued[RowState(state)] += 1
            connection.executemany("UPDATE files SET state=?, attempts=0, crashes=0, last_error='', next_try=?, "
                                   "updated=? WHERE path=?", keys)
        return requeued

    # -- the daemon's settings ---------------------------------------------------------------

    def record_settings(self, settings: dict[str, object]) -> None:
        """Record the daemon's effective settings (no secrets), for `captiond status` and `retry`."""
        with self.transaction() as connection:
            connection.execute("INSERT INTO settings (key, value) VALUES ('daemon', ?) ON CONFLICT(key) DO UPDATE "
                               "SET value=excluded.value", (json.dumps(settings),))

    def settings(self) -> dict[str, object]:
        """Return the settings the daemon recorded, or {} (none yet, or a database from before they were kept)."""
        try:
            rows = self._query("SELECT value FROM settings WHERE key='daemon'")
        except StateError:
            return {}
        try:
            value = json.loads(rows[0][0]) if rows else {}
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}

    # -- reports -----------------------------------------------------------------------------

    def counts(self) -> dict[RowState, int]:
        """Return the number of rows in each state."""
        counts = dict.fromkeys(RowState, 0)
        for state, count in self._query("SELECT state, COUNT(*) FROM files GROUP BY state"):
            counts[RowState(state)] = int(count)
        return counts

    def recent_failures(self, limit: int = 10) -> list[FileState]:
        """Return the latest failed, quarantined or retrying rows with their reasons."""
        rows = self._query("SELECT * FROM files WHERE state IN (?, ?) OR (state=? AND last_error!='') "
                           "ORDER BY updated DESC LIMIT ?",
                           (RowState.FAILED, RowState.QUARANTINED, RowState.PENDING, limit))
        return [_row(row) for row in rows]


def _row(row: Any) -> FileState:
    path, size, mtime, state, attempts, crashes, last_error, next_try, updated, changed = row
    return FileState(Path(os.fsdecode(bytes(path))), int(size), int(mtime), RowState(state), int(attempts),
                     int(crashes), str(last_error), float(next_try), float(updated), bool(changed))
