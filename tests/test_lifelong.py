"""The lifelong protocol: a resumable run folder, scores per compile mode and curve point, the
held-out perplexity check and retraction at random."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from pathlib import Path

import pytest

from factstore import api
from factstore.analysis.perplexity import perplexity, token_nll
from factstore.datasets import read_records
from factstore.editing.session import EditSession
from factstore.errors import InvalidArgument
from factstore.options import FluencySettings
from factstore.studies import lifelong
from factstore.weights import corpus as corpora
from factstore.weights import replay

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data" / "counterfact_8.json"


def test_held_out_text_is_never_read_by_the_statistics(gpt2_tokenizer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    texts = [f"Text number {i} has a few words in it." for i in range(50)]
    (tmp_path / "c.json").write_text(__import__("json").dumps(texts))
    corpus = corpora.load_corpus(str(tmp_path / "c.json"))
    used = corpora.texts_covering(corpus, gpt2_tokenizer, 100)
    rows = corpora.held_out(corpus, gpt2_tokenizer, 60, used_tokens=100)
    first_held = len(texts) - len(rows)
    assert first_held >= used and sum(map(len, rows)) >= 60
    assert rows == corpora.rows(gpt2_tokenizer, texts[first_held:])  # the last texts, in order
    with pytest.raises(api.FactStoreError, match="held-out"):
        corpora.held_out(corpus, gpt2_tokenizer, 10_000, used_tokens=100)


def test_perplexity_is_exp_mean_nll() -> None:
    import torch
    from torch import nn

    class Uniform(nn.Module):  # every next token equally likely: perplexity is the vocabulary size
        config = type("C", (), {"model_type": "x"})()

        def get_input_embeddings(self) -> nn.Module:
            return nn.Embedding(7, 2)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, use_cache: bool) -> object:
            return type("O", (), {"logits": torch.zeros(*input_ids.shape, 7)})()

    assert perplexity(Uniform(), [[1, 2, 3], [4, 5], [6, 1, 2, 3, 4]]) == pytest.approx(7.0)  # type: ignore[arg-type]


def test_token_nll_is_per_row_in_order_without_padding() -> None:
    import torch
    from torch import nn

    table = torch.randn(9, 9, generator=torch.Generator().manual_seed(0))

    class Bigram(nn.Module):  # next-token logits from the current token alone: each NLL is known
        config = type("C", (), {"model_type": "x"})()

        def get_input_embeddings(self) -> nn.Module:
            return nn.Embedding(9, 2)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, use_cache: bool) -> object:
            return type("O", (), {"logits": table[input_ids]})()

    rows = [[1, 2, 3, 4, 5, 6], [7, 8], [5], [0, 3, 3]]  # unsorted, one too short to predict
    got = token_nll(Bigram(), rows, batch_size=2)  # type: ignore[arg-type]
    for row, nll in zip(rows, got, strict=True):
        want = [-float(torch.log_softmax(table[a], -1)[b]) for a, b in itertools.pairwise(row)]
        assert nll.tolist() == pytest.approx(want, abs=1e-6)


def test_a_stopped_runs_scores_cover_the_whole_log_first_then_coarse_to_fine() -> None:
    order = sorted(range(100, 1501, 100), key=lambda i: lifelong._scoring_order(i, 1500, 100))
    assert order[:8] == [1500, 800, 400, 1200, 200, 600, 1000, 1400]  # then the odd hundreds
    assert sorted(order) == list(range(100, 1501, 100))
    assert sorted([7, 5], key=lambda i: lifelong._scoring_order(i, 7, 5)) == [7, 5]  # an end off the grid first


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_lifelong_run_resumes_scores_each_mode_once_and_retracts(
    tiny_store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    records = read_records(str(DATA), 4)
    run = tmp_path / "run"
    calls = {"slices": 0}
    real_add = lifelong.add_requests

    def interrupted(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["slices"] += 1
        if calls["slices"] == 2:
            raise KeyboardInterrupt  # as Ctrl-C in the second slice of 2 records
        return real_add(*args, **kwargs)

    monkeypatch.setattr(lifelong, "add_requests", interrupted)
    plan = lifelong.LifelongSettings(every=2, batch=2, modes=("sequential",), heldout_tokens=300, folder=run)
    with pytest.raises(KeyboardInterrupt):
        lifelong.lifelong(tiny_store, "tiny", records, settings=plan)
    monkeypatch.setattr(lifelong, "add_requests", real_add)

    computed: list[int] = []
    real_run_many = EditSession.run_many
    monkeypatch.setattr(EditSession, "run_many", lambda self, ids: computed.extend(ids) or real_run_many(self, ids))
    first = lifelong.lifelong(tiny_store, "tiny", records, settings=plan)
    assert len(computed) == 2  # only the interrupted slice's two records were computed again
    assert [c["edits"] for c in first["curve"]] == [2, 4] and set(first["modes"]) == {"sequential"}
    assert first["modes"]["sequential"]["edits"] == 4 and first["unedited"]["perplexity"] > 1

    applied: list[str] = []
    real_apply = lifelong.apply_edits
    monkeypatch.setattr(
        lifelong,
        "apply_edits",
        lambda m, e, c, mode, inputs=None: applied.append(mode) or real_apply(m, e, c, mode, inputs),
    )
    computed.clear()
    both = lifelong.lifelong(
        tiny_store,
        "tiny",
        records,
        settings=lifelong.LifelongSettings(
            every=2,
            batch=2,
            modes=("sequential", "joint", "null-space"),
            heldout_tokens=300,
            retract=2,
            seed=1,
            folder=run,
        ),
    )
    # the whole log in each mode first (what a stopped run most needs), then the default mode's
    # earlier curve point (null-space is scored at the end only), then the retraction's joint rebuild
    assert computed == [] and applied == ["joint", "null-space", "joint", "joint"]
    assert "null-space" not in both["curve"][0] and both["curve"][1]["null-space"]["edits"] == 4
    monkeypatch.setattr(
        replay, "NULL_SPACE_THRESHOLD", 0.0
    )  # no null space: the mode refuses this log, and the run says so
    refused = lifelong.lifelong(
        tiny_store,
        "tiny",
        records,
        FluencySettings(prompts=1, new_tokens=4),
        settings=lifelong.LifelongSettings(
            every=2, batch=2, modes=("null-space",), heldout_tokens=300, fluency_sample=2, folder=tmp_path / "run2"
        ),
    )
    assert "null space only 0 dimensions" in refused["modes"]["null-space"]["refused"]
    assert refused["unedited"]["GE"] > 0  # the GE gate's reference: the unedited model on the same sample
    # a study of a finished run (bench/band_fluency.py) samples generations as the run does
    store2 = lifelong.run_store(tmp_path / "run2")
    try:
        again = EditSession(store2, "tiny", device="cpu")
        sampled = lifelong.score_variant(
            again, records[:2], lambda m: None, None, FluencySettings(prompts=1, new_tokens=4)
        )
        assert sampled["GE"] == pytest.approx(refused["unedited"]["GE"])
        assert lifelong.score_variant(again, records[:2], lambda m: None, None).get("GE") is None
    finally:
        store2.close()
    assert both["modes"]["sequential"] == first["modes"]["sequential"]  # kept, not recomputed
    r = both["retraction"]
    assert r["retracted"] == 2 and r["kept"] == 2
    assert api.list_edits(tiny_store, "tiny") == []  # the user's own store is untouched
    with pytest.raises(api.FactStoreError, match="another records_sha256"):
        lifelong.lifelong(tiny_store, "tiny", records[:3], settings=plan)  # the folder holds another run
    with pytest.raises(api.FactStoreError, match="another batch"):
        lifelong.lifelong(
            tiny_store,
            "tiny",
            records,
            settings=lifelong.LifelongSettings(every=2, batch=3, heldout_tokens=300, folder=run),
        )
    with pytest.raises(api.FactStoreError, match="retracted 2 edits"):
        lifelong.lifelong(
            tiny_store,
            "tiny",
            records,
            settings=lifelong.LifelongSettings(
                every=2, batch=2, modes=("joint",), heldout_tokens=300, retract=3, seed=1, folder=run
            ),
        )
    assert set(replay.MODES) >= {"sequential", "joint"}


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_band_run_draws_the_band_curve_and_retracts_by_rebuilding_the_band(tiny_store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    records = read_records(str(DATA), 4)
    plan = lifelong.LifelongSettings(every=2, batch=2, heldout_tokens=300, retract=2, band=2, folder=tmp_path / "run")
    # a band log compiles only as a band: another mode asked for is refused before anything is registered
    with pytest.raises(InvalidArgument, match="compiles only in band mode; give --compile-mode band or leave it out"):
        lifelong.lifelong(tiny_store, "tiny", records, settings=replace(plan, modes=("band", "joint")))
    state_file = tmp_path / "run" / "state.json"
    assert not state_file.exists() or "unedited" not in json.loads(state_file.read_text())  # _register never began
    result = lifelong.lifelong(tiny_store, "tiny", records, settings=plan)  # no modes: the log's own
    assert [sorted(c) for c in result["curve"]] == [["band", "edits", "unedited"]] * 2
    assert list(result["modes"]) == ["band"]
    assert result["modes"]["band"]["edits"] == 4
    state = json.loads(state_file.read_text())
    assert state["retraction"]["mode"] == "band" and result["retraction"]["kept"] == 2
