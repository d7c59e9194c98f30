"""One table maps failures to what a person sees and the exit code."""

from __future__ import annotations

import sys
import traceback

from factstore.api import FactStoreError, debug_enabled

# (exception type, exit code, how to print it); the first match wins. FactStoreError messages
# already say what to do next; anything else is a bug and says how to see the traceback.
TABLE: tuple[tuple[type[BaseException], int, str], ...] = (
    (KeyboardInterrupt, 130, "interrupted: finished work is kept; rerun the command to continue"),
    (FactStoreError, 1, "error: {exc}"),
    (Exception, 2, "internal error: {name}: {exc} (set FACTSTORE_DEBUG=1 for the traceback)"),
)


def report(exc: BaseException) -> int:
    """Print a failure on one line of stderr and return the exit code."""
    if debug_enabled():
        traceback.print_exception(exc)
    for kind, code, template in TABLE:
        if isinstance(exc, kind):
            message = template.format(exc=exc, name=exc.__class__.__name__)
            print(" ".join(message.split()), file=sys.stderr)  # one line, whatever the exception's text holds
            return code
    raise exc
