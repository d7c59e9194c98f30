"""The operations behind every CLI command, callable directly (tests, scripts, other front ends).

Torch-free at import: listing edits or models must start fast.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from factstore import config
from factstore.db import schema
from factstore.db.engine import check_reachable, make_engine
from factstore.domain import BaseModel, EditRequest, StoredEdit, request_sha256
from factstore.errors import InvalidEditRequest
from factstore.store import Store

if TYPE_CHECKING:
    from factstore.editor import EditOutcome, EditSession


def open_store(url: str | None = None) -> Store:
    return Store(url)


def upgrade_database(url: str | None = None) -> dict:
    engine = make_engine(url or config.database_url())
    check_reachable(engine)
    previous = schema.current_revision(engine)
    schema.upgrade(engine)
    result = {"previous": previous, "current": schema.current_revision(engine), "head": schema.head_revision()}
    engine.dispose()
    return result


def database_status(url: str | None = None) -> dict:
    engine = make_engine(url or config.database_url())
    check_reachable(engine)
    result = {"url": engine.url.render_as_string(hide_password=True), "current": schema.current_revision(engine), "head": schema.head_revision()}
    engine.dispose()
    return result


def add_model(store: Store, alias: str, source: str, revision: str | None = None) -> tuple[BaseModel, bool]:
    """Pin SOURCE (Hub id, folder, .gguf, starter:NAME) to exact weights under ALIAS."""
    from factstore import assets, checkpoints

    ref = checkpoints.resolve(source, revision)
    license = assets.starter(source).license if source.startswith(assets.PREFIX) else None
    return store.add_base_model(alias, ref, license)


def open_session(store: Store, alias: str, **kwargs) -> "EditSession":
    from factstore.editor import EditSession

    return EditSession(store, alias, **kwargs)


def compute_stats(store: Store, alias: str, layer: int | str | None = None, corpus: str | None = None, tokens: int | None = None, device: str | None = None) -> dict:
    from factstore.corpus import DEFAULT_CORPUS

    session = open_session(store, alias, device=device, corpus=corpus or DEFAULT_CORPUS, stats_tokens=tokens)
    hp = session.hparams(layer)
    cov = session.covariance(hp.layer, hp)
    return {"id": cov.id, "layer": cov.layer, "module": cov.module, "corpus": cov.corpus, "tokens": cov.tokens, "dtype": cov.dtype, "path": cov.path, "sha256": cov.sha256}


def add_edit(store: Store, alias: str, request: EditRequest, layer: int | str | None = None, note: str | None = None, device: str | None = None) -> "EditOutcome":
    session = open_session(store, alias, device=device)
    return session.add(request, layer=layer, note=note, requested_by=_user())


def import_edits(
    store: Store,
    alias: str,
    path: str,
    limit: int | None = None,
    layer: int | str | None = None,
    device: str | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Validate every record, then compute and commit one edit at a time; a rerun skips stored ones."""
    from factstore.importer import read_requests

    requests = read_requests(path, limit)
    base = store.base_model(alias)
    session = open_session(store, alias, device=device)
    for i, request in enumerate(requests, start=1):
        try:
            session.validate(request, layer)
        except InvalidEditRequest as exc:
            raise InvalidEditRequest(f"record {i}: {exc}; nothing was imported") from None
    added, skipped = [], 0
    for i, request in enumerate(requests, start=1):
        if store.edits_by_request(base.id, request_sha256(request)):
            skipped += 1
        else:
            added.append(session.add(request, layer=layer, requested_by=_user(), note=f"imported from {path}").edit.id)
        if on_progress:
            on_progress(i, len(requests))
    return {"records": len(requests), "added": len(added), "skipped": skipped, "ids": added}


def list_edits(store: Store, alias: str, status: str = "active") -> list[StoredEdit]:
    return store.edits(store.base_model(alias).id, status)


def ask_model(store: Store, alias: str, prompt: str, top: int = 5, device: str | None = None) -> dict:
    from factstore.editor import ask

    session = open_session(store, alias, device=device)
    result = ask(session.model, session.tokenizer, prompt, top)
    result["edits_applied"] = len(session.applied)
    return result


def _user() -> str | None:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None


def compile_release(store: Store, alias: str, mode: str | None = None, out: str | None = None, device: str | None = None,  # type: ignore[no-untyped-def]
                    timings: dict[str, float] | None = None):
    """Build (or reuse, when the log is unchanged) a release folder. Returns (Release, created);
    timings, when given, receives seconds per phase."""
    from factstore import compiler

    return compiler.build(store, alias, mode or compiler.DEFAULT_MODE, out, device, timings=timings)


def list_releases(store: Store, alias: str):  # type: ignore[no-untyped-def]
    return store.releases(store.base_model(alias).id)


def publish_release(store: Store, alias: str, repo: str, private: bool = False, mode: str | None = None, endpoint: str | None = None, device: str | None = None):  # type: ignore[no-untyped-def]
    """Compile if the log changed, upload as one commit on main, tag vN; see factstore.releases."""
    from factstore import releases

    return releases.publish(store, alias, repo, private=private, mode=mode, endpoint=endpoint, device=device)


def pull_release(
    repo: str, version: str | None = None, out: str | None = None, endpoint: str | None = None,
    import_into: Store | None = None, alias: str | None = None, device: str | None = None,
):  # type: ignore[no-untyped-def]
    """Download and verify one version; with import_into, continue its lineage in that store under ALIAS."""
    from dataclasses import replace
    from pathlib import Path

    from factstore import releases

    pulled = releases.pull(repo, version, out, endpoint)
    if import_into is None:
        return pulled
    alias = alias or repo.split("/")[-1]
    imported = releases.import_release(import_into, Path(pulled.path), alias, repo, pulled.commit, pulled.version, device)
    return replace(pulled, imported=imported)


def trace_fact(store: Store, alias: str, prompt: str, subject: str, target: str | None = None, out: str | None = None, device: str | None = None, **settings) -> dict:  # type: ignore[no-untyped-def]
    """Causal-tracing maps of one fact (PNGs + JSON); settings: samples, noise, window, seed."""
    from factstore import trace, tracing

    return tracing.trace_fact(store, alias, prompt, subject, target, trace.TraceSettings(**settings), out, device)


def trace_dataset(store: Store, alias: str, path: str, n: int = 50, out: str | None = None, device: str | None = None,
                  on_progress: Callable[[int, int], None] | None = None, **settings) -> dict:  # type: ignore[no-untyped-def]
    """Average maps over N known facts; stores the MLP peak layer as the model's recommended layer."""
    from factstore import trace, tracing

    return tracing.trace_dataset(store, alias, path, n, trace.TraceSettings(**settings), out, device, on_progress)


def evaluate_model(
    store: Store, alias: str, dataset: str, n: int | None = 100, mode: str = "single", release: int | None = None,
    fluency: bool = True, every: int | None = None, out: str | None = None, device: str | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict:
    """CounterFact scores: `single` (each record edited alone on the base), `lifelong` (all
    registered in a temporary store, scored on the compiled model) or a built release."""
    from pathlib import Path

    from factstore import evaluation
    from factstore.evaluate import FluencySettings

    records = evaluation.read_records(dataset, n)
    settings = FluencySettings() if fluency else None
    if release is not None:
        return evaluation.release(store, alias, release, records, settings, device)
    if mode == "single":
        return evaluation.single(store, alias, records, settings, device, on_progress)
    if mode != "lifelong":
        raise InvalidEditRequest(f"unknown evaluation mode {mode!r}; use single or lifelong")
    result = evaluation.lifelong(store, alias, records, settings, every, device, on_progress)
    if result["curve"]:
        folder = Path(out).expanduser() if out else config.home() / "evals" / alias
        result["png"] = evaluation.plot_curve(result["curve"], folder / f"lifelong-{len(records)}.png", f"{alias}: {len(records)} edits registered one after another (head model)")
    return result
