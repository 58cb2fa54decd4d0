"""The result cache: a model's cleaned answer for a prepared image, so a byte-identical photo costs no model call.

The key is a hash of everything that shapes the answer: the prepared JPEG sent to the model, the
request kind (caption, labels, or both in one request), the model, its prompt and system prompt,
its options, format and thinking setting, and the language. The value is what the pipeline would
write: the cleaned caption, and the labels as the model scored them (thresholds and normalisation
are applied after reading, so changing Thresholds needs no new model calls).

It lives in the state database (table `results`), holds at most Daemon.CacheSize entries and
evicts the least recently used. A cache that cannot be read or written never stops captioning:
it logs once and is switched off for the run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import StateError
from .labels import Label
from .state import StateStore

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    key TEXT PRIMARY KEY,
    caption TEXT NOT NULL DEFAULT '',
    labels TEXT,
    model TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    used REAL NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS results_used ON results (used);
"""


@dataclass(frozen=True)
class CachedResult:
    """A stored answer: the cleaned caption ('' when not asked) and the scored labels (None when not asked)."""

    caption: str = ""
    labels: tuple[Label, ...] | None = None


def cache_key(jpeg: bytes, kind: str, model_id: str, fields: Mapping[str, Any]) -> str:
    """Return the key of one request: the prepared image's hash, the request kind, the model and what shapes it."""
    document = {"image": hashlib.sha256(jpeg).hexdigest(), "kind": kind, "model": model_id,
                **{name: fields[name] for name in sorted(fields)}}
    encoded = json.dumps(document, sort_keys=True, ensure_ascii=False, default=str, separators=(",", ":"))
    return hashlib.sha256(encoded.encode("utf-8")).hexdigest()


class ResultCache:
    """Answers by key in the state database, bounded to `limit` entries (least recently used go first)."""

    def __init__(self, state: StateStore, limit: int) -> None:
        self.state = state
        self.limit = limit
        self._broken = False
        self._in_flight_lock = threading.Lock()
        self._in_flight: dict[str, tuple[threading.Lock, int]] = {}
        try:
            with state.transaction() as connection:
                for statement in _SCHEMA.strip().split(";"):
                    if statement.strip():
                        connection.execute(statement)
        except StateError as error:
            self._disable(error)

    @contextmanager
    def exclusive(self, key: str) -> Iterator[None]:
        """Hold a key while its answer is looked up or asked for: a copy in flight waits for the first answer."""
        with self._in_flight_lock:
            lock, users = self._in_flight.get(key, (threading.Lock(), 0))
            self._in_flight[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._in_flight_lock:
                lock, users = self._in_flight[key]
                if users == 1:
                    del self._in_flight[key]
                else:
                    self._in_flight[key] = (lock, users - 1)

    @property
    def enabled(self) -> bool:
        """Return whether the cache is in use (a limit above zero and a working database)."""
        return self.limit > 0 and not self._broken

    def get(self, key: str) -> CachedResult | None:
        """Return the stored answer for a key (and mark it used), or None."""
        if not self.enabled:
            return None
        try:
            with self.state.transaction() as connection:
                row = connection.execute("SELECT caption, labels FROM results WHERE key=?", (key,)).fetchone()
                if row is not None:
                    connection.execute("UPDATE results SET used=?, hits=hits+1 WHERE key=?", (time.time(), key))
        except StateError as error:
            self._disable(error)
            return None
        if row is None:
            return None
        return CachedResult(str(row[0]), _decode_labels(row[1]))

    def put(self, key: str, result: CachedResult, model_id: str) -> None:
        """Store an answer, evicting the least recently used entries beyond the limit."""
        if not self.enabled:
            return
        now = time.time()
        labels = None if result.labels is None else json.dumps(
            [[label.name, label.confidence, label.topicality] for label in result.labels], ensure_ascii=False)
        try:
            with self.state.transaction() as connection:
                connection.execute(
                    "INSERT INTO results (key, caption, labels, model, created, used) VALUES (?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET caption=excluded.caption, labels=excluded.labels, "
                    "model=excluded.model, created=excluded.created, used=excluded.used",
                    (key, result.caption, labels, model_id, now, now))
                excess = int(connection.execute("SELECT COUNT(*) FROM results").fetchone()[0]) - self.limit
                if excess > 0:
                    connection.execute("DELETE FROM results WHERE key IN "
                                       "(SELECT key FROM results ORDER BY used, key LIMIT ?)", (excess,))
        except StateError as error:
            self._disable(error)

    def size(self) -> int:
        """Return how many answers are stored."""
        try:
            with self.state.transaction() as connection:
                return int(connection.execute("SELECT COUNT(*) FROM results").fetchone()[0])
        except StateError:
            return 0

    def _disable(self, error: StateError) -> None:
        if not self._broken:
            log.warning("the result cache is off for this run: %s", error)
        self._broken = True


def _decode_labels(text: object) -> tuple[Label, ...] | None:
    if text is None:
        return None
    items = json.loads(str(text))
    return tuple(Label(str(name), float(confidence), float(topicality)) for name, confidence, topicality in items)


def open_cache(state_dir: Path, limit: int) -> tuple[StateStore | None, ResultCache | None]:
    """Open the state database of `run` for its result cache; (None, None) when off or it cannot be opened."""
    if limit <= 0:
        return None, None
    try:
        state = StateStore(state_dir)
    except StateError as error:
        log.warning("no result cache for this run: %s", error)
        return None, None
    return state, ResultCache(state, limit)
