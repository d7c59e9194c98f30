"""The real SmolLM2-135M starter model: the README's Eiffel Tower edit."""

from __future__ import annotations

import pytest

from factstore.domain import EditRequest
from factstore.rome.edit import Snapshot, apply_edit, compute_edit
from factstore.rome.hparams import default_hparams
from factstore.rome.scoring import target_probs
from factstore.weights import corpus, stats

pytestmark = pytest.mark.slow


def test_eiffel_tower_moves_to_rome_and_the_louvre_stays(smollm2) -> None:  # type: ignore[no-untyped-def]
    model, tok = smollm2.model, smollm2.tokenizer
    hp = default_hparams("llama", model.config.num_hidden_layers, model.config.hidden_size)
    text = corpus.load_corpus()
    spec = stats.stats_spec(smollm2.ref.revision, model, hp.layer, text, 20_000, "float32")
    C = stats.load_matrix(stats.compute(model, tok, spec, text).path)
    request = EditRequest("{} is located in the city of", "The Eiffel Tower", "Rome")
    result = compute_edit(model, tok, request, hp, C)
    assert result.target_true == "Paris"
    assert result.prob_new_after > result.prob_true_after
    prompts = [
        request.text,
        "The Eiffel Tower, a famous landmark, stands in the city of",
        "The Louvre is located in the city of",
    ]
    with Snapshot(model, [hp.layer]):
        apply_edit(model, hp.layer, result.key, result.value, C)
        p_rome = target_probs(model, tok, prompts, ["Rome"] * 3)
        p_paris = target_probs(model, tok, prompts, ["Paris"] * 3)
    assert p_rome[0] > p_paris[0]  # the edit
    assert p_rome[1] > p_paris[1]  # a paraphrase
    assert p_paris[2] > p_rome[2]  # a neighbour keeps its fact
