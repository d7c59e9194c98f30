"""factstore eval: CounterFact scores for single edits, lifelong logs and releases."""

from __future__ import annotations

from typing import Annotated

import typer

from factstore import api

from .options import DeviceOpt, JsonOpt, ModelOpt, parse_version
from .output import emit_json, table
from .progress import BARS

COLUMNS = ("n", "ES", "PS", "NS", "S", "EM", "PM", "NM", "GE")


def _row(name: str, scores: dict) -> list:
    return [name] + [("" if scores.get(k) is None else (scores[k] if k == "n" else f"{scores[k]:.1f}")) for k in COLUMNS]


def eval_(
    model: ModelOpt,
    dataset: Annotated[str, typer.Option("--dataset", help="CounterFact records (ROME's JSON format).")],
    n: Annotated[int, typer.Option("--n", min=1, help="How many records, from the start of the file.")] = 100,
    mode: Annotated[str, typer.Option("--mode", help="single: each record edited alone on the base model; lifelong: all registered one after another.")] = "single",
    release: Annotated[str | None, typer.Option("--release", help="Score a built release (vN) on the edits it contains instead.")] = None,
    every: Annotated[int | None, typer.Option("--every", min=1, help="lifelong: score the head model every K edits and plot the curve.")] = None,
    no_fluency: Annotated[bool, typer.Option("--no-fluency", help="Skip sampling generations for GE (the slowest part).")] = False,
    out: Annotated[str | None, typer.Option("--out", help="Folder for the lifelong curve PNG.")] = None,
    device: DeviceOpt = None,
    batch: Annotated[int, typer.Option("--batch", min=1, max=256, help="single: compute this many edits in one optimisation (each still scored alone).")] = 1,
    json_out: JsonOpt = False,
) -> None:
    """Efficacy, paraphrase, neighbourhood (and their harmonic mean S) and fluency, as in ROME's CounterFact."""
    version = parse_version(release)
    result = api.evaluate_model(
        api.open_store(), model, dataset, n, mode=mode, release=version, fluency=not no_fluency, every=every, out=out,
        device=device, batch=batch, progress=BARS,
    )
    if json_out:
        emit_json(result)
        return
    rows = []
    if "unedited" in result:
        rows.append(_row("unedited", result["unedited"]))
    for name, scores in result.get("modes", {}).items():
        rows.append(_row(f"compiled: {name}", scores))
    if "modes" not in result:
        rows.append(_row("edited" if version is None else f"release v{version}", result))
    table(f"CounterFact scores of {model} ({result['mode']})", ["", *COLUMNS], rows)
    if result.get("png"):
        print(f"curve: {result['png']}")
