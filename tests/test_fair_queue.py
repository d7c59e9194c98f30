"""One client cannot flood the queue: a token's waiting requests are bounded (429), and a request
not yet computed can be withdrawn by its requester or an admin, over HTTP and on the command line."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from cli_runner import run
from factstore import api
from factstore.server.app import create_app
from factstore.server.service import ServerSettings
from factstore.storage.store import Store

LOCAL = ("127.0.0.1", 50000)
PROMPT = "{} is located in the city of"


def _body(i: int) -> dict:
    return {"prompt": PROMPT, "subject": f"Tower {i}", "target": "Rome"}


@pytest.fixture
def client(tiny_store: Store) -> TestClient:
    # no worker: every request stays pending
    return TestClient(create_app(ServerSettings(database_url=tiny_store.url, worker=False)), client=LOCAL)


def test_a_token_past_its_waiting_requests_gets_429_and_others_still_submit(
    tiny_store: Store, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FACTSTORE_MAX_PENDING", "3")
    flood = {"Authorization": f"Bearer {api.create_token(tiny_store, 'flood', 'write')[1]}"}
    other = {"Authorization": f"Bearer {api.create_token(tiny_store, 'other', 'write')[1]}"}
    with client:
        codes = [client.post("/api/v1/models/tiny/edits", json=_body(i), headers=flood).status_code for i in range(4)]
        assert codes == [202, 202, 202, 429]
        refused = client.post("/api/v1/models/tiny/edits", json=_body(9), headers=flood)
        assert refused.headers["Retry-After"] == "30" and refused.json()["title"] == "too many requests"
        assert client.post("/api/v1/models/tiny/edits", json=_body(10), headers=other).status_code == 202
        # a replay of an accepted submission is still answered at the limit
        replay = {**flood, "Idempotency-Key": "k1"}
        monkeypatch.setenv("FACTSTORE_MAX_PENDING", "4")
        assert client.post("/api/v1/models/tiny/edits", json=_body(20), headers=replay).status_code == 202
        again = client.post("/api/v1/models/tiny/edits", json=_body(20), headers=replay)
        assert again.status_code == 202 and again.headers["Idempotent-Replayed"] == "true"
        # withdrawing one makes room again
        first = api.list_log(tiny_store, "tiny", "all")[0]
        assert client.post(f"/api/v1/edits/{first.id}/withdraw", headers=flood).status_code == 200
        assert client.post("/api/v1/models/tiny/edits", json=_body(11), headers=flood).status_code == 202
    assert (
        len(api.list_log(tiny_store, "tiny", "all")) == 6
    )  # 4 of flood (one withdrawn) + 1 other + 1 after the withdrawal


def test_withdraw_is_for_the_requester_or_an_admin_and_only_before_computing(
    tiny_store: Store, client: TestClient
) -> None:
    tokens = {
        n: api.create_token(tiny_store, n, s)[1] for n, s in (("alice", "write"), ("bob", "write"), ("root", "admin"))
    }

    def auth(name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {tokens[name]}"}

    with client:
        ids = [
            client.post("/api/v1/models/tiny/edits", json=_body(i), headers=auth("alice")).json()["id"]
            for i in range(2)
        ]
        assert client.post(f"/api/v1/edits/{ids[0]}/withdraw").status_code == 401
        assert client.post(f"/api/v1/edits/{ids[0]}/withdraw", headers=auth("bob")).status_code == 403
        mine = client.post(f"/api/v1/edits/{ids[0]}/withdraw", headers=auth("alice"))
        assert mine.status_code == 200 and mine.json()["status"] == "failed"
        assert mine.json()["error"] == "withdrawn by alice"
        admin = client.post(f"/api/v1/edits/{ids[1]}/withdraw", headers=auth("root"))
        assert admin.status_code == 200 and admin.json()["error"] == "withdrawn by root"
        again = client.post(f"/api/v1/edits/{ids[1]}/withdraw", headers=auth("root"))
        assert again.status_code == 409 and "only a pending request" in again.json()["detail"]
        # once a worker has claimed a request it is computed (withdrawing it would cost the rest
        # of the worker's batch an attempt); retract it afterwards
        third = client.post("/api/v1/models/tiny/edits", json=_body(7), headers=auth("alice")).json()["id"]
        assert tiny_store.acquire_lease(tiny_store.get_base_model("tiny").id, "w1", 30)
        assert [e.id for e in tiny_store.claim_requests(tiny_store.get_base_model("tiny").id, "w1", 8)] == [third]
        busy = client.post(f"/api/v1/edits/{third}/withdraw", headers=auth("alice"))
        assert busy.status_code == 409 and "retract it once it is computed" in busy.json()["detail"]
        tiny_store.release_lease(tiny_store.get_base_model("tiny").id, "w1")
        assert client.post("/api/v1/edits/999999/withdraw", headers=auth("root")).status_code == 404
    # nothing withdrawn is ever computed (the claimed one, back in the queue, is)
    assert api.run_worker(tiny_store, api.WorkerSettings(poll=0.05), max_idle_turns=1).computed == 1


def test_edit_withdraw_on_the_command_line(tiny_store: Store) -> None:
    entry, _ = api.submit_edit(tiny_store, "tiny", api.EditRequest(PROMPT, "The Louvre", "Berlin"))
    done = run("edit", "withdraw", str(entry.id))
    assert f"edit {entry.id} withdrawn" in done.stdout
    assert api.get_entry(tiny_store, entry.id).status == "failed"
    again = run("edit", "withdraw", str(entry.id), check=False)
    assert again.returncode != 0 and "only a pending request can be withdrawn" in again.stderr
