"""Start and stop a real llama.cpp `llama-server` (prepared by .ci/llama-server/setup.sh) for tests.

Usage::

    with LlamaServer(tmp_path, "-m", "/models/text-chain.gguf", "--mmproj", "/models/mmproj-tiny.gguf") as server:
        ...  # point captiond at f"{server.url}/v1/chat/completions"

The server runs in the chroot setup.sh made, in a PID namespace of its own (`unshare --pid --kill-child`), so
killing the process group ends the server and anything it started; `unshare` also dies with the test process
(`setpriv --pdeathsig`), so a killed test run leaves no server behind. No file system is mounted: router mode
(`--models-dir`) lists its models and refuses unknown ones without /proc, which it needs only to start a
model's own server process; these tests never ask it to. Each server gets a free port (bound to port 0 first,
then handed over; a lost race is retried on another port).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

LLAMA_DIR = Path(os.environ.get("CAPTIOND_LLAMA_DIR", "/var/cache/captiond-llama"))
ROOT = LLAMA_DIR / "sid"
MODELS = ("text-chain.gguf", "mmproj-tiny.gguf", "mmproj-big.gguf", "mmproj-slow-3.gguf")
TEXT = "/models/text-chain.gguf"
TINY_PROJECTOR = "/models/mmproj-tiny.gguf"
BIG_PROJECTOR = "/models/mmproj-big.gguf"
SLOW_PROJECTOR = "/models/mmproj-slow-3.gguf"
CAPTION = "A small grey cat sits on the wooden table."
READY_SECONDS = 180.0  # loading is fast, but the machine may be very busy


def missing_reason() -> str | None:
    """Return why the real server cannot run here, or None when it can."""
    setup = "run `sudo bash .ci/llama-server/setup.sh` (or `bash .ci/run`)"
    if not (ROOT / "usr/bin/llama-server").is_file():
        return f"no llama-server under {ROOT} (CAPTIOND_LLAMA_DIR): {setup}"
    absent = [name for name in MODELS if not (ROOT / "models" / name).is_file()]
    if absent:
        return f"models missing in {ROOT / 'models'}: {', '.join(absent)}: {setup}"
    if os.geteuid() != 0 and subprocess.run(["sudo", "-n", "true"], capture_output=True, check=False).returncode:
        return "llama-server runs in a chroot: run the tests as root or with password-less sudo"
    return None


def require_server() -> None:
    """Fail (not skip) the calling test when the real server is not prepared: the README's command covers it."""
    reason = missing_reason()
    if reason is not None:
        pytest.fail(f"the real llama-server is not prepared: {reason}")


def free_port() -> int:
    """Return a port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class LlamaServer:
    """One llama-server process on 127.0.0.1 (context manager); `start()` again after `kill()` restarts it."""

    def __init__(self, log_folder: Path, *arguments: str, api_key: str | None = None, wait: bool = True) -> None:
        self.arguments = list(arguments)
        self.api_key = api_key
        self.wait = wait
        self.log_path = log_folder / f"llama-server-{id(self)}.log"
        self.pid_path = log_folder / f"llama-server-{id(self)}.pid"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Return the server's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LlamaServer:
        """Start the server (on a fresh port the first time, the same port after a kill) and wait until it is ready."""
        require_server()
        for _ in range(5):
            self.port = self.port or free_port()
            self._spawn()
            if not self.wait or self.wait_ready():
                return self
            self.kill()
            self.port = 0  # the port was taken meanwhile: try another one
        raise AssertionError(f"llama-server did not start; its log:\n{self.log()}")

    def _spawn(self) -> None:
        # setpriv: unshare dies with the test process, even a SIGKILLed one, and takes the server along.
        command = ["setpriv", "--pdeathsig", "KILL", "unshare", "--pid", "--fork", "--kill-child",
                   "chroot", str(ROOT), "llama-server", "--host", "127.0.0.1", "--port", str(self.port), "-t", "1",
                   *self.arguments]
        if self.api_key:
            command += ["--api-key", self.api_key]
        if os.geteuid() != 0:
            # Through sudo: the shell writes the pid that `exec unshare` keeps, so kill() can reach it.
            self.pid_path.unlink(missing_ok=True)
            command = ["sudo", "-n", "sh", "-c", 'echo $$ > "$0"; exec "$@"', str(self.pid_path), *command]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True)

    def wait_ready(self, seconds: float = READY_SECONDS) -> bool:
        """Wait until /health answers 200; return False if the process ended first."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                return False
            if self.status("/health") == 200:
                return True
            time.sleep(0.2)
        raise AssertionError(f"llama-server was not ready within {seconds:.0f}s; its log:\n{self.log()}")

    def status(self, path: str) -> int | None:
        """Return the HTTP status of GET path, or None when nothing answers."""
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        try:
            with urllib.request.urlopen(urllib.request.Request(self.url + path, headers=headers), timeout=10) as reply:
                return int(reply.status)
        except urllib.error.HTTPError as error:
            return int(error.code)
        except OSError:
            return None

    def kill(self) -> None:
        """Kill the server at once (SIGKILL to its process group; its PID namespace ends with it)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            if os.geteuid() == 0:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
            else:  # unshare runs as root under sudo: kill it there (--kill-child takes the server along)
                pid = self.pid_path.read_text().strip() if self.pid_path.exists() else ""
                if pid.isdigit():  # the shell's own kill: a minimal Debian has no /bin/kill
                    subprocess.run(["sudo", "-n", "sh", "-c", 'kill -KILL "$0"', pid], capture_output=True,
                                   check=False)
        self.process.wait(timeout=60)
        self.process = None
        # Nothing answers on the port any more before kill() returns.
        deadline = time.monotonic() + 60
        while self.status("/health") is not None and time.monotonic() < deadline:
            time.sleep(0.1)

    def log(self) -> str:
        """Return the server's output so far (for failure messages)."""
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()
