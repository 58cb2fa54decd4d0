"""Shared helpers of the reliability suite: the figures report, libraries of distinct photos, the daemon as a
real subprocess, fault-injecting emulators, tmpfs mounts and checks of what is on disk.

Nothing here replaces captiond's own code: the daemon and the CLI always run as subprocesses, exiftool is
the real one, the model server is the real HTTP emulator of tests/emulator.py. The only captiond function
used in the test process is `captiond.imaging.prepare_file`, to know in advance which JPEG (and so which
emulator caption) each photo leads to.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import io
import json
import os
import random
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image, ImageDraw

from captiond.imaging import prepare_file
from conftest import FIXTURES, MODEL, SOURCE_ROOT
from emulator import Behaviour, OllamaEmulator, RecordedRequest, expected_caption

LONG = os.environ.get("CAPTIOND_RELIABILITY", "").strip().lower() == "long"
SEED = int(os.environ.get("CAPTIOND_RELIABILITY_SEED", "20251124"))
EXIFTOOL_CONFIG = SOURCE_ROOT / "captiond" / "exiftool.config"
RESOLUTION = 720  # the default Models[].Resolution: the JPEG the daemon sends is prepare_file(path, 720)
LEFTOVER_MARKERS = ("_exiftool_tmp", ".captiond-tmp-")


def scaled(fast: Any, long: Any) -> Any:
    """Return the long variant's value under CAPTIOND_RELIABILITY=long, else the fast one."""
    return long if LONG else fast


def seeded(name: str) -> random.Random:
    """Return a random generator seeded from the suite's seed and a test's name (reproducible per test)."""
    return random.Random(f"{SEED}:{name}")


# ------------------------------------------------------------------------------------------ report
class _Report:
    """The figures the suite proves, collected test by test and written as JSON after every test.

    The file is CAPTIOND_RELIABILITY_REPORT when set, else a file in the temporary directory (so a plain
    test run leaves nothing in the repository). Totals are sums of the per-test figures of the same name.
    """

    SUMMED = ("crashes_survived", "hostile_inputs_tried", "photos", "photos_lost", "originals_changed",
              "daemon_exits_during_faults")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.tests: dict[str, dict[str, Any]] = {}
        configured = os.environ.get("CAPTIOND_RELIABILITY_REPORT", "").strip()
        self.path = Path(configured) if configured else Path(tempfile.gettempdir()) / (
            f"captiond-reliability-{os.getpid()}.json")

    def record(self, request: pytest.FixtureRequest, **figures: Any) -> None:
        """Record a test's figures (merged with those it recorded before) and rewrite the report."""
        doc = (request.function.__doc__ or "").strip()
        with self.lock:
            entry = self.tests.setdefault(request.node.name, {"proves": " ".join(doc.split()), "figures": {}})
            entry["figures"].update(figures)
            self._write()

    def document(self) -> dict[str, Any]:
        totals: dict[str, Any] = dict.fromkeys(self.SUMMED, 0)
        faults: Counter[str] = Counter()
        for entry in self.tests.values():
            figures = entry["figures"]
            for key in self.SUMMED:
                totals[key] += int(figures.get(key, 0))
            faults.update(figures.get("faults_injected", {}))
        totals["faults_injected"] = dict(sorted(faults.items()))
        totals["faults_injected_total"] = sum(faults.values())
        totals["tests_recorded"] = len(self.tests)
        totals["tests_with_problems"] = sorted(name for name, entry in self.tests.items()
                                               if entry["figures"].get("problems"))
        return {"suite": "captiond reliability", "variant": "long" if LONG else "fast", "seed": SEED,
                "started": self.started, "updated": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "totals": totals, "tests": self.tests}

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{self.path.name}.tmp")
        temporary.write_text(json.dumps(self.document(), indent=2, ensure_ascii=False, default=str) + "\n")
        os.replace(temporary, self.path)


REPORT = _Report()


def records_failures(test: Callable[..., None]) -> Callable[..., None]:
    """Decorate a test (taking the `request` fixture) so that a failed assertion is recorded in the report too."""
    @functools.wraps(test)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        request: pytest.FixtureRequest = kwargs["request"]
        try:
            test(*args, **kwargs)
        except AssertionError as error:
            recorded = REPORT.tests.get(request.node.name, {}).get("figures", {}).get("problems")
            if not recorded:
                REPORT.record(request, problems=[str(error)[:1000]])
            raise
    return wrapper


class Problems(list[str]):
    """What a test found wrong: every check is run and recorded (in the report too), then asserted at once."""

    def expect(self, condition: object, message: str) -> None:
        """Record `message` unless condition holds."""
        if not condition:
            self.append(message)

    def assert_none(self, context: str = "") -> None:
        assert not self, "\n".join(self) + (f"\n--- context:\n{context}" if context else "")


# ------------------------------------------------------------------------------------------ photos
_BASE_PICTURE: tuple[Image.Image, bytes] | None = None


def photo_bytes(index: int) -> bytes:
    """Return a distinct small camera JPEG: a fixture's picture and EXIF with a pattern unique to `index`.

    Distinct pixels mean a distinct JPEG sent to the model, so the emulator's caption names the photo
    and requests can be counted per photo.
    """
    global _BASE_PICTURE
    if _BASE_PICTURE is None:
        with Image.open(FIXTURES / "Canon_PowerShot_S40.jpg") as source:
            _BASE_PICTURE = (source.convert("RGB").resize((240, 180)), source.info.get("exif", b""))
    base, exif = _BASE_PICTURE
    image = base.copy()
    draw = ImageDraw.Draw(image)
    for bit in range(12):  # the index as a row of black and white squares, plus a colour band
        colour = (255, 255, 255) if index >> bit & 1 else (0, 0, 0)
        draw.rectangle((bit * 20, 0, bit * 20 + 19, 19), fill=colour)
    draw.rectangle((0, 160, 239, 179), fill=(index * 37 % 256, index * 91 % 256, index * 53 % 256))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90, exif=exif)
    return buffer.getvalue()


def make_photos(folder: Path, count: int, name: str = "IMG", per_folder: int = 40, first: int = 0) -> list[Path]:
    """Write `count` distinct photos (see photo_bytes) as folder/NN/NAME_INDEX.jpg; return their paths."""
    photos = []
    for index in range(first, first + count):
        path = folder / f"{index // per_folder:02d}" / f"{name}_{index:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(photo_bytes(index))
        photos.append(path)
    return photos


def jpeg_for_model(data: bytes) -> bytes:
    """Return the JPEG captiond sends to the model for an image given as bytes (default Resolution)."""
    with tempfile.NamedTemporaryFile(suffix=".jpg") as stream:
        stream.write(data)
        stream.flush()
        return prepare_file(Path(stream.name), RESOLUTION).jpeg


def model_jpeg(photo: Path) -> bytes:
    """Return the JPEG captiond sends to the model for a photo (default Resolution)."""
    return prepare_file(photo, RESOLUTION).jpeg


def image_key(jpeg: bytes) -> str:
    """Return the key the suite uses for one image sent to the model."""
    return hashlib.sha256(jpeg).hexdigest()


def request_key(request: RecordedRequest) -> str:
    """Return the key of the (first) image of a recorded generation request, or '' without one."""
    try:
        images = request.images()
    except ValueError:
        return ""
    return image_key(images[0]) if images else ""


def caption_for(photo: Path) -> str:
    """Return the caption the emulator's default reply gives this photo."""
    return expected_caption(model_jpeg(photo))


def file_digest(path: Path) -> str:
    """Return the sha256 of a file's bytes (without following a symlink at the end)."""
    if path.is_symlink():
        return "symlink->" + os.readlink(path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pixel_digest(path: Path) -> str:
    """Return the sha256 of a decoded image's pixels (Image.tobytes()), or 'undecodable: ...'."""
    try:
        with Image.open(path) as image:
            image.load()
            return hashlib.sha256(image.mode.encode() + repr(image.size).encode() + image.tobytes()).hexdigest()
    except Exception as error:  # noqa: BLE001 - any decoder failure is the finding
        return f"undecodable: {type(error).__name__}: {error}"


def read_anywhere(path: Path | bytes, follow: bool = False) -> bytes | None:
    """Return a file's bytes, also beyond PATH_MAX (walking down by directory descriptors); None if absent."""
    raw = os.fsencode(path)
    directory, name = raw.rsplit(b"/", 1)
    descriptor = os.open(b"/", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in directory.split(b"/"):
            if part:
                child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=descriptor)
                os.close(descriptor)
                descriptor = child
        try:
            handle = os.open(name, os.O_RDONLY | (0 if follow else os.O_NOFOLLOW), dir_fd=descriptor)
        except FileNotFoundError:
            return None
        except OSError as error:
            if error.errno == errno.ENAMETOOLONG:  # no such name can exist
                return None
            raise
        with os.fdopen(handle, "rb") as stream:
            return stream.read()
    finally:
        os.close(descriptor)


def snapshot(folder: Path, *, skip: Callable[[bytes], bool] = lambda name: False) -> dict[bytes, str]:
    """Return {raw relative path: digest} of every file and symlink under a folder.

    Walks by directory descriptors (paths longer than PATH_MAX work) and never follows a symlink: a
    symlink's digest is its target.
    """
    result: dict[bytes, str] = {}
    root = os.fsencode(folder)
    for directory, subdirectories, files, descriptor in os.fwalk(root):
        for name in [*files, *subdirectories]:
            relative = os.path.relpath(os.path.join(directory, name), root)
            if skip(relative):
                continue
            status = os.stat(name, dir_fd=descriptor, follow_symlinks=False)
            if stat.S_ISLNK(status.st_mode):
                result[relative] = "symlink->" + os.fsdecode(os.readlink(name, dir_fd=descriptor))
            elif stat.S_ISREG(status.st_mode):
                try:
                    handle = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=descriptor)
                except OSError as error:
                    result[relative] = f"unreadable: {error.strerror}"
                    continue
                with os.fdopen(handle, "rb") as stream:
                    result[relative] = hashlib.sha256(stream.read()).hexdigest()
    return result


def leftovers(folder: Path) -> list[str]:
    """Return files a write may leave behind when interrupted (exiftool's and captiond's temporaries)."""
    found = []
    for directory, _, files, _ in os.fwalk(os.fsencode(folder)):
        for name in files:
            text = os.fsdecode(name)
            if any(marker in text for marker in LEFTOVER_MARKERS):
                found.append(os.fsdecode(os.path.join(directory, name)))
    return sorted(found)


def read_tag_records(paths: Sequence[Path], *tags: str, timeout: float = 120) -> dict[str, dict[str, Any]]:
    """Return {path: exiftool -j -G1 record} for many files in one real exiftool process (names via -@)."""
    if not paths:
        return {}
    with tempfile.NamedTemporaryFile("wb", suffix=".args", delete=False) as arguments:
        for path in paths:
            raw = os.fsencode(path)
            assert b"\n" not in raw, "names with line breaks cannot go through an exiftool argument file"
            arguments.write(raw + b"\n")
    try:
        process = subprocess.run(
            ["exiftool", "-config", str(EXIFTOOL_CONFIG), "-j", "-G1", "-a", "-charset", "filename=utf8",
             "-Error", "-Warning", *[f"-{tag}" for tag in tags], "-@", arguments.name],
            capture_output=True, timeout=timeout, check=False)
    finally:
        os.unlink(arguments.name)
    records = json.loads(process.stdout.decode("utf-8", "surrogateescape") or "[]")
    return {str(record.get("SourceFile")): record for record in records}


# ------------------------------------------------------------------------------------------ config
def write_daemon_config(directory: Path, url: str, **daemon: Any) -> Path:
    """Write a vision.yml for the emulator; Daemon keys override the suite's defaults."""
    retry = {"Attempts": 3, "Delay": 0.05, "MaxDelay": 0.2, "Total": 20, **daemon.pop("Retry", {})}
    document = {
        "Models": [{"Type": "caption", "Model": MODEL, "Engine": "ollama",
                    "Service": {"Uri": f"{url}/api/generate"}}],
        "Daemon": {"StateDir": str(directory / "state"), "Timeout": 10, "Settle": 0.2, "Rescan": 3600,
                   "SelfTest": False, "Retry": retry, **daemon},
    }
    path = directory / "vision.yml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


# ------------------------------------------------------------------------------------------ processes
def environment(**extra: str) -> dict[str, str]:
    """Return the environment captiond subprocesses run with."""
    return {**os.environ, "PYTHONPATH": str(SOURCE_ROOT), "PYTHONDONTWRITEBYTECODE": "1", **extra}


@dataclass(frozen=True)
class Finished:
    """A finished captiond process, its output decoded leniently (file names may not be UTF-8)."""

    exit_code: int
    stdout: str
    stderr: str
    seconds: float


def captiond(*arguments: str | os.PathLike[str], timeout: float = 120, prefix: Sequence[str] = (),
             env: dict[str, str] | None = None) -> Finished:
    """Run `python -m captiond ARGS` (optionally behind a prefix such as `unshare --user`) with a timeout."""
    started = time.monotonic()
    process = subprocess.run([*prefix, sys.executable, "-m", "captiond", *map(str, arguments)],
                             capture_output=True, timeout=timeout, env=env or environment(),
                             stdin=subprocess.DEVNULL, check=False)
    return Finished(process.returncode, process.stdout.decode("utf-8", "replace"),
                    process.stderr.decode("utf-8", "replace"), time.monotonic() - started)


def status(config: Path, timeout: float = 60) -> dict[str, Any]:
    """Return `captiond status --json` as data."""
    result = captiond("status", "--config", config, "--json", timeout=timeout)
    assert result.exit_code == 0, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def wait_for(condition: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Return True as soon as condition() holds, False after timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


class Daemon:
    """`python -m captiond watch` as a subprocess (optionally behind a prefix), logging to a file."""

    def __init__(self, config: Path, originals: Path, log: Path, prefix: Sequence[str] = (),
                 env: dict[str, str] | None = None) -> None:
        self.log_path = log
        self.log_offset = log.stat().st_size if log.exists() else 0
        with log.open("ab") as output:
            self.process = subprocess.Popen(
                [*prefix, sys.executable, "-m", "captiond", "watch", "--config", str(config), "--originals",
                 str(originals)], stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env or environment())

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        """Return this daemon's part of the log."""
        with self.log_path.open("rb") as stream:
            stream.seek(self.log_offset)
            return stream.read().decode("utf-8", "replace")

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM and wait; return the exit code (kills and fails the wait after timeout)."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        """SIGKILL this process (only this one) and reap it."""
        if self.alive():
            self.process.kill()
        self.process.wait(30)


@contextlib.contextmanager
def daemons() -> Iterator[list[Daemon]]:
    """Collect the daemons a test starts; any still running at the end are killed (by their own pid)."""
    started: list[Daemon] = []
    try:
        yield started
    finally:
        for daemon in started:
            with contextlib.suppress(Exception):
                daemon.kill()


def state_counts(config_dir: Path) -> dict[str, int]:
    """Return the rows per state of the daemon's state database (read-only; {} while it does not exist)."""
    database = config_dir / "state" / "captiond.db"
    if not database.exists():
        return {}
    try:
        connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)
        try:
            return {str(state): int(count) for state, count in
                    connection.execute("SELECT state, COUNT(*) FROM files GROUP BY state")}
        finally:
            connection.close()
    except sqlite3.Error:
        return {}


def state_rows(config_dir: Path) -> dict[str, dict[str, Any]]:
    """Return {path: row} of the state database (read-only); {} while the daemon is still creating it."""
    database = config_dir / "state" / "captiond.db"
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)
    connection.row_factory = sqlite3.Row
    try:
        return {os.fsdecode(bytes(row["path"])): dict(row) for row in connection.execute("SELECT * FROM files")}
    except sqlite3.OperationalError as error:
        if "no such table" in str(error):
            return {}  # the file exists, its schema not yet
        raise
    finally:
        connection.close()


def rows_so_far(config_dir: Path) -> dict[str, dict[str, Any]]:
    """Return state_rows, or {} while the daemon has not made its database (file or table) yet."""
    try:
        return state_rows(config_dir) if (config_dir / "state" / "captiond.db").exists() else {}
    except sqlite3.Error:
        return {}


# ------------------------------------------------------------------------------------------ emulators
class JitteryEmulator(OllamaEmulator):
    """The emulator with a seeded random latency per request (a real server is never perfectly regular)."""

    def __init__(self, latency_range: tuple[float, float], rng: random.Random, **options: Any) -> None:
        self._latency_range = latency_range
        self._latency_rng = rng
        self._latency_lock = threading.Lock()
        super().__init__(**options)

    @property  # type: ignore[override]
    def latency(self) -> float:
        with self._latency_lock:
            return self._latency_rng.uniform(*self._latency_range)

    @latency.setter
    def latency(self, value: float) -> None:  # the base class sets a fixed latency: ignored
        pass


@dataclass
class Fault:
    """One kind of fault, injected with a probability per generation request."""

    name: str
    probability: float
    behaviour: Behaviour


@dataclass
class Injection:
    """One generation request and the fault it got (None: answered normally)."""

    image: str
    fault: str | None
    time: float


class FaultyEmulator(JitteryEmulator):
    """The emulator answering each generation request with a fault drawn at random (seeded) from a menu."""

    def __init__(self, faults: list[Fault], rng: random.Random, latency_range: tuple[float, float] = (0.02, 0.05),
                 **options: Any) -> None:
        super().__init__(latency_range, random.Random(rng.random()), **options)
        self.faults = faults
        self.injections: list[Injection] = []
        self.faults_enabled = True
        self._fault_rng = rng
        self._current = threading.local()
        # Every kind at least once, early (seeded order, a normal answer between two faults), then at random.
        opening: list[Fault | None] = list(faults)
        rng.shuffle(opening)
        self._opening: deque[Fault | None] = deque(item for fault in opening for item in (fault, None))

    def _record(self, request: RecordedRequest) -> None:
        super()._record(request)
        self._current.request = request  # the handler thread asks for its behaviour right after

    def _next_behaviour(self) -> Behaviour | None:
        request: RecordedRequest | None = getattr(self._current, "request", None)
        image = request_key(request) if request is not None else ""
        with self._lock:
            if self._queue:
                return self._queue.popleft()
            chosen: Fault | None = None
            if self.faults_enabled and self._opening:
                chosen = self._opening.popleft()
            elif self.faults_enabled:
                draw = self._fault_rng.random()
                for fault in self.faults:
                    if draw < fault.probability:
                        chosen = fault
                        break
                    draw -= fault.probability
            self.injections.append(Injection(image, chosen.name if chosen else None, time.monotonic()))
            return chosen.behaviour if chosen else self.default_behaviour

    def injected(self) -> Counter[str]:
        """Return how many faults of each kind were injected."""
        with self._lock:
            return Counter(injection.fault for injection in self.injections if injection.fault)

    def per_image(self) -> dict[str, list[str | None]]:
        """Return {image key: [fault or None, ...]} in the order the requests came."""
        result: dict[str, list[str | None]] = {}
        with self._lock:
            for injection in self.injections:
                result.setdefault(injection.image, []).append(injection.fault)
        return result


# ------------------------------------------------------------------------------------------ mounts
def run_command(*command: str | os.PathLike[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run a system command with a timeout; return it (never raises on a non-zero exit)."""
    return subprocess.run([str(part) for part in command], capture_output=True, text=True, timeout=timeout,
                          check=False)


@contextlib.contextmanager
def tmpfs(mount_point: Path, size: str, read_only: bool = False) -> Iterator[Path]:
    """Mount a small tmpfs (skip the test when that is impossible here); always unmounted at the end."""
    mount_point.mkdir(parents=True, exist_ok=True)
    options = f"size={size},mode=0755" + (",ro" if read_only else "")
    mounted = run_command("mount", "-t", "tmpfs", "-o", options, "tmpfs", mount_point)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        if run_command("umount", mount_point).returncode != 0:
            run_command("umount", "-l", mount_point)


def fill_disk(folder: Path) -> Path:
    """Fill the filesystem holding `folder` completely with one file; return it."""
    filler = folder / "filler.bin"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for size in (1 << 20, 1 << 16, 1 << 12, 1 << 9, 1):
            block = b"\0" * size
            with contextlib.suppress(OSError):
                while True:
                    os.write(descriptor, block)
    finally:
        os.close(descriptor)
    return filler


def free_bytes(folder: Path) -> int:
    """Return the bytes still free for ordinary files on folder's filesystem."""
    stats = os.statvfs(folder)
    return stats.f_bavail * stats.f_frsize
