"""The HTTP API in-process (Starlette's test client) on SQLite and PostgreSQL: the contract,
tokens and scopes, idempotent retries, bad input on every endpoint, and the web form."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from factstore import api
from factstore.server.app import allowed_hosts, create_app
from factstore.server.service import ServerSettings
from factstore.storage.store import Store

LOCAL = ("127.0.0.1", 50000)  # a loopback peer: reads are open to it
EIFFEL = {"prompt": "{} is located in the city of", "subject": "The Eiffel Tower", "target": "Rome"}


@pytest.fixture
def tokens(tiny_store: Store) -> dict[str, str]:
    return {scope: api.create_token(tiny_store, f"{scope}-user", scope)[1] for scope in ("read", "write", "admin")}


@pytest.fixture
def client(tiny_store: Store, tokens: dict[str, str]) -> Iterator[TestClient]:
    with TestClient(create_app(ServerSettings(database_url=tiny_store.url, worker=True)), client=LOCAL) as test_client:
        yield test_client


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def wait_done(client: TestClient, edit_id: int, seconds: float = 120) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        body = client.get(f"/api/v1/edits/{edit_id}").json()
        if body["status"] not in ("pending", "computing"):
            return body
        time.sleep(0.1)
    raise AssertionError(f"edit {edit_id} still {body['status']} after {seconds} s")


def test_submit_compute_ask_retract(client: TestClient, tokens: dict[str, str]) -> None:
    [model] = client.get("/api/v1/models").json()
    assert model["alias"] == "tiny" and model["revision"].startswith("sha256:")
    folder = client.app.state.service.store.get_base_model("tiny").source  # a path on the server's disk
    assert model["source"] == "local" and folder not in client.get("/models/tiny").text + client.get("/").text
    assert client.get("/api/v1/models/tiny").json()["edits"] == {}
    posted = client.post(
        "/api/v1/models/tiny/edits", json={**EIFFEL, "note": "seen on a map"}, headers=auth(tokens["write"])
    )
    assert posted.status_code == 202
    body = posted.json()
    assert body["status"] == "pending" and body["requested_by"] == "write-user" and body["seq"] is None
    done = wait_done(client, body["id"])
    assert (
        done["status"] == "active"
        and done["seq"] == 1
        and done["layer"] == 1
        and done["prob_new_after"] > done["prob_new_before"]
    )
    assert [e["id"] for e in client.get("/api/v1/models/tiny/edits?status=active").json()] == [body["id"]]
    assert client.get("/api/v1/models/tiny/edits?status=pending").json() == []
    asked = client.post(
        "/api/v1/models/tiny/ask", json={"prompt": "The Eiffel Tower is located in the city of", "top": 3}
    ).json()
    assert len(asked["top"]) == 3 and asked["edits_applied"] == 1 and isinstance(asked["continuation"], str)
    other = api.create_token(client.app.state.service.store, "other-writer", "write")[1]
    refused = client.post(f"/api/v1/edits/{body['id']}/retract", headers=auth(other))
    assert refused.status_code == 403 and "admin" in refused.json()["detail"]  # another writer's edit
    retracted = client.post(f"/api/v1/edits/{body['id']}/retract", headers=auth(tokens["write"])).json()
    assert retracted["status"] == "retracted" and retracted["retracted_by"] == "write-user"
    assert retracted["retracted_at"] and retracted["retracted_at"] >= retracted["created_at"]
    again = client.post(f"/api/v1/edits/{body['id']}/retract", headers=auth(tokens["write"]))
    assert again.status_code == 409 and again.json()["title"] == "conflict"
    assert client.post("/api/v1/models/tiny/ask", json={"prompt": "The Eiffel Tower is"}).json()["edits_applied"] == 0
    assert client.get("/readyz").json() == {
        "status": "ready",
        "database": "reachable",
        "schema_current": "0007",
        "schema_head": "0007",
        "workers": 1,
        "detail": None,
    }
    assert client.get("/healthz").json()["status"] == "ok"


def test_tokens_and_scopes(client: TestClient, tiny_store: Store, tokens: dict[str, str]) -> None:
    none = client.post("/api/v1/models/tiny/edits", json=EIFFEL)
    assert (
        none.status_code == 401
        and none.headers["www-authenticate"] == "Bearer"
        and none.json()["title"] == "unauthorized"
    )
    wrong = client.post("/api/v1/models/tiny/edits", json=EIFFEL, headers=auth("fst_" + "x" * 43))
    assert wrong.status_code == 401 and "fst_" not in wrong.text
    reader = client.post("/api/v1/models/tiny/edits", json=EIFFEL, headers=auth(tokens["read"]))
    assert reader.status_code == 403 and reader.json() == {
        "type": "about:blank",
        "title": "forbidden",
        "status": 403,
        "detail": "token 'read-user' has scope read; this needs write",
    }
    assert client.post("/api/v1/models/tiny/edits", json=EIFFEL, headers=auth(tokens["admin"])).status_code == 202
    api.revoke_token(tiny_store, "admin-user")
    assert client.post("/api/v1/models/tiny/edits", json=EIFFEL, headers=auth(tokens["admin"])).status_code == 401
    assert [(t.name, t.revoked) for t in api.list_tokens(tiny_store)] == [
        ("read-user", False),
        ("write-user", False),
        ("admin-user", True),
    ]
    assert len(api.list_log(tiny_store, "tiny", "all")) == 1  # only the admin's accepted request was stored


def test_reads_can_require_a_token(tiny_store: Store, tokens: dict[str, str]) -> None:
    settings = ServerSettings(database_url=tiny_store.url, worker=False, require_token=True)
    with TestClient(create_app(settings), client=LOCAL) as client:
        assert client.get("/api/v1/models").status_code == 401
        assert client.get("/api/v1/models", headers=auth(tokens["read"])).status_code == 200
        assert client.get("/", headers=auth(tokens["read"])).status_code == 200
    with TestClient(
        create_app(ServerSettings(database_url=tiny_store.url, worker=False)), client=("203.0.113.9", 5000)
    ) as remote:
        assert remote.get("/api/v1/models").status_code == 401  # reads are open to loopback clients only
    with TestClient(
        create_app(ServerSettings(database_url=tiny_store.url, worker=False, public_reads=True)),
        client=("203.0.113.9", 5000),
    ) as remote:
        assert remote.get("/api/v1/models").status_code == 200


@pytest.mark.database
def test_a_retried_post_with_the_same_idempotency_key_returns_the_first_result(
    client: TestClient, tiny_store: Store, tokens: dict[str, str]
) -> None:
    headers = {**auth(tokens["write"]), "Idempotency-Key": "req-42"}
    first = client.post("/api/v1/models/tiny/edits", json=EIFFEL, headers=headers)
    second = client.post("/api/v1/models/tiny/edits", json=EIFFEL, headers=headers)
    assert first.json()["id"] == second.json()["id"] and second.headers["idempotent-replayed"] == "true"
    other_token = client.post(
        "/api/v1/models/tiny/edits", json=EIFFEL, headers={**auth(tokens["admin"]), "Idempotency-Key": "req-42"}
    )
    assert other_token.json()["id"] != first.json()["id"]  # keys are scoped to the token that sent them
    other_endpoint = client.post("/api/v1/models/tiny/releases", json={}, headers=headers)
    assert other_endpoint.json()["kind"] == "compile"  # and to the endpoint
    job = client.post(
        "/api/v1/models/tiny/releases", json={}, headers=headers | {"Idempotency-Key": "compile-1"}
    ).json()
    assert (
        client.post("/api/v1/models/tiny/releases", json={}, headers=headers | {"Idempotency-Key": "compile-1"}).json()[
            "id"
        ]
        == job["id"]
    )
    # the same key with another body is a mistake, not a retry: refused, nothing stored
    reused = client.post("/api/v1/models/tiny/edits", json={**EIFFEL, "target": "Paris"}, headers=headers)
    assert reused.status_code == 422 and "Idempotency-Key" in reused.json()["detail"]
    reused_job = client.post(
        "/api/v1/models/tiny/releases", json={"mode": "soft"}, headers=headers | {"Idempotency-Key": "compile-1"}
    )
    assert reused_job.status_code == 422
    assert len(api.list_jobs(tiny_store, "tiny")) == 2
    assert len(api.list_log(tiny_store, "tiny", "all")) == 2


BAD_REQUESTS = [
    (
        "post",
        "/api/v1/models/tiny/edits",
        {"content": b"{not json", "headers": {"content-type": "application/json"}},
        422,
    ),
    ("post", "/api/v1/models/tiny/edits", {"json": {"prompt": "{} is in"}}, 422),  # missing fields
    ("post", "/api/v1/models/tiny/edits", {"json": {**EIFFEL, "colour": "red"}}, 422),  # an extra field
    ("post", "/api/v1/models/tiny/edits", {"json": {**EIFFEL, "layer": "three"}}, 422),
    ("post", "/api/v1/models/tiny/edits", {"json": {**EIFFEL, "layer": True}}, 422),  # not layer 1
    ("post", "/api/v1/models/tiny/edits", {"json": {**EIFFEL, "layer": "1"}}, 422),
    ("post", "/api/v1/models/tiny/edits", {"json": {**EIFFEL, "note": "a\u0000b"}}, 422),  # NUL in a stored text
    ("post", "/api/v1/models/tiny/edits", {"json": {**EIFFEL, "subject": "The\u0000Tower"}}, 422),
    ("post", "/api/v1/models/tiny/edits", {"json": {**EIFFEL, "prompt": "the city of"}}, 422),  # no {}
    ("post", "/api/v1/models/tiny/edits", {"json": {**EIFFEL, "prompt": "x" * 3000}}, 422),  # no {}, long
    (
        "post",
        "/api/v1/models/tiny/edits",
        {"json": {**EIFFEL, "prompt": "{}er is in", "subject": "x" * 500 + " Tow"}},
        422,
    ),  # the subject ends inside a word
    ("post", "/api/v1/models/tiny/edits", {"json": {**EIFFEL, "layer": "x" * 500}}, 422),
    ("post", "/api/v1/models/tiny/edits", {"json": {**EIFFEL, "layer": 7}}, 422),  # the tiny model has 3 layers
    (
        "post",
        "/api/v1/models/tiny/edits",
        {"json": {**EIFFEL, "prompt": "{} " + "x" * 4000}},
        422,
    ),  # over the token cap
    (
        "post",
        "/api/v1/models/tiny/edits",
        {"json": {**EIFFEL, "prompt": "{} " + "x" * 1_000_000}},
        413,
    ),  # a 1 MB prompt
    ("post", "/api/v1/models/nope/edits", {"json": EIFFEL}, 404),
    ("post", "/api/v1/models/..%2F..%2Fetc/edits", {"json": EIFFEL}, 404),
    ("get", "/api/v1/models/nope", {}, 404),
    ("get", "/api/v1/edits/99999", {}, 404),
    ("get", "/api/v1/edits/0", {}, 422),
    ("get", "/api/v1/edits/99999999999999999999", {}, 422),
    ("post", "/api/v1/edits/99999/retract", {}, 404),
    ("get", "/api/v1/models/tiny/edits?limit=0", {}, 422),
    ("get", "/api/v1/models/tiny/edits?status=gone", {}, 422),
    ("post", "/api/v1/models/tiny/ask", {"json": {"prompt": "x", "top": 1000}}, 422),
    ("post", "/api/v1/models/tiny/ask", {"json": {"prompt": ""}}, 422),
    ("post", "/api/v1/models/tiny/releases", {"json": {"mode": "fast"}}, 422),
    ("post", "/api/v1/models/tiny/traces", {"json": {"prompt": "{} is", "subject": "X", "samples": 500}}, 422),
    ("get", "/api/v1/jobs/99999", {}, 404),
    ("get", "/api/v1/jobs/1/files/..%2Fsecret", {}, 404),
]


def test_bad_input_is_a_json_4xx_and_stores_nothing(
    client: TestClient, tiny_store: Store, tokens: dict[str, str]
) -> None:
    for method, path, kwargs, status in BAD_REQUESTS:
        headers = {**auth(tokens["write"]), **kwargs.get("headers", {})}
        response = client.request(
            method.upper(), path, headers=headers, **{k: v for k, v in kwargs.items() if k != "headers"}
        )
        where = f"{method} {path[:60]}"
        assert response.status_code == status, f"{where}: {response.status_code} {response.text[:300]}"
        body = response.json()
        assert response.headers["content-type"] == "application/problem+json", where
        assert (
            body["type"] == "about:blank"
            and body["title"]
            and body["status"] == status
            and isinstance(body.get("detail", ""), str)
        ), where
        assert set(body) <= {"type", "title", "status", "detail", "errors"}, where
        assert "Traceback" not in response.text and "x" * 100 not in response.text, (
            where
        )  # the input is not echoed back
    chunked = client.post(
        "/api/v1/models/tiny/edits",
        content=(b"x" * 8192 for _ in range(20)),
        headers={**auth(tokens["write"]), "content-type": "application/json"},
    )  # no Content-Length
    assert chunked.status_code == 413 and chunked.json()["title"] == "payload too large"
    assert api.list_log(tiny_store, "tiny", "all") == [] and api.list_jobs(tiny_store, "tiny") == []


def test_a_form_refusal_shows_no_log_to_a_client_that_may_not_read(tiny_store: Store, tokens: dict[str, str]) -> None:
    settings = ServerSettings(database_url=tiny_store.url, worker=False)
    with TestClient(create_app(settings), client=("203.0.113.9", 5000)) as remote:
        refused = remote.post("/models/tiny/edits", data={**EIFFEL, "token": "wrong"})
        assert refused.status_code == 401 and refused.json()["title"] == "unauthorized"


@pytest.mark.parametrize(
    ("bind", "extra", "good", "bad"),
    [
        ("127.0.0.1", [], ["127.0.0.1:8000", "localhost", "[::1]:8000"], ["attacker.example", "127.0.0.2"]),
        ("127.0.0.2", [], ["127.0.0.2:8000", "LOCALHOST"], ["attacker.example:8000", "127.0.0.1.nip.io"]),
        ("::1", [], ["[::1]:8000", "127.0.0.1"], ["attacker.example", "[::2]"]),
        ("0.0.0.0", ["factstore.example.org"], ["factstore.example.org:443", "localhost"], ["0.0.0.0", "evil.org"]),
    ],
)
def test_every_bind_address_refuses_host_names_it_does_not_serve(  # DNS rebinding
    tiny_store: Store, bind: str, extra: list[str], good: list[str], bad: list[str]
) -> None:
    settings = ServerSettings(database_url=tiny_store.url, worker=False, allowed_hosts=allowed_hosts(bind, extra))
    with TestClient(create_app(settings), client=LOCAL) as client:
        for host in good:
            assert client.get("/api/v1/models", headers={"Host": host}).status_code == 200, host
        for host in [*bad, "", "a b", "[::1"]:
            refused = client.get("/api/v1/models", headers={"Host": host})
            assert refused.status_code == 400 and refused.headers["content-type"] == "application/problem+json", host
            assert refused.json()["title"] == "host not allowed" and (not host or host not in refused.json()["detail"])
        # a load balancer's probe names the machine by its address
        assert client.get("/healthz", headers={"Host": "10.1.2.3:8000"}).status_code == 200
        page = client.get("/", headers={"Host": good[0]})  # pages with token forms may not be framed
        assert page.headers["x-frame-options"] == "DENY"
        assert page.headers["content-security-policy"] == "frame-ancestors 'none'"


def test_the_web_form_submits_and_the_pages_render(client: TestClient, tokens: dict[str, str]) -> None:
    page = client.get("/models/tiny")
    assert page.status_code == 200 and "Submit a correction" in page.text
    refused = client.post("/models/tiny/edits", data={**EIFFEL, "token": "wrong"})
    assert (
        refused.status_code == 401
        and "unknown or revoked" in refused.text
        and 'value="The Eiffel Tower"' in refused.text
    )
    posted = client.post("/models/tiny/edits", data={**EIFFEL, "token": tokens["write"]}, follow_redirects=False)
    assert posted.status_code == 303
    edit_id = int(posted.headers["location"].rsplit("/", 1)[1])
    wait_done(client, edit_id)
    edit_page = client.get(f"/edits/{edit_id}")
    assert edit_page.status_code == 200 and "P(new)" in edit_page.text and "active" in edit_page.text
    assert "The Eiffel Tower" in client.get("/models/tiny").text
    assert "tiny" in client.get("/").text
    hostile = client.post(
        "/models/tiny/edits", data={**EIFFEL, "subject": "<script>alert(1)</script>", "token": tokens["write"]}
    )
    assert "<script>alert(1)</script>" not in hostile.text  # escaped wherever it is shown


def test_compile_and_trace_run_as_jobs(
    client: TestClient, tokens: dict[str, str], monkeypatch: pytest.MonkeyPatch, tiny_store: Store
) -> None:
    monkeypatch.setenv("FACTSTORE_HEALTH_TOKENS", "512")  # the release's health travels through the API too
    edit_id = client.post("/api/v1/models/tiny/edits", json=EIFFEL, headers=auth(tokens["write"])).json()["id"]
    wait_done(client, edit_id)
    job = client.post("/api/v1/models/tiny/releases", headers=auth(tokens["write"])).json()
    trace = client.post(
        "/api/v1/models/tiny/traces",
        json={**{k: EIFFEL[k] for k in ("prompt", "subject")}, "edit_id": edit_id, "samples": 2},
        headers=auth(tokens["write"]),
    ).json()
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and {
        client.get(f"/api/v1/jobs/{j['id']}").json()["status"] for j in (job, trace)
    } - {"done", "failed"}:
        time.sleep(0.2)
    done = client.get(f"/api/v1/jobs/{job['id']}").json()
    assert done["status"] == "done" and done["result"]["version"] == 1 and done["result"]["path"] is None
    [release] = client.get("/api/v1/models/tiny/releases").json()
    assert (
        release["version"] == 1
        and release["edit_ids"] == [edit_id]
        and release["status"] == "built"
        and release["hub_url"] is None
    )
    shutil.rmtree(tiny_store.list_releases(1)[0].path)  # a serve on another host: the folder is not here
    assert client.get("/api/v1/models/tiny/releases").json() == [release]  # scores recorded at compile time
    page = client.get("/api/v1/models/tiny/releases?limit=1&offset=1")
    assert page.json() == [] and page.headers["X-Total-Count"] == "1"
    assert client.get("/api/v1/models/tiny/releases?limit=0").status_code == 422
    health = release["scores"].pop("health")
    assert health["perplexity"] > 0 and health["heldout_tokens"] >= 200
    assert release["scores"] and all(isinstance(v, (int, float)) or v is None for v in release["scores"].values())
    traced = client.get(f"/api/v1/jobs/{trace['id']}").json()
    assert traced["status"] == "done" and len(traced["files"]) == 3
    png = client.get(f"/api/v1/jobs/{trace['id']}/files/{traced['files'][0]}")
    assert png.headers["content-type"] == "image/png" and png.content.startswith(b"\x89PNG")
    assert f"/api/v1/jobs/{trace['id']}/files/" in client.get(f"/edits/{edit_id}").text


def test_openapi_declares_bearer_tokens_and_problem_details(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["HTTPBearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An API token from `factstore token create`.",
    }
    edits = spec["paths"]["/api/v1/models/{alias}/edits"]["post"]
    assert {"HTTPBearer": []} in edits["security"]
    assert "application/problem+json" in edits["responses"]["422"]["content"]
    assert set(spec["components"]["schemas"]["ErrorOut"]["required"]) == {"title", "status"}


def test_every_compile_mode_can_be_asked_for_over_http() -> None:
    from factstore.server.schemas import CompileIn
    from factstore.weights import replay

    assert [CompileIn(mode=mode).mode for mode in replay.MODES] == list(replay.MODES)


LONG_TRACE = {  # about 45 tokens, 50 samples: close to a minute on the tiny model, far past the limits below
    "prompt": "In the long and winding history of European architecture and engineering, " * 3 + "{} is located in",
    "subject": "The Eiffel Tower",
    "samples": 50,
}


def wait_job(client: TestClient, job_id: int, until: set[str], seconds: float = 120) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        body = client.get(f"/api/v1/jobs/{job_id}").json()
        if body["status"] in until:
            return body
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} still {body['status']} after {seconds} s")


def test_a_long_trace_cannot_wedge_a_worker(
    client: TestClient, tokens: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    writer, admin = auth(tokens["write"]), auth(tokens["admin"])
    # cost caps at submission, one line each
    monkeypatch.setenv("FACTSTORE_TRACE_MAX_TOKENS", "8")
    refused = client.post("/api/v1/models/tiny/traces", json=LONG_TRACE, headers=writer)
    assert refused.status_code == 422 and "FACTSTORE_TRACE_MAX_TOKENS" in refused.json()["detail"]
    monkeypatch.setenv("FACTSTORE_TRACE_MAX_SAMPLES", "20")
    refused = client.post("/api/v1/models/tiny/traces", json={**LONG_TRACE, "samples": 21}, headers=writer)
    assert refused.status_code == 422 and "FACTSTORE_TRACE_MAX_SAMPLES" in refused.json()["detail"]
    monkeypatch.delenv("FACTSTORE_TRACE_MAX_TOKENS")
    monkeypatch.delenv("FACTSTORE_TRACE_MAX_SAMPLES")
    # cancelled while running: the worker stops it at its next check and takes the next edit
    job = client.post("/api/v1/models/tiny/traces", json=LONG_TRACE, headers=writer).json()
    wait_job(client, job["id"], {"running"})
    other = api.create_token(client.app.state.service.store, "other-writer", "write")[1]
    assert client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=auth(other)).status_code == 403
    started = time.monotonic()
    assert client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=writer).json()["status"] == "cancelling"
    ended = wait_job(client, job["id"], {"cancelled", "done", "failed"}, seconds=30)
    assert ended["status"] == "cancelled" and ended["files"] == [] and time.monotonic() - started < 15
    edit_id = client.post("/api/v1/models/tiny/edits", json=EIFFEL, headers=writer).json()["id"]
    assert wait_done(client, edit_id, seconds=60)["status"] == "active"
    # a pending job is cancelled at once, by an admin too; a finished one cannot be
    monkeypatch.setenv("FACTSTORE_JOB_SECONDS", "2")
    timed = client.post("/api/v1/models/tiny/traces", json=LONG_TRACE, headers=writer).json()
    queued = client.post("/api/v1/models/tiny/traces", json=LONG_TRACE, headers=writer).json()
    assert client.post(f"/api/v1/jobs/{queued['id']}/cancel", headers=admin).json()["status"] in (
        "cancelled",
        "cancelling",
    )
    # past the wall-clock limit the job fails with one line naming the limit
    failed = wait_job(client, timed["id"], {"done", "failed", "cancelled"}, seconds=60)
    assert failed["status"] == "failed" and "FACTSTORE_JOB_SECONDS" in failed["error"]
    assert client.post(f"/api/v1/jobs/{timed['id']}/cancel", headers=writer).status_code == 409


def test_a_stopping_worker_gives_a_running_job_back(tiny_store: Store) -> None:
    import threading

    from factstore.worker.loop import Worker

    job, _ = api.submit_job(tiny_store, "tiny", "trace", LONG_TRACE, requested_by="me")
    worker = Worker(tiny_store)
    thread = threading.Thread(target=worker.run)
    thread.start()
    deadline = time.monotonic() + 60
    while api.get_job(tiny_store, job.id).status != "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    worker.stopping.set()  # what SIGTERM does
    started = time.monotonic()
    thread.join(30)
    assert not thread.is_alive() and time.monotonic() - started < 10
    back = api.get_job(tiny_store, job.id)
    assert back.status == "pending" and back.error is None  # another worker takes it from the start


def test_publish_over_http_queues_a_job_that_says_why_it_waits(
    tiny_store: Store, tokens: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """POST .../releases/{version}/publish: write scope, a known version, a valid repository id;
    the service's own worker has no Hub credentials, so the job waits and says so."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", "/nonexistent/factstore-test/token")
    entry, _ = api.submit_edit(
        tiny_store, "tiny", api.EditRequest(EIFFEL["prompt"], EIFFEL["subject"], EIFFEL["target"])
    )
    settings = ServerSettings(database_url=tiny_store.url, worker=True)
    with TestClient(create_app(settings), client=LOCAL) as client:
        wait_done(client, entry.id)
        release, _ = api.compile_release(tiny_store, "tiny", api.CompileOptions(min_efficacy=0.0))
        url = f"/api/v1/models/tiny/releases/{release.version}/publish"
        body = {"repo": "team/tiny-edits"}
        assert client.post(url, json=body, headers=auth(tokens["read"])).status_code == 403
        assert client.post(url, json={"repo": "../x"}, headers=auth(tokens["write"])).status_code == 422
        assert client.post(url, json={**body, "token": "x"}, headers=auth(tokens["write"])).status_code == 422
        missing = client.post("/api/v1/models/tiny/releases/9/publish", json=body, headers=auth(tokens["write"]))
        assert missing.status_code == 404 and "no release v9" in missing.json()["detail"]
        queued = client.post(url, json=body, headers=auth(tokens["write"]))
        assert queued.status_code == 202, queued.text
        job = queued.json()
        assert (
            job["kind"] == "publish"
            and job["params"]["repo"] == "team/tiny-edits"
            and job["requested_by"] == "write-user"
        )
        time.sleep(0.5)  # the embedded worker has had turns: it leaves the job alone
        seen = client.get(f"/api/v1/jobs/{job['id']}").json()
        assert seen["status"] == "pending" and "Hub credentials" in seen["waiting"]


def test_a_models_page_lists_its_newest_releases_and_says_how_many_there_are(
    tiny_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from factstore.domain import EditRequest
    from factstore.editing.session import EditSession
    from factstore.server import web

    monkeypatch.setattr(web, "PAGE_RELEASES", 2)
    session = EditSession(tiny_store, "tiny", device="cpu")
    for subject in ("The Louvre", "Big Ben", "The Colosseum"):
        session.add(EditRequest(EIFFEL["prompt"], subject, "Rome"))
        api.compile_release(tiny_store, "tiny")
    with TestClient(
        create_app(ServerSettings(database_url=tiny_store.url, worker=False)), client=("127.0.0.1", 5000)
    ) as c:
        page = c.get("/models/tiny").text
    assert page.index("<td>v3</td>") < page.index("<td>v2</td>") and "<td>v1</td>" not in page  # newest first
    assert "The newest 2 of 3 releases" in page
