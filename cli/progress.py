"""Progress on stderr, the CLI's Reporter for long library work: bars on a terminal, and where
stderr is a file or a pipe (a run in the background, a CI log) a plain line every LINE_SECONDS
of a task, and one when a task that printed one ends (short work stays quiet)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from factstore.api import Reporter

_console = Console(stderr=True)
LINE_SECONDS = 30.0
_COLUMNS = (
    TextColumn("{task.description}"),
    BarColumn(),
    MofNCompleteColumn(),
    TimeElapsedColumn(),
    TimeRemainingColumn(),
)


class Bars:
    """Draws each task as a transient bar; notes as dim lines."""

    @contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
        with Progress(*_COLUMNS, console=_console, transient=True) as progress:
            task = progress.add_task(description, total=total)
            yield lambda n: progress.update(task, completed=n)

    def note(self, message: str) -> None:
        _console.print(message, style="dim", highlight=False)


class Lines(Bars):
    """A line per task every LINE_SECONDS and one when a task that printed one ends: what a log can keep."""

    def __init__(self, every: float = LINE_SECONDS) -> None:
        self.every = every

    @contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
        started = last = time.monotonic()
        done, printed = 0, False

        def line(final: bool = False) -> None:
            of = f"/{total}" if total is not None else ""
            state = "done" if final else "..."
            _console.print(
                f"{description}: {done}{of} {state} ({time.monotonic() - started:.0f} s)", highlight=False, markup=False
            )

        def advance(n: int) -> None:
            nonlocal done, last, printed
            done = n
            if time.monotonic() - last >= self.every:
                last, printed = time.monotonic(), True
                line()

        yield advance
        if printed:
            line(final=True)


BARS: Reporter = Bars() if _console.is_terminal else Lines()
