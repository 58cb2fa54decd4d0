"""Spread requests over several model servers: least busy healthy endpoint first, failing ones set aside.

No HTTP here (model.py does that): this is the bookkeeping of slots, health and per-endpoint figures.
Total requests in flight never exceed the sum of the endpoints' `Parallel`, so no server is sent
work that would only queue there and time out.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from .backoff import Backoff
from .config import Endpoint
from .errors import AllEndpointsDown

log = logging.getLogger(__name__)


@dataclass
class EndpointState:
    """One endpoint's slots, health and figures (mutated under the pool's lock)."""

    endpoint: Endpoint
    slots: int
    in_flight: int = 0
    failures: int = 0
    down_until: float = 0.0
    requests: int = 0
    errors: int = 0
    seconds: float = 0.0

    @property
    def name(self) -> str:
        """Return the endpoint's address with secrets redacted."""
        return self.endpoint.redacted_uri()

    def figures(self) -> dict[str, object]:
        """Return requests, errors and mean seconds of this endpoint."""
        successes = self.requests - self.errors
        return {"endpoint": self.name, "parallel": self.slots, "requests": self.requests, "errors": self.errors,
                "mean_seconds": round(self.seconds / successes, 3) if successes else None,
                "healthy": self.down_until <= time.monotonic()}


class EndpointPool:
    """Hands out endpoint slots; thread-safe."""

    def __init__(self, endpoints: tuple[Endpoint, ...], default_parallel: int, first_delay: float,
                 max_delay: float) -> None:
        self.states = [EndpointState(endpoint, endpoint.parallel or default_parallel) for endpoint in endpoints]
        # A server that refused a connection stays aside at least a second, so that requests are not
        # spent on it while another endpoint answers (a lone endpoint is never set aside: nothing to prefer).
        first = max(first_delay, 1.0)
        self.set_aside = Backoff(first, max(max_delay, first))
        self._condition = threading.Condition()

    @property
    def capacity(self) -> int:
        """Return the sum of every endpoint's slots."""
        return sum(state.slots for state in self.states)

    @contextmanager
    def slot(self, deadline: float) -> Iterator[EndpointState]:
        """Hold a slot on the least busy healthy endpoint for one request (waits for a free one)."""
        state = self._acquire(deadline)
        try:
            yield state
        finally:
            with self._condition:
                state.in_flight -= 1
                state.requests += 1
                self._condition.notify_all()

    def _acquire(self, deadline: float) -> EndpointState:
        """Return a free slot; wait as long as it takes while an endpoint is healthy (its busy slots end by
        their requests' deadlines), but only until `deadline` while every endpoint is set aside."""
        with self._condition:
            while True:
                now = time.monotonic()
                healthy = [state for state in self.states if state.down_until <= now]
                free = [state for state in healthy if state.in_flight < state.slots]
                if free:
                    state = min(free, key=lambda item: (item.in_flight / item.slots, item.requests / item.slots))
                    state.in_flight += 1
                    return state
                if healthy:  # all busy: a finishing request wakes us
                    self._condition.wait(timeout=0.5)
                    continue
                wake = min(state.down_until for state in self.states)
                if wake > deadline:
                    raise AllEndpointsDown()
                self._condition.wait(timeout=max(0.01, min(wake - now, 0.5)))

    def failed(self, state: EndpointState, reason: str, set_aside: bool, delay: float | None = None) -> None:
        """Count a failed request; set the endpoint aside (growing delays) when the server itself failed."""
        with self._condition:
            state.errors += 1
            if not set_aside or len(self.states) == 1:
                return
            state.failures += 1
            pause = delay if delay is not None else self.set_aside.delay(state.failures - 1)
            state.down_until = time.monotonic() + pause
            if len(self.states) > 1:
                log.warning("%s: %s; setting it aside for %.1fs", state.name, reason, pause)
            self._condition.notify_all()

    def succeeded(self, state: EndpointState, seconds: float = 0.0) -> None:
        """Count a request answered in `seconds` and mark its endpoint healthy again."""
        with self._condition:
            state.seconds += seconds
            if state.failures and len(self.states) > 1:
                log.info("%s answers again", state.name)
            state.failures = 0
            state.down_until = 0.0

    def others_healthy(self, state: EndpointState) -> bool:
        """Return whether an endpoint other than `state` is not set aside."""
        with self._condition:
            now = time.monotonic()
            return any(other is not state and other.down_until <= now for other in self.states)

    def figures(self) -> list[dict[str, object]]:
        """Return every endpoint's figures."""
        with self._condition:
            return [state.figures() for state in self.states]
