"""factstore stats: key statistics C per layer."""

from __future__ import annotations

from typing import Annotated

import typer

from factstore import api

from .options import CorpusOpt, DeviceOpt, JsonOpt, LayerOpt, ModelOpt, TokensOpt, parse_layer
from .output import emit_json
from .progress import BARS

app = typer.Typer(help="Key second-moment statistics (computed on first need otherwise).", no_args_is_help=True)


def _layers(text: str | None) -> tuple[int, ...]:
    """ "0-4" or "1,3,5" -> layer numbers (none given: none)."""
    if text is None:
        return ()
    try:
        if "-" in text:
            lo, hi = (int(x) for x in text.split("-"))
            return tuple(range(lo, hi + 1))
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise typer.BadParameter(f"--layers takes A-B or A,B,C, not {text[:20]!r}") from None


@app.command("compute")
def compute(
    model: ModelOpt,
    layer: LayerOpt = None,
    layers: Annotated[
        str | None, typer.Option("--layers", help="Several layers from one pass over the corpus: A-B or A,B,C.")
    ] = None,
    corpus: CorpusOpt = "starter:wiki-vital",
    tokens: TokensOpt = None,
    shard: Annotated[
        str | None,
        typer.Option("--shard", help="I/N: only shard I of N of the corpus (partial sums); then `stats merge`."),
    ] = None,
    jobs: Annotated[
        int | None,
        typer.Option(
            "--jobs",
            min=1,
            max=64,
            help="Queue N shard jobs and their merge for workers with a statistics share (FACTSTORE_STATS_SHARE) instead of computing here.",
        ),
    ] = None,
    device: DeviceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Compute (or find cached) C for the layers a model's next edit reads (its band's, else its layer); resumes."""
    options = api.StatsOptions(
        layer=parse_layer(layer), layers=_layers(layers), corpus=corpus, tokens=tokens, shard=shard
    )
    if jobs is not None:
        if shard is not None or device is not None:
            raise typer.BadParameter("--jobs queues the work for workers: no --shard or --device")
        job, _ = api.queue_stats(api.open_store(), model, options, jobs)
        if json_out:
            emit_json(job.to_json())
        else:
            waiting = f" (waiting: {job.waiting})" if job.waiting else ""
            print(f"queued shard jobs {', '.join(map(str, job.params['after']))} and merge job {job.id}{waiting}")
        return
    result = api.compute_stats(api.open_store(), model, options, device=device, progress=BARS)
    if json_out:
        emit_json(result.model_dump())
    elif isinstance(result, api.ShardSum):
        print(f"layer {result.layer}, shard {result.shard}: {result.tokens} tokens -> {result.path}")
    else:
        for row in result.layers if isinstance(result, api.StatsLayers) else [result]:
            print(f"layer {row.layer}: {row.tokens} tokens -> {row.path}")


@app.command("merge")
def merge(
    model: ModelOpt,
    layer: Annotated[int, typer.Option("--layer", min=0, help="The layer whose shards to merge.")],
    corpus: CorpusOpt = "starter:wiki-vital",
    tokens: TokensOpt = None,
    shards_from: Annotated[
        list[str] | None, typer.Option("--from", help="Another folder holding shard files (repeat).")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Combine the shards of `stats compute --shard I/N` into C, equal to a single pass."""
    options = api.StatsOptions(layer=layer, corpus=corpus, tokens=tokens)
    result = api.merge_stats(api.open_store(), model, options, folders=shards_from or [], progress=BARS)
    emit_json(result.model_dump()) if json_out else print(
        f"layer {result.layer}: {result.tokens} tokens -> {result.path}"
    )


EndpointOpt = Annotated[
    str | None, typer.Option("--endpoint", help="Hub URL; default: HF_ENDPOINT or https://huggingface.co.")
]
RepoArg = Annotated[str, typer.Argument(help="Hub repository NS/NAME holding statistics alone (not releases).")]


@app.command("push")
def push(
    repo: RepoArg,
    model: ModelOpt,
    endpoint: EndpointOpt = None,
    private: Annotated[bool, typer.Option("--private")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Upload every C computed for a model (each file once) and an index, for teammates to pull."""
    result = api.push_stats(api.open_store(), model, repo, endpoint=endpoint, private=private)
    emit_json(result.model_dump()) if json_out else print(
        f"{repo}: {result.uploaded} new files, {result.files} in all (commit {result.commit[:12]})"
    )


@app.command("pull")
def pull(repo: RepoArg, model: ModelOpt, endpoint: EndpointOpt = None, json_out: JsonOpt = False) -> None:
    """Take the C files a statistics repository holds for this model's exact weights (checked)."""
    result = api.pull_stats(api.open_store(), model, repo, endpoint=endpoint)
    emit_json(result.model_dump()) if json_out else print(
        f"{repo}: layers {result.layers or 'none'} recorded; {result.skipped} files for other models"
    )
