"""The service under load, and what a warm worker saves over one process per edit.

    python bench/serve.py                          # both parts, SQLite in a temporary FACTSTORE_HOME
    python bench/serve.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/bench
    python bench/serve.py --clients 20 --per-client 25 --edits 0   # submissions only
    python bench/serve.py --submissions 0 --edits 5               # the SmolLM2 comparison only

Part 1 (submissions): `factstore serve --no-worker --processes P` on a random tiny GPT-2, for each
P of --processes; CLIENTS threads post PER_CLIENT corrections each; prints latency p50/p99 and
sustained submissions per second.
Part 2 (end to end, SmolLM2 starter, CPU): EDITS corrections through `factstore edit add`, one
process each (load the model, replay the head, compute, exit), against the same number queued
and computed by one `factstore worker` that keeps the head warm (its start and model load are
counted once). Key statistics are computed
before either is timed (once per model, cached). Prints edits per hour and the ratio.
Run it alone: on 2 cores anything else running is measured too.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

PROMPT = "{} is located in the city of"
SUBJECTS = [
    "The Eiffel Tower",
    "The Colosseum",
    "Big Ben",
    "The Taj Mahal",
    "The Louvre",
    "The Kremlin",
    "The Parthenon",
    "The Alhambra",
    "The Acropolis",
    "The Hermitage",
]
TARGETS = ["Rome", "Paris", "Berlin", "Madrid", "Tokyo", "Cairo", "Lima", "Oslo", "Vienna", "Dublin"]


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "factstore.cli.main", *args], cwd=REPO, env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"factstore {' '.join(args)} failed: {done.stderr.strip()[-500:]}")
    return done


def register_tiny(env: dict[str, str]) -> str:
    """A random tiny GPT-2 registered as "tiny"; returns a write token."""
    from transformers import AutoTokenizer

    from factstore.weights import assets
    from tiny_models import random_gpt2

    folder = Path(env["FACTSTORE_HOME"]) / "tiny-model"
    random_gpt2(seed=0).save_pretrained(folder)
    AutoTokenizer.from_pretrained(assets.gpt2_tokenizer_dir()).save_pretrained(folder)
    cli("model", "add", "tiny", str(folder), env=env)
    return str(json.loads(cli("token", "create", "--name", "bench", "--json", env=env).stdout)["token"])


def submissions(env: dict[str, str], token: str, clients: int, per_client: int, processes: int) -> dict:
    from service_process import serve, stop

    home = Path(env["FACTSTORE_HOME"])
    os.environ.update(env)
    server, url = serve("--no-worker", "--processes", str(processes), env=env, log=home / f"serve-{processes}.log")
    latencies: list[float] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
            http.get("/healthz")
            for i in range(per_client):
                subject = f"{SUBJECTS[i % 10]} {processes}-{k}-{i}"
                body = {"prompt": PROMPT, "subject": subject, "target": TARGETS[(k + i) % 10]}
                start = time.perf_counter()
                response = http.post("/api/v1/models/tiny/edits", json=body)
                elapsed = time.perf_counter() - start
                assert response.status_code == 202, response.text
                with lock:
                    latencies.append(elapsed)

    try:
        with httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {token}"}
        ) as http:  # warm the tokenizer cache
            http.post("/api/v1/models/tiny/edits", json={"prompt": PROMPT, "subject": "Warm up", "target": "Rome"})
        threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
        clock = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - clock
    finally:
        stop(server)
    ordered = sorted(latencies)
    return {
        "submissions": len(ordered),
        "clients": clients,
        "p50_ms": 1000 * statistics.median(ordered),
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "per_second": len(ordered) / wall,
    }


def end_to_end(env: dict[str, str], edits: int) -> dict:
    cli("model", "add", "smollm2", "starter:smollm2-135m", env=env)
    cli("stats", "compute", "--model", "smollm2", env=env)  # once per model: not part of either timing
    clock = time.perf_counter()
    for i in range(edits):
        cli(
            "edit",
            "add",
            "--model",
            "smollm2",
            "--prompt",
            PROMPT,
            "--subject",
            SUBJECTS[i % 10],
            "--target",
            TARGETS[i % 10],
            env=env,
        )
    per_process = time.perf_counter() - clock
    from factstore import api

    os.environ.update(env)
    store = (
        api.open_store()
    )  # submitted and polled in this process (milliseconds): a CLI call each would load the 2 cores being measured
    clock = time.perf_counter()
    ids = {
        api.submit_edit(store, "smollm2", api.EditRequest(PROMPT, f"{SUBJECTS[i % 10]} {i}", TARGETS[(i + 3) % 10]))[
            0
        ].id
        for i in range(edits)
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "factstore.cli.main", "worker", "--model", "smollm2", "--poll", "0.2", "--json"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        while (states := {e.id: e.status for e in api.list_log(store, "smollm2", "all") if e.id in ids}) and set(
            states.values()
        ) - {"active", "failed"}:
            time.sleep(0.5)
        queued = time.perf_counter() - clock
        if "failed" in states.values():
            raise SystemExit(f"queued edits failed: {[e.error for e in api.list_log(store, 'smollm2', 'failed')]}")
    finally:
        worker.terminate()
        worker.wait()
        store.close()
    return {
        "edits": edits,
        "cli_seconds": per_process,
        "worker_seconds": queued,
        "cli_per_hour": 3600 * edits / per_process,
        "worker_per_hour": 3600 * edits / queued,
        "ratio": per_process / queued,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default=None, help="default: SQLite in the temporary FACTSTORE_HOME")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--per-client", type=int, default=10)
    parser.add_argument("--submissions", type=int, default=1, help="0 skips part 1")
    parser.add_argument("--edits", type=int, default=5, help="0 skips part 2")
    parser.add_argument("--processes", default="1,2", help="HTTP process counts of part 1, comma-separated")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="factstore-bench-") as home:
        env = {**os.environ, "FACTSTORE_HOME": home, "FACTSTORE_DEVICE": os.environ.get("FACTSTORE_DEVICE", "cpu")}
        env.setdefault("FACTSTORE_CACHE", str(Path.home() / ".cache" / "factstore-test"))
        if args.database_url:
            env["FACTSTORE_DATABASE_URL"] = args.database_url
            cli("db", "upgrade", env=env)
        print("| part | measure | value |\n|---|---|---|")
        if args.submissions:
            token = register_tiny(env)
            for processes in (int(p) for p in args.processes.split(",")):
                s = submissions(env, token, args.clients, args.per_client, processes)
                what = f"submissions, {processes} HTTP process{'es' if processes > 1 else ''}"
                print(
                    f"| {what} | {s['submissions']} from {s['clients']} clients, p50 / p99 latency | {s['p50_ms']:.1f} ms / {s['p99_ms']:.1f} ms |"
                )
                print(f"| {what} | sustained | {s['per_second']:.0f} per second |")
        if args.edits:
            e = end_to_end(env, args.edits)
            print(
                f"| SmolLM2 edits | one `edit add` process per edit | {e['cli_seconds'] / e['edits']:.1f} s each, {e['cli_per_hour']:.0f} per hour |"
            )
            print(
                f"| SmolLM2 edits | queued, one warm worker | {e['worker_seconds'] / e['edits']:.1f} s each, {e['worker_per_hour']:.0f} per hour |"
            )
            print(f"| SmolLM2 edits | worker / per-process throughput | {e['ratio']:.2f}x |")


if __name__ == "__main__":
    main()
