"""C of several layers computed as shards by several workers: each shard job sums every N-th
batch of the single pass's plan for all its layers in one pass, and writes one file per layer;
the merge adds a layer's N sums in shard order, one layer at a time. The merged C sums the same
keys as the single pass (`stats compute --layers`) in another order: equal to float64 rounding,
the same for every merge of the same shards."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from transformers import PreTrainedModel

from factstore.errors import StatisticsError
from factstore.files import file_sha256
from factstore.progress import SILENT, Reporter
from factstore.rome.covariance import MomentState, plan, text_width
from factstore.weights import stats
from factstore.weights.corpus import Corpus


@dataclass(frozen=True)
class ShardFile:
    layer: int
    path: Path
    name: str  # its name in a share: the layer's spec key, the split and its own sha256
    sha256: str
    tokens: int

    def to_json(self) -> dict:
        return {"layer": self.layer, "name": self.name, "sha256": self.sha256, "tokens": self.tokens}


def shard_name(spec: stats.StatsSpec, shard: int, of: int, sha256: str) -> str:
    return f"{spec.key()}.shard-{shard}-of-{of}.{sha256[:16]}.safetensors"


def _meta(spec: stats.StatsSpec, shard: int, of: int) -> dict[str, str]:
    return {"spec": json.dumps(asdict(spec), sort_keys=True), "shard": str(shard), "of": str(of)}


def compute(
    model: PreTrainedModel,
    tokenizer: Any,
    specs: list[stats.StatsSpec],
    corpus: Corpus,
    split: tuple[int, int],
    progress: Reporter = SILENT,
    stop: Callable[[], None] | None = None,
) -> list[ShardFile]:
    """The float64 partial sums of shard SPLIT=(I, N) of the corpus (every N-th batch of the
    single pass's plan from the I-th), one file per spec's layer, from one checkpointed pass.
    STOP is called after every batch (it raises to end the work)."""
    stats.check_together(specs)
    shard, of = split
    paths = {s.layer: stats.cache_folder() / f"{s.key()}.shard-{shard}-of-{of}.safetensors" for s in specs}
    if not all(p.exists() for p in paths.values()):
        batches = plan(tokenizer, corpus.texts, specs[0].tokens, text_width(model))[shard::of]
        partial = stats.cache_folder() / f"{stats.work_key(specs)}.shard-{shard}-of-{of}.partial"
        layers = ", ".join(str(s.layer) for s in specs)
        with progress.task(
            f"key statistics, layers {layers}, shard {shard}/{of}", sum(b.keys for b in batches)
        ) as advance:

            def step(done: int) -> None:
                advance(done)
                if stop is not None:
                    stop()

            state: MomentState = stats.run_batches(model, tokenizer, specs, corpus, batches, partial, step)
        for spec in specs:
            meta = {**_meta(spec, shard, of), "tokens": str(state.tokens)}
            stats.save({"total": state.totals[spec.layer]}, meta, paths[spec.layer])
        partial.unlink(missing_ok=True)
    found = []
    for spec in specs:
        path = paths[spec.layer]
        sha256 = file_sha256(path)
        with safe_open(str(path), "pt") as fh:
            tokens = int(fh.metadata()["tokens"])
        found.append(ShardFile(spec.layer, path, shard_name(spec, shard, of, sha256), sha256, tokens))
    return found


def merge(spec: stats.StatsSpec, paths: list[Path], expected_tokens: int) -> stats.StatsFile:
    """C of SPEC from the N shard files PATHS (in shard order) of one split: each must be the
    shard of its place for exactly this spec and hold a finite square float64 sum; together they
    must sum EXPECTED_TOKENS keys (what the single pass sums). Reads one file at a time."""
    of = len(paths)
    total: torch.Tensor | None = None
    tokens = 0
    for shard, path in enumerate(paths):
        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata() or {}
            if {k: meta.get(k) for k in ("spec", "shard", "of")} != _meta(spec, shard, of) or list(fh.keys()) != [
                "total"
            ]:
                raise StatisticsError(
                    f"shard {shard} of {of} of layer {spec.layer} was computed for other settings; compute it again"
                )
            part = fh.get_tensor("total")
        _check_sum(part, total, shard, of)
        total = part if total is None else total + part
        tokens += int(meta["tokens"])
    if total is None or tokens != expected_tokens:
        raise StatisticsError(
            f"the {of} shards of layer {spec.layer} hold {tokens} keys, a single pass sums {expected_tokens}; compute them again"
        )
    return stats.write_final(spec, total, tokens)


def _check_sum(part: torch.Tensor, before: torch.Tensor | None, shard: int, of: int) -> None:
    if (
        part.dtype != torch.float64
        or part.dim() != 2
        or part.shape[0] != part.shape[1]
        or not bool(torch.isfinite(part).all())
        or (before is not None and part.shape != before.shape)
    ):
        raise StatisticsError(f"shard {shard} of {of} does not hold a finite square float64 sum; compute it again")
