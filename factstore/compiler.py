"""Replay an edit log onto a model: the log of (key, value, layer) is a set of constraints."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

import torch
from torch import nn

from factstore import arch
from factstore.domain import StoredEdit
from factstore.errors import CompileError
from factstore.rome.edit import add_delta, apply_edit
from factstore.rome.update import constraint_error, joint_delta
from factstore.vectors import from_bytes

MODES = ("joint", "sequential")
DEFAULT_MODE = "joint"
JOINT_RIDGE = 1e-6  # lambda relative to the mean diagonal of K^T C^-1 K
CONSTRAINT_TOLERANCE = 1e-3  # ||W k - v|| / ||v|| allowed after compiling

CovarianceLoader = Callable[[int | None], torch.Tensor]


def edit_vectors(edit: StoredEdit) -> tuple[torch.Tensor, torch.Tensor]:
    return from_bytes(edit.key, edit.key_shape, edit.key_sha256), from_bytes(edit.value, edit.value_shape, edit.value_sha256)


def _check_module(model: nn.Module, edit: StoredEdit) -> None:
    expected = arch.down_proj_name(model, edit.layer)
    if edit.module != expected:
        raise CompileError(f"edit {edit.id} rewrites {edit.module}, but this model's layer {edit.layer} is {expected}")


def apply_sequential(model: nn.Module, edits: Sequence[StoredEdit], covariance: CovarianceLoader) -> None:
    """Each edit's rank-one update in seq order: reproduces the model the edits were computed on."""
    for edit in sorted(edits, key=lambda e: e.seq):
        _check_module(model, edit)
        key, value = edit_vectors(edit)
        apply_edit(model, edit.layer, key, value, covariance(edit.covariance_id))


def apply_joint(model: nn.Module, edits: Sequence[StoredEdit], covariance: CovarianceLoader, ridge: float = JOINT_RIDGE) -> None:
    """All edits of a layer solved at once in float64: order-independent, none erases another."""
    by_layer: dict[int, list[StoredEdit]] = defaultdict(list)
    for edit in sorted(edits, key=lambda e: e.seq):
        _check_module(model, edit)
        by_layer[edit.layer].append(edit)
    for layer, group in sorted(by_layer.items()):
        keys, values = zip(*(edit_vectors(e) for e in group))
        W = arch.down_proj_weight(model, layer).detach()
        b = arch.down_proj_bias(model, layer)
        K = torch.stack(keys, dim=1).to(W.device)  # (d_ff, n)
        V = torch.stack(values, dim=1).to(W.device)  # (d_model, n)
        C = covariance(group[-1].covariance_id).to(W.device)
        add_delta(model, layer, joint_delta(W, None if b is None else b.detach(), K, V, C, ridge))


def apply_edits(model: nn.Module, edits: Sequence[StoredEdit], covariance: CovarianceLoader, mode: str = DEFAULT_MODE) -> None:
    if mode not in MODES:
        raise CompileError(f"unknown compile mode {mode!r}; use one of {', '.join(MODES)}")
    if mode == "sequential":
        apply_sequential(model, edits, covariance)
    else:
        apply_joint(model, edits, covariance)


def constraint_errors(model: nn.Module, edits: Sequence[StoredEdit]) -> dict[int, float]:
    """edit id -> ||W k + b - v|| / ||v|| on the model as it is now."""
    errors = {}
    for edit in edits:
        key, value = edit_vectors(edit)
        W = arch.down_proj_weight(model, edit.layer).detach()
        b = arch.down_proj_bias(model, edit.layer)
        err = constraint_error(W, None if b is None else b.detach(), key.unsqueeze(1).to(W.device), value.unsqueeze(1).to(W.device))
        errors[edit.id] = float(err[0])
    return errors
