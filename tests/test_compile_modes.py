"""The spread (MEMIT) and null-space (AlphaEdit) compile modes: what each promises, checked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from factstore import api, arch
from factstore.domain import EditRequest
from factstore.editing.session import EditSession
from factstore.errors import CompileError, ReleaseVerificationError
from factstore.release import layout
from factstore.release.lineage import import_release
from factstore.rome.update import null_space
from factstore.weights import replay, spread
from factstore.weights.stats import MatrixCache
from tiny_models import random_gpt2

# the modes are math over the store; the store itself is tested on both databases elsewhere
pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
SUBJECTS = ["The Eiffel Tower", "The Louvre", "Big Ben", "The Colosseum"]


@pytest.fixture
def edited(tiny_store, tmp_path: Path):  # type: ignore[no-untyped-def]
    """The tiny random GPT-2 (3 layers) with four active edits of its default layer."""
    session = EditSession(tiny_store, "tiny", device="cpu")
    for subject, target in zip(SUBJECTS, ["Rome", "Berlin", "Paris", "Oslo"]):
        session.add(EditRequest("{} is located in the city of", subject, target))
    return tiny_store, session


def _delta(path: str, layer: int) -> torch.Tensor:
    """(out, in) change of a layer's down-projection in a release against the base model."""
    edited = arch.down_proj_weight(AutoModelForCausalLM.from_pretrained(path), layer).double()
    return edited - arch.down_proj_weight(random_gpt2(seed=0), layer).double()


def test_null_space_compile_holds_every_edit_and_leaves_cs_principal_keys_alone(edited) -> None:  # type: ignore[no-untyped-def]
    store, _ = edited
    edits = store.list_edits(1)
    layer = edits[0].layer
    release, _ = api.compile_release(store, "tiny", "null-space")
    model = AutoModelForCausalLM.from_pretrained(release.path)
    assert max(replay.constraint_errors(model, edits).values()) <= 1e-3  # every constraint, at once
    C = MatrixCache(store.get_covariance)(edits[0].covariance_id).double()
    vals, vecs = torch.linalg.eigh(C)
    principal = vecs[:, vals > replay.NULL_SPACE_THRESHOLD * vals[-1]]  # what the corpus' keys use
    assert principal.shape[1] >= 5
    ns, joint = _delta(release.path, layer), _delta(api.compile_release(store, "tiny", "joint")[0].path, layer)
    leak_ns, leak_joint = float((ns @ principal).norm() / ns.norm()), float((joint @ principal).norm() / joint.norm())
    assert leak_ns <= 1e-6 and leak_joint > 10 * leak_ns  # AlphaEdit's promise, to float32 rounding of the weights
    manifest = json.loads((Path(release.path) / layout.MANIFEST).read_text())
    assert manifest["mode"] == "null-space" and manifest["null_space_threshold"] == replay.NULL_SPACE_THRESHOLD


def test_null_space_compile_refuses_more_edits_than_the_null_space_holds(
    edited, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    store, _ = edited
    C = MatrixCache(store.get_covariance)(store.list_edits(1)[0].covariance_id)
    vals = torch.linalg.eigvalsh(C.double())
    monkeypatch.setattr(
        replay, "NULL_SPACE_THRESHOLD", float((vals[2] + vals[3]) / 2 / vals[-1])
    )  # a null space of 3 dimensions for 4 edits
    assert null_space(C, replay.NULL_SPACE_THRESHOLD).shape[1] == 3
    with pytest.raises(CompileError, match="4 edits but C's null space only 3 dimensions"):
        api.compile_release(store, "tiny", "null-space")
    assert store.list_releases(1) == []


def test_spread_compile_needs_c_below_then_spreads_meets_targets_and_is_deterministic(edited, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store, _ = edited
    edits = store.list_edits(1)
    top = edits[0].layer
    layers = spread.spread_layers(top)
    assert layers[-1] == top and len(layers) == min(top + 1, spread.SPREAD_LAYERS) and len(layers) >= 2
    with pytest.raises(
        CompileError,
        match=rf"key statistics of layer {layers[0]}: run `factstore stats compute --model tiny --layer {layers[0]} --tokens 2000 --corpus ",
    ):
        api.compile_release(store, "tiny", "spread")
    corpus = store.get_covariance(edits[0].covariance_id).corpus
    for layer in layers[:-1]:
        api.compute_stats(store, "tiny", layer=layer, corpus=corpus, tokens=2000, device="cpu")
    first, _ = api.compile_release(store, "tiny", "spread")
    second, _ = api.compile_release(store, "tiny", "spread", out=str(tmp_path / "again"))
    assert layout.file_hashes(Path(first.path)) == {**layout.file_hashes(Path(second.path))}  # byte-identical rebuild
    sizes = [float(_delta(first.path, layer).norm()) for layer in layers]
    assert all(s > 0 for s in sizes)  # every layer of the range carries part of the edits
    joint = float(_delta(api.compile_release(store, "tiny", "joint")[0].path, top).norm())
    assert sizes[-1] < joint  # the edit layer carries less than it does alone
    manifest = json.loads((Path(first.path) / layout.MANIFEST).read_text())
    assert manifest["spread_layers"] == spread.SPREAD_LAYERS and manifest["spread_lower_ridge"] == spread.LOWER_RIDGE
    with pytest.raises(ReleaseVerificationError, match="spread-mode release cannot be rebuilt"):
        import_release(store, Path(first.path), "copy")
    store.set_edit_retracted(edits[0].id)  # retraction: the next spread compile is of the other three
    third, _ = api.compile_release(store, "tiny", "spread")
    assert edits[0].id not in third.edit_ids and len(third.edit_ids) == 3


def test_spread_compile_refuses_a_log_whose_targets_it_misses(edited, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    store, _ = edited
    edits = store.list_edits(1)
    corpus = store.get_covariance(edits[0].covariance_id).corpus
    for layer in spread.spread_layers(edits[0].layer)[:-1]:
        api.compute_stats(store, "tiny", layer=layer, corpus=corpus, tokens=2000, device="cpu")
    monkeypatch.setattr(spread, "TOP_RIDGE", 1e3)  # the edit layer no longer takes what is left
    with pytest.raises(CompileError, match="miss their target"):
        api.compile_release(store, "tiny", "spread")
    assert store.list_releases(1) == []
