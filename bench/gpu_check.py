"""Correctness of the edit engine on a GPU: the same edits computed on the GPU and on the CPU.

    python bench/gpu_check.py                  # CUDA against the CPU; exits 1 when a check fails
    python bench/gpu_check.py --device cpu     # both sides on the CPU (what the test suite runs)

Random-weight models of real families (GPT-2, Llama), shrunk so the CPU side stays quick, made
once on the CPU and copied to the device, so both sides hold the same weights. Per family:
k* (a forward pass) equal to float32 rounding; v* from the suffix loop (the fast path, with its
self-check against the model) equal to the whole-model loop on the device, and close to the
CPU's (Adam turns rounding into small steps); the joint update of the edits (float64) equal on
both; every constraint held after it on the device; and one bfloat16 edit on the device held
within bfloat16's tolerance. Prints one row per check.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from shapes import gpt2_xl, llama3_8b_truncated

from factstore import arch
from factstore.datasets import read_requests
from factstore.rome.edit import add_delta, compute_edits
from factstore.rome.hparams import ROMEHyperParams
from factstore.rome.update import constraint_error, joint_delta
from factstore.weights import assets
from factstore.weights.replay import tolerance

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "counterfact_500.json"
HP = dict(steps=8, context_lengths=(), value_context_lengths=())


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


def _family(
    name: str, config: Any, layer: int, device: str, tok: Any, requests: list
) -> list[tuple[str, float, float]]:
    """(check, measured, limit) rows for one family."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    cpu = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    dev = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    dev.load_state_dict(cpu.state_dict())
    dev.to(device)
    hp = ROMEHyperParams(layer=layer, **HP)  # type: ignore[arg-type]
    d_ff = arch.down_proj_weight(cpu, layer).shape[1]
    here = compute_edits(cpu, tok, requests, hp, torch.eye(d_ff))
    there = compute_edits(dev, tok, requests, hp, torch.eye(d_ff, device=device))
    whole = compute_edits(dev, tok, requests, hp, torch.eye(d_ff, device=device), loop="whole")
    rows = [
        (f"{name}: k* device vs CPU", max(_rel(a.key, b.key) for a, b in zip(there, here)), 1e-4),
        (
            f"{name}: v* suffix vs whole loop on the device",
            max(_rel(a.value, b.value) for a, b in zip(there, whole)),
            1e-3,
        ),
        (f"{name}: v* device vs CPU", max(_rel(a.value, b.value) for a, b in zip(there, here)), 2e-2),
    ]
    K = torch.stack([e.key for e in there], dim=1).to(device)  # (d_ff, n); results come back on the CPU
    V = torch.stack([e.value for e in there], dim=1).to(device)  # (d_model, n)
    W, b = arch.down_proj_weight(dev, layer), arch.down_proj_bias(dev, layer)
    delta = joint_delta(W, b, K, V, torch.eye(d_ff, device=device))
    W0, b0 = arch.down_proj_weight(cpu, layer), arch.down_proj_bias(cpu, layer)
    rows.append(
        (
            f"{name}: joint update device vs CPU",
            _rel(delta, joint_delta(W0, b0, K.cpu(), V.cpu(), torch.eye(d_ff))),
            1e-6,
        )
    )
    add_delta(dev, layer, delta)
    W = arch.down_proj_weight(dev, layer)
    rows.append(
        (
            f"{name}: constraint error after the joint update",
            float(constraint_error(W, b, K, V).max()),
            tolerance(dev, layer),
        )
    )
    half = dev.to(torch.bfloat16)
    one = compute_edits(half, tok, requests[:1], hp, torch.eye(d_ff, device=device))[0]
    Wh, bh = arch.down_proj_weight(half, layer), arch.down_proj_bias(half, layer)
    k, v = one.key.unsqueeze(1).to(device), one.value.unsqueeze(1).to(device)
    add_delta(half, layer, joint_delta(Wh, bh, k, v, torch.eye(d_ff, device=device)))
    Wh = arch.down_proj_weight(half, layer)
    rows.append(
        (
            f"{name}: bfloat16 edit's constraint error",
            float(constraint_error(Wh, bh, k, v).max()),
            tolerance(half, layer),
        )
    )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--n", type=int, default=4, help="edits per family")
    parser.add_argument("--data", default=str(DATA))
    args = parser.parse_args()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(assets.gpt2_tokenizer_dir())
    requests = read_requests(args.data, args.n)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"device {args.device} ({name}), torch {torch.__version__}")
    rows = _family("GPT-2", gpt2_xl(16), 1, args.device, tok, requests)
    rows += _family("Llama", llama3_8b_truncated(2, 16), 1, args.device, tok, requests)
    print("| check | measured | limit | ok |")
    print("|---|---|---|---|")
    failed = 0
    for check, measured, limit in rows:
        ok = measured <= limit
        failed += not ok
        print(f"| {check} | {measured:.2e} | {limit:.0e} | {'yes' if ok else 'NO'} |")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
