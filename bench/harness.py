"""What every benchmark needs: the model emulator, a vision.yml, captiond as a subprocess, memory sampling.

captiond always runs as a user runs it: the `captiond` console script of the project's venv, in its
own process, talking HTTP to the Ollama emulator (tests/emulator.py) on 127.0.0.1.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from PIL import Image

BENCH_DIRECTORY = Path(__file__).resolve().parent
PROJECT_DIRECTORY = BENCH_DIRECTORY.parent
TESTS_DIRECTORY = PROJECT_DIRECTORY / "tests"
CAPTIOND_EXECUTABLE = Path(sys.executable).parent / "captiond"
MODEL_NAME = "qwen2.5vl:3b"

sys.path.insert(0, str(TESTS_DIRECTORY))
import emulator  # noqa: E402  (tests/ is not a package)
from emulator import OllamaEmulator, RecordedRequest  # noqa: E402

_exact_base64_error = emulator._b64_error


def _fast_base64_error(value: object) -> str | None:
    """The emulator's base64 check with a fast path for valid data (same answers, same messages).

    The tests' emulator checks every character in a Python loop: about 5 ms for each 100 kB image,
    spent before the model's latency starts. At a 200 ms latency that alone would add 2.5% to the
    busy ratio, billed to captiond. Valid base64 is now accepted by the C decoder; anything it
    refuses still goes through the exact check, for Ollama's error message.
    """
    if isinstance(value, str):
        try:
            base64.b64decode(value.replace("\r", "").replace("\n", ""), validate=True)
            return None
        except (binascii.Error, ValueError):
            pass
    error: str | None = _exact_base64_error(value)
    return error


emulator._b64_error = _fast_base64_error


def _fast_mostly_red(image: bytes) -> bool:
    """The emulator's "is this the self-test's red disc" look, decoding the JPEG at 1/8 scale (draft mode).

    The tests' emulator decodes every image at full size to make a 16x16 thumbnail of it: about
    5 ms of CPU per request on the cores captiond and the floor share, where a model server on
    another machine (or a GPU) costs captiond's cores nothing. The answer is the same: the check
    looks at 16x16 pixels either way."""
    try:
        with Image.open(io.BytesIO(image)) as opened:
            opened.draft("RGB", (16, 16))
            data = opened.convert("RGB").resize((16, 16)).tobytes()
    except Exception:  # noqa: BLE001 - not an image the emulator can read: answer as for any photo
        return False
    pixels = [tuple(data[index:index + 3]) for index in range(0, len(data), 3)]
    red = sum(1 for r, g, b in pixels if r > 150 and g < 90 and b < 90)
    white = sum(1 for r, g, b in pixels if min(r, g, b) > 200)
    return red >= len(pixels) // 5 and white >= len(pixels) // 5


emulator._mostly_red = _fast_mostly_red
# Ollama (Go's net/http) sends with TCP_NODELAY; the emulator's http.server does not by default, and its
# small streamed chunks then wait for delayed ACKs (~40 ms a request) once a client reuses connections.
emulator._Handler.disable_nagle_algorithm = True


class LeanEmulator(OllamaEmulator):  # type: ignore[misc]  # tests/ is untyped
    """The tests' Ollama emulator, recording each request without its body.

    The tests keep every request body (the base64 image included); over thousands of requests that
    would cost the benchmark process hundreds of megabytes, so only method, path and time are kept.
    """

    def __init__(self, **settings: object) -> None:
        super().__init__(**settings)
        self.handled: list[tuple[float, float]] = []  # per generation request: (arrival, answer sent), monotonic
        self._arrivals = threading.local()

    def _record(self, request: RecordedRequest) -> None:
        self._arrivals.time = request.time
        super()._record(RecordedRequest(request.method, request.path, {}, None, request.time))

    def _release(self) -> None:
        super()._release()
        arrival = getattr(self._arrivals, "time", None)
        if arrival is not None:
            self.handled.append((arrival, time.monotonic()))

    def mean_handler_seconds(self) -> float | None:
        """Mean seconds from a generation request's arrival to its last byte sent: the model's latency plus
        the emulator's own work (parsing, checking, answering), which captiond cannot make shorter."""
        return statistics.fmean(end - arrival for arrival, end in self.handled) if self.handled else None

    def idle_slots(self, slots: int) -> dict[str, float]:
        """How long the server's slots stood idle between the first request's arrival and the last answer:
        idle slot-seconds ÷ slots (the time lost against a server kept busy), and how long the run's end
        took from the last moment all slots were busy to the last answer (the ragged end)."""
        if not self.handled:
            return {}
        events = sorted([(arrival, 1) for arrival, _ in self.handled] + [(end, -1) for _, end in self.handled])
        busy, idle, previous = 0, 0.0, events[0][0]
        last_drop = events[-1][0]
        for moment, change in events:
            idle += max(0, slots - busy) * (moment - previous)
            if busy >= slots > busy + change:
                last_drop = moment
            busy += change
            previous = moment
        return {"span_seconds": round(events[-1][0] - events[0][0], 3), "idle_seconds": round(idle / slots, 3),
                "ragged_end_seconds": round(events[-1][0] - last_drop, 3)}


@contextmanager
def model_server(latency: float, parallel: int) -> Iterator[LeanEmulator]:
    """Run the emulator with a fixed answer latency (seconds) and number of parallel slots."""
    with LeanEmulator(latency=latency, parallel=parallel) as server:
        yield server


# ---------------------------------------------------------------- configuration

def write_config(path: Path, server_url: str, **daemon_settings: object) -> Path:
    """Write a vision.yml pointing captiond at the emulator, with the given Daemon settings.

    The result cache is off unless CacheSize is given: the figures measure model calls, and a cache
    shared between runs would answer them.
    """
    daemon_settings = {"CacheSize": 0, **daemon_settings}
    document = {
        "Models": [{"Type": "caption", "Model": MODEL_NAME, "Engine": "ollama",
                    "Service": {"Uri": f"{server_url}/api/generate"}}],
        "Daemon": {key: str(value) if isinstance(value, Path) else value for key, value in daemon_settings.items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def captiond_environment() -> dict[str, str]:
    """The environment for captiond: ours, minus anything that would pick another config or model."""
    ignored = ("CAPTIOND_CONFIG", "OLLAMA_BASE_URL", "OLLAMA_MODEL", "OLLAMA_API_KEY", "OPENAI_API_KEY",
               "PHOTOPRISM_ORIGINALS_PATH", "STATE_DIRECTORY", "NOTIFY_SOCKET", "WATCHDOG_USEC")
    return {key: value for key, value in os.environ.items() if key not in ignored}


def captiond_supports(command: str, option: str) -> bool:
    """Return whether `captiond COMMAND --help` lists an option (the package is changing under us)."""
    result = subprocess.run([str(CAPTIOND_EXECUTABLE), command, "--help"], capture_output=True, text=True,
                            env=captiond_environment(), check=False)
    return option in result.stdout


# ---------------------------------------------------------------- memory of a running process

def read_status_kilobytes(process_id: int, field_name: str) -> int | None:
    """Return a field of /proc/PID/status in kB (VmRSS, VmHWM), or None once the process is gone."""
    try:
        with open(f"/proc/{process_id}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith(f"{field_name}:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def cpu_seconds(process_id: int) -> float | None:
    """Return the user + system CPU seconds a process has used so far (/proc/PID/stat), None once gone."""
    try:
        text = Path(f"/proc/{process_id}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_process_ids(process_id: int) -> list[int]:
    """Return the direct children of a process (exiftool, for captiond)."""
    try:
        text = Path(f"/proc/{process_id}/task/{process_id}/children").read_text()
    except OSError:
        return []
    return [int(word) for word in text.split()]


class MemorySampler:
    """Samples a process's resident memory (and its children's) every `interval` seconds in a thread."""

    def __init__(self, process_id: int, interval: float = 0.2) -> None:
        self.process_id = process_id
        self.interval = interval
        self.samples: list[tuple[float, int]] = []  # (seconds since start, VmRSS in kB)
        self.peak_kilobytes = 0  # the highest VmHWM seen: the process's own peak, sampled or not
        self.children_peak_kilobytes = 0  # exiftool, for the record
        self.cpu_seconds = 0.0  # the process's own CPU time at the last sample
        self.children_cpu_seconds = 0.0  # its running children's (exiftool's) CPU time at the last sample
        self.cpu_samples: list[tuple[float, float]] = []  # (seconds since start, CPU of process and children)
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> MemorySampler:
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def sample_now(self) -> None:
        """Take one sample (also called right before the process is stopped)."""
        resident = read_status_kilobytes(self.process_id, "VmRSS")
        peak = read_status_kilobytes(self.process_id, "VmHWM")
        if resident is None or peak is None:
            return
        self.samples.append((time.monotonic() - self._started, resident))
        self.peak_kilobytes = max(self.peak_kilobytes, peak)
        children = child_process_ids(self.process_id)
        resident_children = sum(read_status_kilobytes(child, "VmRSS") or 0 for child in children)
        self.children_peak_kilobytes = max(self.children_peak_kilobytes, resident_children)
        own_cpu = cpu_seconds(self.process_id)
        if own_cpu is not None:
            self.cpu_seconds = own_cpu
            self.children_cpu_seconds = max(self.children_cpu_seconds,
                                            sum(cpu_seconds(child) or 0.0 for child in children))
            self.cpu_samples.append((time.monotonic() - self._started, own_cpu + self.children_cpu_seconds))

    def busy_since(self, moment: float, cores: int) -> float | None:
        """Return the share of the cores' time the process and its children used from `moment` (seconds
        since start) to the last sample, or None without two samples in that span."""
        span = [sample for sample in self.cpu_samples if sample[0] >= moment]
        if len(span) < 2 or span[-1][0] <= span[0][0]:
            return None
        return (span[-1][1] - span[0][1]) / ((span[-1][0] - span[0][0]) * cores)

    def resident_around(self, fraction: float, window: float = 0.1) -> float | None:
        """Return the median VmRSS (kB) of the samples within ±window/2 of a fraction of the run.

        Single samples swing by ±10 MB as threads free and take image buffers; a median over a tenth
        of the run says where the level is."""
        if not self.samples:
            return None
        duration = self.samples[-1][0]
        low, high = duration * (fraction - window / 2), duration * (fraction + window / 2)
        chosen = [resident for moment, resident in self.samples if low <= moment <= high]
        return statistics.median(chosen) if chosen else None

    def _loop(self) -> None:
        while True:
            self.sample_now()
            if self._stop.wait(self.interval):
                return


def runnable_threads(process_id: int) -> int | None:
    """Return how many threads of a process and its children are running or waiting for a core (state R)."""
    count = 0
    for owner in [process_id, *child_process_ids(process_id)]:
        try:
            tasks = os.listdir(f"/proc/{owner}/task")
        except OSError:
            if owner == process_id:
                return None
            continue
        for task in tasks:
            try:
                text = Path(f"/proc/{owner}/task/{task}/stat").read_text()
            except OSError:
                continue
            count += text.rsplit(")", 1)[1].split()[0] == "R"
    return count


class RunnableSampler:
    """Counts, every `interval` seconds, the threads of a process (and its children) that could use a core.

    On a shared machine, how busy the cores were depends on the other processes; whether captiond
    had work for every core depends on it much less: a thread that is running or waiting for a core (state R) has
    work, one waiting for the GIL, a lock, exiftool or the model does not."""

    def __init__(self, process_id: int, interval: float = 0.05) -> None:
        self.process_id = process_id
        self.interval = interval
        self.samples: list[tuple[float, int]] = []  # (seconds since start, runnable threads)
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="runnable-sampler", daemon=True)

    def start(self) -> RunnableSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def share_with_work_for(self, cores: int, since: float) -> float | None:
        """Return the share of samples from `since` (seconds since start) with at least `cores` runnable threads."""
        chosen = [runnable for moment, runnable in self.samples if moment >= since]
        return sum(runnable >= cores for runnable in chosen) / len(chosen) if chosen else None

    def mean_since(self, since: float) -> float | None:
        """Return the mean number of runnable threads from `since` (seconds since start)."""
        chosen = [runnable for moment, runnable in self.samples if moment >= since]
        return statistics.fmean(chosen) if chosen else None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            runnable = runnable_threads(self.process_id)
            if runnable is None:
                return
            self.samples.append((time.monotonic() - self._started, runnable))


# ---------------------------------------------------------------- CPU time

@dataclass(frozen=True)
class CpuTimes:
    """CPU seconds used by reaped children (captiond and, through it, exiftool) and by this process
    (the emulator's threads and the benchmark's own sampling)."""

    children: float
    benchmark: float

    @classmethod
    def now(cls) -> CpuTimes:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        itself = resource.getrusage(resource.RUSAGE_SELF)
        return cls(children.ru_utime + children.ru_stime, itself.ru_utime + itself.ru_stime)

    def since(self, earlier: CpuTimes) -> CpuTimes:
        return CpuTimes(self.children - earlier.children, self.benchmark - earlier.benchmark)


def machine_busy_seconds() -> float:
    """Return the CPU seconds all processes of the machine have used since boot (/proc/stat)."""
    with open("/proc/stat", encoding="ascii") as stat:
        fields = [int(value) for value in stat.readline().split()[1:9]]
    user, nice, system, idle, iowait, interrupts, soft_interrupts, steal = fields
    return (user + nice + system + interrupts + soft_interrupts + steal) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class MachineLoad:
    """How much CPU other processes (not the benchmark, captiond or exiftool) used during a measurement.

    Figures taken while something else keeps the cores busy are not comparable; this says so.
    """

    machine_busy: float
    own: CpuTimes
    monotonic: float

    @classmethod
    def now(cls) -> MachineLoad:
        return cls(machine_busy_seconds(), CpuTimes.now(), time.monotonic())

    def others_since(self, earlier: MachineLoad) -> dict[str, float]:
        """Return other processes' CPU seconds since `earlier` and their share of the machine's capacity."""
        own = self.own.since(earlier.own)
        others = max(0.0, self.machine_busy - earlier.machine_busy - own.children - own.benchmark)
        capacity = (self.monotonic - earlier.monotonic) * available_cores()
        return {"other_processes_cpu_seconds": round(others, 2),
                "other_processes_share": round(others / capacity, 3) if capacity > 0 else 0.0}


# ---------------------------------------------------------------- captiond run

@dataclass(frozen=True)
class RunResult:
    """A finished `captiond run`."""

    exit_code: int
    wall_seconds: float
    stdout: str
    log_path: Path
    report: dict[str, Any] | None
    memory: MemorySampler
    runnable: RunnableSampler
    cpu: CpuTimes
    others: dict[str, float]  # CPU used by other processes meanwhile (see MachineLoad)


def run_captiond(arguments: Sequence[str | Path], log_path: Path, report_path: Path | None = None,
                 timeout: float = 3600, sample_interval: float = 0.2, stages_path: Path | None = None) -> RunResult:
    """Run `captiond run ARGS` to its end, sampling its memory; return what it did.

    With `stages_path`, captiond runs under bench/stages.py, which writes its CPU by stage there.
    """
    command = [str(CAPTIOND_EXECUTABLE), "run", *map(str, arguments)]
    if stages_path is not None:
        command = [sys.executable, str(BENCH_DIRECTORY / "stages.py"), str(stages_path), "--", *command[1:]]
    if report_path is not None:
        report_path.unlink(missing_ok=True)
        command += ["--report", str(report_path)]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    load_before = MachineLoad.now()
    started = time.monotonic()
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log_file, stdin=subprocess.DEVNULL,
                                   env=captiond_environment())
        sampler = MemorySampler(process.pid, sample_interval).start()
        runnable = RunnableSampler(process.pid).start()
        try:
            stdout, _ = process.communicate(timeout=timeout)
        finally:
            sampler.stop()
            runnable.stop()
            if process.poll() is None:
                process.kill()
                process.wait()
    wall = time.monotonic() - started
    report = read_json(report_path) if report_path is not None else None
    load_after = MachineLoad.now()
    return RunResult(process.returncode, wall, stdout.decode(errors="replace"), log_path, report, sampler, runnable,
                     load_after.own.since(load_before.own), load_after.others_since(load_before))


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def remove_sidecars(library: Path) -> int:
    """Delete the XMP sidecars an earlier run wrote, so every photo needs a caption again."""
    removed = 0
    for directory, _, names in os.walk(library):
        for name in names:
            if name.endswith(".xmp"):
                os.unlink(os.path.join(directory, name))
                removed += 1
    return removed


# ---------------------------------------------------------------- captiond watch

class WatchProcess:
    """`captiond watch` in a subprocess, logging to a file; stopped with SIGTERM."""

    def __init__(self, config: Path, originals: Path, state_directory: Path, log_path: Path) -> None:
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.started = time.monotonic()
        with log_path.open("wb") as log_file:
            self.process = subprocess.Popen(
                [str(CAPTIOND_EXECUTABLE), "watch", "--config", str(config), "--originals", str(originals),
                 "--state-dir", str(state_directory)],
                stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=captiond_environment())

    @property
    def process_id(self) -> int:
        return self.process.pid

    def log(self) -> str:
        """Return what this process has logged so far."""
        return self.log_path.read_bytes().decode(errors="replace")

    def wait_for_log(self, pattern: str, timeout: float, poll_interval: float = 0.05) -> re.Match[str]:
        """Return the first match of a regular expression in the log; raise if it does not come in time."""
        expression = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            match = expression.search(self.log())
            if match:
                return match
            if self.process.poll() is not None:
                raise RuntimeError(f"captiond watch exited ({self.process.returncode}) before /{pattern}/:\n"
                                   + self.log()[-3000:])
            if time.monotonic() > deadline:
                raise TimeoutError(f"no /{pattern}/ in captiond watch's log after {timeout:.0f}s:\n"
                                   + self.log()[-3000:])
            time.sleep(poll_interval)

    def stop(self, timeout: float = 60) -> int:
        """Send SIGTERM and wait; kill it if it does not stop in time. Return the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def __enter__(self) -> WatchProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def captiond_status(config: Path, state_directory: Path) -> dict[str, Any] | None:
    """Return `captiond status --json` (queue, counts), or None if it cannot say yet."""
    result = subprocess.run([str(CAPTIOND_EXECUTABLE), "status", "--json", "--config", str(config),
                             "--state-dir", str(state_directory)], capture_output=True, text=True,
                            env=captiond_environment(), check=False)
    if result.returncode != 0:
        return None
    try:
        value = json.loads(result.stdout)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


# ---------------------------------------------------------------- small statistics

def median_seconds(action: Callable[[], object], repetitions: int, warmup: int = 1) -> float:
    """Return the median wall time of an action over several repetitions, after warm-up calls."""
    for _ in range(warmup):
        action()
    timings = []
    for _ in range(repetitions):
        started = time.perf_counter()
        action()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def percentile(values: Sequence[float], fraction: float) -> float:
    """Return the nearest-rank percentile of values (fraction 0.95 = p95)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(fraction * len(ordered))))
    return ordered[rank - 1]


def available_cores() -> int:
    """Return the CPU cores this process may run on."""
    return len(os.sched_getaffinity(0))
