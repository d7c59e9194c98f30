"""Peak memory of the commands that load a model, against what they must hold.

    python bench/memory.py          # SmolLM2 float32, bfloat16 (from its float32 file, and from a bfloat16 copy), Gemma 3 270M
    python bench/memory.py --models smollm2:float32 --device cuda

Each command runs as its own `factstore` process; its peak resident set (ru_maxrss of the child)
is divided by the model's bytes in the dtype it is edited in plus C (float32, d_ff^2): the
issue's target is <= 1.5x. "over idle" subtracts the peak of a process that only imports what
those commands import (torch, transformers, factstore: the same for any model size).
Peak CUDA memory of edits on a GPU is in bench/gpu.py.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

SOURCES = {"smollm2": "starter:smollm2-135m", "gemma3": "starter:gemma3-270m", "smollm2-bf16-file": "SAVED"}
FACT = ["--prompt", "{} is located in the city of", "--subject", "The Eiffel Tower", "--target", "Rome"]
SECOND = ["--prompt", "{} is located in the city of", "--subject", "The Colosseum", "--target", "Oslo"]
STATS_TOKENS = 5000  # C has the same size whatever its token count


def peak_rss(argv: list[str]) -> int:
    """Peak RSS in bytes of one child process running ARGV (which must succeed)."""
    probe = (
        "import resource, subprocess, sys\n"
        "done = subprocess.run(sys.argv[1:])\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss if done.returncode == 0 else -done.returncode)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, check=True)
    kib = int(out.stdout.strip().splitlines()[-1])
    if kib <= 0:
        raise SystemExit(f"{' '.join(argv[:4])} failed: {out.stderr[-2000:]}")
    return kib * 1024


def factstore(*args: str) -> list[str]:
    return [sys.executable, "-m", "factstore.cli.main", *args]


def measure(name: str, dtype: str, device: str, hub_url: str) -> dict:
    alias = f"{name}-{dtype}"
    source = SOURCES[name] if SOURCES[name] != "SAVED" else _bf16_checkpoint()
    subprocess.run(factstore("model", "add", alias, source, "--dtype", dtype), check=True, capture_output=True)
    subprocess.run(
        factstore("stats", "compute", "--model", alias, "--tokens", str(STATS_TOKENS), "--device", device),
        check=True,
        capture_output=True,
    )
    row = {"model": alias, "edit add": peak_rss(factstore("edit", "add", "--model", alias, *FACT, "--device", device))}
    row["first compile"] = peak_rss(
        factstore("compile", "--model", alias, "--device", device)
    )  # also writes the unchanged shards once
    subprocess.run(
        factstore("edit", "add", "--model", alias, *SECOND, "--device", device), check=True, capture_output=True
    )
    row["compile"] = peak_rss(factstore("compile", "--model", alias, "--device", device))
    subprocess.run(
        factstore("publish", "--model", alias, "--repo", f"bench/{alias}", "--endpoint", hub_url),
        check=True,
        capture_output=True,
    )
    out = Path(os.environ["FACTSTORE_HOME"]) / "pulled" / alias
    row["pull"] = peak_rss(factstore("pull", f"bench/{alias}", "--out", str(out), "--endpoint", hub_url))
    # a release of a local folder is imported onto the alias that holds those weights (its log is a prefix: the import checks the rebuild)
    into = alias if SOURCES[name] == "SAVED" else alias + "-copy"
    row["pull --import-edits"] = peak_rss(
        factstore(
            "pull",
            f"bench/{alias}",
            "--out",
            str(out) + "-import",
            "--import-edits",
            "--alias",
            into,
            "--endpoint",
            hub_url,
            "--device",
            device,
        )
    )
    row["model bytes"] = _model_bytes(alias, dtype)
    return row


def _bf16_checkpoint() -> str:
    """SmolLM2 saved in bfloat16, as Hub checkpoints of real models are (the starter is stored in
    float32: loading it in bfloat16 reads float32 first)."""
    from factstore.weights import checkpoints

    folder = Path(os.environ["FACTSTORE_HOME"]) / "smollm2-bf16"
    if not (folder / "config.json").exists():
        loaded = checkpoints.load("starter:smollm2-135m", device="cpu", dtype="bfloat16")
        loaded.model.save_pretrained(folder)
        loaded.tokenizer.save_pretrained(folder)
    return str(folder)


def _model_bytes(alias: str, dtype: str) -> int:
    """Parameters x bytes per element in DTYPE, plus C (float32, d_ff x d_ff) of the edit layer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from factstore import api, arch
    from factstore.weights import checkpoints

    base = api.open_store().get_base_model(alias)
    config = AutoConfig.from_pretrained(checkpoints.resolve(base.source).local_path)

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    n = sum(p.numel() for p in model.parameters())  # tied weights counted once
    d_ff = arch.down_proj_weight(model, 0).shape[1]
    return n * torch.finfo(getattr(torch, dtype)).bits // 8 + d_ff * d_ff * 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--models",
        nargs="+",
        default=["smollm2:float32", "smollm2:bfloat16", "smollm2-bf16-file:bfloat16", "gemma3:float32"],
    )
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from isolated import hub_bench_home

    hub_bench_home("factstore-memory-")
    from hub_server import HubServer

    idle = peak_rss([sys.executable, "-c", "import factstore.api as api; api.load_heavy_modules()"])
    rows = []
    with HubServer({"bench-token": "bench"}, lfs=True) as hub:
        for spec in args.models:
            name, dtype = spec.split(":")
            rows.append(measure(name, dtype, args.device, hub.url))
    print(f"idle process (imports only): {idle / 2**20:.0f} MiB")
    commands = ["edit add", "first compile", "compile", "pull", "pull --import-edits"]
    print("| model | model + C | " + " | ".join(f"{c}: peak (ratio; over idle)" for c in commands) + " |")
    print("|---|---|" + "---|" * len(commands))
    for r in rows:
        size = r["model bytes"]
        cells = [f"{r[c] / 2**20:.0f} MiB ({r[c] / size:.2f}x; {(r[c] - idle) / size:.2f}x)" for c in commands]
        print(f"| {r['model']} | {size / 2**20:.0f} MiB | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
