"""Key second-moment statistics C on disk: content-addressed, cached, resumable."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel

from factstore import arch, config
from factstore.domain import Covariance
from factstore.errors import StatisticsError
from factstore.files import atomic_write_with, file_sha256
from factstore.progress import SILENT, Reporter
from factstore.rome.covariance import MomentState, accumulate_second_moment
from factstore.weights.corpus import Corpus

CHECKPOINT_SECONDS = 20.0  # how much work an interruption may lose at most


@dataclass(frozen=True)
class StatsSpec:
    identity: str  # exact model revision
    layer: int
    module: str
    corpus_sha256: str
    tokens: int
    dtype: str

    def key(self) -> str:
        blob = json.dumps(self.__dict__, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()


@dataclass(frozen=True)
class StatsFile:
    spec: StatsSpec
    path: Path
    sha256: str
    tokens: int  # keys actually summed (less than spec.tokens if the corpus ran out)


def covariance_record(result: StatsFile, corpus: Corpus) -> Covariance:
    """The store's description of a statistics file (its id is assigned when recorded)."""
    spec = result.spec
    return Covariance(0, spec.layer, spec.module, corpus.name, corpus.sha256, result.tokens, spec.dtype, str(result.path), result.sha256)


def _dir() -> Path:
    path = config.cache_dir() / "stats"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _save(tensors: dict[str, torch.Tensor], meta: dict[str, str], path: Path) -> None:
    atomic_write_with(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def _load_partial(path: Path) -> MomentState | None:
    if not path.exists():
        return None
    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata()
        total = fh.get_tensor("total")
    return MomentState(total=total, tokens=int(meta["tokens"]), next_text=int(meta["next_text"]))


def spec_for(identity: str, model: PreTrainedModel, layer: int, corpus: Corpus, tokens: int, dtype: str) -> StatsSpec:
    """What C is keyed by: exact model revision, layer and module, corpus hash, token budget, dtype."""
    return StatsSpec(identity, layer, arch.down_proj_name(model, layer), corpus.sha256, tokens, dtype)


def cached(spec: StatsSpec) -> StatsFile | None:
    path = _dir() / f"{spec.key()}.safetensors"
    if not path.exists():
        return None
    with safe_open(str(path), "pt") as fh:
        tokens = int(fh.metadata()["tokens"])
    return StatsFile(spec, path, file_sha256(path), tokens)


def compute(model: PreTrainedModel, tokenizer: Any, spec: StatsSpec, corpus: Corpus, progress: Reporter = SILENT) -> StatsFile:
    """C for spec, from the cache if present; else streamed with a progress bar and checkpoints."""
    if (hit := cached(spec)) is not None:
        return hit
    final = _dir() / f"{spec.key()}.safetensors"
    partial = final.with_suffix(".partial")
    state = _load_partial(partial)
    last_save = time.monotonic()

    def checkpoint(s: MomentState) -> None:
        nonlocal last_save
        if time.monotonic() - last_save >= CHECKPOINT_SECONDS:
            _save({"total": s.total}, {"tokens": str(s.tokens), "next_text": str(s.next_text)}, partial)
            last_save = time.monotonic()

    with progress.task(f"key statistics, layer {spec.layer}", spec.tokens) as advance:
        if state:
            advance(state.tokens)
        state = accumulate_second_moment(
            model, tokenizer, corpus.texts, spec.layer, spec.tokens, state=state, on_progress=advance, on_checkpoint=checkpoint
        )
    moment = state.moment().to(getattr(torch, spec.dtype)).contiguous()
    meta = {"tokens": str(state.tokens), **{k: str(v) for k, v in spec.__dict__.items()}}
    _save({"C": moment}, meta, final)
    partial.unlink(missing_ok=True)
    return StatsFile(spec, final, file_sha256(final), state.tokens)


def load_matrix(path: Path, expected_sha256: str | None = None) -> torch.Tensor:
    if expected_sha256 and file_sha256(path) != expected_sha256:
        raise StatisticsError(f"{path} does not match its recorded sha256; delete it and rerun `factstore stats compute`")
    return load_file(str(path))["C"]


class MatrixCache:
    """C matrices by covariance id, read once from disk and checked against their sha256.

    lookup: covariance id -> its record (the store's get_covariance)."""

    def __init__(self, lookup: Callable[[int], Covariance]) -> None:
        self.lookup = lookup
        self._loaded: dict[int, torch.Tensor] = {}

    def __call__(self, cov_id: int | None) -> torch.Tensor:
        if cov_id is None:
            raise StatisticsError("an edit has no key statistics recorded; it cannot be replayed")
        if cov_id not in self._loaded:
            cov = self.lookup(cov_id)
            if not Path(cov.path).exists():
                raise StatisticsError(f"the key statistics file {cov.path} is missing; recompute it with `factstore stats compute --layer {cov.layer}`")
            self._loaded[cov_id] = load_matrix(Path(cov.path), cov.sha256).float()
        return self._loaded[cov_id]
