"""Glue to watchdog: turn filesystem events under the originals into "look at this path" calls.

inotify misses things (too few watches, queue overflows, network shares), so the watcher is only
the fast path: periodic rescans are the guarantee (see service.py).
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from .config import WatcherKind
from .ignore import IGNORE_FILE
from .library import is_candidate

log = logging.getLogger(__name__)
# The machine's limit, and the limit of this user namespace (containers, `unshare -U`): the lower wins.
INOTIFY_LIMIT_FILES = (Path("/proc/sys/fs/inotify/max_user_watches"), Path("/proc/sys/user/max_inotify_watches"))


class _Handler(FileSystemEventHandler):
    """Forwards the events that matter: a photo appeared, changed or went away, a folder arrived."""

    def __init__(self, originals: Path, on_file: Callable[[Path], None], on_directory: Callable[[Path], None]) -> None:
        self.originals = originals
        self.file_changed = on_file
        self.directory_appeared = on_directory

    def on_any_event(self, event: FileSystemEvent) -> None:
        if isinstance(event, DirCreatedEvent | DirMovedEvent):
            target = event.dest_path if isinstance(event, DirMovedEvent) else event.src_path
            if self._inside(target):
                self.directory_appeared(Path(os.fsdecode(target)))
            return
        if isinstance(event, FileMovedEvent):
            self._deleted(event.src_path)
            self._file(event.dest_path)
        elif isinstance(event, FileCreatedEvent | FileModifiedEvent | FileClosedEvent):
            self._file(event.src_path)
        elif isinstance(event, FileDeletedEvent):
            self._deleted(event.src_path)

    def _inside(self, raw: bytes | str | Path) -> bool:
        path = os.fsdecode(raw)
        relative = os.path.relpath(path, self.originals)
        return not relative.startswith("..") and not any(part.startswith(".") for part in Path(relative).parts)

    def _file(self, raw: bytes | str) -> None:
        path = Path(os.fsdecode(raw))
        if path.name == IGNORE_FILE and self._inside(path.parent):
            self.directory_appeared(path.parent)  # its rules changed: look at that folder again
        elif is_candidate(path.name) and self._inside(raw):
            self.file_changed(path)

    def _deleted(self, raw: bytes | str) -> None:
        path = Path(os.fsdecode(raw))
        if path.name == IGNORE_FILE and self._inside(path.parent):
            self.directory_appeared(path.parent)
        elif is_candidate(path.name):
            self.file_changed(path)


def start_observer(originals: Path, kind: WatcherKind, on_file: Callable[[Path], None],
                   on_directory: Callable[[Path], None], poll_interval: float = 30.0) -> BaseObserver:
    """Start watching the originals recursively (inotify, or polling for network shares); return the observer."""
    handler = _Handler(originals, on_file, on_directory)
    if kind != "polling":
        from watchdog.observers import Observer

        try:
            return _started(Observer(), handler, originals)
        except OSError as exc:
            # watchdog 7.1 refuses to start when the inotify watches run out (older versions skipped folders).
            if exc.errno not in (errno.ENOSPC, errno.EMFILE):
                raise
            log.warning("inotify cannot watch %s (%s): polling every %.0fs instead; raise the limit with "
                        "sysctl fs.inotify.max_user_watches", originals, exc.strerror, poll_interval)
    return _started(PollingObserver(timeout=poll_interval), handler, originals)


def _started(observer: BaseObserver, handler: _Handler, originals: Path) -> BaseObserver:
    """Schedule the recursive watch and start the observer; stop it again if starting fails."""
    observer.schedule(handler, str(originals), recursive=True)
    observer.daemon = True
    try:
        observer.start()
    except OSError:
        observer.stop()
        raise
    return observer


def inotify_watch_limit() -> int | None:
    """Return the number of inotify watches this process may use, or None where it cannot be read."""
    limits = []
    for path in INOTIFY_LIMIT_FILES:
        try:
            limits.append(int(path.read_text().strip()))
        except (OSError, ValueError):
            continue
    return min(limits, default=None)


class OverflowListener(logging.Handler):
    """Calls back when watchdog reports an inotify queue overflow (it only logs it)."""

    def __init__(self, on_overflow: Callable[[], None]) -> None:
        super().__init__(logging.WARNING)
        self.on_overflow = on_overflow

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            self.on_overflow()

    def attach(self) -> None:
        """Listen to watchdog's inotify loggers."""
        for name in ("watchdog.observers.inotify_c", "watchdog.observers.inotify"):
            logging.getLogger(name).addHandler(self)

    def detach(self) -> None:
        """Stop listening."""
        for name in ("watchdog.observers.inotify_c", "watchdog.observers.inotify"):
            logging.getLogger(name).removeHandler(self)
