"""Importing a file of edit requests: every record validated before any is computed, then one
edit (or one batch) computed and committed at a time, so an interrupted import resumes where it stopped."""

from __future__ import annotations

from pathlib import Path

from factstore.datasets import read_requests
from factstore.domain import EditRequest, request_sha256
from factstore.editing.models import check_size, tokenizer_for
from factstore.editing.requests import layer_spec
from factstore.editing.session import EditSession
from factstore.errors import InvalidEditRequest
from factstore.options import EditOptions
from factstore.progress import SILENT, Reporter
from factstore.storage.store import Store


def import_edits(
    store: Store,
    alias: str,
    path: str,
    limit: int | None = None,
    options: EditOptions = EditOptions(),
    *,
    device: str | None = None,
    progress: Reporter = SILENT,
) -> dict:
    """Add the first LIMIT requests of PATH to ALIAS's log; a rerun skips the ones already stored.
    options.batch requests are computed together in one optimisation (all on the head before
    them); each edit notes the file it came from."""
    layer = options.layer
    requests = read_requests(path, limit)
    tokenizer = tokenizer_for(store, alias)
    for i, request in enumerate(requests, start=1):  # sizes first: no model is loaded for a file that cannot go in
        try:
            check_size(tokenizer, request)
        except InvalidEditRequest as exc:
            raise InvalidEditRequest(f"record {i}: {exc}; nothing was imported") from None
    session = EditSession(store, alias, device=device, progress=progress, band=options.band)
    for i, request in enumerate(requests, start=1):
        try:
            session.validate(request, layer)
        except InvalidEditRequest as exc:
            raise InvalidEditRequest(f"record {i}: {exc}; nothing was imported") from None
    added, skipped = add_requests(
        session,
        requests,
        layer=layer,
        batch=options.batch,
        note=f"imported from {Path(path).name}",
        requested_by=options.requested_by,
        progress=progress,
    )
    return {"records": len(requests), "added": len(added), "skipped": skipped, "ids": added}


def add_requests(
    session: EditSession,
    requests: list[EditRequest],
    *,
    layer: int | str | None = None,
    batch: int = 1,
    note: str | None = None,
    requested_by: str | None = None,
    progress: Reporter = SILENT,
) -> tuple[list[int], int]:
    """Register validated REQUESTS on SESSION's model in order, BATCH at a time; requests
    already stored are skipped and ones an interrupted run left queued are computed now.
    Returns the ids of the edits made and how many requests were skipped."""
    store, base = session.store, session.base
    added: list[int] = []
    skipped = 0
    chunk: list[int] = []  # submitted, computed together once BATCH are gathered
    with progress.task("importing edits", len(requests)) as advance:
        for i, request in enumerate(requests, start=1):
            rows = store.list_request_rows(base.id, request_sha256(request))
            queued = [edit_id for edit_id, status in rows if status in ("pending", "computing")]
            if queued and queued[0] in chunk:  # the same record twice in one batch
                skipped += 1
            elif queued:  # submitted by an interrupted run: compute it now (or wait for the worker that is)
                chunk.append(queued[0])
            elif any(status in ("active", "retracted", "superseded") for _, status in rows):
                skipped += 1
            else:
                entry, _ = store.create_request(
                    base.id, request, requested_layer=layer_spec(layer), note=note, requested_by=requested_by
                )
                chunk.append(entry.id)
            if len(chunk) >= batch or (i == len(requests) and chunk):
                added.extend(o.edit.id for o in session.run_many(chunk))
                chunk = []
            advance(i)
    return added, skipped
