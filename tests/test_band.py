"""Edits over a band of layers: per-layer vectors measured at registration, compiled as linear algebra."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from sqlalchemy import event
from transformers import AutoModelForCausalLM

from factstore import api, arch
from factstore.domain import EditRequest, LayerAsk, band_sha256
from factstore.editing.session import EditSession, ask
from factstore.errors import InvalidEditRequest, ReleaseVerificationError
from factstore.release import layout
from factstore.release.lineage import import_release
from factstore.weights import replay
from factstore.weights.band import vector
from service_process import finish

FACTS = [("The Eiffel Tower", "Rome"), ("The Louvre", "Berlin"), ("Big Ben", "Paris")]
PROMPT = "{} is located in the city of"


@pytest.fixture
def banded(tiny_store):  # type: ignore[no-untyped-def]
    """The tiny random GPT-2 (3 layers) with three edits registered over a band of two layers."""
    session = EditSession(tiny_store, "tiny", device="cpu", band=2)
    for subject, target in FACTS:
        session.add(EditRequest(PROMPT, subject, target))
    return tiny_store, session


def _layers(model: torch.nn.Module, layers: list[int]) -> list[torch.Tensor]:
    return [arch.down_proj_weight(model, layer).clone() for layer in layers]  # type: ignore[arg-type]


def test_band_edits_store_a_key_and_target_per_layer_and_the_head_is_the_band_release(banded) -> None:  # type: ignore[no-untyped-def]
    store, session = banded
    edits = store.list_edits(1)
    top = edits[0].layer
    band = [top - 1, top]
    assert [[a.layer for a in e.band] for e in edits] == [band] * 3
    d_ff, d = edits[0].key_shape[0], edits[0].value_shape[0]
    assert all(vector(a.key).shape == (d_ff,) and vector(a.target).shape == (d,) for e in edits for a in e.band)
    assert all(e.hparams["band"] == 2 for e in edits)
    release, created = api.compile_release(
        store, "tiny", api.CompileOptions(min_efficacy=0.0)
    )  # no --mode: a band log compiles as band
    assert created and release.mode == "band"
    compiled = AutoModelForCausalLM.from_pretrained(release.path)
    # the head new edits are computed on is the release, to the bit, on every layer of the band
    assert all(torch.equal(a, b) for a, b in zip(_layers(compiled, band), _layers(session.model, band)))
    assert all(float((w - b).norm()) > 0 for w, b in zip(_layers(compiled, band), _layers(_base(session), band)))
    for subject, _ in FACTS:  # and answers what the release answers on every edit's prompt
        prompt = PROMPT.format(subject)
        assert ask(session.model, session.tokenizer, prompt) == ask(compiled, session.tokenizer, prompt)
    assert min(replay.constraint_errors(compiled, edits).values()) > 1e-3  # soft: no layer holds an edit exactly
    # a fresh head (another process, a worker) rebuilds the same weights from the stored vectors
    fresh = EditSession(store, "tiny", device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(_layers(fresh.model, band), _layers(session.model, band)))


def _base(session: EditSession) -> torch.nn.Module:
    with session.base_weights():
        return __import__("copy").deepcopy(session.model)


def test_a_band_compile_is_the_same_bytes_in_another_process(banded, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store, _ = banded
    release, _ = api.compile_release(store, "tiny", api.CompileOptions(mode="band", min_efficacy=0.0))
    out = tmp_path / "elsewhere"
    done = finish("compile", "--model", "tiny", "--out", str(out), "--json")
    assert done.returncode == 0, done.stderr
    assert layout.file_hashes(Path(release.path)) == layout.file_hashes(out)


def test_a_band_log_keeps_its_band(banded) -> None:  # type: ignore[no-untyped-def]
    store, _ = banded
    later = EditSession(store, "tiny", device="cpu")  # no band asked: the log's
    assert later.hparams().band == 2
    with pytest.raises(InvalidEditRequest, match="band of 2 layers; give --band 2"):
        EditSession(store, "tiny", device="cpu", band=3).hparams()
    outcome = later.add(EditRequest(PROMPT, "The Colosseum", "Madrid"))
    assert len(outcome.edit.band) == 2
    # capacity counts every layer an edit asks of, each band edit for its share of the layer
    loads = api.model_capacity(store, "tiny").layers
    top = outcome.edit.layer
    assert [(x.layer, x.edits) for x in loads] == [(top - 1, 4), (top, 4)]
    assert loads[0].load == pytest.approx(2 / outcome.edit.key_shape[0])


def _band_compile(session: EditSession, edits: list) -> torch.nn.Module:  # type: ignore[type-arg]
    """The band compile of EDITS' stored asks on the base weights, each layer held to its C alone."""
    from factstore.weights.band import apply_band, settings
    from factstore.weights.replay import edit_vectors

    model = _base(session)
    apply_band(
        model,
        edits,
        edit_vectors,
        lambda e, layer: session.statistics.band_matrix(e.covariance_id, layer, 0.0),
        settings(edits, (0.0, 0.0)),
    )
    return model


def _team_store(store, tmp_path: Path):  # type: ignore[no-untyped-def]
    other = tmp_path / "team.db"
    api.upgrade_database(f"sqlite:///{other}")
    team = api.open_store(f"sqlite:///{other}")
    api.add_model(team, "team", store.get_base_model("tiny").source)
    return team


def test_a_band_release_imports_byte_for_byte_and_the_importer_continues_it(banded, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store, _ = banded
    release, _ = api.compile_release(store, "tiny", api.CompileOptions(min_efficacy=0.0))
    team = _team_store(store, tmp_path)
    result = import_release(team, Path(release.path), "team")
    assert result.rebuilt_identical and result.edits_added == 3
    mine, theirs = store.list_edits(1), team.list_edits(team.get_base_model("team").id)
    assert [e.band for e in theirs] == [e.band for e in mine]
    again, _ = api.compile_release(team, "team", api.CompileOptions(out=str(tmp_path / "again"), min_efficacy=0.0))
    assert again.mode == "band"
    mine_files, again_files = layout.file_hashes(Path(release.path)), layout.file_hashes(tmp_path / "again")
    weights = [n for n in mine_files if n.endswith(".safetensors")]  # the card names the alias
    assert weights and all(mine_files[n] == again_files[n] for n in weights)


def test_a_band_release_whose_upper_key_is_another_subjects_is_refused(banded, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A publisher who keeps an edit's label and lowest key but points its upper layer at another
    subject's key (to move that subject's fact unseen) is caught by the claims check."""
    store, _ = banded
    release, _ = api.compile_release(store, "tiny", api.CompileOptions(min_efficacy=0.0))
    folder = tmp_path / "forged"
    shutil.copytree(release.path, folder)
    edits = store.list_edits(1)
    tensors = load_file(str(folder / layout.EDIT_VECTORS))
    top = edits[0].layer
    tensors[f"edit.00000.band.{top:03d}.key"] = vector(edits[1].band[-1].key)  # the Louvre's key at the top layer
    save_file(tensors, str(folder / layout.EDIT_VECTORS), metadata={"format": "pt"})
    asks = tuple(LayerAsk(a.layer, edits[1].band[-1].key if a.layer == top else a.key, a.target) for a in edits[0].band)
    data = json.loads((folder / layout.MANIFEST).read_text())
    data["edits"][0]["band_sha256"] = band_sha256(asks)
    data["files"] = layout.file_hashes(folder)
    (folder / layout.MANIFEST).write_text(json.dumps(data))
    with pytest.raises(ReleaseVerificationError, match=f"edit 1 of the release: its key of layer {top} is not the key"):
        import_release(_team_store(store, tmp_path), folder, "team")


def test_a_single_layer_log_through_migration_0006_compiles_to_the_same_bytes(  # type: ignore[no-untyped-def]
    tiny_store, db_url: str, tmp_path: Path
) -> None:
    """A log registered before band edits existed (down to 0005 and up again) keeps its release:
    the same log hash, so the joint release is reused, and rebuilt it is the same bytes."""
    from factstore.storage import schema
    from factstore.storage.engine import make_engine

    session = EditSession(tiny_store, "tiny", device="cpu")
    for subject, target in FACTS:
        session.add(EditRequest(PROMPT, subject, target))
    before, _ = api.compile_release(tiny_store, "tiny", api.CompileOptions(mode="joint"))
    files = layout.file_hashes(Path(before.path))
    tiny_store.close()
    engine = make_engine(db_url)
    schema.downgrade(engine, "0005")
    schema.upgrade(engine)
    engine.dispose()
    store = api.open_store(db_url)
    assert all(e.band == () for e in store.list_edits(1))
    reused, created = api.compile_release(store, "tiny")  # no --mode: a single-layer log is joint
    assert not created and reused.id == before.id
    api.compile_release(store, "tiny", api.CompileOptions(mode="joint", out=str(tmp_path / "rebuilt")))
    assert layout.file_hashes(tmp_path / "rebuilt") == files


def _forge(release_path: str, folder: Path, change) -> Path:  # type: ignore[no-untyped-def]
    """A copy of a release with its manifest changed by CHANGE and every file hash made right."""
    shutil.copytree(release_path, folder)
    data = json.loads((folder / layout.MANIFEST).read_text())
    change(data)
    data["files"] = layout.file_hashes(folder)
    (folder / layout.MANIFEST).write_text(json.dumps(data))
    return folder


@pytest.mark.parametrize(
    ("change", "refusal"),
    [
        (lambda m: m.update(mode="joint"), "must be their band compile"),  # band vectors nothing would check
        (lambda m: m["edits"][1].update(band=[], band_sha256=None), "every edit a band edit"),
        (lambda m: m["edits"][0]["band"].reverse(), "is not the 2 layers ending at"),
        (lambda m: m.update(soft_weight=m["soft_weight"] * 2), "not those its edits were registered with"),
    ],
)
def test_a_band_release_that_lies_about_its_band_is_refused(banded, tmp_path: Path, change, refusal) -> None:  # type: ignore[no-untyped-def]
    store, _ = banded
    release, _ = api.compile_release(store, "tiny", api.CompileOptions(min_efficacy=0.0))
    forged = _forge(release.path, tmp_path / "forged", change)
    with pytest.raises(ReleaseVerificationError, match=refusal):
        import_release(_team_store(store, tmp_path), forged, "team")


def test_band_hyperparameters_out_of_range_are_refused() -> None:
    from factstore.rome.hparams import ROMEHyperParams

    for bad in ({"band": 0}, {"band": 65}, {"band_weight": -1.0}, {"band_alpha": -0.5}):
        with pytest.raises(ValueError):
            ROMEHyperParams(layer=1, **bad)  # type: ignore[arg-type]


def test_a_band_cannot_start_on_a_log_of_single_layer_edits(tiny_store) -> None:  # type: ignore[no-untyped-def]
    session = EditSession(tiny_store, "tiny", device="cpu")
    session.add(EditRequest(PROMPT, *FACTS[0]))
    with pytest.raises(InvalidEditRequest, match="holds 1 single-layer edits; a band log starts empty"):
        EditSession(tiny_store, "tiny", device="cpu", band=2).hparams()


def test_a_model_with_a_default_band_starts_new_logs_over_it_and_old_logs_keep_theirs(  # type: ignore[no-untyped-def]
    tiny_store, monkeypatch
) -> None:
    """SmolLM2's row names a band (9 layers ending at 8): a new log registers over it without
    --band, continues at its own top layer without --layer, and a single-layer log stays one."""
    from factstore.editing import session as session_module

    monkeypatch.setattr(session_module, "default_band", lambda *size: (2, 2))  # the tiny model: 3 layers
    assert EditSession(tiny_store, "tiny", device="cpu", band=1).hparams().band == 1  # --band 1: one layer
    stats = api.compute_stats(tiny_store, "tiny")  # no --layer(s): the layers the first band edit reads
    assert isinstance(stats, api.StatsLayers) and [r.layer for r in stats.layers] == [1, 2]
    first = EditSession(tiny_store, "tiny", device="cpu").add(EditRequest(PROMPT, *FACTS[0])).edit
    assert (first.layer, [a.layer for a in first.band]) == (2, [1, 2])
    monkeypatch.setattr(session_module, "default_band", lambda *size: (2, 1))  # a later default moves
    later = EditSession(tiny_store, "tiny", device="cpu").add(EditRequest(PROMPT, *FACTS[1])).edit
    assert (later.layer, [a.layer for a in later.band]) == (2, [1, 2])  # the log's own top, not the default's


def test_a_single_layer_log_stays_single_layer_when_the_model_gains_a_default_band(  # type: ignore[no-untyped-def]
    tiny_store, monkeypatch
) -> None:
    from factstore.editing import session as session_module

    EditSession(tiny_store, "tiny", device="cpu").add(EditRequest(PROMPT, *FACTS[0]))  # registered before
    monkeypatch.setattr(session_module, "default_band", lambda *size: (2, 2))
    later = EditSession(tiny_store, "tiny", device="cpu").add(EditRequest(PROMPT, *FACTS[1])).edit
    assert later.band == () and later.layer == 1  # the single-layer default layer, as before


def test_a_failed_band_measurement_leaves_the_head_as_the_log_builds_it(banded, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    store, session = banded
    top = store.list_edits(1)[0].layer
    before = _layers(session.model, [top - 1, top])
    calls = []

    def failing_states(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 2:  # after the lowest layer was written
            assert not torch.equal(before[0], _layers(session.model, [top - 1])[0])
            raise RuntimeError("out of memory")
        return real(*args, **kwargs)

    from factstore.rome import keys as keys_module  # BandWalk measures through it

    real = keys_module.subject_states
    monkeypatch.setattr(keys_module, "subject_states", failing_states)
    with pytest.raises(RuntimeError, match="out of memory"):
        session.add(EditRequest(PROMPT, "The Colosseum", "Madrid"))
    assert all(torch.equal(a, b) for a, b in zip(before, _layers(session.model, [top - 1, top])))
    assert [e.id for e in session.applied] == [e.id for e in store.list_edits(1)]


def test_listing_the_log_reads_no_per_layer_vectors(banded) -> None:  # type: ignore[no-untyped-def]
    """`edit list` and the HTTP log read entries, not the asks (~0.1 MB per band edit on SmolLM2);
    lists of computed edits load them in one query."""
    store, _ = banded
    seen: list[str] = []
    event.listen(store.engine, "before_cursor_execute", lambda *args: seen.append(args[2]))
    entries = api.list_log(store, "tiny", "all")
    assert len(entries) == 3 and seen and not any("edit_layers" in sql for sql in seen)
    seen.clear()
    edits = store.list_edits(1)
    assert all(len(e.band) == 2 for e in edits)
    assert sum("edit_layers" in sql for sql in seen) == 1


def _delivered(session: EditSession, edit) -> float:  # type: ignore[no-untyped-def]
    """The share of an edit's shift (v* - W0 k* - b on the base) the head delivers at its layer."""
    from factstore.rome.hparams import ROMEHyperParams
    from factstore.rome.keys import subject_states
    from factstore.rome.prompts import request_prompts

    keys = session.templates(ROMEHyperParams.from_json(edit.hparams)).key
    sets = [[(p, edit.subject) for p in request_prompts(edit.request(), keys)]]
    layer = edit.layer
    head = subject_states(session.model, session.tokenizer, sets, layer, layer)[1][0].double()
    with session.base_weights():
        base = subject_states(session.model, session.tokenizer, sets, layer, layer)[1][0].double()
        W, b = arch.down_proj_weight(session.model, layer).double(), arch.down_proj_bias(session.model, layer)
    k, v = (t.double() for t in replay.edit_vectors(edit))
    want = v - W @ k - (0.0 if b is None else b.double())
    return float((head - base) @ want / (want @ want))


@pytest.mark.parametrize("boost", [1.0, 100.0])
def test_a_boosted_band_edit_reaches_its_layer_whole_and_the_head_is_still_the_release(tiny_store, boost) -> None:  # type: ignore[no-untyped-def]
    """band_boost scales a new edit's shares until its whole shift reaches the edit layer on the
    head (the soft solves deliver part of an ask); the stored vectors still compile to the head."""
    from dataclasses import replace

    session = EditSession(tiny_store, "tiny", device="cpu", band=2)
    session.settings.defaults = replace(session.settings.defaults, band_boost=boost)
    outcome = session.add(EditRequest(PROMPT, *FACTS[0]))
    edit = tiny_store.get_edit(outcome.edit.id)
    share = _delivered(session, edit)
    if boost == 1.0:
        assert share < 0.97 and "band_boost" not in edit.hparams  # the shrinkage the boost exists for
    else:
        assert abs(share - 1.0) < 0.01 and edit.hparams["band_boost"] == boost
    release, _ = api.compile_release(tiny_store, "tiny", api.CompileOptions(min_efficacy=0.0))
    compiled = AutoModelForCausalLM.from_pretrained(release.path)
    band = [a.layer for a in edit.band]
    assert all(torch.equal(a, b) for a, b in zip(_layers(compiled, band), _layers(session.model, band)))


def test_band_keys_weighted_towards_the_bare_prompt_are_measured_so_and_import(tiny_store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """band_plain_weight adds copies of the bare prompt to the templated prompts a band edit's
    keys are the mean of (a prompt that starts the sequence puts the subject on the attention
    sink); the importer measures keys the same way, so the release imports byte for byte."""
    from dataclasses import replace

    from factstore.rome.hparams import ROMEHyperParams
    from factstore.rome.keys import subject_states
    from factstore.weights.band import key_prompts

    session = EditSession(tiny_store, "tiny", device="cpu", band=2)
    session.settings.defaults = replace(session.settings.defaults, band_plain_weight=20)
    for subject, target in FACTS:
        session.add(EditRequest(PROMPT, subject, target))
    edits = tiny_store.list_edits(1)
    first = edits[0]
    assert first.hparams["band_plain_weight"] == 20
    templates = session.templates(ROMEHyperParams.from_json(first.hparams)).key
    lowest = first.band[0].layer
    with session.base_weights():  # the first edit's lowest key: nothing was written below it
        weighted = subject_states(
            session.model, session.tokenizer, [key_prompts(first.request(), templates, 20)], lowest, lowest
        )[0][0]
        uniform = subject_states(
            session.model, session.tokenizer, [key_prompts(first.request(), templates, 0)], lowest, lowest
        )[0][0]
    stored = vector(first.band[0].key)
    assert float((stored - weighted).norm() / weighted.norm()) < 1e-5
    assert float((stored - uniform).norm() / uniform.norm()) > 1e-2  # the weighting moved it
    release, _ = api.compile_release(tiny_store, "tiny", api.CompileOptions(min_efficacy=0.0))
    result = import_release(_team_store(tiny_store, tmp_path), Path(release.path), "team")
    assert result.rebuilt_identical and result.edits_added == 3


def test_a_band_log_with_a_names_weight_holds_its_solves_to_the_names_moment_too_and_imports(
    tiny_store, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """band_names_weight rho: every band layer's solve holds its update to C + rho N (N: the keys at
    name ends of C's corpus, stored in C's file); the head, the release and an importer's rebuild
    all solve so, and later edits of the log keep the log's rho."""
    from dataclasses import replace

    from factstore.weights import stats

    rho = 1.0
    named = tmp_path / "named.json"  # the suite's corpus names nothing: C of text that names places
    named.write_text(
        json.dumps([f"Paragraph {i}: the river Avon runs through Bath and the fields." for i in range(200)])
    )
    api.compute_stats(
        tiny_store, "tiny", api.StatsOptions(corpus=str(named), tokens=2000, layers=(0, 1, 2)), device="cpu"
    )
    session = EditSession(tiny_store, "tiny", device="cpu", band=2)
    session.settings.defaults = replace(session.settings.defaults, band_names_weight=rho)
    for subject, target in FACTS:
        session.add(EditRequest(PROMPT, subject, target))
    later = EditSession(tiny_store, "tiny", device="cpu")  # the model's default rho is 0: the log's wins
    later.add(EditRequest(PROMPT, "The Colosseum", "Madrid"))
    edits = tiny_store.list_edits(1)
    assert [e.hparams["band_names_weight"] for e in edits] == [rho] * 4
    own = tiny_store.get_covariance(edits[0].covariance_id)
    names = stats.load_names(Path(own.path))
    assert names is not None and float(names.norm()) > 0 and own.corpus == str(named)
    top = edits[0].layer
    held = session.statistics.band_matrix(own.id, top, rho) - session.statistics.band_matrix(own.id, top, 0.0)
    assert torch.allclose(held, rho * names.float())
    release, _ = api.compile_release(tiny_store, "tiny", api.CompileOptions(min_efficacy=0.0))
    compiled = AutoModelForCausalLM.from_pretrained(release.path)
    band = [a.layer for a in edits[0].band]
    assert all(torch.equal(a, b) for a, b in zip(_layers(compiled, band), _layers(later.model, band)))
    alone = _band_compile(session, edits)  # the same stored asks held to C alone: other weights
    assert all(float((a - b).norm()) > 1e-6 for a, b in zip(_layers(compiled, band), _layers(alone, band)))
    result = import_release(_team_store(tiny_store, tmp_path), Path(release.path), "team")
    assert result.rebuilt_identical and result.edits_added == 4


def test_a_band_log_with_a_top_weight_holds_its_edit_layer_harder_and_imports(tiny_store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """band_top_weight multiplies the band weight at the edit layer only (the top of the band,
    which takes what the layers below left of every shift); the head, the release and an
    importer's rebuild all solve so, and later edits keep the log's setting."""
    from dataclasses import replace

    session = EditSession(tiny_store, "tiny", device="cpu", band=2)
    session.settings.defaults = replace(session.settings.defaults, band_top_weight=8.0)
    for subject, target in FACTS:
        session.add(EditRequest(PROMPT, subject, target))
    later = EditSession(tiny_store, "tiny", device="cpu")  # the model's default is 1: the log's wins
    later.add(EditRequest(PROMPT, "The Colosseum", "Madrid"))
    edits = tiny_store.list_edits(1)
    assert [e.hparams["band_top_weight"] for e in edits] == [8.0] * 4
    release, _ = api.compile_release(tiny_store, "tiny", api.CompileOptions(min_efficacy=0.0))
    compiled = AutoModelForCausalLM.from_pretrained(release.path)
    lower, top = [a.layer for a in edits[0].band]
    assert top == edits[0].layer
    assert all(torch.equal(a, b) for a, b in zip(_layers(compiled, [lower, top]), _layers(later.model, [lower, top])))
    flat = [replace(e, hparams={k: v for k, v in e.hparams.items() if k != "band_top_weight"}) for e in edits]
    even = _band_compile(session, flat)  # the same stored asks with every layer weighed alike
    base = _layers(_base(session), [lower, top])
    (low_held, top_held), (low_even, top_even) = _layers(compiled, [lower, top]), _layers(even, [lower, top])
    assert torch.equal(low_held, low_even)  # below the top: the same solve
    assert float((top_held - base[1]).norm()) < 0.5 * float((top_even - base[1]).norm())  # the top held harder
    result = import_release(_team_store(tiny_store, tmp_path), Path(release.path), "team")
    assert result.rebuilt_identical and result.edits_added == 4


def test_a_new_band_log_on_statistics_without_a_names_moment_registers_without_it(
    tiny_store, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    """C files written before the names moment existed hold C alone: a new band log whose model
    default weighs the moment registers without it (warned once per batch), and keeps rho 0; a
    log that weighs it and meets such a file later stops in one line, storing nothing."""
    import logging
    from dataclasses import replace

    from factstore.errors import StatisticsError
    from factstore.weights import stats

    monkeypatch.setattr(stats, "has_names", lambda cov: False)  # as an older factstore wrote them
    session = EditSession(tiny_store, "tiny", device="cpu", band=2)
    session.settings.defaults = replace(session.settings.defaults, band_names_weight=0.5)
    with caplog.at_level(logging.WARNING):
        outcome = session.add(EditRequest(PROMPT, *FACTS[0]))
    assert "predate their names moment" in caplog.text
    assert len(outcome.edit.band) == 2 and "band_names_weight" not in tiny_store.get_edit(outcome.edit.id).hparams
    monkeypatch.undo()
    later = EditSession(tiny_store, "tiny", device="cpu")
    later.settings.defaults = replace(later.settings.defaults, band_names_weight=0.5)
    assert later.add(EditRequest(PROMPT, *FACTS[1])).edit.hparams.get("band_names_weight") is None  # the log's rho

    monkeypatch.setattr(stats, "load_names", lambda path, sha256=None: None)
    fresh = _fresh_band_session(tiny_store, 0.5)
    with pytest.raises(StatisticsError, match="computed before factstore kept their names moment"):
        fresh.add(EditRequest(PROMPT, *FACTS[2]))
    assert fresh.base.id != session.base.id and tiny_store.list_edits(fresh.base.id) == []


def _fresh_band_session(store, rho: float) -> EditSession:  # type: ignore[no-untyped-def]
    """A band session with RHO on a second model of STORE (an empty log)."""
    from dataclasses import replace

    api.add_model(store, "tiny2", store.get_base_model("tiny").source)
    session = EditSession(store, "tiny2", device="cpu", band=2)
    session.settings.defaults = replace(session.settings.defaults, band_names_weight=rho)
    return session
