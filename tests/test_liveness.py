"""The daemon's liveness, as systemd's watchdog sees it: a real daemon in-process, a real notify socket, the emulator.

The watchdog must measure liveness (the loops turn, the observer lives, the queue moves when anything is due),
never "a row has waited long": a healthy daemon with a file in a long retry backoff keeps pinging.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from captiond.config import load_config
from captiond.exiftool_process import Exiftool
from captiond.health import SystemdNotifier
from captiond.modelruns import clients as _clients
from captiond.modelruns import model_runs
from captiond.pipeline import Captioner, RunOptions
from captiond.service import WatchService
from captiond.state import RowState, StateStore
from conftest import add_fixture, stored_row, write_config
from emulator import BUSY, Hang, OllamaEmulator
from test_watch import Daemon, wait_for

STALL_AFTER = 0.5
Starter = Callable[[Path, Path], "Running"]


@dataclass
class Running:
    """A WatchService running in a thread, and the notifications it sent to a real unix datagram socket."""

    service: WatchService
    state: StateStore
    listener: socket.socket
    messages: list[tuple[float, str]]

    def receive(self, until: float) -> None:
        """Collect notifications until the monotonic time `until`."""
        while time.monotonic() < until:
            self.listener.settimeout(max(0.01, min(0.2, until - time.monotonic())))
            with contextlib.suppress(TimeoutError):
                self.messages.append((time.monotonic(), self.listener.recv(4096).decode()))

    def receive_until(self, condition: str, timeout: float = 30.0) -> bool:
        """Collect notifications until one contains `condition`; return whether one did."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            start = len(self.messages)
            self.receive(time.monotonic() + 0.2)
            if any(condition in message for _, message in self.messages[start:]):
                return True
        return False

    def pings_after(self, moment: float) -> int:
        return sum(1 for at, message in self.messages if at > moment and message.startswith("WATCHDOG=1"))


@pytest.fixture
def run_service(tmp_path: Path) -> Iterator[Starter]:
    started: list[tuple[WatchService, threading.Thread, Exiftool, StateStore, socket.socket]] = []

    def start(config_path: Path, originals: Path) -> Running:
        address = tmp_path / "notify.sock"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        listener.bind(str(address))
        config = load_config(config_path).with_daemon(originals=originals)
        runs = model_runs(config, "caption")
        state = StateStore(config.daemon.state_dir)
        exiftool = Exiftool().__enter__()
        notifier = SystemdNotifier({"NOTIFY_SOCKET": str(address), "WATCHDOG_USEC": "400000"})
        service = WatchService(config, Captioner(config, runs, exiftool, RunOptions()), _clients(runs), state,
                               notifier=notifier, stall_after=STALL_AFTER)
        thread = threading.Thread(target=service.run, name="test-daemon", daemon=True)
        thread.start()
        started.append((service, thread, exiftool, state, listener))
        return Running(service, state, listener, [])

    yield start
    for service, thread, exiftool, state, listener in started:
        service.request_stop()
        thread.join(timeout=30)
        exiftool.__exit__(None, None, None)
        for client in service.clients:
            client.close()
        state.close()
        listener.close()


def test_a_file_in_a_long_retry_backoff_does_not_stop_the_watchdog(tmp_path: Path, originals: Path,
                                                                    emulator: OllamaEmulator,
                                                                    run_service: Starter) -> None:
    """Retry.MaxDelay 15m: the busy file waits about 15 minutes; the daemon is idle, not stuck, and keeps pinging."""
    photo = add_fixture(originals, "Canon_PowerShot_S40.jpg")
    emulator.default_behaviour = BUSY
    config = write_config(tmp_path, emulator.url, daemon={
        "Settle": 0.2, "Retry": {"Attempts": 2, "Delay": 0.05, "MaxDelay": "15m", "Total": 20}})
    running = run_service(config, originals)

    def waiting() -> bool:
        row = stored_row(running.state, photo)
        return (row is not None and row.state == RowState.PENDING and row.attempts == 1
                and row.next_try > time.time() + 600)

    deadline = time.monotonic() + 60
    while not waiting() and time.monotonic() < deadline:
        running.receive(time.monotonic() + 0.2)
    assert waiting(), stored_row(running.state, photo)
    backoff_began = time.monotonic()
    # Many times the stall interval later the daemon still pings, and says it is alive.
    assert running.receive_until("WATCHDOG=1", timeout=30)
    running.receive(backoff_began + 8 * STALL_AFTER)
    assert running.receive_until("WATCHDOG=1", timeout=30)
    assert running.pings_after(backoff_began + 6 * STALL_AFTER) >= 1
    assert running.service.liveness() == ""
    assert running.service.healthy()[0]


def test_a_stuck_queue_stops_the_watchdog_and_an_abandoned_request_costs_no_attempt(
        tmp_path: Path, originals: Path, emulator: OllamaEmulator, run_service: Starter) -> None:
    """A request that never ends (within a long Timeout) while the file is due: no file moves, so no more pings."""
    photo = add_fixture(originals, "Canon_PowerShot_S40.jpg")
    emulator.enqueue(Hang(None))
    config = write_config(tmp_path, emulator.url, daemon={"Settle": 0.2, "Timeout": 600})
    running = run_service(config, originals)
    deadline = time.monotonic() + 30
    while not emulator.generation_requests() and time.monotonic() < deadline:
        running.receive(time.monotonic() + 0.2)
    assert emulator.generation_requests()
    deadline = time.monotonic() + 30
    while "none has moved" not in running.service.liveness() and time.monotonic() < deadline:
        running.receive(time.monotonic() + 0.2)
    assert "none has moved" in running.service.liveness()
    assert not running.service.healthy()[0]
    stuck_from = time.monotonic()
    running.receive(stuck_from + 4 * STALL_AFTER)
    assert running.pings_after(stuck_from) == 0

    # SIGTERM's path: the hanging request is abandoned; the photo stays queued with no attempt and no reason.
    running.service.request_stop()
    deadline = time.monotonic() + 30
    row = stored_row(running.state, photo)
    while (row is None or row.state != RowState.PENDING) and time.monotonic() < deadline:
        time.sleep(0.05)
        row = stored_row(running.state, photo)
    assert row is not None and row.state == RowState.PENDING
    assert row.attempts == 0 and row.last_error == ""


@pytest.mark.subprocess
def test_sigterm_leaves_a_request_the_server_never_answers_queued_without_an_attempt(
        tmp_path: Path, originals: Path, emulator: OllamaEmulator) -> None:
    """`systemctl stop` / `docker stop` while the model sends nothing: exit 0 well within TimeoutStopSec."""
    photo = add_fixture(originals, "Canon_PowerShot_S40.jpg")
    emulator.enqueue(Hang(None))
    config = write_config(tmp_path, emulator.url, daemon={"Settle": 0.2, "Timeout": 600})
    daemon = Daemon(config, originals, tmp_path / "daemon.log")
    try:
        assert wait_for(lambda: bool(emulator.generation_requests()), timeout=30), daemon.log()
        assert daemon.stop(timeout=25) == 0, daemon.log()
    finally:
        if daemon.process.poll() is None:
            daemon.kill()
    state = StateStore(tmp_path / "state", readonly=True)
    try:
        row = stored_row(state, photo)
    finally:
        state.close()
    assert row is not None and (row.state, row.attempts, row.last_error) == (RowState.PENDING, 0, ""), daemon.log()
    assert "Bad file descriptor" not in daemon.log()
