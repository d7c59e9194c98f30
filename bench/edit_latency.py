"""Seconds per ROME edit, split into parts, and key-statistics throughput.

    python bench/edit_latency.py                 # SmolLM2 starter + the suite's tiny GPT-2
    python bench/edit_latency.py --models smollm2 --edits 3 --device cuda

Prints a table. Statistics are computed once per model (not part of the per-edit time),
as in the service, where they are cached after the first edit of a layer.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from factstore import config
from factstore.domain import EditRequest
from factstore.rome.covariance import accumulate_second_moment
from factstore.rome.edit import compute_edit, contexts_for
from factstore.rome.hparams import default_hparams
from factstore.weights import assets, checkpoints, corpus

REQUESTS = [
    EditRequest("{} is located in the city of", "The Eiffel Tower", "Rome"),
    EditRequest("{} is located in the city of", "The Colosseum", "Paris"),
    EditRequest("The mother tongue of {} is", "Vladimir Putin", "French"),
    EditRequest("{} is located in the country of", "The Taj Mahal", "Brazil"),
]
STATS_TOKENS = 20_000


def _load(name: str, device: str):  # type: ignore[no-untyped-def]
    if name == "smollm2":
        loaded = checkpoints.load("starter:smollm2-135m", device=device)
        cfg = loaded.model.config
        return loaded.model, loaded.tokenizer, default_hparams(cfg.model_type, cfg.num_hidden_layers, cfg.hidden_size), REQUESTS
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tiny_models import RELATIONS, Recipe, make_facts, trained_tiny_gpt2

    tok = AutoTokenizer.from_pretrained(assets.gpt2_tokenizer_dir())
    folder = trained_tiny_gpt2(config.cache_dir(), tok)
    model = AutoModelForCausalLM.from_pretrained(folder).to(device).eval()
    hp = replace(default_hparams("gpt2", model.config.n_layer, model.config.n_embd), layer=2, context_lengths=(), value_context_lengths=())
    facts = [f for f in make_facts(Recipe()) if f.relation == "city"][:4]
    requests = [EditRequest(RELATIONS["city"][0][0], f.subject, "Tokyo" if f.target != "Tokyo" else "Paris", target_true=f.target) for f in facts]
    return model, tok, hp, requests


def bench(name: str, device: str, n_edits: int) -> dict:
    model, tok, hp, requests = _load(name, device)
    texts = corpus.load_corpus().texts
    clock = time.perf_counter()
    state = accumulate_second_moment(model, tok, texts, hp.layer, STATS_TOKENS)
    stats_s = time.perf_counter() - clock
    C = state.moment().float()
    templates = contexts_for(model, tok, hp)  # sampled once per base model and stored by the service
    rows = []
    for request in requests[:n_edits]:
        clock = time.perf_counter()
        result = compute_edit(model, tok, request, hp, C, templates)
        rows.append({**result.seconds, "total": time.perf_counter() - clock, "ok": result.prob_new_after > result.prob_true_after})
    med = {k: statistics.median(r[k] for r in rows) for k in ("key", "value", "update", "score", "total")}
    return {"model": name, "device": device, "layer": hp.layer, **med, "edits_ok": f"{sum(r['ok'] for r in rows)}/{len(rows)}",
            "stats_tok_s": state.tokens / stats_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["smollm2", "tiny-gpt2"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--edits", type=int, default=3)
    args = parser.parse_args()
    print(f"torch threads {torch.get_num_threads()}, device {args.device}; median seconds per edit over {args.edits} edits")
    print(f"{'model':<10} {'layer':>5} {'key':>6} {'value':>7} {'update':>7} {'score':>6} {'total':>7} {'took':>5} {'stats tok/s':>12}")
    for name in args.models:
        r = bench(name, args.device, args.edits)
        print(f"{r['model']:<10} {r['layer']:>5} {r['key']:>6.2f} {r['value']:>7.2f} {r['update']:>7.3f} {r['score']:>6.2f} {r['total']:>7.2f} {r['edits_ok']:>5} {r['stats_tok_s']:>12.0f}")


if __name__ == "__main__":
    main()
