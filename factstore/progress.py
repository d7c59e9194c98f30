"""How long work reports progress: through a Reporter passed down from the façade.

Nothing below the command line draws or prints; the CLI passes a Reporter that draws rich
progress bars on stderr, tests and library callers get SILENT unless they pass their own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

Advance = Callable[[int], None]  # set_completed(n)


class Reporter(Protocol):
    def task(self, description: str, total: int | None) -> AbstractContextManager[Advance]:
        """A unit of long work with TOTAL steps (None: unknown); yields set_completed(n)."""
        ...

    def note(self, message: str) -> None:
        """A one-line remark about slow work about to start (a download, a conversion)."""
        ...


class _Silent:
    @contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Advance]:
        yield lambda n: None

    def note(self, message: str) -> None:
        pass


SILENT: Reporter = _Silent()
