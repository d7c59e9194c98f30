"""CounterFact metrics (ROME's definitions) for a model and edit records.

Per prompt, the mean per-token NLL of " " + target_new and of " " + target_true (every
target token counts). ES: share of rewrite prompts where P(new) > P(true), EM: mean of
P(new) - P(true), with P = exp(-mean NLL). PS/PM: the same on paraphrase prompts.
NS: share of neighbourhood prompts where P(true) > P(new) still, NM: mean P(true) - P(new).
S: harmonic mean of ES, PS, NS. GE: generation fluency, the mean over sampled continuations
of the weighted n-gram entropy (2/3 bigram + 4/3 trigram, averaged), in bits.

Tensors in, numbers out: no files, no store.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from factstore import arch
from factstore.domain import Record
from factstore.errors import InvalidEditRequest
from factstore.options import FluencySettings
from factstore.rome.prompts import decode
from factstore.rome.scoring import target_logprobs

METRICS = ("ES", "PS", "NS", "S", "EM", "PM", "NM", "GE")


@dataclass
class RecordScores:
    """Per-prompt comparisons for one record: True where the judged preference holds."""

    efficacy: list[bool] = field(default_factory=list)
    paraphrase: list[bool] = field(default_factory=list)
    neighbourhood: list[bool] = field(default_factory=list)
    efficacy_margin: list[float] = field(default_factory=list)  # P(new) - P(true)
    paraphrase_margin: list[float] = field(default_factory=list)
    neighbourhood_margin: list[float] = field(default_factory=list)  # P(true) - P(new)
    fluency: list[float] = field(default_factory=list)


def _queries(record: Record) -> list[tuple[str, str, str]]:
    """(kind, text, target) pairs whose probabilities the record's scores compare: for each
    prompt, the new object then the object it is judged against."""
    req = record.request
    if not req.target_true:
        raise InvalidEditRequest(f"the record for {req.subject[:80]!r} has no true object to score against")
    out = [("efficacy", req.prompt.replace("{}", req.subject, 1), t) for t in (req.target_new, req.target_true)]
    out += [("paraphrase", p, t) for p in record.paraphrases for t in (req.target_new, req.target_true)]
    answers = record.neighbour_answers or (req.target_true,) * len(record.neighbours)
    out += [("neighbourhood", p, t) for p, a in zip(record.neighbours, answers) for t in (req.target_new, a)]
    return out


def score_records(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    records: Sequence[Record],
    fluency: FluencySettings | None = None,
) -> list[RecordScores]:
    """Scores of many records from one batched pass over all their (prompt, target) pairs."""
    queries = [_queries(r) for r in records]
    flat = [q for qs in queries for q in qs]
    probs = target_logprobs(model, tok, [t for _, t, _ in flat], [o for _, _, o in flat]).exp().tolist() if flat else []
    out, at = [], 0
    for record, qs in zip(records, queries):
        scores = RecordScores()
        for i in range(0, len(qs), 2):
            kind, new, other = qs[i][0], probs[at + i], probs[at + i + 1]
            # efficacy and paraphrase: the new object should win; neighbourhood: it should not
            margin = other - new if kind == "neighbourhood" else new - other
            getattr(scores, kind).append(margin > 0)
            getattr(scores, f"{kind}_margin").append(margin)
        at += len(qs)
        if fluency is not None and record.generations:
            scores.fluency = generation_entropies(model, tok, record.generations[: fluency.prompts], fluency)
        out.append(scores)
    return out


def score_record(
    model: PreTrainedModel, tok: PreTrainedTokenizerBase, record: Record, fluency: FluencySettings | None = None
) -> RecordScores:
    return score_records(model, tok, [record], fluency)[0]


def _pct(values: list[bool]) -> float | None:
    return 100.0 * sum(values) / len(values) if values else None


def _mean(values: list[float], scale: float = 1.0) -> float | None:
    return scale * sum(values) / len(values) if values else None


def harmonic_mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    if len(present) != len(values):
        return None
    if any(v == 0 for v in present):
        return 0.0
    return len(present) / sum(1.0 / v for v in present)


def aggregate(scores: Sequence[RecordScores]) -> dict[str, float | None]:
    """Scores in percent (ES, PS, NS, S; EM, PM, NM as percentage points), GE in bits; None where
    no prompt of that kind was scored. Each record weighs the same: its prompts are averaged first."""

    def per_record(attr: str, fn: Callable[[list], float | None]) -> list[float]:
        return [v for s in scores if getattr(s, attr) and (v := fn(getattr(s, attr))) is not None]

    es = _mean(per_record("efficacy", _pct))
    ps = _mean(per_record("paraphrase", _pct))
    ns = _mean(per_record("neighbourhood", _pct))
    return {
        "n": len(scores),
        "ES": es,
        "PS": ps,
        "NS": ns,
        "S": harmonic_mean([es, ps, ns]),
        "EM": _mean(per_record("efficacy_margin", _mean), 100),
        "PM": _mean(per_record("paraphrase_margin", _mean), 100),
        "NM": _mean(per_record("neighbourhood_margin", _mean), 100),
        "GE": _mean(per_record("fluency", _mean)),
    }


# fluency -------------------------------------------------------------------------------------


_WORD = re.compile(r"\w+|[^\w\s]")


def ngram_entropy(text: str, n: int) -> float:
    """Shannon entropy (bits) of the text's word n-gram distribution."""
    words = _WORD.findall(text.lower())
    grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    total = sum(grams.values())
    return -sum(c / total * math.log2(c / total) for c in grams.values()) if total else 0.0


def weighted_entropy(text: str) -> float:
    """ROME's fluency measure: mean of 2/3 x bigram and 4/3 x trigram entropy."""
    return (2 / 3 * ngram_entropy(text, 2) + 4 / 3 * ngram_entropy(text, 3)) / 2


@torch.no_grad()
def generation_entropies(
    model: PreTrainedModel, tok: PreTrainedTokenizerBase, prompts: Sequence[str], settings: FluencySettings
) -> list[float]:
    """Top-k sampled continuations (seeded) of each prompt, scored by weighted n-gram entropy."""
    device = arch.input_device(model)
    torch.manual_seed(settings.seed)  # generate() samples from torch's global generator
    out = []
    for prompt in prompts:
        ids = tok(prompt, return_tensors="pt").to(device)
        gen = model.generate(
            **ids,  # type: ignore[operator]  # GenerationMixin's generate, unseen through PreTrainedModel
            do_sample=True,
            top_k=settings.top_k,
            max_new_tokens=settings.new_tokens,
            pad_token_id=tok.eos_token_id,
        )
        out.append(weighted_entropy(decode(tok, gen[0], skip_special_tokens=True)))
    return out
