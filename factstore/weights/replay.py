"""Replay an edit log onto a model: the log of (key, value, layer) is a set of constraints.

The head model of an edit session and a release's weights are both built here, so they
cannot drift apart."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from typing import Any, TypeVar

import torch
from transformers import PreTrainedModel

from factstore import arch
from factstore.domain import LoggedEdit, StoredEdit
from factstore.errors import CompileError
from factstore.options import MODES  # the modes' names, torch-free (LifelongSettings' default)
from factstore.rome.edit import add_delta
from factstore.rome.hparams import ROMEHyperParams
from factstore.rome.update import (
    constraint_error,
    joint_delta,
    null_space,
    null_space_delta,
    rank_one_delta_given,
    soft_delta,
    soft_null_space_delta,
)
from factstore.weights import band
from factstore.weights.spread import SPREAD_LAYERS, LayerInputs, apply_spread, spread_layers
from factstore.weights.vectors import from_bytes

DEFAULT_MODE = "joint"
EXACT_MODES = ("joint", "null-space")  # every constraint of the log holds on the compiled weights at once
SOFT_MODES = ("soft", "band")  # no constraint held exactly: accepted by behaviour (each edit's new target wins)
# over several layers: they read C of more layers than the edits' own (LayerInputs); spread
# also measures keys with forward passes (no byte-exact rebuild on another machine), band
# reads the per-layer vectors stored with each edit (weights/band.py)
LAYERED_MODES = ("spread", "band")
JOINT_RIDGE = 1e-6  # lambda relative to the mean diagonal of K^T C^-1 K
NULL_SPACE_THRESHOLD = (
    3e-2  # eigenvalues of C up to this share of the largest span the null space (docs/results.md: 1e-2 was worse)
)
SOFT_WEIGHT = 1e3  # tokens of preserved text against each edit's key (MEMIT's lambda; docs/hparams.md sweep)
SOFT_ALPHA = 0.0  # ENCORE's alpha I, as a share of C's mean variance
CONSTRAINT_TOLERANCE = 1e-3  # ||W k - v|| / ||v|| allowed after compiling, in float32


def tolerance(model: PreTrainedModel, layer: int) -> float:
    """The constraint error allowed for a layer: bfloat16 and float16 weights round every entry
    of the update (unit roundoff 2^-8, 2^-11), so they get two of their machine epsilons."""
    return max(CONSTRAINT_TOLERANCE, 2 * torch.finfo(arch.down_proj_param(model, layer).dtype).eps)


HandleT = TypeVar("HandleT", bound=Hashable)  # how a log's edits name their C (domain.LoggedEdit)
CovarianceLoader = Callable[[HandleT], torch.Tensor]  # an edit's covariance_id -> C of its own layer


def edit_vectors(edit: LoggedEdit[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    return from_bytes(edit.key, edit.key_shape, edit.key_sha256), from_bytes(
        edit.value, edit.value_shape, edit.value_sha256
    )


def _check_module(model: PreTrainedModel, edit: LoggedEdit[Any]) -> None:
    expected = arch.down_proj_name(model, edit.layer)
    if edit.module != expected:
        raise CompileError(f"{edit.label} rewrites {edit.module}, but this model's layer {edit.layer} is {expected}")


def apply_sequential(
    model: PreTrainedModel, edits: Sequence[LoggedEdit[HandleT]], covariance: CovarianceLoader[HandleT]
) -> None:
    """Each edit's rank-one update in seq order: reproduces the model the edits were computed on.

    Each constraint holds right after its own update; later updates of the same layer move
    earlier keys' outputs (that drift is what joint mode avoids). C^-1 k does not depend on
    the weights, so it is solved up front for all keys that share a C.
    """
    ordered = sorted(edits, key=lambda e: e.seq)
    for edit in ordered:
        _check_module(model, edit)
    solved = solved_keys(model, ordered, covariance)
    for edit in ordered:
        key, value = edit_vectors(edit)
        apply_update(model, edit.layer, key, value, solved[edit.seq], edit.label)


def apply_update(
    model: PreTrainedModel, layer: int, key: torch.Tensor, value: torch.Tensor, solved: torch.Tensor, label: str
) -> None:
    """One rank-one update with C^-1 k already solved (in,), then its constraint checked: the
    step every replay makes, so a head that applies an edit before storing it equals a replay."""
    W, b = arch.down_proj_weight(model, layer), arch.down_proj_bias(model, layer)
    key, value = key.to(W.device), value.to(W.device)
    add_delta(model, layer, rank_one_delta_given(W, b, key, value, solved.to(W.device)))
    W = arch.down_proj_weight(model, layer)  # after the update
    err = float(constraint_error(W, b, key.unsqueeze(1), value.unsqueeze(1))[0])
    if not err <= tolerance(model, layer):
        raise CompileError(
            f"{label} does not hold after its own update (constraint error {err:.2g}); nothing was written"
        )


def solve_key(model: PreTrainedModel, layer: int, key: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """C^-1 k (in,) float64, solved as solved_keys solves a column (so the result is the same)."""
    device = arch.down_proj_weight(model, layer).device
    return torch.linalg.solve(C.to(device, torch.float64), key.unsqueeze(1).to(device, torch.float64))[:, 0]


def solved_keys(
    model: PreTrainedModel, edits: Sequence[LoggedEdit[HandleT]], covariance: CovarianceLoader[HandleT]
) -> dict[int, torch.Tensor]:
    """edit seq -> C^-1 k (in,) float64, one solve per C with every key as a column."""
    by_cov: dict[HandleT, list[LoggedEdit[HandleT]]] = defaultdict(list)
    for edit in edits:
        by_cov[edit.covariance_id].append(edit)
    solved: dict[int, torch.Tensor] = {}
    for cov_id, group in by_cov.items():
        device = arch.down_proj_weight(model, group[0].layer).device
        K = torch.stack([edit_vectors(e)[0] for e in group], dim=1).to(device, torch.float64)  # (in, n)
        U = torch.linalg.solve(covariance(cov_id).to(device, torch.float64), K)
        solved.update({e.seq: U[:, i] for i, e in enumerate(group)})
    return solved


def _by_layer(model: PreTrainedModel, edits: Sequence[LoggedEdit[HandleT]]) -> dict[int, list[LoggedEdit[HandleT]]]:
    by_layer: dict[int, list[LoggedEdit[HandleT]]] = defaultdict(list)
    for edit in sorted(edits, key=lambda e: e.seq):
        _check_module(model, edit)
        by_layer[edit.layer].append(edit)
    return dict(sorted(by_layer.items()))


def apply_joint(
    model: PreTrainedModel,
    edits: Sequence[LoggedEdit[HandleT]],
    covariance: CovarianceLoader[HandleT],
    ridge: float = JOINT_RIDGE,
    null_space_threshold: float | None = None,
    soft: tuple[float, float] | None = None,
    soft_null: tuple[float, float] | None = None,
) -> None:
    """All edits of a layer solved at once in float64: order-independent, none erases another.
    With null_space_threshold (AlphaEdit), the update is confined to C's null space; with
    soft = (weight, alpha) (MEMIT), it is a least-squares fit that holds no edit exactly; with
    soft_null = (threshold, l2) (AlphaEdit's own form), both: confined and soft."""
    for layer, group in _by_layer(model, edits).items():
        keys, values = zip(*(edit_vectors(e) for e in group))
        W, b = arch.down_proj_weight(model, layer), arch.down_proj_bias(model, layer)
        K = torch.stack(keys, dim=1).to(W.device)  # (d_ff, n)
        V = torch.stack(values, dim=1).to(W.device)  # (d_model, n)
        C = covariance(group[-1].covariance_id).to(W.device)
        if soft is not None:
            add_delta(model, layer, soft_delta(W, b, K, V, C, *soft))
        elif soft_null is not None:
            add_delta(model, layer, soft_null_space_delta(W, b, K, V, null_space(C, soft_null[0]), soft_null[1]))
        elif null_space_threshold is None:
            add_delta(model, layer, joint_delta(W, b, K, V, C, ridge))
        else:
            basis = null_space(C, null_space_threshold)
            if basis.shape[1] < len(group):
                raise CompileError(
                    f"null-space compile: layer {layer} has {len(group)} edits but C's null space only "
                    f"{basis.shape[1]} dimensions; use --mode joint or spread; nothing was written"
                )
            add_delta(model, layer, null_space_delta(W, b, K, V, basis, ridge))


def touched_layers(edits: Sequence[LoggedEdit[Any]], mode: str) -> set[int]:
    """The layers whose down-projection a compile of EDITS in MODE changes."""
    own = {e.layer for e in edits}
    if mode == "band":
        return own | {a.layer for e in edits for a in e.band}
    if mode == "spread":
        return {below for layer in own for below in spread_layers(layer, SPREAD_LAYERS)}
    return own


def soft_settings(mode: str, edits: Sequence[LoggedEdit[Any]] = ()) -> tuple[float, float]:
    """(weight, alpha) of a soft mode's least-squares solve: band mode's are its edits' own
    (registered with them; weights/band.py), else the model's default band weight."""
    if mode == "band":
        return band.settings(edits, (ROMEHyperParams.band_weight, ROMEHyperParams.band_alpha))
    return SOFT_WEIGHT, SOFT_ALPHA


def default_mode(edits: Sequence[LoggedEdit[Any]]) -> str:
    """What a compile without --mode builds: the band compile for a log registered over a band
    (the head its edits were measured on), else DEFAULT_MODE."""
    return "band" if any(e.band for e in edits) else DEFAULT_MODE


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise CompileError(f"unknown compile mode {mode!r}; use one of {', '.join(MODES)}")


def apply_edits(
    model: PreTrainedModel,
    edits: Sequence[LoggedEdit[HandleT]],
    covariance: CovarianceLoader[HandleT],
    mode: str = DEFAULT_MODE,
    inputs: LayerInputs[HandleT] | None = None,
) -> None:
    """Write the log onto MODEL's weights in MODE. The layered modes (spread, band) need INPUTS
    (the tokenizer, the edits' context templates and C of the layers below); spread and
    sequential check each edit as they go, the exact modes are checked with constraint_errors
    after, the soft modes by behaviour (release/build.verify)."""
    check_mode(mode)
    if mode in LAYERED_MODES:
        if inputs is None:
            raise CompileError(
                f"the {mode} mode needs the tokenizer, context templates and key statistics of the layers below"
            )
        _by_layer(model, edits)  # every edit's module checked first
        if mode == "band":  # linear algebra over the stored per-layer vectors; soft: nothing to check after
            layer_cov, names = inputs.covariance, inputs.names

            def held(e: LoggedEdit[HandleT], layer: int) -> torch.Tensor:
                C = covariance(e.covariance_id) if layer == e.layer else layer_cov(e, layer)
                return band.held(C, lambda: names(e, layer), band.names_weight(e))

            band.apply_band(model, edits, edit_vectors, held, soft_settings(mode, edits))
            return
        apply_spread(model, edits, covariance, edit_vectors, inputs, lambda layer: tolerance(model, layer))
    elif mode == "sequential":
        apply_sequential(model, edits, covariance)
    elif mode == "soft":
        apply_joint(model, edits, covariance, soft=soft_settings(mode))
    else:
        apply_joint(
            model, edits, covariance, null_space_threshold=NULL_SPACE_THRESHOLD if mode == "null-space" else None
        )


def constraint_errors(model: PreTrainedModel, edits: Sequence[StoredEdit]) -> dict[int, float]:
    """edit id -> ||W k + b - v|| / ||v|| on the model as it is now."""
    errors: dict[int, float] = {}
    for edit in edits:
        key, value = edit_vectors(edit)
        W, b = arch.down_proj_weight(model, edit.layer), arch.down_proj_bias(model, edit.layer)
        err = constraint_error(W, b, key.unsqueeze(1).to(W.device), value.unsqueeze(1).to(W.device))
        errors[edit.id] = float(err[0])
    return errors
