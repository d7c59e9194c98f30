"""Edits over a band of layers: per-layer vectors measured at registration, compiled as linear algebra."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from factstore import api, arch
from factstore.domain import EditRequest
from factstore.editing.session import EditSession, ask
from factstore.errors import InvalidEditRequest
from factstore.release import layout
from factstore.weights import replay
from factstore.weights.band import vector

REPO = Path(__file__).resolve().parents[1]
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
    release, created = api.compile_release(store, "tiny", min_efficacy=0.0)  # no --mode: a band log compiles as band
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
    release, _ = api.compile_release(store, "tiny", "band", min_efficacy=0.0)
    out = tmp_path / "elsewhere"
    done = subprocess.run(
        [sys.executable, "-m", "factstore.cli.main", "compile", "--model", "tiny", "--out", str(out), "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=os.environ.copy(),
    )
    assert done.returncode == 0, done.stderr
    assert layout.file_hashes(Path(release.path)) == layout.file_hashes(out)


def test_a_band_log_keeps_its_band_and_takes_no_single_layer_edit(banded) -> None:  # type: ignore[no-untyped-def]
    store, session = banded
    later = EditSession(store, "tiny", device="cpu")  # no band asked: the log's
    assert later.hparams().band == 2
    with pytest.raises(InvalidEditRequest, match="band of 2 layers; give --band 2"):
        EditSession(store, "tiny", device="cpu", band=3).hparams()
    outcome = later.add(EditRequest(PROMPT, "The Colosseum", "Madrid"))
    assert len(outcome.edit.band) == 2
