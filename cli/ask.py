"""factstore ask: check a fact by hand on the head model."""

from __future__ import annotations

from typing import Annotated

import typer

from factstore import api

from .options import DeviceOpt, JsonOpt, ModelOpt
from .output import emit_json, prob, table
from .progress import BARS


def ask(
    prompt: Annotated[str, typer.Argument(help="Text to continue, e.g. 'The Eiffel Tower is located in the city of'.")],
    model: ModelOpt,
    top: Annotated[int, typer.Option("--top", min=1, max=100, help="How many next tokens to show.")] = 5,
    device: DeviceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Top next tokens and the greedy continuation of PROMPT on the model with its active edits."""
    result = api.ask_model(api.open_store(), model, prompt, top, device=device, progress=BARS)
    if json_out:
        emit_json(result.model_dump())
        return
    print(f"prompt: {prompt!r} ({result.edits_applied} edits applied)")
    table("next token", ["token", "prob"], [(repr(t.token), prob(t.prob)) for t in result.top])
    print(f"continuation: {result.continuation!r}")
