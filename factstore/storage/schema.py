"""Run Alembic from code; refuse to open a database whose schema is not at head."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from factstore import config
from factstore.errors import SchemaOutOfDate


def migrations_dir() -> Path:
    """The Alembic tree: migrations/ in a checkout, installed as factstore.migrations."""
    spec = importlib.util.find_spec("factstore.migrations")
    if spec is None or spec.origin is None:
        raise RuntimeError("factstore.migrations is missing: reinstall factstore-edit")
    return Path(spec.origin).parent


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    if head is None:
        raise RuntimeError("the Alembic tree has no head revision: reinstall factstore-edit")
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def downgrade(engine: Engine, revision: str) -> None:
    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


def ensure_current(engine: Engine, url: str) -> None:
    """Migrate the embedded default database; refuse any other database that is behind."""
    current = current_revision(engine)
    if current == head_revision():
        return
    if config.is_default_database(url):
        upgrade(engine)
        return
    state = "has no factstore schema" if current is None else f"is at schema {current}, not {head_revision()}"
    raise SchemaOutOfDate(
        f"the database {engine.url.render_as_string(hide_password=True)} {state}; back it up, then run `factstore db upgrade`"
    )
