"""ROME on the suite's GPT-2 trained on synthetic facts: efficacy, generalisation, specificity."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from factstore.domain import EditRequest
from factstore.rome.covariance import accumulate_second_moment
from factstore.rome.edit import Snapshot, apply_edit, compute_edit, contexts_for
from factstore.rome.hparams import default_hparams
from factstore.rome.scoring import target_probs
from tiny_models import RELATIONS, TRAINED_EDIT_SETTINGS, Fact, Recipe, fact_sentences, make_facts

N_EDITS = 10


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
    corpus = fact_sentences(Recipe())
    # Settings for this model, chosen by measurement: it has only seen bare sentences, so
    # ROME's sampled context prefixes would put every prompt out of distribution.
    # Layers 1 and 2 both edit 9-10 of 10 facts with every bystander kept; 2 was the better.
    # A delta clamp of 8 x ||v0|| (ROME: 4) and 40 v* steps (default 20): the trained weights
    # differ from one CPU to another; on some the clamp at 4 held 3 of 10 edits short of their
    # target, on another 20 steps did (7/10; 40 steps: 9/10).
    hp = replace(default_hparams("gpt2", model.config.n_layer, model.config.n_embd), **TRAINED_EDIT_SETTINGS, steps=40)
    C = accumulate_second_moment(model, gpt2_tokenizer, corpus, hp.layer, 100_000).moment(hp.layer).float()
    return model, facts, hp, C


def test_the_trained_model_knows_its_facts(trained, gpt2_tokenizer) -> None:  # type: ignore[no-untyped-def]
    model, facts, _, _ = trained
    recall = sum(_knows(model, gpt2_tokenizer, f, paraphrase=False) for f in facts) / len(facts)
    assert recall >= 0.9


def test_edits_take_and_spare_other_subjects(trained, gpt2_tokenizer) -> None:  # type: ignore[no-untyped-def]
    model, facts, hp, C = trained
    edits = [f for f in facts if f.relation == "city" and _knows(model, gpt2_tokenizer, f, paraphrase=False)][:N_EDITS]
    assert len(edits) == N_EDITS
    bystanders = [
        f
        for f in facts
        if f not in edits and f.relation == "city" and _knows(model, gpt2_tokenizer, f, paraphrase=False)
    ][:10]
    templates = contexts_for(model, gpt2_tokenizer, hp)
    objects = RELATIONS["city"][2]
    efficacy = paraphrase = paraphrase_top = spared = before = 0
    for i, fact in enumerate(edits):
        others = [o.strip() for o in objects if o.strip() != fact.target]
        new = others[i % len(others)]
        request = EditRequest(RELATIONS["city"][0][0], fact.subject, new)
        result = compute_edit(model, gpt2_tokenizer, request, hp, C, templates)
        new_id = gpt2_tokenizer(" " + new)["input_ids"][0]
        held_out = RELATIONS["city"][1].format(fact.subject)
        p_new, p_old = target_probs(model, gpt2_tokenizer, [held_out] * 2, [new, fact.target])
        before += bool(p_new > p_old)  # the unedited model on the held-out template
        with Snapshot(model, [hp.layer]):
            apply_edit(model, hp.layer, result.key, result.value, C)
            efficacy += _top(model, gpt2_tokenizer, request.text) == new_id
            paraphrase_top += _top(model, gpt2_tokenizer, held_out) == new_id
            p_new, p_old = target_probs(model, gpt2_tokenizer, [held_out] * 2, [new, fact.target])
            paraphrase += bool(p_new > p_old)
            spared += sum(_knows(model, gpt2_tokenizer, b, paraphrase=False) for b in bystanders)
    print(
        f"efficacy {efficacy}/{N_EDITS}, paraphrase P(new)>P(old) {paraphrase}/{N_EDITS} (before the edit {before}, "
        f"top-1 {paraphrase_top}), bystanders kept {spared}/{N_EDITS * len(bystanders)}"
    )
    # Measured on this recipe (training differs between CPUs): efficacy 9-10/10, bystanders kept
    # 99-100/100. The bounds leave one edit of margin. Generalisation is not asserted on this
    # model: how it answers the held-out template depends on the CPU it was trained on (on one,
    # the paraphrase preferred the new object 2/10 against 1/10 unedited; on another 3/10
    # against 4/10, with P(new) near 0 before and after, and no edit moved the two trained
    # paraphrases either). test_smollm2 asserts a paraphrase on a real model.
    assert efficacy / N_EDITS >= 0.8
    assert spared / (N_EDITS * len(bystanders)) >= 0.95
