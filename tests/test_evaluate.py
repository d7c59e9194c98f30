"""CounterFact metrics: hand-computed cases, editing the trained tiny GPT-2, the CLI."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from cli_runner import run_json
from factstore import api
from factstore.analysis import metrics
from factstore.domain import EditRequest, Record
from factstore.release import scoring
from factstore.rome.hparams import default_hparams
from factstore.rome.scoring import target_probs
from factstore.studies import evaluation
from factstore.weights.replay import MODES
from tiny_models import RELATIONS, TRAINED_EDIT_SETTINGS, Recipe, fact_sentences, make_facts

REPO = Path(__file__).resolve().parents[1]
WORDS = ["[UNK]", "x", "y", "z", "is", "in", "at", "near", "Paris", "Rome", "New", "York"]


class Bigram(nn.Module):
    """A language model whose next-token distribution depends only on the current token."""

    config = SimpleNamespace()

    def __init__(self, rows: dict[str, dict[str, float]]) -> None:
        super().__init__()
        probs = torch.full((len(WORDS), len(WORDS)), 1e-6)
        for word, row in rows.items():
            for nxt, p in row.items():
                probs[WORDS.index(word), WORDS.index(nxt)] = p
        self.logp = nn.Parameter(torch.log(probs / probs.sum(1, keepdim=True)), requires_grad=False)
        # the scorers run the body, then the LM head at chosen positions only: the body's
        # "hidden state" is the token's one-hot vector, the head a matrix whose row i is logp[i]
        self.head = nn.Linear(len(WORDS), len(WORDS), bias=False)
        self.head.weight.data.copy_(self.logp.data.T)

    def base_model(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, use_cache: bool = False
    ) -> SimpleNamespace:
        return SimpleNamespace(last_hidden_state=nn.functional.one_hot(input_ids, len(WORDS)).float())

    def get_output_embeddings(self) -> nn.Module:
        return self.head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> SimpleNamespace:
        return SimpleNamespace(logits=self.logp[input_ids])


@pytest.fixture(scope="module")
def word_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[UNK]")


def test_metrics_on_a_model_with_known_probabilities(word_tokenizer) -> None:  # type: ignore[no-untyped-def]
    model = Bigram(
        {
            "in": {"Paris": 0.6, "Rome": 0.3, "New": 0.1},  # rewrite prompt: still prefers the true object
            "at": {"Paris": 0.2, "Rome": 0.5, "New": 0.3},  # paraphrase 1: prefers the new one
            "near": {"Paris": 0.7, "Rome": 0.1, "New": 0.2},  # neighbours: keep the true object
            "New": {"York": 0.5, "Paris": 0.5},
        }
    )
    record = Record(
        EditRequest("{} is in", "x", "Rome", "Paris"), paraphrases=("y is in", "y is at"), neighbours=("z is near",)
    )
    scores = metrics.score_record(model, word_tokenizer, record)
    assert scores.efficacy == [False] and scores.paraphrase == [False, True] and scores.neighbourhood == [True]
    assert scores.efficacy_margin[0] == pytest.approx(0.3 - 0.6, abs=1e-5)
    assert scores.neighbourhood_margin[0] == pytest.approx(0.7 - 0.1, abs=1e-5)
    # a two-token object: P = geometric mean over its tokens, P(New York | in) = sqrt(0.1 * 0.5)
    multi = metrics.score_record(model, word_tokenizer, Record(EditRequest("{} is in", "x", "New York", "Paris")))
    assert multi.efficacy_margin[0] == pytest.approx(math.sqrt(0.1 * 0.5) - 0.6, abs=1e-5)

    flipped = Record(EditRequest("{} is at", "x", "Rome", "Paris"), neighbours=("z is at",))
    totals = metrics.aggregate([scores, metrics.score_record(model, word_tokenizer, flipped)])
    assert totals["n"] == 2 and totals["ES"] == 50.0 and totals["PS"] == 50.0 and totals["NS"] == 50.0
    assert totals["S"] == pytest.approx(50.0) and totals["EM"] == pytest.approx(
        100 * ((0.3 - 0.6) + (0.5 - 0.2)) / 2, abs=1e-3
    )
    assert totals["GE"] is None  # no generations were sampled
    assert metrics.harmonic_mean([100.0, 50.0, 0.0]) == 0.0
    assert metrics.harmonic_mean([100.0, 50.0, 50.0]) == pytest.approx(3 / (1 / 100 + 2 / 50))


def test_shared_rows_and_head_only_at_targets_match_a_full_forward_pass(gpt2_tokenizer) -> None:  # type: ignore[no-untyped-def]
    from factstore.rome.scoring import next_token_ids, target_logprobs
    from tiny_models import random_gpt2

    model = random_gpt2(seed=3).eval()
    texts = ["The Louvre is in", "The Louvre is in", "Big Ben stands in the city of", "The Louvre is in"]
    targets = ["Paris", "Rome", "London", "New York City"]  # one-token targets share a row

    def naive(text: str, target: str) -> float:
        prompt, tgt = gpt2_tokenizer(text)["input_ids"], gpt2_tokenizer(" " + target)["input_ids"]
        with torch.no_grad():
            logp = model(torch.tensor([prompt + tgt])).logits[0].log_softmax(-1)
        return sum(float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(tgt)) / len(tgt)

    got = target_logprobs(model, gpt2_tokenizer, texts, targets, batch_size=2)
    assert got.tolist() == pytest.approx([naive(t, o) for t, o in zip(texts, targets)], abs=1e-4)
    with torch.no_grad():
        expected = [int(model(torch.tensor([gpt2_tokenizer(t)["input_ids"]])).logits[0, -1].argmax()) for t in texts]
    assert next_token_ids(model, gpt2_tokenizer, texts, batch_size=3) == expected


def test_release_records_judge_every_edit_on_efficacy_and_a_spread_sample_on_the_rest(
    word_tokenizer, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    model = Bigram({"in": {"Paris": 0.6, "Rome": 0.4}})
    monkeypatch.setattr(scoring, "RELEASE_SAMPLE", 2)
    requests = [EditRequest("{} is in", s, "Rome", "Paris") for s in ("x", "y", "z")] + [
        EditRequest("{} is in", "x", "York")
    ]
    records = scoring.release_records(model, word_tokenizer, requests, ["y is at. {}"])
    assert [r.request.subject for r in records] == ["x", "y", "z"]  # the request without an old target is not judged
    assert [len(r.paraphrases) for r in records] == [1, 1, 0]  # sampled: i * 3 // 2 for i < 2
    assert [len(r.neighbours) for r in records] == [2, 2, 0]
    assert records[0].neighbours == ("y is in", "z is in") and records[0].neighbour_answers == ("Paris", "Paris")


def test_ngram_entropy_by_hand() -> None:
    # bigrams of "a b a b": (a,b) twice, (b,a) once
    assert metrics.ngram_entropy("a b a b", 2) == pytest.approx(
        -(2 / 3) * math.log2(2 / 3) - (1 / 3) * math.log2(1 / 3)
    )
    assert metrics.ngram_entropy("the the the the", 2) == 0.0
    repetitive, varied = "the cat sat " * 10, "the quick brown fox jumps over a lazy dog while birds sing"
    assert metrics.weighted_entropy(varied) > metrics.weighted_entropy(repetitive)


def _tiny_records(n: int, model_dir: Path) -> list[Record]:
    """City facts the trained tiny GPT-2 knows, as CounterFact records: the new object rotates,
    a held-out paraphrase, neighbours that share the true city."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = AutoModelForCausalLM.from_pretrained(model_dir).eval(), AutoTokenizer.from_pretrained(model_dir)
    templates, held_out, objects = RELATIONS["city"]
    facts = [f for f in make_facts(Recipe()) if f.relation == "city"]

    def knows(subject: str, target: str) -> bool:
        with torch.no_grad():
            top = int(model(**tok(templates[0].format(subject), return_tensors="pt")).logits[0, -1].argmax())
        return top == tok(" " + target)["input_ids"][0]

    records = []
    for fact in [f for f in facts if knows(f.subject, f.target)][:n]:
        others = [o.strip() for o in objects if o.strip() != fact.target]
        new = others[len(records) % len(others)]
        neighbours = tuple(
            templates[0].format(o.subject) for o in facts if o.target == fact.target and o.subject != fact.subject
        )[:5]
        records.append(
            Record(
                EditRequest(templates[0], fact.subject, new, fact.target), (held_out.format(fact.subject),), neighbours
            )
        )
    assert len(records) == n
    return records


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_single_edits_raise_efficacy_on_the_trained_tiny_gpt2(db_url: str, tiny_gpt2_dir: Path, tmp_path: Path) -> None:
    api.upgrade_database(db_url)
    store = api.open_store()
    api.add_model(store, "facts", str(tiny_gpt2_dir))
    # the tiny model has only seen its fact sentences: its key statistics come from them, and
    # no context prefixes, a looser delta clamp (settings as in tests/test_behaviour_tiny_gpt2.py)
    corpus = tmp_path / "facts.json"
    corpus.write_text(json.dumps(fact_sentences(Recipe())))
    api.compute_stats(store, "facts", api.StatsOptions(layer=2, corpus=str(corpus), tokens=100_000), device="cpu")
    hp = replace(default_hparams("gpt2", 4, 128), **TRAINED_EDIT_SETTINGS)
    result = evaluation.single(
        store, "facts", _tiny_records(10, tiny_gpt2_dir), api.EvalSettings(fluency=None), hparams=hp
    )
    assert result["unedited"]["ES"] <= 10 and result["ES"] >= 90
    assert result["unedited"]["NS"] >= 90 and result["NS"] >= 70
    assert result["S"] == pytest.approx(metrics.harmonic_mean([result["ES"], result["PS"], result["NS"]]))


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_cli_eval_json_single_and_lifelong(tiny_store, tmp_path: Path, gpt2_tokenizer) -> None:  # type: ignore[no-untyped-def]
    data = REPO / "tests" / "data" / "counterfact_8.json"

    def cli(*args: str) -> dict:
        return run_json("eval", "--model", "tiny", "--dataset", str(data), *args)  # type: ignore[return-value]

    single = cli("--n", "1")
    assert single == api.evaluate_model(
        tiny_store, "tiny", str(data), 1
    )  # the command is the library function, deterministic
    first = json.loads(data.read_text())[0]["requested_rewrite"]
    base = AutoModelForCausalLM.from_pretrained(tiny_store.get_base_model("tiny").source).eval()
    text = first["prompt"].replace("{}", first["subject"])
    p_new, p_true = target_probs(
        base, gpt2_tokenizer, [text, text], [first["target_new"]["str"], first["target_true"]["str"]]
    ).tolist()
    assert single["n"] == 1 and single["unedited"]["ES"] == (100.0 if p_new > p_true else 0.0)
    assert single["unedited"]["EM"] == pytest.approx(100 * (p_new - p_true), abs=1e-4) and single["GE"] > 0
    run = tmp_path / "run"
    lifelong = cli(
        "--n",
        "2",
        "--mode",
        "lifelong",
        "--every",
        "1",
        "--no-fluency",
        "--heldout-tokens",
        "300",
        "--run-dir",
        str(run),
    )
    assert [c["edits"] for c in lifelong["curve"]] == [1, 2] and set(lifelong["modes"]) == set(
        MODES
    )  # spread's C below computed on the way
    assert {k: lifelong[k] for k in metrics.METRICS} == {
        k: lifelong["modes"]["joint"][k] for k in metrics.METRICS
    }  # joint is the default
    assert lifelong["curve"][-1]["sequential"]["ES"] == lifelong["modes"]["sequential"]["ES"]
    assert Path(lifelong["png"]).parent == run and Path(lifelong["png"]).exists() and lifelong["GE"] is None
    assert lifelong["unedited"]["perplexity"] > 1 and lifelong["modes"]["joint"]["perplexity"] > 1
    assert api.list_edits(tiny_store, "tiny") == []  # lifelong edits live in the run's own store
