"""The `captiond` command line: run, ls, sources. Maps every CaptiondError to one line and an exit code.

Exit codes: 0 all done, 1 some files failed, 2 bad config or usage, 3 model server unreachable,
130 interrupted (Ctrl-C), 143 terminated (SIGTERM). stdout holds only what a command reports (the
run's summary, tables); the log and the progress bar go to stderr.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__, backfill, filters
from .admin import (
    act_as_owner,
    app_addresses,
    daemon_settings,
    describe_settings,
    find_database,
    model_row,
    root_over_library,
    status_report,
)
from .cache import ResultCache
from .config import Config, find_config_file, load_config
from .degradation import FIX
from .errors import CaptiondError, FileError, Interrupted, ModelSetupError, Terminated, UsageError
from .exiftool_process import Exiftool
from .health import Metrics
from .library import shown
from .logs import setup_logging
from .modelruns import clients as runs_clients
from .modelruns import model_runs
from .pipeline import Captioner, RunOptions
from .redaction import redact, redact_process_output
from .service import WatchService
from .sources import SOURCES, WRITABLE_SOURCES
from .state import RowState, StateStore

log = logging.getLogger("captiond")

EXIT_OK = 0  # success; every other exit code is an exception class's (errors.py)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit code."""
    redact_process_output()
    parser = build_parser()
    arguments = parser.parse_args(argv)
    setup_logging(arguments.verbose, arguments.quiet, getattr(arguments, "log_format", "text"))
    try:
        return int(arguments.handler(arguments))
    except CaptiondError as error:
        print(f"captiond: {redact(str(error))}", file=sys.stderr)
        return error.exit_code
    except Terminated:
        print("captiond: terminated", file=sys.stderr)
        return Terminated.exit_code
    except KeyboardInterrupt:
        print("captiond: interrupted", file=sys.stderr)
        return Interrupted.exit_code
    except BrokenPipeError:
        # `captiond ls | head`: the reader left; not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="captiond", description="Caption photos with a local vision model and write the captions into the files.")
    parser.add_argument("--version", action="version", version=f"captiond {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", "-c", metavar="FILE", help="vision.yml to read (default: $CAPTIOND_CONFIG, "
                        "./vision.yml, $XDG_CONFIG_HOME/captiond/vision.yml, /etc/captiond/vision.yml)")
    common.add_argument("--verbose", "-v", action="count", default=0,
                        help="log every file and every retry (with the bar too); -vv: also other libraries' "
                        "debug lines")
    common.add_argument("--quiet", "-q", action="store_true", help="print only warnings, errors and the summary")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", parents=[common], help="caption the library (or the files matching FILTER) once",
                              description="Caption every photo under the originals folder that needs it, then exit. "
                              "FILTER words are PhotoPrism's search query, all of them must match: paths or "
                              "globs relative to the originals, path:, name: (without extension), filename:, "
                              "year:, month:, day:, camera:, keywords:, label:, caption:true|false|TEXT; "
                              "with Daemon.PhotoPrism set, album:, person: and its other keys go to its search.")
    run.add_argument("filters", nargs="*", metavar="FILTER")
    run.add_argument("--models", "-m", default="caption", help="model types to run, comma-separated (default: caption)")
    run.add_argument("--source", "-s", default="auto", choices=WRITABLE_SOURCES, metavar="SRC",
                     help="source of this run, as PhotoPrism's: it decides what --force may replace and is "
                     "recorded with the captions (default: auto, priority 1, recorded as the engine, e.g. ollama); "
                     f"one of {', '.join(WRITABLE_SOURCES)}")
    run.add_argument("--force", "-f", action="store_true",
                     help="also replace existing captions whose source has a priority <= that of --source "
                     "(with --source auto, only captions of priority 1)")
    run.add_argument("--dry-run", action="store_true", help="show what would be captioned; ask and write nothing")
    run.add_argument("--count", "-n", type=_positive_int, default=100000, metavar="N",
                     help="caption at most N files (default: 100000, as `photoprism vision run`)")
    run.add_argument("--originals", "-o", metavar="DIR", help="the originals folder (overrides Daemon.Originals)")
    run.add_argument("--write", choices=("sidecar", "embedded"), help="where captions go (overrides Daemon.Write)")
    run.add_argument("--report", metavar="FILE", help="also write the summary as JSON (counts, reasons, seconds, "
                     "mean milliseconds per stage)")
    run.add_argument("--parallel", "-p", type=_positive_int, metavar="N",
                     help="requests in flight at once (overrides Daemon.Parallel; match OLLAMA_NUM_PARALLEL)")
    run.add_argument("--respect-schedule", action="store_true",
                     help="send requests only inside Daemon.Schedule's windows (wait outside them)")
    run.set_defaults(handler=command_run)

    listing = commands.add_parser("ls", parents=[common], help="show the effective models, like `photoprism vision ls`")
    formats = listing.add_mutually_exclusive_group()
    formats.add_argument("--json", action="store_true", help="print JSON instead of a table")
    formats.add_argument("--md", action="store_true", help="print a Markdown table (as `photoprism vision ls --md`)")
    formats.add_argument("--csv", action="store_true", help="print comma-separated values")
    formats.add_argument("--tsv", action="store_true", help="print tab-separated values")
    listing.set_defaults(handler=command_ls)

    sources = commands.add_parser("sources", parents=[common], help="show the source priority table")
    sources.set_defaults(handler=command_sources)

    watch = commands.add_parser("watch", parents=[common], help="run as a daemon: caption new photos as they arrive",
                                description="Queue every photo that `captiond run` would caption, then watch the "
                                "originals and caption each new or changed photo once it is completely written. "
                                "Progress survives restarts (Daemon.StateDir). Stops cleanly on SIGTERM or SIGINT.")
    watch.add_argument("--originals", "-o", metavar="DIR", help="the originals folder (overrides Daemon.Originals)")
    watch.add_argument("--state-dir", metavar="DIR", help="where the state database lives (overrides Daemon.StateDir)")
    watch.add_argument("--models", "-m", default="caption", help="model types to run, comma-separated "
                       "(default: caption; e.g. caption,labels)")
    watch.add_argument("--listen", metavar="HOST:PORT", help="serve /healthz and /metrics (overrides Daemon.Listen)")
    watch.add_argument("--log-format", choices=("text", "json"), default="text", help="log lines as text or JSON")
    watch.set_defaults(handler=command_watch)

    status = commands.add_parser("status", parents=[common], help="show the daemon's queue, failures and model server",
                                 description="Read the state database (also while the daemon runs).")
    status.add_argument("--state-dir", metavar="DIR", help="where the state database lives (overrides Daemon.StateDir)")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(handler=command_status)

    retry = commands.add_parser("retry", parents=[common], help="queue failed and quarantined files again",
                                description="Queue the daemon's failed and quarantined files (and files waiting "
                                "for a retry) to be tried now, from zero attempts. Run it as the daemon's user "
                                "(as root it becomes the owner of the state database). FILTER as for run.")
    retry.add_argument("filters", nargs="*", metavar="FILTER")
    retry.add_argument("--state-dir", metavar="DIR", help="where the state database lives (overrides Daemon.StateDir)")
    retry.set_defaults(handler=command_retry)
    return parser


def load(arguments: argparse.Namespace) -> Config:
    """Return the configuration named by --config (or found), with warnings logged."""
    path = find_config_file(arguments.config, os.environ)
    if path is None:
        log.warning("no vision.yml found (--config, $CAPTIOND_CONFIG, ./vision.yml, ~/.config/captiond/vision.yml, "
                    "/etc/captiond/vision.yml): using the defaults")
    else:
        log.debug("reading %s", path)
    config = load_config(path)
    for warning in config.warnings:
        log.warning("%s: %s", config.path or "vision.yml", warning)
    return config


def command_run(arguments: argparse.Namespace) -> int:
    """Caption the library once; return the exit code."""
    config = load(arguments).with_daemon(
        originals=Path(arguments.originals) if arguments.originals else None,
        write=arguments.write, parallel=arguments.parallel)
    originals = _originals(config, arguments.originals)
    if not arguments.dry_run and (warning := root_over_library(originals)):
        log.warning("%s", warning)
    runs = model_runs(config, arguments.models, connect=not arguments.dry_run)
    options = RunOptions(arguments.source, arguments.force, arguments.dry_run, arguments.count)
    query = filters.parse(arguments.filters, originals, photoprism=config.daemon.photoprism is not None)
    terms = filters.name_terms(query, config.daemon.photoprism, originals)
    signal.signal(signal.SIGTERM, _terminate)
    summary = backfill.run(config, runs, options, originals, query, terms, words=arguments.filters,
                           respect_schedule=arguments.respect_schedule, quiet_output=arguments.quiet,
                           report=Path(arguments.report) if arguments.report else None)
    return FileError.exit_code if summary.failed else EXIT_OK


def _terminate(number: int, frame: object) -> None:
    """SIGTERM: end `run` like Ctrl-C; a second SIGTERM ends the process at once."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise Terminated()


def _originals(config: Config, flag: str | None) -> Path:
    """Return the originals folder; refuse a missing one, saying where its path came from."""
    originals = config.daemon.originals
    if originals is None:
        raise UsageError("no originals folder: pass --originals DIR or set Daemon.Originals in vision.yml")
    if not originals.is_dir():
        origin = "--originals" if flag else f"Daemon.Originals in {config.path or 'the environment'}"
        raise UsageError(f"originals folder not found: {shown(originals, None)} (from {origin})")
    return originals


def command_ls(arguments: argparse.Namespace) -> int:
    """Print the effective models like `photoprism vision ls` (table, --json, --md, --csv or --tsv)."""
    config = load(arguments)
    rows = [model_row(config, model) for model in config.models]
    if arguments.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    headers = ["Type", "Model", "Engine", "Endpoint", "Format", "Resolution", "Run", "Options", "Status"]
    table = [[str(row["type"]), str(row["model"]), str(row["engine"]), str(row["endpoint"]), str(row["format"]),
              str(row["resolution"]), str(row["run"]), json.dumps(row["options"], separators=(",", ":"))
              if row["options"] else "", str(row["status"])]
             for row in rows]
    if arguments.md:
        print("| " + " | ".join(headers) + " |")
        print("|" + "|".join(":---" for _ in headers) + "|")
        for cells in table:
            print("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    elif arguments.csv or arguments.tsv:
        writer = csv.writer(sys.stdout, delimiter="\t" if arguments.tsv else ",", lineterminator="\n")
        writer.writerows([headers, *table])
    else:
        _print_table(headers, table)
        for name, address in app_addresses(config).items():
            print(f"{name}: {address}")
    return EXIT_OK


def command_watch(arguments: argparse.Namespace) -> int:
    """Run the daemon until SIGTERM or SIGINT; return 0 after a clean stop."""
    config = load(arguments).with_daemon(
        originals=Path(arguments.originals) if arguments.originals else None,
        state_dir=Path(arguments.state_dir) if arguments.state_dir else None, listen=arguments.listen)
    _originals(config, arguments.originals)
    metrics = Metrics()
    runs = model_runs(config, arguments.models, watch=True, metrics=metrics)
    clients = runs_clients(runs)
    state = StateStore(config.daemon.state_dir, rebuild=True)
    abandoned = 0
    try:
        with Exiftool() as exiftool:
            cache = ResultCache(state, config.daemon.cache_size) if config.daemon.cache_size else None
            service = WatchService(config, Captioner(config, runs, exiftool, RunOptions(), cache), clients, state,
                                   metrics)
            state.record_settings(daemon_settings(config, runs))
            for signal_number in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signal_number, lambda number, frame: service.request_stop())
            try:
                for client in clients:
                    client.check(retry=False)
                    log.info("using %s on %s; state in %s", client.model.model_id, client.uri, state.path)
            except ModelSetupError as error:
                service.model_unavailable(error)
            service.run()
            abandoned = service.abandoned
    finally:
        for client in clients:
            client.close()
        state.close()
    log.info("stopped")
    if abandoned:
        # Threads blocked on a server that sends nothing would hold the process until their deadline
        # (the interpreter joins them at exit); their files are queued again, so leave without them.
        logging.shutdown()
        os._exit(EXIT_OK)
    return EXIT_OK


def command_status(arguments: argparse.Namespace) -> int:
    """Print the daemon's settings, queue counts, latest failures and whether its model server answers."""
    config = load(arguments).with_daemon(state_dir=Path(arguments.state_dir) if arguments.state_dir else None)
    report = status_report(config, find_database(config, explicit=bool(arguments.state_dir)))
    if arguments.json:
        print(json.dumps(report, indent=2))
        return EXIT_OK
    counts: dict[str, int] = report["counts"]
    print(f"state:  {report['database']}")
    for line in describe_settings(report["daemon"]):
        print(f"  {line}")
    print("files:  " + ", ".join(f"{count} {state_name}" for state_name, count in counts.items()))
    due = "" if report["next_due_in_seconds"] is None else f" (next due in {report['next_due_in_seconds']}s)"
    print(f"queue:  {report['queue']}{due}")
    print(f"model:  {report['model']}")
    if config.daemon.schedule is not None:
        paused = report["schedule"] if report["schedule"] != "open" else "open now"
        print(f"quiet hours: {paused} (Daemon.Schedule {config.daemon.schedule.text})")
    _print_runtime(report["running"])
    for name, address in report["apps"].items():
        print(f"{name.lower()}: {address}")
    if report["failures"]:
        print("latest failures (`captiond retry` queues them again):")
        for row in report["failures"]:
            retry = f", attempt {row['attempts']}, will retry" if row["state"] == RowState.PENDING else ""
            print(f"  {row['state']:<11} {row['path']}: {row['reason']}{retry}")
    return EXIT_OK


def command_retry(arguments: argparse.Namespace) -> int:
    """Queue failed and quarantined files (and files waiting for a retry) again in the daemon's database."""
    config = load(arguments).with_daemon(state_dir=Path(arguments.state_dir) if arguments.state_dir else None)
    database = find_database(config, explicit=bool(arguments.state_dir))
    act_as_owner(database)
    state = StateStore(database.parent)
    try:
        settings = state.settings()
        originals = Path(str(settings["originals"])) if settings.get("originals") else config.daemon.originals
        if arguments.filters and originals is None:
            raise UsageError("FILTER needs the originals folder: pass --config with Daemon.Originals")
        terms = (filters.parse(arguments.filters, originals, photoprism=False, metadata=False).names
                 if originals is not None else ())
        requeued = state.requeue(lambda path: filters.selects(terms, originals, path))
    finally:
        state.close()
    total = sum(requeued.values())
    print(f"queued again: {total} files ({requeued[RowState.FAILED]} failed, "
          f"{requeued[RowState.QUARANTINED]} quarantined, {requeued[RowState.PENDING]} waiting for a retry)"
          + ("; a running daemon takes them up within seconds" if total else ""))
    return EXIT_OK


def _print_runtime(runtime: dict[str, Any] | None) -> None:
    """Print the daemon's own view: paused, degraded endpoints and their speed."""
    if runtime is None:
        print("running: no (or no word from the daemon for two minutes)")
        return
    print(f"running: pid {runtime.get('pid')}" + (f", {runtime['paused']}" if runtime.get("paused") else ""))
    for endpoint, reason in (runtime.get("degraded") or {}).items():
        print(f"DEGRADED {endpoint}: {reason}. Fix: {FIX}")
    for figures in runtime.get("endpoints") or []:
        speed = figures.get("tokens_per_second")
        baseline = figures.get("baseline_tokens_per_second")
        vram = figures.get("vram_fraction")
        print(f"speed:  {figures.get('endpoint')}: "
              + (f"{speed:.1f} tokens/s" if isinstance(speed, int | float) else "no figures yet")
              + (f" (baseline {baseline:.1f})" if isinstance(baseline, int | float) else "")
              + (f", {vram:.0%} in GPU memory" if isinstance(vram, int | float) else ""))


def command_sources(arguments: argparse.Namespace) -> int:
    """Print PhotoPrism's source priority table (internal/entity/src.go), in its order."""
    ordered = sorted(SOURCES.items(), key=lambda item: (item[1][0], item[1][1].lower(), item[0]))
    rows = [[source, str(entry[0]), entry[1], "yes" if source in WRITABLE_SOURCES else ""]
            for source, entry in ordered]
    _print_table(["Source", "Priority", "Description", "--source"], rows)
    print("\nAs in PhotoPrism: a caption is generated when priority(--source) >= priority(current) and there is none\n"
          "(or --force), and kept only when the source recorded beside it ranks at least as high as the current one.\n"
          "--source auto (1) records the engine (ollama/openai, 16); --force alone replaces no caption of 16 or more.\n"
          "To re-caption our own captions: --force --source ollama. A caption with no record of ours, or edited since\n"
          "we wrote it, counts as xmp (sidecar) or meta (embedded).")
    return EXIT_OK


def _print_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=False)]
    print("  ".join(header.ljust(width) for header, width in zip(headers, widths, strict=True)).rstrip())
    print("  ".join("-" * width for width in widths))
    for row in rows:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}") from exc
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


if __name__ == "__main__":
    sys.exit(main())
