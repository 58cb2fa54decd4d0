"""The six benchmarks (B1..B6). Each generates or reuses its inputs, runs the real captiond and
returns its measurements against the targets of the issue."""

from __future__ import annotations

import json
import logging
import os
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from floor import FLOOR_STAGES, FloorRun, floor_run
from harness import (
    MemorySampler,
    RunResult,
    WatchProcess,
    available_cores,
    captiond_status,
    median_seconds,
    model_server,
    percentile,
    read_status_kilobytes,
    remove_sidecars,
    run_captiond,
    write_config,
)
from inputs import (
    LibraryRecipe,
    PhotoRecipe,
    heic_photo,
    library_photos,
    photo_library,
    raw_with_preview,
    tiny_library,
)
from model_calls import combined_requests, duplicate_library
from results import BenchmarkResult, Measurement

log = logging.getLogger("bench")

RESOLUTION = 720  # captiond's default Models[].Resolution
TWELVE_MEGAPIXELS = PhotoRecipe(4000, 3000)
THREE_MEGAPIXELS = PhotoRecipe(2000, 1500)
TWO_MEGAPIXELS = PhotoRecipe(1600, 1200, quality=90)
SMALL = PhotoRecipe(640, 480, quality=90)
SCAN_LINE = r"scanned (?P<directory>.+?): (?P<photos>\d+) photos, (?P<queued>\d+) queued, in (?P<seconds>[\d.]+)s"
MEGABYTE = 1024  # kB per MB (VmRSS is in kB)
FLAT_GROWTH_MEGABYTES = 10.0  # "flat": the median RSS around 90% of the run is at most this above that around 20%


@dataclass(frozen=True)
class Settings:
    """Sizes of every benchmark for one mode (full or --quick)."""

    quick: bool
    throughput_photos: int
    busy_photos: dict[int, int]  # Parallel -> photos
    busy_latency: float
    watch_files: int
    watch_rate: float
    watch_settle: float
    rescan_files: int
    rescan_full_files: int
    memory_photos: int
    prepare_repetitions: int
    peer_photos: int  # B9
    repetitions: int  # B1 and B2 runs; the best counts (a shared machine only ever makes them slower)

    @classmethod
    def full(cls) -> Settings:
        return cls(quick=False, throughput_photos=300, busy_photos={1: 100, 4: 200},
                   busy_latency=0.2, watch_files=200, watch_rate=20.0, watch_settle=1.0, rescan_files=100_000,
                   rescan_full_files=100_000, memory_photos=3000, prepare_repetitions=7, peer_photos=100,
                   repetitions=3)

    @classmethod
    def quick_mode(cls) -> Settings:
        return cls(quick=True, throughput_photos=40, busy_photos={1: 20, 4: 40},
                   busy_latency=0.2, watch_files=40, watch_rate=20.0, watch_settle=1.0, rescan_files=10_000,
                   rescan_full_files=100_000, memory_photos=400, prepare_repetitions=3, peer_photos=20,
                   repetitions=1)


@dataclass(frozen=True)
class Folders:
    """bench/out: cached inputs (deterministic, reused) and this run's work files (configs, logs, state)."""

    out: Path

    @property
    def inputs(self) -> Path:
        return self.out / "inputs"

    def work(self, key: str) -> Path:
        folder = self.out / "work" / key
        folder.mkdir(parents=True, exist_ok=True)
        return folder


def megabytes(kilobytes: float | None) -> float | None:
    return None if kilobytes is None else round(kilobytes / MEGABYTE, 1)


def captioning_seconds(run: RunResult) -> float:
    """The seconds captiond spent captioning: its report's own clock (after startup and the scan)."""
    if run.report and isinstance(run.report.get("seconds"), int | float):
        return float(run.report["seconds"])
    return run.wall_seconds


def check_run(run: RunResult, expected: int) -> None:
    """Raise unless captiond captioned exactly the expected number of photos."""
    captioned = run.report.get("captioned") if run.report else None
    if run.exit_code != 0 or (captioned is not None and captioned != expected):
        raise RuntimeError(f"captiond run exited {run.exit_code}, captioned {captioned} of {expected}:\n"
                           f"{run.stdout[-2000:]}\n{run.log_path.read_text(errors='replace')[-2000:]}")


def run_summary(run: RunResult) -> dict[str, Any]:
    return {"exit_code": run.exit_code, "wall_seconds": round(run.wall_seconds, 3), "report": run.report,
            "summary_line": run.stdout.strip().splitlines()[0] if run.stdout.strip() else "",
            "cpu_seconds_captiond_and_exiftool": round(run.cpu.children, 2),
            "cpu_seconds_emulator_and_bench": round(run.cpu.benchmark, 2),
            "cpu_seconds_captiond_sampled": round(run.memory.cpu_seconds, 2),
            "cpu_seconds_exiftool_sampled": round(run.memory.children_cpu_seconds, 2),
            "peak_rss_mb": megabytes(run.memory.peak_kilobytes),
            "exiftool_peak_rss_mb": megabytes(run.memory.children_peak_kilobytes), **run.others}


# ---------------------------------------------------------------- B1 throughput

@dataclass(frozen=True)
class ServedRun:
    """A `captiond run` and what the emulator saw of it."""

    run: RunResult
    requests: int
    max_in_flight: int
    server_seconds: float | None  # mean seconds per request inside the emulator (latency + its own work)
    idle_slots: dict[str, float]  # see LeanEmulator.idle_slots


def serve_and_run(latency: float, parallel: int, work: Path, arguments: list[str | Path],
                  stages_path: Path | None = None, **daemon_settings: object) -> ServedRun:
    """Start the emulator, run `captiond run ARGS` against it with these Daemon settings, stop the emulator.

    With `stages_path`, captiond runs under the stage profiler (bench/stages.py), which writes there."""
    with model_server(latency=latency, parallel=parallel) as server:
        config = write_config(work / "vision.yml", server.url, Parallel=parallel, Write="sidecar", **daemon_settings)
        run = run_captiond(["--config", config, *arguments], work / "run.log", work / "report.json",
                           stages_path=stages_path)
        return ServedRun(run, len(server.generation_requests()), server.max_processing,
                         server.mean_handler_seconds(), server.idle_slots(parallel))


def best_of(runs: list[ServedRun]) -> ServedRun:
    """The run that captioned fastest: on a shared machine, the one least disturbed by other processes."""
    return min(runs, key=lambda served: captioning_seconds(served.run))


def busy_share(run: RunResult, cores: int) -> float:
    """The share of the cores' time captiond and its exiftool kept busy over the run's wall time."""
    return (run.memory.cpu_seconds + run.memory.children_cpu_seconds) / (run.wall_seconds * cores)


def busy_while_captioning(run: RunResult, cores: int) -> float:
    """The same share from the start of the captioning (the run's end minus its report's seconds) to its end:
    without the process's start-up (imports, model check, exiftool's start, the scan)."""
    busy = run.memory.busy_since(run.wall_seconds - captioning_seconds(run), cores)
    return busy if busy is not None else busy_share(run, cores)


def work_for_every_core(run: RunResult, cores: int) -> tuple[float | None, float | None]:
    """While captioning: the share of moments captiond (with exiftool) had a thread ready for every core, and
    the mean number of ready threads (see RunnableSampler)."""
    since = run.wall_seconds - captioning_seconds(run)
    return run.runnable.share_with_work_for(cores, since), run.runnable.mean_since(since)


def stage_profile(stages_path: Path, count: int) -> dict[str, float]:
    """CPU ms per photo by stage of a profiled run (bench/stages.py), exiftool's own process included."""
    document = json.loads(stages_path.read_text())
    stages = {stage: 1000 * seconds / count for stage, seconds in document["stage_cpu_seconds"].items()}
    stages["exiftool process (its reads and writes)"] = 1000 * document["exiftool_cpu_seconds"] / count
    stages["unattributed (threads that ended between samples)"] = (
        1000 * max(0.0, document["unattributed_cpu_seconds"]) / count)
    return {stage: round(value, 2) for stage, value in stages.items() if value >= 0.005}


def stage_table(captiond: dict[str, float], floor: dict[str, float]) -> str:
    """The per-stage table (Markdown): CPU ms per photo of captiond (and its exiftool) and of the floor loop."""
    order = list(floor) + [stage for stage in captiond if stage not in floor]
    rows = ["| stage | captiond | floor |", "| --- | ---: | ---: |"]
    for stage in order:
        ours, theirs = captiond.get(stage), floor.get(stage)
        shown = ["" if value is None else f"{value:.1f}" for value in (ours, theirs)]
        rows.append(f"| {stage} | {shown[0]} | {shown[1]} |")
    rows.append(f"| **CPU per photo** | **{sum(captiond.values()):.1f}** | **{sum(floor.values()):.1f}** |")
    return "\n".join(rows)


def throughput(settings: Settings, folders: Folders) -> BenchmarkResult:
    """B1: images/s of `captiond run` ÷ the floor loop's, same photos, same run (instant model, sidecars)."""
    result = BenchmarkResult("B1", "throughput, instant model")
    count = settings.throughput_photos
    recipe = LibraryRecipe(TWELVE_MEGAPIXELS, count, count, 50)
    library, built = photo_library(folders.inputs / f"photos-12mp-{count}", recipe)
    photos = library_photos(library, recipe)
    for photo in photos:  # warm the page cache, for the floor as for captiond
        photo.read_bytes()
    cores = available_cores()
    work = folders.work("B1")
    floors: list[FloorRun] = []
    runs: list[ServedRun] = []
    for _ in range(settings.repetitions):  # interleaved: the machine's load falls on both alike
        floors.append(floor_run(photos, cores))
        remove_sidecars(library)
        runs.append(serve_and_run(0.0, 4, work, ["--originals", library]))
        check_run(runs[-1].run, count)
    remove_sidecars(library)
    stages_path = work / "stages.json"
    profiled = serve_and_run(0.0, 4, work, ["--originals", library], stages_path=stages_path)
    check_run(profiled.run, count)
    ratios = [count / captioning_seconds(served.run) / floor.images_per_second
              for served, floor in zip(runs, floors, strict=True)]
    ratio = statistics.median(ratios)
    best = best_of(runs)
    best_floor = max(floors, key=lambda floor: floor.images_per_second)
    rate = count / captioning_seconds(best.run)
    busy = [busy_while_captioning(served.run, cores) for served in runs]
    busy_wall = [busy_share(served.run, cores) for served in runs]
    ready = [work_for_every_core(served.run, cores) for served in runs]
    floor_stages = {stage: round(statistics.fmean(floor.stage_ms_per_photo()[stage] for floor in floors), 2)
                    for stage in FLOOR_STAGES}
    captiond_stages = stage_profile(stages_path, count)
    captiond_cpu_ms = 1000 * (best.run.memory.cpu_seconds + best.run.memory.children_cpu_seconds) / count
    result.details = {
        "photos": count, "photo": "4000x3000 JPEG q92, ~3.7 MB", "inputs_generated_now": built, "cores": cores,
        "ratio_to_floor_median": round(ratio, 3), "ratio_to_floor_every_pair": [round(value, 3) for value in ratios],
        "images_per_second_every_run": [round(count / captioning_seconds(served.run), 2) for served in runs],
        "images_per_second_wall_every_run": [round(count / served.run.wall_seconds, 2) for served in runs],
        "floor_every_run": [floor.as_dict() for floor in floors],
        "busy_while_captioning_every_run": [round(value, 3) for value in busy],
        "busy_over_wall_time_every_run": [round(value, 3) for value in busy_wall],
        "work_for_every_core_every_run": [None if share is None else round(share, 3) for share, _ in ready],
        "mean_ready_threads_every_run": [None if mean is None else round(mean, 2) for _, mean in ready],
        "cpu_ms_per_photo_best_run": round(captiond_cpu_ms, 1),
        "cpu_ms_per_photo_emulator_and_bench": round(1000 * best.run.cpu.benchmark / count, 1),
        "stages_cpu_ms_per_photo": {"captiond": captiond_stages, "floor": floor_stages},
        "stage_table": stage_table(captiond_stages, floor_stages),
        "profiled_run": run_summary(profiled.run),
        "stages_ms_wall_in_a_worker": (best.run.report or {}).get("stages_ms"),
        "requests": best.requests, "max_requests_in_flight": best.max_in_flight, "best_run": run_summary(best.run)}
    result.measurements.append(Measurement(
        "B1 throughput ÷ floor (same photos, same run)", round(ratio, 3),
        f"{ratio:.2f} (best {rate:.1f} img/s; floor best {best_floor.images_per_second:.1f} img/s)", "≥ 0.80",
        ratio >= 0.8,
        f"median of {len(ratios)} interleaved pairs ({', '.join(f'{value:.2f}' for value in ratios)}); floor = "
        f"{cores} processes reading, draft-decoding, downscaling and encoding the same {count} photos"))
    result.measurements.append(Measurement(
        "B1 cores busy, instant model", round(max(busy), 3),
        f"captiond {max(busy):.0%} (floor {max(floor.busy for floor in floors):.0%})", "≥ 95%", max(busy) >= 0.95,
        f"CPU of captiond and its exiftool ÷ (time × cores) while captioning, best of {len(busy)} runs (over the "
        f"whole wall time, start-up included: {max(busy_wall):.0%}); the floor's likewise"))
    shares = [share for share, _ in ready if share is not None]
    if shares:
        result.measurements.append(Measurement(
            "B1 work ready for every core", round(statistics.median(shares), 3),
            f"{statistics.median(shares):.0%} of the time", "for the record", None,
            f"share of moments (every 50 ms, while captioning) when captiond and its exiftool had at least {cores} "
            "threads running or waiting for a core: what keeps the cores busy when no other process wants them; "
            "median of the runs"))
    floor_cpu_ms = sum(floor_stages.values())
    result.measurements.append(Measurement(
        "B1 CPU per photo: floor ÷ captiond", round(floor_cpu_ms / captiond_cpu_ms, 3),
        f"{floor_cpu_ms:.1f} ÷ {captiond_cpu_ms:.1f} ms = {floor_cpu_ms / captiond_cpu_ms:.2f}", "for the record",
        None, f"the throughput ratio fully busy cores would give (captiond with its exiftool, best run; "
        f"{sum(captiond_stages.values()):.1f} ms in the profiled run, by stage in the table below); the emulator "
        f"used {1000 * best.run.cpu.benchmark / count:.1f} ms per photo of the same cores"))
    return result


# ---------------------------------------------------------------- B2 model-busy ratio

def startup_seconds(work: Path, latency: float, parallel: int) -> float:
    """Wall time of `captiond run` on an empty library: start, model check, exiftool, scan, exit."""
    empty = work / "empty-library"
    empty.mkdir(exist_ok=True)
    return statistics.median(serve_and_run(latency, parallel, work, ["--originals", empty]).run.wall_seconds
                             for _ in range(3))


def busy_ratio(settings: Settings, folders: Folders) -> BenchmarkResult:
    """B2: wall time ÷ ideal (N × latency ÷ Parallel) with a 200 ms model, Parallel 1 and 4."""
    result = BenchmarkResult("B2", "model-busy ratio, 200 ms model")
    largest = max(settings.busy_photos.values())
    per_folder = 10
    recipe = LibraryRecipe(THREE_MEGAPIXELS, largest, largest, per_folder)
    library, built = photo_library(folders.inputs / f"photos-3mp-{largest}", recipe)
    latency = settings.busy_latency
    result.details = {"photo": "2000x1500 JPEG q92 (3 MP)", "latency_seconds": latency,
                      "inputs_generated_now": built}
    targets = {1: 1.03, 4: 1.05}
    for parallel, count in sorted(settings.busy_photos.items()):
        work = folders.work(f"B2-P{parallel}")
        albums = [f"album-{index:04d}" for index in range(count // per_folder)]
        startup = startup_seconds(work, latency, parallel)
        runs = []
        for _ in range(settings.repetitions):
            remove_sidecars(library)
            runs.append(serve_and_run(latency, parallel, work, ["--originals", library, *albums]))
            check_run(runs[-1].run, count)
        best = best_of(runs)
        ideal = count * latency / parallel
        seconds = captioning_seconds(best.run)
        ratio = seconds / ideal
        wall_ratio = (best.run.wall_seconds - startup) / ideal
        server = best.server_seconds or latency
        result.details[f"P{parallel}"] = {
            "photos": count, "ideal_seconds": round(ideal, 3), "captioning_seconds": round(seconds, 3),
            "ratio": round(ratio, 4), "startup_seconds": round(startup, 3),
            "wall_minus_startup_ratio": round(wall_ratio, 4), "max_requests_in_flight": best.max_in_flight,
            "emulator_ms_per_request": round(server * 1000, 2),
            "ratio_against_emulator_time": round(seconds / (count * server / parallel), 4),
            "server_slots": best.idle_slots,
            "outside_first_request_to_last_answer_seconds": round(seconds - best.idle_slots.get("span_seconds", 0), 3),
            "ratio_every_run": [round(captioning_seconds(served.run) / ideal, 4) for served in runs],
            "best_run": run_summary(best.run)}
        result.measurements.append(Measurement(
            f"B2 busy ratio P{parallel} (N={count})", round(ratio, 4),
            f"{seconds:.2f} s ÷ {ideal:.1f} s = {ratio:.3f}", f"≤ {targets[parallel]:.2f}",
            ratio <= targets[parallel],
            f"best of {len(runs)}; wall − startup ({startup:.2f} s) gives {wall_ratio:.3f}; the emulator took "
            f"{server * 1000:.1f} ms per request (not {latency * 1000:.0f}), against which the ratio is "
            f"{seconds / (count * server / parallel):.3f}; slots idle {best.idle_slots.get('idle_seconds', 0):.2f} s "
            f"(ragged end {best.idle_slots.get('ragged_end_seconds', 0):.2f} s) between first request and last answer, "
            f"{seconds - best.idle_slots.get('span_seconds', 0):.2f} s before the first request and after the last"
            + ("; --quick: too few photos for the start and end of the run to be amortised" if settings.quick
               else "")))
    return result


# ---------------------------------------------------------------- B3 watch latency

def drop_file(source: Path, destination: Path) -> float:
    """Deliver a photo as rsync does (hidden temporary name, then rename); return the moment it landed."""
    temporary = destination.with_name(f".{destination.name}.x7Tq2b")
    shutil.copyfile(source, temporary)
    os.rename(temporary, destination)
    return time.monotonic()


def drop_and_wait(sources: list[Path], originals: Path, rate: float, timeout: float) -> dict[str, float]:
    """Drop photos at `rate` per second and poll every 10 ms for their sidecars; return seconds from
    each photo landing to its sidecar appearing (photos whose sidecar never came are left out)."""
    started = time.monotonic()
    landed: dict[Path, float] = {}
    outstanding: dict[Path, Path] = {}
    delays: dict[str, float] = {}
    next_index = 0
    while next_index < len(sources) or outstanding:
        now = time.monotonic()
        if next_index < len(sources) and now >= started + next_index / rate:
            destination = originals / f"IMG_{next_index:06d}.jpg"
            landed[destination] = drop_file(sources[next_index], destination)
            outstanding[Path(f"{destination}.xmp")] = destination
            next_index += 1
            continue
        for sidecar, photo in list(outstanding.items()):
            if os.path.exists(sidecar):
                delays[photo.name] = time.monotonic() - landed[photo]
                del outstanding[sidecar]
        if next_index >= len(sources) and now - started > len(sources) / rate + timeout:
            break
        time.sleep(0.01)
    return delays


def watch_latency(settings: Settings, folders: Folders) -> BenchmarkResult:
    """B3: seconds from a photo landing to its sidecar, minus Settle, at 20 photos/s (p50, p95)."""
    result = BenchmarkResult("B3", "watch latency")
    count = settings.watch_files
    recipe = LibraryRecipe(SMALL, count, count, count)
    pool, built = photo_library(folders.inputs / f"photos-small-{count}", recipe)
    work = folders.work("B3")
    originals, state = work / "originals", work / "state"
    for folder in (originals, state):
        shutil.rmtree(folder, ignore_errors=True)
    originals.mkdir()
    with model_server(latency=0.0, parallel=4) as server:
        config = write_config(work / "vision.yml", server.url, Parallel=4, Settle=settings.watch_settle,
                              Write="sidecar")
        with WatchProcess(config, originals, state, work / "watch.log") as daemon:
            daemon.wait_for_log(SCAN_LINE, timeout=60)
            delays = drop_and_wait(library_photos(pool, recipe), originals, settings.watch_rate, timeout=30)
            exit_code = daemon.stop()
    latencies = sorted(delay - settings.watch_settle for delay in delays.values())
    if not latencies:
        raise RuntimeError(f"no sidecar appeared; captiond watch logged:\n{(work / 'watch.log').read_text()[-3000:]}")
    missing = count - len(latencies)
    p50, p95 = percentile(latencies, 0.5), percentile(latencies, 0.95)
    result.details = {"files": count, "rate_per_second": settings.watch_rate, "settle_seconds": settings.watch_settle,
                      "photo": "640x480 JPEG", "parallel": 4, "inputs_generated_now": bool(built),
                      "missing_sidecars": missing, "p50_seconds": round(p50, 3), "p95_seconds": round(p95, 3),
                      "max_seconds": round(latencies[-1], 3), "min_seconds": round(latencies[0], 3),
                      "mean_seconds": round(statistics.fmean(latencies), 3), "daemon_exit_code": exit_code}
    result.measurements.append(Measurement(
        "B3 watch latency over Settle, p50 / p95", round(p95, 3),
        f"p50 {p50:.2f} s, p95 {p95:.2f} s (max {latencies[-1]:.2f})", "p95 ≤ 1 s", p95 <= 1.0 and missing == 0,
        f"{missing} sidecars never appeared" if missing else ""))
    return result


# ---------------------------------------------------------------- B4 rescan

def populate_state(library: Path, state: Path, config: Path, count: int, log_path: Path) -> dict[str, Any]:
    """Run `captiond watch` until every photo is done (queue 0); a cached state makes this a quick rescan."""
    started = time.monotonic()
    with WatchProcess(config, library, state, log_path) as daemon:
        first_scan = daemon.wait_for_log(SCAN_LINE, timeout=600)
        last_report = 0.0
        while True:
            status = captiond_status(config, state)
            counts = (status or {}).get("counts") or {}
            if status and status.get("queue") == 0 and counts.get("done", 0) + counts.get("failed", 0) >= count:
                break
            if time.monotonic() - last_report > 60:
                log.info("  B4: captioning the %d-photo library once (cached afterwards): %s done",
                         count, counts.get("done", "?"))
                last_report = time.monotonic()
            if daemon.process.poll() is not None:
                raise RuntimeError(f"captiond watch exited while populating:\n{daemon.log()[-3000:]}")
            time.sleep(1 if counts.get("pending", 0) < 500 else 10)  # each `captiond status` costs ~0.3 s CPU
        daemon.stop()
    return {"seconds": round(time.monotonic() - started, 1), "queued_at_start": int(first_scan["queued"]),
            "counts": counts}


def measure_rescan(library: Path, state: Path, config: Path, log_path: Path) -> dict[str, Any]:
    """Start `captiond watch` on the captioned library; return its first full scan's time and its peak RSS."""
    with WatchProcess(config, library, state, log_path) as daemon:
        scan = daemon.wait_for_log(SCAN_LINE, timeout=600, poll_interval=0.02)
        seen = time.monotonic() - daemon.started
        time.sleep(0.5)  # let anything the scan started settle before reading the peak
        peak = read_status_kilobytes(daemon.process_id, "VmHWM")
        resident = read_status_kilobytes(daemon.process_id, "VmRSS")
        exit_code = daemon.stop()
    return {"scan_seconds": float(scan["seconds"]), "photos": int(scan["photos"]), "queued": int(scan["queued"]),
            "start_to_scan_line_seconds": round(seen, 2), "peak_rss_mb": megabytes(peak),
            "rss_after_scan_mb": megabytes(resident), "exit_code": exit_code}


def rescan(settings: Settings, folders: Folders) -> BenchmarkResult:
    """B4: first full scan of an unchanged, fully captioned library by a restarted `captiond watch`."""
    result = BenchmarkResult("B4", "rescan of an unchanged library")
    count = settings.rescan_files
    library, built = tiny_library(folders.inputs / f"tiny-{count}", count)
    state = folders.inputs / f"tiny-{count}.state"  # cached with the library: it names the library's paths
    if built:
        shutil.rmtree(state, ignore_errors=True)
    work = folders.work("B4")
    with model_server(latency=0.0, parallel=4) as server:
        config = write_config(work / "vision.yml", server.url, Parallel=4, Write="sidecar", StateDir=state)
        population = populate_state(library, state, config, count, work / "populate.log")
        measured = measure_rescan(library, state, config, work / "rescan.log")
    scale = settings.rescan_full_files / count
    seconds, peak = measured["scan_seconds"], measured["peak_rss_mb"]
    label = f"(measured on {count:,} files, ×{scale:g} linear)" if scale != 1 else f"({count:,} files)"
    result.details = {"files": count, "folders": -(-count // 100), "photo": "160x120 JPEG copies",
                      "library_generated_now": built, "population": population, "rescan": measured,
                      "extrapolated_to": settings.rescan_full_files if scale != 1 else None}
    problem = "" if measured["queued"] == 0 else f"the rescan queued {measured['queued']} photos (expected 0)"
    result.measurements.append(Measurement(
        f"B4 rescan seconds {label}", round(seconds * scale, 2),
        f"{seconds * scale:.1f} s" + (f" (measured {seconds:.1f} s)" if scale != 1 else ""), "≤ 5 s",
        seconds * scale <= 5.0 and not problem, problem))
    result.measurements.append(Measurement(
        f"B4 rescan peak RSS ({count:,} files)", peak, f"{peak:.0f} MB", "≤ 150 MB",
        peak is not None and peak <= 150, "not extrapolated: measured at 10k files only" if scale != 1 else ""))
    return result


# ---------------------------------------------------------------- B5 memory over a backfill

def memory(settings: Settings, folders: Folders) -> BenchmarkResult:
    """B5: peak RSS of `captiond run` over a long backfill, and whether it grows (20% -> 90% of the run)."""
    result = BenchmarkResult("B5", "memory over a backfill")
    count = settings.memory_photos
    recipe = LibraryRecipe(TWO_MEGAPIXELS, count, min(count, 100), 100)
    library, built = photo_library(folders.inputs / f"photos-2mp-{count}", recipe)
    remove_sidecars(library)
    work = folders.work("B5")
    with model_server(latency=0.0, parallel=4) as server:
        config = write_config(work / "vision.yml", server.url, Parallel=4, Write="sidecar")
        run = run_captiond(["--config", config, "--originals", library], work / "run.log", work / "report.json")
    check_run(run, count)
    sampler: MemorySampler = run.memory
    peak = megabytes(sampler.peak_kilobytes) or 0.0
    at_20, at_90 = megabytes(sampler.resident_around(0.2)), megabytes(sampler.resident_around(0.9))
    growth = round((at_90 or 0.0) - (at_20 or 0.0), 1)
    flat = growth <= FLAT_GROWTH_MEGABYTES
    result.details = {"photos": count, "photo": "1600x1200 JPEG q90 (1.9 MP), 100 distinct", "parallel": 4,
                      "inputs_generated_now": built, "peak_rss_mb": peak, "rss_at_20_percent_mb": at_20,
                      "rss_at_90_percent_mb": at_90, "growth_mb": growth,
                      "samples": [(round(moment, 1), megabytes(kilobytes)) for moment, kilobytes in sampler.samples],
                      "run": run_summary(run)}
    result.measurements.append(Measurement(f"B5 peak RSS over {count:,}-photo backfill", peak, f"{peak:.0f} MB",
                                           "≤ 200 MB", peak <= 200))
    result.measurements.append(Measurement(
        "B5 RSS growth, 20% → 90% of the run", growth, f"{growth:+.1f} MB ({at_20:.0f} → {at_90:.0f} MB)",
        f"flat (≤ {FLAT_GROWTH_MEGABYTES:.0f} MB)", flat, "medians of the samples in 10% windows around 20% and 90%"))
    return result


# ---------------------------------------------------------------- B6 preparing HEIC and RAW

def prepare_times(settings: Settings, folders: Folders) -> BenchmarkResult:
    """B6: captiond's own functions, in this process: a 12 MP HEIC, a RAW with a 12 MP preview, a 12 MP JPEG."""
    from captiond.exiftool_process import Exiftool
    from captiond.imaging import best_preview, prepare_bytes, prepare_file

    result = BenchmarkResult("B6", "preparing HEIC and RAW")
    heic, heic_built = heic_photo(folders.inputs / "heic-12mp", TWELVE_MEGAPIXELS)
    raw, raw_built = raw_with_preview(folders.inputs / "dng-12mp-preview", TWELVE_MEGAPIXELS)
    jpeg_recipe = LibraryRecipe(TWELVE_MEGAPIXELS, 1, 1, 1)
    jpeg_library, _ = photo_library(folders.inputs / "photos-12mp-1", jpeg_recipe)
    jpeg = library_photos(jpeg_library, jpeg_recipe)[0]
    repetitions = settings.prepare_repetitions
    timings: dict[str, float] = {}
    timings["heic_prepare"] = median_seconds(lambda: prepare_file(heic, RESOLUTION), repetitions)
    timings["jpeg_prepare"] = median_seconds(lambda: prepare_file(jpeg, RESOLUTION), repetitions)
    with Exiftool() as exiftool:
        metadata = exiftool.read(raw)
        preview = best_preview(exiftool.extract_previews(metadata))
        timings["raw_read"] = median_seconds(lambda: exiftool.read(raw), repetitions)
        timings["raw_extract_preview"] = median_seconds(
            lambda: best_preview(exiftool.extract_previews(metadata)), repetitions)
        timings["raw_prepare_preview"] = median_seconds(
            lambda: prepare_bytes(preview, RESOLUTION, metadata.orientation), repetitions)

        def whole_raw() -> None:
            read = exiftool.read(raw)
            prepare_bytes(best_preview(exiftool.extract_previews(read)), RESOLUTION, read.orientation)

        timings["raw_total"] = median_seconds(whole_raw, repetitions)
    milliseconds = {name: round(seconds * 1000, 1) for name, seconds in timings.items()}
    result.details = {"repetitions": repetitions, "median_ms": milliseconds,
                      "heic": {"size": "4000x3000", "bytes": heic.stat().st_size, "generated_now": heic_built},
                      "raw": {"file": "tests/fixtures/DNG_with_preview.dng with a 4000x3000 PreviewImage",
                              "bytes": raw.stat().st_size, "preview_bytes": len(preview), "generated_now": raw_built},
                      "jpeg": {"size": "4000x3000", "bytes": jpeg.stat().st_size}}
    result.measurements.append(Measurement("B6 prepare 12 MP HEIC (median)", milliseconds["heic_prepare"],
                                           f"{milliseconds['heic_prepare']:.0f} ms", "for the record", None))
    result.measurements.append(Measurement(
        "B6 prepare RAW, 12 MP preview (median)", milliseconds["raw_total"],
        f"{milliseconds['raw_total']:.0f} ms (read {milliseconds['raw_read']:.0f} + extract "
        f"{milliseconds['raw_extract_preview']:.0f} + prepare {milliseconds['raw_prepare_preview']:.0f})",
        "for the record", None))
    result.measurements.append(Measurement("B6 prepare 12 MP JPEG (median, comparison)", milliseconds["jpeg_prepare"],
                                           f"{milliseconds['jpeg_prepare']:.0f} ms", "for the record", None))
    return result


# ---------------------------------------------------------------- B9 photo-tagger side by side

def peer_side_by_side(settings: Settings, folders: Folders) -> BenchmarkResult:
    """B9: photo-tagger 0.10.1 against captiond, one worker each, same photos, instant model (when installed)."""
    import peer  # answers tool calls in the emulator: only when this figure runs

    result = BenchmarkResult("B9", "photo-tagger side by side, one worker")
    if not peer.peer_installed():
        result.measurements.append(Measurement(
            "B9 photo-tagger ÷ captiond, wall time", None, "not installed", "≥ 5", None,
            f"no photo-tagger at {peer.PEER_ROOT} (root: bash bench/photo_tagger_setup.sh)"))
        return result
    count = settings.peer_photos
    recipe = LibraryRecipe(TWELVE_MEGAPIXELS, settings.throughput_photos, settings.throughput_photos, 50)
    library, _ = photo_library(folders.inputs / f"photos-12mp-{settings.throughput_photos}", recipe)
    photos = library_photos(library, recipe)[:count]
    albums = sorted({photo.parent.name for photo in photos})
    work = folders.work("B9")
    remove_sidecars(library)
    ours = serve_and_run(0.0, 1, work, ["--originals", library, *albums, "--count", str(count)])
    check_run(ours.run, count)
    theirs = peer.run_peer(photos, work / "photo-tagger.log")
    remove_sidecars(library)
    ratio = theirs["wall_seconds"] / ours.run.wall_seconds
    our_cpu = ours.run.memory.cpu_seconds + ours.run.memory.children_cpu_seconds
    result.details = {"photos": count, "captiond": run_summary(ours.run), "photo_tagger": theirs,
                      "ratio_wall": round(ratio, 2),
                      "cpu_ms_per_photo": {"captiond": round(1000 * our_cpu / count, 1),
                                           "photo_tagger": round(1000 * theirs["cpu_seconds_sampled"] / count, 1)}}
    result.measurements.append(Measurement(
        "B9 photo-tagger ÷ captiond, wall time", round(ratio, 2),
        f"{theirs['wall_seconds']:.1f} s ÷ {ours.run.wall_seconds:.1f} s = {ratio:.1f}", "≥ 5", ratio >= 5,
        f"{count} 12 MP JPEGs, sidecars, instant model, captiond Parallel 1 and photo-tagger --workers 1, wall time "
        f"of each command (start-up included); photo-tagger wrote {theirs['sidecars']} sidecars "
        f"(exit {theirs['exit_code']}); CPU per photo {1000 * theirs['cpu_seconds_sampled'] / count:.0f} ms against "
        f"captiond's {1000 * our_cpu / count:.0f} ms (photo-tagger's one worker uses one core; captiond's "
        f"pipeline both); peak RSS {theirs['peak_rss_mb']} MB against captiond's "
        f"{megabytes(ours.run.memory.peak_kilobytes)} MB"))
    return result


BENCHMARKS = {"B1": throughput, "B2": busy_ratio, "B3": watch_latency, "B4": rescan, "B5": memory,
              "B6": prepare_times, "B7": combined_requests, "B8": duplicate_library, "B9": peer_side_by_side}
