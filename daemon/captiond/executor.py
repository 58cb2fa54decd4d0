"""The one executor `run` and `watch` process files with: bounded, and with one way to stop.

Preparing the next images overlaps the model's work on the current ones: there are a few more
worker threads than the model servers' parallel slots, and never more than twice that many files
in flight (submitted and not finished), so a stop leaves little behind.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable

SPARE_WORKERS = 2  # threads beyond the servers' slots: they read and decode the next photos meanwhile


def workers_for(capacity: int) -> int:
    """Return the worker threads for model servers that take `capacity` requests at once."""
    return capacity + SPARE_WORKERS


def start_thread(target: Callable[[], None], name: str) -> threading.Thread:
    """Start a daemon thread (one that never holds the process at exit) and return it."""
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread


class BoundedExecutor:
    """A thread pool that holds at most `limit` tasks in flight; `stop` abandons what does not end in time."""

    def __init__(self, capacity: int, on_done: Callable[[], None] | None = None,
                 name: str = "captiond") -> None:
        self.workers = workers_for(capacity)
        self.limit = self.workers * 2
        self._on_done = on_done  # called in the worker thread as each task ends (the daemon's wake-up)
        self._pool = concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix=name)
        self._in_flight: set[concurrent.futures.Future[None]] = set()

    @property
    def room(self) -> int:
        """Return how many more tasks may be submitted now."""
        self._in_flight = {future for future in self._in_flight if not future.done()}
        return self.limit - len(self._in_flight)

    @property
    def busy(self) -> bool:
        """Return whether any task is in flight."""
        return self.room < self.limit

    def submit(self, task: Callable[[], None]) -> None:
        """Run a task in a worker thread (it waits for a free worker while all are busy)."""
        future = self._pool.submit(task)
        if self._on_done is not None:
            on_done = self._on_done
            future.add_done_callback(lambda _: on_done())
        self._in_flight.add(future)

    def wait_for_room(self) -> None:
        """Block while `limit` tasks are in flight; re-raise what a finished task raised."""
        if len(self._in_flight) < self.limit:
            return
        done, self._in_flight = concurrent.futures.wait(self._in_flight,
                                                        return_when=concurrent.futures.FIRST_COMPLETED)
        _raise_errors(done)

    def wait(self) -> None:
        """Wait for every task in flight; re-raise what a task raised."""
        done, self._in_flight = concurrent.futures.wait(self._in_flight)
        _raise_errors(done)

    def stop(self, grace: float, abandon: Callable[[int], None] = lambda waiting: None) -> int:
        """Start nothing more, give the tasks under way `grace` seconds, then abandon the rest.

        `abandon(running)` is called when tasks are still running after `grace` (closing the model
        clients ends most requests); they get `grace` seconds more. Return how many tasks were left running: the
        process must not wait for them (a request blocked on a server that sends nothing).
        """
        started = {future for future in self._in_flight if not future.cancel()}  # cancel() fails once started
        _, waiting = concurrent.futures.wait(started, timeout=grace)
        left = 0
        if waiting:
            abandon(len(waiting))
            _, still = concurrent.futures.wait(waiting, timeout=grace)
            left = len(still)
        self._in_flight = set()
        self._pool.shutdown(wait=False, cancel_futures=True)
        return left

    def close(self) -> None:
        """Wait for the worker threads to end (after `wait`, none is busy)."""
        self._pool.shutdown(wait=True)


def _raise_errors(done: set[concurrent.futures.Future[None]]) -> None:
    for future in done:
        future.result()
