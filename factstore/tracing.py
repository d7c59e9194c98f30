"""Causal tracing as a service: load a base model, trace one fact or a dataset of known
facts, write figures and numbers, and store the recommended edit layer."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

from factstore import checkpoints, config, trace, trace_report
from factstore.errors import ImportFileError
from factstore.store import Store


def _out_dir(alias: str, name: str, out: str | None) -> Path:
    if out:
        return Path(out).expanduser().resolve()
    slug = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-")[:60] or "trace"
    return config.home() / "traces" / alias / slug


def trace_fact(
    store: Store, alias: str, prompt: str, subject: str, target: str | None = None,
    settings: trace.TraceSettings = trace.TraceSettings(), out: str | None = None, device: str | None = None,
) -> dict:
    """The three maps of one fact on the base model (not the edited head), as PNGs and JSON."""
    from factstore.domain import EditRequest
    from factstore.rome.edit import validate_request

    base = store.base_model(alias)
    loaded = checkpoints.load(base.source, expected=base.revision, device=device)
    validate_request(loaded.model, loaded.tokenizer, EditRequest(prompt, subject, target or "x"), 0)
    result = trace.trace(loaded.model, loaded.tokenizer, prompt, subject, target, settings)
    return trace_report.write_fact(result, _out_dir(alias, prompt.replace("{}", subject), out))


def read_known_facts(path: str) -> list[dict]:
    """Records with subject, prompt (filled or with "{}") and attribute, as in ROME's known_1000.json."""
    try:
        records = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ImportFileError(f"cannot read {path}: {exc}") from None
    facts = []
    for i, r in enumerate(records, start=1):
        if not all(isinstance(r.get(k), str) for k in ("subject", "prompt", "attribute")):
            raise ImportFileError(f"{path}, record {i}: needs string fields subject, prompt and attribute")
        template = r["prompt"] if "{}" in r["prompt"] else r["prompt"].replace(r["subject"], "{}", 1)
        if "{}" not in template:
            raise ImportFileError(f"{path}, record {i}: the prompt does not contain the subject {r['subject']!r}")
        facts.append({"subject": r["subject"], "template": template, "attribute": r["attribute"]})
    return facts


def trace_dataset(
    store: Store, alias: str, path: str, n: int = 50, settings: trace.TraceSettings = trace.TraceSettings(),
    out: str | None = None, device: str | None = None, on_progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Average the maps over the first N facts the model knows; store the MLP peak layer as the
    base model's recommended edit layer."""
    from factstore.errors import InvalidEditRequest
    from factstore.rome.prompts import target_ids
    from factstore.rome.scoring import next_token_id

    base = store.base_model(alias)
    loaded = checkpoints.load(base.source, expected=base.revision, device=device)
    model, tok = loaded.model, loaded.tokenizer
    facts = read_known_facts(path)
    std = trace.subject_noise_std(model, tok, [f["subject"] for f in facts])
    summaries, traced, scanned = [], [], 0
    for fact in facts:
        if len(traced) == n:
            break
        scanned += 1
        if next_token_id(model, tok, fact["template"].replace("{}", fact["subject"], 1)) != target_ids(tok, fact["attribute"])[0]:
            continue  # the paper traces facts the model knows
        try:
            result = trace.trace(model, tok, fact["template"], fact["subject"], fact["attribute"], settings, noise_std=std)
        except InvalidEditRequest:
            continue  # the subject does not end on a token boundary
        summaries.append(trace.summarise(result))
        traced.append({**fact, "clean_prob": result.clean_prob, "corrupted_prob": result.corrupted_prob})
        if on_progress:
            on_progress(len(traced), n)
    averaged = trace.average(summaries)
    peak = trace.peak_layer(averaged)
    store.set_recommended_layer(base.id, peak)
    report = trace_report.write_average(averaged, traced, peak, _out_dir(alias, "average-" + Path(path).stem, out), settings.window)
    return {**report, "scanned": scanned, "noise": settings.noise_factor * std}
