"""C of several layers computed as shards by several workers: each shard job sums every N-th
batch of the single pass's plan for all its layers at once; the merge adds the N sums in shard
order. The merged C sums the same keys as the single pass (`stats compute --layers`) in another
order: equal to float64 rounding, the same for every merge of the same shards."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from transformers import PreTrainedModel

from factstore.errors import StatisticsError
from factstore.files import file_sha256
from factstore.progress import SILENT, Reporter
from factstore.rome.covariance import plan, text_width
from factstore.weights import stats
from factstore.weights.corpus import Corpus


@dataclass(frozen=True)
class ShardFile:
    path: Path
    name: str  # its name in a share: the work's key, the split and its own sha256
    sha256: str
    tokens: int


def shard_name(specs: list[stats.StatsSpec], shard: int, of: int, sha256: str) -> str:
    return f"{stats.work_key(specs)}.shard-{shard}-of-{of}.{sha256[:16]}.safetensors"


def _meta(specs: list[stats.StatsSpec], shard: int, of: int) -> dict[str, str]:
    return {"specs": json.dumps([asdict(s) for s in specs], sort_keys=True), "shard": str(shard), "of": str(of)}


def compute(
    model: PreTrainedModel,
    tokenizer: Any,
    specs: list[stats.StatsSpec],
    corpus: Corpus,
    split: tuple[int, int],
    progress: Reporter = SILENT,
) -> ShardFile:
    """The float64 partial sums, one per spec's layer, of shard SPLIT=(I, N) of the corpus: every
    N-th batch of the single pass's plan from the I-th; one pass for all layers, checkpointed."""
    stats.check_together(specs)
    shard, of = split
    key = stats.work_key(specs)
    path = stats.cache_folder() / f"{key}.shard-{shard}-of-{of}.safetensors"
    if not path.exists():
        batches = plan(tokenizer, corpus.texts, specs[0].tokens, text_width(model))[shard::of]
        partial = path.with_suffix(".partial")
        layers = ", ".join(str(s.layer) for s in specs)
        with progress.task(
            f"key statistics, layers {layers}, shard {shard}/{of}", sum(b.keys for b in batches)
        ) as advance:
            state = stats.run_batches(model, tokenizer, specs, corpus, batches, partial, advance)
        tensors = {f"total.{s.layer}": state.totals[s.layer] for s in specs}
        stats.save(tensors, {**_meta(specs, shard, of), "tokens": str(state.tokens)}, path)
        partial.unlink(missing_ok=True)
    sha256 = file_sha256(path)
    with safe_open(str(path), "pt") as fh:
        tokens = int(fh.metadata()["tokens"])
    return ShardFile(path, shard_name(specs, shard, of, sha256), sha256, tokens)


def merge(specs: list[stats.StatsSpec], paths: list[Path], expected_tokens: int) -> list[stats.StatsFile]:
    """C of every spec from the N shard files PATHS (in shard order) of one split: each must be
    the shard of its place for exactly these specs, and hold a finite square float64 sum per
    layer; together they must sum EXPECTED_TOKENS keys (what the single pass sums)."""
    stats.check_together(specs)
    of = len(paths)
    totals: dict[int, torch.Tensor] = {}
    tokens = 0
    for shard, path in enumerate(paths):
        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata() or {}
            if {k: meta.get(k) for k in ("specs", "shard", "of")} != _meta(specs, shard, of):
                raise StatisticsError(f"shard {shard} of {of} was computed for other settings; compute it again")
            if sorted(fh.keys()) != sorted(f"total.{s.layer}" for s in specs):
                raise StatisticsError(f"shard {shard} of {of} does not hold the sums of these layers; compute it again")
            parts = {s.layer: fh.get_tensor(f"total.{s.layer}") for s in specs}
        for layer, part in parts.items():
            _check_sum(part, totals.get(layer), shard, of)
            totals[layer] = part if layer not in totals else totals[layer] + part
        tokens += int(meta["tokens"])
    if tokens != expected_tokens:
        raise StatisticsError(
            f"the {of} shards hold {tokens} keys, a single pass sums {expected_tokens}; compute them again"
        )
    return [stats.write_final(s, totals[s.layer], tokens) for s in specs]


def _check_sum(part: torch.Tensor, before: torch.Tensor | None, shard: int, of: int) -> None:
    if (
        part.dtype != torch.float64
        or part.dim() != 2
        or part.shape[0] != part.shape[1]
        or not bool(torch.isfinite(part).all())
        or (before is not None and part.shape != before.shape)
    ):
        raise StatisticsError(f"shard {shard} of {of} does not hold finite square float64 sums; compute it again")
