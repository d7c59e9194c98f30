"""CounterFact results and the averaged causal trace, printed as markdown tables.

    python bench/results.py [--n 100] [--lifelong 100] [--trace 50] [--tiny 10] [--samples 10] [--kinds mlp] [--no-fluency]

Runs in a temporary FACTSTORE_HOME (starter assets come from the usual cache):
- SmolLM2-135M, ROME's single-edit protocol on the first N records of
  ../shared/data/counterfact_500.json (unedited and edited);
- SmolLM2 lifelong: the first M records registered one after another, both compile modes;
- the suite's trained tiny GPT-2 on its own city facts (single-edit protocol);
- SmolLM2 causal trace averaged over K facts of ../shared/data/known_1000.json it knows.
Each part is skipped with 0. Figures go in docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
COLUMNS = ("n", "ES", "PS", "NS", "S", "EM", "PM", "NM", "GE")


def row(name: str, scores: dict) -> str:
    cells = [
        str(scores["n"]) if k == "n" else ("n/a" if scores.get(k) is None else f"{scores[k]:.1f}") for k in COLUMNS
    ]
    return f"| {name} | " + " | ".join(cells) + " |"


def header() -> str:
    return "| model | " + " | ".join(COLUMNS) + " |\n|---|" + "---|" * len(COLUMNS)


def smollm2(args: argparse.Namespace) -> None:
    from factstore import api
    from factstore.cli.progress import BARS

    store = api.open_store()
    api.add_model(store, "smollm2", "starter:smollm2-135m")
    data = str(DATA / "counterfact_500.json")
    if args.n:
        clock = time.perf_counter()
        fluency = None if args.no_fluency else api.FluencySettings()
        single = api.evaluate_model(
            store,
            "smollm2",
            data,
            args.n,
            api.EvalSettings(mode="single", fluency=fluency),
            device="cpu",
            progress=BARS,
        )
        print(
            f"\nSmolLM2-135M, single-edit protocol, layer {single['layer']} ({time.perf_counter() - clock:.0f} s)\n\n{header()}"
        )
        print(row("unedited", single["unedited"]))
        print(row("ROME (factstore)", single), flush=True)
    if args.lifelong:
        clock = time.perf_counter()
        plan = api.LifelongSettings(every=max(1, args.lifelong // 5), batch=1, out=args.out)
        settings = api.EvalSettings(mode="lifelong", fluency=None, lifelong=plan)
        life = api.evaluate_model(store, "smollm2", data, args.lifelong, settings, device="cpu", progress=BARS)
        print(
            f"\nSmolLM2-135M, lifelong: {args.lifelong} edits registered in order ({time.perf_counter() - clock:.0f} s)\n\n{header()}"
        )
        print(row("unedited", life["unedited"]))
        for mode, scores in life["modes"].items():
            print(row(f"compiled {mode}", scores))
        print("\ncurve (head model = sequential, scored on the edits so far):")
        print(
            "\n".join(
                f"  {c['edits']:4d} edits: ES {c['ES']:.1f} PS {c['PS']:.1f} NS {c['NS']:.1f}" for c in life["curve"]
            )
        )
        print(f"plot: {life.get('png')}", flush=True)
    if args.trace:
        clock = time.perf_counter()
        traced_with = api.TraceSettings(samples=args.samples, kinds=tuple(args.kinds.split(",")))
        traced = api.trace_dataset(
            store,
            "smollm2",
            str(DATA / "known_1000.json"),
            args.trace,
            api.TraceOptions(out=args.out, settings=traced_with),
            device="cpu",
            progress=BARS,
        )
        print(
            f"\nSmolLM2 causal trace over {traced['n']} known facts ({traced['scanned']} scanned, samples {args.samples}, "
            f"{time.perf_counter() - clock:.0f} s): MLP peak at layer {traced['peak_mlp_layer']}"
        )
        print("\n".join(f"  {p}" for p in traced["png"]), flush=True)


def tiny(args: argparse.Namespace) -> None:
    from dataclasses import replace

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_evaluate import _tiny_records  # the same records the test suite uses
    from transformers import AutoTokenizer

    from factstore import api
    from factstore.rome.hparams import default_hparams
    from factstore.studies import evaluation
    from factstore.weights import assets
    from tiny_models import RELATIONS, Recipe, make_facts, trained_tiny_gpt2

    cache = Path(os.environ.get("FACTSTORE_TEST_CACHE") or Path.home() / ".cache" / "factstore-test")
    folder = trained_tiny_gpt2(cache, AutoTokenizer.from_pretrained(assets.gpt2_tokenizer_dir()))
    store = api.open_store()
    api.add_model(store, "tiny", str(folder))
    corpus = Path(tempfile.mkdtemp()) / "facts.json"
    corpus.write_text(
        json.dumps(
            [t.format(f.subject) + " " + f.target + "." for f in make_facts(Recipe()) for t in RELATIONS[f.relation][0]]
        )
    )
    api.compute_stats(store, "tiny", api.StatsOptions(layer=2, corpus=str(corpus), tokens=100_000), device="cpu")
    hp = replace(
        default_hparams("gpt2", 4, 128), layer=2, context_lengths=(), value_context_lengths=(), clamp_norm_factor=8.0
    )
    result = evaluation.single(
        store, "tiny", _tiny_records(args.tiny, folder), api.EvalSettings(fluency=None), hparams=hp
    )
    print(f"\ntrained tiny GPT-2 (tests/tiny_models.py), city facts it knows, single-edit protocol\n\n{header()}")
    print(row("unedited", result["unedited"]))
    print(row("ROME (factstore)", result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--lifelong", type=int, default=100)
    parser.add_argument("--trace", type=int, default=50)
    parser.add_argument("--tiny", type=int, default=10)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--kinds", default="hidden,mlp,attn")
    parser.add_argument(
        "--no-fluency",
        action="store_true",
        help="single-edit protocol without GE (sampling 2 x 50 tokens before and after each edit)",
    )
    parser.add_argument("--out", default=None, help="folder for the figures (default: the temporary FACTSTORE_HOME)")
    args = parser.parse_args()
    os.environ["FACTSTORE_HOME"] = tempfile.mkdtemp(prefix="factstore-results-")
    os.environ.setdefault("FACTSTORE_CACHE", str(Path.home() / ".factstore" / "cache"))
    if args.tiny:
        tiny(args)
    if args.n or args.lifelong or args.trace:
        smollm2(args)


if __name__ == "__main__":
    main()
