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
    W64, K, V = W.double(), keys.double(), values.double()
    b64 = None if b is None else b.double()
    return residual_delta(V - _affine(W64, b64, K), K, torch.linalg.solve(C.double(), K), ridge)


def residual_delta(
    residual: torch.Tensor, keys: torch.Tensor, metric_keys: torch.Tensor, ridge: float = 1e-6
) -> torch.Tensor:
    """dW (out, in) with dW K = R for keys K (in, n) and wanted changes R (out, n), of least norm
    in the metric M given as M K (in, n): dW = R (K^T M K + lam I)^-1 (M K)^T, lam = ridge * mean
    diagonal of K^T M K. M = C^-1 is ROME's (disturb little what C's keys see); M = P, the
    projector onto C's null space, is AlphaEdit's (rows of dW only where C's keys have no energy)."""
    K, MK = keys.double(), metric_keys.double()
    gram = K.T @ MK  # (n, n), symmetric positive (semi)definite
    lam = ridge * gram.diagonal().mean()
    gram = gram + lam * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    return residual.double() @ torch.linalg.solve(gram, MK.T)  # (out, n) @ (n, in)


def soft_delta(
    W: torch.Tensor,
    b: torch.Tensor | None,
    keys: torch.Tensor,
    values: torch.Tensor,
    C: torch.Tensor,
    weight: float,
    alpha: float = 0.0,
) -> torch.Tensor:
    """MEMIT's soft solve (with ENCORE's alpha I): no constraint is held exactly.

    dW = R K^T (A + K K^T)^-1 with R = V - W K - b, A = WEIGHT (C + ALPHA mean(diag C) I):
    least squares over the edits' keys plus WEIGHT tokens of preserved text, so a key of the
    corpus moves little and a crowded layer gives each edit less than all it asks. C is the
    per-token mean E[k k^T], so WEIGHT counts tokens (MEMIT: 15,000 on GPT-J). Computed in the
    n x n form dW = R (I + K^T A^-1 K)^-1 (A^-1 K)^T (Woodbury; n edits, keys (in, n)) up to
    in/3 edits, directly past them (soft_residual_delta)."""
    W64, K, V = W.double(), keys.double(), values.double()
    b64 = None if b is None else b.double()
    return soft_residual_delta(V - _affine(W64, b64, K), K, C, weight, alpha)


def soft_regulariser(C: torch.Tensor, weight: float, alpha: float = 0.0) -> torch.Tensor:
    """A = weight (C + alpha mean(diag C) I) (in, in) float64: what a soft solve holds each update to."""
    C64 = C.double()
    return weight * (C64 + alpha * C64.diagonal().mean() * torch.eye(C64.shape[0], dtype=C64.dtype, device=C64.device))


def soft_residual_delta(
    residual: torch.Tensor, keys: torch.Tensor, C: torch.Tensor, weight: float, alpha: float = 0.0
) -> torch.Tensor:
    """soft_delta for wanted changes R (out, n) at keys K (in, n): dW = R K^T (A + K K^T)^-1,
    in the n x n (Woodbury) form up to in/3 edits and in the (in, in) form past them, whose
    cost does not grow with n (bench/band_registration.py)."""
    K = keys.double()
    A = soft_regulariser(C.to(K.device), weight, alpha)
    R = residual.double().to(K.device)
    return soft_solve_wide(R, K, A) if 3 * K.shape[1] >= K.shape[0] else soft_solve_narrow(R, K, A)


def soft_solve_narrow(R: torch.Tensor, K: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """R (I + K^T A^-1 K)^-1 (A^-1 K)^T: solves of size (in, in) once and (n, n)."""
    AK = torch.linalg.solve(A, K)  # (in, n)
    gram = K.T @ AK + torch.eye(K.shape[1], dtype=K.dtype, device=K.device)  # (n, n)
    return R @ torch.linalg.solve(gram, AK.T)


def soft_solve_wide(R: torch.Tensor, K: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """R K^T (A + K K^T)^-1 directly: one (in, in) solve, whatever n."""
    return torch.linalg.solve(A + K @ K.T, K @ R.T).T  # (out, in); A + K K^T is symmetric


def null_space(C: torch.Tensor, rel_threshold: float) -> torch.Tensor:
    """(in, r) orthonormal basis of the eigenvectors of C whose eigenvalue is at most
    REL_THRESHOLD x the largest: directions the preserved keys (C's corpus) barely use."""
    vals, vecs = torch.linalg.eigh(C.double().cpu())  # ascending; on the CPU in float64 whatever the model's device
    return vecs[:, vals <= rel_threshold * vals[-1]]


def null_space_delta(
    W: torch.Tensor,
    b: torch.Tensor | None,
    keys: torch.Tensor,
    values: torch.Tensor,
    basis: torch.Tensor,
    ridge: float = 1e-6,
) -> torch.Tensor:
    """joint_delta with C^-1 replaced by P = U U^T for the null-space basis U (in, r): the update
    is zero on C's principal directions, so preserved keys keep their outputs; all constraints
    hold only if the keys' projections P k are independent (at most r edits)."""
    W64, K, V = W.double(), keys.double(), values.double()
    b64 = None if b is None else b.double()
    U = basis.to(K.device, torch.float64)
    return residual_delta(V - _affine(W64, b64, K), K, U @ (U.T @ K), ridge)


def soft_null_space_delta(
    W: torch.Tensor,
    b: torch.Tensor | None,
    keys: torch.Tensor,
    values: torch.Tensor,
    basis: torch.Tensor,
    l2: float,
) -> torch.Tensor:
    """AlphaEdit's soft form: ridge least squares on the keys projected onto C's null space.

    dW = R (Kp^T Kp + lam I)^-1 Kp^T with Kp = U U^T K (U: null-space basis (in, r)), R = V - W K - b,
    lam = L2 x mean ||Kp_i||^2. The rows of dW lie in the null space, so a key of C's corpus (in
    its principal directions) keeps its output whatever the log; each edit gets dW k = dW Kp_i,
    short of its residual when the layer is crowded (no constraint held exactly, no limit of r
    edits). n x n solve (n edits)."""
    W64, K, V = W.double(), keys.double(), values.double()
    b64 = None if b is None else b.double()
    U = basis.to(K.device, torch.float64)
    Kp = U @ (U.T @ K)  # (in, n)
    gram = Kp.T @ Kp  # (n, n)
    lam = l2 * gram.diagonal().mean()
    gram = gram + lam * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    return torch.linalg.solve(gram, (V - _affine(W64, b64, K)).T).T @ Kp.T  # (out, n) @ (n, in)


def constraint_error(W: torch.Tensor, b: torch.Tensor | None, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """(n,) relative error ||W k + b - v|| / ||v|| for keys (in, n) and values (out, n)."""
    K, V = keys.double(), values.double()
    got = _affine(W.double(), None if b is None else b.double(), K)
    return (got - V).norm(dim=0) / V.norm(dim=0)
