"""Where a processed file goes (state.transition), and the growing delays of every schedule (backoff.Backoff)."""

from __future__ import annotations

from pathlib import Path

import pytest

from captiond.backoff import Backoff
from captiond.pipeline import Outcome, Status
from captiond.state import REQUEUE_MAX_DELAY, FileState, Finish, Requeue, RowState, requeue_backoff, transition

PHOTO = Path("/originals/a.jpg")
NO_JITTER = Backoff(30.0, REQUEUE_MAX_DELAY)


def row(attempts: int = 0, crashes: int = 0) -> FileState:
    return FileState(PHOTO, 10, 1, RowState.RUNNING, attempts=attempts, crashes=crashes)


def outcome(status: Status, transient: bool = False, crashed: bool = False, unexpected: bool = False) -> Outcome:
    return Outcome(PHOTO, status, "why", transient=transient, crashed=crashed, unexpected=unexpected)


@pytest.mark.parametrize(("attempts", "crashes", "result", "expected"), [
    # done: captioned, or rightly skipped
    (0, 0, outcome(Status.CAPTIONED), Finish(RowState.DONE, "why")),
    (5, 1, outcome(Status.SKIPPED), Finish(RowState.DONE, "why")),
    # a permanent failure is recorded as failed, whatever came before
    (0, 0, outcome(Status.FAILED), Finish(RowState.FAILED, "why")),
    (3, 1, outcome(Status.FAILED, crashed=True), Finish(RowState.FAILED, "why")),
    # a transient failure goes back to the queue with growing delays, forever
    (0, 0, outcome(Status.FAILED, transient=True), Requeue(30.0, "why")),
    (1, 0, outcome(Status.FAILED, transient=True), Requeue(60.0, "why")),
    (4, 0, outcome(Status.FAILED, transient=True), Requeue(480.0, "why")),
    (7, 0, outcome(Status.FAILED, transient=True), Requeue(REQUEUE_MAX_DELAY, "why")),
    (5000, 0, outcome(Status.FAILED, transient=True), Requeue(REQUEUE_MAX_DELAY, "why")),
    # the first crash of the model server is retried; the second quarantines
    (0, 0, outcome(Status.FAILED, transient=True, crashed=True), Requeue(30.0, "why", crashed=True)),
    (1, 1, outcome(Status.FAILED, transient=True, crashed=True),
     Finish(RowState.QUARANTINED, "crashed the model server twice: why", crashed=True)),
    # a crash before does not count against a failure without one
    (1, 1, outcome(Status.FAILED, transient=True), Requeue(60.0, "why")),
    # an error no check foresaw: tried three times, then quarantined
    (1, 0, outcome(Status.FAILED, transient=True, unexpected=True), Requeue(60.0, "why")),
    (2, 0, outcome(Status.FAILED, transient=True, unexpected=True),
     Finish(RowState.QUARANTINED, "failed 3 times: why")),
    (2, 1, outcome(Status.FAILED, transient=True, unexpected=True, crashed=True),
     Finish(RowState.QUARANTINED, "failed 3 times: why")),
])
def test_transition(attempts: int, crashes: int, result: Outcome, expected: Finish | Requeue) -> None:
    assert transition(row(attempts, crashes), result, NO_JITTER) == expected


def test_the_labels_failing_after_the_caption_was_written_is_a_failure_of_the_file() -> None:
    written = Outcome(PHOTO, Status.FAILED, "labels: no JSON", caption="a dog", transient=True)
    assert written.written and written.failed
    assert transition(row(), written, NO_JITTER) == Requeue(30.0, "labels: no JSON")


@pytest.mark.parametrize(("factor", "delay"), [(0.8, 24.0), (1.2, 36.0)])
def test_the_daemon_requeue_starts_at_retry_max_delay_with_twenty_percent_jitter(factor: float, delay: float) -> None:
    step = transition(row(), outcome(Status.FAILED, transient=True), requeue_backoff(30.0), lambda low, high: factor)
    assert step == Requeue(pytest.approx(delay), "why")  # type: ignore[arg-type]


@pytest.mark.parametrize(("backoff", "tries", "expected"), [
    # the model's requests: Retry.Delay doubling to Retry.MaxDelay
    (Backoff(1.0, 30.0), 0, 1.0),
    (Backoff(1.0, 30.0), 3, 8.0),
    (Backoff(1.0, 30.0), 5, 30.0),
    # probes of a server that is away: 2 s doubling to a minute
    (Backoff(2.0, 60.0), 0, 2.0),
    (Backoff(2.0, 60.0), 4, 32.0),
    (Backoff(2.0, 60.0), 5, 60.0),
    (Backoff(2.0, 60.0), 10_000, 60.0),
    # notifications to PhotoPrism and Immich: 5 s doubling to 10 minutes
    (Backoff(5.0, 600.0), 0, 5.0),
    (Backoff(5.0, 600.0), 7, 600.0),
    # never negative tries, never an overflow
    (Backoff(2.0, 60.0), -1, 2.0),
    (Backoff(30.0, 3600.0), 2_000, 3600.0),
])
def test_backoff_doubles_up_to_its_maximum(backoff: Backoff, tries: int, expected: float) -> None:
    assert backoff.delay(tries) == expected


@pytest.mark.parametrize(("jitter", "drawn", "expected"), [((0.5, 1.0), 0.5, 4.0), ((0.5, 1.0), 1.0, 8.0),
                                                           ((0.8, 1.2), 1.2, 9.6)])
def test_backoff_jitter_multiplies_the_delay(jitter: tuple[float, float], drawn: float, expected: float) -> None:
    draws: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        draws.append((low, high))
        return drawn

    assert Backoff(1.0, 30.0, jitter).delay(3, uniform) == pytest.approx(expected)
    assert draws == [jitter]


def test_backoff_with_jitter_stays_in_its_range() -> None:
    backoff = Backoff(1.0, 30.0, (0.5, 1.0))
    assert all(4.0 <= backoff.delay(3) <= 8.0 for _ in range(200))
