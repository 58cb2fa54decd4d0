"""Files and folders to leave alone: PhotoPrism's `.ppignore` files and `Daemon.Exclude`, read the way PhotoPrism does.

PhotoPrism (pkg/fs/ignore.go, pkg/fs/walk.go) reads a `.ppignore` in every folder it walks. Each line is a
pattern for that folder and everything below it: surrounding slashes, tabs and line ends are trimmed,
blank lines and lines starting with "# " are skipped. A name is ignored when it equals a pattern or
matches it with Go's filepath.Match (`*` and `?` never cross "/", `[a-z]`, `[^a-z]`, `\\` escapes); a
pattern holding "/" is matched against the path relative to its `.ppignore` folder. Matching is
case-insensitive. An ignored folder is not entered at all. Hidden names (starting with ".", "@", "_."
or "__", e.g. Synology's @eaDir and __MACOSX) and folders holding a `.ppstorage` file are skipped too.

`Daemon.Exclude` patterns behave exactly like lines of a `.ppignore` in the originals folder.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

IGNORE_FILE = ".ppignore"
STORAGE_FILE = ".ppstorage"
HIDDEN_PREFIXES = (".", "@", "_.", "__")


@dataclass(frozen=True)
class IgnorePattern:
    """One pattern of the `.ppignore` in `folder` (relative to the originals, lower case; "" is the top)."""

    folder: str
    pattern: str

    def ignores(self, folder: str, name: str) -> bool:
        """Return whether `name` inside `folder` (both relative and lower case) is ignored by this pattern."""
        if self.folder and folder != self.folder and not folder.startswith(f"{self.folder}/"):
            return False
        if self.pattern == name:
            return True
        if "/" in self.pattern:
            below = folder[len(self.folder):].strip("/")
            name = f"{below}/{name}" if below else name
        return go_match(self.pattern, name)


def parse_patterns(lines: Sequence[str], folder: str) -> list[IgnorePattern]:
    """Return the patterns of `.ppignore` lines for a folder (relative to the originals), as PhotoPrism reads them."""
    patterns = []
    for line in lines:
        pattern = line.strip("/\x00\t\r\n")
        if pattern.strip() and not pattern.startswith("# "):
            patterns.append(IgnorePattern(folder.lower(), pattern.lower()))
    return patterns


def is_hidden(name: str) -> bool:
    """Return whether PhotoPrism treats a file or folder name as hidden (and skips it)."""
    return name.startswith(HIDDEN_PREFIXES)


def go_match(pattern: str, name: str) -> bool:
    """Return what Go's filepath.Match(pattern, name) returns (a malformed pattern matches nothing)."""
    regex = _compiled(pattern)
    return regex is not None and regex.fullmatch(name) is not None


@functools.lru_cache(maxsize=4096)
def _compiled(pattern: str) -> re.Pattern[str] | None:
    """Return a regular expression doing what Go's filepath.Match does with `pattern`; None when malformed."""
    parts: list[str] = []
    index = 0
    while index < len(pattern):
        character = pattern[index]
        index += 1
        if character == "*":
            parts.append("[^/]*")
        elif character == "?":
            parts.append("[^/]")
        elif character == "\\":
            if index >= len(pattern):
                return None
            parts.append(re.escape(pattern[index]))
            index += 1
        elif character == "[":
            class_end = _character_class(pattern, index)
            if class_end is None:
                return None
            parts.append(class_end[0])
            index = class_end[1]
        else:
            parts.append(re.escape(character))
    return re.compile("".join(parts), re.DOTALL)


def _character_class(pattern: str, index: int) -> tuple[str, int] | None:
    """Translate a Go character class starting after "["; return the regex and the index after "]"."""
    negated = index < len(pattern) and pattern[index] == "^"
    index += negated
    ranges: list[str] = []
    while True:
        if index >= len(pattern):
            return None
        if pattern[index] == "]" and ranges:
            return f"[{'^' if negated else ''}{''.join(ranges)}]", index + 1
        low, index = _class_character(pattern, index)
        if low is None:
            return None
        if index < len(pattern) and pattern[index] == "-":
            high, index = _class_character(pattern, index + 1)
            if high is None or high < low:
                return None
            ranges.append(f"{re.escape(low)}-{re.escape(high)}")
        else:
            ranges.append(re.escape(low))


def _class_character(pattern: str, index: int) -> tuple[str | None, int]:
    if index >= len(pattern) or pattern[index] in "-]":
        return None, index
    if pattern[index] == "\\":
        index += 1
        if index >= len(pattern):
            return None, index
    return pattern[index], index + 1


class IgnoreRules:
    """Decides which files under the originals captiond leaves alone; thread-safe, `.ppignore` files cached by mtime."""

    def __init__(self, originals: Path, exclude: Sequence[str] = ()) -> None:
        self.originals = originals
        self.exclude = parse_patterns(exclude, "")
        self._files: dict[str, tuple[tuple[int, int], list[IgnorePattern]]] = {}
        self._lock = threading.Lock()

    def folder_patterns(self, folder: Path, relative: str) -> list[IgnorePattern]:
        """Return the patterns of the `.ppignore` in one folder (none when it has no such file)."""
        path = folder / IGNORE_FILE
        try:
            status = path.stat()
        except OSError:
            return []
        key = (status.st_mtime_ns, status.st_size)
        with self._lock:
            cached = self._files.get(str(path))
        if cached is not None and cached[0] == key:
            return cached[1]
        try:
            text = path.read_bytes().decode("utf-8", "replace")
        except OSError as exc:
            log.warning("cannot read %s: %s", path, exc.strerror or exc)
            return []
        patterns = parse_patterns(text.split("\n"), relative)
        with self._lock:
            self._files[str(path)] = (key, patterns)
        return patterns

    def patterns_for(self, folder: Path) -> list[IgnorePattern] | None:
        """Return every pattern in force inside a folder of the originals; None when the folder itself is ignored."""
        relative = self._relative(folder)
        if relative is None:
            return None
        patterns = [*self.exclude, *self.folder_patterns(self.originals, "")]
        parts = [part for part in relative.split("/") if part]
        current = self.originals
        for depth, part in enumerate(parts):
            parent = "/".join(parts[:depth]).lower()
            if is_hidden(part) or any(pattern.ignores(parent, part.lower()) for pattern in patterns):
                return None
            current = current / part
            own = self.folder_patterns(current, "/".join(parts[:depth + 1]))
            if (current / STORAGE_FILE).exists() or any(pattern.pattern == "*" for pattern in own):
                return None  # PhotoPrism skips a folder whose own .ppignore says "*"
            patterns = [*patterns, *own]
        return patterns

    def ignored(self, path: Path) -> bool:
        """Return whether a file under the originals is to be left alone (also: outside the originals)."""
        patterns = self.patterns_for(path.parent)
        if patterns is None:
            return True
        return self.name_ignored(patterns, self._relative(path.parent) or "", path.name)

    @staticmethod
    def name_ignored(patterns: Sequence[IgnorePattern], folder: str, name: str) -> bool:
        """Return whether a name in a folder (relative to the originals) is ignored by these patterns."""
        if is_hidden(name) or name.lower() == IGNORE_FILE:
            return True
        folder, name = folder.lower(), name.lower()
        return any(pattern.ignores(folder, name) for pattern in patterns)

    def _relative(self, path: Path) -> str | None:
        relative = os.path.relpath(path, self.originals)
        if relative == ".":
            return ""
        if relative == ".." or relative.startswith("../"):
            return None
        return Path(relative).as_posix()
