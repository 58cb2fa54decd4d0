"""The daemon's producers: rescans and watcher events find new and changed photos and queue them.

    rescan (at start, every Daemon.Rescan, after an overflow) ──┐
                                                                ├─▶ StateStore (SQLite)
    watcher events (created, closed, moved in, folders) ────────┘

inotify misses things (too few watches, queue overflows, network shares): the watcher is the fast
path, periodic rescans are the guarantee.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

from watchdog.observers.api import BaseObserver

from .config import DaemonConfig, WatcherKind
from .executor import start_thread
from .ignore import IgnoreRules
from .library import containment_problem, printable, scan_entries
from .state import Stat, StateStore
from .watcher import OverflowListener, inotify_watch_limit, start_observer

log = logging.getLogger(__name__)

BATCH = 500


class Producers:
    """The rescan loop and the event loop (each a thread) and the filesystem observer that feeds the latter."""

    def __init__(self, daemon: DaemonConfig, ignore: IgnoreRules, state: StateStore, stop: threading.Event,
                 wake: threading.Event) -> None:
        assert daemon.originals is not None
        self.daemon = daemon
        self.originals = daemon.originals
        self.ignore = ignore
        self.state = state
        self.settle = daemon.settle
        self.stop = stop
        self._wake = wake  # set whenever files were queued: the consumer looks at once
        self._rescan_requested = threading.Event()
        self._events: dict[Path, float] = {}
        self._directories: set[Path] = set()
        self._events_lock = threading.Lock()
        self._event_loop_turned = time.monotonic()
        self._observer_alive: Callable[[], bool] = lambda: True
        self._threads: list[threading.Thread] = []
        self._overflow = OverflowListener(self.request_rescan)
        self._observer: BaseObserver | None = None

    def start(self) -> None:
        """Start the filesystem observer, the rescan loop and the event loop."""
        self._overflow.attach()
        observer = start_observer(self.originals, self.watcher_kind(), self._on_file, self._on_directory,
                                  poll_interval=self.daemon.poll_interval)
        self._observer = observer
        self._observer_alive = observer.is_alive
        self._threads = [start_thread(self._rescan_loop, "captiond-rescan"),
                         start_thread(self._event_loop, "captiond-events")]

    def join(self) -> None:
        """Stop the observer and wait for the loops (they end once `stop` is set)."""
        self._rescan_requested.set()
        observer = self._observer
        if observer is not None:
            observer.stop()
        self._overflow.detach()
        if observer is not None:
            observer.join(timeout=5)
        for thread in self._threads:
            thread.join(timeout=5)

    def interrupt(self) -> None:
        """Wake the rescan loop so that it sees `stop`."""
        self._rescan_requested.set()

    def request_rescan(self) -> None:
        """Ask for a full rescan soon (after an inotify overflow)."""
        log.warning("filesystem events were lost: rescanning the originals")
        self._rescan_requested.set()

    def problem(self, stall_after: float) -> str:
        """Return why the producers are not alive ("" while they are): a thread stopped, or a loop no longer turns."""
        now = time.monotonic()
        if not self._observer_alive():
            return "the filesystem observer stopped"
        for thread in self._threads:
            if not thread.is_alive():
                return f"the {thread.name} thread stopped"
        if self._threads and now - self._event_loop_turned > stall_after:
            return f"the event loop has not turned for {now - self._event_loop_turned:.0f}s"
        return ""

    def watcher_kind(self) -> WatcherKind:
        """Return the observer used: inotify, or polling when Daemon.Watcher says so."""
        return "polling" if self.daemon.watcher == "polling" else "inotify"

    def _on_file(self, path: Path) -> None:
        """Note a path to look at (appeared, changed or deleted): the event loop stats it."""
        with self._events_lock:
            self._events[path] = time.monotonic()

    def _on_directory(self, path: Path) -> None:
        with self._events_lock:
            self._directories.add(path)

    def _event_loop(self) -> None:
        """Move watcher events into the queue every 100 ms (stat them, coalesce bursts into one transaction)."""
        while not self.stop.wait(0.1):
            self._event_loop_turns()
            with self._events_lock:
                paths, self._events = list(self._events), {}
                directories, self._directories = list(self._directories), set()
            try:
                for directory in directories:
                    if containment_problem(self.originals, directory, folder=True) is None:
                        self._enqueue_tree(directory, forget_missing=False, turned=self._event_loop_turns)
                if paths:
                    self._enqueue_paths(paths, not_before=time.time() + self.settle)
            except Exception as error:  # noqa: BLE001 - the next rescan finds what these events named
                log.error("could not queue %d changed paths (the next rescan will): %s", len(paths) + len(directories),
                          one_line(error))

    def _event_loop_turns(self) -> None:
        self._event_loop_turned = time.monotonic()

    def _enqueue_paths(self, paths: list[Path], not_before: float) -> None:
        items, gone = [], []
        for path in paths:
            left_alone = containment_problem(self.originals, path) is not None or self.ignore.ignored(path)
            stat = None if left_alone else Stat.of(path)
            if stat is None:  # gone, ignored, or no longer a regular file inside the originals: forgotten
                gone.append(path)
            else:
                items.append((path, stat, not_before))
        if gone:
            self.state.forget(gone)
        if items and self.state.enqueue(items):
            self._wake.set()

    def _rescan_loop(self) -> None:
        """Rescan at start, every Daemon.Rescan (jittered by 10%), and when asked."""
        while not self.stop.is_set():
            try:
                self._enqueue_tree(self.originals, forget_missing=True)
            except Exception as error:  # noqa: BLE001 - a failed rescan is tried again at the next interval
                log.error("rescan failed: %s", one_line(error))
            interval = self.daemon.rescan * random.uniform(0.9, 1.1)
            self._rescan_requested.wait(interval)
            self._rescan_requested.clear()

    def _enqueue_tree(self, top: Path, forget_missing: bool, turned: Callable[[], None] = lambda: None) -> None:
        """Queue every new or changed photo under a folder; forget rows of vanished files (full rescans).

        `turned` is called for every entry: a big folder moved in keeps the event loop busy, not stuck.
        """
        started = time.monotonic()
        known = self.state.known_stats() if forget_missing else {}
        seen: set[bytes] = set()
        batch: list[tuple[Path, Stat, float]] = []
        queued = 0
        directories: set[str] = set()
        for entry in scan_entries(self.originals, top, rules=self.ignore):
            if self.stop.is_set():
                return
            turned()
            try:
                status = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            key = os.fsencode(entry.path)
            seen.add(key)
            directories.add(os.path.dirname(entry.path))
            if known.get(key, (None, None, None))[:2] == (status.st_size, status.st_mtime_ns):
                continue
            batch.append((Path(entry.path), Stat(status.st_size, status.st_mtime_ns), time.time()))
            if len(batch) >= BATCH:
                queued += self.state.enqueue(batch)
                batch = []
                self._wake.set()
        queued += self.state.enqueue(batch) if batch else 0
        if queued:
            self._wake.set()
        if forget_missing:
            self._forget_vanished(known, seen)
            self._check_watch_limit(len(directories) + 1)
        log.info("scanned %s: %d photos, %d queued, in %.1fs", top, len(seen), queued, time.monotonic() - started)

    def _forget_vanished(self, known: dict[bytes, tuple[int, int, str]], seen: set[bytes]) -> None:
        vanished = [key for key in known if key not in seen]
        if not vanished:
            return
        if not seen or not self.originals.is_dir():
            log.error("the originals folder %s looks empty or unmounted: keeping the state of %d files",
                      self.originals, len(vanished))
            return
        self.state.forget([Path(os.fsdecode(key)) for key in vanished])

    def _check_watch_limit(self, directories: int) -> None:
        if self.watcher_kind() != "inotify":
            return
        limit = inotify_watch_limit()
        if limit is not None and directories > limit:
            log.error("the originals have %d folders but fs.inotify.max_user_watches is %d: new photos in the "
                      "other folders are found only by rescans. Fix: echo fs.inotify.max_user_watches=%d | "
                      "sudo tee /etc/sysctl.d/90-captiond.conf && sudo sysctl --system",
                      directories, limit, max(524288, directories * 2))


def one_line(error: BaseException) -> str:
    """Return an error as one printable line: its type and message."""
    return printable(" ".join(f"{type(error).__name__}: {error}".splitlines()))
