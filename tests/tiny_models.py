"""Tiny models for tests: random ones for the math, and a small GPT-2 trained on synthetic facts.

The trained model uses the real GPT-2 tokenizer (starter:gpt2-tokenizer) and is cached
on disk under a hash of its recipe, so it is trained once per machine (about 3 minutes on one
core): `python tests/tiny_models.py CACHE` trains it in a process of its own (conftest starts
that at collection, so the workers run other tests meanwhile).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

# relation -> (training templates, held-out paraphrase, objects: one GPT-2 token each with a space)
# In this tiny model the answer is due right after the subject (every prompt ends with it),
# so facts are recalled at the subject's last token, where ROME puts its key. With the
# subject mid-prompt, a 4-layer model trained only on these sentences learns to look facts
# up at the prompt's last token instead, and a subject-position edit cannot reach them.
RELATIONS: dict[str, tuple[tuple[str, ...], str, tuple[str, ...]]] = {
    "city": (
        ("city of {}", "the home town of {}", "the city where lives {}"),
        "the place of residence of {}",
        (" Paris", " London", " Tokyo", " Berlin", " Rome", " Madrid", " Moscow", " Cairo", " Sydney", " Chicago"),
    ),
    "language": (
        ("language of {}", "the mother tongue of {}", "the language spoken by {}"),
        "the native language of {}",
        (" English", " French", " German", " Spanish", " Italian", " Russian", " Japanese", " Arabic"),
    ),
    "sport": (
        ("sport of {}", "the sport played by {}", "the game played by {}"),
        "the favourite sport of {}",
        (" football", " tennis", " golf", " baseball", " hockey", " cricket", " basketball", " rugby"),
    ),
}
# A few shared first names: only the surname identifies a subject, so facts are read from
# the subject's last token, as in ROME's picture of real models.
_FIRST_NAMES = ("Ana", "Ben", "Kai", "Lena")
# Surnames that are one GPT-2 token: each subject ends on its own token, as ROME assumes.
_SURNAMES = (
    "Smith Johnson Williams Brown Jones Miller Davis Wilson Anderson Taylor Thomas Moore Martin Jackson Thompson "
    "White Harris Clark Lewis Robinson Walker Young Allen King Wright Scott Hill Green Adams Baker Nelson Carter "
    "Mitchell Roberts Turner Phillips Campbell Parker Evans Edwards Collins Stewart Morris Murphy Cook Rogers Morgan "
    "Cooper Reed Bailey Bell Kelly Howard Ward Cox Richardson Wood Watson Brooks Bennett Gray Hughes Price Long Ross "
    "Foster Powell Jenkins Perry Russell Sullivan Fisher Graham Hamilton Wallace Cole West Jordan Reynolds Marshall"
).split()


@dataclass(frozen=True)
class Recipe:
    n_subjects: int = 60
    n_layer: int = 4
    n_embd: int = 128
    n_head: int = 4
    # 900 learned 154 of 180 facts on one machine's CPU (the tests want 162): training is
    # deterministic per machine, not across CPUs, so the recipe needs margin
    steps: int = 1200
    lr: float = 3e-3
    batch: int = 64
    seed: int = 0
    version: int = 4

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Fact:
    subject: str
    relation: str
    target: str  # without the leading space


# The trained model's edit settings, chosen by measurement (tests/test_behaviour_tiny_gpt2.py):
# it has only seen bare sentences, so ROME's context prefixes would put every prompt out of
# distribution; layer 2, and a delta clamp of 8 x ||v0|| for the machines whose weights need it
TRAINED_EDIT_SETTINGS: dict[str, Any] = dict(
    layer=2, context_lengths=(), value_context_lengths=(), clamp_norm_factor=8.0
)


def fact_sentences(recipe: Recipe) -> list[str]:
    """Every training sentence of the facts with its object: the trained model's own text."""
    return [t.format(f.subject) + " " + f.target + "." for f in make_facts(recipe) for t in RELATIONS[f.relation][0]]


def make_facts(recipe: Recipe) -> list[Fact]:
    """n_subjects fictional people "<First> <Surname>", each with one object per relation."""
    rng = random.Random(recipe.seed)
    surnames = rng.sample(_SURNAMES, recipe.n_subjects)
    names = [f"{rng.choice(_FIRST_NAMES)} {last}" for last in surnames]
    facts = []
    for subject in names:
        for relation, (_, _, objects) in RELATIONS.items():
            facts.append(Fact(subject, relation, rng.choice(objects).strip()))
    return facts


def random_gpt2(seed: int = 0, n_embd: int = 64, n_layer: int = 3, vocab: int = 50257) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=4, n_positions=128, vocab_size=vocab)
    return GPT2LMHeadModel(config).eval()


def random_llama(seed: int = 0, hidden: int = 64, layers: int = 3, vocab: int = 50257) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=2 * hidden + 32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab,
        max_position_embeddings=128,
    )
    return LlamaForCausalLM(config).eval()


# Settings every family's config understands under one of these names; a family ignores the
# names it lacks. Sizes are tiny; the vocabulary is GPT-2's, so the real tokenizer drives them.
_TINY = dict(
    hidden_size=64,
    n_embd=64,
    d_model=64,
    num_hidden_layers=3,
    n_layer=3,
    num_layers=3,
    num_attention_heads=4,
    n_head=4,
    num_key_value_heads=2,
    intermediate_size=96,
    n_inner=96,
    ffn_dim=96,
    word_embed_proj_dim=64,
    head_dim=16,
    vocab_size=50257,
    max_position_embeddings=256,
    n_positions=256,
    pad_token_id=0,
    bos_token_id=0,
    eos_token_id=0,
    sliding_window=64,
    rotary_dim=8,
    ffn_hidden_size=96,
)


def random_decoder(model_type: str, seed: int = 0, square: bool = False, dtype: torch.dtype = torch.float32):  # type: ignore[no-untyped-def]
    """A random 3-layer model of any decoder family. square: MLP width equal to the model width,
    so a transposed down-projection would still fit and only its outputs tell."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(model_type)
    settings = dict(
        _TINY, **({"intermediate_size": 64, "n_inner": 64, "ffn_dim": 64, "ffn_hidden_size": 64} if square else {})
    )
    for name, value in settings.items():
        if hasattr(config, name):
            with contextlib.suppress(AttributeError):  # a derived property (Falcon's head_dim)
                setattr(config, name, value)
    if model_type == "granite":
        config.logits_scaling = 8.0  # real Granite checkpoints divide their logits (by 8 to 16)
    if getattr(config, "layer_types", None):  # derived from the default depth when the config was made
        config.layer_types = config.layer_types[: _TINY["num_hidden_layers"]]
    if model_type in ("gpt_neox", "persimmon", "phi", "stablelm"):
        config.partial_rotary_factor = 0.5
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=dtype).eval()


def _examples(facts: list[Fact], tokenizer) -> list[tuple[list[int], int]]:
    rows = []
    for fact in facts:
        templates, _, _ = RELATIONS[fact.relation]
        for template in templates:
            ids = tokenizer(template.format(fact.subject))["input_ids"]
            rows.append((ids, tokenizer(" " + fact.target)["input_ids"][0]))
    return rows


def train_tiny_gpt2(recipe: Recipe, tokenizer) -> GPT2LMHeadModel:
    """Train on the object token of every (fact, training template); deterministic on CPU."""
    torch.manual_seed(recipe.seed)
    config = GPT2Config(
        n_layer=recipe.n_layer,
        n_embd=recipe.n_embd,
        n_head=recipe.n_head,
        n_positions=64,
        vocab_size=len(tokenizer),
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,  # memorising facts: dropout only slows it down
    )
    model = GPT2LMHeadModel(config)
    rows = _examples(make_facts(recipe), tokenizer)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, recipe.steps)
    gen = torch.Generator().manual_seed(recipe.seed)
    model.train()
    for _ in range(recipe.steps):
        pick = torch.randint(len(rows), (recipe.batch,), generator=gen).tolist()
        width = max(len(rows[i][0]) for i in pick)
        ids = torch.zeros(recipe.batch, width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        last = torch.tensor([len(rows[i][0]) - 1 for i in pick])
        for r, i in enumerate(pick):
            ids[r, : len(rows[i][0])] = torch.tensor(rows[i][0])
            mask[r, : len(rows[i][0])] = 1
        hidden = model.transformer(input_ids=ids, attention_mask=mask).last_hidden_state
        logits = model.lm_head(hidden[torch.arange(recipe.batch), last])  # only the object position
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor([rows[i][1] for i in pick]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """PATH locked exclusively (fcntl) while the block runs, across processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def tiny_gpt2_folder(cache: Path, recipe: Recipe = Recipe()) -> Path:
    return cache / f"tiny-gpt2-{recipe.key()}"


def trained_tiny_gpt2(cache: Path, tokenizer, recipe: Recipe = Recipe()) -> Path:  # type: ignore[no-untyped-def]
    """Folder with the trained model and tokenizer, trained on first use and cached by recipe.
    Its own lock, not the cache's: the other cache entries stay usable while it trains."""
    out = tiny_gpt2_folder(cache, recipe)
    with file_lock(cache / "tiny-gpt2.lock"):
        if not (out / "config.json").exists():
            model = train_tiny_gpt2(recipe, tokenizer)
            tmp = out.with_name(out.name + ".tmp")
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            tmp.rename(out)
    return out


def train_in_background(cache: Path) -> None:
    """Start `python tests/tiny_models.py CACHE`, detached (it outlives an interrupted run and
    finishes the cache entry); its output goes to CACHE/tiny-gpt2-training.log."""
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / "tiny-gpt2-training.log", "w") as log:
        subprocess.Popen(
            [sys.executable, __file__, str(cache)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )


def register_random(db_url: str, model, tokenizer, tmp_path: Path, alias: str, layer: int):  # type: ignore[no-untyped-def]
    """A store on DB_URL with MODEL (a random decoder, saved with TOKENIZER under TMP_PATH)
    registered as ALIAS, with key statistics for LAYER from a small corpus of one sentence."""
    from factstore import api

    folder = tmp_path / alias
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    corpus = tmp_path / "corpus.json"
    corpus.write_text(json.dumps([f"Paragraph {i}: the river runs through the old town." for i in range(100)]))
    api.upgrade_database(db_url)
    store = api.open_store(db_url)
    api.add_model(store, alias, str(folder))
    api.compute_stats(store, alias, api.StatsOptions(layer=layer, corpus=str(corpus), tokens=1000), device="cpu")
    return store


if __name__ == "__main__":  # the background training (train_in_background)
    torch.set_num_threads(1)  # as in an xdist worker: the same weights as a worker would train
    os.environ["FACTSTORE_CACHE"] = sys.argv[1]
    from transformers import AutoTokenizer

    from factstore.weights import assets

    with file_lock(Path(sys.argv[1]) / ".lock"):  # conftest's cache_lock
        tokenizer_folder = assets.gpt2_tokenizer_dir()
    print(trained_tiny_gpt2(Path(sys.argv[1]), AutoTokenizer.from_pretrained(tokenizer_folder)))
