"""Schemathesis against /openapi.json (bounded examples per operation): no input the schema
allows, or that breaks it, gets a 5xx; every error body is RFC 9457 problem details."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from factstore import api
from factstore.server.app import create_app
from factstore.server.service import ServerSettings
from factstore.storage.store import Store


@pytest.fixture
def api_schema(tiny_store: Store) -> Any:
    app = create_app(ServerSettings(database_url=tiny_store.url, worker=False))
    app.state.write_token = api.create_token(tiny_store, "fuzz", "admin")[1]
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    schema.app = app
    return schema


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_request_gets_a_server_error(case: Any, db_url: str) -> None:
    token = case.operation.schema.app.state.write_token
    response = case.call(headers={"Authorization": f"Bearer {token}"})
    if (
        case.formatted_path == "/readyz" and response.status_code == 503
    ):  # its answer while no worker is alive (none runs here)
        assert response.json()["detail"] == "no live worker"
        return
    assert response.status_code < 500, (
        f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:300]}"
    )
    if response.status_code >= 400:
        problem = response.json()
        media = response.headers["content-type"]
        assert (media[0] if isinstance(media, list) else media) == "application/problem+json" and problem[
            "status"
        ] == response.status_code
        assert problem["title"] and set(problem) <= {"type", "title", "status", "detail", "errors"}
