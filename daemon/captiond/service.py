"""`captiond watch`: two producers (rescans and the watcher) feed the state queue; one consumer captions.

    rescan (at start, every Daemon.Rescan, after an overflow) ──┐
                                                                ├─▶ StateStore (SQLite) ─▶ consumer ─▶ Captioner.process
    watcher events (created, closed, moved in, folders) ────────┘

A file is processed once its size and mtime have stayed the same for Daemon.Settle. Transient
failures go back to the queue with growing delays, forever; while the model server is down the
consumer pauses and probes it, without charging any file an attempt.
"""

from __future__ import annotations

import functools
import logging
import threading
import time

from .apps import AppNotifier
from .config import Config
from .errors import ModelSetupError
from .executor import BoundedExecutor
from .health import Metrics, SystemdNotifier
from .ignore import IgnoreRules
from .model import ModelClient
from .pipeline import Captioner, Outcome, Status, describe_outcome
from .producers import Producers, one_line
from .schedule import QuietHours
from .state import FileState, Requeue, RowState, Stat, StateStore, requeue_backoff, transition
from .status import RUNTIME_FILE as RUNTIME_FILE  # `captiond status` reads it
from .status import DaemonStatus
from .supervisor import ModelSupervisor

log = logging.getLogger(__name__)

KEEP_LOADED = "1h"  # auto keep_alive while more photos wait (refreshed by every request)
RELEASE_AFTER = "1m"  # auto keep_alive of the last request before the queue is empty


def keep_alive_for(setting: str | float, work_waiting: bool) -> str | float:
    """Return the keep_alive to send: the configured value, or with auto, by whether more work waits."""
    if setting != "auto":
        return setting
    return KEEP_LOADED if work_waiting else RELEASE_AFTER


class WatchService:
    """Runs the daemon until `stop` is set."""

    def __init__(self, config: Config, captioner: Captioner, clients: list[ModelClient], state: StateStore,
                 metrics: Metrics | None = None, notifier: SystemdNotifier | None = None,
                 stall_after: float | None = None, quiet: QuietHours | None = None) -> None:
        assert config.daemon.originals is not None
        self.config = config
        self.originals = config.daemon.originals
        self.ignore = IgnoreRules(self.originals, config.daemon.exclude)
        self.captioner = captioner
        self.clients = clients
        self.state = state
        self.metrics = metrics or Metrics()  # the clients were made with them (model_runs): answers' latency
        self.notifier = notifier or SystemdNotifier()
        self.quiet = quiet or QuietHours(config.daemon.schedule)
        self._paused = ""
        self.stop = threading.Event()
        self._wake = threading.Event()
        self.model = ModelSupervisor(config, clients, self.metrics, self.stop, self._wake,
                                     heartbeat=lambda: self.status.heartbeat())
        self.monitor = self.model.monitor
        for client in clients:
            client.keep_alive = self._keep_alive
            client.on_figures = self.model.on_figures
        self.apps = AppNotifier(config.daemon, self.originals, self.metrics.registry)
        self.settle = config.daemon.settle
        self.requeue = requeue_backoff(config.daemon.retry.max_delay)  # a file's tries go on forever, slower
        self.producers = Producers(config.daemon, self.ignore, state, self.stop, self._wake)
        self.status = DaemonStatus(config, state, clients, self.metrics, self.notifier, self.model, self.producers,
                                   lambda: self.paused, stall_after)
        self.abandoned = 0  # requests still blocked when the daemon stopped

    # -- the whole daemon --------------------------------------------------------------------

    def run(self) -> None:
        """Watch, rescan and caption until stop is set; return after in-flight work is finished."""
        recovered = self.state.recover()
        if recovered:
            log.info("%d files were being processed when the daemon stopped; they are queued again", recovered)
        health = self.status.start_health_server()
        self.producers.start()
        if not self.model.error:
            self.metrics.model_up.set(1)
        self.apps.start()
        self.notifier.send("READY=1\nSTATUS=starting: first scan of the originals")
        log.info("watching %s (%s); settle %.1fs, rescan every %.0fs", self.originals, self.producers.watcher_kind(),
                 self.settle, self.config.daemon.rescan)
        try:
            self._consume()
        finally:
            self.notifier.send("STOPPING=1")
            self.producers.join()
            if health is not None:
                health.stop()
            self.model.shutdown()
            self.apps.stop()
            self.state.recover()

    def request_stop(self) -> None:
        """Ask the daemon to finish the writes under way and return (SIGTERM, SIGINT)."""
        self.stop.set()
        self._wake.set()
        self.producers.interrupt()

    def request_rescan(self) -> None:
        """Ask for a full rescan soon (after an inotify overflow)."""
        self.producers.request_rescan()

    def model_unavailable(self, error: ModelSetupError) -> None:
        """Pause the consumer until the model server answers again (probed with growing delays)."""
        self.model.unavailable(error)

    @property
    def paused(self) -> str:
        """Return why no request is sent now ("" while they are): quiet hours, or Daemon.OnDegraded running."""
        return self._paused or self.model.paused

    def healthy(self) -> tuple[bool, str]:
        """Return whether the daemon works (alive, model reachable) and why not."""
        return self.status.healthy()

    def liveness(self) -> str:
        """Return why the daemon is not alive, or "" when it is (see DaemonStatus.liveness)."""
        return self.status.liveness()

    # -- the consumer ------------------------------------------------------------------------

    def _consume(self) -> None:
        executor = BoundedExecutor(self.captioner.capacity, on_done=self._wake.set)
        try:
            while not self.stop.is_set():
                self.status.heartbeat()
                self._paused = self.quiet.paused_until()  # quiet hours: no request at all, not even a probe
                if not self._paused:
                    if self.model.error and not self.model.probe():
                        continue
                    if self.model.self_test_passes():  # else: wait for the test (or a probe) below
                        self.model.watch_degradation()
                        self._claim(executor)
                self._wake.wait(self._idle_wait(executor))
                self._wake.clear()
        finally:
            # Writes under way finish; requests still waiting for the model are abandoned after 5 s and their
            # rows queued again; files claimed but not started are not started. A request blocked on a server
            # that sends nothing does not end when its connection is closed: it is left behind (`abandoned`).
            self.abandoned = executor.stop(grace=5.0, abandon=self._abandon)

    def _claim(self, executor: BoundedExecutor) -> None:
        room = executor.room
        for row in self.state.claim(room) if room > 0 else []:
            executor.submit(functools.partial(self._handle, row))

    def _idle_wait(self, executor: BoundedExecutor) -> float:
        if self.paused or self.model.testing:
            return 1.0  # quiet hours: look at the clock again in a second; a finished self-test wakes the loop
        if executor.busy:
            return 0.5  # a finishing file wakes the loop
        next_due = self.state.next_due()
        if next_due is None:
            return 1.0
        return min(1.0, max(0.02, next_due - time.time()))

    def _abandon(self, waiting: int) -> None:
        """Close the model clients under requests that did not end within the grace time (they stay queued)."""
        log.info("stopping: abandoning %d requests to the model (they stay queued)", waiting)
        for client in self.clients:
            client.close()

    def _handle(self, row: FileState) -> None:
        """Process one claimed row; nothing a file or an answer does escapes (the daemon must not exit)."""
        try:
            self._process_row(row)
        except Exception as error:  # noqa: BLE001
            reason = f"unexpected error: {one_line(error)}"
            log.error("%s: %s; will try again later", self.status.relative(row.path), reason)
            try:
                self._record(row, Outcome(row.path, Status.FAILED, reason, transient=True, unexpected=True),
                             Stat.of(row.path) or Stat(row.size, row.mtime_ns))
            except Exception as second:  # noqa: BLE001 - the row stays running: recovered at the next start
                log.error("%s: cannot record the failure either: %s", self.status.relative(row.path), one_line(second))

    def _process_row(self, row: FileState) -> None:
        path = row.path
        self.status.moved()
        stat = None if self.ignore.ignored(path) else Stat.of(path)  # .ppignore may have changed since queued
        if stat is None:
            self.state.forget([path])
            return
        age = time.time() - stat.mtime_ns / 1e9
        if (stat.size, stat.mtime_ns) != (row.size, row.mtime_ns) or 0 <= age < self.settle:
            self.state.postpone(path, stat, self.settle)  # still being written
            self._wake.set()
            return
        try:
            outcome = self.captioner.process(path, photo_changed=row.changed)
        except ModelSetupError as error:
            if self.stop.is_set():
                return  # abandoned at shutdown: the row stays running, and run() queues it again as it was
            self.state.retry_later(path, str(error), delay=0, count_attempt=False)
            self.model.unavailable(error)
            return
        if self.stop.is_set() and outcome.failed and outcome.transient:
            # The request was abandoned at shutdown (its connection closed under it): that costs no attempt
            # and leaves the reason it had; run() puts the row back in the queue unchanged.
            log.debug("abandoned %s at shutdown: %s", self.status.relative(path), outcome.reason)
            return
        self._record(row, outcome, stat)

    def _record(self, row: FileState, outcome: Outcome, stat: Stat) -> None:
        self.status.moved()
        self.model.answered()
        self.metrics.files.labels(outcome.status).inc()
        if not outcome.failed or not outcome.transient:
            self.metrics.model_up.set(1)
        name = self.status.relative(row.path)
        if outcome.written:
            self.apps.written(row.path, outcome.created_sidecar)
        step = transition(row, outcome, self.requeue)
        if isinstance(step, Requeue):
            self.state.retry_later(row.path, step.reason, step.delay, crashed=step.crashed)
            self.metrics.retries.inc()
            log.warning("will retry %s in %.0fs: %s", name, step.delay, step.reason)
            return
        final_stat = Stat.of(row.path) if step.state == RowState.DONE and outcome.wrote_original else stat
        self.state.finish(row.path, step.state, final_stat, step.reason, crashed=step.crashed)
        if step.state == RowState.QUARANTINED:
            log.error("quarantined %s: %s", name, f"it crashed the model server twice ({outcome.reason})"
                      if step.crashed else outcome.reason)
        elif step.state != RowState.DONE:
            log.error("failed %s: %s", name, outcome.reason)
        elif outcome.status == Status.CAPTIONED:
            log.info("%s", describe_outcome(name, outcome))
            self.status.captioned(row.path, outcome.caption, self.captioner.source("caption"))

    def _keep_alive(self) -> str | float:
        """Ollama's keep_alive for the next request: loaded while other files wait, released soon after (auto)."""
        if self.config.daemon.keep_alive != "auto":
            return self.config.daemon.keep_alive
        counts = self.state.counts()
        return keep_alive_for("auto", counts[RowState.PENDING] + counts[RowState.RUNNING] > 1)
