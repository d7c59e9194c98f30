"""The web page a team works in (issue 26, item 6), server-rendered and complete without
JavaScript: the fact log searched, filtered and paged; the head asked beside the base model; an
edit's paraphrase and neighbour checks and its retract button; compile and publish buttons and
the job list."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from factstore import api
from factstore.domain import EditRequest
from factstore.editing.session import EditSession
from factstore.server import web
from factstore.server.app import create_app
from factstore.server.service import ServerSettings
from factstore.storage.store import Store

PROMPT = "{} is located in the city of"


@pytest.fixture
def client(tiny_store: Store) -> Iterator[TestClient]:
    app = create_app(ServerSettings(database_url=tiny_store.url, worker=False))  # no worker: requests stay pending
    with TestClient(app, client=("127.0.0.1", 50000)) as test_client:
        yield test_client


def _rows(page: str) -> list[str]:
    """The subjects of the fact log's rows on a rendered page."""
    log = page.split('<table id="log">', 1)[1].split("</table>", 1)[0]
    return re.findall(r"<td><span class=\"status[^<]*</span></td><td>([^<]*)</td>", log)


def test_the_fact_log_is_searched_filtered_and_paged(
    tiny_store: Store, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(web, "PAGE_EDITS", 4)
    for i in range(6):
        who = "alice" if i % 2 == 0 else "bob"
        fact = EditRequest(PROMPT, f"Tower {i}", "Rome")
        api.submit_edit(tiny_store, "tiny", fact, api.EditOptions(requested_by=who))
    api.submit_edit(tiny_store, "tiny", EditRequest(PROMPT, "The 100% Bridge", "Oslo"), api.EditOptions())

    first = client.get("/models/tiny").text
    assert 'name="prompt" required maxlength="4096"' in first and 'name="subject" required maxlength="1024"' in first
    assert _rows(first) == ["Tower 0", "Tower 1", "Tower 2", "Tower 3"] and "1–4 of 7" in first
    second = client.get("/models/tiny", params={"page": 2}).text
    assert _rows(second) == ["Tower 4", "Tower 5", "The 100% Bridge"] and "page 2 of 2" in second
    alice = client.get("/models/tiny", params={"q": "tower", "who": "alice", "status": "pending"}).text
    assert _rows(alice) == ["Tower 0", "Tower 2", "Tower 4"] and "1–3 of 3" in alice
    assert _rows(client.get("/models/tiny", params={"q": "%"}).text) == ["The 100% Bridge"]  # % is a character
    assert _rows(client.get("/models/tiny", params={"q": "1_0"}).text) == []  # and so is _
    assert _rows(client.get("/models/tiny", params={"q": "TOWER 5"}).text) == ["Tower 5"]  # any case
    assert client.get("/models/tiny", params={"q": "a\x00b"}).status_code == 422
    assert "no edit matches" in client.get("/models/tiny", params={"status": "active"}).text
    assert client.get("/models/tiny", params={"status": "everything"}).status_code == 422

    listed = client.get("/api/v1/models/tiny/edits", params={"subject": "TOWER", "requested_by": "bob", "limit": 2})
    assert [e["subject"] for e in listed.json()] == ["Tower 1", "Tower 3"] and listed.headers["X-Total-Count"] == "3"


def test_the_head_is_asked_beside_the_base_and_an_edit_is_checked_and_retracted(
    tiny_store: Store, client: TestClient
) -> None:
    owner, owner_token = api.create_token(tiny_store, "owner", "write")
    _, other_token = api.create_token(tiny_store, "other", "write")
    session = EditSession(tiny_store, "tiny", device="cpu")
    outcome = session.add(EditRequest(PROMPT, "The Louvre", "Rome"), requested_by=owner.name)
    edit_id = outcome.edit.id

    head = api.open_head(tiny_store, "tiny", device="cpu")
    compared = api.compare_head(head, "The Louvre is located in the city of", ["Rome"])
    assert compared.edits_applied == 1
    assert compared.head.answers[0].prob != compared.base.answers[0].prob  # the edit shows

    asked = client.get("/models/tiny/ask", params={"prompt": "The Louvre is located in the city of", "answers": "Rome"})
    assert asked.status_code == 200 and "head (1 edits)" in asked.text and "<h3>base</h3>" in asked.text
    assert asked.text.count("<td>Rome</td>") == 2  # its probability on both sides
    too_long = client.get("/models/tiny/ask", params={"prompt": "word " * 600})
    assert too_long.status_code == 200 and 'class="error"' in too_long.text

    checked = client.get(f"/edits/{edit_id}/check", params={"prompt": "Where is The Louvre? In the city of"})
    assert checked.status_code == 200 and 'id="compare"' in checked.text and "<td>Rome</td>" in checked.text
    assert "Retract this edit" in checked.text

    refused = client.post(f"/edits/{edit_id}/retract", data={"token": other_token})
    assert refused.status_code == 403 and 'class="error"' in refused.text
    assert api.get_entry(tiny_store, edit_id).status == "active"
    done = client.post(f"/edits/{edit_id}/retract", data={"token": owner_token}, follow_redirects=False)
    assert done.status_code == 303 and api.get_entry(tiny_store, edit_id).status == "retracted"
    after = client.get(f"/edits/{edit_id}").text
    assert "Retract this edit" not in after and "Retracted by owner" in after


def test_compile_and_publish_buttons_queue_jobs_the_page_lists(tiny_store: Store, client: TestClient) -> None:
    _, write = api.create_token(tiny_store, "team", "write")
    _, read = api.create_token(tiny_store, "viewer", "read")
    EditSession(tiny_store, "tiny", device="cpu").add(EditRequest(PROMPT, "Big Ben", "Rome"))
    api.compile_release(tiny_store, "tiny")

    page = client.get("/models/tiny").text
    assert "Compile the current log" in page and 'action="/models/tiny/releases/1/publish"' in page
    assert client.post("/models/tiny/compile", data={"token": read, "mode": ""}).status_code == 403
    queued = client.post("/models/tiny/compile", data={"token": write, "mode": "joint"}, follow_redirects=False)
    assert queued.status_code == 303 and queued.headers["location"] == "/models/tiny#jobs"
    sent = client.post("/models/tiny/releases/1/publish", data={"token": write, "repo": "team/edits"})
    assert sent.status_code == 200  # followed to the page
    kinds = {(j.kind, j.status) for j in api.list_jobs(tiny_store, "tiny")}
    assert kinds == {("compile", "pending"), ("publish", "pending")}
    jobs = sent.text.split('<table id="job-list">', 1)[1].split("</table>", 1)[0]
    assert "publish v1" in jobs and "compile" in jobs and "waiting: no worker serving tiny is running" in jobs
    bad = client.post("/models/tiny/releases/1/publish", data={"token": write, "repo": "not a repo"})
    assert bad.status_code == 422 and 'class="error"' in bad.text
