"""Evaluation runs: CounterFact scores for single edits, for a lifelong edit log, for a release.

Orchestration over factstore.analysis.metrics: loads models, computes edits, keeps a
temporary store for the lifelong protocol, draws the lifelong curve.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from factstore import config
from factstore.analysis.metrics import FluencySettings, aggregate, score_record, score_records
from factstore.domain import Record
from factstore.editing.models import register_model
from factstore.editing.session import EditSession
from factstore.errors import UnknownRelease
from factstore.progress import SILENT, Reporter
from factstore.rome.edit import apply_edit, compute_edits, weights_restored
from factstore.rome.hparams import ROMEHyperParams
from factstore.storage import schema
from factstore.storage.engine import make_engine
from factstore.storage.store import Store
from factstore.studies.figures import plot_curve
from factstore.weights import checkpoints
from factstore.weights.replay import DEFAULT_MODE, apply_edits


def single(
    store: Store, alias: str, records: list[Record], fluency: FluencySettings | None = None, *, device: str | None = None,
    hparams: ROMEHyperParams | None = None, batch: int = 1, progress: Reporter = SILENT,
) -> dict:
    """ROME's protocol: each record edited on the clean base model, scored, undone.
    hparams: settings to use instead of the model's defaults; batch: records whose edits are
    computed together in one optimisation (each still applied and scored alone)."""
    session = EditSession(store, alias, device=device, progress=progress)
    model, tok = session.model, session.tokenizer
    hp = hparams or session.hparams()
    cov = session.covariance(hp.layer, hp)
    C, templates = session.matrix(cov.id), session.templates(hp)
    after = []
    with session.base_weights(), progress.task("evaluating single edits", len(records)) as advance:
        before = score_records(model, tok, records, fluency)
        for lo in range(0, len(records), batch):
            chunk = records[lo : lo + batch]
            results = compute_edits(model, tok, [r.request for r in chunk], hp, C, templates)
            for i, (record, result) in enumerate(zip(chunk, results), start=lo + 1):
                with weights_restored(model, hp.layer):
                    apply_edit(model, hp.layer, result.key, result.value, C)
                    after.append(score_record(model, tok, record, fluency))
                advance(i)
    return {**aggregate(after), "mode": "single", "layer": hp.layer, "unedited": aggregate(before)}


def _scratch_store(folder: Path) -> Store:
    """A fresh SQLite store in FOLDER, for runs that must not touch the user's log."""
    url = f"sqlite:///{folder / 'lifelong.db'}"
    engine = make_engine(url)
    try:
        schema.upgrade(engine)
    finally:
        engine.dispose()
    return Store(url)


def lifelong(
    store: Store, alias: str, records: list[Record], fluency: FluencySettings | None = None, *, every: int | None = None,
    out: str | None = None, device: str | None = None, progress: Reporter = SILENT,
) -> dict:
    """All records registered one after another in a temporary store (each on the head model),
    then scored on the model compiled both ways; every EVERY edits the head is scored on the
    edits so far, for the curve (drawn as a PNG under OUT)."""
    base = store.get_base_model(alias)
    with tempfile.TemporaryDirectory(prefix="factstore-eval-") as tmp:
        scratch = _scratch_store(Path(tmp))
        try:
            register_model(scratch, alias, base.source, base.revision, dtype=base.dtype, progress=progress)
            session = EditSession(scratch, alias, device=device, progress=progress)
            model, tok = session.model, session.tokenizer
            unedited = aggregate(score_records(model, tok, records, fluency))
            curve = []
            with progress.task("evaluating a lifelong log", len(records)) as advance:
                for i, record in enumerate(records, start=1):
                    session.add(record.request)
                    if every and (i % every == 0 or i == len(records)):
                        curve.append({"edits": i, **aggregate(score_records(model, tok, records[:i], None))})
                    advance(i)
            edits = scratch.list_edits(scratch.get_base_model(alias).id, "active")
            modes = {"sequential": aggregate(score_records(model, tok, records, fluency))}  # the head is the sequential compile
            with session.base_weights():
                apply_edits(model, edits, session.matrix, "joint")
                modes["joint"] = aggregate(score_records(model, tok, records, fluency))
        finally:
            scratch.close()
    result = {**modes[DEFAULT_MODE], "mode": "lifelong", "compile_mode": DEFAULT_MODE, "modes": modes, "unedited": unedited, "curve": curve}
    if curve:
        folder = Path(out).expanduser() if out else config.home() / "evals" / alias
        title = f"{alias}: {len(records)} edits registered one after another (head model)"
        result["png"] = plot_curve(curve, folder / f"lifelong-{len(records)}.png", title)
    return result


def release(
    store: Store, alias: str, version: int, records: list[Record] | None = None, fluency: FluencySettings | None = None, *,
    device: str | None = None, progress: Reporter = SILENT,
) -> dict:
    """Score a built release on the edits it contains; records matching an edit (same subject
    and new object) add its paraphrase and neighbourhood prompts."""
    base = store.get_base_model(alias)
    found = [r for r in store.list_releases(base.id) if r.version == version]
    if not found:
        raise UnknownRelease(f"{alias} has no release v{version}; see `factstore releases list --model {alias}`")
    rel = found[0]
    by_fact = {(r.request.subject, r.request.target_new): r for r in records or []}
    judged = []
    for edit_id in rel.edit_ids:
        e = store.get_edit(edit_id)
        if e.target_true:  # else there is nothing to compare the new object with
            judged.append(by_fact.get((e.subject, e.target_new)) or Record(e.request()))
    loaded = checkpoints.load(rel.path, device=device, progress=progress, dtype="auto")
    return {**aggregate(score_records(loaded.model, loaded.tokenizer, judged, fluency)), "mode": "release", "release": version}
