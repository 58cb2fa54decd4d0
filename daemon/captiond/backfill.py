"""`captiond run`: caption the library once, the use case `service.py` is for `watch`.

    check the clients ──▶ scan (and filter) ──▶ run_pipeline ──▶ Summary ──▶ summary and report

The clients are checked (and the self-test run) before any photo; exiftool lives for the whole run; the
apps (PhotoPrism, Immich) are told as photos are written and once more at the end; the summary is printed
even when the run is interrupted.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from . import filters
from .apps import AppNotifier
from .cache import open_cache
from .config import Config
from .errors import FileError
from .exiftool_process import Exiftool
from .filters import FilterTerm
from .ignore import IgnoreRules
from .library import printable, scan, shown
from .modelruns import clients as runs_clients
from .pipeline import Captioner, ModelRun, Outcome, RunOptions, Status, describe_outcome, run_pipeline
from .progress import Progress
from .redaction import redact
from .schedule import QuietHours
from .selftest import check_sight
from .service import keep_alive_for

log = logging.getLogger("captiond")

APP_FLUSH_SECONDS = 30.0  # at the end of a run: how long to keep trying to tell PhotoPrism and Immich


def run(config: Config, runs: dict[str, ModelRun], options: RunOptions, originals: Path, query: filters.Query,
        terms: Sequence[FilterTerm], *, words: Sequence[str] = (), respect_schedule: bool = False,
        quiet_output: bool = False, report: Path | None = None) -> Summary:
    """Caption the photos under the originals that match the filter; print the summary; return it."""
    clients = runs_clients(runs)
    quiet = QuietHours(config.daemon.schedule if respect_schedule else None)
    state, cache = (None, None) if options.dry_run else open_cache(config.daemon.state_dir, config.daemon.cache_size)
    apps = AppNotifier(config.daemon, originals)
    apps.start()  # a long run tells the apps as it goes, not only at its end
    try:
        for kind, model_run in runs.items():
            if model_run.client is not None and kind != "combined":  # the combined client is the labels model's
                model_run.client.check()
                log.info("%s: using %s on %s", "captions" if kind == "caption" else kind, model_run.model.model_id,
                         model_run.client.uri)
        if config.daemon.self_test and clients and quiet.wait_open(threading.Event()):
            for client in {(id(client.pool), client.model.model_id): client for client in clients}.values():
                check_sight(client)
        if "combined" in runs:
            log.info("captions and labels: one request per photo (CombineOutputs)")
        with Exiftool() as exiftool:
            captioner = Captioner(config, runs, exiftool, options, cache)
            unlisted: list[Outcome] = []
            paths = list(scan(originals, terms, lambda folder, reason: unlisted.append(
                Outcome(folder, Status.FAILED, reason)), IgnoreRules(originals, config.daemon.exclude)))
            if query.metadata:
                paths = [path for path in paths if _metadata_selected(exiftool, path, query, config)]
            if query and not paths:
                log.warning("no photos under %s match %s", shown(originals, None), printable(" ".join(words)))
            summary = Summary(originals, labels="labels" in runs, total=len(paths) + len(unlisted))
            for client in clients:
                client.keep_alive = lambda: keep_alive_for(
                    config.daemon.keep_alive, sum(summary.counts.values()) + 1 < (summary.total or 0))
            with Progress(len(paths), enabled=sys.stderr.isatty() and not quiet_output) as progress:
                # With the bar on the terminal, a line per file only under -v; without it, the lines are the progress.
                summary.file_level = logging.DEBUG if progress.shown else logging.INFO
                for outcome in unlisted:
                    summary.add(outcome)

                def record(outcome: Outcome) -> None:
                    summary.add(outcome)
                    progress.advance()
                    if outcome.written:
                        apps.written(outcome.path, outcome.created_sidecar)
                try:
                    run_pipeline(captioner, paths, record, gate=quiet.wait_open)
                finally:
                    pools = {id(client.pool): client for client in clients}
                    summary.endpoints = [figure for client in pools.values() for figure in client.figures()]
                    summary.print(sys.stdout)
                    if report is not None:
                        report.write_text(json.dumps(summary.as_dict(), indent=2))
    finally:
        for client in clients:
            client.close()
        if state is not None:
            state.close()
        apps.stop(flush_seconds=APP_FLUSH_SECONDS)
    return summary


def _metadata_selected(exiftool: Exiftool, path: Path, query: filters.Query, config: Config) -> bool:
    """Return whether a photo matches the metadata filter terms; one that cannot be read is kept (its run fails)."""
    try:
        return filters.matches_metadata(query.metadata, exiftool.read(path, config.daemon.sidecar_name))
    except FileError:
        return True


class Summary:
    """Counts outcomes and prints the end-of-run report."""

    def __init__(self, originals: Path, labels: bool = False, total: int | None = None) -> None:
        self.originals = originals
        self.started = time.monotonic()
        self.counts: Counter[Status] = Counter()
        self.skipped: Counter[str] = Counter()
        self.failures: list[Outcome] = []
        self.stage_seconds: Counter[str] = Counter()
        self.total = total
        self.captions = 0
        self.labelled: int | None = 0 if labels else None  # None: no labels model in this run
        self.endpoints: list[dict[str, object]] = []
        self.file_level = logging.INFO  # each captioned file's line; DEBUG while a progress bar is shown
        self.from_cache = 0

    @property
    def failed(self) -> int:
        """Return how many files failed."""
        return self.counts[Status.FAILED]

    def add(self, outcome: Outcome) -> None:
        """Count one outcome and log it."""
        self.counts[outcome.status] += 1
        self.from_cache += outcome.cached
        self.stage_seconds.update(outcome.stages)
        name = self._relative(outcome.path)
        if outcome.status == Status.CAPTIONED:
            self.captions += bool(outcome.caption)
            if outcome.keywords is not None and self.labelled is not None:
                self.labelled += 1
            log.log(self.file_level, "%s", describe_outcome(name, outcome))
        elif outcome.status == Status.WOULD_CAPTION:
            log.log(self.file_level, "would caption %s (%s)", name, outcome.reason)
        elif outcome.status == Status.SKIPPED:
            self.skipped[outcome.reason] += 1
            log.debug("skipped %s: %s", name, outcome.reason)
        else:
            self.captions += bool(outcome.caption)  # written although its labels failed
            self.failures.append(outcome)
            log.error("failed %s: %s", name, outcome.reason)

    def print(self, stream: object) -> None:
        """Print the summary: captioned, skipped and why, failed and why."""
        seconds = time.monotonic() - self.started
        labelled = "" if self.labelled is None else f", labelled {self.labelled}"
        lines = [f"captioned {self.captions}{labelled}, skipped {self.counts[Status.SKIPPED]}, failed {self.failed}"
                 + (f", would caption {self.counts[Status.WOULD_CAPTION]}" if self.counts[Status.WOULD_CAPTION] else "")
                 + f" in {seconds:.1f}s"]
        if self.from_cache:
            lines.append(f"  from the result cache {self.from_cache} (the same image was asked before: no model call)")
        lines += [f"  skipped {count:>6}  {reason}" for reason, count in self.skipped.most_common()]
        unprocessed = (self.total or 0) - sum(self.counts.values())
        if unprocessed > 0:
            lines.append(f"  not processed {unprocessed} (the run stopped early)")
        if len(self.endpoints) > 1:
            lines += [f"  endpoint {item['endpoint']}: {item['requests']} requests, {item['errors']} errors, "
                      f"mean {item['mean_seconds']}s" for item in self.endpoints]
        for outcome in self.failures[:20]:
            lines.append(f"  failed  {self._relative(outcome.path)}: {outcome.reason}"
                         + (" (temporary: try again later)" if outcome.transient else ""))
        if len(self.failures) > 20:
            lines.append(f"  ... and {len(self.failures) - 20} more failures")
        print(redact("\n".join(lines)), file=stream)  # type: ignore[call-overload]

    def as_dict(self) -> dict[str, object]:
        """Return the summary as data: counts, reasons, failures, seconds and mean ms per stage."""
        captioned = self.counts[Status.CAPTIONED]
        return {
            "captioned": self.captions, "skipped": self.counts[Status.SKIPPED], "failed": self.failed,
            "from_cache": self.from_cache,
            "would_caption": self.counts[Status.WOULD_CAPTION],
            "not_processed": max(0, (self.total or 0) - sum(self.counts.values())),
            "seconds": round(time.monotonic() - self.started, 3),
            "skipped_reasons": dict(self.skipped),
            "failures": [{"path": self._relative(outcome.path), "reason": redact(outcome.reason),
                          "transient": outcome.transient} for outcome in self.failures],
            "stages_ms": {stage: round(1000 * seconds / max(1, captioned), 2)
                          for stage, seconds in self.stage_seconds.items()},
            "labelled": self.labelled, "endpoints": self.endpoints,
        }

    def _relative(self, path: Path) -> str:
        return shown(path, self.originals)
