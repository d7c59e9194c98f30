"""Choose SmolLM2's edit layer by measurement: CounterFact single edits at several layers.

    python bench/layer_sweep.py --layers 2 4 6 8 --n 8 [--data ../shared/data/counterfact_500.json]

For each layer: key statistics on 20k tokens of starter:wiki-vital, then each record edited on
the clean model and scored (efficacy: P(new) > P(true) on the prompt; paraphrase: the same on
the record's paraphrase prompts; neighbourhood: P(true) > P(new) on its neighbourhood prompts).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from factstore.datasets import read_requests
from factstore.rome.covariance import accumulate_second_moment
from factstore.rome.edit import Snapshot, apply_edit, compute_edit, contexts_for
from factstore.rome.hparams import default_hparams
from factstore.rome.scoring import target_logprobs
from factstore.weights import checkpoints, corpus


def _prefers(model, tok, prompts: list[str], a: str, b: str) -> list[bool]:  # type: ignore[no-untyped-def]
    pa = target_logprobs(model, tok, prompts, [a] * len(prompts))
    pb = target_logprobs(model, tok, prompts, [b] * len(prompts))
    return [bool(x > y) for x, y in zip(pa, pb)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, nargs="+", default=[2, 4, 6, 8])
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument(
        "--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "counterfact_500.json")
    )
    args = parser.parse_args()
    records = json.loads(Path(args.data).read_text())[: args.n]
    requests = read_requests(args.data, args.n)
    loaded = checkpoints.load("starter:smollm2-135m", device="cpu")
    model, tok = loaded.model, loaded.tokenizer
    base = default_hparams("llama", 30, 576)
    texts = corpus.load_corpus().texts
    print(f"{'layer':>5} {'ES':>6} {'PS':>6} {'NS':>6}   (n={args.n}, 20k-token statistics)")
    for layer in args.layers:
        hp = replace(base, layer=layer)
        C = accumulate_second_moment(model, tok, texts, layer, 20_000).moment(layer).float()
        templates = contexts_for(model, tok, hp)
        es, ps, ns = [], [], []
        for record, request in zip(records, requests):
            result = compute_edit(model, tok, request, hp, C, templates)
            with Snapshot(model, [layer]):
                apply_edit(model, layer, result.key, result.value, C)
                new, true = request.target_new, request.target_true or result.target_true
                es += _prefers(model, tok, [request.text], new, true)
                ps += _prefers(model, tok, record["paraphrase_prompts"], new, true)
                ns += _prefers(model, tok, record["neighborhood_prompts"], true, new)
        pct = lambda xs: 100 * sum(xs) / len(xs)  # noqa: E731
        print(f"{layer:>5} {pct(es):>6.1f} {pct(ps):>6.1f} {pct(ns):>6.1f}", flush=True)


if __name__ == "__main__":
    main()
