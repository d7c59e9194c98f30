"""Closed-form weight updates for the down-projection (pure float64 math on (out, in) matrices)."""

from __future__ import annotations

import torch


def _affine(W: torch.Tensor, b: torch.Tensor | None, K: torch.Tensor) -> torch.Tensor:
    """W K + b for keys as columns: (out, in) @ (in, n) -> (out, n)."""
    out = W @ K
    return out if b is None else out + b.unsqueeze(1)


def rank_one_delta(
    W: torch.Tensor,
    b: torch.Tensor | None,
    key: torch.Tensor,
    value: torch.Tensor,
    C: torch.Tensor,
) -> torch.Tensor:
    """ROME's update: dW = (v* - W k* - b) (C^-1 k*)^T / ((C^-1 k*)^T k*), shape (out, in).

    The same k* is used in numerator and denominator, so (W + dW) k* + b = v* exactly.
    """
    return rank_one_delta_given(W, b, key, value, torch.linalg.solve(C.double(), key.double()))


def rank_one_delta_given(
    W: torch.Tensor,
    b: torch.Tensor | None,
    key: torch.Tensor,
    value: torch.Tensor,
    u: torch.Tensor,
) -> torch.Tensor:
    """rank_one_delta with u = C^-1 k* (in,) already solved: a replay of many edits of one
    layer solves for all their keys at once."""
    W64, k, v, u = W.double(), key.double(), value.double(), u.double()
    b64 = None if b is None else b.double()
    residual = v - _affine(W64, b64, k.unsqueeze(1)).squeeze(1)  # (out,)
    return torch.outer(residual, u) / (u @ k)


def joint_delta(
    W: torch.Tensor,
    b: torch.Tensor | None,
    keys: torch.Tensor,
    values: torch.Tensor,
    C: torch.Tensor,
    ridge: float = 1e-6,
) -> torch.Tensor:
    """All constraints of one layer at once: dW = (V - W K - b)(K^T C^-1 K + lam I)^-1 K^T C^-1.

    keys (in, n) and values (out, n) as columns. lam = ridge * mean diagonal of K^T C^-1 K,
    so the regulariser is scale-free; order of the columns does not matter.
    """
    W64, K, V, C64 = W.double(), keys.double(), values.double(), C.double()
    b64 = None if b is None else b.double()
    CinvK = torch.linalg.solve(C64, K)  # (in, n)
    gram = K.T @ CinvK  # (n, n), symmetric positive definite
    lam = ridge * gram.diagonal().mean()
    gram = gram + lam * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    residual = V - _affine(W64, b64, K)  # (out, n)
    return residual @ torch.linalg.solve(gram, CinvK.T)  # (out, n) @ (n, in)


def constraint_error(W: torch.Tensor, b: torch.Tensor | None, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """(n,) relative error ||W k + b - v|| / ||v|| for keys (in, n) and values (out, n)."""
    K, V = keys.double(), values.double()
    got = _affine(W.double(), None if b is None else b.double(), K)
    return (got - V).norm(dim=0) / V.norm(dim=0)
