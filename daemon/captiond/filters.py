"""FILTER words as PhotoPrism's search query: every term must match (terms are ANDed).

PhotoPrism's meaning of each key is read from its search form and query (internal/form/search_photos.go,
internal/entity/search/photos.go and conditions.go):

- `path:` (alias `folder:`) the photo's folder relative to the originals; `name:` the file name without
  folder and known extensions; `filename:` the path relative to the originals with its extension. Values are
  matched whole, ignoring case, `*` matching anything and `|` separating choices (PhotoPrism's `OrLike`);
  `path:DIR/` is that folder exactly.
- `year:`, `month:`, `day:` the capture date, `|` separating numbers (`AnyInt`).
- `camera:` a prefix of the camera's make and model, its model or its slug; `camera:ID` is PhotoPrism's id.
- `keywords:` words of the photo's keywords and caption (each word of 2 or more letters a prefix; `&` between
  words that must all be there); `label:` a keyword whose slug is one of the `|`-separated labels.
- `caption:false` no caption, `caption:true` a caption, else the caption's text (as `path:`).

captiond answers these from the files. With Daemon.PhotoPrism set, every other PhotoPrism key (`album:`,
`person:`, `favorite:`, ...), and `label:`/`keywords:` (PhotoPrism's own labels and keywords include ones no
file carries), go to its search API in one query, whose files are one more AND term; without it such a key
is a usage error that names it. A word without a key is captiond's own: a folder, file or glob relative to
the originals (PhotoPrism would search its text).
"""

from __future__ import annotations

import fnmatch
import os
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .apps import photoprism_files
from .config import AppConfig
from .errors import UsageError
from .imaging import SUPPORTED_EXTENSIONS
from .library import printable, shown
from .metadata import FileMetadata, current_caption
from .sources import current_source

NAME_KEYS = frozenset({"path", "folder", "name", "filename"})
METADATA_KEYS = frozenset({"year", "month", "day", "camera", "keywords", "label", "caption"})
# Answered by PhotoPrism when it is configured: its labels and keywords are more than the files carry.
PHOTOPRISM_FIRST = frozenset({"keywords", "label"})
# Every key of PhotoPrism's photo search form (SearchPhotos, `form:` tags that may appear in a query).
PHOTOPRISM_KEYS = frozenset({
    "id", "uid", "type", "path", "folder", "name", "filename", "original", "title", "caption", "description",
    "hash", "primary", "stack", "unstacked", "stackable", "animated", "audio", "document", "image", "raw", "live",
    "vector", "video", "photo", "media", "scan", "mp", "panorama", "portrait", "landscape", "square", "error",
    "hidden", "archived", "public", "private", "favorite", "unsorted", "near", "s2", "olc", "lat", "lng", "alt",
    "dist", "latlng", "camera", "lens", "iso", "mm", "f", "color", "codec", "chroma", "mono", "diff", "geo",
    "keywords", "label", "category", "country", "state", "city", "year", "month", "day", "face", "faces",
    "subject", "person", "subjects", "people", "album", "albums", "quality", "review", "added", "updated",
    "edited", "taken", "before", "after",
})
DATE_RANGES = {"year": (1, 3000), "month": (1, 12), "day": (1, 31)}
# Known extensions PhotoPrism strips from names (fs.StripKnownExt): photos and the sidecars beside them.
KNOWN_EXTENSIONS = SUPPORTED_EXTENSIONS | {".xmp", ".json", ".yml", ".aae", ".mov", ".mp4"}
_KEY = re.compile(r"^([A-Za-z][A-Za-z0-9_]*):(.*)$", re.S)
_WORD = re.compile(r"[\w'-]+")
_TRUE, _FALSE = ("true", "yes"), ("false", "no")


@dataclass(frozen=True)
class FilterTerm:
    """One filter term: a key (`path` for a bare path or glob, `files` for PhotoPrism's answer) and its value."""

    kind: str
    pattern: str
    files: frozenset[str] = field(default=frozenset())

    def matches(self, relative: str, name: str) -> bool:
        """Return whether a file (its path relative to the originals, and its name) matches this name term."""
        if self.kind == "files":
            return relative in self.files
        if self.kind == "name":
            return like(strip_known_extensions(name), self.pattern, transform=_name_value)
        if self.kind == "filename":
            return like(relative, self.pattern)
        if self.kind == "folder":
            folder = relative.rpartition("/")[0]
            if self.pattern.endswith("/"):  # PhotoPrism: a trailing slash means exactly this folder
                return folder.casefold() == self.pattern[:-1].casefold()
            return like(folder, self.pattern)
        pattern = self.pattern.strip("/")
        if any(character in pattern for character in "*?["):
            return fnmatch.fnmatch(relative, pattern) or fnmatch.fnmatch(relative, f"{pattern}/*")
        return relative == pattern or relative.startswith(f"{pattern}/")


@dataclass(frozen=True)
class Query:
    """The filter of a command line: terms answered from names, from metadata, and words PhotoPrism answers."""

    names: tuple[FilterTerm, ...] = ()
    metadata: tuple[FilterTerm, ...] = ()
    photoprism: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.names or self.metadata or self.photoprism)

    def photoprism_query(self) -> str:
        """Return the words for PhotoPrism's search as one query (`q`), values with spaces quoted."""
        return " ".join(_quoted(word) for word in self.photoprism)


def parse(words: Sequence[str], originals: Path, *, photoprism: bool, metadata: bool = True) -> Query:
    """Return the query of the command line's FILTER words (ANDed); absolute paths must lie inside the originals.

    `photoprism`: Daemon.PhotoPrism is set (its keys go to its search); `metadata`: keys answered from the
    photos' metadata are allowed. A key that cannot be answered is a UsageError that names it.
    """
    names: list[FilterTerm] = []
    from_metadata: list[FilterTerm] = []
    asked: list[str] = []
    unanswerable: list[str] = []
    for word in _split(words):
        key, value = _key_value(word, originals)
        if not value:
            raise UsageError(f"empty filter term: {word!r}")
        if key == "path" and word == value:  # a bare word: captiond's own path or glob
            term = _bare_path(word, originals)
            if term is not None:
                names.append(term)
        elif key in NAME_KEYS:
            names.append(FilterTerm("folder" if key in ("path", "folder") else key, value.lstrip("/")
                                    if key in ("path", "folder") else value))
        elif key in METADATA_KEYS and not (photoprism and key in PHOTOPRISM_FIRST) and _answerable(key, value):
            if not metadata:
                unanswerable.append(word)
                continue
            _check(key, value)
            from_metadata.append(FilterTerm(key, value))
        elif photoprism and metadata:
            asked.append(f"{key}:{value}")
        else:
            unanswerable.append(word)
    if unanswerable:
        raise UsageError(_cannot_answer(unanswerable, metadata))
    return Query(tuple(names), tuple(from_metadata), tuple(asked))


def name_terms(query: Query, photoprism: AppConfig | None, originals: Path) -> tuple[FilterTerm, ...]:
    """Return the terms a scan applies: the name terms, and the files PhotoPrism's search finds (one AND term)."""
    if not query.photoprism:
        return query.names
    assert photoprism is not None, "parse() sends words to PhotoPrism only when it is configured"
    text = query.photoprism_query()
    return (*query.names, FilterTerm("files", text, photoprism_files(text, photoprism, originals)))


def selects(terms: Sequence[FilterTerm], originals: Path | None, path: Path) -> bool:
    """Return whether a path (absolute) matches every name term; no terms select everything."""
    if not terms or originals is None:
        return True
    try:
        relative = path.relative_to(originals).as_posix()
    except ValueError:
        return False
    return all(term.matches(relative, path.name) for term in terms)


def matches_metadata(terms: Sequence[FilterTerm], metadata: FileMetadata) -> bool:
    """Return whether a photo's metadata matches every metadata term."""
    return all(_matches(term, metadata) for term in terms)


def like(text: str, pattern: str, transform: Callable[[str], str] | None = None) -> bool:
    """Return whether text matches PhotoPrism's `OrLike`: `|` between choices, `*` any text, case ignored."""
    choices = pattern.split("|")
    if len(choices) > 1:
        choices = [choice.strip() for choice in choices]
    if transform is not None:
        choices = [transform(choice) for choice in choices]
    return any(_like_regex(choice).fullmatch(text) is not None for choice in choices)


def strip_known_extensions(name: str) -> str:
    """Return a file name without its known extensions (`IMG_1.JPG` and `IMG_1.jpg.xmp` become `IMG_1`)."""
    while "." in name and name[name.rfind("."):].lower() in KNOWN_EXTENSIONS:
        name = name[:name.rfind(".")]
    return name


def slug(text: str) -> str:
    """Return PhotoPrism's slug of a label name: ASCII lower case words joined by `-`."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")


def _split(words: Sequence[str]) -> list[str]:
    """Return the terms of the words; one word may hold a whole PhotoPrism query (`"path:2023 name:IMG_1"`)."""
    terms: list[str] = []
    for word in words:
        tokens = _tokens(word)
        terms += tokens if len(tokens) > 1 and all(_KEY.match(token) for token in tokens) else [word]
    return terms


def _tokens(text: str) -> list[str]:
    """Split a query as PhotoPrism does: at white space outside double quotes."""
    tokens, current, quoted = [], [], False
    for character in text:
        if character == '"':
            quoted = not quoted
            current.append(character)
        elif character.isspace() and not quoted:
            if current:
                tokens.append("".join(current))
            current = []
        else:
            current.append(character)
    if current:
        tokens.append("".join(current))
    return tokens


def _key_value(word: str, originals: Path) -> tuple[str, str]:
    match = _KEY.match(word)
    if match is None:
        return "path", word
    key, value = match.group(1).lower(), match.group(2).strip().replace('"', "")
    if key not in PHOTOPRISM_KEYS:
        if (originals / word).exists():  # a file or folder whose name holds a colon
            return "path", word
        raise UsageError(f"{printable(word)}: unknown filter {key}: (PhotoPrism's search has no such key)")
    return key, value


def _bare_path(word: str, originals: Path) -> FilterTerm | None:
    if not os.path.isabs(word):
        return FilterTerm("path", word)
    try:
        relative = Path(word).resolve().relative_to(originals.resolve()).as_posix()
    except ValueError as exc:
        raise UsageError(f"{printable(word)} is not inside the originals folder {shown(originals, None)}") from exc
    return None if relative == "." else FilterTerm("path", relative)


def _answerable(key: str, value: str) -> bool:
    """Return whether captiond answers this key from the files (`camera:ID` is PhotoPrism's database id)."""
    return not (key == "camera" and value.isdigit())


def _check(key: str, value: str) -> None:
    """Refuse a date term without a valid number (PhotoPrism would drop the term and search everything)."""
    if key in DATE_RANGES and not _numbers(key, value):
        low, high = DATE_RANGES[key]
        raise UsageError(f"{key}:{value}: expected numbers from {low} to {high}, separated by |")
    if key == "keywords" and not _WORD.search(value):
        raise UsageError(f"{key}:{value}: expected words, & between words that must all be there")


def _cannot_answer(words: list[str], metadata: bool) -> str:
    keys = ", ".join(dict.fromkeys(f"{word.partition(':')[0].lower()}:" for word in words))
    words = [printable(word) for word in words]
    if not metadata:
        return (f"{' '.join(words)}: retry selects files by path:, name:, filename: and paths or globs; "
                f"it cannot answer {keys}")
    return (f"{' '.join(words)}: captiond cannot answer {keys} from the files; PhotoPrism's search can: set "
            "Daemon.PhotoPrism {Url, Token} in vision.yml (album:, person: and label: filters are answered by "
            "PhotoPrism when it is set)")


def _numbers(key: str, value: str) -> set[int]:
    low, high = DATE_RANGES[key]
    return {int(choice) for choice in (part.strip() for part in value.split("|"))
            if choice.isdigit() and low <= int(choice) <= high}


def _matches(term: FilterTerm, metadata: FileMetadata) -> bool:
    if term.kind in DATE_RANGES:
        date = metadata.context()["date"]  # YYYY-MM-DD, or "" when the photo has no capture date
        if not date:
            return False
        part = {"year": date[:4], "month": date[5:7], "day": date[8:10]}[term.kind]
        return int(part) in _numbers(term.kind, term.pattern)
    if term.kind == "camera":
        return _camera_matches(metadata, term.pattern)
    if term.kind == "keywords":
        return _keywords_match(metadata, term.pattern)
    if term.kind == "label":
        keywords, _, _ = metadata.keywords(embedded=not metadata.sidecar_exists)
        labels = {slug(choice) for choice in term.pattern.split("|")} - {""}
        return any(slug(keyword) in labels for keyword in keywords)
    caption = current_caption(metadata)
    has_caption = bool(current_source(caption))
    answer = term.pattern.strip().lower()
    if answer in _TRUE or answer in _FALSE:
        return has_caption == (answer in _TRUE)
    return has_caption and like(caption.text.strip(), term.pattern)


def _camera_matches(metadata: FileMetadata, value: str) -> bool:
    """PhotoPrism: `camera_name LIKE 'v%' OR camera_model LIKE 'v%' OR camera_slug LIKE 'v%'`."""
    make = metadata.original.get("IFD0:Make", "").strip()
    model = metadata.original.get("IFD0:Model", "").strip(" \t\r\n-_")
    if model.lower().startswith(make.lower()):
        model = model[len(make):].strip()
    name = " ".join(part for part in (make, model) if part)
    prefix = value.strip("*%").casefold()
    return bool(name) and any(candidate.casefold().startswith(prefix) for candidate in (name, model, slug(name)))


def _keywords_match(metadata: FileMetadata, value: str) -> bool:
    """PhotoPrism's `LikeAnyWord`: `&` between parts that must all match, any word of a part; a word of two
    or more letters matches keywords it begins, a shorter one only itself."""
    keywords, _, _ = metadata.keywords(embedded=not metadata.sidecar_exists)
    caption = current_caption(metadata)
    texts = (*keywords, caption.text) if current_source(caption) else keywords
    words = {word.strip("-'").casefold() for text in texts for word in _WORD.findall(text)} - {""}
    for part in value.replace("|", " ").split("&"):
        wanted = [word.strip("-'").casefold() for word in part.split() if word.strip("-'")]
        if wanted and not any(found == word or (len(word) >= 2 and found.startswith(word))
                              for word in wanted for found in words):
            return False
    return True


def _name_value(choice: str) -> str:
    """PhotoPrism strips folders and known extensions from `name:` values."""
    return strip_known_extensions(choice.rpartition("/")[2])


def _like_regex(pattern: str) -> re.Pattern[str]:
    parts = re.split(r"[*%]+", pattern)
    return re.compile(".*".join(re.escape(part) for part in parts), re.IGNORECASE | re.DOTALL)


def _quoted(word: str) -> str:
    key, _, value = word.partition(":")
    return f'{key}:"{value}"' if any(character.isspace() for character in value) else word
