"""A job's outcome says what happened: a compile or publish job cancelled before its work began
writes and sends nothing, and one whose release was written (or sent) before the cancel arrived
is recorded as done, with its result, not as cancelled."""

from __future__ import annotations

import pytest

from factstore import api
from factstore.domain import EditRequest
from factstore.editing.session import EditSession
from factstore.storage.store import Store
from factstore.worker import jobs


def test_a_cancelled_compile_job_writes_nothing_and_one_cancelled_too_late_is_done(
    tiny_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    EditSession(tiny_store, "tiny", device="cpu").add(EditRequest("{} is located in the city of", "The Louvre", "Rome"))
    first, _ = api.submit_job(tiny_store, "tiny", "compile", {"mode": None}, requested_by="me")
    claimed = tiny_store.claim_job("w1", None, 60.0)
    assert claimed is not None and claimed.id == first.id
    tiny_store.cancel_job(first.id)  # running -> cancelling before the worker began
    ended = jobs.run(tiny_store, claimed, "w1", "cpu")
    assert ended is not None and ended.status == "cancelled" and api.list_releases(tiny_store, "tiny") == []

    second, _ = api.submit_job(tiny_store, "tiny", "compile", {"mode": None}, requested_by="me")
    claimed = tiny_store.claim_job("w1", None, 60.0)
    assert claimed is not None and claimed.id == second.id
    real = jobs.build.build

    def build_then_cancel(*args, **kwargs):  # type: ignore[no-untyped-def]
        built = real(*args, **kwargs)
        tiny_store.cancel_job(second.id)  # the cancel arrives once the release is written
        return built

    monkeypatch.setattr(jobs.build, "build", build_then_cancel)
    ended = jobs.run(tiny_store, claimed, "w1", "cpu")
    releases = api.list_releases(tiny_store, "tiny")
    assert ended is not None and ended.status == "done" and ended.result is not None
    assert [r.version for r in releases] == [ended.result["version"]] == [1]


def test_a_token_past_its_pending_jobs_gets_429(tiny_store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi.testclient import TestClient

    from factstore.server.app import create_app
    from factstore.server.service import ServerSettings

    monkeypatch.setenv("FACTSTORE_MAX_PENDING_JOBS", "2")
    flood = {"Authorization": f"Bearer {api.create_token(tiny_store, 'flood', 'write')[1]}"}
    other = {"Authorization": f"Bearer {api.create_token(tiny_store, 'other', 'write')[1]}"}
    trace = {"prompt": "{} is located in the city of", "subject": "The Louvre", "samples": 2}
    app = create_app(ServerSettings(database_url=tiny_store.url, worker=False))  # no worker: jobs stay pending
    with TestClient(app, client=("127.0.0.1", 50000)) as client:
        answers = [client.post("/api/v1/models/tiny/traces", json=trace, headers=flood) for _ in range(3)]
        assert [a.status_code for a in answers] == [202, 202, 429]
        assert answers[2].headers["Retry-After"] == "30" and "2 jobs" in answers[2].json()["detail"]
        assert client.post("/api/v1/models/tiny/releases", json={}, headers=flood).status_code == 429
        assert client.post("/api/v1/models/tiny/traces", json=trace, headers=other).status_code == 202
        cancelled = client.post(f"/api/v1/jobs/{answers[0].json()['id']}/cancel", headers=flood)
        assert cancelled.json()["status"] == "cancelled"  # a cancelled job no longer counts
        assert client.post("/api/v1/models/tiny/traces", json=trace, headers=flood).status_code == 202


def test_jobs_can_have_workers_of_their_own_so_edits_never_wait_behind_one(tiny_store: Store) -> None:
    """`worker --no-jobs` computes edits and leaves jobs; `worker --no-edits` runs jobs and leaves
    edits: an operator runs both so that a long trace never holds an edit up."""
    from factstore.errors import InvalidArgument
    from factstore.options import WorkerSettings
    from factstore.worker.loop import Worker

    trace = {"prompt": "{} is located in the city of", "subject": "The Louvre", "samples": 2}
    job, _ = api.submit_job(tiny_store, "tiny", "trace", trace, requested_by="me")
    entry, _ = api.submit_edit(tiny_store, "tiny", EditRequest("{} is located in the city of", "Big Ben", "Rome"))
    edits_only = api.run_worker(tiny_store, WorkerSettings(jobs=False), max_idle_turns=1)
    assert (edits_only.computed, edits_only.jobs) == (1, 0)
    assert (
        api.get_entry(tiny_store, entry.id).status == "active" and api.get_job(tiny_store, job.id).status == "pending"
    )
    api.submit_edit(tiny_store, "tiny", EditRequest("{} is located in the city of", "The Louvre", "Paris"))
    jobs_only = api.run_worker(tiny_store, WorkerSettings(edits=False), max_idle_turns=1)
    assert (jobs_only.computed, jobs_only.jobs) == (0, 1) and api.get_job(tiny_store, job.id).status == "done"
    assert [e.status for e in api.list_log(tiny_store, "tiny", "all")].count("pending") == 1
    with pytest.raises(InvalidArgument, match="would do nothing"):
        Worker(tiny_store, WorkerSettings(edits=False, jobs=False))
