"""Scoped forward hooks: every hook is removed when its `with` block ends, even on error."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from factstore import arch

log = logging.getLogger(__name__)


@dataclass
class Captured:
    """What a capture hook saw on the last forward pass."""

    inputs: torch.Tensor | None = None
    output: Any = None


@contextmanager
def capture(module: nn.Module, detach: bool = True) -> Iterator[Captured]:
    """Record the first positional input and the output of `module`."""
    seen = Captured()

    def hook(_mod: nn.Module, args: tuple, output: Any) -> None:
        x = args[0] if args else None
        seen.inputs = x.detach() if detach and isinstance(x, torch.Tensor) else x
        seen.output = output.detach() if detach and isinstance(output, torch.Tensor) else output

    handle = module.register_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


@contextmanager
def edit_output(module: nn.Module, fn: Callable[[Any], Any]) -> Iterator[None]:
    """Replace `module`'s output by fn(output) for the duration of the block."""

    def hook(_mod: nn.Module, _args: tuple, output: Any) -> Any:
        return fn(output)

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def add_per_row(
    deltas: torch.Tensor, owner: torch.Tensor, positions: torch.Tensor
) -> Callable[[torch.Tensor], torch.Tensor]:
    """An output editor that adds deltas[owner[i]] (d,) at output[i, positions[i], :]; rows whose
    owner is negative are left as they are."""

    def fn(output: torch.Tensor) -> torch.Tensor:
        keep = (owner >= 0).to(output.device)
        rows = torch.arange(len(owner), device=output.device)[keep]
        out = output.clone()
        shaped = out.view(len(owner), -1, out.shape[-1])  # (R, L, d), also for OPT's (R * L, d)
        at = positions.to(output.device)[keep]
        shaped[rows, at] = shaped[rows, at] + deltas.to(output.device, output.dtype)[owner.to(output.device)[keep]]
        return out

    return fn


class _Stop(Exception):
    """Raised from a hook to skip the layers above the one being measured."""


def _record_input(
    seen: dict[int, torch.Tensor], layer: int, length: int, stop: bool
) -> Callable[[nn.Module, tuple], None]:
    """A forward pre-hook keeping a down-projection's input as (B, L, d_ff); STOP ends the pass there."""

    def hook(_mod: nn.Module, args: tuple) -> None:
        seen[layer] = arch.by_token(args[0].detach(), length)
        if stop:
            raise _Stop

    return hook


def _run_until_stop(model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor, handles: list[Any]) -> None:
    """One forward pass that a hook may end early with _Stop; HANDLES are removed whatever happens."""
    try:
        model(input_ids=ids, attention_mask=mask, use_cache=False)
    except _Stop:
        pass
    finally:
        for handle in handles:
            handle.remove()


def layers_inputs(
    model: PreTrainedModel, layers: list[int], ids: torch.Tensor, mask: torch.Tensor
) -> dict[int, torch.Tensor]:
    """{layer: (B, L, d_ff)} down-projection inputs of LAYERS from one forward pass that stops at
    the highest of them (no block above it runs, and no logits are made)."""
    seen: dict[int, torch.Tensor] = {}
    last = max(layers)
    handles = [
        arch.down_proj(model, layer).register_forward_pre_hook(_record_input(seen, layer, ids.shape[1], layer == last))
        for layer in set(layers)
    ]
    _run_until_stop(model, ids, mask, handles)
    return seen


def layer_inputs(model: PreTrainedModel, layer: int, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, L, d_ff) down-projection inputs of one layer (see layers_inputs)."""
    return layers_inputs(model, [layer], ids, mask)[layer]


def inputs_and_block_output(
    model: PreTrainedModel,
    key_layers: list[int],
    out_layer: int,
    ids: torch.Tensor,
    mask: torch.Tensor,
) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """Down-projection inputs of KEY_LAYERS ({layer: (B, L, d_ff)}) and the residual stream leaving
    block OUT_LAYER ((B, L, d)), from one forward pass that stops after that block."""
    seen: dict[int, torch.Tensor] = {}
    hidden: list[torch.Tensor] = []

    def out_hook(_mod: nn.Module, _args: tuple, output: Any) -> None:
        hidden.append((output[0] if isinstance(output, tuple) else output).detach())
        raise _Stop

    handles = [
        arch.down_proj(model, layer).register_forward_pre_hook(_record_input(seen, layer, ids.shape[1], False))
        for layer in key_layers
    ]
    handles.append(arch.blocks(model)[out_layer].register_forward_hook(out_hook))
    _run_until_stop(model, ids, mask, handles)
    return seen, hidden[0]


def _detached(output: Any) -> Any:
    """A block's output (a tensor, or a tuple whose first item is the hidden states) detached
    and cloned, so nothing a later pass does in place reaches what is kept."""
    if isinstance(output, torch.Tensor):
        return output.detach().clone()
    if isinstance(output, tuple):
        return tuple(_detached(item) for item in output)
    return output


class BlockStates:
    """One block's output kept per chunk of a fixed list of inputs, so that a later pass over the
    same chunk, after only blocks above it changed, runs from the block after it: the blocks up
    to it return the kept output without running. Their inputs and weights are the same, so every
    block that runs sees the same bytes (the first resumed pass of a process is checked against
    a whole pass, per model class: `_CHECKED`). A walk up a band (rome/keys.BandWalk)
    keeps the block below the layer each pass observes: the one it writes next."""

    def __init__(self) -> None:
        self.kept: dict[int, tuple[torch.Tensor, Any]] = {}  # chunk -> (its input ids, the kept block's output)
        self.block = -1  # the block kept for every chunk (-1: none)
        self.fresh = 0  # blocks below this are unchanged since their outputs were kept

    def changed(self, block: int) -> None:
        """BLOCK's weights (and so every block's output from it up) changed."""
        self.fresh = min(self.fresh, block)

    def start(self, model: PreTrainedModel, limit: int) -> int:
        """The block the next passes run from: the one after the kept block when no block up to it
        changed since and it is at most LIMIT (the lowest block they observe), else 0."""
        start = self.block + 1
        return start if 0 < start <= min(self.fresh, limit) and resumable(model) else 0

    @contextmanager
    def passing(self, model: PreTrainedModel, chunk: int, ids: torch.Tensor, start: int, keep: int) -> Iterator[None]:
        """One pass over CHUNK (token IDS) whose blocks below START return the kept output of block
        START - 1 without running; the output of block KEEP (>= START - 1) is kept for the next."""
        layers = arch.blocks(model)
        source = None
        if start > 0:
            kept_ids, source = self.kept[chunk]
            if not torch.equal(kept_ids, ids):
                raise ValueError("kept block outputs are of other inputs than this pass's")
        seen: list[Any] = []
        handles, swapped = [], []
        try:
            if keep >= start:
                handles.append(layers[keep].register_forward_hook(lambda _m, _a, out: seen.append(_detached(out))))
            stand_in = _detached(source)  # one copy a pass: only block START - 1's output reaches a block that runs
            swapped = [_skip(layers[b], stand_in) for b in range(start)]
            yield
        finally:
            for handle in handles:
                handle.remove()
            for block, saved in zip(layers, swapped):
                _restore(block, saved)
        if seen:  # (only reached when the pass raised nothing)
            self.kept[chunk] = (ids, seen[0])

    def done(self, keep: int) -> None:
        """Every chunk passed and kept block KEEP's output, as the weights now are."""
        self.block, self.fresh = keep, keep + 1


_MISSING = object()
_CHECKED: dict[type, bool] = {}  # model class -> its resumed pass equalled its whole pass


def resumable(model: PreTrainedModel) -> bool:
    """Whether passes over MODEL may resume from kept block outputs (not once they differed)."""
    return _CHECKED.get(type(model), True)


def resume_checked(model: PreTrainedModel) -> bool:
    """Whether MODEL's class has had a resumed pass compared with a whole one in this process."""
    return type(model) in _CHECKED


def check_resumed(
    model: PreTrainedModel,
    resumed: tuple[dict[int, torch.Tensor], torch.Tensor],
    whole: tuple[dict[int, torch.Tensor], torch.Tensor],
) -> bool:
    """Record whether a resumed pass gave WHOLE's bytes (keys by layer, block output); a class
    whose blocks keep state between them (or do not run through forward) is never resumed again."""
    same = resumed[0].keys() == whole[0].keys() and all(torch.equal(resumed[0][k], whole[0][k]) for k in whole[0])
    same = same and torch.equal(resumed[1], whole[1])
    _CHECKED[type(model)] = same
    if not same:
        log.warning(
            "%s: a pass resumed from kept block outputs differs from a whole pass; whole passes from now",
            type(model).__name__,
        )
    return same


def _skip(block: nn.Module, output: Any) -> Any:
    """Make BLOCK return OUTPUT without running; returns what to restore (an instance `forward`,
    such as accelerate's, or _MISSING)."""
    saved = block.__dict__.get("forward", _MISSING)
    block.forward = lambda *_args, **_kwargs: output
    return saved


def _restore(block: nn.Module, saved: Any) -> None:
    if saved is _MISSING:
        del block.forward
    else:
        block.forward = saved
