"""A degraded GPU: slow answers (Ollama's eval figures) or a model partly off the GPU (/api/ps) are reported in
the log, `captiond status`, /healthz and /metrics; Daemon.OnDegraded runs once and the daemon resumes."""

from __future__ import annotations

import logging
import re
import shutil
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from captiond.degradation import Cadence, DegradationMonitor
from conftest import FIXTURES, add_fixture, run_captiond
from emulator import OllamaEmulator
from test_watch import Daemon, config_for, sidecar_caption, start_daemon, wait_for

__all__ = ["start_daemon"]  # the fixture, used by name


def figures(tokens_per_second: float, tokens: int = 10, load_seconds: float = 0.01) -> dict[str, float]:
    return {"eval_count": tokens, "eval_duration": tokens / tokens_per_second * 1e9,
            "load_duration": load_seconds * 1e9}


def test_slow_answers_in_a_row_degrade_an_endpoint_once(caplog: pytest.LogCaptureFixture) -> None:
    monitor = DegradationMonitor(fraction=0.5, images=3)
    for speed in (40, 42, 38):  # the baseline after the load: median 40
        monitor.observe("gpu", 1.0, figures(speed))
    for speed in (15, 15, 30, 15, 15):  # 30 is not slow: the count starts again
        monitor.observe("gpu", 3.0, figures(speed))
    assert not monitor.degraded()
    with caplog.at_level(logging.WARNING, "captiond.degradation"):
        for _ in range(4):
            monitor.observe("gpu", 3.0, figures(15))
    assert "gpu" in monitor.degraded() and "for 3 images in a row" in monitor.degraded()["gpu"]
    assert len([record for record in caplog.records if "is degraded" in record.getMessage()]) == 1
    monitor.reset("gpu")
    assert not monitor.degraded()


def test_a_model_load_measures_the_baseline_again() -> None:
    monitor = DegradationMonitor(fraction=0.5, images=2)
    for _ in range(3):
        monitor.observe("gpu", 1.0, figures(40))
    monitor.observe("gpu", 1.0, figures(10, load_seconds=8))  # reloaded (e.g. another num_ctx): a new baseline
    for _ in range(5):
        monitor.observe("gpu", 1.0, figures(10))
    assert not monitor.degraded()
    assert monitor.figures()[0]["baseline_tokens_per_second"] == 10.0


def test_noise_of_tiny_generations_is_ignored() -> None:
    monitor = DegradationMonitor(fraction=0.5, images=2)
    for tokens_per_second in (40, 40, 40, 4000, 5, 5000, 3):  # eval shorter than 20 ms: not judged
        monitor.observe("gpu", 0.01, {"eval_count": 1, "eval_duration": 1 / tokens_per_second * 1e9 / 100})
    assert not monitor.degraded()


def test_a_model_partly_in_gpu_memory_is_degraded() -> None:
    monitor = DegradationMonitor()
    monitor.observe_loaded("gpu", "m:1b", [{"name": "other", "size": 10, "size_vram": 1}])
    monitor.observe_loaded("gpu", "m:1b", [{"name": "m:1b", "size": 100, "size_vram": 100}])
    assert not monitor.degraded()
    monitor.observe_loaded("gpu", "m:1b", [{"name": "m:1b", "size": 100, "size_vram": 40}])
    assert "only 40% of m:1b is in GPU memory" in monitor.degraded()["gpu"]


def test_cadence_allows_once_per_interval() -> None:
    cadence = Cadence(60)
    assert cadence.due("x", now=1000) and not cadence.due("x", now=1059) and cadence.due("x", now=1060.5)
    assert cadence.due("y", now=1001)


def address_of(daemon: Daemon) -> str:
    assert wait_for(lambda: "serving /healthz" in daemon.log()), daemon.log()
    match = re.search(r"serving /healthz and /metrics on (http://\S+)", daemon.log())
    assert match is not None
    return match.group(1)


@pytest.mark.subprocess
def test_slow_gpu_is_reported_in_log_status_healthz_and_metrics(
        tmp_path: Path, originals: Path, emulator: OllamaEmulator, start_daemon: Callable[..., Daemon]) -> None:
    emulator.tokens_per_second = 40
    first = [add_fixture(originals, "Canon_PowerShot_S40.jpg", f"before-{index}.jpg") for index in range(3)]
    config = config_for(tmp_path, emulator.url, Listen="127.0.0.1:0", DegradedImages=3)
    daemon = start_daemon(config, originals)
    address = address_of(daemon)
    assert wait_for(lambda: all(sidecar_caption(photo) for photo in first)), daemon.log()
    emulator.tokens_per_second = 8  # the GPU degrades: a fifth of the speed
    slow = [originals / f"after-{index}.jpg" for index in range(4)]
    for photo in slow:
        shutil.copyfile(FIXTURES / "PNG_plain.png", photo)
    assert wait_for(lambda: all(sidecar_caption(photo) for photo in slow), timeout=60), daemon.log()
    assert wait_for(lambda: "is degraded" in daemon.log()), daemon.log()
    assert daemon.log().count("is degraded") == 1
    assert "8.0 tokens/s for 3 images in a row" in daemon.log() and "restart" in daemon.log()
    health = httpx.get(f"{address}/healthz", timeout=5)
    assert health.status_code == 503 and health.text.startswith("unhealthy: degraded: ")
    metrics = httpx.get(f"{address}/metrics", timeout=5).text
    assert re.search(r'captiond_model_degraded\{endpoint="[^"]+"\} 1\.0', metrics)
    assert re.search(r'captiond_model_tokens_per_second\{endpoint="[^"]+"\} 8\.0', metrics)
    assert wait_for(lambda: "DEGRADED" in run_captiond("status", "--config", config).stdout)
    assert daemon.stop() == 0


@pytest.mark.subprocess
def test_a_model_partly_off_the_gpu_is_reported(tmp_path: Path, originals: Path, emulator: OllamaEmulator,
                                                start_daemon: Callable[..., Daemon]) -> None:
    emulator.vram_fraction = 0.4
    photo = add_fixture(originals, "Canon_PowerShot_S40.jpg")
    daemon = start_daemon(config_for(tmp_path, emulator.url, Listen="127.0.0.1:0"), originals)
    address = address_of(daemon)
    assert wait_for(lambda: bool(sidecar_caption(photo)) and "is degraded" in daemon.log()), daemon.log()
    assert "only 40% of qwen2.5vl:3b is in GPU memory" in daemon.log()
    metrics = httpx.get(f"{address}/metrics", timeout=5).text
    assert re.search(r'captiond_model_vram_fraction\{endpoint="[^"]+"\} 0\.4', metrics)
    assert daemon.stop() == 0


ON_DEGRADED = """
import pathlib, sys, time
marker = pathlib.Path(sys.argv[1])
with marker.open("a") as stream:
    stream.write("start\\n")
release = marker.with_name("release")
deadline = time.monotonic() + 60
while not release.exists() and time.monotonic() < deadline:
    time.sleep(0.05)
"""


def queued(state: Path) -> int:
    connection = sqlite3.connect(f"file:{state / 'captiond.db'}?mode=ro", uri=True, timeout=5)
    try:
        return int(connection.execute("SELECT COUNT(*) FROM files WHERE state = 'pending'").fetchone()[0])
    finally:
        connection.close()


@pytest.mark.subprocess
def test_on_degraded_runs_once_pausing_requests_and_the_daemon_resumes(
        tmp_path: Path, originals: Path, emulator: OllamaEmulator, start_daemon: Callable[..., Daemon]) -> None:
    marker = tmp_path / "restarts"
    emulator.tokens_per_second = 40
    first = [add_fixture(originals, "Canon_PowerShot_S40.jpg", f"before-{index}.jpg") for index in range(3)]
    config = config_for(tmp_path, emulator.url, Listen="127.0.0.1:0", DegradedImages=2,
                        OnDegraded=[sys.executable, "-c", ON_DEGRADED, str(marker)])
    daemon = start_daemon(config, originals)
    address = address_of(daemon)
    assert wait_for(lambda: all(sidecar_caption(photo) for photo in first)), daemon.log()
    emulator.tokens_per_second = 5
    for index in range(2):
        shutil.copyfile(FIXTURES / "PNG_plain.png", originals / f"slow-{index}.png")
    assert wait_for(lambda: marker.exists(), timeout=60), daemon.log()
    asked = len(emulator.generation_requests())
    waiting = originals / "while-restarting.jpg"
    shutil.copyfile(FIXTURES / "Nikon_COOLPIX_P1.jpg", waiting)
    assert wait_for(lambda: queued(tmp_path / "state") >= 1), daemon.log()
    assert len(emulator.generation_requests()) == asked  # nothing is sent while the command runs
    emulator.stop()  # the "restart": the server is away for a moment, then back at full speed
    emulator.tokens_per_second = 40
    emulator.start()
    (tmp_path / "release").touch()
    assert wait_for(lambda: bool(sidecar_caption(waiting)), timeout=60), daemon.log()
    assert httpx.get(f"{address}/healthz", timeout=5).status_code == 200
    assert marker.read_text() == "start\n"
    assert "running Daemon.OnDegraded" in daemon.log()
    assert daemon.stop() == 0
