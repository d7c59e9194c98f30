"""The façade: every operation behind the CLI (and the coming HTTP server), callable directly
by tests and scripts. Nothing inside factstore imports this module.

Torch-free at import (listing edits or models must start fast): the rooms that need torch are
imported inside the functions that use them.
"""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import TYPE_CHECKING

from factstore import config
from factstore.domain import BaseModel, EditRequest, Release, StoredEdit, check_alias
from factstore.errors import FactStoreError, InvalidEditRequest
from factstore.progress import SILENT, Reporter
from factstore.storage import schema
from factstore.storage.engine import check_reachable, make_engine
from factstore.storage.store import Store

if TYPE_CHECKING:
    from factstore.analysis.causal_trace import TraceSettings
    from factstore.editing.session import EditOutcome
    from factstore.release.publish import Published
    from factstore.release.pull import Pulled

__all__ = ["SILENT", "FactStoreError", "Reporter", "Store", "debug_enabled"]

EVAL_MODES = ("single", "lifelong")


def debug_enabled() -> bool:
    """FACTSTORE_DEBUG is set: front ends show tracebacks."""
    return config.debug()


# database ----------------------------------------------------------------------------------


def open_store(url: str | None = None) -> Store:
    """The fact store at URL (default FACTSTORE_DATABASE_URL, else the embedded SQLite file)."""
    return Store(url)


def upgrade_database(url: str | None = None) -> dict:
    engine = make_engine(url or config.database_url())
    try:
        check_reachable(engine)
        previous = schema.current_revision(engine)
        schema.upgrade(engine)
        return {"previous": previous, "current": schema.current_revision(engine), "head": schema.head_revision()}
    finally:
        engine.dispose()


def database_status(url: str | None = None) -> dict:
    engine = make_engine(url or config.database_url())
    try:
        check_reachable(engine)
        shown = engine.url.render_as_string(hide_password=True)
        return {"url": shown, "current": schema.current_revision(engine), "head": schema.head_revision()}
    finally:
        engine.dispose()


# models ------------------------------------------------------------------------------------


def add_model(store: Store, alias: str, source: str, revision: str | None = None, *, progress: Reporter = SILENT) -> tuple[BaseModel, bool]:
    """Pin SOURCE (Hub id, folder, .gguf, starter:NAME) to exact weights under ALIAS. Returns (model, created)."""
    from factstore.editing.models import register_model

    return register_model(store, alias, source, revision, progress=progress)


def list_models(store: Store) -> list[BaseModel]:
    return store.list_base_models()


def compute_stats(
    store: Store, alias: str, layer: int | str | None = None, *, corpus: str | None = None, tokens: int | None = None,
    device: str | None = None, progress: Reporter = SILENT,
) -> dict:
    """C for a model's edit layer (computed once, cached, resumable)."""
    from factstore.editing.session import EditSession
    from factstore.weights.corpus import DEFAULT_CORPUS

    session = EditSession(store, alias, device=device, corpus=corpus or DEFAULT_CORPUS, stats_tokens=tokens, progress=progress)
    hp = session.hparams(layer)
    cov = session.covariance(hp.layer, hp)
    return {"id": cov.id, "layer": cov.layer, "module": cov.module, "corpus": cov.corpus, "tokens": cov.tokens,
            "dtype": cov.dtype, "path": cov.path, "sha256": cov.sha256}


# edits -------------------------------------------------------------------------------------


def _user() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None


def add_edit(
    store: Store, alias: str, *, prompt: str, subject: str, target: str, relation: str | None = None,
    layer: int | str | None = None, note: str | None = None, device: str | None = None, progress: Reporter = SILENT,
) -> EditOutcome:
    """Compute one edit on the head model and register it."""
    from factstore.editing.models import check_size, tokenizer_for
    from factstore.editing.session import EditSession

    request = EditRequest(prompt=prompt, subject=subject, target_new=target, relation_id=relation)
    check_size(tokenizer_for(store, alias), request)  # before the model is loaded
    session = EditSession(store, alias, device=device, progress=progress)
    return session.add(request, layer=layer, note=note, requested_by=_user())


def import_edits(
    store: Store, alias: str, path: str, limit: int | None = None, *, layer: int | str | None = None,
    device: str | None = None, progress: Reporter = SILENT,
) -> dict:
    """Validate every record, then compute and commit one edit at a time; a rerun skips stored ones."""
    from factstore.editing import imports

    return imports.import_edits(store, alias, path, limit, layer=layer, device=device, requested_by=_user(), progress=progress)


def list_edits(store: Store, alias: str, status: str = "active") -> list[StoredEdit]:
    return store.list_edits(store.get_base_model(alias).id, status)


def get_edit(store: Store, edit_id: int) -> StoredEdit:
    return store.get_edit(edit_id)


def retract_edit(store: Store, edit_id: int) -> StoredEdit:
    """Mark an active edit retracted; the next compile rebuilds without it."""
    return store.set_edit_retracted(edit_id)


def ask_model(store: Store, alias: str, prompt: str, top: int = 5, *, device: str | None = None, progress: Reporter = SILENT) -> dict:
    """Top next tokens and the greedy continuation on the head model."""
    from factstore.editing.models import check_prompt_size, tokenizer_for
    from factstore.editing.session import EditSession, ask

    if not 1 <= top <= 100:
        raise InvalidEditRequest(f"top must be between 1 and 100, not {top}")
    check_prompt_size(tokenizer_for(store, alias), prompt)
    session = EditSession(store, alias, device=device, progress=progress)
    result = ask(session.model, session.tokenizer, prompt, top)
    result["edits_applied"] = len(session.applied)
    return result


# releases ----------------------------------------------------------------------------------


def compile_release(
    store: Store, alias: str, mode: str | None = None, out: str | None = None, *, device: str | None = None,
    timings: dict[str, float] | None = None, progress: Reporter = SILENT,
) -> tuple[Release, bool]:
    """Build (or reuse, when the log is unchanged) a release folder. Returns (release, created);
    timings, when given, receives seconds per phase."""
    from factstore.release import build
    from factstore.weights.replay import DEFAULT_MODE

    return build.build(store, alias, mode or DEFAULT_MODE, out, device, timings=timings, progress=progress)


def list_releases(store: Store, alias: str) -> list[Release]:
    return store.list_releases(store.get_base_model(alias).id)


def publish_release(
    store: Store, alias: str, repo: str, *, private: bool = False, mode: str | None = None, endpoint: str | None = None,
    device: str | None = None, progress: Reporter = SILENT,
) -> Published:
    """Compile if the log changed, upload as one commit on main, tag vN."""
    from factstore.release import publish

    return publish.publish(store, alias, repo, private=private, mode=mode, endpoint=endpoint, device=device, progress=progress)


def pull_release(
    repo: str, version: str | None = None, out: str | None = None, *, endpoint: str | None = None,
    import_into: Store | None = None, alias: str | None = None, device: str | None = None, progress: Reporter = SILENT,
) -> Pulled:
    """Download and verify one version; with import_into, continue its lineage in that store under ALIAS."""
    from dataclasses import replace

    from factstore.release import lineage, pull

    alias = alias or repo.split("/")[-1]
    if import_into is not None:
        check_alias(alias)  # before anything is downloaded
    pulled = pull.pull(repo, version, out, endpoint)
    if import_into is None:
        return pulled
    imported = lineage.import_release(import_into, Path(pulled.path), alias, repo, pulled.commit, pulled.version, device, progress)
    return replace(pulled, imported=imported)


# studies -----------------------------------------------------------------------------------


def trace_fact(
    store: Store, alias: str, *, prompt: str, subject: str, target: str | None = None, out: str | None = None,
    samples: int = 10, noise_factor: float = 3.0, window: int = 10, seed: int = 0, kinds: tuple[str, ...] | None = None,
    device: str | None = None, progress: Reporter = SILENT,
) -> dict:
    """Causal-tracing maps of one fact (PNGs + JSON)."""
    from factstore.editing.models import check_size, tokenizer_for
    from factstore.studies import tracing

    settings = _trace_settings(samples, noise_factor, window, seed, kinds)
    check_size(tokenizer_for(store, alias), EditRequest(prompt, subject, target or "x"))
    return tracing.trace_fact(store, alias, prompt, subject, target, settings=settings, out=out, device=device, progress=progress)


def trace_dataset(
    store: Store, alias: str, path: str, n: int = 50, *, out: str | None = None, samples: int = 10, noise_factor: float = 3.0,
    window: int = 10, seed: int = 0, kinds: tuple[str, ...] | None = None, device: str | None = None, progress: Reporter = SILENT,
) -> dict:
    """Average maps over N known facts; stores the MLP peak layer as the model's recommended layer."""
    from factstore.studies import tracing

    settings = _trace_settings(samples, noise_factor, window, seed, kinds)
    if "mlp" not in settings.kinds:
        raise InvalidEditRequest("tracing a dataset needs the mlp map: the recommended layer is where its effect peaks")
    return tracing.trace_dataset(store, alias, path, n, settings=settings, out=out, device=device, progress=progress)


def _trace_settings(samples: int, noise_factor: float, window: int, seed: int, kinds: tuple[str, ...] | None) -> TraceSettings:
    from factstore.analysis.causal_trace import KINDS, TraceSettings

    chosen = kinds or KINDS
    if not chosen or not set(chosen) <= set(KINDS):
        raise InvalidEditRequest(f"trace kinds must be among {', '.join(KINDS)}; got {', '.join(chosen) or 'none'}")
    return TraceSettings(samples=samples, noise_factor=noise_factor, window=window, seed=seed, kinds=tuple(chosen))


def evaluate_model(
    store: Store, alias: str, dataset: str, n: int | None = 100, *, mode: str = "single", release: int | None = None,
    fluency: bool = True, every: int | None = None, out: str | None = None, device: str | None = None, progress: Reporter = SILENT,
) -> dict:
    """CounterFact scores: `single` (each record edited alone on the base), `lifelong` (all
    registered in a temporary store, scored on the compiled model) or a built release."""
    from factstore.analysis.metrics import FluencySettings
    from factstore.datasets import read_records
    from factstore.studies import evaluation

    if mode not in EVAL_MODES:
        raise InvalidEditRequest(f"unknown evaluation mode {mode!r}; use {' or '.join(EVAL_MODES)}")
    records = read_records(dataset, n)
    settings = FluencySettings() if fluency else None
    if release is not None:
        return evaluation.release(store, alias, release, records, settings, device=device, progress=progress)
    if mode == "single":
        return evaluation.single(store, alias, records, settings, device=device, progress=progress)
    return evaluation.lifelong(store, alias, records, settings, every=every, out=out, device=device, progress=progress)
