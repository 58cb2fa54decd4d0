"""captiond's benchmark: `.venv/bin/python bench/run.py [--quick] [--only B1,B3]` (see bench/README.md).

Generates its inputs (cached in bench/out/inputs/), runs the real `captiond` against the Ollama
emulator on 127.0.0.1, prints the figure | measured | target | met? table and writes
bench/out/results.json.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

from figures import BENCHMARKS, Folders, Settings
from harness import BENCH_DIRECTORY, CAPTIOND_EXECUTABLE, MachineLoad
from results import BenchmarkResult, machine, table, write_json

log = logging.getLogger("bench")
QUIET_SHARE = 0.10


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Benchmark captiond against targets; see bench/README.md.")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes for a smoke test (under 2 minutes once the inputs are cached)")
    parser.add_argument("--only", metavar="B1,B2", help="run only these benchmarks (comma-separated)")
    parser.add_argument("--wait-for-quiet", metavar="SECONDS", type=float, default=0.0,
                        help="before each benchmark, wait up to SECONDS for other processes to use under "
                        f"{QUIET_SHARE * 100:.0f}%% of the CPU (on a shared machine)")
    parser.add_argument("--out", metavar="DIR", type=Path, default=BENCH_DIRECTORY / "out",
                        help="where inputs are cached and results written (default: bench/out)")
    return parser.parse_args(argv)


def selected_benchmarks(only: str | None) -> list[str]:
    if not only:
        return list(BENCHMARKS)
    keys = [key.strip().upper() for key in only.split(",") if key.strip()]
    unknown = [key for key in keys if key not in BENCHMARKS]
    if unknown:
        raise SystemExit(f"unknown benchmark(s): {', '.join(unknown)} (choose from {', '.join(BENCHMARKS)})")
    return keys


def wait_for_quiet(limit: float) -> None:
    """Wait (up to `limit` seconds) until other processes leave the CPU mostly to us, for 3 s in a row."""
    started = time.monotonic()
    for attempt in itertools.count():
        before = MachineLoad.now()
        time.sleep(3)
        share = MachineLoad.now().others_since(before)["other_processes_share"]
        if share < QUIET_SHARE:
            return
        if time.monotonic() - started > limit:
            log.info("  the machine did not get quiet in %.0f s; measuring anyway", limit)
            return
        if attempt % 10 == 0:
            log.info("  other processes use %.0f%% of the CPU; waiting for a quieter moment", share * 100)


def run_one(key: str, settings: Settings, folders: Folders, quiet_wait: float = 0.0) -> BenchmarkResult:
    """Run one benchmark; a failure is recorded as that benchmark's error, and the others still run."""
    if quiet_wait > 0:
        wait_for_quiet(quiet_wait)
    log.info("%s ...", key)
    started = time.monotonic()
    load_before = MachineLoad.now()
    try:
        result = BENCHMARKS[key](settings, folders)
    except Exception:  # noqa: BLE001 - one broken figure must not hide the others
        title = (BENCHMARKS[key].__doc__ or key).split(":")[0]
        result = BenchmarkResult(key, title, error=traceback.format_exc())
        log.error("%s failed:\n%s", key, result.error)
    result.seconds = time.monotonic() - started
    result.details["machine_load"] = MachineLoad.now().others_since(load_before)
    log.info("%s done in %.1f s: %s", key, result.seconds,
             "; ".join(measurement.shown for measurement in result.measurements))
    return result


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if not CAPTIOND_EXECUTABLE.exists():
        raise SystemExit(f"no captiond at {CAPTIOND_EXECUTABLE}: run this with the project's venv python")
    settings = Settings.quick_mode() if arguments.quick else Settings.full()
    folders = Folders(arguments.out.resolve())
    mode = "quick" if arguments.quick else "full"
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    machine_description = machine()  # now: the package may change while the benchmark runs
    started = time.monotonic()
    results = [run_one(key, settings, folders, arguments.wait_for_quiet)
               for key in selected_benchmarks(arguments.only)]
    elapsed = time.monotonic() - started
    output = folders.out / "results.json"
    for path in (output, folders.out / f"results-{mode}.json"):  # a smoke test does not overwrite the full figures
        write_json(path, mode, results, elapsed, started_at, machine_description)
    print()
    print(table(results))
    for result in results:
        if result.details.get("stage_table"):
            print(f"\n{result.key}: CPU ms per photo by stage\n{result.details['stage_table']}")
    print(f"\n{mode} mode, {elapsed:.0f} s in all; JSON in {output}")
    return 1 if any(result.error for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())
