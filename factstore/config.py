"""Every path and setting comes from here; tests point FACTSTORE_HOME at a temporary folder."""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "FACTSTORE_HOME"
CACHE_ENV = "FACTSTORE_CACHE"
DATABASE_ENV = "FACTSTORE_DATABASE_URL"
DEBUG_ENV = "FACTSTORE_DEBUG"
DEVICE_ENV = "FACTSTORE_DEVICE"
MAX_PROMPT_TOKENS_ENV = "FACTSTORE_MAX_PROMPT_TOKENS"
MAX_TARGET_TOKENS_ENV = "FACTSTORE_MAX_TARGET_TOKENS"


def home() -> Path:
    """The folder that holds the default database, the cache and releases."""
    path = Path(os.environ.get(HOME_ENV) or Path.home() / ".factstore").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir() -> Path:
    """Downloaded assets, converted checkpoints and covariance statistics."""
    path = Path(os.environ.get(CACHE_ENV) or home() / "cache").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def releases_dir() -> Path:
    path = home() / "releases"
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_database_path() -> Path:
    return home() / "factstore.db"


def database_url() -> str:
    """FACTSTORE_DATABASE_URL, or the embedded SQLite database under FACTSTORE_HOME."""
    return os.environ.get(DATABASE_ENV) or f"sqlite:///{default_database_path()}"


def is_default_database(url: str) -> bool:
    return url == f"sqlite:///{default_database_path()}"


def debug() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0", "false")


def device() -> str | None:
    """FACTSTORE_DEVICE (cpu, cuda, cuda:N, mps, auto), or None: auto (the GPU when there is one, see checkpoints._placement)."""
    return os.environ.get(DEVICE_ENV) or None


def _positive(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.isdigit() and int(value) > 0 else default


def max_prompt_tokens() -> int:
    """Longest prompt (and subject) of an edit, `ask` or `trace`, in tokens: a fact is short, and a
    long prompt costs memory and time in every optimisation step."""
    return _positive(MAX_PROMPT_TOKENS_ENV, 256)


def max_target_tokens() -> int:
    """Longest new object of an edit, in tokens."""
    return _positive(MAX_TARGET_TOKENS_ENV, 64)


LEASE_SECONDS_ENV = "FACTSTORE_LEASE_SECONDS"


def lease_seconds() -> int:
    """How long a worker's hold on a model lasts without a heartbeat: a killed worker's edits
    are taken over after at most this long (heartbeats renew it every third of it)."""
    return _positive(LEASE_SECONDS_ENV, 30)
