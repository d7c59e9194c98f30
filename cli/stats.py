"""factstore stats: key statistics C per layer."""

from __future__ import annotations

import typer

from cli.options import CorpusOpt, DeviceOpt, JsonOpt, LayerOpt, ModelOpt, TokensOpt, parse_layer
from cli.output import emit_json

app = typer.Typer(help="Key second-moment statistics (computed on first need otherwise).", no_args_is_help=True)


@app.command("compute")
def compute(
    model: ModelOpt,
    layer: LayerOpt = None,
    corpus: CorpusOpt = "starter:wiki-vital",
    tokens: TokensOpt = None,
    device: DeviceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Compute (or find cached) C for a model's edit layer; resumes after an interruption."""
    from factstore import service

    result = service.compute_stats(service.open_store(), model, parse_layer(layer), corpus, tokens, device)
    emit_json(result) if json_out else print(f"layer {result['layer']}: {result['tokens']} tokens -> {result['path']}")
