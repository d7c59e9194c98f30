"""factstore publish / pull: versions of an edited model on the Hugging Face Hub."""

from __future__ import annotations

from typing import Annotated

import typer

from factstore import api

from .options import DeviceOpt, JsonOpt, ModelOpt
from .output import emit_json
from .progress import BARS

EndpointOpt = Annotated[
    str | None, typer.Option("--endpoint", help="Hub URL; default: HF_ENDPOINT or https://huggingface.co.")
]


def publish(
    model: ModelOpt,
    repo: Annotated[str, typer.Option("--repo", help="Hub repository NS/NAME; one repository per edited lineage.")],
    private: Annotated[bool, typer.Option("--private", help="Create the repository private.")] = False,
    mode: Annotated[
        str | None,
        typer.Option(
            "--mode", help="Compile mode if a compile is needed: joint, sequential, spread, null-space, soft or band."
        ),
    ] = None,
    endpoint: EndpointOpt = None,
    allow_degraded: Annotated[
        bool,
        typer.Option(
            "--allow-degraded",
            help="Publish even when the release's held-out perplexity rose past FACTSTORE_MAX_PERPLEXITY_RISE (default 5 %).",
        ),
    ] = False,
    with_stats: Annotated[
        bool,
        typer.Option(
            "--with-stats",
            help="Also upload the key statistics the edits used (once per repository), so `pull --import-edits` need not compute them.",
        ),
    ] = False,
    device: DeviceOpt = None,
    queue: Annotated[
        bool,
        typer.Option(
            "--queue",
            help="Queue the publish of the compiled current log as a job for a worker with Hub credentials of its own; prints the job.",
        ),
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Publish the current edit log as the next version (compiling if it changed): one commit on main, tag vN.

    The token comes from HF_TOKEN or `hf auth login` (with --queue: the worker's own).
    """
    if queue:
        if mode or endpoint or device:
            raise typer.BadParameter(
                "--queue publishes the compiled release as it is: no --mode, --endpoint or --device"
            )
        queued = api.PublishOptions(private=private, with_stats=with_stats, allow_degraded=allow_degraded)
        job, _ = api.queue_publish(api.open_store(), model, repo, queued)
        if json_out:
            emit_json(job.to_json())
        else:
            waiting = f" (waiting: {job.waiting})" if job.waiting else ""
            print(f"queued job {job.id}: publish v{job.params['version']} of {model} to {repo}{waiting}")
        return
    options = api.PublishOptions(
        private=private, mode=mode, endpoint=endpoint, with_stats=with_stats, allow_degraded=allow_degraded
    )
    result = api.publish_release(api.open_store(), model, repo, options, device=device, progress=BARS)
    if json_out:
        emit_json(result.to_json())
    elif result.already:
        print(f"v{result.version} is already published: {repo}@{result.tag} ({result.commit[:12]})")
        if with_stats:  # a published version never changes; statistics can go to a repository of their own
            print(
                f"nothing was sent: a published version never changes; share key statistics with `factstore stats push REPO --model {model}` "
                "(a repository without releases)"
            )
    else:
        print(f"published v{result.version} to {repo}: tag {result.tag}, commit {result.commit[:12]}")


def pull(
    repo: Annotated[str, typer.Argument(help="Hub repository NS/NAME.")],
    version: Annotated[
        str | None, typer.Option("--version", help="A tag (vN) or commit SHA; default: the newest vN.")
    ] = None,
    out: Annotated[
        str | None, typer.Option("--out", help="Folder to write; default: FACTSTORE_HOME/pulled/NS/NAME/COMMIT.")
    ] = None,
    import_edits: Annotated[
        bool, typer.Option("--import-edits", help="Add the release's base model and edit log to the local store.")
    ] = False,
    alias: Annotated[
        str | None, typer.Option("--alias", help="Local alias for --import-edits; default: the repository name.")
    ] = None,
    endpoint: EndpointOpt = None,
    device: DeviceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Download one version, check every file against the release manifest, optionally import its edits."""
    store = api.open_store() if import_edits else None
    options = api.PullOptions(version=version, out=out, endpoint=endpoint)
    result = api.pull_release(repo, options, import_into=store, alias=alias, device=device, progress=BARS)
    if json_out:
        emit_json(result.to_json())
        return
    print(
        f"pulled {repo}@{result.version or result.commit[:12]} (commit {result.commit[:12]}), verified -> {result.path}"
    )
    if result.imported:
        i = result.imported
        print(
            f"imported into {i.alias}: {i.edits_added} new edits ({i.edits_total} in the release), release v{i.release}"
        )
