"""A block's MLP output as the residual stream sees it: band shares through post-MLP norms."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from factstore import arch
from factstore.domain import EditRequest
from factstore.editing.session import EditSession
from factstore.rome.keys import subject_states
from factstore.weights import band, replay
from factstore.weights.join import Join, join_of, nearest_direction
from tiny_models import random_decoder, register_random


def _heavy_gains(model: torch.nn.Module) -> None:
    """Post-MLP gains spread tens of times apart, as Gemma 3 270M's are (rms 7-36, a quarter
    of them under a tenth of that)."""
    gen = torch.Generator().manual_seed(0)
    for block in arch.blocks(model):  # type: ignore[arg-type]
        norm = block.post_feedforward_layernorm
        gain = 5.0 * torch.exp(1.5 * torch.randn(norm.weight.shape, generator=gen))
        norm.weight.data.copy_(gain - 1.0)  # Gemma's RMSNorm multiplies by 1 + weight


def test_a_plain_join_passes_a_share_through_unchanged() -> None:
    share = torch.randn(3, 8, dtype=torch.float64)
    assert Join().plain and Join().change(torch.randn(3, 8), share) is share
    assert Join().shift(torch.randn(3, 8), share) is share


def test_nearest_direction_is_exact_when_reachable_and_nearest_otherwise() -> None:
    torch.manual_seed(0)
    g = torch.exp(2 * torch.randn(16, dtype=torch.float64))
    v0 = torch.randn(4, 16, dtype=torch.float64)
    v0 = v0 / v0.pow(2).mean(1, keepdim=True).sqrt()
    assert torch.allclose(nearest_direction(g * v0, g), v0, atol=1e-9)
    r = g * v0 + 3.0 * torch.randn(4, 16, dtype=torch.float64)  # off the reachable set
    v = nearest_direction(r, g)
    assert bool((v.pow(2).mean(1) <= 1 + 1e-9).all())
    others = torch.randn(2000, 16, dtype=torch.float64)
    others = others / others.pow(2).mean(1, keepdim=True).sqrt()
    for i in range(4):
        best = (g * others - r[i]).norm(dim=1).min()
        assert (g * v[i] - r[i]).norm() <= best


def test_a_share_through_a_post_mlp_norm_reaches_the_residual_stream() -> None:
    model = random_decoder("gemma3_text", seed=0)
    _heavy_gains(model)
    join = join_of(model, 1)
    assert not join.plain and join.gain is not None
    norm = arch.blocks(model)[1].post_feedforward_layernorm
    m = torch.randn(5, join.gain.shape[0], dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(join.residual(m), norm(m.float()).double(), rtol=1e-4, atol=1e-4)
    # a share as the stream sees one: what some change of the output (a tenth of it) adds
    share = join.shift(m, 0.1 * m.norm(dim=1, keepdim=True) * torch.nn.functional.normalize(torch.randn_like(m), dim=1))
    reached = join.residual(m + join.change(m, share)) - join.residual(m)
    assert float((reached - share).norm() / share.norm()) < 1e-6
    written_as_it_is = join.residual(m + share) - join.residual(m)
    assert float((written_as_it_is - share).norm() / share.norm()) > 0.5


def test_granite_s_residual_multiplier_divides_a_share() -> None:
    model = random_decoder("granite", seed=0)
    model.config.residual_multiplier = 0.25
    join = join_of(model, 0)
    share = torch.randn(2, 64, dtype=torch.float64)
    assert join.scale == 0.25 and join.gain is None
    assert torch.allclose(join.change(torch.randn(2, 64), share), share / 0.25)


@pytest.fixture
def gemma_store(db_url: str, gpt2_tokenizer, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A random Gemma 3 (heavy post-MLP gains) registered with key statistics for layers 0-2."""
    model = random_decoder("gemma3_text", seed=1)
    _heavy_gains(model)
    return register_random(db_url, model, gpt2_tokenizer, tmp_path, "g", layer=2)


def test_a_band_edit_behind_a_post_mlp_norm_moves_its_layer_s_output_by_its_shift(gemma_store) -> None:  # type: ignore[no-untyped-def]
    """Each layer's share is written as the change of its MLP output that the norm turns into
    that share: with solves that deliver what they are asked (a tiny weight), the head's residual
    stream at the edit layer moves by the edit's shift. Written as they are, the shares moved it
    5.5 times too far, at cosine 0.28."""
    from dataclasses import replace

    session = EditSession(gemma_store, "g", device="cpu", band=3)
    session.settings.defaults = replace(session.settings.defaults, band_weight=0.01)
    request = EditRequest("{} is located in the city of", "The Eiffel Tower", "Rome")
    edit = gemma_store.get_edit(session.add(request, layer=2).edit.id)
    sets = [band.key_prompts(request, session.templates(session.hparams(2)).key, 0)]
    head = subject_states(session.model, session.tokenizer, sets, 2, 2)[1][0].double()
    with session.base_weights():
        base = subject_states(session.model, session.tokenizer, sets, 2, 2)[1][0].double()
        W = arch.down_proj_weight(session.model, 2).double()
        k, v = (t.double() for t in replay.edit_vectors(edit))
        want = join_of(session.model, 2).shift((W @ k)[None], (v - W @ k)[None])[0]
    moved = head - base
    assert float(moved @ want / (moved.norm() * want.norm())) > 0.99
    assert abs(float(moved @ want / (want @ want)) - 1.0) < 0.05


@pytest.mark.parametrize("family", sorted(arch.ARCHITECTURES))
def test_every_family_s_join_matches_what_its_blocks_do_with_the_mlp_output(family: str) -> None:
    """The registry's post-MLP norm (and Granite's multiplier) against each family's own forward."""
    import inspect

    with torch.device("meta"):  # no weights needed: the modules and the config
        model = random_decoder(family, seed=0)
    source = inspect.getsource(type(arch.blocks(model)[0]).forward)
    scale, norm = arch.mlp_join(model, 0)
    assert (norm is not None) == any(name in source for name in ("post_feedforward_layernorm", "post_mlp_layernorm"))
    assert (scale != 1.0) == ("residual_multiplier" in source and model.config.residual_multiplier != 1.0)
