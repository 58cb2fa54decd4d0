"""Keywords from a labels model: parse its JSON answer, normalise names, apply the thresholds (pure functions)."""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .captions import strip_thinking, valid_text
from .config import Thresholds
from .errors import AnswerError

# PhotoPrism's defaults (internal/ai/vision/ollama/const.go).
LABEL_SYSTEM = ("You are a PhotoPrism vision model. Output concise JSON that matches the schema. Each label name "
                "MUST be a single-word noun in its canonical singular form. Avoid spaces, punctuation, emoji, or "
                "descriptive phrases.")
LABEL_SYSTEM_PHRASE = "You are a PhotoPrism vision model. Output concise JSON that matches the schema."
LABELS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "labels": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "confidence": {"type": "number"},
                               "topicality": {"type": "number"}},
                "required": ["name", "confidence", "topicality"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["labels"],
    "additionalProperties": False,
}
MAX_LABELS = 20
MAX_LABEL_LENGTH = 100  # characters: a label is a word or a short phrase; longer "labels" are dropped
MAX_JSON_STARTS = 64  # where a JSON document may start in an answer: enough for prose around it, and bounded


@dataclass(frozen=True)
class Label:
    """One keyword proposed by the model, with its confidence and topicality from 0 to 1."""

    name: str
    confidence: float
    topicality: float


def parse_labels(text: str) -> list[Label]:
    """Return the labels in a model's answer; tolerate prose, code fences, missing fields and repeats.

    Raises AnswerError when the answer holds no usable JSON at all.
    """
    document = find_json(strip_thinking(text))
    if document is None:
        raise AnswerError(f"the labels answer held no JSON: {text.strip()[:80]!r}")
    items = document.get("labels") if isinstance(document, dict) else document
    if not isinstance(items, list):
        raise AnswerError("the labels answer has no list of labels")
    labels = []
    for item in items:
        label = _label(item)
        if label is not None:
            labels.append(label)
    return labels


def find_json(text: str) -> Any:
    """Return the first JSON object or list in text (fenced, wrapped in prose, or bare), else None.

    Bounded: at most MAX_JSON_STARTS places are tried per candidate, and a document nested deeper than
    Python's recursion limit is no document.
    """
    fenced = re.findall(r"```(?:json)?\s*(.*?)```", text, re.DOTALL)
    for candidate in [*fenced, text]:
        decoder = json.JSONDecoder()
        for _, match in zip(range(MAX_JSON_STARTS), re.finditer(r"[\[{]", candidate), strict=False):
            try:
                document, _ = decoder.raw_decode(candidate[match.start():])
            except (ValueError, RecursionError):
                continue
            if isinstance(document, dict | list):
                return document
    return None


def _label(item: Any) -> Label | None:
    if isinstance(item, str):
        return Label(item, 0.5, 0.5) if item.strip() else None
    if not isinstance(item, dict):
        return None
    name = item.get("name") or item.get("label") or ""
    if not isinstance(name, str) or not name.strip():
        return None
    confidence = _fraction(item.get("confidence"), 0.5)
    topicality = _fraction(item.get("topicality"), confidence)
    return Label(name, confidence, topicality)


def _fraction(value: Any, default: float) -> float:
    """Return a value from 0 to 1 (percentages are scaled down); PhotoPrism's default when missing or <= 0."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return default
    return min(1.0, value / 100 if value > 1 else float(value))


def normalize_name(name: str, mode: str) -> str:
    """Return a label name as PhotoPrism normalises it: `single-word`, `phrase`, or unchanged (`false`)."""
    name = unicodedata.normalize("NFC", " ".join(valid_text(name).split())).strip(" .,;:!?\"'`*_-#")
    if mode in ("false", "off", "none", "no", "disabled") or not name:
        return name
    words = re.findall(r"[^\W_]+(?:['’-][^\W_]+)*", name)
    if not words:
        return ""
    if not _latin(name):
        return name  # names in a non-Latin script are never collapsed
    if mode == "phrase":
        return " ".join(word[:1].upper() + word[1:].lower() for word in words)
    first = str(words[0])
    return first[:1].upper() + first[1:].lower()


def _latin(text: str) -> bool:
    return all("LATIN" in unicodedata.name(character, "") for character in text if character.isalpha())


def select_labels(labels: Iterable[Label], thresholds: Thresholds, mode: str) -> list[str]:
    """Return the keywords to write: normalised, above the thresholds, without repeats, best first."""
    chosen: dict[str, Label] = {}
    for label in labels:
        if label.confidence * 100 < thresholds.confidence or label.topicality * 100 < thresholds.topicality:
            continue
        name = normalize_name(label.name, mode)
        key = name.casefold()
        if not name or len(name) > MAX_LABEL_LENGTH:
            continue
        if key not in chosen or chosen[key].confidence < label.confidence:
            chosen[key] = Label(name, label.confidence, label.topicality)
    ranked = sorted(chosen.values(), key=lambda label: (-label.topicality, -label.confidence, label.name))
    return [label.name for label in ranked[:MAX_LABELS]]


def merge_keywords(current: list[str], ours_before: list[str], labels: list[str]) -> tuple[list[str], list[str]]:
    """Return (keywords to write, the ones we add) keeping every keyword a person or another tool added.

    Our own earlier keywords are replaced by the new labels; a label a person also has stays theirs.
    """
    ours = {keyword.casefold() for keyword in ours_before}
    kept = [keyword for keyword in current if keyword.casefold() not in ours]
    kept_keys = {keyword.casefold() for keyword in kept}
    added: list[str] = []
    for label in labels:
        if label.casefold() not in kept_keys and label.casefold() not in {keyword.casefold() for keyword in added}:
            added.append(label)
    return kept + added, added
