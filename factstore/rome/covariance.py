"""Streaming second moments C = E[k k^T] of down-projection inputs over ordinary text.

The corpus is read in fixed batches of consecutive texts (batch b = texts[b*B:(b+1)*B]); a
plan lists the batches a token budget needs and how many keys each gives (the last one cut at
exactly the budget). A single pass runs the whole plan; shard I of N runs every N-th batch
from the I-th. Each batch's keys are computed the same way in both (same rows, same padding),
so the shards' float64 sums add up to the single pass's sum up to the order of additions.

Beside C the pass sums the names moment: the keys of every name the batch's texts hold
(rome/names.py), each read alone at the start of a sequence as an edit's subject is, one
forward pass per batch over its distinct names (issue 25: names read in their sentences weigh
other text; alone, they are what an edit's neighbours look like to the layer).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from factstore import arch
from factstore.errors import InvalidEditRequest
from factstore.rome.hooks import layers_inputs
from factstore.rome.names import name_spans, name_tokens
from factstore.rome.prompts import encode_prompt, pad_right

TEXT_TOKENS = 256  # each text is cut to this many tokens (held-out perplexity rows are cut alike)
BATCH_TEXTS = 8  # texts per forward pass


@dataclass(frozen=True)
class PlannedBatch:
    index: int  # batch b holds texts[b * BATCH_TEXTS : (b + 1) * BATCH_TEXTS]
    keys: int  # keys it contributes (all its tokens, or fewer for the batch that reaches the budget)


@dataclass
class MomentState:
    """Running sums for one or more layers; everything needed to resume after an interruption."""

    totals: dict[int, torch.Tensor]  # layer -> (d_ff, d_ff) float64 sum of k k^T
    tokens: int  # keys summed so far (per layer)
    done: int  # batches of the plan already summed
    # layer -> (d_ff, d_ff) float64 sum of k k^T over the names of the summed text (rome/names.py),
    # each name's key read alone at the start of a sequence, every occurrence counted
    name_totals: dict[int, torch.Tensor]
    names: int  # names summed into name_totals (per layer)

    @classmethod
    def empty(cls, dims: dict[int, int]) -> MomentState:
        def zeros() -> dict[int, torch.Tensor]:
            return {layer: torch.zeros(d, d, dtype=torch.float64) for layer, d in dims.items()}

        return cls(totals=zeros(), tokens=0, done=0, name_totals=zeros(), names=0)

    def moment(self, layer: int) -> torch.Tensor:
        return self.totals[layer] / max(self.tokens, 1)


def _rows(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int) -> list[list[int]]:
    rows = [tokenizer(t, truncation=True, max_length=max_length)["input_ids"] for t in texts]
    return [r for r in rows if r] or [[0]]


def _encode(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int
) -> tuple[list[list[int]], list[tuple[int, str]]]:
    """_rows(TEXTS), and each name of their tokens (rome/names.py) as (where its last token is
    among the rows' tokens counted row-major, the order accumulate's keys come in; the name),
    from one tokenizer call per text."""
    rows: list[list[int]] = []
    named: list[tuple[int, str]] = []
    for text in texts:
        enc = tokenizer(text, truncation=True, max_length=max_length, return_offsets_mapping=True)
        if enc["input_ids"]:
            seen = sum(map(len, rows))
            spans = name_spans(text)
            ends = name_tokens(enc["offset_mapping"], [end for _, end in spans])
            named += [(seen + t, text[start:end]) for t, (start, end) in zip(ends, spans, strict=False)]
            rows.append(enc["input_ids"])
    return rows or [[0]], named


def _lone_keys(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, names: Sequence[str], layers: Sequence[int]
) -> tuple[dict[int, torch.Tensor], int]:
    """({layer: (d_ff, d_ff) float64 sum of k k^T}, how many names it sums) over NAMES, each
    name's key at its last token with the name alone as the prompt (encode_prompt, as an edit's
    subject at the start of its prompt); a repeated name is run once and counted as often as it
    occurs. One forward pass."""
    counts = Counter(names)
    encoded, times = [], []
    for name, n in counts.items():
        try:
            encoded.append(encode_prompt(tokenizer, "{}", name))
            times.append(float(n))
        except InvalidEditRequest:  # no token boundary at the name's end: not a subject an edit could name
            continue
    if not encoded:
        return {}, 0
    device = arch.input_device(model)
    ids, mask = pad_right([e.ids for e in encoded])
    found = layers_inputs(model, list(layers), ids.to(device), mask.to(device))
    rows = torch.arange(len(encoded))
    at = torch.tensor([e.subject_last for e in encoded])
    weight = torch.tensor(times, dtype=torch.float64).unsqueeze(1)
    sums = {}
    for layer in layers:
        keys = found[layer][rows.to(found[layer].device), at.to(found[layer].device)].double().cpu()  # (m, d_ff)
        sums[layer] = (keys * weight).T @ keys
    return sums, int(sum(times))


def text_width(model: PreTrainedModel) -> int:
    return min(TEXT_TOKENS, arch.context_length(model))


def plan(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], token_budget: int, max_length: int
) -> list[PlannedBatch]:
    """The batches that sum TOKEN_BUDGET keys (fewer if the texts run out), from tokenising only."""
    out: list[PlannedBatch] = []
    total = 0
    for index in range((len(texts) + BATCH_TEXTS - 1) // BATCH_TEXTS):
        if total >= token_budget:
            break
        n = sum(map(len, _rows(tokenizer, texts[index * BATCH_TEXTS : (index + 1) * BATCH_TEXTS], max_length)))
        keep = min(n, token_budget - total)
        out.append(PlannedBatch(index, keep))
        total += keep
    return out


@torch.no_grad()
def accumulate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    layers: Sequence[int],
    batches: Sequence[PlannedBatch],
    state: MomentState | None = None,
    on_batch: Callable[[MomentState], None] | None = None,
) -> MomentState:
    """Add the keys of batches[state.done:] for every layer in LAYERS, one forward pass per batch
    that stops at the highest of them. ON_BATCH is called with the state after each batch (progress,
    checkpoints: they fall on batch boundaries)."""
    device = arch.input_device(model)
    width = text_width(model)
    state = state or MomentState.empty({layer: arch.down_proj_weight(model, layer).shape[1] for layer in layers})
    for planned in batches[state.done :]:
        rows, named = _encode(tokenizer, texts[planned.index * BATCH_TEXTS : (planned.index + 1) * BATCH_TEXTS], width)
        ids, mask = pad_right(rows)
        names = [name for at, name in named if at < planned.keys]  # the batch that reaches the budget is cut
        found = layers_inputs(model, list(layers), ids.to(device), mask.to(device))
        for layer in layers:
            # (n, d_ff), row-major over the batch's real tokens
            keys = found[layer][mask.to(found[layer].device).bool()].double()[: planned.keys]
            state.totals[layer] += (keys.T @ keys).cpu()
        lone, counted = _lone_keys(model, tokenizer, names, layers)
        for layer, total in lone.items():
            state.name_totals[layer] += total
        state.tokens += planned.keys
        state.names += counted
        state.done += 1
        if on_batch:
            on_batch(state)
    return state


def accumulate_second_moment(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    layer: int,
    token_budget: int,
) -> MomentState:
    """One layer's sums over the first TOKEN_BUDGET keys of TEXTS in a single pass (no checkpoints)."""
    return accumulate(model, tokenizer, texts, [layer], plan(tokenizer, texts, token_budget, text_width(model)))
