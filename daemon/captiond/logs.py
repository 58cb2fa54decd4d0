"""Log lines for people and for machines: readable text, JSON lines, or journald's priority prefix; secrets redacted."""

from __future__ import annotations

import json
import logging
import os
import sys

from .redaction import RedactingFilter

log = logging.getLogger("captiond")


class JsonFormatter(logging.Formatter):
    """One JSON object per log line (time, level, logger, message)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname.lower(),
                 "logger": record.name, "message": record.getMessage()}
        if record.exc_text:
            entry["exception"] = record.exc_text
        elif record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class JournalFormatter(logging.Formatter):
    """Lines for journald: no timestamp of our own (the journal has one), the level as a `<N>` priority prefix."""

    PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

    def format(self, record: logging.LogRecord) -> str:
        priority = self.PRIORITIES.get(record.levelno, 6)
        return f"<{priority}>{record.levelname} {super().format(record)}"


def logs_to_journal(stream: object, environ: dict[str, str] | None = None) -> bool:
    """Return whether `stream` is systemd's journal stream ($JOURNAL_STREAM names its device and inode)."""
    expected = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    try:
        status = os.fstat(stream.fileno())  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return False
    return bool(expected) and expected == f"{status.st_dev}:{status.st_ino}"


def setup_logging(verbose: int, quiet: bool, log_format: str = "text") -> None:
    """Log readable lines (or JSON lines) to stderr, with every secret redacted; under journald without a second
    timestamp.

    captiond's own lines: INFO (-q: WARNING, -v: DEBUG). Other libraries' (httpx, Pillow, watchdog):
    WARNING, INFO under -v, DEBUG only under -vv.
    """
    own = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    others = logging.DEBUG if verbose >= 2 else logging.INFO if verbose else logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    text = (JournalFormatter("%(message)s") if logs_to_journal(sys.stderr) else
            logging.Formatter("%(asctime)s %(levelname)s %(message)s", datefmt="%Y-%m-%d %H:%M:%S"))
    handler.setFormatter(JsonFormatter() if log_format == "json" else text)
    handler.addFilter(RedactingFilter())
    logging.basicConfig(level=others, handlers=[handler], force=True)
    log.setLevel(own)
