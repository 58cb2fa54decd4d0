"""Find the photos of a library: walk the originals folder and apply the command line's filter."""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import stat
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

from .atomic import TEMPORARY_PREFIX, remove_stale_temporaries
from .errors import UsageError
from .ignore import IGNORE_FILE, STORAGE_FILE, IgnoreRules
from .imaging import SUPPORTED_EXTENSIONS

log = logging.getLogger(__name__)

# Names of files still being written by uploaders, copiers and editors.
TEMPORARY_PATTERNS = ("*.part", "*.partial", "*.tmp", "*.crdownload", "*~", "*_exiftool_tmp", "*_original",
                      ".syncthing.*", ".~*", f"{TEMPORARY_PREFIX}*")


class NameTerm(Protocol):
    """A filter term answered from a file's path and name (filters.FilterTerm)."""

    def matches(self, relative: str, name: str) -> bool:
        """Return whether a file (its path relative to the originals, and its name) matches the term."""


_TEMPORARY = re.compile("|".join(fnmatch.translate(pattern) for pattern in TEMPORARY_PATTERNS))


def is_temporary(name: str) -> bool:
    """Return whether a file name belongs to a file still being written (or to our own temporary files)."""
    return bool(_TEMPORARY.match(name)) or _rsync_temporary(name)


def _rsync_temporary(name: str) -> bool:
    # rsync writes ".NAME.XXXXXX" (six random characters) before renaming to NAME.
    return name.startswith(".") and len(name) > 8 and name[-7] == "." and name[-6:].isalnum()


def is_candidate(name: str) -> bool:
    """Return whether a file name is a photo captiond should look at."""
    extension = name[name.rfind("."):].lower() if "." in name else ""
    return extension in SUPPORTED_EXTENSIONS and not name.startswith(".") and not is_temporary(name)


def printable(text: str) -> str:
    """Return a file name safe to print on one line: control characters and undecodable bytes escaped."""
    return "".join(f"\\x{ord(character) & 0xFF:02x}" if ord(character) < 32 or ord(character) == 127
                   or 0xDC80 <= ord(character) <= 0xDCFF else character for character in text)


def shown(path: Path, originals: Path | None) -> str:
    """Return a path to show to the user: relative to the originals when it lies inside them, printable."""
    try:
        return printable(path.relative_to(originals).as_posix() if originals else str(path))
    except ValueError:
        return printable(str(path))


def containment_problem(originals: Path, path: Path, *, folder: bool = False, missing_ok: bool = False) -> str | None:
    """Return why captiond may not read or write `path`, or None when it may.

    The one rule every producer (scan, watcher events, rescans) and every write applies: the path lies
    inside the originals folder, no component below that folder is a symlink, every folder on the way is a
    real folder, and the path itself is a regular file (a real folder with `folder`; absent with
    `missing_ok`, for a sidecar still to be made). FIFOs, devices and sockets are never opened. The
    originals folder itself may be a symlink: that is the user's choice.
    """
    root = os.path.abspath(originals)
    relative = os.path.relpath(os.path.abspath(path), root)
    if relative == "." and folder:
        return None
    if relative == "." or relative == ".." or relative.startswith("../"):
        return "outside the originals folder"
    current = root
    parts = relative.split("/")
    for index, part in enumerate(parts):
        current = os.path.join(current, part)
        last = index == len(parts) - 1
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            return None if last and missing_ok else "gone"
        except OSError as exc:
            return f"cannot look at it: {exc.strerror or exc}"
        where = "" if last else f" ({printable(os.path.relpath(current, root))})"
        if stat.S_ISLNK(mode):
            return f"a symlink{where}: not followed"
        if not last or folder:
            if not stat.S_ISDIR(mode):
                return f"not a folder{where}"
        elif not stat.S_ISREG(mode):
            return "not a regular file (a FIFO, device or socket is never opened)"
    return None


def scan(originals: Path, terms: Sequence[NameTerm] = (),
         on_error: Callable[[Path, str], None] | None = None, rules: IgnoreRules | None = None) -> Iterator[Path]:
    """Yield every photo under the originals folder that matches every filter term, in a stable order.

    Hidden files and folders are skipped, symlinks are never followed (they may point outside the
    library or form loops) and only regular files are yielded (see containment_problem). Our own
    temporary files left by an interrupted write are removed on the way.
    `.ppignore` files and Daemon.Exclude (`rules`) are honoured as PhotoPrism does (see ignore.py).
    """
    for entry in scan_entries(originals, originals, terms, on_error, rules):
        yield Path(entry.path)


def scan_entries(originals: Path, top: Path, terms: Sequence[NameTerm] = (),
                 on_error: Callable[[Path, str], None] | None = None,
                 rules: IgnoreRules | None = None) -> Iterator[os.DirEntry[str]]:
    """Yield the directory entries of every photo under `top` (see scan); their stat is cached by os.scandir."""
    if not top.is_dir():
        raise UsageError(f"originals folder not found: {shown(top, None)}")
    rules = rules or IgnoreRules(originals)
    top_patterns = rules.patterns_for(top)
    if top_patterns is None:
        return
    relative_top = os.path.relpath(top, originals)
    stack = [(top, "" if relative_top == "." else Path(relative_top).as_posix(), top_patterns)]
    while stack:
        directory, relative, patterns = stack.pop()
        try:
            with os.scandir(directory) as iterator:
                entries = sorted(iterator, key=lambda entry: entry.name)
        except OSError as exc:
            if on_error is not None:
                on_error(directory, f"cannot list the folder: {exc.strerror or exc}")
            else:
                log.error("cannot list %s: %s", shown(directory, originals), exc.strerror or exc)
            continue
        if directory != top and any(entry.name == STORAGE_FILE for entry in entries):
            continue  # PhotoPrism's marker of a storage folder inside the originals
        remove_stale_temporaries(directory, [entry.name for entry in entries
                                             if entry.name.startswith(TEMPORARY_PREFIX)])
        if directory != top and any(entry.name == IGNORE_FILE for entry in entries):
            patterns = [*patterns, *rules.folder_patterns(directory, relative)]
        subdirectories = []
        for entry in entries:
            if rules.name_ignored(patterns, relative, entry.name):
                continue
            try:
                if entry.is_symlink():
                    continue
                if entry.is_dir(follow_symlinks=False):
                    subdirectories.append((Path(entry.path), f"{relative}/{entry.name}".lstrip("/"), patterns))
                    continue
                if not entry.is_file(follow_symlinks=False):  # a FIFO, device or socket
                    continue
            except OSError:
                continue
            if not is_candidate(entry.name):
                continue
            if not terms:
                yield entry
                continue
            file_relative = Path(entry.path).relative_to(originals).as_posix()
            if all(term.matches(file_relative, entry.name) for term in terms):  # ANDed, as PhotoPrism's query
                yield entry
        stack.extend(reversed(subdirectories))
