"""Causal-tracing runs: trace one fact or a dataset of known facts on a registered base model,
write figures and numbers, and store the recommended edit layer."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from factstore import config
from factstore.analysis import causal_trace
from factstore.datasets import read_known_facts
from factstore.domain import EditRequest, TracedFact
from factstore.editing.models import check_size
from factstore.errors import InvalidEditRequest
from factstore.options import TraceOptions
from factstore.progress import SILENT, Reporter
from factstore.rome.edit import validate_request
from factstore.rome.prompts import target_ids
from factstore.rome.scoring import next_token_id
from factstore.storage.store import Store
from factstore.studies import figures
from factstore.weights import checkpoints


def _out_dir(alias: str, name: str, out: str | None) -> Path:
    if out:
        return Path(out).expanduser().resolve()
    slug = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-")[:60] or "trace"
    return config.home() / "traces" / alias / slug


def trace_fact(
    store: Store,
    alias: str,
    fact: TracedFact,
    options: TraceOptions = TraceOptions(),
    *,
    device: str | None = None,
    progress: Reporter = SILENT,
    stop: Callable[[], None] = lambda: None,
) -> dict:
    """The maps of one fact on the base model (not the edited head), as PNGs and JSON. STOP is
    called between batches of passes (what it raises ends the trace)."""
    base = store.get_base_model(alias)
    loaded = checkpoints.load(base.source, expected=base.revision, device=device, progress=progress, dtype=base.dtype)
    validate_request(loaded.model, loaded.tokenizer, EditRequest(fact.prompt, fact.subject, fact.target or "x"), 0)
    result = causal_trace.trace(loaded.model, loaded.tokenizer, fact, options.settings, stop=stop)
    return figures.write_fact_trace(result, _out_dir(alias, fact.prompt.replace("{}", fact.subject), options.out))


def trace_dataset(
    store: Store,
    alias: str,
    path: str,
    n: int = 50,
    options: TraceOptions = TraceOptions(),
    *,
    device: str | None = None,
    progress: Reporter = SILENT,
) -> dict:
    """Average the maps over the first N facts the model knows; store the MLP peak layer as the
    base model's recommended edit layer. Facts whose subject cannot be traced (it does not
    end on a token boundary, or it is longer than the prompt cap) are skipped, counted and named in the result."""
    base = store.get_base_model(alias)
    facts = read_known_facts(path)
    loaded = checkpoints.load(base.source, expected=base.revision, device=device, progress=progress, dtype=base.dtype)
    model, tok = loaded.model, loaded.tokenizer
    settings = options.settings
    std = causal_trace.subject_noise_std(model, tok, [f.subject for f in facts])
    summaries: list[dict] = []
    traced: list[dict] = []
    skipped: list[dict] = []
    scanned = 0
    with progress.task("tracing known facts", n) as advance:
        for fact in facts:
            if len(traced) == n:
                break
            scanned += 1
            try:
                check_size(tok, EditRequest(fact.template, fact.subject, fact.attribute))
                if (
                    next_token_id(model, tok, fact.template.replace("{}", fact.subject, 1))
                    != target_ids(tok, fact.attribute)[0]
                ):
                    continue  # the paper traces facts the model knows
                known = TracedFact(fact.template, fact.subject, fact.attribute)
                result = causal_trace.trace(model, tok, known, settings, noise_std=std)
            except InvalidEditRequest as exc:
                skipped.append({"subject": fact.subject[:200], "reason": str(exc)})
                continue
            summaries.append(causal_trace.summarise(result))
            traced.append({**fact.to_json(), "clean_prob": result.clean_prob, "corrupted_prob": result.corrupted_prob})
            advance(len(traced))
    averaged = causal_trace.average(summaries)
    peak = causal_trace.peak_layer(averaged)
    store.set_recommended_layer(base.id, peak)
    report = figures.write_average_trace(
        averaged, traced, peak, _out_dir(alias, "average-" + Path(path).stem, options.out), settings.window
    )
    return {**report, "scanned": scanned, "skipped": skipped, "noise": settings.noise_factor * std}
