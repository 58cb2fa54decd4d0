"""B7 and B8: what each photo costs on the GPU. Model requests per photo and emulated GPU-seconds per photo
for `-m caption,labels` with and without CombineOutputs (B7), and model calls on a library with 20%
byte-identical copies with and without the result cache (B8).

The emulator answers instantly; the GPU time is computed from what it was asked, with a simple cost
model of a 3-4B vision model on a mid-range GPU (the figures are ratios, and hold for any constants
of this shape): every request pays one image encoding plus prompt prefill (IMAGE_SECONDS), and
every answer token costs TOKEN_SECONDS (tokens ≈ characters ÷ 4).
"""

from __future__ import annotations

import json
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import LeanEmulator, RunResult, remove_sidecars, run_captiond, write_config
from inputs import LibraryRecipe, PhotoRecipe, photo_library
from results import BenchmarkResult, Measurement

IMAGE_SECONDS = 0.40  # encoding one 720 px image (a few hundred image tokens) and the prompt
TOKEN_SECONDS = 0.0125  # one answer token (80 tokens/s)
PHOTO = PhotoRecipe(640, 480, quality=90)
CAPTION = "A red bicycle leans against a weathered stone wall beside a window box full of geraniums."
LABELS = [{"name": name, "confidence": confidence, "topicality": topicality} for name, confidence, topicality in
          (("bicycle", 0.95, 0.9), ("wall", 0.85, 0.6), ("window", 0.7, 0.4), ("flower", 0.8, 0.5),
           ("street", 0.5, 0.3))]


@dataclass
class GpuLedger:
    """What the emulated server was asked: requests by kind, and their emulated GPU-seconds."""

    requests: dict[str, int] = field(default_factory=dict)
    gpu_seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, body: dict[str, Any]) -> str:
        """The emulator's reply: a caption, labels JSON, or both, by the schema the request asks for."""
        schema = body.get("format") or (body.get("response_format") or {}).get("json_schema", {}).get("schema")
        properties = set(schema.get("properties", {})) if isinstance(schema, dict) else set()
        if properties == {"caption", "labels"}:
            kind, text = "combined", json.dumps({"caption": CAPTION, "labels": LABELS})
        elif "labels" in properties:
            kind, text = "labels", json.dumps({"labels": LABELS})
        else:
            kind, text = "caption", CAPTION
        with self.lock:
            self.requests[kind] = self.requests.get(kind, 0) + 1
            self.gpu_seconds += IMAGE_SECONDS + TOKEN_SECONDS * len(text) / 4
        return text

    @property
    def total(self) -> int:
        return sum(self.requests.values())


@dataclass(frozen=True)
class Counted:
    """One `captiond run` and what its model server was asked."""

    run: RunResult
    ledger: GpuLedger
    photos: int

    @property
    def requests_per_photo(self) -> float:
        return self.ledger.total / self.photos

    @property
    def gpu_seconds_per_photo(self) -> float:
        return self.ledger.gpu_seconds / self.photos

    def details(self) -> dict[str, Any]:
        report = self.run.report or {}
        return {"requests": dict(self.ledger.requests), "requests_per_photo": round(self.requests_per_photo, 3),
                "gpu_seconds_per_photo": round(self.gpu_seconds_per_photo, 3), "exit_code": self.run.exit_code,
                "captioned": report.get("captioned"), "labelled": report.get("labelled"),
                "seconds": report.get("seconds")}


def counted_run(library: Path, photos: int, work: Path, models: str, **daemon: object) -> Counted:
    """Caption the library afresh (no sidecars, a new StateDir) and count what the model server was asked."""
    remove_sidecars(library)
    shutil.rmtree(work / "state", ignore_errors=True)
    ledger = GpuLedger()
    with LeanEmulator(latency=0.0, parallel=4, reply=ledger.answer) as server:
        config = write_config(work / "vision.yml", server.url, Parallel=4, Write="sidecar", StateDir=work / "state",
                              **daemon)
        run = run_captiond(["--config", config, "--originals", library, "-m", models], work / "run.log",
                           work / "report.json")
    if run.exit_code != 0 or (run.report or {}).get("captioned") != photos:
        raise RuntimeError(f"captiond run exited {run.exit_code}, captioned "
                           f"{(run.report or {}).get('captioned')} of {photos}:\n{run.stdout[-2000:]}\n"
                           f"{run.log_path.read_text(errors='replace')[-2000:]}")
    return Counted(run, ledger, photos)


def combined_requests(settings: Any, folders: Any) -> BenchmarkResult:
    """B7: model requests and emulated GPU-seconds per photo for -m caption,labels, before and after combining."""
    result = BenchmarkResult("B7", "caption+labels: requests and GPU-seconds per photo")
    count = 20 if settings.quick else 60
    recipe = LibraryRecipe(PHOTO, count, count, 20)
    library, built = photo_library(folders.inputs / f"photos-small-{count}", recipe)
    work = folders.work("B7")
    before = counted_run(library, count, work, "caption,labels", CacheSize=0)
    after = counted_run(library, count, work, "caption,labels", CacheSize=0, CombineOutputs=True)
    saved = 1 - after.gpu_seconds_per_photo / before.gpu_seconds_per_photo
    result.details = {"photos": count, "inputs_generated_now": built, "cost_model": {
        "image_seconds": IMAGE_SECONDS, "token_seconds": TOKEN_SECONDS, "tokens": "characters / 4"},
        "two_requests": before.details(), "combined": after.details(), "gpu_seconds_saved": round(saved, 3)}
    result.measurements.append(Measurement(
        "B7 model requests per photo, caption+labels", after.requests_per_photo,
        f"{before.requests_per_photo:.2f} → {after.requests_per_photo:.2f} (CombineOutputs)", "1 per photo",
        after.requests_per_photo == 1.0))
    result.measurements.append(Measurement(
        "B7 emulated GPU-seconds per photo", round(after.gpu_seconds_per_photo, 3),
        f"{before.gpu_seconds_per_photo:.2f} → {after.gpu_seconds_per_photo:.2f} s ({saved:.0%} less)",
        "for the record", None,
        f"{IMAGE_SECONDS} s per image encoding + {TOKEN_SECONDS * 1000:.1f} ms per answer token"))
    return result


def duplicate_library(settings: Any, folders: Any) -> BenchmarkResult:
    """B8: model calls on a library with 20% byte-identical copies, without and with the result cache."""
    result = BenchmarkResult("B8", "model calls, library with 20% copies")
    count = 50 if settings.quick else 200
    distinct = count * 4 // 5
    recipe = LibraryRecipe(PHOTO, count, distinct, 10)  # the copies land in other folders than their originals
    library, built = photo_library(folders.inputs / f"photos-small-{count}-copies", recipe)
    work = folders.work("B8")
    runs = {"caption, no cache": counted_run(library, count, work, "caption", CacheSize=0),
            "caption, cache": counted_run(library, count, work, "caption", CacheSize=20000),
            "caption+labels, no cache": counted_run(library, count, work, "caption,labels", CacheSize=0),
            "caption+labels, cache + CombineOutputs": counted_run(library, count, work, "caption,labels",
                                                                  CacheSize=20000, CombineOutputs=True)}
    result.details = {"photos": count, "distinct": distinct, "inputs_generated_now": built,
                      "runs": {name: counted.details() for name, counted in runs.items()}}
    plain, cached = runs["caption, no cache"], runs["caption, cache"]
    result.measurements.append(Measurement(
        "B8 model calls, caption, 20% copies", cached.ledger.total,
        f"{plain.ledger.total} → {cached.ledger.total} for {count} photos ({distinct} distinct)",
        f"{distinct} (one per distinct image)", cached.ledger.total == distinct))
    both, best = runs["caption+labels, no cache"], runs["caption+labels, cache + CombineOutputs"]
    result.measurements.append(Measurement(
        "B8 GPU-seconds per photo, caption+labels", round(best.gpu_seconds_per_photo, 3),
        f"{both.gpu_seconds_per_photo:.2f} → {best.gpu_seconds_per_photo:.2f} s "
        f"({both.ledger.total} → {best.ledger.total} requests; cache + CombineOutputs)", "for the record", None))
    return result
