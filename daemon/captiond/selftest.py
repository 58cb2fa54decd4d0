"""Does the model look at the image? Ask about a generated picture whose content is unambiguous.

Ollama releases have shipped regressions where vision models stop receiving images and answer anyway
(ollama/ollama#13549): every caption would then be made up. The self-test sends a large red disc on
white with a short question; an answer that does not name the colour means the model cannot see.
"""

from __future__ import annotations

import functools
import io
import logging
import re

from PIL import Image, ImageDraw

from .errors import FileError, ModelCannotSee
from .model import ModelClient

log = logging.getLogger(__name__)

PROBE_QUESTION = "What is in this picture? Name its colour and its shape in a few words."
# "red" in the languages a model may fall back to; any of them in the answer means it saw the disc.
RED_WORDS = ("red", "reddish", "rot", "rote", "roter", "rotes", "rouge", "rojo", "roja", "rosso", "rossa", "rood",
             "rode", "vermelho", "vermelha", "röd", "rød", "punainen", "czerwony", "czerwone", "červený")
RED_SCRIPTS = ("красн", "赤", "红", "紅", "빨간", "أحمر")
_RED = re.compile(r"\b(" + "|".join(RED_WORDS) + r")\b", re.IGNORECASE)


@functools.lru_cache(maxsize=1)
def probe_image() -> bytes:
    """Return a JPEG of a large red disc on white (384 px): small, and unmistakable for any model that sees."""
    image = Image.new("RGB", (384, 384), "white")
    ImageDraw.Draw(image).ellipse((48, 48, 336, 336), fill=(220, 20, 20))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def names_the_disc(answer: str) -> bool:
    """Return whether an answer about the probe image names its colour."""
    return bool(_RED.search(answer)) or any(word in answer.lower() for word in RED_SCRIPTS)


def check_sight(client: ModelClient) -> bool:
    """Ask the model about the probe image; raise ModelCannotSee when it answers without seeing it.

    Return False when the test could not be made (a transient failure: try again later), True when passed.
    """
    try:
        answer = client.describe(probe_image(), PROBE_QUESTION, "", subject="self-test")
    except FileError as error:
        log.warning("self-test of %s: no answer (%s); trying again later", client.model.model_id, error)
        return False
    text = " ".join(answer.best_text.split())
    if not names_the_disc(text):
        raise ModelCannotSee(
            f"model {client.model.model_id} on {client.uri} answers without seeing images: asked about a red disc "
            f"on white, it said {text[:160]!r}. Captions would be made up, so none is written. Update (or "
            "downgrade) the model server, or choose another model; Daemon.SelfTest: false turns this check off")
    log.debug("self-test of %s passed: %r", client.model.model_id, text[:160])
    return True
