"""Progress bars and notes on stderr: the CLI's Reporter for long library work."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from factstore.api import Reporter

_console = Console(stderr=True)
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


BARS: Reporter = Bars()
