"""Evaluation runs: CounterFact scores for single edits, for a lifelong edit log, for a release.

Orchestration over factstore.analysis.metrics: loads models, computes edits; the lifelong
protocol is in studies.lifelong.
"""

from __future__ import annotations

from factstore.analysis.metrics import FluencySettings, aggregate, score_record, score_records
from factstore.domain import Record
from factstore.editing.session import EditSession
from factstore.options import EvalSettings
from factstore.progress import SILENT, Reporter
from factstore.rome.edit import Snapshot, apply_edit, compute_edits
from factstore.rome.hparams import ROMEHyperParams
from factstore.storage.store import Store
from factstore.weights import checkpoints


def single(
    store: Store,
    alias: str,
    records: list[Record],
    settings: EvalSettings = EvalSettings(),
    *,
    hparams: ROMEHyperParams | None = None,
    device: str | None = None,
    progress: Reporter = SILENT,
) -> dict:
    """ROME's protocol: each record edited on the clean base model, scored, undone.
    hparams: settings to use instead of the model's defaults; settings.batch: records whose
    edits are computed together in one optimisation (each still applied and scored alone);
    settings.fluency: GE sampled (None: not). The mode, release and lifelong settings play no part."""
    fluency, batch = settings.fluency, settings.batch
    session = EditSession(store, alias, device=device, progress=progress)
    model, tok = session.model, session.tokenizer
    hp = hparams or session.hparams(band=1)  # ROME's protocol: one layer, whatever a new log's default
    cov = session.covariance(hp.layer, hp)
    C, templates = session.matrix(cov.id), session.templates(hp)
    after = []
    with session.base_weights(), progress.task("evaluating single edits", len(records)) as advance:
        before = score_records(model, tok, records, fluency)
        for lo in range(0, len(records), batch):
            chunk = records[lo : lo + batch]
            results = compute_edits(model, tok, [r.request for r in chunk], hp, C, templates)
            for i, (record, result) in enumerate(zip(chunk, results), start=lo + 1):
                with Snapshot(model, [hp.layer]):
                    apply_edit(model, hp.layer, result.key, result.value, C)
                    after.append(score_record(model, tok, record, fluency))
                advance(i)
    return {**aggregate(after), "mode": "single", "layer": hp.layer, "unedited": aggregate(before)}


def release(
    store: Store,
    alias: str,
    version: int,
    records: list[Record] | None = None,
    fluency: FluencySettings | None = None,
    *,
    device: str | None = None,
    progress: Reporter = SILENT,
) -> dict:
    """Score a built release on the edits it contains; records matching an edit (same subject
    and new object) add its paraphrase and neighbourhood prompts."""
    base = store.get_base_model(alias)
    rel = store.get_release(base.id, version)
    by_fact = {(r.request.subject, r.request.target_new): r for r in records or []}
    judged = []
    for edit_id in rel.edit_ids:
        e = store.get_edit(edit_id)
        if e.target_true:  # else there is nothing to compare the new object with
            judged.append(by_fact.get((e.subject, e.target_new)) or Record(e.request()))
    loaded = checkpoints.load(rel.path, device=device, progress=progress, dtype="auto")
    return {
        **aggregate(score_records(loaded.model, loaded.tokenizer, judged, fluency)),
        "mode": "release",
        "release": version,
    }
