"""A release's health: held-out perplexity and fluency of the base model and of the release,
measured at compile time, and the gate that keeps a degraded release from being published.

Held-out text is the end of the corpus the edits' key statistics were computed on, past every
text any of those statistics read: text no C saw, so an update that preserves C's keys cannot
look healthy by construction.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from factstore import arch, config
from factstore.analysis.metrics import FluencySettings, weighted_entropy
from factstore.analysis.perplexity import perplexity
from factstore.domain import StoredEdit
from factstore.errors import ReleaseDegraded, StatisticsError
from factstore.rome.covariance import TEXT_TOKENS
from factstore.rome.prompts import decode
from factstore.storage.store import Store
from factstore.weights import corpus as corpora
from factstore.weights.replay import SOFT_MODES

MIN_HEALTH_TOKENS = 200  # fewer left in the corpus: too noisy to gate on, health is not measured
HEALTH_PROMPTS = 3  # generations whose n-gram entropy is the fluency (each from a held-out text's start)
PROMPT_TOKENS = 8
GENERATION = FluencySettings(new_tokens=32)


@dataclass(frozen=True)
class HeldOut:
    corpus: str
    rows: list[list[int]]  # token rows for the perplexity
    prompts: list[list[int]]  # generation prompts for the fluency (token ids, all of one length)


def held_out_text(
    store: Store,
    base_id: int,
    edits: Sequence[StoredEdit],
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    tokens: int,
    at_least: int = MIN_HEALTH_TOKENS,
) -> HeldOut:
    """Held-out rows from the corpus most of EDITS' statistics (else the model's newest C, else
    the default corpus) read, past what any C of that corpus read; StatisticsError when the
    corpus has fewer than AT_LEAST such tokens."""
    covs = {c.id: c for c in store.list_covariances(base_id)}
    used = Counter(covs[e.covariance_id].corpus for e in edits if e.covariance_id in covs)
    name = used.most_common(1)[0][0] if used else max(covs.values(), key=lambda c: c.id).corpus if covs else None
    corpus = corpora.load_corpus(name or corpora.DEFAULT_CORPUS)
    read = max((c.tokens for c in covs.values() if c.corpus == corpus.name), default=0)
    width = min(TEXT_TOKENS, arch.context_length(model))  # as the statistics cut their texts
    rows = corpora.held_out(corpus, tokenizer, tokens, read, width, at_least=at_least)
    longest = sorted(rows, key=len, reverse=True)[:HEALTH_PROMPTS]  # stable: the same rows every time
    prompt_len = min(PROMPT_TOKENS, *(len(r) for r in longest))  # one length: one batch without padding
    prompts = [r[:prompt_len] for r in longest]
    return HeldOut(corpus.name if corpus.name.startswith("starter:") else "local", rows, prompts)


@torch.no_grad()
def measure(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, text: HeldOut) -> dict[str, float]:
    """Perplexity on the held-out rows, and the mean n-gram entropy of seeded top-k samples from
    every prompt at once (the prompts are all PROMPT_TOKENS long: one batch, no padding)."""
    ids = torch.tensor(text.prompts, device=arch.input_device(model))  # (prompts, PROMPT_TOKENS)
    torch.manual_seed(GENERATION.seed)  # generate() samples from torch's global generator
    out = model.generate(  # type: ignore[operator]  # GenerationMixin's generate, unseen through PreTrainedModel
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        do_sample=True,
        top_k=GENERATION.top_k,
        max_new_tokens=GENERATION.new_tokens,
        min_new_tokens=GENERATION.new_tokens,
        pad_token_id=tokenizer.eos_token_id,
    )
    entropies = [weighted_entropy(decode(tokenizer, row, skip_special_tokens=True)) for row in out]
    return {"perplexity": perplexity(model, text.rows, batch_size=64), "fluency": sum(entropies) / len(entropies)}


def _change_pct(before: float, after: float) -> float:
    return round(100 * (after / before - 1), 2) if before > 0 else 0.0


def report(before: dict[str, float], after: dict[str, float], text: HeldOut) -> dict:
    """The health entry of a release's scores (changes in percent of the base model's value)."""
    return {
        "corpus": text.corpus,
        "heldout_tokens": sum(len(r) for r in text.rows),
        "perplexity_base": round(before["perplexity"], 4),
        "perplexity": round(after["perplexity"], 4),
        "perplexity_rise_pct": _change_pct(before["perplexity"], after["perplexity"]),
        "fluency_base": round(before["fluency"], 4),
        "fluency": round(after["fluency"], 4),
        "fluency_change_pct": _change_pct(before["fluency"], after["fluency"]),
    }


def not_measured(reason: str) -> dict:
    return {"not_measured": reason}


def check_publishable(version: int, scores: dict | None, allow_degraded: bool, mode: str = "joint") -> None:
    """Refuse (ReleaseDegraded) a release whose held-out perplexity rose past the limit; the
    advice names the soft solve only to a release of an exact MODE (a soft or band one has it)."""
    health = (scores or {}).get("health") or {}
    rise, limit = health.get("perplexity_rise_pct"), config.settings().max_perplexity_rise
    if allow_degraded or rise is None or rise <= limit:
        return
    remedy = "retract edits" if mode in SOFT_MODES else "retract edits or compile with --mode soft"
    raise ReleaseDegraded(
        f"publish refused: v{version}'s held-out perplexity rose {rise:.1f} % "
        f"({health['perplexity_base']:.2f} -> {health['perplexity']:.2f}), more than the {limit:g} % "
        f"FACTSTORE_MAX_PERPLEXITY_RISE allows; {remedy}, or publish with --allow-degraded"
    )


def measured(
    store: Store, base_id: int, edits: Sequence[StoredEdit], model: PreTrainedModel, tok: PreTrainedTokenizerBase
) -> tuple[HeldOut | None, dict]:
    """(held-out text, base measurements) before the edits are applied, or (None, the reason).
    FACTSTORE_HEALTH_TOKENS of text (0: not measured)."""
    tokens = config.settings().health_tokens
    if tokens == 0:
        return None, not_measured("FACTSTORE_HEALTH_TOKENS is 0")
    try:
        text = held_out_text(store, base_id, edits, model, tok, tokens, min(MIN_HEALTH_TOKENS, tokens))
    except StatisticsError as exc:
        return None, not_measured(str(exc))
    return text, measure(model, tok, text)
