"""One table maps failures to what a person sees and the exit code."""

from __future__ import annotations

import sys
import traceback

import typer

from factstore.api import FactStoreError, debug_enabled

# Typer bundles its own Click (and asks not to import it): its command-line errors are the
# bases of typer.BadParameter.
UsageError = typer.BadParameter.__mro__[1]  # a bad option or argument value, a missing option
ClickException = typer.BadParameter.__mro__[2]

# (exception type, exit code, how to print it); the first match wins. FactStoreError messages
# already say what to do next; anything else is a bug and says how to see the traceback.
TABLE: tuple[tuple[type[BaseException], int, str], ...] = (
    (KeyboardInterrupt, 130, "interrupted: finished work is kept; rerun the command to continue"),
    (FactStoreError, 1, "error: {exc}"),
    (UsageError, 1, "error: {usage} (see --help)"),
    (ClickException, 1, "error: {usage}"),
    (
        OSError,
        1,
        "error: {exc} (a file-system or network failure: check the path, permissions and free space, then retry)",
    ),
    (Exception, 2, "internal error: {name}: {exc} (set FACTSTORE_DEBUG=1 for the traceback)"),
)


def _usage(exc: BaseException) -> str:
    """The message of a command-line error (Click's format_message), else empty."""
    message = getattr(exc, "format_message", None) if isinstance(exc, ClickException) else None
    return str(message()) if callable(message) else ""


def report(exc: BaseException) -> int:
    """Print a failure on one line of stderr and return the exit code."""
    if debug_enabled():
        traceback.print_exception(exc)
    usage = _usage(exc)
    if isinstance(exc, UsageError) and not usage:
        return 0  # a group called without a command: its help is already shown
    for kind, code, template in TABLE:
        if isinstance(exc, kind):
            message = template.format(exc=exc, name=exc.__class__.__name__, usage=usage)
            print(" ".join(message.split()), file=sys.stderr)  # one line, whatever the exception's text holds
            return code
    raise exc
