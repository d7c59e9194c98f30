"""Edit latency and throughput on one GPU, on real model shapes with random weights.

    python bench/gpu.py            # one GPU, under 5 minutes: GPT-2 XL (float32, bfloat16), Llama 3 8B cut to 8 layers (bfloat16)
    python bench/gpu.py --tiny     # the same script on shrunken shapes, on the CPU (what the test suite runs)

Per shape and dtype: seconds per edit one at a time (median of 3, after one warm-up edit) and
in batches of B requests (one optimisation, --batches), edits per second, and peak CUDA memory
of each. Random weights never reach the early-stop loss, so every v* optimisation runs all
--steps steps: the worst case of a real edit. C is the identity (its values do not change the
cost of the update). Targets (issue 14): <= 0.5 s per single GPT-2-XL edit in float32, >= 5
edits per second batched in bfloat16.
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

from shapes import build, gpt2_xl, llama3_8b_truncated

from factstore import arch
from factstore.datasets import read_requests
from factstore.rome.edit import compute_edits, contexts_for
from factstore.rome.hparams import ROMEHyperParams
from factstore.weights import assets

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "counterfact_500.json"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _peak(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None


def run_shape(
    name: str, config: Any, dtype: str, layer: int, args: argparse.Namespace, tok: Any, requests: list
) -> list[dict]:
    device = args.device
    model = build(config, getattr(torch, dtype), device)
    hp = ROMEHyperParams(layer=layer, steps=args.steps)
    C = torch.eye(arch.down_proj_weight(model, layer).shape[1], device=device)
    templates = contexts_for(model, tok, hp)
    compute_edits(model, tok, requests[:1], hp, C, templates)  # warm-up: kernels, allocator
    rows = []
    times = []
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    phases: list[dict[str, float]] = []
    for request in requests[1 : 1 + args.singles]:
        _sync(device)
        clock = time.perf_counter()
        phases.append(compute_edits(model, tok, [request], hp, C, templates)[0].seconds)
        _sync(device)
        times.append(time.perf_counter() - clock)
    single = statistics.median(times)
    split = {k: statistics.median(p.get(k, 0.0) for p in phases) for k in phases[0]}
    rows.append(
        {"shape": name, "dtype": dtype, "B": 1, "s_per_edit": single, "peak_gib": _peak(device), "phases": split}
    )
    for b in args.batches:
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        _sync(device)
        clock = time.perf_counter()
        compute_edits(model, tok, requests[:b], hp, C, templates)
        _sync(device)
        rows.append(
            {
                "shape": name,
                "dtype": dtype,
                "B": b,
                "s_per_edit": (time.perf_counter() - clock) / b,
                "peak_gib": _peak(device),
            }
        )
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--steps", type=int, default=20, help="v* optimisation steps (ROME's default; random weights run them all)"
    )
    parser.add_argument("--batches", type=int, nargs="*", default=[16, 64])
    parser.add_argument("--singles", type=int, default=3, help="single edits timed (their median is reported)")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="shapes divided by 16, 2 steps, one single edit and a batch of 2: a CPU check of the script",
    )
    parser.add_argument("--data", default=str(DATA))
    args = parser.parse_args()
    scale = 16 if args.tiny else 1
    if args.tiny:
        args.steps, args.batches, args.singles = 2, [2], 1
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(assets.gpt2_tokenizer_dir())
    requests = read_requests(args.data, max([1 + args.singles, *args.batches]))
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"device {args.device} ({name}), torch {torch.__version__}, {args.steps} v* steps per edit")
    plan = [
        ("GPT-2 XL shape", gpt2_xl(scale), "float32", 17 // scale),
        ("GPT-2 XL shape", gpt2_xl(scale), "bfloat16", 17 // scale),
        (
            "Llama 3 8B shape, 8 layers",
            llama3_8b_truncated(2 if args.tiny else 8, scale),
            "bfloat16",
            1 if args.tiny else 4,
        ),
    ]
    rows = []
    for shape, config, dtype, layer in plan:
        rows += run_shape(shape, config, dtype, layer, args, tok, requests)
    print("| shape | dtype | B | s per edit | edits per s | peak CUDA memory | single edit's phases (s) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        peak = "n/a" if r["peak_gib"] is None else f"{r['peak_gib']:.1f} GiB"
        split = " ".join(f"{k} {v:.3f}" for k, v in r.get("phases", {}).items())
        print(
            f"| {r['shape']} | {r['dtype']} | {r['B']} | {r['s_per_edit']:.3f} | {1 / r['s_per_edit']:.1f} | {peak} "
            f"| {split} |"
        )


if __name__ == "__main__":
    main()
