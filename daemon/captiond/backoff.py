"""Growing delays: the one rule behind every schedule of tries (requests, endpoints set aside, the daemon's
requeue, probes of a server that is away): double from a first delay up to a maximum, then jitter."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

Uniform = Callable[[float, float], float]  # random.uniform, or a fixed choice in tests


@dataclass(frozen=True)
class Backoff:
    """Delays that double from `first` up to `maximum`, each multiplied by a random factor in `jitter`."""

    first: float
    maximum: float
    jitter: tuple[float, float] = (1.0, 1.0)

    def delay(self, tries: int, uniform: Uniform = random.uniform) -> float:
        """Return the wait after `tries` earlier waits (0: the first wait)."""
        ceiling = min(self.maximum, self.first * 2.0 ** min(max(tries, 0), 64))  # capped: no float overflow
        low, high = self.jitter
        return ceiling * (low if low == high else uniform(low, high))
