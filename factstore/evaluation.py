"""Evaluation runs: CounterFact scores for single edits, for a lifelong edit log, for a release.

Orchestration over factstore.evaluate (the metrics): loads models, computes edits, keeps a
temporary store for the lifelong protocol, draws the lifelong curve.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from factstore import evaluate
from factstore.errors import ImportFileError, UnknownRelease
from factstore.evaluate import FluencySettings, Record
from factstore.store import Store

if TYPE_CHECKING:
    from factstore.rome.hparams import ROMEHyperParams

Progress = Callable[[int, int], None] | None


def read_records(path: str, n: int | None = None) -> list[Record]:
    """CounterFact records (ROME's JSON format), the first N."""
    try:
        rows = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ImportFileError(f"cannot read {path}: {exc}") from None
    records = []
    for i, row in enumerate(rows[:n] if n else rows, start=1):
        try:
            records.append(Record.from_counterfact(row))
        except (KeyError, TypeError) as exc:
            raise ImportFileError(f"record {i} of {path} is not a CounterFact record (missing {exc})") from None
    if not records:
        raise ImportFileError(f"{path} holds no records")
    return records


def _score_all(model, tok, records: list[Record], fluency: FluencySettings | None) -> list[evaluate.RecordScores]:  # type: ignore[no-untyped-def]
    return evaluate.score_records(model, tok, records, fluency)


def single(
    store: Store, alias: str, records: list[Record], fluency: FluencySettings | None = None, device: str | None = None,
    on_progress: Progress = None, hparams: "ROMEHyperParams | None" = None,
) -> dict:
    """ROME's protocol: each record edited on the clean base model, scored, undone.
    hparams: settings to use instead of the model's defaults."""
    from factstore.editor import EditSession
    from factstore.rome.edit import apply_edit, compute_edit, weights_restored

    session = EditSession(store, alias, device=device)
    model, tok = session.model, session.tokenizer
    hp = hparams or session.hparams()
    cov = session.covariance(hp.layer, hp)
    C, templates = session.matrix(cov.id), session.templates(hp)
    after: list[evaluate.RecordScores] = []
    with session.base_weights():
        before = _score_all(model, tok, records, fluency)
        for i, record in enumerate(records, start=1):
            with weights_restored(model, hp.layer):
                result = compute_edit(model, tok, record.request, hp, C, templates)
                apply_edit(model, hp.layer, result.key, result.value, C)
                after.append(evaluate.score_record(model, tok, record, fluency))
            if on_progress:
                on_progress(i, len(records))
    return {**evaluate.aggregate(after), "mode": "single", "layer": hp.layer, "unedited": evaluate.aggregate(before)}


def lifelong(
    store: Store, alias: str, records: list[Record], fluency: FluencySettings | None = None, every: int | None = None,
    device: str | None = None, on_progress: Progress = None,
) -> dict:
    """All records registered one after another in a temporary store (each on the head model),
    then scored on the model compiled both ways; `every` K edits the head is scored on the
    edits so far, for the curve."""
    from factstore import compiler, service
    from factstore.editor import EditSession

    base = store.base_model(alias)
    with tempfile.TemporaryDirectory(prefix="factstore-eval-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'lifelong.db'}"
        service.upgrade_database(url)
        scratch = Store(url)
        service.add_model(scratch, alias, base.source, base.revision)
        session = EditSession(scratch, alias, device=device)
        model, tok = session.model, session.tokenizer
        unedited = evaluate.aggregate(_score_all(model, tok, records, fluency))
        curve = []
        for i, record in enumerate(records, start=1):
            session.add(record.request)
            if every and (i % every == 0 or i == len(records)):
                curve.append({"edits": i, **evaluate.aggregate(_score_all(model, tok, records[:i], None))})
            if on_progress:
                on_progress(i, len(records))
        edits = scratch.edits(scratch.base_model(alias).id, "active")
        modes = {"sequential": evaluate.aggregate(_score_all(model, tok, records, fluency))}  # the head is the sequential compile
        with session.base_weights():
            compiler.apply_edits(model, edits, session.matrix, "joint")
            modes["joint"] = evaluate.aggregate(_score_all(model, tok, records, fluency))
        scratch.close()
    default = modes[compiler.DEFAULT_MODE]
    return {**default, "mode": "lifelong", "compile_mode": compiler.DEFAULT_MODE, "modes": modes, "unedited": unedited, "curve": curve}


def release(store: Store, alias: str, version: int, records: list[Record] | None = None, fluency: FluencySettings | None = None, device: str | None = None) -> dict:
    """Score a built release on the edits it contains; records matching an edit (same subject
    and new object) add its paraphrase and neighbourhood prompts."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = store.base_model(alias)
    found = [r for r in store.releases(base.id) if r.version == version]
    if not found:
        raise UnknownRelease(f"{alias} has no release v{version}; see `factstore releases list --model {alias}`")
    rel = found[0]
    by_fact = {(r.request.subject, r.request.target_new): r for r in records or []}
    judged = []
    for edit_id in rel.edit_ids:
        e = store.edit(edit_id)
        if not e.target_true:
            continue  # nothing to compare the new object with
        judged.append(by_fact.get((e.subject, e.target_new)) or Record(e.request()))
    model = AutoModelForCausalLM.from_pretrained(rel.path).eval()
    if device:
        model.to(device)
    tok = AutoTokenizer.from_pretrained(rel.path)
    return {**evaluate.aggregate(_score_all(model, tok, judged, fluency)), "mode": "release", "release": version}


def plot_curve(curve: list[dict], path: Path, title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=150)
    xs = [c["edits"] for c in curve]
    for metric in ("ES", "PS", "NS"):
        ax.plot(xs, [c[metric] for c in curve], marker="o", label=metric)
    ax.set_xlabel("edits registered")
    ax.set_ylabel("score (%) on the edits so far")
    ax.set_ylim(0, 102)
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return str(path)
