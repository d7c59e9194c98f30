"""Figures and their numbers: causal-tracing heatmaps (PNG + JSON) and the lifelong curve.
The one place that sets matplotlib up (files only, never a window)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from factstore import extras
from factstore.analysis.causal_trace import CATEGORIES, TraceResult

TITLES = {
    "hidden": "single restored layer (residual stream)",
    "mlp": "restored MLP outputs",
    "attn": "restored attention outputs",
}
COLOURS = {"hidden": "Purples", "mlp": "Greens", "attn": "Reds"}


def _pyplot() -> Any:
    extras.require("matplotlib")
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    _pyplot().close(fig)


def _heatmap(
    grid: torch.Tensor, rows: list[str], kind: str, title: str, colour_label: str, path: Path, window: int
) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(3.2 + 0.12 * grid.shape[1], 1.0 + 0.32 * len(rows)), dpi=150)
    image = ax.pcolor(grid.numpy(), cmap=COLOURS[kind], vmin=float(torch.nan_to_num(grid).min()))
    ax.invert_yaxis()
    ax.set_yticks([0.5 + i for i in range(len(rows))])
    ax.set_yticklabels(rows)
    step = max(1, grid.shape[1] // 10)
    ax.set_xticks([0.5 + i for i in range(0, grid.shape[1], step)])
    ax.set_xticklabels(list(range(0, grid.shape[1], step)))
    suffix = f" (window {window})" if kind != "hidden" else ""
    ax.set_xlabel(f"layer{suffix}")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax).set_label(colour_label)
    _save(fig, path)


def _token_labels(result: TraceResult) -> list[str]:
    first, last = result.subject
    return [repr(t)[1:-1] + ("*" if first <= i <= last else "") for i, t in enumerate(result.tokens)]


def write_fact_trace(result: TraceResult, folder: Path, stem: str = "trace") -> dict:
    """Three heatmaps and a JSON of every number for one fact; returns the paths and headline numbers."""
    folder.mkdir(parents=True, exist_ok=True)
    pngs = []
    for kind, grid in result.scores.items():
        path = folder / f"{stem}-{kind}.png"
        title = (
            f"{TITLES[kind]}\nP({result.answer.strip()!r}): clean {result.clean_prob:.3f}, corrupted {result.corrupted_prob:.3f}"
            "  (* = subject)"
        )
        _heatmap(grid, _token_labels(result), kind, title, f"P({result.answer.strip()})", path, result.settings.window)
        pngs.append(str(path))
    json_path = folder / f"{stem}.json"
    json_path.write_text(json.dumps(result.to_json(), indent=1) + "\n")
    return {
        "png": pngs,
        "json": str(json_path),
        "peak_mlp_layer": result.peak_mlp_layer if "mlp" in result.scores else None,
        "clean_prob": result.clean_prob,
        "corrupted_prob": result.corrupted_prob,
    }


def write_average_trace(
    averaged: dict[str, torch.Tensor],
    facts: list[dict],
    peak: int,
    folder: Path,
    window: int,
    stem: str = "trace-average",
) -> dict:
    """The paper's summary figure: average indirect effect per token category and layer."""
    folder.mkdir(parents=True, exist_ok=True)
    pngs = []
    for kind, grid in averaged.items():
        path = folder / f"{stem}-{kind}.png"
        title = f"average indirect effect, {TITLES[kind]}\nover {len(facts)} known facts; MLP peak at layer {peak}"
        _heatmap(grid, list(CATEGORIES), kind, title, "P(answer) restored - corrupted", path, window)
        pngs.append(str(path))
    json_path = folder / f"{stem}.json"
    data = {
        "categories": list(CATEGORIES),
        "peak_mlp_layer": peak,
        "n": len(facts),
        "facts": facts,
        "average_indirect_effect": {
            k: [[None if math.isnan(x) else x for x in row] for row in v.tolist()] for k, v in averaged.items()
        },
    }
    json_path.write_text(json.dumps(data, indent=1) + "\n")
    return {"png": pngs, "json": str(json_path), "peak_mlp_layer": peak, "n": len(facts)}


def plot_curve(curve: list[dict], path: Path, title: str, baseline: list[float | None] | None = None) -> str:
    """ES / PS / NS on the edits so far against the number of edits registered; baseline: the
    unedited model's NS on the same records at each point (dashed)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=150)
    xs = [c["edits"] for c in curve]
    for metric in ("ES", "PS", "NS"):
        ax.plot(xs, [c[metric] for c in curve], marker="o", label=metric)
    if baseline:
        ax.plot(xs, baseline, linestyle="--", color="grey", label="NS unedited")
    ax.set_xlabel("edits registered")
    ax.set_ylabel("score (%) on the edits so far")
    ax.set_ylim(0, 102)
    ax.set_title(title, fontsize=9)
    ax.legend()
    _save(fig, path)
    return str(path)
