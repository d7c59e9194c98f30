"""factstore db: schema migrations."""

from __future__ import annotations

import typer

from factstore import api

from .options import JsonOpt
from .output import emit_json

app = typer.Typer(help="Database schema: upgrade and inspect.", no_args_is_help=True)


@app.command()
def upgrade(json_out: JsonOpt = False) -> None:
    """Migrate the database (FACTSTORE_DATABASE_URL or the embedded SQLite file) to the latest schema."""
    result = api.upgrade_database()
    emit_json(result.model_dump()) if json_out else print(
        f"database at {result.current} (was {result.previous or 'empty'})"
    )


@app.command()
def current(json_out: JsonOpt = False) -> None:
    """Show the database's schema revision and the latest one."""
    result = api.database_status()
    emit_json(result.model_dump()) if json_out else print(f"current {result.current or 'none'}, head {result.head}")
