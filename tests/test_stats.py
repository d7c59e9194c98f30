"""Key statistics: several layers from one pass, shards that merge into a single pass's C."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from factstore import api, arch
from factstore.errors import StatisticsError
from factstore.results import StatsLayers, StatsRecord
from factstore.weights import corpus, shards, stats
from tiny_models import random_gpt2

TEXTS = [
    f"Sentence number {i} talks about the city of Paris and the river {'and the sea ' * (i % 5)}." for i in range(90)
]


def _spec(model, text: corpus.Corpus, layer: int, tokens: int = 900) -> stats.StatsSpec:  # type: ignore[no-untyped-def]
    return stats.StatsSpec("sha256:test", layer, arch.down_proj_name(model, layer), text.sha256, tokens, "float64")


def _matrix(found: stats.StatsFile) -> torch.Tensor:
    return stats.load_matrix(found.path, found.sha256)


def test_shards_merge_into_the_single_pass(gpt2_tokenizer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = random_gpt2(seed=0)
    text = corpus.Corpus("test", "c" * 64, TEXTS)
    spec = _spec(model, text, 1)
    monkeypatch.setenv("FACTSTORE_CACHE", str(tmp_path / "single"))
    single = stats.compute(model, gpt2_tokenizer, spec, text)
    monkeypatch.setenv("FACTSTORE_CACHE", str(tmp_path / "sharded"))
    parts = [shards.compute(model, gpt2_tokenizer, [spec], text, (i, 3))[0] for i in range(3)]
    assert sum(p.tokens for p in parts) == single.tokens == 900 and all(p.tokens > 0 for p in parts)
    with pytest.raises(StatisticsError, match="hold 900 keys, a single pass sums 901"):
        shards.merge_found(spec, 901)
    merged = shards.merge_found(spec, 900)
    assert merged.tokens == 900
    assert torch.allclose(_matrix(merged), _matrix(single), rtol=1e-12, atol=0)
    merged_names, single_names = stats.load_names(merged.path), stats.load_names(single.path)
    assert merged_names is not None and single_names is not None and float(single_names.norm()) > 0
    assert torch.allclose(merged_names, single_names, rtol=1e-12, atol=0)


PLACES = ["Paris", "Rome", "New York", "Berlin Wall", "Paris"]


def test_the_names_moment_is_the_mean_of_the_names_keys_each_read_alone(
    gpt2_tokenizer, monkeypatch, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """Beside C, a C file holds E[k k^T] over the corpus's names (rome/names.py: the places here,
    never a text's capitalised first word), each name's key read at its last token with the name
    alone as the prompt (where an edit's subject sits), every occurrence counted."""
    from factstore.rome.hooks import layers_inputs

    monkeypatch.setenv("FACTSTORE_CACHE", str(tmp_path))
    model = random_gpt2(seed=0)
    texts = [f"Sentence number {i} talks about the city of {PLACES[i % 5]} and the river." for i in range(20)]
    text = corpus.Corpus("test", "c" * 64, texts)
    found = stats.compute(model, gpt2_tokenizer, _spec(model, text, 1, tokens=10_000), text)

    def alone(name: str) -> torch.Tensor:
        ids = gpt2_tokenizer(name)["input_ids"]
        keys = layers_inputs(model, [1], torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))[1][0]
        return keys[-1].double()

    K = torch.stack([alone(PLACES[i % 5]) for i in range(20)])  # (20, d_ff): one name per text
    names = stats.load_names(found.path)
    assert names is not None
    assert torch.allclose(names, K.T @ K / 20, rtol=1e-5, atol=1e-7)  # float32 keys, batched with other names
    # not the keys of the names read in their sentences (what factstore 0.x summed)
    ids = gpt2_tokenizer(texts[0])["input_ids"]
    in_text = layers_inputs(model, [1], torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))[1][0]
    paris = [gpt2_tokenizer.decode(i) for i in ids].index(" Paris")
    assert not torch.allclose(K[0], in_text[paris].double(), rtol=1e-2)
    # a budget that ends just before the 11th text's name ends sums the first 10 names only
    lengths = [len(gpt2_tokenizer(t)["input_ids"]) for t in texts]
    at = sum(lengths[:10]) + [gpt2_tokenizer.decode(i) for i in gpt2_tokenizer(texts[10])["input_ids"]].index(" Paris")
    cut = stats.compute(model, gpt2_tokenizer, _spec(model, text, 1, tokens=at), text)
    cut_names = stats.load_names(cut.path)
    assert cut_names is not None and cut.tokens == at
    assert torch.allclose(cut_names, K[:10].T @ K[:10] / 10, rtol=1e-5, atol=1e-7)


def test_merge_refuses_a_missing_or_foreign_shard(
    gpt2_tokenizer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("FACTSTORE_CACHE", str(tmp_path / "cache"))
    model = random_gpt2(seed=0)
    text = corpus.Corpus("test", "c" * 64, TEXTS)
    spec, other = _spec(model, text, 1), _spec(model, text, 1, tokens=800)
    shards.compute(model, gpt2_tokenizer, [spec], text, (0, 2))
    with pytest.raises(StatisticsError, match=r"not every shard of layer 1 is here \(found 1 of 2\)"):
        shards.merge_found(spec, 900)
    elsewhere = tmp_path / "other-machine"
    elsewhere.mkdir()
    foreign = shards.compute(model, gpt2_tokenizer, [other], text, (1, 2))[
        0
    ]  # another token budget's shard, renamed as ours
    foreign.path.rename(elsewhere / f"{spec.key()}.shard-1-of-2.safetensors")
    with pytest.raises(StatisticsError, match="computed for other settings"):
        shards.merge_found(spec, 900, [elsewhere])
    copy = elsewhere / f"{spec.key()}.shard-1-of-2.safetensors"  # shard 0 renamed as shard 1
    copy.write_bytes(shards.shard_path(spec, 0, 2).read_bytes())
    with pytest.raises(StatisticsError, match="computed for other settings"):
        shards.merge_found(spec, 900, [elsewhere])
    assert stats.cached(spec) is None


def test_several_layers_from_one_pass_stop_at_the_highest(
    gpt2_tokenizer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("FACTSTORE_CACHE", str(tmp_path / "one-by-one"))
    model = random_gpt2(seed=0)  # 3 blocks
    text = corpus.Corpus("test", "c" * 64, TEXTS)
    alone = [_matrix(stats.compute(model, gpt2_tokenizer, _spec(model, text, layer), text)) for layer in (0, 1)]
    monkeypatch.setenv("FACTSTORE_CACHE", str(tmp_path / "together"))
    ran: list[int] = []
    handles = [
        block.register_forward_hook(lambda *_a, i=i: ran.append(i)) for i, block in enumerate(arch.blocks(model))
    ]
    together = stats.compute_many(model, gpt2_tokenizer, [_spec(model, text, 0), _spec(model, text, 1)], text)
    for handle in handles:
        handle.remove()
    assert set(ran) == {0}  # block 1's MLP input is the last thing needed: block 1 never finishes, block 2 never runs
    assert all(torch.equal(_matrix(t), a) for t, a in zip(together, alone))
    with pytest.raises(StatisticsError, match="a layer given twice"):  # it would be summed twice
        stats.compute_many(model, gpt2_tokenizer, [_spec(model, text, 0), _spec(model, text, 0)], text)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_cli_shards_and_merge_print_path_and_sha256(tiny_store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from factstore.cli.main import app

    corpus_path = tiny_store.get_covariance(1).corpus
    runner = CliRunner()

    def cli(*args: str) -> dict:
        done = runner.invoke(
            app,
            ["stats", *args, "--model", "tiny", "--layer", "0", "--corpus", corpus_path, "--tokens", "1500", "--json"],
        )
        assert done.exit_code == 0, done.output
        return json.loads(done.stdout)

    parts = [cli("compute", "--shard", f"{i}/2") for i in range(2)]
    merged = cli("merge")
    single = api.compute_stats(
        tiny_store, "tiny", api.StatsOptions(layer=0, corpus=corpus_path, tokens=1500), device="cpu"
    )
    assert isinstance(single, StatsRecord)
    assert single.id == merged["id"] and single.sha256 == merged["sha256"]  # recorded: the next edit uses it
    twice = api.compute_stats(
        tiny_store, "tiny", api.StatsOptions(layers=(1, 1), corpus=corpus_path, tokens=1500), device="cpu"
    )
    assert isinstance(twice, StatsLayers)
    assert twice.layers[0] == twice.layers[1] and twice.layers[0].layer == 1  # a layer asked twice is computed once
    for row in [*parts, merged]:
        assert stats.file_sha256(Path(row["path"])) == row["sha256"]
    bad = runner.invoke(app, ["stats", "compute", "--model", "tiny", "--shard", "2/2"])
    assert isinstance(bad.exception, StatisticsError) and "the shard must be 0 to 1" in str(
        bad.exception
    )  # the entry point prints it in one line


def test_a_pulled_c_of_another_corpus_never_displaces_the_stores_own(tiny_store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The review's attack: a statistics repository's C for the same layer under another corpus
    name, recorded after the store's own, steered every later local edit."""
    from safetensors.torch import save_file

    from factstore.domain import Covariance
    from factstore.editing.session import EditSession
    from factstore.files import file_sha256

    session = EditSession(tiny_store, "tiny", device="cpu")
    hp = session.hparams()
    own = session.covariance(hp.layer, hp)
    dim = stats.load_matrix(Path(own.path)).shape[0]
    spec = stats.StatsSpec(session.base.identity, hp.layer, own.module, "c" * 64, 5000, own.dtype)
    crafted = torch.eye(dim) * 1e-3  # finite, symmetric, positive definite: every check of a shipped file passes
    source = tmp_path / "crafted.safetensors"
    save_file(
        {"C": crafted.float()},
        str(source),
        metadata={**{k: str(v) for k, v in spec.__dict__.items()}, "tokens": "5000"},
    )
    found = stats.install_shipped(source, file_sha256(source), spec, dim)
    assert stats.is_shipped(found.path)
    pulled = tiny_store.create_covariance(
        session.base.id,
        spec.key(),
        record=Covariance(
            0, hp.layer, own.module, "eve-corpus", "c" * 64, 5000, own.dtype, str(found.path), found.sha256
        ),
    )
    assert pulled.id > own.id  # the newest C of the layer
    assert EditSession(tiny_store, "tiny", device="cpu").covariance(hp.layer, hp).id == own.id
    outcome = api.add_edit(
        tiny_store, "tiny", api.EditRequest("{} is located in the city of", "Big Ben", "Oslo"), device="cpu"
    )
    assert tiny_store.get_edit(outcome.edit.id).covariance_id == own.id


def _record_shipped(store, base_id: int, spec: stats.StatsSpec, source: Path, corpus_name: str):  # type: ignore[no-untyped-def]
    """Record SOURCE as a C pulled from elsewhere for SPEC (copied into the cache's shipped/ folder)."""
    from factstore.domain import Covariance
    from factstore.files import file_sha256

    dim = stats.load_matrix(source).shape[0]
    found = stats.install_shipped(source, file_sha256(source), spec, dim)
    record = Covariance(
        0,
        spec.layer,
        spec.module,
        corpus_name,
        spec.corpus_sha256,
        found.tokens,
        spec.dtype,
        str(found.path),
        found.sha256,
    )
    return store.create_covariance(base_id, spec.key(), record=record)


def test_a_pulled_c_is_taken_by_its_spec_never_for_being_newest(
    tiny_store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """Issue 23, item 2, for a layer the store has no C of its own on: a pulled C whose spec is
    the one the store's own text gives is taken; a crafted one of another corpus, recorded after
    it (the newest C of the layer), is not."""
    from safetensors.torch import save_file

    from factstore.editing.session import EditSession

    session = EditSession(tiny_store, "tiny", device="cpu")
    own = tiny_store.get_covariance(1)
    layer = next(x for x in range(3) if x != own.layer)
    wanted = stats.spec_like(own, session.base.identity, session.model, layer)
    monkeypatch.setenv("FACTSTORE_CACHE", str(tmp_path / "elsewhere"))  # computed on another machine
    text = corpus.load_corpus(own.corpus)
    theirs = stats.compute(session.model, session.tokenizer, wanted, text)
    monkeypatch.undo()
    legit = _record_shipped(tiny_store, session.base.id, wanted, theirs.path, own.corpus)

    dim = stats.load_matrix(theirs.path).shape[0]
    crafted_spec = stats.StatsSpec(session.base.identity, layer, wanted.module, "e" * 64, 5000, wanted.dtype)
    crafted = tmp_path / "crafted.safetensors"
    meta = {**{k: str(v) for k, v in crafted_spec.__dict__.items()}, "tokens": "5000"}
    save_file({"C": (torch.eye(dim) * 1e-3).to(getattr(torch, wanted.dtype))}, str(crafted), metadata=meta)
    eve = _record_shipped(tiny_store, session.base.id, crafted_spec, crafted, "eve-corpus")
    assert eve.id > legit.id  # the newest C of the layer

    fresh = EditSession(tiny_store, "tiny", device="cpu")
    assert fresh.covariance(layer, fresh.hparams(layer)).id == legit.id


@pytest.mark.parametrize(
    ("names", "refusal"),
    [
        (-torch.eye(4), "names moment that is not a finite, symmetric, positive semidefinite"),
        (torch.ones(4, 4).triu(), "names moment that is not a finite, symmetric, positive semidefinite"),
        (torch.eye(5), "not a finite, symmetric, positive definite 4x4"),
        (torch.eye(4) * float("nan"), "names moment that is not a finite"),
        (torch.eye(4) * 1e3, "at most 100 times C's trace"),
        (torch.eye(4), None),
        (torch.zeros(4, 4), None),  # a corpus without names
    ],
)
def test_a_shipped_c_files_names_moment_is_checked_like_c(
    tmp_path: Path, names: torch.Tensor, refusal: str | None
) -> None:
    """A C file from a release or a statistics repository may carry its names moment (band solves
    weigh it); one that is not a moment of keys, or of another size, refuses the whole file."""
    from safetensors.torch import save_file

    from factstore.files import file_sha256

    spec = stats.StatsSpec("sha256:test", 1, "mlp", "c" * 64, 100, "float32")
    source = tmp_path / "shipped.safetensors"
    meta = {**{k: str(v) for k, v in spec.__dict__.items()}, "tokens": "100", stats.NAMES: "7"}
    save_file({"C": torch.eye(4), stats.NAMES: names.float()}, str(source), metadata=meta)
    if refusal is None:
        found = stats.install_shipped(source, file_sha256(source), spec, 4)
        assert torch.equal(stats.load_names(found.path, found.sha256), names)  # type: ignore[arg-type]
        return
    with pytest.raises(StatisticsError, match=refusal):
        stats.install_shipped(source, file_sha256(source), spec, 4)


def test_a_c_file_of_factstore_0x_with_its_names_read_in_context_installs_without_a_names_moment(
    tmp_path: Path,
) -> None:
    """Files of the version before hold "names", keys at name ends read in their sentences: C
    still serves, that moment is never read (a log with band_names_weight refuses on it)."""
    from safetensors.torch import save_file

    from factstore.files import file_sha256

    spec = stats.StatsSpec("sha256:test", 1, "mlp", "c" * 64, 100, "float32")
    source = tmp_path / "shipped.safetensors"
    meta = {**{k: str(v) for k, v in spec.__dict__.items()}, "tokens": "100", "names": "7"}
    save_file({"C": torch.eye(4), stats.LEGACY_NAMES: torch.eye(4)}, str(source), metadata=meta)
    found = stats.install_shipped(source, file_sha256(source), spec, 4)
    assert torch.equal(stats.load_matrix(found.path, found.sha256), torch.eye(4))
    assert stats.load_names(found.path, found.sha256) is None
    save_file(
        {"C": torch.eye(4), stats.LEGACY_NAMES: torch.eye(4), stats.NAMES: torch.eye(4)}, str(source), metadata=meta
    )
    with pytest.raises(StatisticsError, match="refused"):  # one names moment or none
        stats.install_shipped(source, file_sha256(source), spec, 4)
