"""Live progress of long work on a terminal: per table, rows done of the rows to go,
rows/s and time left (rich). `once` and `repair` show it when stderr is a terminal and
`--json` is not given; logs keep flowing above the bars. Nothing changes when the
output is not a terminal: no bars, the same log lines.
"""

from __future__ import annotations

import logging
import sys
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, TextIO

if TYPE_CHECKING:
    from rich.progress import Progress as RichProgress
    from rich.progress import TaskID


class Progress(Protocol):
    """What a table run reports as it goes (Services.progress)."""

    def start(self, target: str, total: int | None) -> None:
        """A table starts moving `total` rows (None: unknown)."""

    def advance(self, target: str, rows: int) -> None: ...

    def finish(self, target: str, status: str) -> None: ...


def wanted(json_output: bool, stream: TextIO | None = None) -> bool:
    """Whether to draw progress: on a terminal, not for machine-readable output."""
    stream = stream or sys.stderr
    return not json_output and stream.isatty()


class TerminalProgress:
    """rich's progress bars on stderr, one per table, as a context manager."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeRemainingColumn,
        )

        self._bars: RichProgress = Progress(
            TextColumn("{task.description:<28}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[rate]:>12}"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
            console=Console(stderr=True),
            redirect_stderr=True,
            redirect_stdout=False,
        )
        self._tasks: dict[str, TaskID] = {}
        self._moved: list[tuple[logging.StreamHandler[Any], TextIO]] = []

    def __enter__(self) -> TerminalProgress:
        self._bars.start()
        # Log handlers hold the real stderr; point them at rich's proxy so log lines
        # print above the bars instead of through them.
        for handler in logging.getLogger().handlers:
            stream: TextIO = getattr(handler, "stream", None)  # type: ignore[assignment]
            if isinstance(handler, logging.StreamHandler) and stream is sys.__stderr__:
                self._moved.append((handler, stream))
                handler.setStream(sys.stderr)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for handler, stream in self._moved:
            handler.setStream(stream)
        self._bars.stop()

    def start(self, target: str, total: int | None) -> None:
        task = self._tasks.get(target)
        if task is None:
            self._tasks[target] = self._bars.add_task(
                target, total=total, rate="", status="running"
            )
        else:
            self._bars.update(task, total=total, completed=0, status="running")

    def advance(self, target: str, rows: int) -> None:
        task = self._tasks.get(target)
        if task is None:
            return
        self._bars.advance(task, rows)
        speed = self._bars.tasks[self._task_index(task)].speed
        self._bars.update(task, rate=f"{speed:,.0f} rows/s" if speed else "")

    def finish(self, target: str, status: str) -> None:
        task = self._tasks.get(target)
        if task is None:
            return
        done = self._bars.tasks[self._task_index(task)].completed
        self._bars.update(task, total=done or 1, completed=done or 1, status=status)

    def _task_index(self, task: TaskID) -> int:
        return next(i for i, t in enumerate(self._bars.tasks) if t.id == task)
