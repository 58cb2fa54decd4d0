"""The running daemon's account of itself: liveness (systemd's watchdog, /healthz), the status line and
page, and runtime.json for `captiond status`."""

from __future__ import annotations

import collections
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .config import Config
from .degradation import FIX
from .health import HealthServer, Metrics, SystemdNotifier
from .library import shown
from .model import ModelClient
from .producers import Producers
from .state import RowState, StateStore
from .statuspage import Caption, PageData, render
from .supervisor import ModelSupervisor

log = logging.getLogger(__name__)

RUNTIME_FILE = "runtime.json"  # what the running daemon knows, for `captiond status`
RECENT_CAPTIONS = 12  # on the status page
STALL_AFTER = 600.0  # the least time without a finished file, while files are due, before the daemon counts as stuck


class DaemonStatus:
    """Says whether the daemon is alive and healthy, and what it is doing, to systemd, /healthz and the page."""

    def __init__(self, config: Config, state: StateStore, clients: list[ModelClient], metrics: Metrics,
                 notifier: SystemdNotifier, model: ModelSupervisor, producers: Producers,
                 paused: Callable[[], str], stall_after: float | None = None) -> None:
        assert config.daemon.originals is not None
        self.config = config
        self.originals = config.daemon.originals
        self.state = state
        self.clients = clients
        self.metrics = metrics
        self.notifier = notifier
        self.model = model
        self.monitor = model.monitor
        self.producers = producers
        self.paused = paused  # quiet hours, or Daemon.OnDegraded running
        self._runtime_written, self._runtime_at = "", 0.0
        self._lock = threading.Lock()  # the progress workers report, read by the consumer and the health thread
        self._captions: collections.deque[Caption] = collections.deque(maxlen=RECENT_CAPTIONS)
        self._finished: collections.deque[float] = collections.deque(maxlen=200)  # monotonic times, for the ETA
        # Liveness (what the systemd watchdog and /healthz report): the loops turn, the observer and the
        # producer threads live, and when files are due the queue moves. One file may take a whole request
        # deadline plus its retries, so "stuck" means no file finished for well over that.
        self.stall_after = stall_after if stall_after is not None else max(
            STALL_AFTER, 2 * (config.daemon.timeout + config.daemon.retry.total))
        self._last_progress = time.monotonic()
        self._last_notify = 0.0
        self._not_alive_reason = ""

    def healthy(self) -> tuple[bool, str]:
        """Return whether the daemon works (alive, model reachable) and why not."""
        reason = self.liveness()
        if reason:
            return False, reason
        if self.model.error:
            return False, f"model server: {self.model.error}"
        degraded = self.monitor.degraded()
        if degraded:
            reasons = "; ".join(f"{endpoint}: {reason}" for endpoint, reason in degraded.items())
            return False, f"degraded: {reasons}. Fix: {FIX}"
        return True, self._status_line()

    def heartbeat(self) -> None:
        """Once a second at most: update the queue gauge and, under systemd, pet the watchdog while alive."""
        now = time.monotonic()
        if now - self._last_notify < min(1.0, self.notifier.watchdog_interval or 1.0):
            return
        self._last_notify = now
        counts = self.state.counts()
        self.metrics.queue.set(counts[RowState.PENDING] + counts[RowState.RUNNING])
        self._write_runtime()
        if self.notifier.watchdog_interval is None and not self.notifier.address:
            return
        reason = self.liveness(counts)
        if reason:
            if not self._not_alive_reason:
                log.error("not alive: %s; %s", reason, "systemd's watchdog will restart the daemon"
                          if self.notifier.watchdog_interval else "stopped telling systemd so")
            self._not_alive_reason = reason
            return
        self._not_alive_reason = ""
        status = (f"waiting for the model server: {self.model.error}" if self.model.error
                  else self._status_line(counts))
        self.notifier.send(f"WATCHDOG=1\nSTATUS={status}" if self.notifier.watchdog_interval else f"STATUS={status}")

    def liveness(self, counts: dict[RowState, int] | None = None) -> str:
        """Return why the daemon is not alive, or "" when it is.

        Alive: the filesystem observer and the producer threads live, the event loop turns, and when any
        file is due (or being processed) some file finished within `stall_after`. A file waiting in a
        long retry backoff is not due: a daemon with nothing due is idle, not stuck. While the model
        server is away the consumer probes it instead (the probe loop turns), which is alive too.
        """
        now = time.monotonic()
        problem = self.producers.problem(self.stall_after)
        if problem:
            return problem
        if self.model.error or self.paused():
            self._restart_stall_clock(now)  # paused, not stuck: the stall clock starts again when it resumes
            return ""
        counts = counts or self.state.counts()
        next_due = self.state.next_due()
        busy = counts[RowState.RUNNING] > 0 or (next_due is not None and next_due <= time.time())
        if not busy:
            self._restart_stall_clock(now)  # the stall clock starts when work becomes due
            return ""
        with self._lock:
            still = now - self._last_progress
        if still > self.stall_after:
            return f"files are due but none has moved for {still:.0f}s"
        return ""

    def _restart_stall_clock(self, now: float) -> None:
        with self._lock:
            self._last_progress = max(self._last_progress, now)

    def moved(self) -> None:
        """A file moved on (taken up or finished): the stall clock starts again."""
        self._restart_stall_clock(time.monotonic())

    def captioned(self, path: Path, caption: str, source: str) -> None:
        """Count a captioned file for the ETA, and show its caption (if any) on the page."""
        shown = Caption(path, self.relative(path), caption, source, time.time())
        with self._lock:
            self._finished.append(time.monotonic())
            if caption:
                self._captions.appendleft(shown)

    def status_page(self) -> bytes:
        """Return the HTML status page (counts, ETA, endpoints, quiet hours, latest captions and failures)."""
        counts = self.state.counts()
        queued = counts[RowState.PENDING] + counts[RowState.RUNNING]
        speeds = {str(item["endpoint"]): item for item in self.monitor.figures()}
        pools = {id(client.pool): client for client in self.clients}.values()
        endpoints = [{**figures, **speeds.get(str(figures["endpoint"]), {})}
                     for client in pools for figures in client.figures()]
        failures = [(self.relative(row.path), row.state, row.last_error) for row in self.state.recent_failures(10)]
        schedule = self.config.daemon.schedule
        with self._lock:
            captions = list(self._captions)
        return render(PageData(counts, queued, self._eta(queued), self.paused(), self.model.error, endpoints,
                               captions, failures, time.time(), schedule.text if schedule else "",
                               self.monitor.degraded()))

    def start_health_server(self) -> HealthServer | None:
        """Serve /healthz, /metrics and the page on Daemon.Listen (None when it is not set)."""
        if not self.config.daemon.listen:
            return None
        server = HealthServer(self.config.daemon.listen, self.metrics, self.healthy, self.status_page)
        server.start()
        log.info("serving /healthz and /metrics on http://%s (status page at /)", server.address)
        return server

    def relative(self, path: Path) -> str:
        """Return a photo's path relative to the originals, printable, for log lines and the page."""
        return shown(path, self.originals)

    def _eta(self, queued: int) -> float | None:
        """Return seconds until the queue is done at the pace of the latest captions (None: not known yet)."""
        with self._lock:
            finished = list(self._finished)
        if len(finished) < 2 or finished[-1] <= finished[0]:
            return None
        per_second = (len(finished) - 1) / (finished[-1] - finished[0])
        return queued / per_second

    def _write_runtime(self) -> None:
        """Write what only the running daemon knows (pause, degradation, speeds) for `captiond status`."""
        document = {"pid": os.getpid(), "paused": self.paused(), "model_error": self.model.error,
                    "degraded": self.monitor.degraded(), "endpoints": self.monitor.figures()}
        text = json.dumps(document, sort_keys=True)
        if text == self._runtime_written and time.monotonic() - self._runtime_at < 30:
            return
        path = self.config.daemon.state_dir / RUNTIME_FILE
        try:
            temporary = path.with_name(f".{RUNTIME_FILE}.tmp")
            temporary.write_text(json.dumps({**document, "updated": time.time()}))
            os.replace(temporary, path)
            self._runtime_written, self._runtime_at = text, time.monotonic()
        except OSError as exc:
            log.debug("cannot write %s: %s", path, exc)

    def _status_line(self, counts: dict[RowState, int] | None = None) -> str:
        counts = counts or self.state.counts()
        paused = f"{self.paused()}; " if self.paused() else ""
        return (f"{paused}{counts[RowState.DONE]} done, {counts[RowState.PENDING] + counts[RowState.RUNNING]} queued, "
                f"{counts[RowState.FAILED]} failed, "
                f"{counts[RowState.QUARANTINED]} quarantined")
