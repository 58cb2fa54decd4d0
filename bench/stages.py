"""CPU per photo by stage of a real `captiond run`: `python bench/stages.py OUTPUT.json -- run ARGS...`.

Runs captiond's own command line in this process with a sampling profiler beside it. Every
`INTERVAL` seconds the sampler takes each thread's CPU time so far (/proc/self/task/TID/schedstat,
in nanoseconds) and its Python stack (sys._current_frames); the CPU a thread used since the last
sample is charged to the stage its stack is in now. Pillow and zlib release the GIL while they
work, and the stack then shows the Python call that entered them (ImageFile.load, Image.save, ...),
so C work is charged correctly too. Unlike cProfile, nothing is slowed down per call: the cost is
the sampler's own thread (reported as "profiler"). exiftool's CPU (a child
process) is taken from getrusage once it has exited.
"""

from __future__ import annotations

import json
import resource
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from types import FrameType

INTERVAL = 0.01

# Stage rules: (file path fragment, function name or "" for any) -> stage. A stack is read from its
# outermost frame inwards: the innermost frame that matches a rule names the stage, unless an
# enclosing frame's stage is final (everything below an exiftool call is that call's work).
FINAL_STAGES = {"exiftool read", "exiftool write / sidecar", "logging / progress", "state", "startup and scan"}
RULES: tuple[tuple[str, str, str], ...] = (
    ("captiond/cli.py", "command_run", "startup and scan"),
    ("captiond/pipeline.py", "run_pipeline", "pipeline (queue, threads)"),
    ("concurrent/futures/thread.py", "_worker", "pipeline (queue, threads)"),
    ("captiond/pipeline.py", "process", "decide, plan, checks"),
    ("captiond/exiftool_process.py", "read", "exiftool read"),
    ("captiond/exiftool_process.py", "apply", "exiftool write / sidecar"),
    ("captiond/atomic.py", "", "exiftool write / sidecar"),
    ("captiond/metadata.py", "read", "exiftool read"),  # before metadata.py was split
    ("captiond/metadata.py", "apply", "exiftool write / sidecar"),
    ("captiond/imaging.py", "", "decode"),
    ("PIL/ImageFile.py", "load", "decode"),
    ("PIL/JpegImagePlugin.py", "load_read", "read file"),  # the decoder's next block, from the file
    ("PIL/Image.py", "open", "decode"),
    ("PIL/Image.py", "draft", "decode"),
    ("PIL/JpegImagePlugin.py", "_save", "encode"),
    ("PIL/ImageFile.py", "_save", "encode"),
    ("PIL/JpegImagePlugin.py", "", "decode"),
    ("PIL/Image.py", "getexif", "decode"),
    ("PIL/Image.py", "thumbnail", "resize"),
    ("PIL/Image.py", "resize", "resize"),
    ("PIL/Image.py", "reduce", "resize"),
    ("PIL/Image.py", "transpose", "rotate"),
    ("PIL/ImageOps.py", "exif_transpose", "rotate"),
    ("PIL/Image.py", "convert", "convert"),
    ("PIL/Image.py", "save", "encode"),
    ("captiond/model.py", "describe", "HTTP"),
    ("base64.py", "", "base64 / JSON"),
    ("json/", "dumps", "base64 / JSON"),
    ("json/encoder.py", "", "base64 / JSON"),
    ("httpx/_content.py", "encode_json", "base64 / JSON"),
    ("captiond/state.py", "", "state"),
    ("captiond/cache.py", "", "state"),
    ("logging/", "", "logging / progress"),
    ("captiond/progress.py", "", "logging / progress"),
    ("captiond/cli.py", "add", "logging / progress"),
    ("captiond/cli.py", "record", "logging / progress"),
    ("captiond/backfill.py", "add", "logging / progress"),  # the run use case and its Summary, once moved there
    ("captiond/backfill.py", "record", "logging / progress"),
    ("captiond/apps.py", "", "logging / progress"),
)
# Threads whose stack matches nothing: their CPU is charged to this.
UNMATCHED = "other"


def stage_of(frame: FrameType | None) -> str:
    """Return the stage a thread's stack is in (see RULES)."""
    frames = []
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back
    stage = UNMATCHED
    for current in reversed(frames):  # outermost first
        path, name = current.f_code.co_filename, current.f_code.co_name
        for fragment, function, rule_stage in RULES:
            if fragment in path and (not function or function == name):
                stage = rule_stage
                break
        if stage in FINAL_STAGES:
            return stage
    return stage


def thread_cpu_seconds(native_id: int) -> float | None:
    """Return a thread's CPU time so far (schedstat: nanoseconds on the CPU), None once it has ended."""
    try:
        with open(f"/proc/self/task/{native_id}/schedstat", encoding="ascii") as schedstat:
            return int(schedstat.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


class StageSampler:
    """Charges each thread's CPU time to the stage its stack is in, sampled every INTERVAL seconds."""

    def __init__(self) -> None:
        self.stages: Counter[str] = Counter()
        self.threads: Counter[str] = Counter()
        self.samples = 0
        self.own_cpu_seconds = 0.0
        self._last: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="stage-sampler", daemon=True)

    def start(self) -> StageSampler:
        for thread in threading.enumerate():  # what threads used before now is no photo's cost
            if thread.native_id is not None:
                self._last[thread.native_id] = thread_cpu_seconds(thread.native_id) or 0.0
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()
        self.stages["profiler"] += self.own_cpu_seconds

    def sample(self) -> None:
        """Charge every thread's CPU since the last sample to the stage it is in now."""
        frames = sys._current_frames()
        own = threading.get_ident()
        for thread in threading.enumerate():
            if thread.ident is None or thread.ident == own or thread.native_id is None:
                continue
            seconds = thread_cpu_seconds(thread.native_id)
            if seconds is None:
                continue
            used = seconds - self._last.get(thread.native_id, 0.0)
            self._last[thread.native_id] = seconds
            if used > 0:
                stage = stage_of(frames.get(thread.ident))
                if stage == UNMATCHED and thread is threading.main_thread():
                    stage = "startup and scan"  # whatever module the command's main line lives in
                self.stages[stage] += used
                self.threads[thread.name.split("_")[0]] += used
        self.samples += 1

    def _loop(self) -> None:
        while not self._stop.wait(INTERVAL):
            self.sample()
        self.own_cpu_seconds = time.thread_time()


def process_cpu_seconds() -> float:
    """Return this process's CPU time so far (all threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str]) -> int:
    output = Path(argv[0])
    arguments = argv[argv.index("--") + 1:]
    from captiond import cli  # imported before the clock starts: a process's start-up is not a photo's cost

    before = process_cpu_seconds()
    started = time.monotonic()
    sampler = StageSampler().start()
    try:
        code = cli.main(arguments)
    finally:
        sampler.stop()
    process = process_cpu_seconds() - before
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    attributed = sum(sampler.stages.values())
    document = {"exit_code": code, "wall_seconds": round(time.monotonic() - started, 3),
                "process_cpu_seconds": round(process, 3), "exiftool_cpu_seconds":
                round(children.ru_utime + children.ru_stime, 3),
                "stage_cpu_seconds": {stage: round(seconds, 4) for stage, seconds in sampler.stages.most_common()},
                "thread_cpu_seconds": {name: round(seconds, 4) for name, seconds in sampler.threads.most_common()},
                "unattributed_cpu_seconds": round(process - attributed, 3), "samples": sampler.samples,
                "interval_seconds": INTERVAL}
    output.write_text(json.dumps(document, indent=2))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
