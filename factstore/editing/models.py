"""Registering base models: a reference pinned to exact weights under an alias."""

from __future__ import annotations

from factstore.domain import BaseModel
from factstore.progress import SILENT, Reporter
from factstore.storage.store import Store
from factstore.weights import assets, checkpoints


def register_model(
    store: Store, alias: str, source: str, revision: str | None = None, *, progress: Reporter = SILENT,
) -> tuple[BaseModel, bool]:
    """Pin SOURCE (Hub id, folder, .gguf, starter:NAME) to exact weights under ALIAS. Returns (model, created)."""
    ref = checkpoints.resolve(source, revision, progress)
    license = assets.starter(source).license if source.startswith(assets.PREFIX) else None
    return store.create_base_model(alias, ref, license=license)
