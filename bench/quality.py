"""Edit quality by dtype and by batch size, on CounterFact records (ROME's single-edit protocol).

    python bench/quality.py                          # SmolLM2: float32 one at a time, float32 in batches of 8, bfloat16
    python bench/quality.py --n 30 --runs float32:1 bfloat16:1

Each run registers the starter model in its dtype in a fresh store, computes its key statistics
(the default 50k tokens), and scores --n records of counterfact_500.json with `eval --mode
single` (no fluency), each record's edit computed on the clean base; a batch computes B records'
edits in one optimisation and still applies and scores each alone. Then one edit is compiled,
and the release's bytes are reported. Prints a table with the seconds each run took.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "counterfact_500.json"


def run(dtype: str, batch: int, n: int, data: str) -> dict:
    from factstore import api

    store = api.open_store()
    alias = f"smollm2-{dtype}"
    if not any(m.alias == alias for m in api.list_models(store)):
        api.add_model(store, alias, "starter:smollm2-135m", dtype=dtype)
        api.compute_stats(store, alias)
    clock = time.perf_counter()
    scores = api.evaluate_model(store, alias, data, n, api.EvalSettings(mode="single", fluency=None, batch=batch))
    seconds = time.perf_counter() - clock
    size = None
    if batch == 1:
        if not api.list_edits(store, alias):
            api.add_edit(store, alias, api.EditRequest("{} is located in the city of", "The Eiffel Tower", "Rome"))
        release, _ = api.compile_release(store, alias)
        size = sum(p.stat().st_size for p in Path(release.path).iterdir() if p.is_file())
    return {"dtype": dtype, "batch": batch, "scores": scores, "seconds": seconds, "release_bytes": size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=30)
    parser.add_argument("--runs", nargs="+", default=["float32:1", "float32:8", "bfloat16:1"], help="DTYPE:BATCH")
    parser.add_argument("--data", default=str(DATA))
    args = parser.parse_args()
    os.environ["FACTSTORE_HOME"] = tempfile.mkdtemp(prefix="factstore-quality-")
    os.environ.setdefault("FACTSTORE_CACHE", str(Path.home() / ".factstore" / "cache"))
    rows = []
    for spec in args.runs:
        dtype, batch = spec.split(":")
        rows.append(run(dtype, int(batch), args.n, args.data))
        r = rows[-1]
        print(f"done {dtype} B={batch}: {r['seconds']:.0f} s", flush=True)
    print(f"| dtype | batch | ES | PS | NS | S | unedited NS | seconds (eval of {args.n}) | release size |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        s, u = r["scores"], r["scores"]["unedited"]
        size = "" if r["release_bytes"] is None else f"{r['release_bytes'] / 1e6:.0f} MB"
        print(
            f"| {r['dtype']} | {r['batch']} | {s['ES']:.1f} | {s['PS']:.1f} | {s['NS']:.1f} | {s['S']:.1f} | {u['NS']:.1f} | {r['seconds']:.0f} | {size} |"
        )


if __name__ == "__main__":
    main()
