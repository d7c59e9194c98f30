"""Every supported decoder family on a tiny random model of its own config: the parts ROME
touches are found, the update lands in the right orientation, running only the blocks above
the edit equals the whole model, and an edited model saves and loads with from_pretrained."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.pytorch_utils import Conv1D

from factstore import api, arch
from factstore.domain import EditRequest
from factstore.errors import UnknownArchitecture
from factstore.rome import hooks
from factstore.rome.edit import apply_edit, compute_edit
from factstore.rome.hooks import BlockStates
from factstore.rome.hparams import ROMEHyperParams
from factstore.rome.keys import subject_states
from factstore.rome.stack import recording
from factstore.rome.values import compute_value
from tiny_models import random_decoder, register_random

FAMILIES = sorted(arch.ARCHITECTURES)
REQUEST = EditRequest("{} is located in the city of", "The Eiffel Tower", "Rome")
HP = ROMEHyperParams(layer=1, steps=3, context_lengths=((3, 2),), value_context_lengths=((3, 1),))
NOT_SQUARE = {"bloom"}  # its MLP is always 4x the model width


@pytest.mark.parametrize("family", FAMILIES)
def test_the_update_holds_in_every_family(
    family: str, gpt2_tokenizer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    model = random_decoder(family, seed=0, square=family not in NOT_SQUARE)
    spec = arch.model_spec(model)
    module = arch.down_proj(model, 1)
    assert isinstance(module, (torch.nn.Linear, Conv1D)) and spec.fan_in_fan_out == isinstance(module, Conv1D)
    for part in (spec.mlp, spec.attn):
        assert isinstance(arch.get_module(model, arch.layer_path(model, 1, part)), torch.nn.Module)

    # the head at chosen positions gives the model's own logits (scaled, soft-capped as it does);
    # the truncated forward the v* optimisation uses equals the whole model, padding included
    ids = torch.randint(0, 50000, (2, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    rows, positions = torch.tensor([0, 1, 0]), torch.tensor([11, 8, 3])
    with torch.no_grad(), recording(model, 1) as stack:
        whole = arch.logits_at(model, ids, mask, rows, positions)
        assert torch.allclose(whole, model(input_ids=ids, attention_mask=mask).logits[rows, positions], atol=1e-5)
        model(input_ids=ids, attention_mask=mask, use_cache=False)
        upper = stack.logits_at(rows, positions)
    assert torch.allclose(whole, upper, atol=1e-5, rtol=0)

    # the v* optimisation gives the same value whatever part of the model its steps run, and the
    # suffix loop really runs (a fall back to upper is logged: transformers renamed the cache once)
    whole = compute_value(model, gpt2_tokenizer, REQUEST, ["{}", "A short prefix. {}"], HP, loop="whole")
    caplog.set_level(logging.INFO, logger="factstore.rome.values")
    for loop in ("upper", "suffix"):
        assert torch.allclose(
            compute_value(model, gpt2_tokenizer, REQUEST, ["{}", "A short prefix. {}"], HP, loop=loop).value,
            whole.value,
            atol=1e-4,
        )
    assert not [r.getMessage() for r in caplog.records if "suffix loop" in r.getMessage()]

    d_ff = arch.down_proj_weight(model, 1).shape[1]
    C = torch.eye(d_ff) + 0.1 * torch.ones(d_ff, d_ff)
    result = compute_edit(model, gpt2_tokenizer, REQUEST, HP, C)
    _check_resumed_passes(model, gpt2_tokenizer, lambda: apply_edit(model, 1, result.key, result.value, C))
    with torch.no_grad():  # the module's own forward: a transposed update of a square matrix fits, but misses
        out = module(result.key.unsqueeze(0)).squeeze(0)
    assert torch.allclose(out, result.value, rtol=1e-4, atol=1e-4)

    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert torch.equal(arch.down_proj_weight(reloaded, 1), arch.down_proj_weight(model, 1))
    if model.config.tie_word_embeddings:
        assert reloaded.get_output_embeddings().weight.data_ptr() == reloaded.get_input_embeddings().weight.data_ptr()
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5)


def _check_resumed_passes(model, tokenizer, change_block_1) -> None:  # type: ignore[no-untyped-def]
    """A band measurement's pass resumed from kept block outputs (block 0 skipped) gives the bytes
    of a whole pass after block 1 changed; the model class is not the kind that falls back."""
    prompts = [[("{} is located in", "The Eiffel Tower"), ("A short prefix. {} is in", "The Eiffel Tower")]] * 3
    states = BlockStates()
    subject_states(model, tokenizer, prompts, 1, 2, batch_size=4, states=states)  # keeps block 0's output
    change_block_1()
    states.changed(1)
    resumed = subject_states(model, tokenizer, prompts, 2, 2, batch_size=4, states=states)
    whole = subject_states(model, tokenizer, prompts, 2, 2, batch_size=4)
    assert torch.equal(resumed[0], whole[0]) and torch.equal(resumed[1], whole[1])
    assert hooks._CHECKED.get(type(model)) is True  # the first resumed pass matched its whole pass


@pytest.mark.parametrize("family", ["gpt_bigcode", "opt", "falcon", "gemma2", "phi3", "qwen3"])
def test_a_compiled_release_of_every_layout_loads(family: str, db_url: str, gpt2_tokenizer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The whole path (register, statistics, edit, compile) on families with different module
    names, tied or untied heads and their own attention (ALiBi/rotary, sliding windows, soft-capping)."""
    store = register_random(db_url, random_decoder(family, seed=1), gpt2_tokenizer, tmp_path, "m", layer=1)
    outcome = api.add_edit(
        store,
        "m",
        api.EditRequest(REQUEST.prompt, REQUEST.subject, REQUEST.target_new),
        api.EditOptions(layer=1),
        device="cpu",
    )
    release, _ = api.compile_release(store, "m", device="cpu")
    loaded = AutoModelForCausalLM.from_pretrained(release.path).eval()
    edit = outcome.edit
    from factstore.weights.replay import constraint_errors

    assert constraint_errors(loaded, [edit])[edit.id] < 1e-3


def test_a_family_without_a_single_mlp_matrix_is_refused_by_name() -> None:
    model = random_decoder("qwen3_moe", seed=0)
    with pytest.raises(
        UnknownArchitecture, match=r"'qwen3_moe' is not supported; supported model types: .*falcon.*gpt2.*qwen3"
    ):
        arch.model_spec(model)
