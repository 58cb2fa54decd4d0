"""The one bounded executor of `run` and `watch`: sizing, the in-flight limit, errors, and stopping."""

from __future__ import annotations

import threading

import pytest

from captiond.executor import BoundedExecutor, start_thread, workers_for

DEADLINE = 30.0  # generous: a condition, never a measured time


@pytest.mark.parametrize(("capacity", "workers", "limit"), [(1, 3, 6), (4, 6, 12), (8, 10, 20)])
def test_a_few_more_workers_than_slots_and_twice_that_in_flight(capacity: int, workers: int, limit: int) -> None:
    executor = BoundedExecutor(capacity)
    try:
        assert (workers_for(capacity), executor.workers, executor.limit) == (workers, workers, limit)
        assert executor.room == limit and not executor.busy
    finally:
        executor.close()


def test_never_more_than_the_limit_in_flight() -> None:
    executor = BoundedExecutor(1)
    release = threading.Event()
    lock = threading.Lock()
    running, most = [0], [0]

    def task() -> None:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        release.wait(DEADLINE)
        with lock:
            running[0] -= 1

    for _ in range(executor.limit):
        executor.submit(task)
    assert executor.room == 0 and executor.busy
    release.set()
    executor.wait_for_room()  # returns once one has finished
    assert executor.room >= 1
    for _ in range(20):
        executor.submit(task)
        executor.wait_for_room()
    executor.wait()
    executor.close()
    assert most[0] <= executor.workers
    assert executor.room == executor.limit


def test_a_task_error_is_raised_by_wait() -> None:
    executor = BoundedExecutor(1)

    def broken() -> None:
        raise ValueError("a defect")

    executor.submit(broken)
    with pytest.raises(ValueError, match="a defect"):
        executor.wait()
    executor.close()


def test_on_done_is_called_for_every_task() -> None:
    finished = threading.Semaphore(0)
    executor = BoundedExecutor(1, on_done=finished.release)
    for _ in range(5):
        executor.submit(lambda: None)
    assert all(finished.acquire(timeout=DEADLINE) for _ in range(5))
    executor.wait()
    executor.close()


def test_stop_waits_for_tasks_that_end() -> None:
    started = threading.Semaphore(0)
    release = threading.Event()
    ran: list[str] = []
    abandoned: list[int] = []
    executor = BoundedExecutor(1)  # 3 workers

    def writing() -> None:
        started.release()
        release.wait(DEADLINE)
        ran.append("written")

    for _ in range(3):
        executor.submit(writing)
    assert all(started.acquire(timeout=DEADLINE) for _ in range(3))
    release.set()
    assert executor.stop(grace=DEADLINE, abandon=abandoned.append) == 0
    assert abandoned == []
    assert ran == ["written"] * 3


def test_stop_abandons_tasks_that_do_not_end_and_starts_nothing_more() -> None:
    started = threading.Semaphore(0)
    never = threading.Event()
    ran: list[str] = []
    abandoned: list[int] = []
    executor = BoundedExecutor(1)  # 3 workers

    def blocked() -> None:
        started.release()
        never.wait(DEADLINE)

    for _ in range(3):
        executor.submit(blocked)
    assert all(started.acquire(timeout=DEADLINE) for _ in range(3))
    executor.submit(lambda: ran.append("queued"))  # no free worker: not started yet
    assert executor.stop(grace=0.1, abandon=abandoned.append) == 3
    assert abandoned == [3]
    never.set()
    executor.close()  # the workers end; the task cancelled before it started never runs
    assert ran == []


def test_stop_without_tasks_abandons_nothing() -> None:
    executor = BoundedExecutor(2)
    abandoned: list[int] = []
    assert executor.stop(grace=0.0, abandon=abandoned.append) == 0
    assert abandoned == []


def test_start_thread_runs_a_named_daemon_thread() -> None:
    ran = threading.Event()
    thread = start_thread(ran.set, "captiond-test")
    assert ran.wait(DEADLINE)
    thread.join(DEADLINE)
    assert thread.daemon and thread.name == "captiond-test"
