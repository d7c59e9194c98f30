"""Worker processes on SQLite and PostgreSQL: SIGKILL mid-batch loses nothing and computes each
edit once, SIGTERM finishes the current edit and exits, two workers share two models."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from factstore import api
from factstore.storage.store import Store
from factstore.worker.loop import Worker, WorkerSettings
from service_process import add_random_gpt2

pytestmark = pytest.mark.database  # the store is the subject: SQLite and PostgreSQL

REPO = Path(__file__).resolve().parents[1]
PROMPT = "{} is located in the city of"
LEASE = "2"  # seconds: a killed worker's model is taken over this fast


def start_worker(*args: str) -> subprocess.Popen:
    env = {**os.environ, "FACTSTORE_LEASE_SECONDS": LEASE}
    return subprocess.Popen(
        [sys.executable, "-m", "factstore.cli.main", "worker", "--poll", "0.1", "--json", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(condition: Callable[[], bool], seconds: float = 120, what: str = "condition") -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def step_until(
    process: subprocess.Popen, look: Callable[[], set[str]], wanted: set[str], past: set[str], what: str
) -> None:
    """Run PROCESS a few milliseconds at a time, looking at the store (LOOK) while it is stopped,
    until what it sees includes WANTED (the process is left stopped). A window of a few
    transactions, such as the completions at the end of a batch, is then caught however fast the
    machine; seeing PAST means it ran past the window."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, (
            f"the worker exited ({process.returncode}): {process.stderr.read() if process.stderr else ''}"
        )
        os.kill(process.pid, signal.SIGSTOP)
        os.waitpid(process.pid, os.WUNTRACED)  # stopped for sure before the store is read
        seen = look()
        if wanted <= seen:
            return
        assert seen != past, f"ran past {what}"
        os.kill(process.pid, signal.SIGCONT)
        time.sleep(0.003)
    raise AssertionError(f"timed out waiting for {what}")


def statuses(store: Store, alias: str = "tiny") -> list[str]:
    return [e.status for e in api.list_log(store, alias, "all")]


def submit(store: Store, alias: str, n: int, offset: int = 0) -> list[int]:
    checks = api.model_checks(store, alias)
    return [
        api.submit_edit(store, alias, api.EditRequest(PROMPT, f"Tower {i}", "Rome"), checks=checks)[0].id
        for i in range(offset, offset + n)
    ]


@pytest.mark.slow  # real processes, each loading torch
def test_a_worker_killed_mid_batch_loses_nothing(tiny_store: Store) -> None:
    ids = submit(tiny_store, "tiny", 8)
    worker = start_worker("--batch", "8")
    try:
        wait_for(lambda: "computing" in statuses(tiny_store), what="a claimed batch")
        step_until(
            worker,
            lambda: set(statuses(tiny_store)),
            wanted={"active", "computing"},
            past={"active"},
            what="a batch half done",
        )
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    assert "computing" in statuses(tiny_store) or "pending" in statuses(tiny_store)
    taker = Worker(tiny_store, WorkerSettings(poll=0.05, lease_seconds=2))
    taker.store.register_worker(taker.id, [])

    def taken_over() -> bool:
        taker.turn()  # nothing until the killed worker's lease expires, then the rest of its batch
        return set(statuses(tiny_store)) == {"active"}

    wait_for(taken_over, what="the takeover to finish")
    log = api.list_log(tiny_store, "tiny", "all")
    assert sorted(e.id for e in log) == ids  # nothing lost, nothing added
    assert sorted(e.seq for e in log if e.seq is not None) == list(range(1, 9))  # each computed exactly once
    assert [e.id for e in sorted(log, key=lambda e: e.seq or 0)] == ids  # in submission order


@pytest.mark.slow  # real processes, each loading torch
def test_sigterm_finishes_the_current_edit_and_exits(tiny_store: Store) -> None:
    submit(tiny_store, "tiny", 6)
    worker = start_worker("--batch", "6")
    wait_for(lambda: "computing" in statuses(tiny_store), what="a claimed batch")
    wait_for(lambda: "active" in statuses(tiny_store), what="the first edit")
    worker.send_signal(signal.SIGTERM)
    out, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err
    stats = json.loads(out)
    final = statuses(tiny_store)
    assert "computing" not in final and "failed" not in final  # the unstarted rest went back to the queue
    assert final.count("active") == stats["computed"] >= 1 and final.count("pending") == 6 - stats["computed"]
    assert tiny_store.list_live_workers(60) == []


@pytest.mark.slow  # real processes, each loading torch
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)  # where several workers on several machines meet
def test_two_workers_share_two_models(tiny_store: Store, tmp_path: Path, gpt2_tokenizer) -> None:  # type: ignore[no-untyped-def]
    add_random_gpt2(
        tiny_store,
        "second",
        tmp_path,
        gpt2_tokenizer,
        seed=1,
        line="Line: the bridge crosses the wide river near the market.",
    )
    first_ids, second_ids = submit(tiny_store, "tiny", 6), submit(tiny_store, "second", 6)
    workers = [start_worker("--batch", "2"), start_worker("--batch", "2")]
    try:
        wait_for(
            lambda: set(statuses(tiny_store)) | set(statuses(tiny_store, "second")) == {"active"},
            what="both models' queues",
        )
    finally:
        for w in workers:
            w.send_signal(signal.SIGTERM)
        results = [json.loads(w.communicate(timeout=60)[0]) for w in workers]
    for alias, ids in (("tiny", first_ids), ("second", second_ids)):
        log = sorted(api.list_log(tiny_store, alias, "active"), key=lambda e: e.seq or 0)
        assert [e.id for e in log] == ids and [e.seq for e in log] == list(range(1, 7))  # composed in submission order
    assert sum(r["computed"] for r in results) == 12 and sum(r["dropped"] for r in results) == 0


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)  # LISTEN/NOTIFY is PostgreSQL's
def test_an_idle_worker_on_postgresql_wakes_at_a_submission_not_at_its_next_poll(tiny_store: Store) -> None:
    """Its poll is a minute: only the submission's notification can make it take the request in
    seconds; a stop ends the wait at once (looked at every second)."""
    import threading

    submit(tiny_store, "tiny", 1)  # the head is loaded and warm before the clock starts
    worker = Worker(tiny_store, WorkerSettings(poll=60, batch=1, jobs=False))
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: statuses(tiny_store) == ["active"], 120, "the first edit")
        time.sleep(1.5)  # the worker looked at the empty queue and is waiting
        clock = time.monotonic()
        submit(tiny_store, "tiny", 1, offset=1)
        wait_for(lambda: statuses(tiny_store) == ["active", "active"], 30, "the wake-up")
        assert time.monotonic() - clock < 30  # a poll would have taken up to 60 s
    finally:
        worker.stopping.set()
        thread.join(10)
    assert not thread.is_alive()
