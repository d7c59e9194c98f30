"""Starter assets and exact model identity."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from factstore import arch
from factstore.errors import AssetError, HubUnreachable, IdentityMismatch, ModelSourceNotFound, UnknownArchitecture
from factstore.rome.covariance import accumulate_second_moment
from factstore.weights import assets, checkpoints, corpus, stats
from tiny_models import random_gpt2


def test_gpt2_tokenizer_matches_the_real_bpe(gpt2_tokenizer) -> None:  # type: ignore[no-untyped-def]
    assert gpt2_tokenizer("Hello world")["input_ids"] == [15496, 995]
    assert gpt2_tokenizer(" Paris")["input_ids"] == [6342]
    assert len(gpt2_tokenizer) == 50257
    text = "Ünïcödé, emoji 😀 and   spaces\nnew line"
    assert gpt2_tokenizer.decode(gpt2_tokenizer(text)["input_ids"]) == text


def test_bpe_merges_are_recovered_from_ranks(tmp_path: Path) -> None:
    ranks = {bytes([b]): b for b in range(256)}
    ranks.update({b"ab": 256, b"abc": 257, b"bc": 258})
    assets.write_gpt2_bpe(ranks, tmp_path)
    merges = (tmp_path / "merges.txt").read_text().splitlines()[1:]
    assert merges == ["a b", "ab c", "b c"]


def test_unknown_starter_lists_the_available_ones() -> None:
    with pytest.raises(
        AssetError, match="unknown starter asset 'starter:nope'; available: starter:smollm2-135m, starter:gemma3-270m"
    ):
        assets.starter("starter:nope")


def _save_model(folder: Path) -> None:
    model = random_gpt2(seed=0, vocab=100)
    model.save_pretrained(folder)


def test_a_local_folder_is_pinned_by_the_sha256_of_its_weights(tmp_path: Path) -> None:
    _save_model(tmp_path / "m")
    first = checkpoints.resolve(str(tmp_path / "m"))
    assert first.revision.startswith("sha256:") and first.model_type == "gpt2"
    assert checkpoints.resolve(str(tmp_path / "m")).revision == first.revision
    weights = tmp_path / "m" / "model.safetensors"
    tensors = load_file(weights)
    tensors["transformer.h.0.mlp.c_proj.weight"] += 1.0
    save_file(tensors, weights, metadata={"format": "pt"})
    assert checkpoints.resolve(str(tmp_path / "m")).revision != first.revision
    with pytest.raises(IdentityMismatch, match="new alias"):
        checkpoints.load(str(tmp_path / "m"), expected=first.revision)


def test_missing_sources_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelSourceNotFound, match="does not exist"):
        checkpoints.resolve(str(tmp_path / "nowhere"))
    with pytest.raises(HubUnreachable, match="cannot reach the Hub"):
        checkpoints.resolve("no-such-org/no-such-model")  # HF_HUB_OFFLINE in tests: cannot reach the Hub


def test_unknown_architecture_is_named() -> None:
    with pytest.raises(
        UnknownArchitecture,
        match=r"supported model types: bloom, codegen, cohere, .*, gpt2, .*, llama, .*, starcoder2$",
    ):
        arch.spec_for("bert")


def test_statistics_resume_after_an_interruption(
    gpt2_tokenizer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("FACTSTORE_CACHE", str(tmp_path / "cache"))
    model = random_gpt2(seed=0)
    texts = [f"Sentence number {i} talks about the city of Paris and the river." for i in range(64)]
    state = accumulate_second_moment(model, gpt2_tokenizer, texts, 1, 700)
    whole = state.moment(1)

    text = corpus.Corpus("test", "c" * 64, texts)
    spec = stats.StatsSpec("sha256:test", 1, arch.down_proj_name(model, 1), text.sha256, 700, "float64")
    monkeypatch.setattr(stats, "CHECKPOINT_SECONDS", 0.0)
    calls = {"n": 0}

    def crash_on_third(_mod: object, _args: object) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt

    handle = model.transformer.wte.register_forward_pre_hook(crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        stats.compute(model, gpt2_tokenizer, spec, text)
    handle.remove()
    assert stats.cached(spec) is None  # nothing final was written
    resumed = stats.compute(model, gpt2_tokenizer, spec, text)
    assert resumed.tokens == 700
    assert torch.allclose(stats.load_matrix(resumed.path, resumed.sha256), whole, rtol=0, atol=1e-12)
    names = stats.load_names(resumed.path, resumed.sha256)  # the checkpoint kept the names' sums too
    assert state.names == 50 and names is not None  # one "Paris" per text, the texts the budget reaches
    assert torch.allclose(names, state.name_totals[1] / state.names, rtol=0, atol=1e-12)
