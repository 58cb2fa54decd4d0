"""OpenAI's Responses API (`/v1/responses`), the body PhotoPrism's `Engine: openai` sends, and its answer.

Request (PhotoPrism's internal/ai/vision/openai/transport.go): `input` messages of `input_text` and
`input_image` parts (the image always as a data URL), `max_output_tokens`, `temperature`/`top_p` (left out
for GPT-5 models, as PhotoPrism does), `text.format` json_schema for labels, `reasoning.effort` from Think.
Answer: `output[].content[]` parts of type `output_text` (or `json`); not streamed.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from .config import ModelConfig


def is_responses_uri(uri: str) -> bool:
    """Return whether a Uri is a Responses API endpoint (`.../v1/responses`)."""
    return uri.rstrip("/").endswith("/responses")


def responses_body(model: ModelConfig, jpeg: bytes, prompt: str, system: str,
                   schema: dict[str, Any] | None) -> dict[str, Any]:
    """Return the Responses API request for one JPEG, as PhotoPrism builds it."""
    image: dict[str, Any] = {"type": "input_image",
                             "image_url": "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")}
    if model.detail:
        image["detail"] = model.detail
    messages: list[dict[str, Any]] = []
    if system:
        messages.append({"role": "system", "content": [{"type": "input_text", "text": system}]})
    messages.append({"role": "user", "content": [{"type": "input_text", "text": prompt}, image]})
    options = model.options
    body: dict[str, Any] = {"model": model.model_id, "input": messages,
                            "max_output_tokens": options.get("num_predict")}
    if not model.model_id.lower().startswith("gpt-5"):  # GPT-5 models refuse sampling parameters
        for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
            if options.get(name):
                body[name] = options[name]
    if model.service.tier:
        body["service_tier"] = model.service.tier
    if schema is not None:
        body["text"] = {"format": {"type": "json_schema", "name": "labels", "schema": schema, "strict": True}}
    if model.service.think.effort:
        body["reasoning"] = {"effort": model.service.think.effort}
    return body


def parse_responses(document: dict[str, Any]) -> tuple[str, str]:
    """Return (text, reason) of a Responses API answer: its first text (or JSON) part, and why it stopped."""
    for output in document.get("output") or []:
        if not isinstance(output, dict):
            continue
        for part in output.get("content") or []:
            if not isinstance(part, dict):
                continue
            if part.get("json") is not None:
                return json.dumps(part["json"]), str(document.get("status") or "")
            if str(part.get("text") or "").strip():
                return str(part["text"]), str(document.get("status") or "")
    details = document.get("incomplete_details") or {}
    return "", str(details.get("reason") or document.get("status") or "") if isinstance(details, dict) else ""
