"""Seconds per ROME edit by how much of the model each v* step runs (whole model; the blocks
from the edit layer up; those blocks over the positions from the subject on), and batched
edits (B requests in one optimisation) against one at a time.

    python bench/edit_latency.py                       # SmolLM2 (float32, CPU) and a GPT-2-XL-shaped model
    python bench/edit_latency.py --batches 4 8 16 --xl-steps 5
    python bench/edit_latency.py --skip-xl --device cuda

Statistics are computed once per model (not part of the per-edit time), as in the service.
Single edits: median of --repeats edits. Batches: one batch of B CounterFact requests, seconds
divided by B. The GPT-2-XL shape has random weights (its loss never stops early), so its rows
time a fixed number of steps (--xl-steps), whole model against upper blocks only.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from shapes import build, gpt2_xl

from factstore.datasets import read_records
from factstore.rome.covariance import accumulate_second_moment
from factstore.rome.edit import compute_edits, contexts_for
from factstore.rome.hparams import ROMEHyperParams, default_hparams
from factstore.rome.values import LOOPS
from factstore.weights import assets, checkpoints, corpus

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "counterfact_500.json"
STATS_TOKENS = 20_000


def _timed(
    model: Any, tok: Any, requests: list, hp: ROMEHyperParams, C: torch.Tensor, templates: Any, loop: str
) -> float:
    clock = time.perf_counter()
    compute_edits(model, tok, requests, hp, C, templates, loop=loop)
    return time.perf_counter() - clock


def smollm2_rows(args: argparse.Namespace) -> list[dict]:
    loaded = checkpoints.load("starter:smollm2-135m", device=args.device)
    model, tok = loaded.model, loaded.tokenizer
    cfg = model.config
    hp = default_hparams(cfg.model_type, cfg.num_hidden_layers, cfg.hidden_size)
    C = (
        accumulate_second_moment(model, tok, corpus.load_corpus().texts, hp.layer, STATS_TOKENS)
        .moment(hp.layer)
        .float()
    )
    templates = contexts_for(model, tok, hp)
    requests = [r.request for r in read_records(str(args.data), max([*args.batches, args.repeats]))]
    rows = []
    for loop in LOOPS:
        times = [_timed(model, tok, [r], hp, C, templates, loop) for r in requests[: args.repeats]]
        rows.append(
            {
                "model": "SmolLM2-135M",
                "layer": hp.layer,
                "v* loop": loop,
                "B": 1,
                "s_per_edit": statistics.median(times),
            }
        )
    for b in args.batches:
        seconds = _timed(model, tok, requests[:b], hp, C, templates, "suffix")
        rows.append(
            {"model": "SmolLM2-135M", "layer": hp.layer, "v* loop": "suffix", "B": b, "s_per_edit": seconds / b}
        )
    return rows


def xl_rows(args: argparse.Namespace) -> list[dict]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(assets.gpt2_tokenizer_dir())
    model = build(gpt2_xl(args.xl_scale), torch.float32, args.device)
    layer = 17 // args.xl_scale
    hp = ROMEHyperParams(layer=layer, steps=args.xl_steps, context_lengths=((5, 2),), value_context_lengths=((10, 5),))
    d_ff = model.config.n_embd * 4
    C = torch.eye(d_ff, device=args.device)
    templates = contexts_for(model, tok, hp)
    requests = [r.request for r in read_records(str(args.data), args.repeats)]
    rows = []
    for loop in LOOPS:
        times = [_timed(model, tok, [r], hp, C, templates, loop) for r in requests]
        rows.append(
            {
                "model": f"GPT-2-XL shape ({args.xl_steps} steps)",
                "layer": layer,
                "v* loop": loop,
                "B": 1,
                "s_per_edit": statistics.median(times),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", type=int, nargs="*", default=[4, 8, 16])
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--skip-xl", action="store_true")
    parser.add_argument("--xl-steps", type=int, default=5)
    parser.add_argument(
        "--xl-scale", type=int, default=1, help="divide the GPT-2-XL shape's depth and width (CPU smoke runs)"
    )
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    rows = smollm2_rows(args) + ([] if args.skip_xl else xl_rows(args))
    print(f"{'model':<28} {'layer':>5} {'v* loop':<8} {'B':>3} {'s/edit':>8} {'edits/h':>8} {'vs first row':>13}")
    first: dict[str, float] = {}
    for r in rows:
        ref = first.setdefault(r["model"], r["s_per_edit"])
        print(
            f"{r['model']:<28} {r['layer']:>5} {r['v* loop']:<8} {r['B']:>3} {r['s_per_edit']:>8.2f} {3600 / r['s_per_edit']:>8.0f} {ref / r['s_per_edit']:>12.2f}x"
        )


if __name__ == "__main__":
    main()
