"""factstore stats: key statistics C per layer."""

from __future__ import annotations

import typer

from factstore import api

from .options import CorpusOpt, DeviceOpt, JsonOpt, LayerOpt, ModelOpt, TokensOpt, parse_layer
from .output import emit_json
from .progress import BARS

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
    result = api.compute_stats(api.open_store(), model, parse_layer(layer), corpus=corpus, tokens=tokens, device=device, progress=BARS)
    emit_json(result) if json_out else print(f"layer {result['layer']}: {result['tokens']} tokens -> {result['path']}")
