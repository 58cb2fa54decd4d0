"""The decode floor, measured like captiond is: one process per core over the same photos, in the same run.

What no captioner can skip for a 12 MP JPEG sent to a model at 720 px: read the file, draft-decode
it (the JPEG decoder scales by 1/2, 1/4 or 1/8 while decoding), downscale it to 720 px and encode
the small JPEG. `floor_run` does exactly that and nothing else, in `cores` processes that split the
photos between them (no GIL, no threads), and measures wall time and each stage's CPU time.
"""

from __future__ import annotations

import io
import multiprocessing
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

from PIL import Image

RESOLUTION = 720  # captiond's default Models[].Resolution
JPEG_QUALITY = 85  # captiond's (imaging.JPEG_QUALITY)
FLOOR_STAGES = ("read file", "decode", "resize", "encode")


@dataclass
class FloorRun:
    """One pass of the floor loop over a set of photos."""

    photos: int
    cores: int
    wall_seconds: float
    stage_cpu_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        return self.photos / self.wall_seconds

    @property
    def cpu_seconds(self) -> float:
        return sum(self.stage_cpu_seconds.values())

    @property
    def busy(self) -> float:
        """The share of the cores' time the loop kept busy."""
        return self.cpu_seconds / (self.wall_seconds * self.cores)

    def stage_ms_per_photo(self) -> dict[str, float]:
        return {stage: round(1000 * seconds / self.photos, 2) for stage, seconds in self.stage_cpu_seconds.items()}

    def as_dict(self) -> dict[str, object]:
        return {"photos": self.photos, "cores": self.cores, "wall_seconds": round(self.wall_seconds, 3),
                "images_per_second": round(self.images_per_second, 2),
                "cpu_ms_per_photo": round(1000 * self.cpu_seconds / self.photos, 2), "busy": round(self.busy, 3),
                "stages_cpu_ms_per_photo": self.stage_ms_per_photo()}


def prepare_once(path: Path, stages: dict[str, float]) -> bytes:
    """Read, draft-decode, downscale and encode one photo; add each stage's CPU seconds to `stages`."""
    clock = time.thread_time
    started = clock()
    data = path.read_bytes()
    read = clock()
    with Image.open(io.BytesIO(data)) as image:
        image.draft("RGB", (RESOLUTION, RESOLUTION))
        image.load()
        decoded = clock()
        image.thumbnail((RESOLUTION, RESOLUTION), Image.Resampling.BICUBIC, reducing_gap=2.0)
        resized = clock()
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    encoded = clock()
    for stage, seconds in zip(FLOOR_STAGES, (read - started, decoded - read, resized - decoded, encoded - resized),
                              strict=True):
        stages[stage] = stages.get(stage, 0.0) + seconds
    return buffer.getvalue()


def _worker(paths: list[Path], start: threading.Barrier, results: Connection) -> None:
    stages: dict[str, float] = {}
    start.wait()
    for path in paths:
        prepare_once(path, stages)
    results.send((time.monotonic(), stages))
    results.close()


def floor_run(photos: list[Path], cores: int) -> FloorRun:
    """Run the floor loop over the photos in `cores` processes; time from the common start to the last end."""
    context = multiprocessing.get_context("fork")
    start = context.Barrier(cores + 1)  # every process is up before the clock starts: start-up is not timed
    pipes, processes = [], []
    for index in range(cores):
        receiver, sender = context.Pipe(duplex=False)
        process = context.Process(target=_worker, args=(photos[index::cores], start, sender), daemon=True)
        process.start()
        sender.close()
        pipes.append(receiver)
        processes.append(process)
    start.wait()
    started = time.monotonic()
    ends, stages = [], {stage: 0.0 for stage in FLOOR_STAGES}
    for receiver in pipes:
        ended, worker_stages = receiver.recv()
        ends.append(ended)
        for stage, seconds in worker_stages.items():
            stages[stage] += seconds
    for process in processes:
        process.join()
    return FloorRun(len(photos), cores, max(ends) - started, stages)
