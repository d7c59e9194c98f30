"""Shared option aliases, declared once."""

from __future__ import annotations

from typing import Annotated

import typer

ModelOpt = Annotated[
    str, typer.Option("--model", "-m", help="Alias of a registered base model (see `factstore model list`).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
BandOpt = Annotated[
    int | None,
    typer.Option(
        "--band",
        min=1,
        max=64,
        help="Spread the edit over this many layers ending at its own (MEMIT; stored per layer, compiled with --mode band). A log keeps the band it started with; default: the log's, else the model's (SmolLM2: 9 ending at layer 8; Gemma 3 270M: 6 ending at 5), else 1 (one layer).",
    ),
]
LayerOpt = Annotated[
    str | None,
    typer.Option(
        "--layer",
        help="Layer to edit, or `auto` for the layer causal tracing recommended; default: a band log's own top layer (a new log's: its default band's), else the measured layer for this model, else the traced one.",
    ),
]


def parse_layer(value: str | None) -> int | str | None:
    """--layer N | auto | (absent)."""
    if value is None or value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise typer.BadParameter(f"--layer takes a layer number or `auto`, not {value!r}") from None


def parse_version(value: str | None) -> int | None:
    """--release vN | N | (absent)."""
    if value is None:
        return None
    digits = value.removeprefix("v")
    if not digits.isdigit() or not 0 < int(digits) < 2**31:
        raise typer.BadParameter(f"--release takes a version such as v2, not {value!r}")
    return int(digits)


DeviceOpt = Annotated[
    str | None,
    typer.Option(
        "--device",
        help="cpu, cuda, cuda:N, mps or auto (default: the GPU when the model fits on one, accelerate's device map over several or when it does not, else the CPU).",
    ),
]
CorpusOpt = Annotated[
    str, typer.Option("--corpus", help="Text for the key statistics: starter:wiki-vital or a .txt/.json/.jsonl file.")
]
TokensOpt = Annotated[
    int | None, typer.Option("--tokens", help="Tokens of text for the key statistics (default per model).")
]
