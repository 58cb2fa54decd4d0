"""Telling the outside world how the daemon is: systemd notifications, /healthz and Prometheus /metrics."""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .degradation import EndpointSpeed
from .errors import UsageError
from .executor import start_thread
from .redaction import redact
from .statuspage import CONTENT_SECURITY_POLICY

log = logging.getLogger(__name__)


class SystemdNotifier:
    """sd_notify over $NOTIFY_SOCKET (READY=1, STATUS=..., WATCHDOG=1, STOPPING=1); silent without systemd."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        environ = dict(os.environ) if environ is None else environ
        address = environ.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        watchdog_usec = environ.get("WATCHDOG_USEC", "")
        self.watchdog_interval = int(watchdog_usec) / 2_000_000 if watchdog_usec.isdigit() else None

    def send(self, message: str) -> None:
        """Send one notification (ignored when not started by systemd)."""
        if not self.address:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as connection:
                connection.connect(self.address)
                connection.sendall(message.encode("utf-8"))
        except OSError as exc:
            log.debug("cannot notify systemd: %s", exc)


class Metrics:
    """The daemon's Prometheus metrics, in a registry of its own (no global state)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.files = Counter("captiond_files", "Files finished, by outcome", ["outcome"], registry=self.registry)
        self.retries = Counter("captiond_retries", "Transient failures put back in the queue",
                               registry=self.registry)
        self.queue = Gauge("captiond_queue_depth", "Files waiting to be processed", registry=self.registry)
        self.model_seconds = Histogram("captiond_model_seconds", "Seconds a model server took for one answer",
                                       ["endpoint"], buckets=(0.25, 0.5, 1, 2, 3, 5, 8, 13, 21, 34, 60, 120),
                                       registry=self.registry)
        self.model_up = Gauge("captiond_model_up", "1 while the model server answers", registry=self.registry)
        self.tokens_per_second = Gauge("captiond_model_tokens_per_second", "Generation speed of the latest answer "
                                       "(Ollama eval_count / eval_duration)", ["endpoint"], registry=self.registry)
        self.vram_fraction = Gauge("captiond_model_vram_fraction", "Part of the loaded model in GPU memory "
                                   "(Ollama /api/ps size_vram / size)", ["endpoint"], registry=self.registry)
        self.degraded = Gauge("captiond_model_degraded", "1 while the endpoint is degraded (slow or partly on the "
                              "CPU)", ["endpoint"], registry=self.registry)

    def observe_answer(self, endpoint: str, seconds: float) -> None:
        """Record one answer's latency for its endpoint."""
        self.model_seconds.labels(endpoint).observe(seconds)

    def observe_speed(self, speed: EndpointSpeed) -> None:
        """Publish one endpoint's speed, GPU memory share and degradation."""
        if speed.tokens_per_second is not None:
            self.tokens_per_second.labels(speed.name).set(speed.tokens_per_second)
        if speed.vram_fraction is not None:
            self.vram_fraction.labels(speed.name).set(speed.vram_fraction)
        self.degraded.labels(speed.name).set(1 if speed.degraded else 0)

    def exposition(self) -> bytes:
        """Return the metrics in Prometheus' text format."""
        return generate_latest(self.registry)


class HealthServer:
    """Serves /healthz (200 while healthy, else 503), /metrics and the status page `/` on Daemon.Listen."""

    def __init__(self, listen: str, metrics: Metrics, healthy: Callable[[], tuple[bool, str]],
                 page: Callable[[], bytes] | None = None) -> None:
        host, _, port = listen.rpartition(":")
        if not port.isdigit():
            raise UsageError(f"Daemon.Listen: expected HOST:PORT such as 127.0.0.1:9780, got {listen!r}")
        metrics_ref, healthy_ref, page_ref = metrics, healthy, page

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                if self.path.startswith("/metrics"):
                    self._answer(200, redact(metrics_ref.exposition().decode()).encode(), CONTENT_TYPE_LATEST)
                elif self.path.startswith("/healthz"):
                    ok, detail = healthy_ref()
                    self._answer(200 if ok else 503, redact(f"{'ok' if ok else 'unhealthy'}: {detail}\n").encode(),
                                 "text/plain; charset=utf-8")
                elif page_ref is not None and self.path.split("?")[0] in ("/", "/index.html"):
                    self._answer(200, page_ref(), "text/html; charset=utf-8")
                else:
                    self._answer(404, b"not found\n", "text/plain")

            def _answer(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
                self.send_header("X-Content-Type-Options", "nosniff")
                self.send_header("Cache-Control", "no-store")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the http.server API
                return

        try:
            self.server = ThreadingHTTPServer((host.strip("[]") or "127.0.0.1", int(port)), Handler)
        except OSError as exc:
            raise UsageError(f"Daemon.Listen: cannot listen on {listen}: {exc.strerror or exc}") from exc
        self.server.daemon_threads = True
        self.thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        """Return host:port actually bound (port 0 picks a free one)."""
        host, port = self.server.server_address[:2]
        return f"{host!s}:{port}"

    def start(self) -> None:
        """Serve in a background thread."""
        self.thread = start_thread(self.server.serve_forever, "captiond-health")

    def stop(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()
