"""factstore model: register and list base models."""

from __future__ import annotations

from typing import Annotated

import typer

from factstore import api

from .options import JsonOpt
from .output import emit_json, table
from .progress import BARS

app = typer.Typer(help="Base models pinned to exact weights.", no_args_is_help=True)


def _row(m: api.BaseModel) -> dict:
    return {
        "id": m.id,
        "alias": m.alias,
        "source": m.source,
        "revision": m.revision,
        "model_type": m.model_type,
        "dtype": m.dtype,
        "recommended_layer": m.recommended_layer,
    }


@app.command("add")
def add(
    alias: Annotated[str, typer.Argument(help="Name to use with --model.")],
    source: Annotated[
        str, typer.Argument(help="Hub id, model folder, .gguf file, or starter:smollm2-135m / starter:gemma3-270m.")
    ],
    revision: Annotated[str | None, typer.Option(help="Hub branch, tag or commit (pinned to its commit SHA).")] = None,
    dtype: Annotated[
        str | None,
        typer.Option(
            help="float32, bfloat16 or float16: what the weights are loaded, edited and released in (part of the model's identity). Default: the checkpoint's own."
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Register SOURCE under ALIAS, pinned to its exact weights."""
    model, created = api.add_model(api.open_store(), alias, source, revision, dtype=dtype, progress=BARS)
    if json_out:
        emit_json({**_row(model), "created": created})
    else:
        print(
            f"{'registered' if created else 'already registered'}: {model.alias} -> {model.source} @ {model.revision} ({model.dtype})"
        )


@app.command("list")
def list_(json_out: JsonOpt = False) -> None:
    """List registered base models."""
    models = api.list_models(api.open_store())
    if json_out:
        emit_json([_row(m) for m in models])
    else:
        table(
            "base models",
            ["alias", "type", "dtype", "source", "revision"],
            [(m.alias, m.model_type, m.dtype, m.source, m.revision[:23]) for m in models],
        )
