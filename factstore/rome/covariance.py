"""Streaming second moment C = E[k k^T] of down-projection inputs over ordinary text."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from factstore import arch
from factstore.rome.hooks import layer_inputs
from factstore.rome.prompts import pad_right

TEXT_TOKENS = 256  # each text is cut to this many tokens (held-out perplexity rows are cut alike)


@dataclass
class MomentState:
    """Running sums; everything needed to resume after an interruption."""

    total: torch.Tensor  # (d_ff, d_ff) float64 sum of k k^T
    tokens: int  # keys summed so far
    next_text: int  # index of the first text not yet consumed

    @classmethod
    def empty(cls, dim: int) -> MomentState:
        return cls(total=torch.zeros(dim, dim, dtype=torch.float64), tokens=0, next_text=0)

    def moment(self) -> torch.Tensor:
        return self.total / max(self.tokens, 1)


@torch.no_grad()
def accumulate_second_moment(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    layer: int,
    token_budget: int,
    state: MomentState | None = None,
    batch_size: int = 8,
    max_length: int = TEXT_TOKENS,
    on_progress: Callable[[int], None] | None = None,
    on_checkpoint: Callable[[MomentState], None] | None = None,
) -> MomentState:
    """Add keys from texts[state.next_text:] until token_budget keys are summed.

    Deterministic: the same texts and budget give the same sums, resumed or not, because
    checkpoints fall on batch boundaries and the last batch is cut at exactly the budget.
    """
    device = arch.input_device(model)
    max_length = min(max_length, arch.context_length(model))
    dim = arch.down_proj_weight(model, layer).shape[1]
    state = state or MomentState.empty(dim)
    while state.tokens < token_budget and state.next_text < len(texts):
        chunk = [t for t in texts[state.next_text : state.next_text + batch_size]]
        rows = [tokenizer(t, truncation=True, max_length=max_length)["input_ids"] for t in chunk]
        rows = [r for r in rows if r] or [[0]]
        ids, mask = pad_right(rows)
        keys = layer_inputs(model, layer, ids.to(device), mask.to(device))
        keys = keys[mask.to(keys.device).bool()].double()[: token_budget - state.tokens]  # (n, d_ff), on the layer's device
        state.total += (keys.T @ keys).cpu()
        state.tokens += keys.shape[0]
        state.next_text += len(chunk)
        if on_progress:
            on_progress(state.tokens)
        if on_checkpoint:
            on_checkpoint(state)
    return state
