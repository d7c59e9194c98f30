"""Running a model from one block up.

In the v* optimisation only the edited layer's output changes between steps, so everything
below that block is the same in every step: one full pass records the input of the edited
block and the arguments every block above it receives (attention masks, rotary or ALiBi
position tensors; per block, since some families give sliding-window layers their own), and
each step then runs only those blocks, the final modules and the LM head."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from factstore import arch


@dataclass
class _Call:
    args: tuple  # positional arguments; args[0] is the hidden state when given positionally
    kwargs: dict[str, Any]


@dataclass
class UpperStack:
    """Blocks first.. of a model with what they received on one recorded pass."""

    model: PreTrainedModel
    first: int
    calls: list[_Call] = field(default_factory=list)

    @property
    def hidden(self) -> torch.Tensor:
        """(B, L, d) input of the first block on the recorded pass."""
        call = self.calls[0]
        return call.args[0] if call.args else call.kwargs["hidden_states"]

    def final_hidden(self) -> torch.Tensor:
        """(B, L, d) hidden states after the last block and the final modules."""
        blocks = arch.blocks(self.model)
        h = self.hidden
        for block, call in zip(blocks[self.first :], self.calls):
            if call.args:
                out = block(h, *call.args[1:], **call.kwargs)
            else:
                out = block(**{**call.kwargs, "hidden_states": h})
            h = out[0] if isinstance(out, tuple) else out
        for module in arch.final_modules(self.model):
            h = module(h)
        return h

    def logits_at(self, rows: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """(n, V) logits at (rows[i], positions[i]), as arch.logits_at gives for the whole model."""
        h = self.final_hidden()
        return arch.head_logits(self.model, h[rows.to(h.device), positions.to(h.device)])


@dataclass
class SuffixStack(UpperStack):
    """An upper stack over the positions from the subject's last token on: the earlier
    positions do not depend on delta, so every block's keys and values for them are computed
    once (CACHE, PREFIX long) and each step runs only the rest of each row."""

    cache: Any = None  # transformers Cache holding the prefix; each step appends to it, so it is cut back first
    prefix: int = 0

    def final_hidden(self) -> torch.Tensor:
        for i, layer in enumerate(self.cache.layers):  # the blocks a step runs appended their positions
            grown = self.cache.get_seq_length(i) - self.prefix
            if grown > 0:
                layer.crop(-grown)
                layer.keys, layer.values = (
                    layer.keys.detach(),
                    layer.values.detach(),
                )  # no link to the last step's graph
        return super().final_hidden()


class SuffixUnsupported(Exception):
    """This family's forward cannot run from a cached prefix: it takes no position ids or cache
    by keyword, returns no cache, or its cache cannot be cut back (a sliding window the batch
    outgrew). The limits the suffix loop falls back for."""


def prefix_cache(
    model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor, position_ids: torch.Tensor, split: int
) -> Any:
    """One pass over the whole (R, L) left-aligned batch, its key/value cache cut back to the
    SPLIT positions before the column every row's subject ends in. Run under torch.no_grad()."""
    try:
        out = model.base_model(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=True)
    except TypeError as exc:  # a forward without position_ids (or use_cache) as keywords
        if "unexpected keyword argument" not in str(exc):
            raise
        raise SuffixUnsupported(str(exc)) from exc
    cache = arch.output_cache(out)
    if cache is None or not hasattr(cache, "crop"):
        raise SuffixUnsupported(f"its forward returned no croppable cache ({type(cache).__name__})")
    try:
        cache.crop(split - cache.get_seq_length())
    except RuntimeError as exc:  # a sliding-window layer keeps only its window: past it, nothing to cut back to
        raise SuffixUnsupported(f"its cache cannot be cut back to the prefix ({exc})") from exc
    return cache


def record_suffix(
    model: PreTrainedModel,
    first: int,
    ids: torch.Tensor,
    mask: torch.Tensor,
    position_ids: torch.Tensor,
    cache: Any,
    split: int,
) -> SuffixStack:
    """A pass over the positions from SPLIT on, after prefix_cache, recording what blocks first..
    receive. Run under torch.no_grad()."""
    with recording(model, first) as upper:
        model.base_model(
            input_ids=ids[:, split:],
            attention_mask=mask,
            position_ids=position_ids[:, split:],
            use_cache=True,
            **{arch.cache_keyword(model): cache},
        )
    return SuffixStack(model, first, upper.calls, cache=cache, prefix=split)


@contextmanager
def recording(model: PreTrainedModel, first: int) -> Iterator[UpperStack]:
    """Record, on the forward passes inside the block, what blocks first.. receive (the last
    pass wins). Run the model with use_cache=False: a cache object would be mutated."""
    stack = UpperStack(model, first)
    blocks = arch.blocks(model)
    calls: list[_Call | None] = [None] * (len(blocks) - first)

    def hook_for(i: int) -> Any:
        def hook(_mod: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
            calls[i] = _Call(tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args), dict(kwargs))
            if i == len(calls) - 1:
                stack.calls = [c for c in calls if c is not None]

        return hook

    handles = [block.register_forward_pre_hook(hook_for(i), with_kwargs=True) for i, block in enumerate(blocks[first:])]
    try:
        yield stack
    finally:
        for handle in handles:
            handle.remove()
