"""Key statistics throughput: tokens per second for C of one layer, and of several layers from one pass.

    python bench/stats_speed.py                     # SmolLM2 on the CPU, 20k tokens of wiki-vital, layers 4 and 0-4
    python bench/stats_speed.py --device cuda --tokens 200000

Each row computes C into a fresh cache (nothing reused) and reports tokens per second of the
pass: layer 4 alone; layers 0-4 one at a time (five passes); layers 0-4 from one pass (its
forward stops after block 4's MLP input, as the spread compile mode needs). Run it with nothing
else heavy on the machine.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=20_000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="starter:smollm2-135m")
    args = parser.parse_args()
    shared_cache = os.environ.get("FACTSTORE_CACHE", str(Path.home() / ".factstore" / "cache"))

    from factstore.weights import checkpoints, corpus, stats

    loaded = checkpoints.load(args.model, device=args.device)
    model, tok = loaded.model, loaded.tokenizer
    text = corpus.load_corpus(corpus.DEFAULT_CORPUS)
    identity = loaded.ref.identity

    def timed(layer_sets: list[list[int]]) -> float:
        os.environ["FACTSTORE_CACHE"] = tempfile.mkdtemp(prefix="factstore-stats-speed-")  # nothing cached
        clock = time.perf_counter()
        for layers in layer_sets:
            stats.compute_many(
                model,
                tok,
                [stats.stats_spec(identity, model, layer, text, args.tokens, "float32") for layer in layers],
                text,
            )
        seconds = time.perf_counter() - clock
        os.environ["FACTSTORE_CACHE"] = shared_cache
        return seconds

    timed([[4]])  # warm-up: first-call allocations
    rows = [
        ("layer 4", 1, timed([[4]])),
        ("layers 0-4, five passes", 5, timed([[layer] for layer in range(5)])),
        ("layers 0-4, one pass", 5, timed([list(range(5))])),
    ]
    print(f"\nkey statistics of {args.model} on {args.device}, {args.tokens:,} tokens of wiki-vital per layer\n")
    print(
        "| what | layers | seconds | text tokens read per s | keys summed per s (tokens x layers) |\n|---|---|---|---|---|"
    )
    for what, n, seconds in rows:
        passes = 5 if "five" in what else 1
        print(
            f"| {what} | {n} | {seconds:.1f} | {passes * args.tokens / seconds:,.0f} | {n * args.tokens / seconds:,.0f} |"
        )


if __name__ == "__main__":
    main()
