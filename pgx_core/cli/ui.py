"""What a person at a terminal sees while pgx works; off a terminal, or with ``--json``, pgx prints
JSON instead (log lines on standard error, one document on standard output).

On a terminal: human log lines, one progress bar per stage (entities done of total, rows/s, time
left) that log lines never break (they print above it), a spinner while the executor starts, and a
closing panel with what was produced, where, and the next command to try.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from typing import IO, Any

from rich.console import Console, Group
from rich.panel import Panel
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from pgx_core import log
from pgx_core.run.worker import EntityOutcome

# A rate over less than this is noise (the first entity of a stage), so it is not shown yet.
MIN_RATE_SECONDS = 1.0
_LEVEL_STYLE = {"DEBUG": "dim", "INFO": "cyan", "WARNING": "yellow", "ERROR": "bold red", "CRITICAL": "bold red"}
# Log fields that are the line's frame, not its content.
_FRAME = {"ts", "level", "msg", "run_id", "event"}


class _Rate(ProgressColumn):
    """Rows per second of the stage so far, once there is a rate worth showing."""

    def render(self, task: Task) -> Text:
        if task.total is None:  # a spinner, not a stage
            return Text("")
        rows = task.fields.get("rows", 0)
        elapsed = task.finished_time if task.finished_time is not None else (task.elapsed or 0.0)
        if not task.completed or elapsed < MIN_RATE_SECONDS:
            return Text("      … rows/s", style="dim")
        return Text(f"{rows / elapsed:>9,.0f} rows/s", style="green")


class _Done(MofNCompleteColumn):
    """Entities done of all, for a stage (nothing for a spinner)."""

    def render(self, task: Task) -> Text:
        return Text("") if task.total is None else super().render(task)


class HumanLogHandler(logging.Handler):
    """Log records as one readable line each: time, level, message, then the record's fields."""

    def __init__(self, console: Console) -> None:
        super().__init__()
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        try:
            # (a leading underscore marks a library's own field, such as Ray's timestamps)
            fields = {k: v for k, v in log.fields(record).items() if k not in _FRAME and not k.startswith("_")}
            line = Text(time.strftime("%H:%M:%S ", time.localtime(record.created)), style="dim")
            line.append(f"{record.levelname:<7} ", style=_LEVEL_STYLE.get(record.levelname, ""))
            line.append(record.getMessage())
            if fields:
                line.append("  " + " ".join(f"{k}={v}" for k, v in fields.items()), style="dim")
            self.console.print(line, soft_wrap=True, highlight=False)
        except Exception:  # a log line must never end the run; logging reports it on stderr
            self.handleError(record)


class Ui:
    """Nothing to show: JSON output, or no terminal (the runner's log lines say it all)."""

    live = False  # whether progress is on screen (the runner then logs each entity at debug level)

    def log_handler(self) -> logging.Handler | None:
        """Where log lines go (``None``: JSON lines on standard error)."""
        return None

    def runner_hooks(self) -> dict[str, Any]:
        """The runner's display callbacks. Progress goes only to a live display: without one the
        runner logs each entity at info level instead of drawing it."""
        return {"on_progress": self.update if self.live else None, "on_starting": self.starting}

    def update(self, stage: str, outcome: EntityOutcome | None, done: int, total: int) -> None:
        """An entity of ``stage`` finished (``outcome``), ``done`` of ``total``."""

    @contextlib.contextmanager
    def starting(self, what: str) -> Iterator[None]:
        """Something slow is starting (the executor): a spinner on a terminal."""
        yield

    def close(self) -> None:
        """The work is over: leave the last state of every bar on the screen."""

    def panel(self, title: str, lines: Sequence[str], hints: Sequence[str], ok: bool) -> None:
        """The closing summary, as plain lines: what was done, then the title (how it ended)."""
        for line in lines:
            print(line)
        print(title)
        for hint in hints:
            print(f"next: {hint}")


class TerminalUi(Ui):
    """Rich progress bars on standard error, panels on standard output."""

    live = True

    def __init__(self, err: Console, out: Console) -> None:
        self.err, self.out = err, out
        self.progress = Progress(
            SpinnerColumn(finished_text="[green]✓[/]"),
            TextColumn("{task.description:<22}"),
            BarColumn(bar_width=28),
            _Done(),
            _Rate(),
            TimeRemainingColumn(compact=True, elapsed_when_finished=True),
            console=err,
            transient=False,
        )
        self._tasks: dict[str, Any] = {}
        self._rows: dict[str, int] = {}
        self._started = False

    def log_handler(self) -> logging.Handler:
        return HumanLogHandler(self.err)

    def _start(self) -> None:
        if not self._started:
            self.progress.start()
            self._started = True

    def update(self, stage: str, outcome: EntityOutcome | None, done: int, total: int) -> None:
        self._start()
        task = self._tasks.get(stage)
        if task is None:
            task = self._tasks[stage] = self.progress.add_task(stage, total=total, rows=0)
        self._rows[stage] = self._rows.get(stage, 0) + (outcome.rows_in if outcome else 0)
        self.progress.update(task, completed=done, total=total, rows=self._rows[stage])

    @contextlib.contextmanager
    def starting(self, what: str) -> Iterator[None]:
        self._start()
        task = self.progress.add_task(what, total=None, rows=0)
        try:
            yield
        finally:
            self.progress.remove_task(task)

    def close(self) -> None:
        if self._started:
            self.progress.stop()
            self._started = False

    def panel(self, title: str, lines: Sequence[str], hints: Sequence[str], ok: bool) -> None:
        if not self.out.is_terminal:  # piped: plain lines, as off a terminal
            super().panel(title, lines, hints, ok)
            return
        body = Table.grid(padding=(0, 1))
        for line in lines:
            body.add_row(Text(line, overflow="fold"))
        if hints:
            body.add_row(Text(""))
            for hint in hints:
                body.add_row(Text.assemble(("next: ", "bold"), (hint, "cyan")))
        self.out.print(Panel(Group(body), title=title, border_style="green" if ok else "red", expand=False))


def make_ui(as_json: bool, *, err: IO[str] | None = None, out: IO[str] | None = None) -> Ui:
    """The terminal display when standard error is a terminal and ``--json`` was not given."""
    err_stream, out_stream = err or sys.stderr, out or sys.stdout
    if as_json or not err_stream.isatty():
        return Ui()
    return TerminalUi(Console(file=err_stream, stderr=True), Console(file=out_stream))
