"""Rich progress bars on stderr, behind the :class:`~musicbench.interfaces.Progress` protocol."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

stderr = Console(stderr=True)


def print_error(message: object) -> None:
    """``error: message`` on stderr; the message is escaped (``[run]`` is not rich markup)."""
    stderr.print(f"[bold red]error:[/] {escape(str(message))}")


def print_note(message: object, style: str = "") -> None:
    text = escape(str(message))
    stderr.print(f"[{style}]{text}[/]" if style else text)


class _Task:
    """One bar. Without a live display (stderr is a file: a log of a long run), a new
    description is also printed as a line, at most one per ``LOG_EVERY_S`` seconds, so a log
    shows a training's epochs rather than only its start and end."""

    LOG_EVERY_S = 5.0

    def __init__(self, bars: Progress, task_id: int, *, logged: bool = False):
        self._bars, self._id, self._logged = bars, task_id, logged
        self._started = self._last_line = time.perf_counter()

    def advance(self, n: float = 1) -> None:
        self._bars.advance(self._id, n)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._started

    def update(self, *, description: str | None = None) -> None:
        if description is None:
            return
        self._bars.update(self._id, description=description)
        now = time.perf_counter()
        if self._logged and now - self._last_line >= self.LOG_EVERY_S:
            self._last_line = now
            self._bars.console.print(f"{escape(description.strip())} ({self.elapsed:.0f} s)",
                                     highlight=False)


class RichProgress:
    """One live display; each ``with progress(...)`` adds a bar that disappears when done."""

    def __init__(self, console: Console = stderr):
        self.bars = Progress(
            SpinnerColumn(), TextColumn("[progress.description]{task.description}"), BarColumn(),
            MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            console=console, transient=False,
        )

    def __enter__(self) -> RichProgress:
        self.bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bars.stop()

    @contextlib.contextmanager
    def __call__(self, description: str, total: float | None = None) -> Iterator[_Task]:
        task_id = self.bars.add_task(description, total=total)
        logged = not self.bars.console.is_terminal  # no live display: log lines instead
        if logged:
            self.bars.console.print(f"{escape(description.strip())} ...", highlight=False)
        task = _Task(self.bars, task_id, logged=logged)
        try:
            yield task
        finally:
            self.bars.stop_task(task_id)
            if logged:
                final = self.bars.tasks[task_id].description.strip()
                self.bars.console.print(f"{escape(final)}: done in {task.elapsed:.1f} s",
                                        highlight=False)
