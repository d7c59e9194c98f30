"""Run `factstore serve` and `factstore worker` as real processes for the tests that need them."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from factstore import api
from factstore.storage.store import Store
from tiny_models import random_gpt2

REPO = Path(__file__).resolve().parents[1]


def add_random_gpt2(store: Store, alias: str, where: Path, tokenizer, seed: int, line: str) -> None:  # type: ignore[no-untyped-def]
    """Register a random tiny GPT-2 under ALIAS, with key statistics from 200 variants of LINE."""
    folder = where / f"{alias}-model"
    random_gpt2(seed=seed).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    corpus = where / f"{alias}-corpus.json"
    corpus.write_text(json.dumps([f"{line} ({i})" for i in range(200)]))
    api.add_model(store, alias, str(folder))
    api.compute_stats(store, alias, api.StatsOptions(corpus=str(corpus), tokens=2000), device="cpu")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def finish(*args: str) -> subprocess.CompletedProcess:
    """`factstore ARGS...` in a process of its own, run to its end, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "factstore.cli.main", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=os.environ.copy(),
    )


def start(*args: str, env: dict[str, str] | None = None, log: Path | None = None) -> subprocess.Popen:
    command = [sys.executable, "-m", "factstore.cli.main", *args]
    if log is None:
        return subprocess.Popen(
            command, cwd=REPO, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
    with open(log, "w") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            command, cwd=REPO, env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT
        )


def serve(*args: str, env: dict[str, str] | None = None, log: Path | None = None) -> tuple[subprocess.Popen, str]:
    """A `factstore serve` on a free port, once it answers /healthz."""
    port = free_port()
    process = start("serve", "--port", str(port), *args, env=env, log=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"serve exited with {process.returncode}" + (f": {log.read_text()[-2000:]}" if log else "")
            )
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise AssertionError("serve did not answer within 90 s")


def stop(process: subprocess.Popen, timeout: float = 60) -> int:
    process.terminate()
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()
