"""Notice a degraded GPU: after many requests Ollama may keep answering, but partly or wholly on the CPU.

From Ollama's own figures on every answer (eval_count / eval_duration) each endpoint's generation speed in
tokens per second is kept, with a baseline measured on the first answers after each model load. When the
speed stays below `Daemon.Degraded.Fraction` of the baseline for `Daemon.Degraded.Images` answers in a row,
or /api/ps shows that only part of the model sits in GPU memory (size_vram < size), the endpoint is
degraded: said once in the log with the fix PhotoPrism's guide gives (restart Ollama), and shown by
`captiond status`, /healthz, /metrics and the status page.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

BASELINE_ANSWERS = 3  # answers after a load whose median speed is the baseline
LOAD_SECONDS = 1.0  # a load_duration this long means the model was (re)loaded: measure the baseline again
MIN_EVAL_SECONDS = 0.02  # shorter generations are too noisy to judge a speed by
FULLY_ON_GPU = 0.99
FIX = ("restart the model server (for example `docker compose restart ollama` or `sudo systemctl restart "
       "ollama`), as PhotoPrism's caption guide advises")


@dataclass
class EndpointSpeed:
    """One endpoint's throughput, baseline and degradation (mutated under the monitor's lock)."""

    name: str
    tokens_per_second: float | None = None
    seconds_per_image: float | None = None
    baseline: float | None = None
    samples: list[float] = field(default_factory=list)
    slow_answers: int = 0
    vram_fraction: float | None = None
    degraded: str = ""
    answers: int = 0

    def figures(self) -> dict[str, object]:
        """Return this endpoint's figures for status and the status page."""
        return {"endpoint": self.name, "tokens_per_second": _rounded(self.tokens_per_second),
                "seconds_per_image": _rounded(self.seconds_per_image), "baseline_tokens_per_second":
                _rounded(self.baseline), "vram_fraction": _rounded(self.vram_fraction), "degraded": self.degraded,
                "answers": self.answers}


class DegradationMonitor:
    """Keeps every endpoint's speed and says when one is degraded; thread-safe."""

    def __init__(self, fraction: float = 0.5, images: int = 5,
                 on_change: Callable[[EndpointSpeed], None] | None = None) -> None:
        self.fraction = fraction
        self.images = images
        self.on_change = on_change
        self._speeds: dict[str, EndpointSpeed] = {}
        self._lock = threading.Lock()

    def observe(self, endpoint: str, seconds: float, figures: Mapping[str, float]) -> None:
        """Take one answer's wall seconds and Ollama's figures (eval_count, eval_duration ns, load_duration ns)."""
        with self._lock:
            speed = self._observe(endpoint, seconds, figures)
        if self.on_change is not None:
            self.on_change(speed)

    def _observe(self, endpoint: str, seconds: float, figures: Mapping[str, float]) -> EndpointSpeed:
        speed = self._speed(endpoint)
        speed.answers += 1
        speed.seconds_per_image = seconds
        if figures.get("load_duration", 0.0) / 1e9 >= LOAD_SECONDS:
            speed.baseline, speed.samples, speed.slow_answers = None, [], 0  # a new load: measure again
        eval_seconds = figures.get("eval_duration", 0.0) / 1e9
        tokens = figures.get("eval_count", 0.0)
        if eval_seconds < MIN_EVAL_SECONDS or tokens <= 0:
            return speed
        speed.tokens_per_second = tokens / eval_seconds
        if speed.baseline is None:
            speed.samples.append(speed.tokens_per_second)
            if len(speed.samples) >= BASELINE_ANSWERS:
                speed.baseline = statistics.median(speed.samples)
            return speed
        if speed.tokens_per_second >= self.fraction * speed.baseline:
            speed.slow_answers = 0
            return speed
        speed.slow_answers += 1
        if speed.slow_answers >= self.images and not speed.degraded:
            self._degrade(speed, f"{speed.tokens_per_second:.1f} tokens/s for {speed.slow_answers} images in "
                          f"a row, below {self.fraction:.0%} of the {speed.baseline:.1f} tokens/s measured "
                          "after the model loaded")
        return speed

    def observe_loaded(self, endpoint: str, model: str, loaded: list[dict[str, Any]]) -> None:
        """Take /api/ps's list of loaded models: a model only partly in GPU memory runs partly on the CPU."""
        entry = next((item for item in loaded if model in (item.get("name"), item.get("model"))), None)
        if entry is None:
            return
        size, in_vram = entry.get("size"), entry.get("size_vram")
        if not isinstance(size, int | float) or not isinstance(in_vram, int | float) or size <= 0:
            return
        with self._lock:
            speed = self._speed(endpoint)
            speed.vram_fraction = min(1.0, in_vram / size)
            if speed.vram_fraction < FULLY_ON_GPU and not speed.degraded:
                self._degrade(speed, f"only {speed.vram_fraction:.0%} of {model} is in GPU memory (/api/ps size_vram "
                              "< size): it runs partly on the CPU")
        if self.on_change is not None:
            self.on_change(speed)

    def reset(self, endpoint: str) -> None:
        """Forget an endpoint's baseline and degradation (after the model server was restarted)."""
        with self._lock:
            speed = self._speed(endpoint)
            was = speed.degraded
            speed.baseline, speed.samples, speed.slow_answers, speed.degraded = None, [], 0, ""
            speed.vram_fraction = None
        if was:
            log.info("%s: no longer considered degraded; measuring its speed again", endpoint)
        if self.on_change is not None:
            self.on_change(speed)

    def degraded(self) -> dict[str, str]:
        """Return {endpoint: reason} of every degraded endpoint."""
        with self._lock:
            return {name: speed.degraded for name, speed in self._speeds.items() if speed.degraded}

    def figures(self) -> list[dict[str, object]]:
        """Return every endpoint's figures."""
        with self._lock:
            return [speed.figures() for speed in self._speeds.values()]

    def _speed(self, endpoint: str) -> EndpointSpeed:
        if endpoint not in self._speeds:
            self._speeds[endpoint] = EndpointSpeed(endpoint)
        return self._speeds[endpoint]

    def _degrade(self, speed: EndpointSpeed, reason: str) -> None:
        speed.degraded = reason
        log.warning("%s is degraded: %s. Fix: %s", speed.name, reason, FIX)


class Cadence:
    """At most once per interval (monotonic seconds): for /api/ps polls and the OnDegraded command."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}

    def due(self, key: str, now: float | None = None) -> bool:
        """Return whether the interval has passed for `key` (and count this as the time it was done)."""
        now = time.monotonic() if now is None else now
        if key in self._last and now - self._last[key] < self.interval:
            return False
        self._last[key] = now
        return True


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
