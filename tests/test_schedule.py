"""Quiet hours (Daemon.Schedule): parsing, every minute of a week against a plain reference, and the daemon
and `run --respect-schedule` sending no request outside the windows (the daemon on an injected clock)."""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from captiond.config import load_config
from captiond.errors import ConfigError
from captiond.exiftool_process import Exiftool
from captiond.modelruns import model_runs
from captiond.pipeline import Captioner, RunOptions
from captiond.schedule import QuietHours, Schedule, parse_schedule
from captiond.service import WatchService
from captiond.state import StateStore
from conftest import SOURCE_ROOT, add_fixture, run_captiond, write_config
from emulator import OllamaEmulator
from test_watch import sidecar_caption, wait_for

MONDAY = datetime.datetime(2026, 12, 7)  # a Monday, local time
SCHEDULES = ["22:00-07:00", "Mon-Fri 22:00-07:00", "Sat,Sun 09:00-18:00", "00:00-24:00", "Fri-Mon 23:30-00:30",
             "12:00-13:00; sun 01:00-02:00", "Sunday 20:00-06:15"]


def reference_minutes(text: str) -> set[int]:
    """The minutes of the week (0 = Monday 00:00) at which the schedule is open, worked out independently."""
    names = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    open_minutes: set[int] = set()
    for part in text.split(";"):
        *days_text, times = part.split()
        start_text, end_text = times.split("-")
        start = int(start_text[:2]) * 60 + int(start_text[3:])
        end = int(end_text[:2]) * 60 + int(end_text[3:])
        days = set(range(7))
        if days_text:
            days = set()
            for item in days_text[0].split(","):
                first, _, last = item.partition("-")
                begin, finish = names.index(first.lower()[:3]), names.index((last or first).lower()[:3])
                day = begin
                days.add(day)
                while day != finish:
                    day = (day + 1) % 7
                    days.add(day)
        length = end - start if end > start else end + 1440 - start
        for day in days:
            open_minutes.update((day * 1440 + start + minute) % (7 * 1440) for minute in range(length))
    return open_minutes


@pytest.mark.parametrize("text", SCHEDULES)
def test_every_minute_of_a_week_matches_the_reference(text: str) -> None:
    schedule, problems = parse_schedule([text])
    assert schedule is not None and not problems
    expected = reference_minutes(text)
    for minute in range(7 * 1440):
        now = MONDAY + datetime.timedelta(minutes=minute, seconds=30)
        assert schedule.is_open(now) == (minute in expected), now
        if minute not in expected:
            opens = schedule.next_open(now)
            assert opens is not None
            opening = int((opens - MONDAY).total_seconds() // 60) % (7 * 1440)
            assert opening in expected and (opening - 1) % (7 * 1440) not in expected


def test_paused_until_names_the_next_opening() -> None:
    schedule, _ = parse_schedule(["22:00-07:00"])
    assert schedule is not None
    assert schedule.paused_until(MONDAY.replace(hour=12)) == "paused until 22:00"
    assert schedule.paused_until(MONDAY.replace(hour=23)) == ""
    weekend, _ = parse_schedule(["Sat,Sun 09:00-18:00"])
    assert weekend is not None
    assert weekend.paused_until(MONDAY.replace(hour=12)) == "paused until Sat 09:00"


@pytest.mark.parametrize("text", ["22:00", "25:00-01:00", "10:60-11:00", "07:00-07:00", "Mo 10:00-11:00",
                                  "24:00-01:00", "10:00-24:01", "daily 10:00-11:00", "10-11"])
def test_bad_windows_are_config_problems(tmp_path: Path, text: str) -> None:
    path = tmp_path / "vision.yml"
    path.write_text(f"Daemon:\n  Schedule: [\"22:00-07:00\", {text!r}]\n")
    with pytest.raises(ConfigError) as raised:
        load_config(path, {})
    assert "Daemon.Schedule" in str(raised.value)


class FakeClock:
    """Local time that moves only when a test says so."""

    def __init__(self, now: datetime.datetime) -> None:
        self.now = now

    def __call__(self) -> datetime.datetime:
        return self.now


@pytest.fixture
def exiftool() -> Iterator[Exiftool]:
    with Exiftool() as tool:
        yield tool


def test_watch_sends_nothing_outside_the_windows_and_resumes_inside(tmp_path: Path, originals: Path,
                                                                    emulator: OllamaEmulator,
                                                                    exiftool: Exiftool) -> None:
    photo = add_fixture(originals, "Canon_PowerShot_S40.jpg")
    config = load_config(write_config(tmp_path, emulator.url, daemon={
        "Originals": str(originals), "Settle": 0, "Schedule": "22:00-07:00"}), {})
    runs = model_runs(config, "caption")
    clients = [run.client for run in runs.values() if run.client is not None]
    state = StateStore(config.daemon.state_dir)
    clock = FakeClock(MONDAY.replace(hour=12))
    service = WatchService(config, Captioner(config, runs, exiftool, RunOptions()), clients, state,
                           quiet=QuietHours(config.daemon.schedule, clock))
    thread = threading.Thread(target=service.run)
    thread.start()
    try:
        assert wait_for(lambda: state.counts()["pending"] == 1 and "paused until 22:00" in service.healthy()[1])
        healthy, detail = service.healthy()
        assert healthy and detail.startswith("paused until 22:00; 0 done, 1 queued")
        assert not emulator.generation_requests()
        clock.now = MONDAY.replace(hour=22, minute=1)
        assert wait_for(lambda: bool(sidecar_caption(photo)))
        assert service.healthy()[1].startswith("1 done")
    finally:
        service.request_stop()
        thread.join(30)
        for client in clients:
            client.close()
        state.close()
    assert len(emulator.generation_requests()) == 1


def closed_window() -> str:
    """A window that opens six hours from now (local time) and lasts one hour."""
    start = datetime.datetime.now() + datetime.timedelta(hours=6)
    return f"{start:%H:%M}-{start + datetime.timedelta(hours=1):%H:%M}"


@pytest.mark.subprocess
def test_run_waits_for_the_window_only_with_respect_schedule(tmp_path: Path, originals: Path,
                                                             emulator: OllamaEmulator) -> None:
    photo = add_fixture(originals, "Canon_PowerShot_S40.jpg")
    config = write_config(tmp_path, emulator.url, daemon={"Schedule": closed_window()})
    log = tmp_path / "run.log"
    environment = {**os.environ, "PYTHONPATH": str(SOURCE_ROOT)}
    with log.open("wb") as output:
        process = subprocess.Popen([sys.executable, "-m", "captiond", "run", "--config", str(config), "--originals",
                                    str(originals), "--respect-schedule"], stdout=output, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env=environment)
    try:
        assert wait_for(lambda: "paused until" in log.read_text()), log.read_text()
        assert not emulator.generation_requests()
        process.send_signal(signal.SIGTERM)  # SIGINT: a shell's background job (CI) ignores it
        assert process.wait(30) == 143
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert not emulator.generation_requests() and not Path(f"{photo}.xmp").exists()
    status = run_captiond("run", "--config", config, "--originals", originals)
    assert status.exit_code == 0 and sidecar_caption(photo)


@pytest.mark.subprocess
def test_status_says_until_when_it_is_paused(tmp_path: Path, originals: Path, emulator: OllamaEmulator) -> None:
    config = write_config(tmp_path, emulator.url, daemon={"Schedule": closed_window()})
    StateStore(tmp_path / "state").close()
    result = run_captiond("status", "--config", config)
    assert result.exit_code == 0, result.stderr
    assert "quiet hours: paused until " in result.stdout


def test_schedule_is_immutable_data() -> None:
    schedule, _ = parse_schedule(["22:00-07:00"])
    assert isinstance(schedule, Schedule) and hash(schedule)
