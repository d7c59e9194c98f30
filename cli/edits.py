"""factstore edit: register, import, inspect and retract fact edits."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from factstore import api

from .options import BandOpt, DeviceOpt, JsonOpt, LayerOpt, ModelOpt, parse_layer
from .output import emit_json, prob, table
from .progress import BARS

app = typer.Typer(help="Fact edits: add, import, list, show, retract.", no_args_is_help=True)

EditIdArg = Annotated[int, typer.Argument(min=1, max=2**31 - 1, help="Edit id.")]


@app.command("add")
def add(
    model: ModelOpt,
    prompt: Annotated[str, typer.Option(help="Template with {} for the subject, e.g. '{} is located in the city of'.")],
    subject: Annotated[str, typer.Option(help="The entity, e.g. 'The Eiffel Tower'.")],
    target: Annotated[str, typer.Option(help="The new object the model should say, e.g. 'Rome'.")],
    layer: LayerOpt = None,
    band: BandOpt = None,
    relation: Annotated[
        str | None, typer.Option("--relation", help="Relation id (e.g. P276); same subject+relation supersedes.")
    ] = None,
    note: Annotated[str | None, typer.Option(help="Free text kept with the edit.")] = None,
    device: DeviceOpt = None,
    queue: Annotated[
        bool,
        typer.Option("--queue", help="Only submit (checked with the tokenizer); a worker computes it. Prints the id."),
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Compute and register one fact edit on the head model (with --queue: submit it for a worker)."""
    store = api.open_store()
    options = api.EditOptions(layer=parse_layer(layer), note=note, band=band)
    request = api.EditRequest(prompt, subject, target, relation_id=relation)
    if queue:
        entry, _ = api.submit_edit(store, model, request, options)
        emit_json(entry.model_dump()) if json_out else print(entry.id)
        return
    outcome = api.add_edit(store, model, request, options, device=device, progress=BARS)
    if (crowded := api.capacity_warning(api.open_store(), model)) is not None:
        print(f"warning: {crowded}", file=sys.stderr)
    if json_out:
        emit_json(outcome.to_json())
        return
    e, m = outcome.edit, outcome.edit.metrics
    print(f"edit {e.id} (seq {e.seq}, layer {e.layer}): {e.subject} -> {e.target_new} (was {e.target_true})")
    print(
        f"  P(new) {prob(m['prob_new_before'])} -> {prob(m['prob_new_after'])}   P(old) {prob(m['prob_true_before'])} -> {prob(m['prob_true_after'])}"
    )
    for old in outcome.superseded:
        print(f"  supersedes edit {old.id} ({old.subject} -> {old.target_new})")


@app.command("import")
def import_(
    model: ModelOpt,
    file: Annotated[str, typer.Argument(help="CounterFact-format JSON, or CSV with columns prompt, subject, target.")],
    limit: Annotated[int | None, typer.Option(min=1, help="Import only the first N records.")] = None,
    layer: LayerOpt = None,
    band: BandOpt = None,
    device: DeviceOpt = None,
    batch: Annotated[
        int,
        typer.Option(
            min=1,
            max=256,
            help="Requests computed together in one optimisation (faster per edit; each on the head before its batch).",
        ),
    ] = 1,
    json_out: JsonOpt = False,
) -> None:
    """Validate every record, then compute and commit one edit (or one batch) at a time (a rerun resumes)."""
    options = api.EditOptions(layer=parse_layer(layer), band=band, batch=batch)
    result = api.import_edits(api.open_store(), model, file, limit, options, device=device, progress=BARS)
    emit_json(result) if json_out else print(
        f"{result['added']} edits added, {result['skipped']} already stored, of {result['records']} records"
    )


@app.command("list")
def list_(
    model: ModelOpt,
    status: Annotated[
        str,
        typer.Option(
            help="current (active edits and queued or failed requests), active, pending, computing, failed, retracted, superseded or all."
        ),
    ] = "current",
    json_out: JsonOpt = False,
) -> None:
    """List a model's edits in replay order, then the requests still queued or failed."""
    edits = api.list_log(api.open_store(), model, status)
    if json_out:
        emit_json([e.model_dump() for e in edits])
    else:
        table(
            f"edits of {model} ({status})",
            ["id", "seq", "status", "layer", "subject", "prompt", "old -> new", "error"],
            [
                (e.id, e.seq, e.status, e.layer, e.subject, e.prompt, f"{e.target_true} -> {e.target_new}", e.error)
                for e in edits
            ],
        )


@app.command("show")
def show(edit_id: EditIdArg, json_out: JsonOpt = False) -> None:
    """Everything recorded about one edit (or request)."""
    store = api.open_store()
    entry = api.get_entry(store, edit_id)
    details = api.get_edit(store, edit_id).details() if entry.seq is not None else entry.model_dump()
    if json_out:
        emit_json(details)
    else:
        table(f"edit {edit_id}", ["field", "value"], list(details.items()))


@app.command("withdraw")
def withdraw(edit_id: EditIdArg, json_out: JsonOpt = False) -> None:
    """Withdraw a pending request (not yet claimed by a worker): it fails, and no worker computes it."""
    entry = api.withdraw_edit(api.open_store(), edit_id)
    emit_json(entry.model_dump()) if json_out else print(
        f"edit {entry.id} withdrawn ({entry.subject} -> {entry.target_new})"
    )


@app.command("retract")
def retract(edit_id: EditIdArg, json_out: JsonOpt = False) -> None:
    """Mark an active edit retracted; the next compile rebuilds without it."""
    edit = api.retract_edit(api.open_store(), edit_id)
    emit_json(edit.summary()) if json_out else print(f"edit {edit.id} retracted ({edit.subject} -> {edit.target_new})")
