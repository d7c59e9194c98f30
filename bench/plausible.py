"""How a genuine C and a crafted one fare in the plausibility check of pulled statistics (issue 23).

    FACTSTORE_HOME=... python bench/plausible.py --db sqlite:///PATH.db --alias smollm2 --layer 8

Compares the store's own C of LAYER with local key samples from several texts (the starter
corpus's first and last texts, CounterFact prompts, this repository's docs and source), then
with that C shrunk along a subject's key by 1 - a. Prints a Markdown table (docs/hparams.md).
"""

from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", required=True)
    parser.add_argument("--alias", default="smollm2")
    parser.add_argument("--layer", type=int, required=True)
    parser.add_argument("--counterfact", default=str(REPO.parent / "shared" / "data" / "counterfact_500.json"))
    args = parser.parse_args()

    import torch

    from factstore import api
    from factstore.domain import EditRequest
    from factstore.rome.keys import compute_key
    from factstore.weights import checkpoints, plausible, stats
    from factstore.weights.corpus import load_corpus

    store = api.open_store(args.db)
    base = store.get_base_model(args.alias)
    own = next(c for c in store.list_covariances(base.id) if c.layer == args.layer and not stats.is_shipped(c.path))
    C = stats.load_matrix(Path(own.path)).double()
    loaded = checkpoints.load(base.source, expected=base.revision, dtype=base.dtype)
    texts = load_corpus(own.corpus).texts
    docs = [p for f in sorted(glob.glob(str(REPO / "docs" / "*.md"))) for p in Path(f).read_text().split("\n\n")]
    samples = {
        f"{own.corpus}, first texts": texts,
        f"{own.corpus}, last texts": texts[::-1],
        "CounterFact generation prompts": [
            " ".join(r["generation_prompts"]) for r in json.loads(Path(args.counterfact).read_text())
        ],
        "docs/*.md": [p for p in docs if len(p) > 200],
        "factstore/**/*.py": [
            Path(f).read_text() for f in sorted(glob.glob(str(REPO / "factstore/**/*.py"), recursive=True))
        ],
    }
    print("| C against | ratios (min - max) | mean | largest / mean |\n|---|---|---|---|")
    front = None
    for name, sample in samples.items():
        local = plausible.local_moment(loaded.model, loaded.tokenizer, sample, args.layer)
        front = local if front is None else front
        _row(name, plausible.pencil_ratios(C, local))
    request = EditRequest("{} is located in the city of", "The Eiffel Tower", "Rome")
    k = compute_key(loaded.model, loaded.tokenizer, request, args.layer, ["{}"]).double()
    k = k / k.norm()
    for a in (0.5, 0.9, 0.99, 0.999):
        crafted = C - a * torch.outer(C @ k, C @ k) / (k @ C @ k)
        _row(f"C shrunk along a key, a = {a} (first texts)", plausible.pencil_ratios(crafted, front))


def _row(name: str, ratios) -> None:  # type: ignore[no-untyped-def]
    lo, mean, hi = float(ratios[0]), float(ratios.mean()), float(ratios[-1])
    print(f"| {name} | {lo:.3g} - {hi:.3g} | {mean:.3g} | {hi / mean:.3g} |", flush=True)


if __name__ == "__main__":
    main()
