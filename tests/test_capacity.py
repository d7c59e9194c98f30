"""Capacity in sight: per-layer load of the active log, the warning past the safe load, and the
newest release's health, through the library, the CLI and the web page."""

from __future__ import annotations

import pytest

from cli_runner import run, run_json
from factstore import api
from factstore.release import capacity

SQLITE = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
FACTS = [("The Eiffel Tower", "Rome"), ("The Louvre", "Berlin"), ("Big Ben", "Paris")]


def _add(alias: str, subject: str, target: str, *extra: str):  # type: ignore[no-untyped-def]
    return run(
        "edit",
        "add",
        "--model",
        alias,
        "--prompt",
        "{} is located in the city of",
        "--subject",
        subject,
        "--target",
        target,
        *extra,
    )


@SQLITE
def test_model_show_counts_edits_per_layer_and_warns_past_the_safe_load(
    tiny_store, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("FACTSTORE_HEALTH_TOKENS", "512")
    empty = run_json("model", "show", "tiny", "--json")
    assert empty["layers"] == [] and empty["release"] is None  # type: ignore[index]
    for subject, target in FACTS[:2]:
        assert "warning" not in _add("tiny", subject, target).stderr
    _add("tiny", FACTS[2][0], FACTS[2][1], "--layer", "0")
    shown = run_json("model", "show", "tiny", "--json")
    dim = tiny_store.list_edits(tiny_store.get_base_model("tiny").id, "active")[0].key_shape[0]
    assert shown["layers"] == [  # type: ignore[index]
        {"layer": 0, "edits": 1, "key_dim": dim, "load": round(1 / dim, 4)},
        {"layer": 1, "edits": 2, "key_dim": dim, "load": round(2 / dim, 4)},
    ]
    api.compile_release(tiny_store, "tiny")
    shown = run_json("model", "show", "tiny", "--json")
    assert shown["release"] == 1 and shown["health"]["perplexity"] > 0  # type: ignore[index]
    assert "v1 health: held-out perplexity" in run("model", "show", "tiny").stdout
    # past the safe load (lowered here: the tiny model's layer is 256 keys wide) every add warns once
    monkeypatch.setattr(capacity, "SAFE_LOAD", 1.5 / dim)
    added = _add("tiny", "The Colosseum", "Madrid")
    [line] = added.stderr.strip().splitlines()
    assert (
        line.startswith("warning: layer 1 of tiny holds 3 active edits") and "past the" in line and "--band B" in line
    )
    assert "over" in run("model", "show", "tiny").stdout
    # a model size with a default band is told its own band (read off the model's config)
    seen = []
    monkeypatch.setattr(capacity, "default_band", lambda *size: seen.append(size) or (2, 1))
    assert "`edit add/import --band 2 --layer 1` (this model's default" in api.capacity_warning(tiny_store, "tiny")
    assert seen and seen[0][:2] == ("gpt2", 3)  # (model_type, blocks, width) of the tiny model

    def gone(*_args: object) -> None:
        raise api.FactStoreError("the model folder moved")

    monkeypatch.setattr(capacity.checkpoints, "load_config", gone)  # advice only: never an error
    assert "`edit add/import --band B --layer L`" in api.capacity_warning(tiny_store, "tiny")


@SQLITE
def test_the_model_page_shows_the_load(tiny_store) -> None:  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from factstore.server.app import create_app
    from factstore.server.service import ServerSettings

    _add("tiny", *FACTS[0])
    with TestClient(
        create_app(ServerSettings(database_url=tiny_store.url, worker=False)), client=("127.0.0.1", 1)
    ) as web:
        page = web.get("/models/tiny").text
    assert 'id="capacity"' in page and "<td>1</td><td>1</td>" in page
