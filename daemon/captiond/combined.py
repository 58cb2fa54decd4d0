"""One request for caption and labels: when both are asked of the same model on the same server.

PhotoPrism's `vision run -m caption,labels` sends the image twice; the server then encodes it twice.
With `Daemon.CombineOutputs: true` (or PhotoPrism's `Options.CombineOutputs` on the models) captiond
asks once for a JSON answer `{"caption": "...", "labels": [{name, confidence, topicality}]}`. Each
part is validated and cleaned exactly as a separate answer would be. This module holds the pure
parts: when combining applies, the combined model's settings, the prompt, the schema and the parser.
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Any

from .captions import clean_caption, strip_thinking
from .config import DEFAULT_NUM_PREDICT, DaemonConfig, ModelConfig
from .errors import AnswerError
from .labels import LABELS_SCHEMA, Label, find_json, parse_labels

COMBINED_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"caption": {"type": "string"}, "labels": LABELS_SCHEMA["properties"]["labels"]},
    "required": ["caption", "labels"],
    "additionalProperties": False,
}
COMBINED_INSTRUCTIONS = ('Put the caption in "caption" and the labels in "labels". Return JSON that matches this '
                         'schema:\n{"caption":"","labels":[{"name":"","confidence":0,"topicality":0}]}')


def combinable(caption: ModelConfig, labels: ModelConfig, daemon: DaemonConfig) -> bool:
    """Return whether caption and labels may share one request: asked for, and the same model on the same servers."""
    if not (daemon.combine_outputs or caption.combine_outputs or labels.combine_outputs):
        return False
    caption_service, labels_service = caption.service, labels.service
    return (caption.model_id == labels.model_id
            and [endpoint.uri for endpoint in caption_service.all_endpoints()]
            == [endpoint.uri for endpoint in labels_service.all_endpoints()]
            and caption_service.request_format == labels_service.request_format
            and caption_service.think == labels_service.think
            and caption.resolution == labels.resolution)


def combined_model(caption: ModelConfig, labels: ModelConfig) -> ModelConfig:
    """Return the labels model with room for both answers: its options, and the two answer budgets added up."""
    budget = (int(caption.options.get("num_predict", DEFAULT_NUM_PREDICT))
              + int(labels.options.get("num_predict", DEFAULT_NUM_PREDICT)))
    return dataclasses.replace(labels, options=MappingProxyType({**labels.options, "num_predict": budget}),
                               implied=True)


def combined_prompt(caption_prompt: str, labels_prompt: str) -> str:
    """Return the prompt of a combined request: the caption prompt, the labels prompt, and the schema."""
    return f"{caption_prompt}\n{labels_prompt}\n{COMBINED_INSTRUCTIONS}"


def parse_combined(text: str, max_length: int) -> tuple[str, list[Label]]:
    """Return the cleaned caption and the labels of a combined answer; raise AnswerError if either is missing."""
    document = find_json(strip_thinking(text))
    if not isinstance(document, dict):
        raise AnswerError(f"the combined answer held no JSON object: {text.strip()[:80]!r}")
    caption = document.get("caption")
    if isinstance(caption, dict):  # PhotoPrism's own envelope: {"caption": {"text": ..., "confidence": ...}}
        caption = caption.get("text")
    if not isinstance(caption, str):
        raise AnswerError("the combined answer has no caption")
    if not isinstance(document.get("labels"), list):
        raise AnswerError("the combined answer has no list of labels")
    return clean_caption(caption, max_length), parse_labels(text)
