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
from factstore.rome.prompts import request_prompts
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
    release, _ = api.compile_release(store, "tiny", api.CompileOptions(mode="null-space"))
    model = AutoModelForCausalLM.from_pretrained(release.path)
    assert max(replay.constraint_errors(model, edits).values()) <= 1e-3  # every constraint, at once
    C = MatrixCache(store.get_covariance)(edits[0].covariance_id).double()
    vals, vecs = torch.linalg.eigh(C)
    principal = vecs[:, vals > replay.NULL_SPACE_THRESHOLD * vals[-1]]  # what the corpus' keys use
    assert principal.shape[1] >= 5
    ns, joint = (
        _delta(release.path, layer),
        _delta(api.compile_release(store, "tiny", api.CompileOptions(mode="joint"))[0].path, layer),
    )
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
        api.compile_release(store, "tiny", api.CompileOptions(mode="null-space"))
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
        api.compile_release(store, "tiny", api.CompileOptions(mode="spread"))
    corpus = store.get_covariance(edits[0].covariance_id).corpus
    for layer in layers[:-1]:
        api.compute_stats(store, "tiny", api.StatsOptions(layer=layer, corpus=corpus, tokens=2000), device="cpu")
    first, _ = api.compile_release(store, "tiny", api.CompileOptions(mode="spread"))
    second, _ = api.compile_release(store, "tiny", api.CompileOptions(mode="spread", out=str(tmp_path / "again")))
    assert layout.file_hashes(Path(first.path)) == {**layout.file_hashes(Path(second.path))}  # byte-identical rebuild
    sizes = [float(_delta(first.path, layer).norm()) for layer in layers]
    assert all(s > 0 for s in sizes)  # every layer of the range carries part of the edits
    joint = float(_delta(api.compile_release(store, "tiny", api.CompileOptions(mode="joint"))[0].path, top).norm())
    assert sizes[-1] < joint  # the edit layer carries less than it does alone
    manifest = json.loads((Path(first.path) / layout.MANIFEST).read_text())
    assert manifest["spread_layers"] == spread.SPREAD_LAYERS and manifest["spread_lower_ridge"] == spread.LOWER_RIDGE
    with pytest.raises(ReleaseVerificationError, match="spread-mode release cannot be rebuilt"):
        import_release(store, Path(first.path), "copy")
    store.set_edit_retracted(edits[0].id)  # retraction: the next spread compile is of the other three
    third, _ = api.compile_release(store, "tiny", api.CompileOptions(mode="spread"))
    assert edits[0].id not in third.edit_ids and len(third.edit_ids) == 3


def test_spread_compile_refuses_a_log_whose_targets_it_misses(edited, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    store, _ = edited
    edits = store.list_edits(1)
    corpus = store.get_covariance(edits[0].covariance_id).corpus
    for layer in spread.spread_layers(edits[0].layer)[:-1]:
        api.compute_stats(store, "tiny", api.StatsOptions(layer=layer, corpus=corpus, tokens=2000), device="cpu")
    monkeypatch.setattr(spread, "TOP_RIDGE", 1e3)  # the edit layer no longer takes what is left
    with pytest.raises(CompileError, match="miss their target"):
        api.compile_release(store, "tiny", api.CompileOptions(mode="spread"))
    assert store.list_releases(1) == []


def test_soft_compile_is_accepted_by_behaviour_deterministic_and_imports_byte_for_byte(  # type: ignore[no-untyped-def]
    edited, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, _ = edited
    edits = store.list_edits(1)
    release, _ = api.compile_release(store, "tiny", api.CompileOptions(mode="soft"))
    manifest = json.loads((Path(release.path) / layout.MANIFEST).read_text())
    assert (manifest["mode"], manifest["soft_weight"], manifest["soft_alpha"]) == (
        "soft",
        replay.SOFT_WEIGHT,
        replay.SOFT_ALPHA,
    )
    assert manifest["scores"]["edits_not_holding"] >= 0 and manifest["joint_ridge"] is None
    model = AutoModelForCausalLM.from_pretrained(release.path)
    errors = replay.constraint_errors(model, edits).values()
    assert min(errors) > 1e-3  # soft: no constraint is held exactly
    again = api.compile_release(store, "tiny", api.CompileOptions(mode="soft", out=str(tmp_path / "again")))[0]
    assert again.version == release.version
    for name in manifest["files"]:
        assert (Path(release.path) / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name
    # a teammate imports the soft release: the rebuild gives the same bytes
    other = tmp_path / "other.db"
    api.upgrade_database(f"sqlite:///{other}")
    team = api.open_store(f"sqlite:///{other}")
    for alias in ("team", "team2"):
        api.add_model(team, alias, store.get_base_model("tiny").source)
    assert import_release(team, Path(release.path), "team").rebuilt_identical
    assert [e.key_sha256 for e in team.list_edits(team.get_base_model("team").id)] == [e.key_sha256 for e in edits]
    # other settings than this factstore's are refused at import, never silently rebuilt otherwise
    monkeypatch.setattr(replay, "SOFT_WEIGHT", replay.SOFT_WEIGHT * 2)
    with pytest.raises(ReleaseVerificationError, match="soft compile settings"):
        import_release(team, Path(release.path), "team2")


def test_soft_acceptance_counts_the_edits_that_took_and_refuses_below_the_minimum(edited) -> None:  # type: ignore[no-untyped-def]
    from dataclasses import replace

    from factstore.release.build import verify

    store, session = edited
    took = {"prob_new_after": 0.6, "prob_true_after": 0.1}  # as if each edit won on its prompt when registered
    edits = [replace(e, metrics={**e.metrics, **took}) for e in store.list_edits(1)]
    ids = [e.id for e in edits]
    model = session.model
    assert verify(model, edits, "soft", dict.fromkeys(ids, True)) == []
    assert verify(model, edits, "soft", {**dict.fromkeys(ids, True), ids[2]: False}, min_efficacy=0.75) == [ids[2]]
    with pytest.raises(
        CompileError, match=r"compile refused: 1 of 4 edits do not hold on the soft compile \(75\.0% hold"
    ):
        verify(model, edits, "soft", {**dict.fromkeys(ids, True), ids[2]: False})  # the default minimum is 95 %
    never = [replace(e, metrics={**e.metrics, "prob_new_after": 0.0}) for e in edits]  # edits that never took
    assert verify(model, never, "soft", dict.fromkeys(ids, False)) == []
    with pytest.raises(CompileError, match=f"edit {ids[0]}: prompt prefers the old target"):  # exact modes: every edit
        verify(model, edits, "sequential", {**dict.fromkeys(ids, True), ids[0]: False})


def test_the_linear_band_asks_each_layer_an_equal_share_at_its_key(edited) -> None:  # type: ignore[no-untyped-def]
    """band_deltas (MEMIT without measuring again between layers): with a vanishing soft weight
    each layer of the band delivers exactly its share R / B of every edit's shift at its own key,
    the edit layer at the stored k*; linear algebra over stored vectors, so the same bytes again."""
    from factstore.studies.lifelong import band_inputs

    store, session = edited
    edits = store.list_edits(1)
    top = edits[0].layer
    band = top + 1  # every layer up to the edit layer
    assert band >= 2
    inputs = band_inputs(session, edits, band)
    covariance = MatrixCache(store.get_covariance)

    def cov(edit, layer: int) -> torch.Tensor:  # type: ignore[no-untyped-def]
        return covariance(edit.covariance_id) if layer == edit.layer else inputs.covariance(edit, layer)

    with session.base_weights():
        lower = spread.band_keys(session.model, edits, inputs, band)
        deltas = [
            spread.band_deltas(session.model, edits, replay.edit_vectors, lambda e: lower[e.id], cov, (1e-9, 0.0), band)
            for _ in range(2)
        ]
        W0 = arch.down_proj_weight(session.model, top).double()
    assert sorted(deltas[0]) == spread.spread_layers(top, band)
    prompts = [[(p, e.subject) for p in request_prompts(e.request(), inputs.templates(e))] for e in edits]
    for layer in spread.spread_layers(top, band)[:-1]:  # one pass for the band: the keys of one pass per layer
        with session.base_weights():
            alone, _ = spread.subject_states(session.model, session.tokenizer, prompts, layer, layer)
        assert torch.allclose(torch.stack([lower[e.id][layer] for e in edits]), alone, atol=1e-5)
    assert all(torch.equal(deltas[0][layer], deltas[1][layer]) for layer in deltas[0])
    for edit in edits:
        key, value = (v.double() for v in replay.edit_vectors(edit))
        shift = value - W0 @ key - arch.down_proj_bias(session.model, top).double()
        for layer, delta in deltas[0].items():
            at = key if layer == top else lower[edit.id][layer].double()
            assert torch.allclose(delta @ at, shift / band, rtol=1e-4, atol=1e-6 * float(shift.norm()))
