"""One table maps failures to a one-line message, a hint, and an exit code."""

from __future__ import annotations

import sys
import traceback

from factstore import config
from factstore.errors import DatabaseUnavailable, FactStoreError, SchemaOutOfDate

EXIT_USER = 1
EXIT_INTERRUPTED = 130

# exception type -> hint printed after the message (the message itself says what to do)
HINTS: dict[type[BaseException], str] = {
    SchemaOutOfDate: "",
    DatabaseUnavailable: "",
    FactStoreError: "",
}


def report(exc: BaseException) -> int:
    """Print a failure for a person and return the exit code."""
    if config.debug():
        traceback.print_exception(exc)
    if isinstance(exc, KeyboardInterrupt):
        print("interrupted: finished work is kept; rerun the command to continue", file=sys.stderr)
        return EXIT_INTERRUPTED
    if isinstance(exc, FactStoreError):
        hint = next((h for t, h in HINTS.items() if isinstance(exc, t)), "")
        print(f"error: {exc}" + (f" ({hint})" if hint else ""), file=sys.stderr)
        return EXIT_USER
    print(f"internal error: {exc.__class__.__name__}: {exc} (set FACTSTORE_DEBUG=1 for the traceback)", file=sys.stderr)
    return 2
