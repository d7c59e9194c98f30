"""Compile mode `band`: a soft solve per layer over what each edit asks of every layer of its band.

An edit registered with a band (hparams `band` = B > 1) stores, for each layer l of L-B+1..L,
the key k_l the layer sees for its subject and the change r_l of the layer's output wanted at
that key, relative to the base weights. They were measured once, on the head, when the edit
was computed, MEMIT's way: walking up the band, each layer asked for its share of what is
still missing of the edit's shift at layer L, after the layers below were written
(`measure_asks`). A compile is then linear algebra over stored vectors, per layer

    dW_l = R_l K_l^T (weight_l (H_l + alpha mean(diag H_l) I) + K_l K_l^T)^-1,   H_l = C_l + rho N_l

over every ask that reaches l (MEMIT's soft solve with ENCORE's alpha I; every earlier edit's
key is in the solve; N_l the moment of the keys of C's corpus's names, each read alone, weighed rho =
band_names_weight: `held`; weight_l the band weight, times band_top_weight at the edit layer:
`layer_soft`): deterministic, the same bytes wherever the vectors and C are the same.
A single-layer edit asks one layer for its whole shift, v* - W0 k* - b.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from typing import Any, TypeVar

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from factstore import arch
from factstore.domain import EditRequest, LayerAsk, LoggedEdit
from factstore.errors import CompileError
from factstore.rome.edit import add_delta
from factstore.rome.keys import BandWalk
from factstore.rome.prompts import request_prompts
from factstore.rome.update import soft_residual_delta
from factstore.weights.join import join_of, layer_outputs
from factstore.weights.spread import spread_layers
from factstore.weights.vectors import from_bytes, to_bytes

# layer -> [(key (d_ff,), target (d,))] in seq order
Asks = dict[int, list[tuple[torch.Tensor, torch.Tensor]]]
# C of a layer for an edit: the layer's C of the corpus, size and dtype of the edit's own C
HandleT = TypeVar("HandleT", bound=Hashable)  # how a log's edits name their C (domain.LoggedEdit)
LayerCovariance = Callable[[LoggedEdit[HandleT], int], torch.Tensor]


def vector(data: bytes) -> torch.Tensor:
    """A stored float32 vector (n,)."""
    return from_bytes(data, (len(data) // 4,))


def settings(edits: Sequence[LoggedEdit[Any]], default: tuple[float, float]) -> tuple[float, float]:
    """(weight, alpha) of the band edits' hparams; DEFAULT when none has a band. Edits registered
    with other settings cannot share one solve (the head they were measured on would not be
    the release)."""
    found = {(float(e.hparams["band_weight"]), float(e.hparams.get("band_alpha", 0.0))) for e in edits if e.band}
    for name, of in (("band names weights", names_weight), ("band top weights", top_weight)):
        if len({of(e) for e in edits if e.band}) > 1:
            raise CompileError(
                f"the log's band edits were registered with different {name}; retract or re-register them with one"
            )
    if len(found) > 1:
        raise CompileError(
            f"the log's band edits were registered with {len(found)} different band weights; retract or re-register them with one"
        )
    return found.pop() if found else default


def top_weight(edit: LoggedEdit[Any]) -> float:
    """The band_top_weight a band edit was registered with (1 before the setting existed)."""
    return float(edit.hparams.get("band_top_weight", 1.0)) if edit.band else 1.0


def tops(edits: Sequence[LoggedEdit[Any]]) -> tuple[float, set[int]]:
    """(band_top_weight, the layers it applies to) of a log of EDITS: the band edits' own layers,
    the tops of their bands (one top weight per log: `settings` checks)."""
    return next((top_weight(e) for e in edits if e.band), 1.0), {e.layer for e in edits if e.band}


def layer_soft(soft: tuple[float, float], layer: int, top: tuple[float, set[int]]) -> tuple[float, float]:
    """(weight, alpha) of LAYER's solve: SOFT, its weight times TOP's weight where LAYER is a top."""
    return (soft[0] * top[0], soft[1]) if layer in top[1] else soft


def names_weight(edit: LoggedEdit[Any]) -> float:
    """The band_names_weight rho a band edit was registered with (0 before the setting existed, and
    for a single-layer edit, whose solve is C's alone whatever its hyperparameters say)."""
    return float(edit.hparams.get("band_names_weight", 0.0)) if edit.band else 0.0


def held(C: torch.Tensor, names: Callable[[], torch.Tensor], rho: float) -> torch.Tensor:
    """C + RHO N (in, in), N = NAMES() the names moment of C's file: the matrix a band layer's
    soft solve holds its update to (C alone when RHO is 0, without reading N)."""
    return C if rho == 0 else C + rho * names().to(C)


def key_prompts(request: EditRequest, templates: list[str], plain_weight: int) -> list[tuple[str, str]]:
    """The (prompt, subject) pairs whose mean is a band edit's key at each layer: its prompt in
    every context template, and PLAIN_WEIGHT more copies of the bare prompt (hparams
    band_plain_weight); registration and the importer both measure keys over these."""
    return [(p, request.subject) for p in request_prompts(request, templates)] + [
        (request.prompt, request.subject)
    ] * plain_weight


def plain_weight(edit: LoggedEdit[Any]) -> int:
    """The band_plain_weight an edit was registered with (0 before the setting existed)."""
    return int(edit.hparams.get("band_plain_weight", 0))


def base_shift(vectors: tuple[torch.Tensor, torch.Tensor], W0: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """v* - W0 k* - b (d,) float64 with the base weight W0 (out, in): what a single-layer edit asks of its layer."""
    key, value = vectors
    return value.double() - W0.double().cpu() @ key.double() - (0.0 if b is None else b.double().cpu())


def collect(
    edits: Sequence[LoggedEdit[HandleT]],
    vectors: Callable[[LoggedEdit[HandleT]], tuple[torch.Tensor, torch.Tensor]],
    base: Callable[[int], tuple[torch.Tensor, torch.Tensor | None]],
) -> tuple[Asks, dict[int, LoggedEdit[HandleT]]]:
    """Every ask of EDITS by layer, and per layer the last edit that reaches it (whose C spec the
    layer's solve uses). BASE(layer): the base (W0 (out, in), b) a single-layer edit's shift is from."""
    asks: Asks = defaultdict(list)
    last: dict[int, LoggedEdit[HandleT]] = {}
    for edit in sorted(edits, key=lambda e: e.seq):
        if edit.band:
            for ask in edit.band:
                asks[ask.layer].append((vector(ask.key), vector(ask.target)))
                last[ask.layer] = edit
        else:
            pair = vectors(edit)
            asks[edit.layer].append((pair[0], base_shift(pair, *base(edit.layer))))
            last[edit.layer] = edit
    return dict(asks), last


def layer_delta(
    rows: list[tuple[torch.Tensor, torch.Tensor]], C: torch.Tensor, soft: tuple[float, float]
) -> torch.Tensor:
    """dW (out, in) float64 of one layer's soft solve over its asks."""
    K = torch.stack([k for k, _ in rows], dim=1).double()  # (d_ff, n)
    R = torch.stack([r for _, r in rows], dim=1).double()  # (d, n)
    return soft_residual_delta(R, K, C, *soft)


def write_layer(model: PreTrainedModel, layer: int, W0: torch.Tensor, delta: torch.Tensor | None) -> None:
    """LAYER's down-projection := W0 (out, in) [+ DELTA], as a compile from the base writes it."""
    param = arch.down_proj_param(model, layer)
    param.data.copy_(W0.T if arch.model_spec(model).fan_in_fan_out else W0)
    if delta is not None:
        add_delta(model, layer, delta)


def apply_band(
    model: PreTrainedModel,
    edits: Sequence[LoggedEdit[HandleT]],
    vectors: Callable[[LoggedEdit[HandleT]], tuple[torch.Tensor, torch.Tensor]],
    covariance: LayerCovariance[HandleT],
    soft: tuple[float, float],
) -> None:
    """Write the band compile of EDITS onto MODEL, which holds the base weights on every layer an
    ask reaches."""
    asks, last = collect(
        edits, vectors, lambda layer: (arch.down_proj_weight(model, layer), arch.down_proj_bias(model, layer))
    )
    top = tops(edits)
    for layer, rows in sorted(asks.items()):
        add_delta(model, layer, layer_delta(rows, covariance(last[layer], layer), layer_soft(soft, layer, top)))


def measure_asks(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt_sets: list[list[tuple[str, str]]],
    layer: int,
    shifts: torch.Tensor,
    band: int,
    write: Callable[[int, list[tuple[torch.Tensor, torch.Tensor]]], None],
    base_weight: Callable[[int], torch.Tensor],
    boost: float = 1.0,
) -> list[tuple[LayerAsk, ...]]:
    """What each of n new edits asks of every layer of its band (lowest first), measured on
    MODEL (the head) MEMIT's way. SHIFTS (n, d): the change of block LAYER's output each edit
    wants (v* - W k* - b on the head, as the residual stream sees it: Join.shift); PROMPT_SETS:
    each edit's key prompts with its subject. At layer l (j-th of B), each edit asks its share
    (Z - H) / (B - j) of what is still missing at block LAYER (as a change of l's output:
    Join.change), plus what the head's layer already adds at its key (targets are
    relative to BASE_WEIGHT(l), (out, in)); WRITE(l, new asks) then rewrites layer l with the
    head's asks and these, so the layers above are measured on it. The vectors are rounded to
    float32 (as stored) before they are written, so the head is what a compile of them builds.
    BOOST > 1: then each edit's shares are scaled so that its whole shift reaches block LAYER
    (boost_scales; the soft solves deliver only part of an ask), by at most BOOST, and every
    layer is written again with them (its keys as measured on the first pass)."""
    walk = BandWalk(model, tokenizer, prompt_sets, spread_layers(layer, band), layer)
    measured: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (layer, keys, present, share) per layer
    for j, lower, keys, H in walk:
        if j == 0:  # block LAYER's output before any write, and where it should end: (n, d)
            H0, Z = H, H.double() + shifts.double()
        W = arch.down_proj_weight(model, lower).double().cpu()
        share = join_of(model, lower).change(
            layer_outputs(model, lower, keys, W), (Z - H.double()) / (len(walk.layers) - j)
        )
        present = keys.double() @ (W - base_weight(lower).double().cpu()).T  # (n, d): the head's own change
        measured.append((lower, keys, present, share))
        write(lower, _rows(keys, present + share))
    if boost > 1.0:
        scale = boost_scales(walk.top_output().double() - H0.double(), shifts.double(), boost)
        if bool((scale > 1.0).any()):
            for lower, keys, present, share in measured:
                write(lower, _rows(keys, present + scale[:, None] * share))
            measured = [(lower, keys, present, scale[:, None] * share) for lower, keys, present, share in measured]
    asks = [
        tuple(LayerAsk(lower, *_pair(keys[i], present[i] + share[i])) for lower, keys, present, share in measured)
        for i in range(len(prompt_sets))
    ]
    return asks


def boost_scales(delivered: torch.Tensor, wanted: torch.Tensor, boost: float) -> torch.Tensor:
    """(n,) factor on each new edit's shares so that its whole shift reaches its layer: the soft
    solves deliver a fraction f = <delivered, wanted> / |wanted|^2 of it (n, d each), less for a
    key that ordinary text (C) already uses; 1/f, within [1, BOOST]."""
    f = (delivered * wanted).sum(1) / (wanted * wanted).sum(1).clamp_min(1e-30)
    return (1.0 / f.clamp_min(1.0 / boost)).clamp(1.0, boost)


def _pair(key: torch.Tensor, target: torch.Tensor) -> tuple[bytes, bytes]:
    """A layer's key and target as stored (float32 bytes)."""
    return to_bytes(key.float())[0], to_bytes(target.float())[0]


def _rows(keys: torch.Tensor, targets: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(n, d_ff) keys and (n, d) targets as rows of a layer's solve, rounded to float32 as stored
    (so the head is what a compile of the stored vectors builds)."""
    return [(vector(k), vector(t)) for k, t in (_pair(key, target) for key, target in zip(keys, targets))]
