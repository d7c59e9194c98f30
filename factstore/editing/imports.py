"""Importing a file of edit requests: every record validated before any is computed, then one
edit computed and committed at a time, so an interrupted import resumes where it stopped."""

from __future__ import annotations

from pathlib import Path

from factstore.datasets import read_requests
from factstore.domain import request_sha256
from factstore.editing.models import check_size, tokenizer_for
from factstore.editing.session import EditSession
from factstore.errors import InvalidEditRequest
from factstore.progress import SILENT, Reporter
from factstore.storage.store import Store


def import_edits(
    store: Store, alias: str, path: str, limit: int | None = None, *, layer: int | str | None = None,
    device: str | None = None, requested_by: str | None = None, progress: Reporter = SILENT,
) -> dict:
    """Add the first LIMIT requests of PATH to ALIAS's log; a rerun skips the ones already stored."""
    requests = read_requests(path, limit)
    base = store.get_base_model(alias)
    tokenizer = tokenizer_for(store, alias)
    for i, request in enumerate(requests, start=1):  # sizes first: no model is loaded for a file that cannot go in
        try:
            check_size(tokenizer, request)
        except InvalidEditRequest as exc:
            raise InvalidEditRequest(f"record {i}: {exc}; nothing was imported") from None
    session = EditSession(store, alias, device=device, progress=progress)
    for i, request in enumerate(requests, start=1):
        try:
            session.validate(request, layer)
        except InvalidEditRequest as exc:
            raise InvalidEditRequest(f"record {i}: {exc}; nothing was imported") from None
    added, skipped = [], 0
    with progress.task("importing edits", len(requests)) as advance:
        for i, request in enumerate(requests, start=1):
            rows = store.list_request_rows(base.id, request_sha256(request))
            queued = [edit_id for edit_id, status in rows if status in ("pending", "computing")]
            if queued:  # submitted by an interrupted run: compute it now (or wait for the worker that is)
                added.append(session.run(queued[0]).edit.id)
            elif any(status in ("active", "retracted", "superseded") for _, status in rows):
                skipped += 1
            else:
                outcome = session.add(request, layer=layer, requested_by=requested_by, note=f"imported from {Path(path).name}")
                added.append(outcome.edit.id)
            advance(i)
    return {"records": len(requests), "added": len(added), "skipped": skipped, "ids": added}
