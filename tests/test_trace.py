"""Causal tracing: the restoration maps, their invariants, figures, and the recommended layer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoModelForCausalLM

from cli_runner import run_json
from factstore import api
from factstore.analysis import causal_trace as trace
from factstore.domain import TracedFact
from factstore.errors import InvalidEditRequest
from factstore.studies import figures
from tiny_models import Recipe, make_facts

REPO = Path(__file__).resolve().parents[1]
QUICK = trace.TraceSettings(samples=4, window=2)


@pytest.fixture(scope="module")
def trained(tiny_gpt2_dir: Path, gpt2_tokenizer):  # type: ignore[no-untyped-def]
    """The trained tiny GPT-2 and city facts it knows."""
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir).eval()
    known = []
    for fact in (f for f in make_facts(Recipe()) if f.relation == "city"):
        with torch.no_grad():
            top = int(model(**gpt2_tokenizer(f"city of {fact.subject}", return_tensors="pt")).logits[0, -1].argmax())
        if top == gpt2_tokenizer(" " + fact.target)["input_ids"][0]:
            known.append(fact)
    assert len(known) >= 10
    return model, known


def test_restoring_every_state_gives_back_the_clean_probability(trained, gpt2_tokenizer) -> None:  # type: ignore[no-untyped-def]
    model, known = trained
    fact = known[0]
    tracer = trace.Tracer(model, gpt2_tokenizer, TracedFact("city of {}", fact.subject, fact.target), QUICK)
    T, L = tracer.ids.shape[1], tracer.n_layers
    everything = [("hidden", layer, t) for layer in range(L) for t in range(T)]
    corrupted, restored = tracer.restored([[], everything]).tolist()
    assert restored == pytest.approx(tracer.clean_prob, rel=1e-4)
    assert corrupted < 0.5 * tracer.clean_prob  # the model knows the fact; noise on the subject hides it
    # the last layer's residual state at the last token is all the head sees
    assert tracer.restoration_map("hidden")[-1, -1] == pytest.approx(tracer.clean_prob, rel=1e-4)


def test_maps_have_the_right_shape_and_the_same_seed_gives_the_same_numbers(trained, gpt2_tokenizer) -> None:  # type: ignore[no-untyped-def]
    model, known = trained
    fact = known[1]
    home = TracedFact("the home town of {}", fact.subject, fact.target)
    first = trace.trace(model, gpt2_tokenizer, home, QUICK)
    again = trace.trace(model, gpt2_tokenizer, home, QUICK)
    other = trace.trace(
        model,
        gpt2_tokenizer,
        home,
        trace.TraceSettings(samples=4, window=2, seed=1),
    )
    T = len(gpt2_tokenizer(f"the home town of {fact.subject}")["input_ids"])
    assert set(first.scores) == set(trace.KINDS)
    assert all(v.shape == (T, model.config.n_layer) for v in first.scores.values())
    assert (
        all(torch.equal(first.scores[k], again.scores[k]) for k in trace.KINDS)
        and first.corrupted_prob == again.corrupted_prob
    )
    assert not torch.equal(first.scores["hidden"], other.scores["hidden"])
    assert first.subject == (T - 2, T - 1)  # "<First> <Surname>" are the last two tokens


def test_figures_are_valid_images_and_json_holds_every_number(trained, gpt2_tokenizer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model, known = trained
    result = trace.trace(model, gpt2_tokenizer, TracedFact("city of {}", known[2].subject, known[2].target), QUICK)
    report = figures.write_fact_trace(result, tmp_path)
    assert len(report["png"]) == 3
    for path in report["png"]:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size[0] > 300 and image.size[1] > 200
    data = json.loads(Path(report["json"]).read_text())
    assert data["scores"]["mlp"] == result.scores["mlp"].tolist() and data["peak_mlp_layer"] == report["peak_mlp_layer"]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_dataset_trace_stores_the_layer_that_edit_add_auto_uses(
    trained, db_url: str, tiny_gpt2_dir: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    _, known = trained
    facts = [{"subject": f.subject, "prompt": f"city of {f.subject}", "attribute": f.target} for f in known[:6]]
    # a fact the model knows whose subject ends inside a token cannot be traced: skipped, and said so
    cut = {"subject": known[0].subject[:-2], "prompt": f"city of {known[0].subject}", "attribute": known[0].target}
    dataset = tmp_path / "known.json"
    dataset.write_text(json.dumps([cut, *facts]))
    api.upgrade_database(db_url)
    store = api.open_store()
    api.add_model(store, "facts", str(tiny_gpt2_dir))
    with pytest.raises(InvalidEditRequest, match="no traced layer"):
        api.add_edit(
            store,
            "facts",
            api.EditRequest("city of {}", known[0].subject, "Rome"),
            api.EditOptions(layer="auto"),
            device="cpu",
        )
    options = api.TraceOptions(out=str(tmp_path / "avg"), settings=api.TraceSettings(samples=4, window=2))
    result = api.trace_dataset(store, "facts", str(dataset), 5, options, device="cpu")
    averaged = json.loads(Path(result["json"]).read_text())["average_indirect_effect"]["mlp"]
    assert len(averaged) == len(trace.CATEGORIES) and len(averaged[2]) == 4
    last_subject = averaged[trace.CATEGORIES.index("last subject token")]
    assert (
        result["n"] == 5
        and [x["subject"] for x in result["skipped"]] == [cut["subject"]]
        and result["peak_mlp_layer"] == last_subject.index(max(last_subject))
    )
    assert store.get_base_model("facts").recommended_layer == result["peak_mlp_layer"]
    outcome = api.add_edit(
        store,
        "facts",
        api.EditRequest("city of {}", known[0].subject, "Rome"),
        api.EditOptions(layer="auto"),
        device="cpu",
    )
    assert outcome.edit.layer == result["peak_mlp_layer"]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_cli_trace_json(db_url: str, tiny_gpt2_dir: Path, tmp_path: Path, trained) -> None:  # type: ignore[no-untyped-def]
    _, known = trained
    api.upgrade_database(db_url)
    api.add_model(api.open_store(), "facts", str(tiny_gpt2_dir))
    result = run_json(
        "trace",
        "--model",
        "facts",
        "--prompt",
        "city of {}",
        "--subject",
        known[0].subject,
        "--samples",
        "3",
        "--window",
        "2",
        "--out",
        str(tmp_path / "t"),
    )
    assert isinstance(result, dict)
    assert {"png", "json", "peak_mlp_layer", "clean_prob", "corrupted_prob"} <= result.keys()
    assert result["corrupted_prob"] < result["clean_prob"] and all(Path(p).exists() for p in result["png"])


@pytest.mark.slow
def test_smollm2_maps(smollm2, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model, tok = smollm2.model, smollm2.tokenizer
    settings = trace.TraceSettings(samples=3, window=10, kinds=("mlp",))
    result = trace.trace(model, tok, TracedFact("{} is located in the city of", "The Eiffel Tower"), settings)
    T = len(tok("The Eiffel Tower is located in the city of")["input_ids"])
    assert result.answer.strip() == "Paris" and result.scores["mlp"].shape == (T, 30)
    assert result.corrupted_prob < result.clean_prob
    report = figures.write_fact_trace(result, tmp_path)
    with Image.open(report["png"][0]) as image:
        assert image.format == "PNG"
