"""`captiond watch` as a user runs it: a real watchdog observer, a real daemon process, the Ollama emulator."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from captiond.watcher import start_observer
from conftest import FIXTURES, SOURCE_ROOT, add_fixture, read_tags, run_captiond, tree_hashes, write_config
from emulator import OllamaEmulator

SETTLE = 0.5
PHOTOS = ["Canon_PowerShot_S40.jpg", "Olympus_boilerplate.jpg", "Nikon_COOLPIX_P1.jpg", "Arbitro.tiff",
          "PNG_plain.png", "RIFF.webp", "GIF.gif", "DNG_with_preview.dng"]


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> bool:
    """Return True as soon as condition() holds, False after timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


class Daemon:
    """`python -m captiond watch` in a subprocess, logging to a file."""

    def __init__(self, config: Path, originals: Path, log: Path, *extra: str) -> None:
        self.log_path = log
        environment = {**os.environ, "PYTHONPATH": str(SOURCE_ROOT)}
        with log.open("ab") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "captiond", "watch", "--config", str(config), "--originals", str(originals),
                 *extra], stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=environment)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 20) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    daemons: list[Daemon] = []

    def start(config: Path, originals: Path, *extra: str) -> Daemon:
        daemon = Daemon(config, originals, tmp_path / "daemon.log", *extra)
        daemons.append(daemon)
        return daemon

    yield start
    for daemon in daemons:
        if daemon.process.poll() is None:
            daemon.kill()


def sidecar_caption(photo: Path) -> str:
    sidecar = Path(f"{photo}.xmp")
    return read_tags(sidecar, "XMP-dc:Description").get("XMP-dc:Description", "") if sidecar.exists() else ""


def config_for(tmp_path: Path, url: str, **daemon: object) -> Path:
    return write_config(tmp_path, url, daemon={"Settle": SETTLE, **daemon})


def test_observer_reports_new_files_and_folders_but_not_temporary_names(tmp_path: Path) -> None:
    seen: list[str] = []
    folders: list[str] = []
    observer = start_observer(tmp_path, "inotify", lambda path: seen.append(path.name),
                              lambda path: folders.append(path.name))
    try:
        (tmp_path / ".IMG_1.jpg.Xy12Ab").write_bytes(b"partial")  # rsync
        (tmp_path / "IMG_2.jpg.part").write_bytes(b"partial")  # browsers, Nextcloud
        (tmp_path / "IMG_3.jpg_exiftool_tmp").write_bytes(b"partial")
        (tmp_path / "notes.txt").write_text("not a photo")
        os.rename(tmp_path / ".IMG_1.jpg.Xy12Ab", tmp_path / "IMG_1.jpg")
        outside = tmp_path.parent / f"{tmp_path.name}-album"
        outside.mkdir()
        shutil.copyfile(FIXTURES / "PNG.png", outside / "inside.png")
        os.rename(outside, tmp_path / "album")
        assert wait_for(lambda: "IMG_1.jpg" in seen and "album" in folders, timeout=5)
        time.sleep(0.3)
    finally:
        observer.stop()
        observer.join()
    assert set(seen) <= {"IMG_1.jpg", "inside.png"}  # watchdog may also report a moved-in folder's contents


@pytest.mark.subprocess
def test_watch_captions_photos_as_real_tools_deliver_them(tmp_path: Path, originals: Path,
                                                          emulator: OllamaEmulator,
                                                          start_daemon: Callable[..., Daemon]) -> None:
    existing = add_fixture(originals, "Canon_PowerShot_S40.jpg")
    daemon = start_daemon(config_for(tmp_path, emulator.url), originals)
    assert wait_for(lambda: bool(sidecar_caption(existing))), daemon.log()

    # A slow copy in chunks: never captioned half-written.
    slow = originals / "slow.jpg"
    data = (FIXTURES / "Olympus_boilerplate.jpg").read_bytes()
    with slow.open("wb") as stream:
        for start in range(0, len(data), len(data) // 5 + 1):
            stream.write(data[start:start + len(data) // 5 + 1])
            stream.flush()
            time.sleep(SETTLE * 0.4)
    # rsync: a hidden temporary name, then a rename.
    hidden = originals / ".rsynced.tiff.a1B2c3"
    shutil.copyfile(FIXTURES / "Arbitro.tiff", hidden)
    os.rename(hidden, originals / "rsynced.tiff")
    # A whole folder moved in.
    album = tmp_path / "album"
    album.mkdir()
    for name in ("PNG_plain.png", "RIFF.webp"):
        shutil.copyfile(FIXTURES / name, album / name)
    os.rename(album, originals / "album")

    arrived = [slow, originals / "rsynced.tiff", originals / "album" / "PNG_plain.png",
               originals / "album" / "RIFF.webp"]
    assert wait_for(lambda: all(sidecar_caption(photo) for photo in arrived), timeout=SETTLE + 10), daemon.log()
    assert "truncated" not in daemon.log()
    assert len(emulator.generation_requests()) == 5

    # The photo is replaced by an edited version: our caption is renewed.
    first_caption = sidecar_caption(existing)
    edited = tmp_path / "edited.jpg"
    shutil.copyfile(FIXTURES / "orientation" / "landscape_3.jpg", edited)
    os.replace(edited, existing)
    assert wait_for(lambda: sidecar_caption(existing) not in ("", first_caption), timeout=SETTLE + 10), daemon.log()

    assert daemon.stop() == 0
    assert not [path for path in originals.rglob("*") if path.name.startswith(".captiond-tmp-")]
    status = run_captiond("status", "--config", tmp_path / "vision.yml")
    assert status.exit_code == 0
    assert "5 done" in status.stdout and "0 failed" in status.stdout


@pytest.mark.subprocess
def test_sigkill_mid_backfill_loses_and_repeats_nothing(tmp_path: Path, originals: Path,
                                                        start_daemon: Callable[..., Daemon]) -> None:
    photos = [add_fixture(originals, name, f"{index:02d}-{name}") for index in range(3) for name in PHOTOS]
    before = tree_hashes(originals)
    with OllamaEmulator(latency=0.15) as emulator:
        config = config_for(tmp_path, emulator.url)
        first = start_daemon(config, originals)
        assert wait_for(lambda: sum(Path(f"{photo}.xmp").exists() for photo in photos) >= 6), first.log()
        first.kill()
        done_before_kill = sum(Path(f"{photo}.xmp").exists() for photo in photos)
        asked_before_kill = len(emulator.generation_requests())

        second = start_daemon(config, originals)
        assert wait_for(lambda: all(Path(f"{photo}.xmp").exists() for photo in photos), timeout=60), second.log()
        assert second.stop() == 0

        asked = len(emulator.generation_requests())
    # Every photo was asked about once, plus at most the one request in flight when the daemon died.
    assert asked_before_kill >= done_before_kill
    assert asked <= len(photos) + 1
    assert {name: digest for name, digest in tree_hashes(originals).items() if not name.endswith(".xmp")} == before
    assert not [path for path in originals.rglob(".*")]
    for photo in photos:
        assert sidecar_caption(photo).startswith("A photo with a calm scene")


@pytest.mark.subprocess
def test_model_server_down_for_a_while(tmp_path: Path, originals: Path, start_daemon: Callable[..., Daemon]) -> None:
    server = OllamaEmulator().start()
    config = config_for(tmp_path, server.url)
    server.stop()
    photo = add_fixture(originals, "Canon_PowerShot_S40.jpg")
    daemon = start_daemon(config, originals)
    try:
        assert wait_for(lambda: "pausing until it answers again" in daemon.log(), timeout=15), daemon.log()
        time.sleep(3)
        assert daemon.process.poll() is None
        assert not Path(f"{photo}.xmp").exists()
        server.start()
        assert wait_for(lambda: bool(sidecar_caption(photo)), timeout=30), daemon.log()
        assert daemon.stop() == 0
    finally:
        server.stop()


@pytest.mark.subprocess
def test_health_and_metrics_endpoints(tmp_path: Path, originals: Path, emulator: OllamaEmulator,
                                      start_daemon: Callable[..., Daemon]) -> None:
    photo = add_fixture(originals, "Canon_PowerShot_S40.jpg")
    daemon = start_daemon(config_for(tmp_path, emulator.url, Listen="127.0.0.1:0"), originals)
    assert wait_for(lambda: "serving /healthz" in daemon.log()), daemon.log()
    address = re.search(r"serving /healthz and /metrics on (http://\S+)", daemon.log())
    assert address is not None
    assert wait_for(lambda: bool(sidecar_caption(photo)))
    health = httpx.get(f"{address.group(1)}/healthz", timeout=5)
    metrics = httpx.get(f"{address.group(1)}/metrics", timeout=5)
    assert health.status_code == 200 and health.text.startswith("ok")
    assert 'captiond_files_total{outcome="captioned"} 1.0' in metrics.text
    assert "captiond_model_seconds_bucket" in metrics.text
    assert daemon.stop() == 0


@pytest.mark.subprocess
def test_watch_refuses_a_missing_originals_folder(tmp_path: Path, emulator: OllamaEmulator) -> None:
    result = run_captiond("watch", "--config", config_for(tmp_path, emulator.url), "--originals",
                          tmp_path / "not-mounted")
    assert result.exit_code == 2
    assert "originals folder not found" in result.stderr


@pytest.mark.subprocess
def test_systemd_notifications_and_json_logs(tmp_path: Path, originals: Path, emulator: OllamaEmulator) -> None:
    photo = add_fixture(originals, "Canon_PowerShot_S40.jpg")
    address = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(address))
    listener.settimeout(0.2)
    environment = {**os.environ, "PYTHONPATH": str(SOURCE_ROOT), "NOTIFY_SOCKET": str(address),
                   "WATCHDOG_USEC": "1000000"}
    process = subprocess.Popen([sys.executable, "-m", "captiond", "watch", "--config",
                                str(config_for(tmp_path, emulator.url)), "--originals", str(originals),
                                "--log-format", "json"], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                               env=environment, text=True)
    messages: list[str] = []
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any("WATCHDOG=1" in message and "1 done" in message
                                                      for message in messages):
            with contextlib.suppress(TimeoutError):
                messages.append(listener.recv(4096).decode())
        process.send_signal(signal.SIGTERM)
        _, errors = process.communicate(timeout=20)
    finally:
        listener.close()
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0
    assert messages[0].startswith("READY=1")
    assert any(message.startswith("WATCHDOG=1\nSTATUS=1 done, 0 queued") for message in messages)
    assert sidecar_caption(photo)
    records = [json.loads(line) for line in errors.splitlines() if line.startswith("{")]
    assert any(record["message"].startswith("captioned Canon_PowerShot_S40.jpg") for record in records)
    assert all({"time", "level", "logger", "message"} <= set(record) for record in records)
