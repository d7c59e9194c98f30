"""Compile mode `spread`: MEMIT's distribution of each edit over the edit layer and the ones below.

A stored edit asks layer L's down-projection to emit v* for k*, i.e. to move the residual
stream leaving block L by r = v* - W0 k* - b at the subject's last token (averaged over the
key's context prompts). Spread mode measures that stream on the base model (H0), sets the
target Z = H0 + r (as the stream sees r: behind a post-MLP norm, weights/join.py), and walks
up the layers L-4..L: at each, it measures the stream and the layer's keys on the model as
updated so far, and asks the layer for its share of what is left, (Z - H) / (layers left), in
the least-squares form of the joint solve with C of that layer. The lower layers take their
share softly (ridge, as MEMIT), so that no matrix carries every constraint at full size; the
edit layer takes exactly what is left, so every edit's target holds at the end, and is checked
by a last measurement before anything is written.
Forward passes only: no gradients; deterministic for a given machine and thread count.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch
from transformers import PreTrainedModel

from factstore import arch
from factstore.domain import LoggedEdit, StoredEdit
from factstore.errors import CompileError
from factstore.rome.edit import add_delta
from factstore.rome.keys import BandWalk, subject_keys, subject_states
from factstore.rome.prompts import request_prompts
from factstore.rome.update import residual_delta, soft_residual_delta
from factstore.weights.join import join_of, layer_outputs

SPREAD_LAYERS = 5  # the edit layer and the four below it (MEMIT's L-4..L)
LOWER_RIDGE = 1.0  # lambda / mean diagonal of K^T C^-1 K below the edit layer (MEMIT's lambda C is about this size)
TOP_RIDGE = 1e-6  # the edit layer solves exactly what is left (as the joint mode)


HandleT = TypeVar("HandleT", bound=Hashable)  # how a log's edits name their C (domain.LoggedEdit)


@dataclass(frozen=True)
class LayerInputs(Generic[HandleT]):
    """What a compile over several layers needs beyond the stored vectors."""

    tokenizer: Any
    templates: Callable[[LoggedEdit[Any]], list[str]]  # the context templates an edit's k* was averaged over
    # C of a layer, of the corpus and size the edit's C has
    covariance: Callable[[LoggedEdit[HandleT], int], torch.Tensor]
    # the names moment of the C file an edit's band solve reads on a layer (weights/band.held)
    names: Callable[[LoggedEdit[HandleT], int], torch.Tensor]


@dataclass(frozen=True, slots=True)
class SpreadSettings:
    """How apply_spread solves: SOFT = (weight, alpha) makes every layer of the band a soft solve
    (MEMIT's own form: no layer exact, nothing refused); BAND: the layers L-BAND+1..L (None: SPREAD_LAYERS)."""

    soft: tuple[float, float] | None = None
    band: int | None = None


def spread_layers(layer: int, width: int = SPREAD_LAYERS) -> list[int]:
    """The band that ends at LAYER: the WIDTH layers up to and including it (fewer near the bottom)."""
    return list(range(max(0, layer - width + 1), layer + 1))


def _prompt_sets(edits: Sequence[LoggedEdit[Any]], inputs: LayerInputs[Any]) -> list[list[tuple[str, str]]]:
    return [[(p, e.subject) for p in request_prompts(e.request(), inputs.templates(e))] for e in edits]


def _stored(
    edits: Sequence[LoggedEdit[HandleT]], vectors: Callable[[LoggedEdit[HandleT]], tuple[torch.Tensor, torch.Tensor]]
) -> tuple[torch.Tensor, torch.Tensor]:
    keys, values = zip(*(vectors(e) for e in edits))
    return torch.stack(keys).double(), torch.stack(values).double()  # (n, d_ff), (n, d)


def apply_spread(
    model: PreTrainedModel,
    edits: Sequence[LoggedEdit[HandleT]],
    own_covariance: Callable[[HandleT], torch.Tensor],
    vectors: Callable[[LoggedEdit[HandleT]], tuple[torch.Tensor, torch.Tensor]],
    inputs: LayerInputs[HandleT],
    tolerance: Callable[[int], float],
    settings: SpreadSettings = SpreadSettings(),
) -> None:
    """Spread each edit layer's edits over spread_layers(L), lowest layer first; refuse if an
    edit's target is not met at the end (CompileError; the caller writes nothing). SETTINGS: a
    soft solve on every layer (nothing refused), another band width."""
    soft, band = settings.soft, settings.band
    by_layer: dict[int, list[LoggedEdit[HandleT]]] = defaultdict(list)
    for edit in sorted(edits, key=lambda e: e.seq):
        by_layer[edit.layer].append(edit)
    targets: dict[int, tuple[list[list[tuple[str, str]]], torch.Tensor, torch.Tensor]] = {}  # layer -> (prompts, Z, V)
    for top, group in sorted(by_layer.items()):
        prompts = _prompt_sets(group, inputs)
        K, V = _stored(group, vectors)
        W0, b = arch.down_proj_weight(model, top).double().cpu(), arch.down_proj_bias(model, top)
        wanted = V - K @ W0.T - (0 if b is None else b.double().cpu())  # (n, d): the shift each edit asks at block L
        wanted = join_of(model, top).shift(V - wanted, wanted)  # as the residual stream sees it (weights/join.py)
        walk = BandWalk(model, inputs.tokenizer, prompts, spread_layers(top, band or SPREAD_LAYERS), top)
        for j, layer, keys, H in walk:
            if j == 0:  # (n, d): where block TOP's output should end
                Z = H.double() + wanted
            share = (Z - H.double()) / (len(walk.layers) - j)  # (n, d), as the residual stream sees it
            outputs = layer_outputs(model, layer, keys, arch.down_proj_weight(model, layer).cpu())
            share = join_of(model, layer).change(outputs, share)  # as the layer's output must change
            C = own_covariance(group[-1].covariance_id) if layer == top else inputs.covariance(group[-1], layer)
            Kl = keys.double().T  # (d_ff, n)
            if soft is not None:
                delta = soft_residual_delta(share.T, Kl, C, *soft)
            else:
                ridge = TOP_RIDGE if layer == top else LOWER_RIDGE
                delta = residual_delta(share.T, Kl, torch.linalg.solve(C.double(), Kl), ridge)
            add_delta(model, layer, delta)
        targets[top] = (prompts, Z, V)
    if soft is not None:
        return
    bad = []  # measured on the final weights: a later group's layers may move an earlier group's stream
    for top, group in sorted(by_layer.items()):
        prompts, Z, V = targets[top]
        _, H = subject_states(model, inputs.tokenizer, prompts, top, top)
        scale = join_of(model, top).residual(V).norm(dim=1)  # v* as the stream sees it: |v*| if plain
        errors = (H.double() - Z).norm(dim=1) / scale
        bad += [f"{e.label} ({err:.2g})" for e, err in zip(group, errors.tolist()) if not err <= tolerance(top)]
    if bad:
        raise CompileError(f"spread compile: these edits miss their target: {', '.join(bad[:10])}; nothing was written")


def band_keys(
    model: PreTrainedModel, edits: Sequence[StoredEdit], inputs: LayerInputs[Any], band: int
) -> dict[int, dict[int, torch.Tensor]]:
    """{edit id: {layer: key (d_ff,)}} for the layers below each edit's own in a band of BAND
    layers, measured on MODEL (the base) in one pass per edit layer: what a linear band compile
    needs beyond the stored (key, value) of the edit layer."""
    by_layer: dict[int, list[StoredEdit]] = defaultdict(list)
    for edit in edits:
        by_layer[edit.layer].append(edit)
    found: dict[int, dict[int, torch.Tensor]] = {}
    for top, group in sorted(by_layer.items()):
        lower = spread_layers(top, band)[:-1]
        if not lower:
            found.update({e.id: {} for e in group})
            continue
        keys = subject_keys(model, inputs.tokenizer, _prompt_sets(group, inputs), lower)
        found.update({e.id: {layer: keys[layer][i] for layer in lower} for i, e in enumerate(group)})
    return found


def band_deltas(
    model: PreTrainedModel,
    edits: Sequence[StoredEdit],
    vectors: Callable[[StoredEdit], tuple[torch.Tensor, torch.Tensor]],
    lower_keys: Callable[[StoredEdit], dict[int, torch.Tensor]],
    covariance: Callable[[StoredEdit, int], torch.Tensor],
    soft: tuple[float, float],
    band: int,
) -> dict[int, torch.Tensor]:
    """{layer: dW (out, in)} of the linear band: each edit's shift R = v* - W0 k* - b at its
    layer L is asked in equal shares R / BAND of every layer of L-BAND+1..L, at that layer's key
    (stored k* at L, LOWER_KEYS below), every layer one soft solve over all the edits that
    reach it. Linear algebra over stored vectors only: no forward pass, the same bytes
    wherever the vectors and C are the same (MEMIT without measuring again between layers)."""
    asks: dict[int, list[tuple[StoredEdit, torch.Tensor, torch.Tensor]]] = defaultdict(list)  # layer -> (edit, k, r)
    base: dict[int, tuple[torch.Tensor, torch.Tensor | float]] = {}  # edit layer -> (W0, b) in float64, read once
    for edit in sorted(edits, key=lambda e: e.seq):
        key, value = vectors(edit)
        if edit.layer not in base:
            b = arch.down_proj_bias(model, edit.layer)
            base[edit.layer] = (
                arch.down_proj_weight(model, edit.layer).double().cpu(),
                0.0 if b is None else b.double().cpu(),
            )
        W0, b0 = base[edit.layer]
        shift = value.double() - W0 @ key.double() - b0  # (d,)
        layers = spread_layers(edit.layer, band)
        below = lower_keys(edit)
        for layer in layers:
            asks[layer].append((edit, key if layer == edit.layer else below[layer], shift / len(layers)))
    deltas = {}
    for layer, rows in sorted(asks.items()):
        K = torch.stack([k for _, k, _ in rows]).double().T  # (d_ff, n)
        R = torch.stack([r for _, _, r in rows]).T  # (d, n)
        deltas[layer] = soft_residual_delta(R, K, covariance(rows[-1][0], layer), *soft)
    return deltas
