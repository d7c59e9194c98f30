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
    return [name] + [
        ("" if scores.get(k) is None else (scores[k] if k == "n" else f"{scores[k]:.1f}")) for k in COLUMNS
    ]


def eval_(
    model: ModelOpt,
    dataset: Annotated[str, typer.Option("--dataset", help="CounterFact records (ROME's JSON format).")],
    n: Annotated[int, typer.Option("--n", min=1, help="How many records, from the start of the file.")] = 100,
    mode: Annotated[
        str,
        typer.Option(
            "--mode",
            help="single: each record edited alone on the base model; lifelong: all registered one after another.",
        ),
    ] = "single",
    release: Annotated[
        str | None, typer.Option("--release", help="Score a built release (vN) on the edits it contains instead.")
    ] = None,
    every: Annotated[
        int | None,
        typer.Option("--every", min=1, help="lifelong: score the head model every K edits and plot the curve."),
    ] = None,
    no_fluency: Annotated[
        bool, typer.Option("--no-fluency", help="Skip sampling generations for GE (the slowest part).")
    ] = False,
    out: Annotated[str | None, typer.Option("--out", help="Folder for the lifelong curve PNG.")] = None,
    device: DeviceOpt = None,
    batch: Annotated[
        int,
        typer.Option(
            "--batch",
            min=1,
            max=256,
            help="Compute this many edits in one optimisation (single: each still scored alone; lifelong: all on the head as it is).",
        ),
    ] = 1,
    compile_mode: Annotated[
        list[str] | None,
        typer.Option(
            "--compile-mode",
            help="lifelong: a compile mode to score (repeat; default the log's own: band for a band log, else every mode).",
        ),
    ] = None,
    layer: Annotated[
        int | None,
        typer.Option(
            "--layer",
            min=0,
            help="lifelong: the edit layer (default: the top of the model's default band, else its measured layer).",
        ),
    ] = None,
    band: Annotated[
        int | None,
        typer.Option(
            "--band",
            min=1,
            max=64,
            help="lifelong: register each edit over this many layers (compile --mode band); default: the model's default band, else 1.",
        ),
    ] = None,
    retract: Annotated[
        int,
        typer.Option(
            "--retract", min=0, help="lifelong: then retract this many edits at random and score the rebuild."
        ),
    ] = 0,
    heldout_tokens: Annotated[
        int,
        typer.Option(
            "--heldout-tokens",
            min=0,
            help="lifelong: perplexity on this many tokens of held-out corpus text (0: skip).",
        ),
    ] = 20_000,
    fluency_sample: Annotated[
        int,
        typer.Option("--fluency-sample", min=0, help="lifelong: records whose generations are scored (GE) at the end."),
    ] = 50,
    run_dir: Annotated[
        str | None,
        typer.Option(
            "--run-dir",
            help="lifelong: the run's folder (its store and scores); a rerun continues it. Default under FACTSTORE_HOME/evals.",
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Efficacy, paraphrase, neighbourhood (and their harmonic mean S) and fluency, as in ROME's CounterFact."""
    version = parse_version(release)
    plan = api.LifelongSettings(
        every=every,
        batch=batch,
        modes=tuple(compile_mode) if compile_mode else None,
        fluency_sample=fluency_sample,
        heldout_tokens=heldout_tokens,
        retract=retract,
        layer=layer,
        band=band,
        folder=run_dir,
        out=out,
    )
    fluency = None if no_fluency else api.FluencySettings()
    settings = api.EvalSettings(mode=mode, release=version, fluency=fluency, batch=batch, lifelong=plan)
    result = api.evaluate_model(api.open_store(), model, dataset, n, settings, device=device, progress=BARS)
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
    if "run_dir" in result:
        _lifelong_extras(result)
    if result.get("png"):
        print(f"curve: {result['png']}")


def _lifelong_extras(result: dict) -> None:
    """Perplexity, curve and retraction of a lifelong run, under its table."""
    for name, scores in result["modes"].items():
        if "refused" in scores:
            print(f"{name}: refused: {scores['refused']}")
    ppl = [
        (name, s["perplexity"])
        for name, s in [("unedited", result["unedited"]), *result["modes"].items()]
        if s.get("perplexity")
    ]
    if ppl:
        print("held-out perplexity: " + ", ".join(f"{name} {value:.2f}" for name, value in ppl))
    mode = result.get("compile_mode")
    points = [c for c in result["curve"] if mode in c]
    if len(points) > 1:
        table(
            f"curve ({mode} compile, scored on the edits so far)",
            ["edits", "ES", "PS", "NS", "NS unedited"],
            [
                [c["edits"], *(f"{c[mode][k]:.1f}" for k in ("ES", "PS", "NS")), f"{c['unedited']['NS']:.1f}"]
                for c in points
            ],
        )
    if r := result.get("retraction"):

        def cells(d: dict | None) -> list[str]:
            return ["" if not d or d.get(k) is None else f"{d[k]:.1f}" for k in ("ES", "PS", "NS")]

        table(
            f"retraction of {r['retracted']} edits ({r['mode']} rebuild)",
            ["records", "", "ES", "PS", "NS"],
            [
                [r["retracted"], "retracted: unedited", *cells(r["retracted_unedited"])],
                [r["retracted"], "retracted: before", *cells(r["retracted_before"])],
                [r["retracted"], "retracted: after", *cells(r["retracted_after"])],
                [r["kept"], "kept: before", *cells(r["kept_before"])],
                [r["kept"], "kept: after", *cells(r["kept_after"])],
            ],
        )
    print(f"run folder (rerun to continue or add modes): {result['run_dir']}")
