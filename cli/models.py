"""factstore model: register and list base models."""

from __future__ import annotations

from typing import Annotated

import typer

from factstore import api

from .options import JsonOpt
from .output import emit_json, health_line, table
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


@app.command("show")
def show(alias: Annotated[str, typer.Argument(help="A registered model.")], json_out: JsonOpt = False) -> None:
    """Capacity in sight: per edited layer the active edits and the load (edits per key dimension,
    against the load measured as safe), and the health of the newest release."""
    found = api.model_capacity(api.open_store(), alias)
    if json_out:
        emit_json(found.to_json())
        return
    table(
        f"{alias}: edited layers (safe load {found.to_json()['safe_load']})",
        ["layer", "active edits", "key dim", "load", ""],
        [(x.layer, x.edits, x.key_dim, f"{x.load:.3f}", "over" if x in found.over else "") for x in found.layers],
    )
    if found.release is not None:
        line = health_line(found.health) or found.health.get(
            "not_measured", "not recorded (built before 0.2.0, or on another machine)"
        )
        print(f"v{found.release} health: {line}")
    if found.warning is not None:
        print(f"warning: {found.warning}")
