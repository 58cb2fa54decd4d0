"""What the daemon knows of its model servers: reachable or not (probed while not), the self-test, degradation.

One owner, one lock: workers report what the server did (`unavailable`, `answered`, `on_figures`),
the consumer probes, tests and claims only while `error` is empty, and the health thread reads.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable

from .backoff import Backoff
from .config import Config
from .degradation import LOAD_SECONDS, Cadence, DegradationMonitor
from .errors import ModelSetupError, ServerUnreachable
from .health import Metrics
from .model import Answer, ModelClient
from .sandbox import blocked_address_hint
from .selftest import check_sight

log = logging.getLogger(__name__)

PS_INTERVAL = 60.0  # /api/ps is asked at most once a minute per endpoint
RETEST_AFTER_LOAD = 600.0  # a model load triggers the self-test at most this often
COMMAND_TIMEOUT = 600.0  # Daemon.OnDegraded is killed after this long
SERVER_BACK_TIMEOUT = 600.0  # how long to wait for the server after Daemon.OnDegraded
PROBES = Backoff(2.0, 60.0)  # checks of a server that is away: 2 s doubling to a minute


class ModelSupervisor:
    """Owns the model servers' status: the error that pauses the daemon, probes, the self-test and degradation."""

    def __init__(self, config: Config, clients: list[ModelClient], metrics: Metrics, stop: threading.Event,
                 wake: threading.Event, heartbeat: Callable[[], None] = lambda: None) -> None:
        self.config = config
        self.clients = clients
        self.metrics = metrics
        self.stop = stop
        self._wake = wake  # set when a self-test ends: the consumer looks again at once
        self.heartbeat = heartbeat  # pets systemd's watchdog while a probe, a test or a command waits
        self._lock = threading.Lock()  # workers, the consumer and the health thread all come here
        self._paused = ""  # while Daemon.OnDegraded runs
        self._error = ""
        self._model_failures = 0
        self._next_self_test = 0.0  # monotonic time; due at start
        self._self_test: concurrent.futures.Future[bool] | None = None
        self._tester = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="captiond-selftest")
        self.monitor = DegradationMonitor(config.daemon.degraded_fraction, config.daemon.degraded_images,
                                          on_change=metrics.observe_speed)
        self._polls = Cadence(PS_INTERVAL)
        self._commands = Cadence(config.daemon.on_degraded_interval)
        self._retests = Cadence(RETEST_AFTER_LOAD)
        self._answered_since_poll = False

    @property
    def error(self) -> str:
        """Return why the model server cannot be used ("" while it can): the consumer pauses meanwhile."""
        with self._lock:
            return self._error

    @property
    def paused(self) -> str:
        """Return "paused: running Daemon.OnDegraded" while it runs, else ""."""
        with self._lock:
            return self._paused

    @property
    def testing(self) -> bool:
        """Return whether a self-test is under way."""
        with self._lock:
            return self._self_test is not None

    def shutdown(self) -> None:
        """Abandon a self-test under way."""
        self._tester.shutdown(wait=False, cancel_futures=True)

    def answered(self) -> None:
        """A file was finished with the server's answer (or its fault): the server works; probe delays start again."""
        with self._lock:
            self._model_failures, self._error = 0, ""

    def unavailable(self, error: ModelSetupError) -> None:
        """Pause the consumer until the model server answers again (probed with growing delays)."""
        with self._lock:
            was_up = not self._error
            self._error = str(error)
            self._next_self_test = 0.0  # the server may be restarted or upgraded: test again before resuming
        if was_up:
            log.error("%s; pausing until it answers again", error)
            if isinstance(error, ServerUnreachable):
                hint = blocked_address_hint((endpoint.uri for client in self.clients
                                             for endpoint in client.model.service.all_endpoints()), os.environ)
                if hint:
                    log.warning("%s", hint)
        self.metrics.model_up.set(0)

    def probe(self) -> bool:
        """Wait a growing delay, then check the model again; return whether it is back."""
        with self._lock:
            delay = PROBES.delay(self._model_failures)
            self._model_failures += 1
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline:
            self.heartbeat()  # the probe loop turns: keep telling systemd so
            if self.stop.wait(min(1.0, max(0.0, deadline - time.monotonic()))):
                return False
        try:
            for client in self.clients:
                client.check(retry=False)
        except ModelSetupError as error:
            self._set_error(str(error))
            log.warning("model server still unavailable: %s", error)
            return False
        passed = self.self_test_passes()
        if not passed and self.testing:  # started just now: its answer decides
            self._await_self_test()
            passed = self.self_test_passes()
        if not passed:
            return False
        log.info("the model server answers again: resuming")
        # The delays grow on until a photo is done: a setup problem the check cannot see (a context too
        # small for the image) pauses the daemon again at once, and must not be probed every two seconds.
        self._set_error("")
        self.metrics.model_up.set(1)
        return True

    def _set_error(self, error: str) -> None:
        with self._lock:
            self._error = error

    def watch_degradation(self) -> None:
        """Ask /api/ps at most once a minute; run Daemon.OnDegraded (at most once per interval) when degraded."""
        clients = {(id(client.pool), client.model.model_id): client for client in self.clients}.values()
        with self._lock:
            poll = self._answered_since_poll and self._polls.due("ps")
            if poll:
                self._answered_since_poll = False
        if poll:  # the model is loaded only once it answered
            for client in clients:
                for endpoint, loaded in client.loaded_models():
                    self.monitor.observe_loaded(endpoint, client.model.model_id, loaded)
        degraded = self.monitor.degraded()
        if degraded and self.config.daemon.on_degraded and self._commands.due("OnDegraded"):
            self._run_on_degraded(list(degraded))

    def on_figures(self, endpoint: str, answer: Answer) -> None:
        """Take one answer's figures (speed, load time): degradation, and a self-test after a reload."""
        self.monitor.observe(endpoint, answer.seconds, answer.figures)
        reloaded = answer.figures.get("load_duration", 0.0) / 1e9 >= LOAD_SECONDS
        with self._lock:
            self._answered_since_poll = True
            testing = self._self_test is not None  # the self-test's own answer may well report the load
            retest = reloaded and not testing and self.config.daemon.self_test and self._retests.due("reload")
            if retest:
                self._next_self_test = 0.0
        if retest:
            # The model was loaded again: perhaps by a restarted or upgraded server. Does it still see?
            log.info("%s loaded the model again: running the self-test", endpoint)

    def _run_on_degraded(self, endpoints: list[str]) -> None:
        """Run the user's command (no shell), pausing requests, then wait for the server to answer again."""
        command = list(self.config.daemon.on_degraded)
        with self._lock:
            self._paused = "paused: running Daemon.OnDegraded"
        log.warning("running Daemon.OnDegraded %s for %s", command, ", ".join(endpoints))
        self._run_command(command)
        deadline = time.monotonic() + SERVER_BACK_TIMEOUT
        attempt = 0
        while not self.stop.is_set() and time.monotonic() < deadline:
            self.heartbeat()
            try:
                for client in self.clients:
                    client.check(retry=False)
                break
            except ModelSetupError as error:
                log.info("waiting for the model server after Daemon.OnDegraded: %s", error)
            self.stop.wait(PROBES.delay(attempt))
            attempt += 1
        for endpoint in endpoints:
            self.monitor.reset(endpoint)
        with self._lock:
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
                self.heartbeat()
                self.stop.wait(0.2)
            if process.poll() is None:
                process.kill()
                log.error("Daemon.OnDegraded did not finish within %.0fs: killed", COMMAND_TIMEOUT)
            process.wait()
            output.seek(0)
            text = output.read()[-2000:].decode("utf-8", "replace").strip()
        log.log(logging.INFO if process.returncode == 0 else logging.ERROR, "Daemon.OnDegraded exited with %d%s",
                process.returncode, f": {text}" if text else "")

    def self_test_passes(self) -> bool:
        """Whether captioning may go on: the self-test (at start, after an outage, every SelfTestInterval) passed.

        The test runs in a thread of its own (the consumer keeps petting the watchdog); while it runs, and when
        the model answers without seeing, nothing is claimed. A blind model pauses the daemon like a server
        that is down, and the probes test it again.
        """
        if not self.config.daemon.self_test:
            return True
        with self._lock:
            future, started = self._self_test, False
            if future is None:
                if time.monotonic() < self._next_self_test:
                    return True
                self._self_test = future = self._tester.submit(self._check_sight)
                started = True
        if started:
            future.add_done_callback(lambda _: self._wake.set())
        if not future.done():
            return False
        with self._lock:
            self._self_test = None
        try:
            tested = future.result()
        except ModelSetupError as error:
            if self.error:
                self._set_error(str(error))  # still blind: stay paused
                log.warning("%s", error)
            else:
                self.unavailable(error)
            return False
        with self._lock:  # a test without an answer (a transient failure) is tried again in a minute
            self._next_self_test = time.monotonic() + (self.config.daemon.self_test_interval if tested else 60.0)
        return True

    def _await_self_test(self) -> None:
        """Wait for the running self-test to answer, petting the watchdog meanwhile."""
        with self._lock:
            future = self._self_test
        while future is not None and not self.stop.is_set():
            done, _ = concurrent.futures.wait([future], timeout=0.5)
            if done:
                return
            self.heartbeat()

    def _check_sight(self) -> bool:
        """Ask every model about the probe image; raise ModelCannotSee for one that answers without seeing it."""
        models = {(id(client.pool), client.model.model_id): client for client in self.clients}
        return all([check_sight(client) for client in models.values()])
