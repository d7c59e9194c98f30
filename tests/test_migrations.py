"""Migrations from empty to head and back, on SQLite and PostgreSQL, with no drift from the models."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from factstore.errors import SchemaOutOfDate
from factstore.storage import schema
from factstore.storage.engine import make_engine
from factstore.storage.models import Base
from factstore.storage.store import Store

pytestmark = pytest.mark.database  # the store is the subject: SQLite and PostgreSQL

TABLES = {"base_models", "edits", "covariance_stats", "context_templates", "releases", "release_edits"}


def test_empty_to_head_to_base_to_head(db_url: str) -> None:
    engine = make_engine(db_url)
    assert schema.current_revision(engine) is None
    schema.upgrade(engine)
    assert schema.current_revision(engine) == schema.head_revision()
    assert set(inspect(engine).get_table_names()) >= TABLES
    schema.downgrade(engine, "base")
    assert schema.current_revision(engine) is None
    assert not TABLES & set(inspect(engine).get_table_names())
    schema.upgrade(engine)
    assert set(inspect(engine).get_table_names()) >= TABLES
    engine.dispose()


def test_models_and_migrations_have_not_drifted(db_url: str) -> None:
    engine = make_engine(db_url)
    schema.upgrade(engine)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []


def test_the_default_sqlite_database_is_created_on_first_use(factstore_home) -> None:  # type: ignore[no-untyped-def]
    store = Store()
    assert schema.current_revision(store.engine) == schema.head_revision()
    assert (factstore_home / "factstore.db").exists()


def test_another_database_behind_head_is_refused(db_url: str) -> None:
    with pytest.raises(SchemaOutOfDate, match="factstore db upgrade"):
        Store(db_url)
    from factstore.api import upgrade_database

    assert upgrade_database(db_url).current == schema.head_revision()
    Store(db_url)  # now accepted
