"""Where `captiond run` writes: the summary alone on stdout; the log and the bar on stderr (the bar only on a tty).

The terminal is a real pseudo-terminal (os.openpty) holding the stderr of a real captiond process.
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

from conftest import SOURCE_ROOT, add_fixture, write_config
from emulator import Hang, OllamaEmulator

pytestmark = pytest.mark.subprocess  # every test here starts `python -m captiond`

PHOTOS = ("photo0.jpg", "photo1.jpg", "photo2.jpg")
SUMMARY_START = "captioned "


@dataclass(frozen=True)
class TerminalRun:
    """A finished captiond whose stderr was a terminal."""

    exit_code: int
    terminal: str
    stdout: str


def _environment() -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("NO_COLOR", "FORCE_COLOR", "TTY_INTERACTIVE", "TTY_COMPATIBLE", "COLUMNS", "LINES")}
    return {**environment, "PYTHONPATH": str(SOURCE_ROOT), "TERM": "xterm-256color"}


def run_with_terminal_stderr(arguments: list[str], stdout: int | IO[bytes]) -> tuple[subprocess.Popen[bytes], str]:
    """Run captiond with stderr on a new pseudo-terminal until it exits; return it and what the terminal got."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    process = subprocess.Popen([sys.executable, "-m", "captiond", *arguments], stdin=subprocess.DEVNULL,
                               stdout=stdout, stderr=slave, env=_environment())
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: every writer of the terminal is gone
                    break
                if not data:
                    break
                chunks.append(data)
            elif process.poll() is not None:
                break  # it exited and everything it wrote has been read
        else:
            process.kill()
            pytest.fail("captiond did not finish within 120 s")
        process.wait(60)
    finally:
        os.close(master)
    return process, b"".join(chunks).decode("utf-8", "replace")


def _library(tmp_path: Path, originals: Path, emulator: OllamaEmulator) -> list[str]:
    for name in PHOTOS:
        add_fixture(originals, "Canon_PowerShot_S40.jpg", name)
    config = write_config(tmp_path, emulator.url)
    return ["run", "--config", str(config), "--originals", str(originals)]


def _assert_only_summary(stdout: str, captioned: int) -> None:
    assert stdout.startswith(f"{SUMMARY_START}{captioned}, skipped 0, failed 0 in "), stdout
    assert "\x1b" not in stdout and "INFO" not in stdout and "captioning" not in stdout, stdout
    assert not any(name in stdout for name in PHOTOS), stdout


def test_run_to_a_file_on_a_terminal_shows_the_bar_and_the_file_holds_only_the_summary(
        tmp_path: Path, originals: Path, emulator: OllamaEmulator) -> None:
    arguments = _library(tmp_path, originals, emulator)
    output = tmp_path / "out.txt"
    with output.open("wb") as stdout:
        process, terminal = run_with_terminal_stderr(arguments, stdout)

    assert process.returncode == 0, terminal
    _assert_only_summary(output.read_text(), 3)
    assert "captioning" in terminal, terminal  # the bar's label
    assert "using qwen2.5vl:3b on" in terminal
    # The bar is the progress: no line per file as well.
    assert not any(name in terminal for name in PHOTOS), terminal


def test_run_piped_into_tee_on_a_terminal_keeps_the_bar_out_of_the_pipe(
        tmp_path: Path, originals: Path, emulator: OllamaEmulator) -> None:
    arguments = _library(tmp_path, originals, emulator)
    process, terminal = run_with_terminal_stderr(arguments, subprocess.PIPE)
    assert process.stdout is not None
    stdout = process.stdout.read().decode()
    process.stdout.close()

    assert process.returncode == 0, terminal
    _assert_only_summary(stdout, 3)
    assert "captioning" in terminal


def test_verbose_on_a_terminal_shows_each_file_above_the_bar(
        tmp_path: Path, originals: Path, emulator: OllamaEmulator) -> None:
    arguments = _library(tmp_path, originals, emulator)
    process, terminal = run_with_terminal_stderr([*arguments, "-v"], subprocess.DEVNULL)
    assert process.returncode == 0, terminal
    assert all(name in terminal for name in PHOTOS), terminal


def test_without_a_terminal_each_file_is_a_log_line_on_stderr(
        tmp_path: Path, originals: Path, emulator: OllamaEmulator) -> None:
    arguments = _library(tmp_path, originals, emulator)
    process = subprocess.run([sys.executable, "-m", "captiond", *arguments], capture_output=True, text=True,
                             timeout=120, env=_environment(), stdin=subprocess.DEVNULL)
    assert process.returncode == 0, process.stderr
    _assert_only_summary(process.stdout, 3)
    for name in PHOTOS:
        assert [line for line in process.stderr.splitlines() if name in line and " INFO " in line], process.stderr
    assert "\x1b" not in process.stderr and "captioning" not in process.stderr


def test_verbose_keeps_other_libraries_at_info_and_very_verbose_shows_their_debug_lines(
        tmp_path: Path, originals: Path, emulator: OllamaEmulator) -> None:
    add_fixture(originals, "PNG.png")  # Pillow logs a DEBUG line per PNG chunk
    add_fixture(originals, "Arbitro.tiff")  # ... and per TIFF tag
    config = write_config(tmp_path, emulator.url)
    arguments = [sys.executable, "-m", "captiond", "run", "--config", str(config), "--originals", str(originals)]

    verbose = subprocess.run([*arguments, "-v"], capture_output=True, text=True, timeout=120, env=_environment(),
                             stdin=subprocess.DEVNULL)
    assert verbose.returncode == 0, verbose.stderr
    debug = [line for line in verbose.stderr.splitlines() if " DEBUG " in line]
    assert debug, verbose.stderr  # captiond's own debug lines are there
    assert "STREAM b'" not in verbose.stderr and "connect_tcp" not in verbose.stderr, verbose.stderr
    assert "HTTP Request: POST" in verbose.stderr  # httpx at INFO

    very_verbose = subprocess.run([*arguments, "-vv", "--force"], capture_output=True, text=True, timeout=120,
                                  env=_environment(), stdin=subprocess.DEVNULL)
    assert very_verbose.returncode == 0, very_verbose.stderr
    assert "connect_tcp" in very_verbose.stderr  # httpcore's DEBUG lines


def _interruptible() -> None:
    """Give the child a default SIGINT: background jobs of a shell (CI scripts) ignore it, and Python keeps that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("signal_number, exit_code, word", [(signal.SIGTERM, 143, "terminated"),
                                                            (signal.SIGINT, 130, "interrupted")])
def test_sigterm_and_ctrl_c_end_the_run_with_the_summary(
        tmp_path: Path, originals: Path, emulator: OllamaEmulator, signal_number: int, exit_code: int,
        word: str) -> None:
    arguments = _library(tmp_path, originals, emulator)
    emulator.default_behaviour = Hang()  # every request waits until the emulator stops
    process = subprocess.Popen([sys.executable, "-m", "captiond", *arguments], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=_environment(),
                               preexec_fn=_interruptible)
    try:
        deadline = time.monotonic() + 60
        while not emulator.active and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
        assert emulator.active, "no request reached the server"
        process.send_signal(signal_number)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()

    assert process.returncode == exit_code, stderr
    assert stdout.decode().startswith(f"{SUMMARY_START}0, skipped 0, failed 0 in "), stdout
    assert "not processed 3 (the run stopped early)" in stdout.decode()
    assert f"captiond: {word}" in stderr.decode()
    assert "Traceback" not in stderr.decode()
    assert not list(originals.glob("*.xmp"))
