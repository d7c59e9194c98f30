"""Optional parts of factstore and the packages they need (the distribution's extras).

The core (library, CLI, SQLite) needs none of these; each front that does checks with
`require` before importing, so a missing package is one line naming the extra to install.
"""

from __future__ import annotations

import importlib.util

from .errors import FactStoreError

DISTRIBUTION = "factstore-edit"

# module -> (extra, what needs it)
EXTRAS: dict[str, tuple[str, str]] = {
    "fastapi": ("server", "the HTTP service (factstore serve)"),
    "uvicorn": ("server", "the HTTP service (factstore serve)"),
    "jinja2": ("server", "the web page"),
    "multipart": ("server", "the web page's forms"),
    "psycopg": ("postgres", "a PostgreSQL store"),
    "matplotlib": ("plots", "figures (trace heatmaps, lifelong curves)"),
    "gguf": ("gguf", "GGUF checkpoints and the starter models"),
}


class MissingExtra(FactStoreError):
    """An optional package that this use of factstore needs is not installed."""


def install_hint(module: str) -> str:
    extra, what = EXTRAS[module]
    return f"{what} needs the package {module!r}: pip install '{DISTRIBUTION}[{extra}]'"


def require_extra(extra: str) -> None:
    """Raise MissingExtra for the first missing module of EXTRA (as EXTRAS lists them)."""
    require(*(module for module, (name, _) in EXTRAS.items() if name == extra))


def require(*modules: str) -> None:
    """Raise MissingExtra for the first of MODULES that is not installed."""
    for module in modules:
        if importlib.util.find_spec(module) is None:
            raise MissingExtra(install_hint(module))
