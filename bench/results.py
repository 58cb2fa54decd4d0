"""What a benchmark returns, the table printed at the end and the JSON written to bench/out/results.json."""

from __future__ import annotations

import json
import platform
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness import PROJECT_DIRECTORY, available_cores

BUSY_MACHINE_SHARE = 0.05  # above this share of the CPU used by other processes, a benchmark says so


@dataclass(frozen=True)
class Measurement:
    """One row of the table: a measured figure, its target and whether it is met (None: no target)."""

    figure: str
    value: float | None
    shown: str
    target: str
    met: bool | None
    note: str = ""


@dataclass
class BenchmarkResult:
    """One benchmark (B1..B6): its rows, the numbers behind them and how long it took."""

    key: str
    title: str
    measurements: list[Measurement] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    error: str = ""


def met_text(met: bool | None) -> str:
    return "n/a" if met is None else "yes" if met else "NO"


def table(results: list[BenchmarkResult]) -> str:
    """Return the figure | measured | target | met? table (notes below it)."""
    rows = [("figure", "measured", "target", "met?")]
    notes = []
    for result in results:
        if result.error:
            rows.append((f"{result.key} {result.title}", "ERROR (see above)", "", "NO"))
            notes.append(f"{result.key}: {result.error.splitlines()[-1] if result.error else ''}")
        for measurement in result.measurements:
            rows.append((measurement.figure, measurement.shown, measurement.target, met_text(measurement.met)))
            if measurement.note:
                notes.append(f"{measurement.figure}: {measurement.note}")
        share = result.details.get("machine_load", {}).get("other_processes_share", 0.0)
        if share > BUSY_MACHINE_SHARE:
            notes.append(f"{result.key}: other processes used {share:.0%} of the machine's CPU meanwhile; "
                         "its figures may be worse than on a quiet machine")
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    lines = [" | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "-+-".join("-" * width for width in widths))
    return "\n".join(lines + ([""] + [f"  * {note}" for note in notes] if notes else []))


def machine() -> dict[str, Any]:
    """Describe where the figures were measured."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import PIL

    return {"cores": available_cores(), "cpu": model, "python": platform.python_version(),
            "pillow": PIL.__version__, "kernel": platform.release(), "captiond_commit": _git_commit(),
            "exiftool": _command_output(["exiftool", "-ver"])}


def _git_commit() -> str:
    commit = _command_output(["git", "-C", str(PROJECT_DIRECTORY), "rev-parse", "--short", "HEAD"])
    dirty = _command_output(["git", "-C", str(PROJECT_DIRECTORY), "status", "--porcelain", "--", "daemon"])
    return f"{commit}{' (daemon/ modified)' if dirty else ''}"


def _command_output(command: list[str]) -> str:
    try:
        return subprocess.run(command, capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return ""


def write_json(path: Path, mode: str, results: list[BenchmarkResult], bench_seconds: float,
               started: str, machine_description: dict[str, Any]) -> None:
    """Write every figure, its details and the machine (described when the run started) to a JSON file."""
    document = {
        "mode": mode, "started": started, "bench_seconds": round(bench_seconds, 1), "machine": machine_description,
        "benchmarks": {result.key: {"title": result.title, "seconds": round(result.seconds, 1),
                                    "error": result.error or None,
                                    "measurements": [asdict(measurement) for measurement in result.measurements],
                                    "details": result.details} for result in results},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
