"""The edit queue on SQLite and PostgreSQL: migration 0002 over a 0001 store, submissions checked
without weights, leases that let one worker compute a model at a time, failures that do not block,
heads rebuilt when another process changes the log."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
import torch
from sqlalchemy import text

from factstore import api, arch
from factstore.domain import EditRequest
from factstore.errors import EditStateError, HeadChanged, InvalidEditRequest, LeaseLost
from factstore.storage import schema
from factstore.storage.engine import make_engine
from factstore.storage.store import Store
from factstore.worker.loop import Worker, WorkerSettings
from service_process import add_random_gpt2
from test_store import new_edit

pytestmark = pytest.mark.database  # the store is the subject: SQLite and PostgreSQL

FACTS = [("The Eiffel Tower", "Rome"), ("The Louvre", "Berlin"), ("Big Ben", "Madrid"), ("The Colosseum", "Oslo")]
PROMPT = "{} is located in the city of"


def _submit(store: Store, subject: str, target: str, **kw: object) -> int:
    entry, created = api.submit_edit(store, "tiny", api.EditRequest(PROMPT, subject, target), api.EditOptions(**kw))  # type: ignore[arg-type]
    assert created and entry.status == "pending" and entry.seq is None
    return entry.id


def _drain(store: Store, **settings: object) -> Worker:
    worker = Worker(store, WorkerSettings(poll=0.05, **settings))  # type: ignore[arg-type]
    worker.run(max_idle_turns=1)
    return worker


def test_upgrade_from_0001_keeps_every_edit(db_url: str) -> None:
    engine = make_engine(db_url)
    schema.upgrade(engine, "0001")
    now = datetime.now(timezone.utc)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO base_models (alias, source, revision, model_type, created_at) VALUES ('m', 's', 'r', 'gpt2', :t)"
            ),
            {"t": now},
        )
        conn.execute(
            text(
                "INSERT INTO edits (base_model_id, seq, prompt, subject, target_new, request_sha256, layer, module, key, key_shape, key_sha256,"
                " value, value_shape, value_sha256, hparams, hparams_fingerprint, status, metrics, created_at) VALUES"
                " (1, 1, '{} is in', 'X', 'Rome', 'h', 1, 'mod', :k, '[2]', 'ks', :v, '[2]', 'vs', '{}', 'f', 'active', '{}', :t)"
            ),
            {"k": b"\x00" * 8, "v": b"\x01" * 8, "t": now},
        )
    schema.upgrade(engine)
    store = Store(db_url)
    [edit] = store.list_edits(1, "active")
    assert (edit.id, edit.seq, edit.key, edit.value, edit.status) == (1, 1, b"\x00" * 8, b"\x01" * 8, "active")
    store.create_request(1, EditRequest("{} is in", "Y", "Oslo"))
    assert [e.status for e in store.list_entries(1)] == ["active", "pending"]
    schema.downgrade(engine, "0001")  # a request never computed cannot live in the old schema; edits do
    with engine.connect() as conn:
        assert conn.execute(text("SELECT id FROM edits")).scalars().all() == [1]
    engine.dispose()
    store.close()


def test_a_submission_is_checked_without_loading_weights(tiny_store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    from factstore.weights import checkpoints

    def no_weights(*_a: object, **_k: object) -> None:
        raise AssertionError("a submission loaded the model's weights")

    monkeypatch.setattr(checkpoints, "load", no_weights)
    edit_id = _submit(tiny_store, "The Eiffel Tower", "Rome", note="from a test")
    refusals: list[tuple[dict, str]] = [
        ({"prompt": "no braces here", "subject": "X", "target": "Y"}, "exactly once"),
        ({"prompt": PROMPT, "subject": "The Eiffel Tower", "target": "Rome", "layer": 3}, "layers 0 to 2"),
        ({"prompt": "{}s are located in", "subject": "The Eiffel Tower", "target": "Rome"}, "token boundary"),
        ({"prompt": "{} " + "word " * 400, "subject": "X", "target": "Y"}, "limit is 256"),
        ({"prompt": PROMPT, "subject": "X", "target": "Y", "layer": "auto"}, "no traced layer"),
    ]
    for kwargs, message in refusals:
        with pytest.raises(InvalidEditRequest, match=message):
            request = api.EditRequest(kwargs["prompt"], kwargs["subject"], kwargs["target"])
            api.submit_edit(tiny_store, "tiny", request, api.EditOptions(layer=kwargs.get("layer")))
    assert [e.id for e in api.list_log(tiny_store, "tiny")] == [edit_id]
    assert api.get_entry(tiny_store, edit_id).note == "from a test"
    with pytest.raises(EditStateError, match="no key and value yet"):
        api.get_edit(tiny_store, edit_id)


def test_only_the_lease_holder_completes_and_a_takeover_requeues(tiny_store: Store) -> None:
    base = tiny_store.get_base_model("tiny")
    edit_id = _submit(tiny_store, "The Eiffel Tower", "Rome")
    assert tiny_store.acquire_lease(base.id, "a", 0.3)
    assert not tiny_store.acquire_lease(base.id, "b", 30)  # held by a
    [claimed] = tiny_store.claim_requests(base.id, "a", 8)
    assert claimed.id == edit_id and tiny_store.get_entry(edit_id).status == "computing"
    with pytest.raises(LeaseLost):
        tiny_store.claim_requests(base.id, "b", 8)
    time.sleep(0.4)  # a stops renewing (killed): its lease expires
    assert tiny_store.acquire_lease(base.id, "b", 30)
    assert tiny_store.get_entry(edit_id).status == "pending"  # back in the queue, computed by b later
    request = EditRequest(PROMPT, "The Eiffel Tower", "Rome")
    with pytest.raises(LeaseLost):
        tiny_store.complete_request(edit_id, "a", new_edit(subject=request.subject), computed_on=[])
    [again] = tiny_store.claim_requests(base.id, "b", 8)
    done = tiny_store.complete_request(again.id, "b", new_edit(subject=request.subject, prompt=PROMPT), computed_on=[])
    assert done.status == "active" and done.seq == 1
    tiny_store.release_lease(base.id, "b")
    assert tiny_store.acquire_lease(base.id, "c", 30)


def test_a_result_computed_on_a_stale_head_goes_back_to_the_queue(tiny_store: Store) -> None:
    base = tiny_store.get_base_model("tiny")
    edit_id = _submit(tiny_store, "The Eiffel Tower", "Rome")
    assert tiny_store.acquire_lease(base.id, "w", 30)
    tiny_store.claim_requests(base.id, "w", 1)
    other = tiny_store.create_edit(base.id, new_edit(subject="Big Ben", prompt=PROMPT))  # an import lands meanwhile
    with pytest.raises(HeadChanged):
        tiny_store.complete_request(edit_id, "w", new_edit(prompt=PROMPT), computed_on=[])
    assert tiny_store.get_entry(edit_id).status == "pending"
    [again] = tiny_store.claim_requests(base.id, "w", 1)
    assert tiny_store.complete_request(again.id, "w", new_edit(prompt=PROMPT), computed_on=[other.id]).seq == 2


def test_a_request_whose_workers_keep_dying_fails_after_three_attempts(tiny_store: Store) -> None:
    base = tiny_store.get_base_model("tiny")
    edit_id = _submit(tiny_store, "The Eiffel Tower", "Rome")
    for attempt in range(3):
        assert tiny_store.acquire_lease(
            base.id, f"doomed-{attempt}", 0.05
        )  # takes over (and requeues) the last one's claim
        assert [e.id for e in tiny_store.claim_requests(base.id, f"doomed-{attempt}", 1)] == [edit_id]
        time.sleep(0.1)  # killed: the lease lapses
    assert tiny_store.acquire_lease(base.id, "survivor", 30)
    assert tiny_store.claim_requests(base.id, "survivor", 1) == []
    entry = tiny_store.get_entry(edit_id)
    assert entry.status == "failed" and "gave up after 3 attempts" in (entry.error or "")


def test_the_worker_computes_in_order_and_a_failure_does_not_block(
    tiny_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from factstore.editing import session

    real = session.compute_edits

    def flaky(model: object, tokenizer: object, requests: list[EditRequest], *args: object) -> object:
        if any(r.subject == "The Louvre" for r in requests):  # fails the batch that holds it, then it alone
            raise RuntimeError("simulated failure\nwith a second line")
        return real(model, tokenizer, requests, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(session, "compute_edits", flaky)
    ids = [_submit(tiny_store, s, t) for s, t in FACTS[:3]]
    worker = _drain(tiny_store, batch=2)
    entries = {e.id: e for e in api.list_log(tiny_store, "tiny")}
    assert [entries[i].status for i in ids] == ["active", "failed", "active"]
    assert entries[ids[1]].error == "RuntimeError: simulated failure with a second line" and entries[ids[1]].seq is None
    assert [entries[ids[0]].seq, entries[ids[2]].seq] == [1, 2]
    assert (worker.stats.computed, worker.stats.failed) == (2, 1)
    assert tiny_store.list_live_workers(60) == []  # a worker that stopped is not live

    # another process retracts an edit: the warm head is rebuilt before the next request
    api.retract_edit(tiny_store, ids[0])
    newer = _submit(tiny_store, *FACTS[3])
    worker.stopping.clear()
    worker.run(max_idle_turns=1)
    assert worker.stats.rebuilds == 1
    head = worker._sessions[tiny_store.get_base_model("tiny").id]
    assert [e.id for e in head.applied] == [ids[2], newer] == tiny_store.list_active_ids(1)


def test_the_same_fact_again_supersedes_through_the_queue(tiny_store: Store) -> None:
    first = _submit(tiny_store, "The Eiffel Tower", "Rome")
    _drain(tiny_store)
    second = _submit(tiny_store, "The Eiffel Tower", "Berlin")
    _drain(tiny_store)
    assert api.get_entry(tiny_store, first).status == "superseded"
    assert api.get_entry(tiny_store, second).supersedes_id == first


def test_edit_add_waits_for_the_worker_that_holds_the_model(tiny_store: Store) -> None:
    """In-process `edit add` and a worker never compute one model at once: the CLI path waits
    while another holder has the model, and a request the holder computed is returned as is."""
    import threading

    base = tiny_store.get_base_model("tiny")
    assert tiny_store.acquire_lease(base.id, "other-worker", 30)
    result: dict = {}
    thread = threading.Thread(
        target=lambda: result.setdefault(
            "out", api.add_edit(tiny_store, "tiny", api.EditRequest(PROMPT, "Big Ben", "Oslo"))
        )
    )
    thread.start()
    deadline = (
        time.monotonic() + 120
    )  # the request is stored once the tokenizer has checked it (slow on a loaded machine)
    while (
        not (pending := api.list_log(tiny_store, "tiny", "pending"))
        and thread.is_alive()
        and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    [entry] = pending
    time.sleep(1.0)
    assert thread.is_alive() and api.get_entry(tiny_store, entry.id).status == "pending"  # waiting, not computing
    tiny_store.release_lease(base.id, "other-worker")
    thread.join(timeout=120)
    assert result["out"].edit.id == entry.id and result["out"].edit.status == "active"


def test_a_rerun_import_finishes_requests_an_interrupted_run_left_queued(tiny_store: Store, tmp_path: Path) -> None:
    rows = "".join(f'"{PROMPT}",{subject},{target}\n' for subject, target in FACTS[:3])
    (tmp_path / "facts.csv").write_text("prompt,subject,target\n" + rows)
    left = _submit(tiny_store, *FACTS[1])  # what a killed import had stored but not computed
    result = api.import_edits(tiny_store, "tiny", str(tmp_path / "facts.csv"))
    assert (result["added"], result["skipped"]) == (3, 0) and left in result["ids"]
    log = api.list_log(tiny_store, "tiny", "all")
    assert len(log) == 3 and {e.status for e in log} == {"active"}
    assert api.import_edits(tiny_store, "tiny", str(tmp_path / "facts.csv"))["skipped"] == 3


def test_an_interrupted_edit_add_withdraws_its_request(tiny_store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    from factstore.editing.session import EditSession

    def interrupted(*_a: object, **_k: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(EditSession, "_compute", interrupted)
    with pytest.raises(KeyboardInterrupt):
        api.add_edit(tiny_store, "tiny", api.EditRequest(PROMPT, "Big Ben", "Oslo"))
    [entry] = api.list_log(tiny_store, "tiny", "all")
    assert entry.status == "failed" and "interrupted" in (entry.error or "")
    assert _drain(tiny_store).stats.computed == 0  # no worker computes it later


def test_a_worker_computes_a_batch_together_and_applies_it_in_order(tiny_store: Store) -> None:
    """Four requests in one optimisation; a correction of one of them in the same batch is
    computed after it, alone, and supersedes it."""
    from factstore.editing.session import EditSession

    ids = [_submit(tiny_store, s, t) for s, t in FACTS]
    again = _submit(tiny_store, FACTS[0][0], "Vienna")
    worker = _drain(tiny_store, batch=5)
    assert (worker.stats.computed, worker.stats.failed) == (5, 0)
    entries = {e.id: e for e in api.list_log(tiny_store, "tiny")}
    assert [entries[i].status for i in ids] == ["superseded", "active", "active", "active"] and entries[
        again
    ].status == "active"
    edits = api.list_edits(tiny_store, "tiny")
    assert [e.id for e in edits] == [*ids[1:], again] and [e.seq for e in edits] == [2, 3, 4, 5]
    assert [e.metrics["batch"] for e in edits] == [4, 4, 4, 1]
    head = worker._sessions[tiny_store.get_base_model("tiny").id].model
    replayed = EditSession(tiny_store, "tiny", device="cpu").model  # a fresh replay of the log
    assert torch.equal(arch.down_proj_weight(head, 2), arch.down_proj_weight(replayed, 2))


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the worker's turn order is the subject
def test_a_worker_gives_up_a_busy_model_when_another_waits(tiny_store: Store, tmp_path: Path, gpt2_tokenizer) -> None:  # type: ignore[no-untyped-def]
    """Eight requests on one model and one on another: after fair_batches batches on the first,
    the worker serves the second before the first's queue is empty."""
    add_random_gpt2(tiny_store, "second", tmp_path, gpt2_tokenizer, seed=1, line="Line: the bridge crosses the river.")
    for i in range(8):
        _submit(tiny_store, f"Tower {i}", "Rome")
    other, _ = api.submit_edit(tiny_store, "second", api.EditRequest(PROMPT, "The Louvre", "Berlin"))
    worker = Worker(tiny_store, WorkerSettings(poll=0.05, batch=1, fair_batches=2))
    for _ in range(6):
        worker.turn()
        if api.get_entry(tiny_store, other.id).status == "active":
            break
    assert api.get_entry(tiny_store, other.id).status == "active"
    assert len(api.list_log(tiny_store, "tiny", "active")) == 2  # two batches of one, then the other model


def test_a_model_another_worker_computes_is_not_waiting(tiny_store: Store) -> None:
    """The fair turn gives way only to models nobody serves: one under another worker's live
    lease is not waiting; under an expired lease, or this worker's own, it is."""
    base = tiny_store.get_base_model("tiny").id
    assert tiny_store.list_waiting_models("w1") == []
    _submit(tiny_store, "The Louvre", "Berlin")
    assert tiny_store.list_waiting_models("w1") == [base]
    assert tiny_store.acquire_lease(base, "w2", 30)
    assert tiny_store.list_waiting_models("w1") == [] and tiny_store.list_waiting_models("w2") == [base]
    tiny_store.release_lease(base, "w2")
    assert tiny_store.acquire_lease(base, "w2", 0.01)
    time.sleep(0.05)
    assert tiny_store.list_waiting_models("w1") == [base]
