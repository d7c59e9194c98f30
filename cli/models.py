"""factstore model: register and list base models."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.options import JsonOpt
from cli.output import emit_json, table

app = typer.Typer(help="Base models pinned to exact weights.", no_args_is_help=True)


def _row(m) -> dict:  # type: ignore[no-untyped-def]
    return {"id": m.id, "alias": m.alias, "source": m.source, "revision": m.revision, "model_type": m.model_type, "recommended_layer": m.recommended_layer}


@app.command("add")
def add(
    alias: Annotated[str, typer.Argument(help="Name to use with --model.")],
    source: Annotated[str, typer.Argument(help="Hub id, model folder, .gguf file, or starter:smollm2-135m / starter:gemma3-270m.")],
    revision: Annotated[str | None, typer.Option(help="Hub branch, tag or commit (pinned to its commit SHA).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Register SOURCE under ALIAS, pinned to its exact weights."""
    from factstore import service

    model, created = service.add_model(service.open_store(), alias, source, revision)
    if json_out:
        emit_json({**_row(model), "created": created})
    else:
        print(f"{'registered' if created else 'already registered'}: {model.alias} -> {model.source} @ {model.revision}")


@app.command("list")
def list_(json_out: JsonOpt = False) -> None:
    """List registered base models."""
    from factstore import service

    models = service.open_store().list_base_models()
    if json_out:
        emit_json([_row(m) for m in models])
    else:
        table("base models", ["alias", "type", "source", "revision"], [(m.alias, m.model_type, m.source, m.revision[:23]) for m in models])
