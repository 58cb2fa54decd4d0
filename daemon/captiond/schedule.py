"""Quiet hours: `Daemon.Schedule` windows in local time during which captiond may send requests.

A window is `HH:MM-HH:MM`, optionally after days of the week: `22:00-07:00`, `Sat,Sun 09:00-18:00`,
`Mon-Fri 22:00-07:00`. A window whose end is not after its start runs over midnight; its days are the
days it starts on. Outside every window, no new request is sent (requests under way finish).
"""

from __future__ import annotations

import datetime
import logging
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
ALL_DAYS = frozenset(range(7))
_WINDOW = re.compile(r"^\s*(?:(?P<days>[A-Za-z][A-Za-z,\s-]*?)\s+)?"
                     r"(?P<start>\d{1,2}:\d{2})\s*-\s*(?P<end>\d{1,2}:\d{2})\s*$")

log = logging.getLogger(__name__)
Clock = Callable[[], datetime.datetime]


def local_now() -> datetime.datetime:
    """Return the local wall-clock time (naive), the clock quiet hours are written in."""
    return datetime.datetime.now()


@dataclass(frozen=True)
class Window:
    """One window: minutes after midnight where it starts and ends (end <= start: over midnight), on some days."""

    start: int
    end: int
    days: frozenset[int] = ALL_DAYS

    def opened_on(self, day: datetime.date) -> tuple[datetime.datetime, datetime.datetime] | None:
        """Return the window's start and end when it opens on `day`, or None if it does not open that day."""
        if day.weekday() not in self.days:
            return None
        midnight = datetime.datetime.combine(day, datetime.time())
        start = midnight + datetime.timedelta(minutes=self.start)
        end = midnight + datetime.timedelta(minutes=self.end + (0 if self.end > self.start else 24 * 60))
        return start, end


@dataclass(frozen=True)
class Schedule:
    """Several windows; requests are allowed while any of them is open."""

    windows: tuple[Window, ...]
    text: str

    def is_open(self, now: datetime.datetime) -> bool:
        """Return whether requests may be sent at local time `now`."""
        return any(start <= now < end for start, end in self._occurrences(now, days_back=1, days_ahead=0))

    def next_open(self, now: datetime.datetime) -> datetime.datetime | None:
        """Return when the next window opens after `now` (None: never, i.e. no day matches)."""
        starts = [start for start, _ in self._occurrences(now, days_back=0, days_ahead=8) if start > now]
        return min(starts, default=None)

    def paused_until(self, now: datetime.datetime) -> str:
        """Return "" while open, else a short text such as "paused until 22:00" (quiet hours)."""
        if self.is_open(now):
            return ""
        opens = self.next_open(now)
        if opens is None:
            return "paused: Daemon.Schedule never opens"
        shown = opens.strftime("%H:%M") if opens - now < datetime.timedelta(hours=24) else opens.strftime("%a %H:%M")
        return f"paused until {shown}"

    def _occurrences(self, now: datetime.datetime, days_back: int,
                     days_ahead: int) -> list[tuple[datetime.datetime, datetime.datetime]]:
        found = []
        for offset in range(-days_back, days_ahead + 1):
            day = now.date() + datetime.timedelta(days=offset)
            for window in self.windows:
                occurrence = window.opened_on(day)
                if occurrence is not None:
                    found.append(occurrence)
        return found


def parse_schedule(texts: Sequence[str]) -> tuple[Schedule | None, list[str]]:
    """Return the schedule of Daemon.Schedule texts (None when empty) and the problems found, one per bad text."""
    windows: list[Window] = []
    problems: list[str] = []
    for text in texts:
        for part in (piece for piece in text.split(";") if piece.strip()):
            window = parse_window(part)
            if window is None:
                problems.append(f"expected windows such as 22:00-07:00 or Mon-Fri 18:00-23:30, got {part.strip()!r}")
            else:
                windows.append(window)
    if not windows or problems:
        return None, problems
    return Schedule(tuple(windows), "; ".join(text.strip() for text in texts)), problems


def parse_window(text: str) -> Window | None:
    """Return one window of `[DAYS ]HH:MM-HH:MM`, or None when the text is not one."""
    match = _WINDOW.match(text)
    if match is None:
        return None
    start, end = _minutes(match.group("start")), _minutes(match.group("end"))
    if start is None or end is None or start == end or start == 24 * 60:
        return None
    days = _days(match.group("days")) if match.group("days") else ALL_DAYS
    if days is None:
        return None
    return Window(start, end, days)


def _minutes(text: str) -> int | None:
    hours, minutes = (int(part) for part in text.split(":"))
    if minutes > 59 or hours > 24 or (hours == 24 and minutes):
        return None
    return hours * 60 + minutes


def _days(text: str) -> frozenset[int] | None:
    days: set[int] = set()
    for item in (piece.strip().lower() for piece in text.split(",")):
        first, _, last = (part.strip()[:3] for part in item.partition("-"))
        if first not in DAY_NAMES or (last and last not in DAY_NAMES):
            return None
        begin, finish = DAY_NAMES.index(first), DAY_NAMES.index(last or first)
        days.update(day % 7 for day in range(begin, begin + (finish - begin) % 7 + 1))
    return frozenset(days)


class QuietHours:
    """The schedule against a clock: says whether requests may be sent, logs each pause and resumption once."""

    def __init__(self, schedule: Schedule | None, clock: Clock = local_now) -> None:
        self.schedule = schedule
        self.clock = clock
        self._lock = threading.Lock()
        self._announced = ""

    def paused_until(self) -> str:
        """Return "" while requests may be sent, else e.g. "paused until 22:00" (logged when it changes)."""
        reason = self.schedule.paused_until(self.clock()) if self.schedule is not None else ""
        with self._lock:
            if reason and reason != self._announced:
                log.info("quiet hours (Daemon.Schedule %s): %s", self.schedule.text if self.schedule else "", reason)
            elif not reason and self._announced:
                log.info("quiet hours are over: sending requests again")
            self._announced = reason
        return reason

    def wait_open(self, stop: threading.Event, step: float = 1.0) -> bool:
        """Block while outside the windows (looking again every `step` seconds); return False when stopped."""
        while not stop.is_set() and self.paused_until():
            stop.wait(step)
        return not stop.is_set()
