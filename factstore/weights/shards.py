"""C of several layers computed as shards by several workers: each shard job sums every N-th
batch of the single pass's plan for all its layers in one pass, and writes one file per layer;
the merge adds a layer's N sums in shard order, one layer at a time. The merged C sums the same
keys as the single pass (`stats compute --layers`) in another order: equal to float64 rounding,
the same for every merge of the same shards."""

from __future__ import annotations

import json
import re
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


_NAMES_TOTAL = f"{stats.NAMES}_total"  # a shard's sum of its names' k k^T (the first 0.2 builds summed names in context under another name: not merged)


def shard_name(spec: stats.StatsSpec, shard: int, of: int, sha256: str) -> str:
    return f"{spec.key()}.shard-{shard}-of-{of}.{sha256[:16]}.safetensors"


def shard_path(spec: stats.StatsSpec, shard: int, of: int) -> Path:
    """Where this machine keeps shard SHARD of OF of SPEC (a job's, or `stats compute --shard`'s)."""
    return stats.cache_folder() / f"{spec.key()}.shard-{shard}-of-{of}.safetensors"


def _meta(spec: stats.StatsSpec, shard: int, of: int) -> dict[str, str]:
    return {"spec": json.dumps(asdict(spec), sort_keys=True), "shard": str(shard), "of": str(of)}


def _holds(path: Path, spec: stats.StatsSpec, shard: int, of: int) -> bool:
    """PATH is shard SHARD of OF of exactly SPEC (not one of other settings under its name)."""
    if not path.is_file():
        return False
    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata() or {}
        tensors = sorted(fh.keys())
    return {k: meta.get(k) for k in ("spec", "shard", "of")} == _meta(spec, shard, of) and tensors == sorted(
        ["total", _NAMES_TOTAL]
    )


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
    paths = {s.layer: shard_path(s, shard, of) for s in specs}
    if not all(_holds(paths[s.layer], s, shard, of) for s in specs):
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
            meta = {**_meta(spec, shard, of), "tokens": str(state.tokens), stats.NAMES: str(state.names)}
            tensors = {"total": state.totals[spec.layer], _NAMES_TOTAL: state.name_totals[spec.layer]}
            stats.save(tensors, meta, paths[spec.layer])
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
    names_total: torch.Tensor | None = None
    tokens = names = 0
    for shard, path in enumerate(paths):
        if not _holds(path, spec, shard, of):
            raise StatisticsError(
                f"{path.name} (shard {shard} of {of} of layer {spec.layer}) was computed for other settings; "
                "delete it and compute that shard again"
            )
        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata() or {}
            part, named = fh.get_tensor("total"), fh.get_tensor(_NAMES_TOTAL)
        _check_sum(part, total, path.name)
        _check_sum(named, part, path.name)
        total = part if total is None else total + part
        names_total = named if names_total is None else names_total + named
        counts = (meta.get("tokens", ""), meta.get(stats.NAMES, ""))
        if not all(c.isdigit() and len(c) <= 12 for c in counts) or int(counts[1]) > int(counts[0]):
            raise StatisticsError(
                f"{path.name} does not say how many keys (and names among them) it sums; delete it and compute that shard again"
            )
        tokens, names = tokens + int(counts[0]), names + int(counts[1])
    if total is None or names_total is None or tokens != expected_tokens:
        raise StatisticsError(
            f"the {of} shards of layer {spec.layer} hold {tokens} keys, a single pass sums {expected_tokens}; compute them again"
        )
    return stats.write_final(spec, stats.LayerSums(total, tokens, names_total, names))


def merge_found(spec: stats.StatsSpec, expected_tokens: int, folders: list[Path] | None = None) -> stats.StatsFile:
    """C of SPEC from shard files found here (the cache) or in FOLDERS (`stats merge --from`):
    the smallest split whose N shards are all there, merged as `merge` does."""
    if (hit := stats.cached(spec)) is not None:
        return hit
    found: dict[int, dict[int, Path]] = {}
    for folder in [stats.cache_folder(), *(folders or [])]:
        for path in Path(folder).glob(f"{spec.key()}.shard-*-of-*.safetensors"):
            named = re.fullmatch(rf"{spec.key()}\.shard-(\d{{1,4}})-of-(\d{{1,4}})\.safetensors", path.name)
            if named and int(named.group(1)) < int(named.group(2)) and path.is_file():
                found.setdefault(int(named.group(2)), {}).setdefault(int(named.group(1)), path)
    complete = [of for of, shards in found.items() if sorted(shards) == list(range(of))]
    if not complete:
        have = ", ".join(f"{len(v)} of {of}" for of, v in sorted(found.items())) or "none"
        raise StatisticsError(
            f"not every shard of layer {spec.layer} is here (found {have}); run `factstore stats compute --shard I/N` for the rest"
        )
    of = min(complete)
    return merge(spec, [found[of][shard] for shard in range(of)], expected_tokens)


def _check_sum(part: torch.Tensor, before: torch.Tensor | None, name: str) -> None:
    if (
        part.dtype != torch.float64
        or part.dim() != 2
        or part.shape[0] != part.shape[1]
        or not bool(torch.isfinite(part).all())
        or (before is not None and part.shape != before.shape)
    ):
        raise StatisticsError(
            f"{name} does not hold a finite square float64 sum; delete it and compute that shard again"
        )
