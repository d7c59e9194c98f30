"""The closed forms and the weight orientation, on random matrices and tiny random models."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from factstore import arch
from factstore.rome.edit import apply_edit
from factstore.rome.update import constraint_error, joint_delta, rank_one_delta
from tiny_models import random_gpt2, random_llama


def _spd(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, 4 * n, generator=g, dtype=torch.float64)
    return A @ A.T / (4 * n)


def test_rank_one_maps_key_to_value_and_spares_c_orthogonal_keys() -> None:
    g = torch.Generator().manual_seed(0)
    W, b = torch.randn(24, 40, generator=g, dtype=torch.float64), torch.randn(24, generator=g, dtype=torch.float64)
    k, v, C = (
        torch.randn(40, generator=g, dtype=torch.float64),
        torch.randn(24, generator=g, dtype=torch.float64),
        _spd(40, 1),
    )
    W2 = W + rank_one_delta(W, b, k, v, C)
    assert float(constraint_error(W2, b, k[:, None], v[:, None])[0]) <= 1e-10
    u = torch.linalg.solve(C, k)
    r = torch.randn(40, generator=g, dtype=torch.float64)
    x = r - (u @ r) / (u @ u) * u  # x^T C^-1 k = 0
    assert torch.allclose(W2 @ x, W @ x, atol=1e-10)


def test_joint_solves_every_constraint_and_ignores_order() -> None:
    g = torch.Generator().manual_seed(0)
    W, b = torch.randn(24, 64, generator=g, dtype=torch.float64), None
    K, V, C = (
        torch.randn(64, 10, generator=g, dtype=torch.float64),
        torch.randn(24, 10, generator=g, dtype=torch.float64),
        _spd(64, 2),
    )
    dW = joint_delta(W, b, K, V, C, ridge=1e-9)
    assert constraint_error(W + dW, b, K, V).max() <= 1e-6
    perm = torch.randperm(10, generator=g)
    assert torch.allclose(joint_delta(W, b, K[:, perm], V[:, perm], C, ridge=1e-9), dW, atol=1e-9)


def _check_module_maps(model: torch.nn.Module, layer: int, seed: int) -> None:
    module = arch.down_proj(model, layer)
    W = arch.down_proj_weight(model, layer)
    d_out, d_in = W.shape
    g = torch.Generator().manual_seed(seed)
    k, v = torch.randn(d_in, generator=g), torch.randn(d_out, generator=g)
    apply_edit(model, layer, k, v, torch.eye(d_in))  # C = I: C^-1-orthogonal means plainly orthogonal
    with torch.no_grad():
        got = module(k)  # the module's own forward: right only if the orientation is right
    assert float((got - v).norm() / v.norm()) <= 1e-4


@pytest.mark.parametrize("make", [random_gpt2, random_llama], ids=["gpt2-conv1d", "llama-linear"])
def test_edit_is_exact_through_the_module_forward(make) -> None:  # type: ignore[no-untyped-def]
    model = make(seed=3)
    _check_module_maps(model, layer=1, seed=4)


def test_orientation_on_a_square_conv1d() -> None:
    """A square Conv1D (n_inner == n_embd) cannot be told apart by shape: orientation must be declared."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(n_layer=2, n_embd=32, n_inner=32, n_head=4, vocab_size=100, n_positions=32)
    ).eval()
    assert tuple(arch.down_proj(model, 0).weight.shape) == (32, 32)
    _check_module_maps(model, layer=0, seed=5)


def test_c_orthogonal_inputs_are_unchanged_in_the_model() -> None:
    model = random_llama(seed=1)
    module = arch.down_proj(model, 2)
    d_in = arch.down_proj_weight(model, 2).shape[1]
    g = torch.Generator().manual_seed(2)
    C = _spd(d_in, 3).float()
    k, v, r = torch.randn(d_in, generator=g), torch.randn(64, generator=g), torch.randn(d_in, generator=g)
    u = torch.linalg.solve(C.double(), k.double()).float()
    x = r - (u @ r) / (u @ u) * u
    before = module(x).detach()
    apply_edit(model, 2, k, v, C)
    assert torch.allclose(module(x).detach(), before, atol=1e-4)
    assert float((module(k).detach() - v).norm() / v.norm()) <= 1e-4


@pytest.mark.parametrize("n", [6, 30])  # the n x n (Woodbury) form, and the (in, in) one past in/3 edits
def test_soft_solve_is_memits_least_squares_and_trades_fit_for_preservation(n: int) -> None:
    from factstore.rome.update import soft_delta

    g = torch.Generator().manual_seed(3)
    d_in, d_out = 40, 24
    W, b = (
        torch.randn(d_out, d_in, generator=g, dtype=torch.float64),
        torch.randn(d_out, generator=g, dtype=torch.float64),
    )
    K, V, C = (
        torch.randn(d_in, n, generator=g, dtype=torch.float64),
        torch.randn(d_out, n, generator=g, dtype=torch.float64),
        _spd(d_in, 4),
    )
    weight, alpha = 7.0, 0.3
    A = weight * (C + alpha * C.diagonal().mean() * torch.eye(d_in, dtype=torch.float64))
    R = V - (W @ K + b[:, None])
    direct = R @ K.T @ torch.linalg.inv(A + K @ K.T)  # MEMIT's form, (out, in)
    assert torch.allclose(soft_delta(W, b, K, V, C, weight, alpha), direct, atol=1e-10)
    # a heavier weight on preserved text: edits held less, C's keys moved less
    errors, moved = [], []
    probe = torch.linalg.cholesky(C)  # columns with C's second moment: keys of "ordinary text"
    for w in (1e-6, 1.0, 100.0):
        dW = soft_delta(W, b, K, V, C, w)
        errors.append(float(constraint_error(W + dW, b, K, V).max()))
        moved.append(float((dW @ probe).norm()))
    assert errors[1] < errors[2] and moved[0] > moved[1] > moved[2]
    if 3 * n < d_in:  # a vanishing weight is the exact joint solve (the (in, in) form is then ill-conditioned)
        assert errors[0] <= 1e-6 < errors[1]
        exact = joint_delta(W, b, K, V, C, ridge=0.0)
        assert torch.allclose(soft_delta(W, b, K, V, C, 1e-9), exact, atol=1e-5)


def test_soft_null_space_solve_is_ridge_least_squares_inside_the_null_space() -> None:
    from factstore.rome.update import null_space, soft_null_space_delta

    g = torch.Generator().manual_seed(4)
    d_in, d_out, n = 40, 24, 6
    W, b = (
        torch.randn(d_out, d_in, generator=g, dtype=torch.float64),
        torch.randn(d_out, generator=g, dtype=torch.float64),
    )
    K, V = (
        torch.randn(d_in, n, generator=g, dtype=torch.float64),
        torch.randn(d_out, n, generator=g, dtype=torch.float64),
    )
    # C with a clear principal subspace of 25 directions and 15 it barely uses
    Q = torch.linalg.qr(torch.randn(d_in, d_in, generator=g, dtype=torch.float64))[0]
    C = Q @ torch.diag(torch.cat([torch.full((25,), 10.0), torch.full((15,), 1e-3)]).double()) @ Q.T
    U = null_space(C, 1e-2)
    assert U.shape[1] == 15
    Kp = U @ U.T @ K
    R = V - (W @ K + b[:, None])
    l2 = 0.5
    lam = l2 * (Kp.T @ Kp).diagonal().mean()
    direct = R @ Kp.T @ torch.linalg.inv(Kp @ Kp.T + lam * torch.eye(d_in, dtype=torch.float64))  # primal ridge form
    dW = soft_null_space_delta(W, b, K, V, U, l2)
    assert torch.allclose(dW, direct, atol=1e-9)
    principal = Q[:, :25]  # C's own keys keep their outputs exactly, whatever the log
    assert float((dW @ principal).abs().max()) <= 1e-9
    # a smaller ridge holds the edits closer (all six fit: 6 <= 15 null-space dimensions)
    errors = [
        float(constraint_error(W + soft_null_space_delta(W, b, K, V, U, x), b, K, V).max()) for x in (1e-8, 0.1, 1.0)
    ]
    assert errors[0] <= 1e-5 < errors[1] < errors[2]
