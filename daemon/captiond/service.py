"""`captiond watch`: two producers (rescans and the watcher) feed the state queue; one consumer captions.

    rescan (at start, every Daemon.Rescan, after an overflow) ──┐
                                                                ├─▶ StateStore (SQLite) ─▶ consumer ─▶ Captioner.process
    watcher events (created, closed, moved in, folders) ────────┘

A file is processed once its size and mtime have stayed the same for Daemon.Settle. Transient
failures go back to the queue with growing delays, forever; while the model server is down the
consumer pauses and probes it, without charging any file an attempt.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import logging
import os
import random
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .apps import AppNotifier
from .config import Config, WatcherKind
from .degradation import FIX, LOAD_SECONDS, Cadence, DegradationMonitor
from .errors import ModelSetupError, ServerUnreachable
from .health import HealthServer, Metrics, SystemdNotifier
from .ignore import IgnoreRules
from .library import containment_problem, printable, scan_entries
from .model import Answer, ModelClient
from .pipeline import Captioner, Outcome, Status, describe_outcome
from .sandbox import blocked_address_hint
from .schedule import QuietHours
from .selftest import check_sight
from .state import FileState, RowState, Stat, StateStore
from .statuspage import Caption, PageData, render
from .watcher import OverflowListener, inotify_watch_limit, start_observer

log = logging.getLogger(__name__)

BATCH = 500
KEEP_LOADED = "1h"  # auto keep_alive while more photos wait (refreshed by every request)
RELEASE_AFTER = "1m"  # auto keep_alive of the last request before the queue is empty
PS_INTERVAL = 60.0  # /api/ps is asked at most once a minute per endpoint
RUNTIME_FILE = "runtime.json"  # what the running daemon knows, for `captiond status`
RECENT_CAPTIONS = 12  # on the status page
RETEST_AFTER_LOAD = 600.0  # a model load triggers the self-test at most this often
COMMAND_TIMEOUT = 600.0  # Daemon.OnDegraded is killed after this long
SERVER_BACK_TIMEOUT = 600.0  # how long to wait for the server after Daemon.OnDegraded


def keep_alive_for(setting: str | float, work_waiting: bool) -> str | float:
    """Return the keep_alive to send: the configured value, or with auto, by whether more work waits."""
    if setting != "auto":
        return setting
    return KEEP_LOADED if work_waiting else RELEASE_AFTER
CRASHES_BEFORE_QUARANTINE = 2
UNEXPECTED_BEFORE_QUARANTINE = 3  # attempts that end in an error no check foresaw (a defect of ours)
MAX_REQUEUE_DELAY = 3600.0
PROBE_DELAYS = (2.0, 4.0, 8.0, 15.0, 30.0, 60.0)
STALL_AFTER = 600.0  # the least time without a finished file, while files are due, before the daemon counts as stuck


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
        self.metrics = metrics or Metrics()
        for client in clients:
            client.on_answer = self.metrics.observe_answer
        self.notifier = notifier or SystemdNotifier()
        self.quiet = quiet or QuietHours(config.daemon.schedule)
        self._paused = ""
        self._next_self_test = 0.0  # monotonic time; due at start
        self._self_test: concurrent.futures.Future[bool] | None = None
        self._tester = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="captiond-selftest")
        self.monitor = DegradationMonitor(config.daemon.degraded_fraction, config.daemon.degraded_images,
                                          on_change=self.metrics.observe_speed)
        self._polls = Cadence(PS_INTERVAL)
        self._commands = Cadence(config.daemon.on_degraded_interval)
        self._retests = Cadence(RETEST_AFTER_LOAD)
        self._runtime_written, self._runtime_at = "", 0.0
        for client in clients:
            client.keep_alive = self._keep_alive
            client.on_figures = self._on_figures
        self._answered_since_poll = False
        self._captions: collections.deque[Caption] = collections.deque(maxlen=RECENT_CAPTIONS)
        self._finished: collections.deque[float] = collections.deque(maxlen=200)  # monotonic times, for the ETA
        self.apps = AppNotifier(config.daemon, self.originals, self.metrics.registry)
        self.settle = config.daemon.settle
        self.workers = captioner.capacity + 2
        self.stop = threading.Event()
        self._wake = threading.Event()
        self._rescan_requested = threading.Event()
        self._events: dict[Path, float] = {}
        self._directories: set[Path] = set()
        self._events_lock = threading.Lock()
        self._model_failures = 0
        self._model_error = ""
        # Liveness (what the systemd watchdog and /healthz report): the loops turn, the observer and the
        # producer threads live, and when files are due the queue moves. One file may take a whole request
        # deadline plus its retries, so "stuck" means no file finished for well over that.
        self.stall_after = stall_after if stall_after is not None else max(
            STALL_AFTER, 2 * (config.daemon.timeout + config.daemon.retry.total))
        self._last_progress = time.monotonic()
        self._event_loop_turned = time.monotonic()
        self._observer_alive: Callable[[], bool] = lambda: True
        self._producers: list[threading.Thread] = []
        self._last_notify = 0.0
        self._not_alive_reason = ""
        self.abandoned = 0  # requests still blocked when the daemon stopped

    # -- the whole daemon --------------------------------------------------------------------

    def run(self) -> None:
        """Watch, rescan and caption until stop is set; return after in-flight work is finished."""
        recovered = self.state.recover()
        if recovered:
            log.info("%d files were being processed when the daemon stopped; they are queued again", recovered)
        health = self._start_health_server()
        overflow = OverflowListener(self.request_rescan)
        overflow.attach()
        observer = start_observer(self.originals, self._watcher_kind(), self._on_file, self._on_directory,
                                  poll_interval=self.config.daemon.poll_interval)
        self._observer_alive = observer.is_alive
        producers = [threading.Thread(target=self._rescan_loop, name="captiond-rescan", daemon=True),
                     threading.Thread(target=self._event_loop, name="captiond-events", daemon=True)]
        self._producers = producers
        for thread in producers:
            thread.start()
        if not self._model_error:
            self.metrics.model_up.set(1)
        self.apps.start()
        self.notifier.send("READY=1\nSTATUS=starting: first scan of the originals")
        log.info("watching %s (%s); settle %.1fs, rescan every %.0fs", self.originals, self._watcher_kind(),
                 self.settle, self.config.daemon.rescan)
        try:
            self._consume()
        finally:
            self.notifier.send("STOPPING=1")
            observer.stop()
            overflow.detach()
            observer.join(timeout=5)
            for thread in producers:
                thread.join(timeout=5)
            if health is not None:
                health.stop()
            self._tester.shutdown(wait=False, cancel_futures=True)
            self.apps.stop()
            self.state.recover()

    def request_stop(self) -> None:
        """Ask the daemon to finish the writes under way and return (SIGTERM, SIGINT)."""
        self.stop.set()
        self._wake.set()
        self._rescan_requested.set()

    def request_rescan(self) -> None:
        """Ask for a full rescan soon (after an inotify overflow)."""
        log.warning("filesystem events were lost: rescanning the originals")
        self._rescan_requested.set()

    def healthy(self) -> tuple[bool, str]:
        """Return whether the daemon works (alive, model reachable) and why not."""
        reason = self.liveness()
        if reason:
            return False, reason
        if self._model_error:
            return False, f"model server: {self._model_error}"
        degraded = self.monitor.degraded()
        if degraded:
            reasons = "; ".join(f"{endpoint}: {reason}" for endpoint, reason in degraded.items())
            return False, f"degraded: {reasons}. Fix: {FIX}"
        return True, self._status_line()

    # -- producers ---------------------------------------------------------------------------

    def _watcher_kind(self) -> WatcherKind:
        return "polling" if self.config.daemon.watcher == "polling" else "inotify"

    def _on_file(self, path: Path) -> None:
        """Note a path to look at (appeared, changed or deleted): the event loop stats it."""
        with self._events_lock:
            self._events[path] = time.monotonic()

    def _on_directory(self, path: Path) -> None:
        with self._events_lock:
            self._directories.add(path)

    def _event_loop(self) -> None:
        """Move watcher events into the queue every 100 ms (stat them, coalesce bursts into one transaction)."""
        while not self.stop.wait(0.1):
            self._event_loop_turns()
            with self._events_lock:
                paths, self._events = list(self._events), {}
                directories, self._directories = list(self._directories), set()
            try:
                for directory in directories:
                    if containment_problem(self.originals, directory, folder=True) is None:
                        self._enqueue_tree(directory, forget_missing=False, turned=self._event_loop_turns)
                if paths:
                    self._enqueue_paths(paths, not_before=time.time() + self.settle)
            except Exception as error:  # noqa: BLE001 - the next rescan finds what these events named
                log.error("could not queue %d changed paths (the next rescan will): %s", len(paths) + len(directories),
                          _one_line(error))

    def _event_loop_turns(self) -> None:
        self._event_loop_turned = time.monotonic()

    def _enqueue_paths(self, paths: list[Path], not_before: float) -> None:
        items, gone = [], []
        for path in paths:
            left_alone = containment_problem(self.originals, path) is not None or self.ignore.ignored(path)
            stat = None if left_alone else Stat.of(path)
            if stat is None:  # gone, ignored, or no longer a regular file inside the originals: forgotten
                gone.append(path)
            else:
                items.append((path, stat, not_before))
        if gone:
            self.state.forget(gone)
        if items and self.state.enqueue(items):
            self._wake.set()

    def _rescan_loop(self) -> None:
        """Rescan at start, every Daemon.Rescan (jittered by 10%), and when asked."""
        while not self.stop.is_set():
            try:
                self._enqueue_tree(self.originals, forget_missing=True)
            except Exception as error:  # noqa: BLE001 - a failed rescan is tried again at the next interval
                log.error("rescan failed: %s", _one_line(error))
            interval = self.config.daemon.rescan * random.uniform(0.9, 1.1)
            self._rescan_requested.wait(interval)
            self._rescan_requested.clear()

    def _enqueue_tree(self, top: Path, forget_missing: bool, turned: Callable[[], None] = lambda: None) -> None:
        """Queue every new or changed photo under a folder; forget rows of vanished files (full rescans).

        `turned` is called for every entry: a big folder moved in keeps the event loop busy, not stuck.
        """
        started = time.monotonic()
        known = self.state.known_stats() if forget_missing else {}
        seen: set[bytes] = set()
        batch: list[tuple[Path, Stat, float]] = []
        queued = 0
        directories: set[str] = set()
        for entry in scan_entries(self.originals, top, rules=self.ignore):
            if self.stop.is_set():
                return
            turned()
            try:
                status = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            key = os.fsencode(entry.path)
            seen.add(key)
            directories.add(os.path.dirname(entry.path))
            if known.get(key, (None, None, None))[:2] == (status.st_size, status.st_mtime_ns):
                continue
            batch.append((Path(entry.path), Stat(status.st_size, status.st_mtime_ns), time.time()))
            if len(batch) >= BATCH:
                queued += self.state.enqueue(batch)
                batch = []
                self._wake.set()
        queued += self.state.enqueue(batch) if batch else 0
        if queued:
            self._wake.set()
        if forget_missing:
            self._forget_vanished(known, seen)
            self._check_watch_limit(len(directories) + 1)
        log.info("scanned %s: %d photos, %d queued, in %.1fs", top, len(seen), queued, time.monotonic() - started)

    def _forget_vanished(self, known: dict[bytes, tuple[int, int, str]], seen: set[bytes]) -> None:
        vanished = [key for key in known if key not in seen]
        if not vanished:
            return
        if not seen or not self.originals.is_dir():
            log.error("the originals folder %s looks empty or unmounted: keeping the state of %d files",
                      self.originals, len(vanished))
            return
        self.state.forget([Path(os.fsdecode(key)) for key in vanished])

    def _check_watch_limit(self, directories: int) -> None:
        if self._watcher_kind() != "inotify":
            return
        limit = inotify_watch_limit()
        if limit is not None and directories > limit:
            log.error("the originals have %d folders but fs.inotify.max_user_watches is %d: new photos in the "
                      "other folders are found only by rescans. Fix: echo fs.inotify.max_user_watches=%d | "
                      "sudo tee /etc/sysctl.d/90-captiond.conf && sudo sysctl --system",
                      directories, limit, max(524288, directories * 2))

    # -- the consumer ------------------------------------------------------------------------

    def _consume(self) -> None:
        in_flight: set[concurrent.futures.Future[None]] = set()
        executor = concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix="captiond")
        try:
            while not self.stop.is_set():
                self._heartbeat()
                self._paused = self.quiet.paused_until()  # quiet hours: no request at all, not even a probe
                if not self._paused:
                    if self._model_error and not self._probe_model():
                        continue
                    if self._self_test_passes():  # else: wait for the test (or a probe) below
                        self._watch_degradation()
                        self._claim(executor, in_flight)
                in_flight = {future for future in in_flight if not future.done()}
                self._wake.wait(self._idle_wait(in_flight))
                self._wake.clear()
        finally:
            self._finish_in_flight(in_flight)
            executor.shutdown(wait=False, cancel_futures=True)

    def _claim(self, executor: concurrent.futures.ThreadPoolExecutor,
               in_flight: set[concurrent.futures.Future[None]]) -> None:
        capacity = self.workers * 2 - len(in_flight)
        for row in self.state.claim(capacity) if capacity > 0 else []:
            future = executor.submit(self._handle, row)
            future.add_done_callback(lambda _: self._wake.set())
            in_flight.add(future)

    def _idle_wait(self, in_flight: set[concurrent.futures.Future[None]]) -> float:
        if self._paused or self._self_test is not None:
            return 1.0  # quiet hours: look at the clock again in a second; a finished self-test wakes the loop
        if in_flight:
            return 0.5  # a finishing file wakes the loop
        next_due = self.state.next_due()
        if next_due is None:
            return 1.0
        return min(1.0, max(0.02, next_due - time.time()))

    def _finish_in_flight(self, in_flight: set[concurrent.futures.Future[None]]) -> None:
        """Let writes under way finish; requests still waiting for the model are abandoned and queued again.

        Files claimed but not started are not started. A request blocked on a server that sends nothing
        does not end when its connection is closed; it is left behind (`abandoned`), its row queued again.
        """
        for future in in_flight:
            future.cancel()
        _, waiting = concurrent.futures.wait(in_flight, timeout=5)
        if not waiting:
            return
        log.info("stopping: abandoning %d requests to the model (they stay queued)", len(waiting))
        for client in self.clients:
            client.close()
        _, left = concurrent.futures.wait(waiting, timeout=5)
        self.abandoned = len(left)

    def _handle(self, row: FileState) -> None:
        """Process one claimed row; nothing a file or an answer does escapes (the daemon must not exit)."""
        try:
            self._process_row(row)
        except Exception as error:  # noqa: BLE001
            reason = f"unexpected error: {_one_line(error)}"
            log.error("%s: %s; will try again later", self._relative(row.path), reason)
            try:
                self._record(row, Outcome(row.path, Status.FAILED, reason, transient=True, unexpected=True),
                             Stat.of(row.path) or Stat(row.size, row.mtime_ns))
            except Exception as second:  # noqa: BLE001 - the row stays running: recovered at the next start
                log.error("%s: cannot record the failure either: %s", self._relative(row.path), _one_line(second))

    def _process_row(self, row: FileState) -> None:
        path = row.path
        self._moved()
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
            self.model_unavailable(error)
            return
        if self.stop.is_set() and outcome.status == Status.FAILED and outcome.transient:
            # The request was abandoned at shutdown (its connection closed under it): that costs no attempt
            # and leaves the reason it had; run() puts the row back in the queue unchanged.
            log.debug("abandoned %s at shutdown: %s", self._relative(path), outcome.reason)
            return
        self._record(row, outcome, stat)

    def _record(self, row: FileState, outcome: Outcome, stat: Stat) -> None:
        self._moved()
        self._model_failures, self._model_error = 0, ""
        self.metrics.files.labels(outcome.status).inc()
        if outcome.status != Status.FAILED or not outcome.transient:
            self.metrics.model_up.set(1)
        name = self._relative(row.path)
        if outcome.written:
            self.apps.written(row.path, outcome.created_sidecar)
        if outcome.status != Status.FAILED:
            final_stat = Stat.of(row.path) if outcome.wrote_original else stat
            self.state.finish(row.path, RowState.DONE, final_stat, outcome.reason)
            if outcome.status == Status.CAPTIONED:
                log.info("%s", describe_outcome(name, outcome))
                self._finished.append(time.monotonic())
                if outcome.caption:
                    self._captions.appendleft(Caption(row.path, name, outcome.caption,
                                                      self.captioner.source("caption"), time.time()))
            return
        if not outcome.transient:
            self.state.finish(row.path, RowState.FAILED, stat, outcome.reason)
            log.error("failed %s: %s", name, outcome.reason)
            return
        if outcome.unexpected and row.attempts + 1 >= UNEXPECTED_BEFORE_QUARANTINE:
            self.state.finish(row.path, RowState.QUARANTINED, stat, f"failed {UNEXPECTED_BEFORE_QUARANTINE} times: "
                              f"{outcome.reason}")
            log.error("quarantined %s: %s", name, outcome.reason)
            return
        if outcome.crashed and row.crashes + 1 >= CRASHES_BEFORE_QUARANTINE:
            self.state.finish(row.path, RowState.QUARANTINED, stat, f"crashed the model server twice: {outcome.reason}",
                              crashed=True)
            log.error("quarantined %s: it crashed the model server twice (%s)", name, outcome.reason)
            return
        delay = min(MAX_REQUEUE_DELAY, self.config.daemon.retry.max_delay * 2 ** row.attempts)
        delay *= random.uniform(0.8, 1.2)
        self.state.retry_later(row.path, outcome.reason, delay, crashed=outcome.crashed)
        self.metrics.retries.inc()
        log.warning("will retry %s in %.0fs: %s", name, delay, outcome.reason)

    def model_unavailable(self, error: ModelSetupError) -> None:
        """Pause the consumer until the model server answers again (probed with growing delays)."""
        if not self._model_error:
            log.error("%s; pausing until it answers again", error)
            if isinstance(error, ServerUnreachable):
                hint = blocked_address_hint((endpoint.uri for client in self.clients
                                             for endpoint in client.model.service.all_endpoints()), os.environ)
                if hint:
                    log.warning("%s", hint)
        self._model_error = str(error)
        self._next_self_test = 0.0  # the server may be restarted or upgraded: test again before resuming
        self.metrics.model_up.set(0)

    def _probe_model(self) -> bool:
        """Wait a growing delay, then check the model again; return whether it is back."""
        delay = PROBE_DELAYS[min(self._model_failures, len(PROBE_DELAYS) - 1)]
        self._model_failures += 1
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline:
            self._heartbeat()  # the probe loop turns: keep telling systemd so
            if self.stop.wait(min(1.0, max(0.0, deadline - time.monotonic()))):
                return False
        try:
            for client in self.clients:
                client.check(retry=False)
        except ModelSetupError as error:
            self._model_error = str(error)
            log.warning("model server still unavailable: %s", error)
            return False
        passed = self._self_test_passes()
        if not passed and self._self_test is not None:  # started just now: its answer decides
            self._await_self_test()
            passed = self._self_test_passes()
        if not passed:
            return False
        log.info("the model server answers again: resuming")
        # The delays grow on until a photo is done: a setup problem the check cannot see (a context too
        # small for the image) pauses the daemon again at once, and must not be probed every two seconds.
        self._model_error = ""
        self.metrics.model_up.set(1)
        return True

    def _watch_degradation(self) -> None:
        """Ask /api/ps at most once a minute; run Daemon.OnDegraded (at most once per interval) when degraded."""
        clients = {(id(client.pool), client.model.model_id): client for client in self.clients}.values()
        if self._answered_since_poll and self._polls.due("ps"):  # the model is loaded only once it answered
            self._answered_since_poll = False
            for client in clients:
                for endpoint, loaded in client.loaded_models():
                    self.monitor.observe_loaded(endpoint, client.model.model_id, loaded)
        degraded = self.monitor.degraded()
        if degraded and self.config.daemon.on_degraded and self._commands.due("OnDegraded"):
            self._run_on_degraded(list(degraded))

    def _on_figures(self, endpoint: str, answer: Answer) -> None:
        self._answered_since_poll = True
        self.monitor.observe(endpoint, answer.seconds, answer.figures)
        reloaded = answer.figures.get("load_duration", 0.0) / 1e9 >= LOAD_SECONDS
        testing = self._self_test is not None  # the self-test's own answer may well report the load
        if reloaded and not testing and self.config.daemon.self_test and self._retests.due("reload"):
            # The model was loaded again: perhaps by a restarted or upgraded server. Does it still see?
            log.info("%s loaded the model again: running the self-test", endpoint)
            self._next_self_test = 0.0

    def _run_on_degraded(self, endpoints: list[str]) -> None:
        """Run the user's command (no shell), pausing requests, then wait for the server to answer again."""
        command = list(self.config.daemon.on_degraded)
        self._paused = "paused: running Daemon.OnDegraded"
        log.warning("running Daemon.OnDegraded %s for %s", command, ", ".join(endpoints))
        self._run_command(command)
        deadline = time.monotonic() + SERVER_BACK_TIMEOUT
        attempt = 0
        while not self.stop.is_set() and time.monotonic() < deadline:
            self._heartbeat()
            try:
                for client in self.clients:
                    client.check(retry=False)
                break
            except ModelSetupError as error:
                log.info("waiting for the model server after Daemon.OnDegraded: %s", error)
            self.stop.wait(PROBE_DELAYS[min(attempt, len(PROBE_DELAYS) - 1)])
            attempt += 1
        for endpoint in endpoints:
            self.monitor.reset(endpoint)
        self._next_self_test = 0.0  # a restarted server: check again that the model sees
        self._paused = ""

    def _run_command(self, command: list[str]) -> None:
        """Run Daemon.OnDegraded (no shell, up to COMMAND_TIMEOUT), petting the watchdog meanwhile; log the result."""
        with tempfile.TemporaryFile() as output:
            try:
                process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT)
            except OSError as exc:
                log.error("Daemon.OnDegraded could not run: %s", exc.strerror or exc)
                return
            deadline = time.monotonic() + COMMAND_TIMEOUT
            while process.poll() is None and time.monotonic() < deadline and not self.stop.is_set():
                self._heartbeat()
                self.stop.wait(0.2)
            if process.poll() is None:
                process.kill()
                log.error("Daemon.OnDegraded did not finish within %.0fs: killed", COMMAND_TIMEOUT)
            process.wait()
            output.seek(0)
            text = output.read()[-2000:].decode("utf-8", "replace").strip()
        log.log(logging.INFO if process.returncode == 0 else logging.ERROR, "Daemon.OnDegraded exited with %d%s",
                process.returncode, f": {text}" if text else "")

    def _keep_alive(self) -> str | float:
        """Ollama's keep_alive for the next request: loaded while other files wait, released soon after (auto)."""
        if self.config.daemon.keep_alive != "auto":
            return self.config.daemon.keep_alive
        counts = self.state.counts()
        return keep_alive_for("auto", counts[RowState.PENDING] + counts[RowState.RUNNING] > 1)

    def _self_test_passes(self) -> bool:
        """Whether captioning may go on: the self-test (at start, after an outage, every SelfTestInterval) passed.

        The test runs in a thread of its own (the consumer keeps petting the watchdog); while it runs, and when
        the model answers without seeing, nothing is claimed. A blind model pauses the daemon like a server
        that is down, and the probes test it again.
        """
        if not self.config.daemon.self_test:
            return True
        future = self._self_test
        if future is None:
            if time.monotonic() < self._next_self_test:
                return True
            self._self_test = future = self._tester.submit(self._check_sight)
            future.add_done_callback(lambda _: self._wake.set())
        if not future.done():
            return False
        self._self_test = None
        try:
            tested = future.result()
        except ModelSetupError as error:
            if self._model_error:
                self._model_error = str(error)  # still blind: stay paused
                log.warning("%s", error)
            else:
                self.model_unavailable(error)
            return False
        # A test without an answer (a transient failure) is tried again in a minute.
        self._next_self_test = time.monotonic() + (self.config.daemon.self_test_interval if tested else 60.0)
        return True

    def _await_self_test(self) -> None:
        """Wait for the running self-test to answer, petting the watchdog meanwhile."""
        future = self._self_test
        while future is not None and not self.stop.is_set():
            done, _ = concurrent.futures.wait([future], timeout=0.5)
            if done:
                return
            self._heartbeat()

    def _check_sight(self) -> bool:
        """Ask every model about the probe image; raise ModelCannotSee for one that answers without seeing it."""
        models = {(id(client.pool), client.model.model_id): client for client in self.clients}
        return all([check_sight(client) for client in models.values()])

    # -- health ------------------------------------------------------------------------------

    def _heartbeat(self) -> None:
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
        status = (f"waiting for the model server: {self._model_error}" if self._model_error
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
        if not self._observer_alive():
            return "the filesystem observer stopped"
        for thread in self._producers:
            if not thread.is_alive():
                return f"the {thread.name} thread stopped"
        if self._producers and now - self._event_loop_turned > self.stall_after:
            return f"the event loop has not turned for {now - self._event_loop_turned:.0f}s"
        if self._model_error or self._paused:
            self._last_progress = now  # paused, not stuck: the stall clock starts again when it resumes
            return ""
        counts = counts or self.state.counts()
        next_due = self.state.next_due()
        busy = counts[RowState.RUNNING] > 0 or (next_due is not None and next_due <= time.time())
        if not busy:
            self._last_progress = now  # the stall clock starts when work becomes due
            return ""
        if now - self._last_progress > self.stall_after:
            return f"files are due but none has moved for {now - self._last_progress:.0f}s"
        return ""

    def _moved(self) -> None:
        self._last_progress = time.monotonic()

    def status_page(self) -> bytes:
        """Return the HTML status page (counts, ETA, endpoints, quiet hours, latest captions and failures)."""
        counts = self.state.counts()
        queued = counts[RowState.PENDING] + counts[RowState.RUNNING]
        speeds = {str(item["endpoint"]): item for item in self.monitor.figures()}
        pools = {id(client.pool): client for client in self.clients}.values()
        endpoints = [{**figures, **speeds.get(str(figures["endpoint"]), {})}
                     for client in pools for figures in client.figures()]
        failures = [(self._relative(row.path), row.state, row.last_error) for row in self.state.recent_failures(10)]
        schedule = self.config.daemon.schedule
        return render(PageData(counts, queued, self._eta(queued), self._paused, self._model_error, endpoints,
                               list(self._captions), failures, time.time(), schedule.text if schedule else "",
                               self.monitor.degraded()))

    def _eta(self, queued: int) -> float | None:
        """Return seconds until the queue is done at the pace of the latest captions (None: not known yet)."""
        finished = list(self._finished)
        if len(finished) < 2 or finished[-1] <= finished[0]:
            return None
        per_second = (len(finished) - 1) / (finished[-1] - finished[0])
        return queued / per_second

    def _write_runtime(self) -> None:
        """Write what only the running daemon knows (pause, degradation, speeds) for `captiond status`."""
        document = {"pid": os.getpid(), "paused": self._paused, "model_error": self._model_error,
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
        paused = f"{self._paused}; " if self._paused else ""
        return (f"{paused}{counts[RowState.DONE]} done, {counts[RowState.PENDING] + counts[RowState.RUNNING]} queued, "
                f"{counts[RowState.FAILED]} failed, {counts[RowState.QUARANTINED]} quarantined")

    def _start_health_server(self) -> HealthServer | None:
        if not self.config.daemon.listen:
            return None
        server = HealthServer(self.config.daemon.listen, self.metrics, self.healthy, self.status_page)
        server.start()
        log.info("serving /healthz and /metrics on http://%s (status page at /)", server.address)
        return server

    def _relative(self, path: Path) -> str:
        try:
            return printable(path.relative_to(self.originals).as_posix())
        except ValueError:
            return printable(str(path))


def _one_line(error: BaseException) -> str:
    """Return an error as one printable line: its type and message."""
    return printable(" ".join(f"{type(error).__name__}: {error}".splitlines()))
