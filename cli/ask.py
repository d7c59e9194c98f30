"""factstore ask: check a fact by hand on the head model."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.options import DeviceOpt, JsonOpt, ModelOpt
from cli.output import emit_json, prob, table


def ask(
    prompt: Annotated[str, typer.Argument(help="Text to continue, e.g. 'The Eiffel Tower is located in the city of'.")],
    model: ModelOpt,
    top: Annotated[int, typer.Option("--top", help="How many next tokens to show.")] = 5,
    device: DeviceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Top next tokens and the greedy continuation of PROMPT on the model with its active edits."""
    from factstore import service

    result = service.ask_model(service.open_store(), model, prompt, top, device)
    if json_out:
        emit_json(result)
        return
    table(f"{prompt!r} ({result['edits_applied']} edits applied)", ["token", "prob"], [(repr(t["token"]), prob(t["prob"])) for t in result["top"]])
    print(f"continuation: {result['continuation']!r}")
