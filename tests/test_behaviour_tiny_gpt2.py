"""ROME on the suite's GPT-2 trained on synthetic facts: efficacy, generalisation, specificity."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from factstore.domain import EditRequest
from factstore.rome.covariance import accumulate_second_moment
from factstore.rome.edit import compute_edit, contexts_for, weights_restored, apply_edit
from factstore.rome.hparams import default_hparams
from tiny_models import RELATIONS, Fact, Recipe, make_facts

N_EDITS = 12


def _top(model, tokenizer, text: str) -> int:  # type: ignore[no-untyped-def]
    with torch.no_grad():
        return int(model(input_ids=torch.tensor([tokenizer(text)["input_ids"]])).logits[0, -1].argmax())


def _knows(model, tokenizer, fact: Fact, paraphrase: bool = True) -> bool:  # type: ignore[no-untyped-def]
    templates, held_out, _ = RELATIONS[fact.relation]
    target = tokenizer(" " + fact.target)["input_ids"][0]
    prompts = [templates[0]] + ([held_out] if paraphrase else [])
    return all(_top(model, tokenizer, p.format(fact.subject)) == target for p in prompts)


@pytest.fixture(scope="module")
def trained(tiny_gpt2_dir: Path, gpt2_tokenizer):  # type: ignore[no-untyped-def]
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir).eval()
    facts = make_facts(Recipe())
    corpus = [t.format(f.subject) + " " + f.target + "." for f in facts for t in RELATIONS[f.relation][0]]
    hp = default_hparams("gpt2", model.config.n_layer, model.config.n_embd)
    C = accumulate_second_moment(model, gpt2_tokenizer, corpus, hp.layer, 100_000).moment().float()
    return model, facts, hp, C


def test_the_trained_model_knows_its_facts(trained, gpt2_tokenizer) -> None:  # type: ignore[no-untyped-def]
    model, facts, _, _ = trained
    recall = sum(_knows(model, gpt2_tokenizer, f, paraphrase=False) for f in facts) / len(facts)
    assert recall >= 0.9


def test_edits_take_generalise_and_spare_other_subjects(trained, gpt2_tokenizer) -> None:  # type: ignore[no-untyped-def]
    model, facts, hp, C = trained
    known = [f for f in facts if f.relation == "city" and _knows(model, gpt2_tokenizer, f)]
    assert len(known) >= N_EDITS + 10
    edits, bystanders = known[:N_EDITS], known[N_EDITS : N_EDITS + 10]
    templates = contexts_for(model, gpt2_tokenizer, hp)
    objects = RELATIONS["city"][2]
    efficacy = paraphrase = spared = 0
    for i, fact in enumerate(edits):
        new = next(o.strip() for j, o in enumerate(objects) if o.strip() != fact.target and j >= i % len(objects))
        request = EditRequest(RELATIONS["city"][0][0], fact.subject, new)
        result = compute_edit(model, gpt2_tokenizer, request, hp, C, templates)
        new_id = gpt2_tokenizer(" " + new)["input_ids"][0]
        with weights_restored(model, hp.layer):
            apply_edit(model, hp.layer, result.key, result.value, C)
            efficacy += _top(model, gpt2_tokenizer, request.text) == new_id
            paraphrase += _top(model, gpt2_tokenizer, RELATIONS["city"][1].format(fact.subject)) == new_id
            spared += sum(_knows(model, gpt2_tokenizer, b, paraphrase=False) for b in bystanders)
    # measured on this recipe: see the closing note of the foundation issue; margins below it
    assert efficacy / N_EDITS >= 0.9
    assert paraphrase / N_EDITS >= 0.7
    assert spared / (N_EDITS * len(bystanders)) >= 0.9
