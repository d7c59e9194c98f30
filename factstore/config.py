"""Every path and setting comes from here; tests point FACTSTORE_HOME at a temporary folder.

`Settings` documents every FACTSTORE_* variable and checks it: a bad value is a one-line
`SettingsError` naming the variable and what it takes (the CLI checks them at start). The
environment is read on every call, so a changed variable takes effect at once (tests set them
per test).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from .errors import FactStoreError

PREFIX = "FACTSTORE_"
HOME_ENV = "FACTSTORE_HOME"
CACHE_ENV = "FACTSTORE_CACHE"
DATABASE_ENV = "FACTSTORE_DATABASE_URL"
DEBUG_ENV = "FACTSTORE_DEBUG"
DEVICE_ENV = "FACTSTORE_DEVICE"
MAX_PROMPT_TOKENS_ENV = "FACTSTORE_MAX_PROMPT_TOKENS"
MAX_TARGET_TOKENS_ENV = "FACTSTORE_MAX_TARGET_TOKENS"
LEASE_SECONDS_ENV = "FACTSTORE_LEASE_SECONDS"
DEVICES = "cpu, cuda, cuda:N, mps or auto"
DEVICE_PATTERN = re.compile(r"cpu|cuda(:[0-9]{1,2})?|mps|auto")


def _device(value: str | None) -> str | None:
    if value is not None and not DEVICE_PATTERN.fullmatch(value):
        raise ValueError(f"it takes {DEVICES}")
    return value


class SettingsError(FactStoreError):
    """A FACTSTORE_* variable holds a value factstore cannot use."""


class Settings(BaseSettings):
    """The FACTSTORE_* environment variables (an empty variable counts as unset)."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, env_ignore_empty=True, extra="ignore", frozen=True)

    home: Path | None = Field(
        None, description="Folder of the default database, releases and the cache (default ~/.factstore)."
    )
    cache: Path | None = Field(
        None, description="Downloads, converted checkpoints and key statistics (default FACTSTORE_HOME/cache)."
    )
    database_url: str | None = Field(
        None, description="SQLAlchemy URL of the store (default: SQLite file under FACTSTORE_HOME)."
    )
    debug: bool = Field(False, description="Print tracebacks with errors (1/true/yes/on or 0/false/no/off).")
    device: Annotated[str | None, AfterValidator(_device)] = Field(
        None, description=f"Default device: {DEVICES} (default auto)."
    )
    max_prompt_tokens: int = Field(
        256, ge=1, le=1_000_000, description="Longest prompt (and subject) of an edit, ask or trace, in tokens."
    )
    max_target_tokens: int = Field(64, ge=1, le=1_000_000, description="Longest new object of an edit, in tokens.")
    lease_seconds: int = Field(
        30, ge=1, le=86_400, description="How long a worker's hold on a model lasts without a heartbeat."
    )
    job_seconds: int = Field(
        900, ge=1, le=7 * 86_400, description="Wall-clock limit of one trace job; past it the job fails."
    )
    trace_max_tokens: int = Field(
        64, ge=1, le=1_000_000, description="Longest prompt of a trace job, in tokens (its cost grows with the square)."
    )
    health_tokens: int = Field(
        2048, ge=0, le=1_000_000, description="Held-out tokens each compile measures the release's health on (0: off)."
    )
    max_perplexity_rise: float = Field(
        5.0, ge=0, le=1e6, description="Held-out perplexity rise (percent) past which publish refuses a release."
    )
    trace_max_samples: int = Field(50, ge=1, le=10_000, description="Most noise samples of one trace job.")
    max_pending: int = Field(
        1000, ge=1, le=10_000_000, description="Requests one API token may have waiting to be computed (429 past it)."
    )
    max_pending_jobs: int = Field(
        20, ge=1, le=1_000_000, description="Jobs one API token may have pending or running (429 past it)."
    )
    ask_threads: int = Field(2, ge=1, le=64, description="Threads of serve that compute `ask` answers.")
    ask_queue: int = Field(
        8, ge=0, le=10_000, description="Asks let wait for those threads; past them an ask gets 503 at once."
    )
    ask_per_minute: int = Field(
        60, ge=1, le=1_000_000, description="Asks one client (its token, else its address) may make a minute (429)."
    )
    ask_heads: int = Field(
        2, ge=1, le=64, description="Edited models serve keeps loaded for `ask`; the least recently asked goes first."
    )
    publish_repos: str | None = Field(
        None,
        description="Hub repositories a worker may publish to for a publish job: comma-separated NS/NAME or NS/*"
        " (unset: it takes no publish jobs, whatever its credentials).",
    )
    stats_share: str | None = Field(
        None,
        description="Where workers hand each other key statistics (shard jobs, merged C): an absolute folder"
        " every host mounts, or hub:NS/NAME, a Hub repository (unset: no statistics jobs).",
    )


def _accepts(field: str, error_type: str, message: str) -> str:
    """What FIELD takes, in words."""
    if error_type == "bool_parsing":
        return "it takes a boolean (1/true/yes/on or 0/false/no/off)"
    bounds = {type(m).__name__: m for m in Settings.model_fields[field].metadata}
    if "Ge" in bounds and "Le" in bounds:
        if Settings.model_fields[field].annotation is float:
            low, high = (f"{float(b):,.10g}" if abs(b) < 1e15 else str(b) for b in (bounds["Ge"].ge, bounds["Le"].le))
            return f"it takes a number from {low} to {high}"
        return f"it takes a whole number from {bounds['Ge'].ge} to {bounds['Le'].le}"
    return message.removeprefix("Value error, ")


def settings() -> Settings:
    """The settings as the environment holds them now; SettingsError for a bad value."""
    try:
        return Settings()
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0])
        name = PREFIX + field.upper()
        what = _accepts(field, error["type"], str(error["msg"]))
        shown = os.environ.get(name, "")[:40]
        raise SettingsError(f"{name}={shown!r} is not valid: {what}") from None


def home() -> Path:
    """The folder that holds the default database, the cache and releases."""
    path = (settings().home or Path.home() / ".factstore").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir() -> Path:
    """Downloaded assets, converted checkpoints and covariance statistics."""
    path = (settings().cache or home() / "cache").expanduser()
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
    return settings().database_url or f"sqlite:///{default_database_path()}"


def is_default_database(url: str) -> bool:
    return url == f"sqlite:///{default_database_path()}"


def debug() -> bool:
    """FACTSTORE_DEBUG; a bad value reads as off here (the error reporter must not fail), and
    is refused by `settings()` where the CLI checks them at start."""
    try:
        return settings().debug
    except SettingsError:
        return False


def device() -> str | None:
    """FACTSTORE_DEVICE (cpu, cuda, cuda:N, mps, auto), or None: auto (the GPU when there is one, see checkpoints._placement)."""
    return settings().device


def max_prompt_tokens() -> int:
    """Longest prompt (and subject) of an edit, `ask` or `trace`, in tokens: a fact is short, and a
    long prompt costs memory and time in every optimisation step."""
    return settings().max_prompt_tokens


def max_target_tokens() -> int:
    """Longest new object of an edit, in tokens."""
    return settings().max_target_tokens


def lease_seconds() -> int:
    """How long a worker's hold on a model lasts without a heartbeat: a killed worker's edits
    are taken over after at most this long (heartbeats renew it every third of it)."""
    return settings().lease_seconds
