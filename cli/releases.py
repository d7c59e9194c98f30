"""factstore compile / releases: rebuild edited models from the edit log."""

from __future__ import annotations

from typing import Annotated

import typer

from factstore import api

from .options import DeviceOpt, JsonOpt, ModelOpt
from .output import emit_json, health_line, table
from .progress import BARS

app = typer.Typer(help="Compiled releases of a model's edit log.", no_args_is_help=True)

ModeOpt = Annotated[
    str | None,
    typer.Option(
        "--mode",
        help="joint (all edits of a layer solved at once), sequential (replay in order), spread (over layers L-4..L, MEMIT), null-space (joint within C's null space, AlphaEdit), soft (least squares against preserved text, MEMIT's solve; holds no edit exactly) or band (that soft solve on every layer of the band each edit was registered over, from its stored per-layer vectors). Default: band for a band log (SmolLM2's and Gemma 3's default for new logs), else joint.",
    ),
]
MinEfficacyOpt = Annotated[
    float | None,
    typer.Option(
        "--min-efficacy",
        min=0.0,
        max=1.0,
        help="soft mode: refuse the release when fewer than this share of the edits that took still take on it (default 0.95).",
    ),
]


def compile_(
    model: ModelOpt,
    mode: ModeOpt = None,
    out: Annotated[
        str | None,
        typer.Option("--out", help="Write the release folder here instead of under FACTSTORE_HOME/releases."),
    ] = None,
    device: DeviceOpt = None,
    min_efficacy: MinEfficacyOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Replay the active edits onto the base checkpoint and write a release folder."""
    seconds: dict[str, float] = {}
    options = api.CompileOptions(mode=mode, out=out, min_efficacy=min_efficacy)
    release, created = api.compile_release(
        api.open_store(), model, options, device=device, timings=seconds, progress=BARS
    )
    if json_out:
        emit_json(
            {
                **release.to_json(),
                "scores": api.release_scores(release),
                "created": created,
                "folder": out or release.path,
                "seconds": {k: round(v, 3) for k, v in seconds.items()},
            }
        )
    elif created:
        phases = ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items())
        print(
            f"release v{release.version} ({release.mode}, {len(release.edit_ids)} edits) -> {release.path} ({phases})"
        )
        if (line := health_line(api.release_scores(release).get("health") or {})) is not None:
            print(f"health: {line}")
    elif out:
        print(f"edit log unchanged since v{release.version}: built it again into {out}")
    else:
        print(f"edit log unchanged since v{release.version}: reusing {release.path}")


@app.command("list")
def list_(model: ModelOpt, json_out: JsonOpt = False) -> None:
    """A model's releases, their contents and published state."""
    releases = api.list_releases(api.open_store(), model)
    if json_out:
        emit_json([r.to_json() for r in releases])
    else:
        table(
            f"releases of {model}",
            ["version", "mode", "edits", "status", "hub", "tag", "commit", "path"],
            [
                (
                    f"v{r.version}",
                    r.mode,
                    len(r.edit_ids),
                    r.status,
                    r.hub_repo or "",
                    r.tag or "",
                    (r.hub_commit or "")[:12],
                    r.path,
                )
                for r in releases
            ],
        )
