"""Lifelong editing: N CounterFact edits registered one after another, then compiled both ways.

    python bench/lifelong.py --n 100 [--data ../shared/data/counterfact_500.json]

Each edit is computed on the head model (the base with every earlier edit applied), as
`factstore edit add` does. The sequential compile is plain sequential ROME (each rank-one
update in order); the joint compile solves all constraints of a layer at once. Every edit is
scored on the final model: ES (prompt prefers the new object over the true one), PS (same
on its paraphrase prompts), NS (its neighbourhood prompts still prefer the true object).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def score(model, tok, records: list[dict], requests) -> dict:  # type: ignore[no-untyped-def]
    from factstore.rome.scoring import target_logprobs

    def prefers(prompts: list[str], a: list[str], b: list[str]) -> list[bool]:
        return [bool(x > y) for x, y in zip(target_logprobs(model, tok, prompts, a), target_logprobs(model, tok, prompts, b))]

    es, ps, ns = [], [], []
    for record, req in zip(records, requests):
        new, true = req.target_new, req.target_true
        es += prefers([req.text], [new], [true])
        para = record["paraphrase_prompts"]
        ps += prefers(para, [new] * len(para), [true] * len(para))
        neigh = record["neighborhood_prompts"]
        ns += prefers(neigh, [true] * len(neigh), [new] * len(neigh))
    pct = lambda xs: round(100 * sum(xs) / len(xs), 1)  # noqa: E731
    return {"ES": pct(es), "PS": pct(ps), "NS": pct(ns)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "counterfact_500.json"))
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="factstore-lifelong-"))
    os.environ["FACTSTORE_HOME"] = str(home)

    from transformers import AutoModelForCausalLM

    from factstore import compiler, service
    from factstore.importer import read_requests

    records = json.loads(Path(args.data).read_text())[: args.n]
    requests = read_requests(args.data, args.n)
    store = service.open_store()
    service.add_model(store, "smol", "starter:smollm2-135m")
    session = service.open_session(store, "smol", device="cpu")
    print("unedited:", score(session.model, session.tokenizer, records, requests), flush=True)
    clock = time.perf_counter()
    for i, request in enumerate(requests, start=1):
        session.add(request)
        if i % 10 == 0:
            print(f"  {i} edits registered, {time.perf_counter() - clock:.0f} s", flush=True)
    for mode in ("sequential", "joint"):
        clock = time.perf_counter()
        try:
            release, _ = compiler.build(store, "smol", mode, out=str(home / mode), device="cpu", check=False)
        except Exception as exc:  # noqa: BLE001 - a refused compile is a result
            print(f"{mode}: compile refused: {exc}", flush=True)
            continue
        seconds = time.perf_counter() - clock
        model = AutoModelForCausalLM.from_pretrained(release.path).eval()
        print(f"{mode} ({seconds:.1f} s to compile):", score(model, session.tokenizer, records, requests), flush=True)


if __name__ == "__main__":
    main()
