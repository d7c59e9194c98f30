"""Latency from a submission to a worker taking it, on PostgreSQL: polling against LISTEN/NOTIFY.

    python bench/wakeup.py --db postgresql+psycopg://postgres@127.0.0.1:5432/test [--n 20] [--poll 1.0]

DB must be a database factstore may empty (it is migrated and filled with one tiny random
GPT-2). An in-process worker (one thread) serves it; each submission comes at a random moment
0-1 s after the previous edit became active; the latency is until the request leaves
`pending` (the store looked at every 5 ms). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", required=True)
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--poll", type=float, default=1.0)
    args = parser.parse_args()

    import sqlalchemy as sa
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from factstore import api
    from factstore.weights import assets
    from factstore.worker.loop import WorkerSettings

    with sa.create_engine(args.db).begin() as conn:  # a clean schema, as the suite's PostgreSQL fixture does
        conn.execute(sa.text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    api.upgrade_database(args.db)
    store = api.open_store(args.db)
    with tempfile.TemporaryDirectory() as tmp:
        folder, corpus = Path(tmp) / "model", Path(tmp) / "corpus.json"
        GPT2LMHeadModel(GPT2Config(n_layer=3, n_embd=64, n_head=4, n_positions=128)).save_pretrained(folder)
        AutoTokenizer.from_pretrained(assets.gpt2_tokenizer_dir()).save_pretrained(folder)
        corpus.write_text(json.dumps([f"Line {i}: the bridge crosses the river." for i in range(200)]))
        api.add_model(store, "tiny", str(folder))
        api.compute_stats(store, "tiny", api.StatsOptions(corpus=str(corpus), tokens=2000), device="cpu")
        rows = [("poll", _run(store, WorkerSettings(poll=args.poll, batch=1, jobs=False, listen=False), args.n, 0))]
        rows.append(("LISTEN/NOTIFY", _run(store, WorkerSettings(poll=args.poll, batch=1, jobs=False), args.n, 1000)))
    print(f"| worker wakes by (poll {args.poll:g} s) | n | median ms | mean ms | max ms |\n|---|---|---|---|---|")
    for name, lat in rows:
        ms = [x * 1000 for x in lat]
        print(f"| {name} | {len(ms)} | {statistics.median(ms):.0f} | {statistics.mean(ms):.0f} | {max(ms):.0f} |")


def _run(store, settings, n: int, offset: int) -> list[float]:  # type: ignore[no-untyped-def]
    from factstore import api
    from factstore.worker.loop import Worker

    worker = Worker(store, settings)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    rng = random.Random(0)
    latencies = []
    checks = api.model_checks(store, "tiny")  # once: the submission itself is then a few milliseconds
    try:
        for i in range(-1, n):  # the first one loads the head: not timed
            time.sleep(rng.random())
            clock = time.monotonic()
            entry, _ = api.submit_edit(
                store, "tiny", api.EditRequest("{} is in", f"Tower {offset + i + 1}", "Rome"), checks=checks
            )
            while api.get_entry(store, entry.id).status == "pending":
                time.sleep(0.005)
            if i >= 0:
                latencies.append(time.monotonic() - clock)
            while api.get_entry(store, entry.id).status == "computing":
                time.sleep(0.005)
    finally:
        worker.stopping.set()
        thread.join(30)
    return latencies


if __name__ == "__main__":
    main()
