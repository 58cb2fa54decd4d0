"""Turn a model's raw answer into one clean line of caption text (pure functions, no I/O)."""

from __future__ import annotations

import re
import unicodedata

from .errors import AnswerError

_THINK_BLOCK = re.compile(r"<think(?:ing)?>.*?</think(?:ing)?>", re.IGNORECASE | re.DOTALL)
_THINK_OPEN = re.compile(r"<think(?:ing)?>.*\Z", re.IGNORECASE | re.DOTALL)
_THINK_CLOSE = re.compile(r"\A.*?</think(?:ing)?>", re.IGNORECASE | re.DOTALL)
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-_]")  # terminal colour and cursor codes
_CODE_FENCE = re.compile(r"```[a-zA-Z0-9_-]*\n?|```")
_MARKDOWN_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_LINE_MARKERS = re.compile(r"^\s{0,3}(?:#{1,6}\s+|>\s?|[-*+•]\s+|\d{1,2}[.)]\s+)", re.MULTILINE)
_EMPHASIS = re.compile(r"(\*\*|__|\*|`)")
# "Sure! Here is a caption:", "Caption:", "Here's a one-sentence description of the image:" ...
# Only with punctuation after it, so that "Great Danes run" or "OK Corral at dusk" stay whole.
_INTERJECTION = re.compile(
    r"^(?:sure|certainly|of course|okay|ok|absolutely|great|alright|here you go)\s*[!,.:;]+\s*", re.IGNORECASE
)
_PREAMBLE = re.compile(
    r"^(?:(?:here(?:'s| is| are)|this is|below is|the following is)\b[^.:!?\n]{0,80}?"
    r"(?:caption|description|sentence|summary)[^:\n]{0,40}:|"
    r"(?:(?:short|brief|one-sentence|image|photo)\s+)?(?:caption|description|alt text|summary)\s*:)\s*",
    re.IGNORECASE,
)
_QUOTE_PAIRS = {'"': '"', "'": "'", "“": "”", "‘": "’", "«": "»", "„": "“", "`": "`"}
# Zero-width (non-)joiners are part of emoji sequences and of Persian and Indic text: keep them.
_JOINERS = frozenset("\u200c\u200d")
_SENTENCE_END = re.compile(r"[.!?…](?=\s|$)")


def strip_thinking(text: str) -> str:
    """Return text without <think>…</think> blocks, also when the tag is opened or closed only."""
    text = _THINK_BLOCK.sub(" ", text)
    text = _THINK_CLOSE.sub(" ", text)
    return _THINK_OPEN.sub(" ", text)


def strip_markdown(text: str) -> str:
    """Return text without code fences, headings, list markers, links and emphasis."""
    text = _CODE_FENCE.sub(" ", text)
    text = _MARKDOWN_LINK.sub(r"\1", text)
    text = _LINE_MARKERS.sub("", text)
    return _EMPHASIS.sub("", text)


def strip_preamble(text: str) -> str:
    """Return text without leading chatter such as "Sure! Here is a caption:" or "Caption:"."""
    original = text
    previous = None
    while previous != text:
        previous = text
        text = _INTERJECTION.sub("", text).lstrip()
        text = _PREAMBLE.sub("", text).lstrip()
    if text != original and text[:1].islower():
        text = text[0].upper() + text[1:]
    return text


def strip_wrapping_quotes(text: str) -> str:
    """Return text without quotes that wrap the whole of it."""
    while len(text) >= 2 and _QUOTE_PAIRS.get(text[0]) == text[-1] and text[0] not in text[1:-1]:
        text = text[1:-1].strip()
    return text


def valid_text(text: str) -> str:
    """Return text without lone surrogates (a JSON answer may hold "\\ud800"; no file format can store one)."""
    return "".join(character for character in text if not "\ud800" <= character <= "\udfff")


def single_line(text: str) -> str:
    """Return NFC text with line breaks and control characters turned into single spaces."""
    text = unicodedata.normalize("NFC", valid_text(text))
    text = "".join(" " if unicodedata.category(character) in ("Cc", "Cf", "Zl", "Zp")
                   and character not in _JOINERS else character for character in text)
    return re.sub(r"\s+", " ", text).strip()


def shorten(text: str, max_length: int) -> str:
    """Return text cut to at most max_length characters, at a sentence end if there is one, else a word."""
    if len(text) <= max_length:
        return text
    window = text[: max_length + 1]
    sentence_ends = [match.end() for match in _SENTENCE_END.finditer(window) if match.end() <= max_length]
    if sentence_ends and sentence_ends[-1] >= max_length // 3:
        return text[: sentence_ends[-1]].strip()
    cut = window[:max_length - 1].rsplit(" ", 1)[0].rstrip(" ,;:-")
    return f"{cut}…"


def clean_caption(raw: str, max_length: int = 500) -> str:
    """Return the caption hidden in a model's answer; raise AnswerError when nothing usable is left."""
    text = strip_thinking(_ANSI.sub("", raw))
    text = strip_markdown(text)
    text = single_line(text)
    text = strip_preamble(text)
    text = strip_wrapping_quotes(text)
    text = shorten(text, max_length)
    if not any(character.isalnum() for character in text):
        raise AnswerError("the model answered no caption" if not raw.strip() else
                          f"the model's answer held no caption: {single_line(raw)[:80]!r}")
    return text
