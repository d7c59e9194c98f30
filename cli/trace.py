"""factstore trace: causal tracing of where a model recalls a fact."""

from __future__ import annotations

from typing import Annotated

import typer

from factstore import api

from .options import DeviceOpt, JsonOpt, ModelOpt
from .output import emit_json
from .progress import BARS


def trace(
    model: ModelOpt,
    prompt: Annotated[
        str | None,
        typer.Option("--prompt", help='Prompt with "{}" for the subject, e.g. "{} is located in the city of".'),
    ] = None,
    subject: Annotated[str | None, typer.Option("--subject", help="The subject put into the prompt.")] = None,
    target: Annotated[
        str | None, typer.Option("--target", help="Answer to trace; default: the model's own top token.")
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            "--dataset",
            help="Known facts (JSON: subject, prompt, attribute) to average over; stores the recommended layer.",
        ),
    ] = None,
    n: Annotated[int, typer.Option("--n", min=1, help="With --dataset: how many facts the model knows to trace.")] = 50,
    samples: Annotated[int, typer.Option("--samples", min=1, max=1000, help="Corrupted runs per fact.")] = 10,
    noise: Annotated[
        float, typer.Option("--noise", min=0.0, help="Noise std as a multiple of the subject embeddings' std.")
    ] = 3.0,
    window: Annotated[
        int, typer.Option("--window", min=1, help="Layers restored together for the MLP and attention maps.")
    ] = 10,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the noise.")] = 0,
    kinds: Annotated[
        str, typer.Option("--kinds", help="Maps to compute, comma-separated: hidden, mlp, attn (each costs the same).")
    ] = "hidden,mlp,attn",
    out: Annotated[
        str | None, typer.Option("--out", help="Folder for the PNGs and JSON; default under FACTSTORE_HOME/traces.")
    ] = None,
    device: DeviceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Heatmaps of where a fact lives (one fact), or the average over known facts (--dataset)."""
    chosen = tuple(k.strip() for k in kinds.split(",") if k.strip())  # none: every kind
    settings = api.TraceSettings(samples=samples, noise_factor=noise, window=window, seed=seed, kinds=chosen)
    options = api.TraceOptions(out=out, settings=settings)
    store = api.open_store()
    if dataset:
        result = api.trace_dataset(store, model, dataset, n, options, device=device, progress=BARS)
        if not json_out:
            skipped = (
                f", {len(result['skipped'])} skipped (subject not on a token boundary)" if result["skipped"] else ""
            )
            print(
                f"MLP effect at the last subject token peaks at layer {result['peak_mlp_layer']} over {result['n']} facts "
                f"({result['scanned']} scanned{skipped}); stored as the recommended layer of {model}"
            )
    else:
        if not (prompt and subject):
            raise typer.BadParameter("give --prompt and --subject for one fact, or --dataset FILE")
        fact = api.TracedFact(prompt, subject, target)
        result = api.trace_fact(store, model, fact, options, device=device, progress=BARS)
        if not json_out:
            print(
                f"P(answer): clean {result['clean_prob']:.3f}, corrupted {result['corrupted_prob']:.3f}; MLP peak at layer {result['peak_mlp_layer']}"
            )
    if json_out:
        emit_json(result)
    else:
        for path in [*result["png"], result["json"]]:
            print(f"  {path}")
