"""A release scored on its own edits: held-out prefixes for paraphrases, other subjects of the
log for neighbours, judged against what the unedited model answers there."""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from factstore.domain import EditRequest, Record
from factstore.rome.keys import sample_context_templates
from factstore.rome.prompts import decode
from factstore.rome.scoring import next_token_ids

RELEASE_PREFIX_SEED = 1_000_003  # not the key templates' seed: these prefixes are held out
RELEASE_PREFIXES = ((10, 3),)  # three prefixes of ~10 tokens
RELEASE_NEIGHBOURS = 3
RELEASE_SAMPLE = 100  # edits judged on paraphrases and neighbours too (all are judged on efficacy)


def release_prefixes(model: PreTrainedModel, tok: PreTrainedTokenizerBase) -> list[str]:
    """Held-out context prefixes ("<text>. {}") for a release's paraphrase prompts, sampled on
    the unedited model; the compiler stores them, so they are sampled once per base model."""
    return [p for p in sample_context_templates(model, tok, RELEASE_PREFIX_SEED, RELEASE_PREFIXES) if p != "{}"]


def release_records(
    model: PreTrainedModel, tok: PreTrainedTokenizerBase, requests: Sequence[EditRequest], prefixes: Sequence[str]
) -> list[Record]:
    """Records built from a release's own edit requests, on the *unedited* model: one per
    request that has an old target, each judged on efficacy; up to RELEASE_SAMPLE of them,
    spread evenly over the log, also on

    paraphrases: the prompt behind the held-out prefixes (from release_prefixes);
    neighbours: the prompt with up to three other subjects of the log, each judged against
    what the unedited model answers there (its top next token, one batched pass for all).
    """
    subjects = list(dict.fromkeys(r.subject for r in requests))
    judged = [r for r in requests if r.target_true]
    sample = (
        {i * len(judged) // RELEASE_SAMPLE for i in range(RELEASE_SAMPLE)}
        if len(judged) > RELEASE_SAMPLE
        else set(range(len(judged)))
    )
    neighbours = [
        [r.prompt.replace("{}", s, 1) for s in subjects if s != r.subject][:RELEASE_NEIGHBOURS] if i in sample else []
        for i, r in enumerate(judged)
    ]
    flat = [n for ns in neighbours for n in ns]
    answers = iter([decode(tok, [i]).strip() for i in next_token_ids(model, tok, flat)] if flat else [])
    records = []
    for i, (req, ns) in enumerate(zip(judged, neighbours)):
        pairs = [(n, a) for n, a in zip(ns, answers) if a]  # a whitespace answer judges nothing
        paraphrases = tuple(p.replace("{}", req.text, 1) for p in prefixes) if i in sample else ()
        records.append(
            Record(req, paraphrases, tuple(n for n, _ in pairs), neighbour_answers=tuple(a for _, a in pairs))
        )
    return records
