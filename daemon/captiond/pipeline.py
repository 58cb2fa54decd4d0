"""Caption files: `Captioner.process(path)` for one file, `run_pipeline` for many at once.

One file reads like a table of contents: read what it holds → decide → prepare the image →
ask the model → clean the answer → plan the tags → write. `captiond run` (a filesystem scan)
and `captiond watch` (the watcher and the state queue) both feed `process`.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .captions import clean_caption
from .config import Config, ModelConfig
from .errors import FileError, ModelSetupError
from .imaging import PreparedImage, is_raw, prepare_bytes, prepare_file
from .metadata import Exiftool, FileMetadata, Provenance, current_caption, plan_caption, writes_embedded
from .model import ModelClient
from .sources import decide

log = logging.getLogger(__name__)

CAPTIONED, SKIPPED, FAILED, WOULD_CAPTION = "captioned", "skipped", "failed", "would caption"


@dataclass(frozen=True)
class RunOptions:
    """What the user asked of this run."""

    source: str
    force: bool = False
    dry_run: bool = False
    count: int | None = None


@dataclass(frozen=True)
class Outcome:
    """What happened to one file."""

    path: Path
    status: str
    reason: str = ""
    caption: str = ""
    transient: bool = False
    crashed: bool = False
    model_seconds: float = 0.0
    wrote_original: bool = False
    stages: Mapping[str, float] = field(default_factory=dict)  # seconds: read, decode, encode, request, write


class Captioner:
    """Holds what processing a file needs: the model client, exiftool and the run's options."""

    def __init__(self, config: Config, model: ModelConfig, client: ModelClient | None, exiftool: Exiftool,
                 options: RunOptions) -> None:
        self.config = config
        self.model = model
        self.client = client
        self.exiftool = exiftool
        self.options = options
        self._slots = threading.BoundedSemaphore(config.daemon.parallel)
        self._count_lock = threading.Lock()
        self._claimed = 0

    def process(self, path: Path, photo_changed: bool = False) -> Outcome:
        """Caption one file if the rules allow it; return what happened (raises only ModelSetupError).

        `photo_changed` says the photo was replaced since we captioned it: our own caption is renewed.
        """
        stages: dict[str, float] = {}
        try:
            started = time.perf_counter()
            metadata = self.exiftool.read(path, self.config.daemon.sidecar_name)
            stages["read"] = time.perf_counter() - started
            decision = decide(current_caption(metadata), self.options.source, self.options.force, photo_changed)
            if not decision.caption:
                return Outcome(path, SKIPPED, decision.reason)
            if not self._claim():
                return Outcome(path, SKIPPED, "--count reached")
            if self.options.dry_run:
                return Outcome(path, WOULD_CAPTION, decision.reason)
            started = time.perf_counter()
            image = self.prepare(metadata)
            stages["decode"] = time.perf_counter() - started - image.encode_seconds
            stages["encode"] = image.encode_seconds
            started = time.perf_counter()
            caption, seconds = self.ask(image)
            stages["request"] = time.perf_counter() - started
            started = time.perf_counter()
            embedded = self.write(metadata, caption)
            stages["write"] = time.perf_counter() - started
            return Outcome(path, CAPTIONED, decision.reason, caption, model_seconds=seconds, wrote_original=embedded,
                           stages=stages)
        except FileError as error:
            error.for_file(str(path))
            return Outcome(path, FAILED, error.reason, transient=error.transient,
                           crashed=bool(getattr(error, "crashed", False)))

    def prepare(self, metadata: FileMetadata) -> PreparedImage:
        """Return the JPEG for the model: decoded from the file, or from a RAW file's largest preview."""
        if is_raw(metadata.path):
            preview = self.exiftool.extract_preview(metadata)
            return prepare_bytes(preview, self.model.resolution, metadata.orientation)
        return prepare_file(metadata.path, self.model.resolution)

    def ask(self, image: PreparedImage) -> tuple[str, float]:
        """Return the cleaned caption for an image and the seconds the model took."""
        assert self.client is not None
        with self._slots:
            answer = self.client.describe(image.jpeg, self.model.prompt, self.model.system)
        return clean_caption(answer.best_text, self.config.daemon.max_length), answer.seconds

    def write(self, metadata: FileMetadata, caption: str) -> bool:
        """Write the caption and its provenance to the sidecar or into the file; return whether into the file."""
        embedded = writes_embedded(metadata.path, self.config.daemon.write)
        provenance = Provenance(self.options.source, self.model.model_id)
        plan = plan_caption(metadata, caption, provenance, embedded)
        self.exiftool.apply(plan, metadata.path if embedded else metadata.sidecar)
        return embedded and not plan.empty

    @property
    def count_reached(self) -> bool:
        """Return whether --count files have been taken on."""
        return self.options.count is not None and self._claimed >= self.options.count

    def _claim(self) -> bool:
        with self._count_lock:
            if self.count_reached:
                return False
            self._claimed += 1
            return True


def run_pipeline(captioner: Captioner, paths: Iterable[Path], on_outcome: Callable[[Outcome], None],
                 stop: threading.Event | None = None) -> None:
    """Process paths with a bounded number of files in flight; raise ModelSetupError if the model goes away.

    Preparing the next images overlaps the model's work on the current ones: there are a few more
    workers than the server's parallel slots, and never more than twice that many files queued.
    """
    stop = stop or threading.Event()
    workers = captioner.config.daemon.parallel + 2
    failure: list[ModelSetupError] = []

    def work(path: Path) -> None:
        if stop.is_set():
            return
        try:
            on_outcome(captioner.process(path))
        except ModelSetupError as error:
            failure.append(error)
            stop.set()

    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="captiond") as executor:
        pending: set[concurrent.futures.Future[None]] = set()
        for path in paths:
            if stop.is_set() or captioner.count_reached:
                break
            pending.add(executor.submit(work, path))
            if len(pending) >= workers * 2:
                done, pending = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
                _raise_unexpected(done)
        done, _ = concurrent.futures.wait(pending)
        _raise_unexpected(done)
    if failure:
        raise failure[0]


def _raise_unexpected(done: set[concurrent.futures.Future[None]]) -> None:
    for future in done:
        future.result()
