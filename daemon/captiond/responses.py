"""OpenAI's Responses API (`/v1/responses`), the body PhotoPrism's `Engine: openai` sends, and its answer.

Request (PhotoPrism's internal/ai/vision/api_request.go openAIJSON, openai/transport.go): `input` messages of
`input_text` and `input_image` parts (the image always as a data URL, `detail` low unless Options.Detail says
otherwise), `max_output_tokens` (at least 512 for captions, 1024 for labels), `temperature`/`top_p` only when
set and never for GPT-5 models, which get `reasoning.effort` low; `service_tier` from Tier; `text.format`
json_schema for labels (PhotoPrism's schema and name, not strict).
Answer: `output[].content[]` parts of type `output_text` (or `json`); not streamed.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from .config import OPENAI_DETAIL, ModelConfig
from .labels import LABELS_SCHEMA


def responses_body(model: ModelConfig, jpeg: bytes, prompt: str, system: str,
                   schema: dict[str, Any] | None) -> dict[str, Any]:
    """Return the Responses API request for one JPEG, as PhotoPrism's openAIJSON builds it (api_request.go)."""
    image: dict[str, Any] = {"type": "input_image",
                             "image_url": "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii"),
                             "detail": model.detail or OPENAI_DETAIL}
    messages: list[dict[str, Any]] = []
    if system.strip():
        messages.append({"role": "system", "type": "message",
                         "content": [{"type": "input_text", "text": system.strip()}]})
    messages.append({"role": "user", "type": "message",
                     "content": [{"type": "input_text", "text": prompt.strip()}, image]})
    options = model.options
    body: dict[str, Any] = {"model": model.model_id, "input": messages,
                            "max_output_tokens": options.get("num_predict")}
    gpt5 = model.model_id.lower().startswith("gpt-5")
    if gpt5:
        body["reasoning"] = {"effort": "low"}  # PhotoPrism's for every GPT-5 model; Service.Think is not sent
    names = ("presence_penalty", "frequency_penalty") if gpt5 else (  # GPT-5 takes no temperature or top_p
        "temperature", "top_p", "presence_penalty", "frequency_penalty")
    body.update({name: options[name] for name in names if options.get(name)})
    if model.service.tier:
        body["service_tier"] = model.service.tier
    if schema is not None:
        body["text"] = {"format": response_format(model, schema)}
    return body


def response_format(model: ModelConfig, schema: dict[str, Any]) -> dict[str, Any]:
    """Return `text.format` as PhotoPrism's buildOpenAIResponseFormat makes it (json_schema, not strict).

    A labels request gets the model's labels schema (PhotoPrism's unless Schema gives one); its name is
    Options.SchemaVersion, else PhotoPrism's JsonSchemaName, photoprism_vision_labels_v1.
    """
    if schema is LABELS_SCHEMA:
        schema = model.labels_json_schema()
    kind = "labels" if "labels" in json.dumps(schema) else "schema"
    name = model.schema_version or f"photoprism_vision_{kind}_v1"
    return {"type": "json_schema", "name": name, "schema": schema}


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
