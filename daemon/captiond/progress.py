"""A progress bar with rate and ETA on stderr when it is a terminal (rich); nothing otherwise: log lines suffice.

The bar and the log lines shown above it go to stderr, so stdout keeps only the summary
(`captiond run > out.txt` and `| tee` leave the bar on the terminal).
"""

from __future__ import annotations

import logging
from types import TracebackType

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress


class Progress:
    """Counts processed files against a total and shows a bar when enabled."""

    def __init__(self, total: int, enabled: bool) -> None:
        self._bar: RichProgress | None = None
        self._saved_handlers: list[logging.Handler] = []
        if enabled:
            self._bar = RichProgress(
                TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), transient=True,
                console=Console(stderr=True), redirect_stdout=False)
            self._task = self._bar.add_task("captioning", total=total, rate="")

    def __enter__(self) -> Progress:
        if self._bar is not None:
            self._bar.start()
            # Log lines go through the bar's console, which prints them above the bar instead of across it.
            root = logging.getLogger()
            self._saved_handlers = root.handlers[:]
            handler = RichHandler(console=self._bar.console, show_path=False, markup=False, log_time_format="%X")
            handler.setLevel(min((item.level for item in self._saved_handlers), default=logging.INFO))
            for saved in self._saved_handlers:
                for log_filter in saved.filters:
                    handler.addFilter(log_filter)
            root.handlers = [handler]
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.stop()
            logging.getLogger().handlers = self._saved_handlers

    @property
    def shown(self) -> bool:
        """Return whether the bar is on the terminal (then per-file lines are left to -v)."""
        return self._bar is not None

    def advance(self) -> None:
        """Count one finished file."""
        if self._bar is not None:
            task = self._bar.tasks[0]
            rate = f"{task.speed:.2f} files/s" if task.speed else ""
            self._bar.update(self._task, advance=1, rate=rate)
