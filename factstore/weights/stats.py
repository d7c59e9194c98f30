"""Key second-moment statistics C on disk: content-addressed, cached, resumable."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
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
from factstore.errors import FactStoreError, StatisticsError
from factstore.files import atomic_write_with, file_sha256
from factstore.progress import SILENT, Advance, Reporter
from factstore.rome.covariance import MomentState, PlannedBatch, accumulate, plan, text_width
from factstore.weights.checkpoints import cached_file_sha256
from factstore.weights.corpus import Corpus

log = logging.getLogger(__name__)

CHECKPOINT_SECONDS = 20.0  # how much work an interruption may lose at most
SHIPPED_DIR = "stats"  # folder of C files in a Hub repository


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
    return Covariance(
        0,
        spec.layer,
        spec.module,
        corpus.name,
        corpus.sha256,
        result.tokens,
        spec.dtype,
        str(result.path),
        result.sha256,
    )


def cache_folder() -> Path:
    path = config.cache_dir() / "stats"
    path.mkdir(parents=True, exist_ok=True)
    return path


def save(tensors: dict[str, torch.Tensor], meta: dict[str, str], path: Path) -> None:
    atomic_write_with(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def _partial_state(path: Path, layers: list[int]) -> MomentState | None:
    """A checkpoint of the same work, or None (also for one written by an older factstore)."""
    if not path.exists():
        return None
    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata()
        wanted = sorted(f"{kind}.{layer}" for layer in layers for kind in ("total", NAMES))
        if "done" not in meta or NAMES not in meta or sorted(fh.keys()) != wanted:
            return None
        totals, names = ({layer: fh.get_tensor(f"{kind}.{layer}") for layer in layers} for kind in ("total", NAMES))
    return MomentState(
        totals=totals, tokens=int(meta["tokens"]), done=int(meta["done"]), name_totals=names, names=int(meta[NAMES])
    )


def _checkpoint(state: MomentState) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    tensors = {f"total.{layer}": total for layer, total in state.totals.items()}
    tensors |= {f"{NAMES}.{layer}": total for layer, total in state.name_totals.items()}
    return tensors, {"tokens": str(state.tokens), "done": str(state.done), NAMES: str(state.names)}


def stats_spec(identity: str, model: PreTrainedModel, layer: int, corpus: Corpus, tokens: int, dtype: str) -> StatsSpec:
    """What C is keyed by: exact model revision, layer and module, corpus hash, token budget, dtype."""
    return StatsSpec(identity, layer, arch.down_proj_name(model, layer), corpus.sha256, tokens, dtype)


def spec_like(own: Covariance, identity: str, model: PreTrainedModel, layer: int) -> StatsSpec:
    """The spec of LAYER's C with OWN's corpus, size and dtype: the C a band or spread compile
    reads on the layers below an edit whose own C is OWN (one file per spec, never "the newest")."""
    return StatsSpec(identity, layer, arch.down_proj_name(model, layer), own.corpus_sha256, own.tokens, own.dtype)


def _final_path(spec: StatsSpec) -> Path:
    return cache_folder() / f"{spec.key()}.safetensors"


def cached(spec: StatsSpec) -> StatsFile | None:
    path = _final_path(spec)
    if not path.exists():
        return None
    with safe_open(str(path), "pt") as fh:
        tokens = int(fh.metadata()["tokens"])
    return StatsFile(spec, path, cached_file_sha256(path), tokens)  # a lookup reads no gigabytes (issue 24)


def check_together(specs: list[StatsSpec]) -> None:
    first = specs[0]
    if any(
        (s.identity, s.corpus_sha256, s.tokens, s.dtype)
        != (first.identity, first.corpus_sha256, first.tokens, first.dtype)
        for s in specs
    ):
        raise StatisticsError("statistics computed in one pass must share the model, corpus, token count and dtype")
    if len({s.layer for s in specs}) != len(specs):
        raise StatisticsError(
            "statistics computed in one pass must be of different layers (a layer given twice would be summed twice)"
        )


def run_batches(
    model: PreTrainedModel,
    tokenizer: Any,
    specs: list[StatsSpec],
    corpus: Corpus,
    batches: list[PlannedBatch],
    partial: Path,
    advance: Advance,
) -> MomentState:
    """Sum the keys of BATCHES for every spec's layer, checkpointing to PARTIAL (resumed from it);
    ADVANCE: the caller's progress task, of sum(b.keys for b in BATCHES) keys."""
    layers = [s.layer for s in specs]
    state = _partial_state(partial, layers)
    last_save = time.monotonic()

    def after_batch(st: MomentState) -> None:
        nonlocal last_save
        advance(st.tokens)
        if time.monotonic() - last_save >= CHECKPOINT_SECONDS:
            save(*_checkpoint(st), partial)
            last_save = time.monotonic()

    if state:
        advance(state.tokens)
    return accumulate(model, tokenizer, corpus.texts, layers, batches, state=state, on_batch=after_batch)


def work_key(specs: list[StatsSpec]) -> str:
    return hashlib.sha256("|".join(sorted(s.key() for s in specs)).encode()).hexdigest()


@dataclass(frozen=True)
class LayerSums:
    """One layer's float64 sums of k k^T over a corpus's keys, and over its names' keys (each alone)."""

    total: torch.Tensor  # (d_ff, d_ff)
    tokens: int
    names_total: torch.Tensor  # (d_ff, d_ff)
    names: int

    @classmethod
    def of(cls, state: MomentState, layer: int) -> LayerSums:
        return cls(state.totals[layer], state.tokens, state.name_totals[layer], state.names)


def write_final(spec: StatsSpec, sums: LayerSums) -> StatsFile:
    """The C file of SPEC: "C" = E[k k^T] over every key, NAMES = E[k k^T] over the keys of the
    corpus's names, each read alone (what a band solve's band_names_weight weighs more; weights/band.py)."""
    dtype = getattr(torch, spec.dtype)
    tensors = {
        "C": (sums.total / max(sums.tokens, 1)).to(dtype).contiguous(),
        NAMES: (sums.names_total / max(sums.names, 1)).to(dtype).contiguous(),
    }
    # keys summed (the budget when the corpus sufficed), and how many names they hold
    meta = {**{k: str(v) for k, v in spec.__dict__.items()}, "tokens": str(sums.tokens), NAMES: str(sums.names)}
    final = _final_path(spec)
    save(tensors, meta, final)
    return StatsFile(spec, final, file_sha256(final), sums.tokens)


def compute_many(
    model: PreTrainedModel, tokenizer: Any, specs: list[StatsSpec], corpus: Corpus, progress: Reporter = SILENT
) -> list[StatsFile]:
    """C for several layers of one model, corpus and size: cached ones read, the rest from one
    pass over the corpus whose forward passes stop at the highest layer needed (checkpointed)."""
    check_together(specs)
    todo = [s for s in specs if cached(s) is None]
    if todo:
        batches = plan(tokenizer, corpus.texts, todo[0].tokens, text_width(model))
        partial = cache_folder() / f"{work_key(todo)}.partial"
        layers = ", ".join(str(s.layer) for s in todo)
        with progress.task(f"key statistics, layer {layers}", sum(b.keys for b in batches)) as advance:
            state = run_batches(model, tokenizer, todo, corpus, batches, partial, advance)
        for spec in todo:
            write_final(spec, LayerSums.of(state, spec.layer))
        partial.unlink(missing_ok=True)
    return [hit for s in specs if (hit := cached(s)) is not None]


def compute(
    model: PreTrainedModel, tokenizer: Any, spec: StatsSpec, corpus: Corpus, progress: Reporter = SILENT
) -> StatsFile:
    """C for spec, from the cache if present; else streamed with a progress bar and checkpoints."""
    return compute_many(model, tokenizer, [spec], corpus, progress)[0]


# shards: several machines compute one C ---------------------------------------------------------


def parse_shard(text: str) -> tuple[int, int]:
    """ "I/N" -> (I, N) with 0 <= I < N <= 4096."""
    try:
        shard, of = (int(x) for x in text.split("/"))
    except ValueError:
        raise StatisticsError(f"--shard takes I/N, such as 0/4 (shards 0 to N-1), not {text[:20]!r}") from None
    if not (0 <= shard < of <= 4096):
        raise StatisticsError(f"--shard {shard}/{of}: the shard must be 0 to {of - 1} and N at most 4096")
    return shard, of


def shipped_name(sha256: str) -> str:
    """Where a C file lives in a Hub repository: content-addressed, so each is stored once."""
    return f"{SHIPPED_DIR}/{sha256}.safetensors"


# The names moment's tensor in a C file: the corpus's names, each read alone at the start of a
# sequence (rome/covariance.py). Files of the first 0.2 builds hold LEGACY_NAMES, the keys at
# name ends read in their sentences: accepted and not read (no solve weighs it; issue 25).
NAMES = "names_alone"
LEGACY_NAMES = "names"
# names' keys are keys of the same model: their moment's trace is C's within a small factor
# (1.0-11.4 over SmolLM2's layers 0-8 on wiki-vital); a far larger one is built to swamp C
MAX_NAMES_SCALE = 100.0
HEADER_BYTES = 64 << 10  # a C file's safetensors header and metadata (the spec) are well under this


def max_file_bytes(dim: int, dtype: str) -> int:
    """The most bytes a C file of two (DIM, DIM) matrices of DTYPE (C and its names' moment) can
    hold: a larger file is not one."""
    return 2 * dim * dim * torch.empty((), dtype=getattr(torch, dtype)).element_size() + 8 + HEADER_BYTES


SHIPPED = "shipped"  # the cache folder of C files that came from elsewhere (a release, a statistics repository)


def is_shipped(path: str | Path) -> bool:
    """The C file came from a release or a statistics repository, not from a pass on this machine."""
    return Path(path).parent.name == SHIPPED


def shipped_path(sha256: str) -> Path:
    """Where a C file from elsewhere lives in the cache (content-addressed)."""
    return cache_folder() / SHIPPED / f"{sha256}.safetensors"


SHARE_MAX_BYTES = 8 << 30  # a merged C fetched from the statistics share: larger is not one (checked by sha256 after)


def local_file(cov: Covariance) -> Path | None:
    """Where this machine holds the C file of a record, which another host may have written: the
    recorded path, the cache's file of its spec key or the shipped copy of its sha256 (either
    with the recorded sha256), else a copy fetched from the statistics share and checked against
    the recorded sha256 (FACTSTORE_STATS_SHARE); None when there is none."""
    from factstore.weights import share

    own = cache_folder() / f"{cov.key}.safetensors" if cov.key else None
    for path in [p for p in (Path(cov.path), own, shipped_path(cov.sha256)) if p is not None]:
        if path.is_file() and cached_file_sha256(path) == cov.sha256:
            return path
    found = share.configured()
    if own is None or found is None:
        return None
    try:
        return own if share.fetch_checked(found, own.name, own, cov.sha256, SHARE_MAX_BYTES) else None
    except FactStoreError as exc:  # the share is unreachable: computed here instead, as without one
        log.warning("key statistics of layer %d not fetched from %s: %s", cov.layer, found.where, exc)
        return None


def checked_local_file(cov: Covariance) -> Path:
    """local_file, checked against the recorded sha256 (files about to leave this machine)."""
    path = local_file(cov)
    if path is None or file_sha256(path) != cov.sha256:
        raise StatisticsError(
            f"the key statistics file {cov.path} is missing or changed; recompute it with `factstore stats compute --layer {cov.layer}`"
        )
    return path


def install_shipped(source: Path, expected_sha256: str, spec: StatsSpec, dim: int) -> StatsFile:
    """A C file from a release or a statistics repository (untrusted), copied into the cache's
    shipped/ folder under its sha256 (never under a spec key: a refused import leaves nothing a
    later computation could mistake for its own), and checked there: the sha256 recorded for it,
    SPEC in its metadata, one finite, symmetric, positive definite (DIM, DIM) matrix of SPEC's dtype."""
    final = shipped_path(expected_sha256)
    final.parent.mkdir(exist_ok=True)

    def checked_copy(tmp: Path) -> None:
        shutil.copyfile(source, tmp)
        _check_shipped(tmp, expected_sha256, spec, dim)  # the bytes that stay are the bytes checked

    if not final.exists() or file_sha256(final) != expected_sha256:
        atomic_write_with(final, checked_copy)
    with safe_open(str(final), "pt") as fh:
        tokens = int(fh.metadata()["tokens"])
    return StatsFile(spec, final, expected_sha256, tokens)


def _check_shipped(path: Path, expected_sha256: str, spec: StatsSpec, dim: int) -> None:
    what = f"the shipped key statistics of layer {spec.layer}"
    if file_sha256(path) != expected_sha256:
        raise StatisticsError(f"{what} do not match the sha256 recorded for them; refused")
    with path.open("rb") as fh:
        header = int.from_bytes(fh.read(8), "little")  # safetensors: the JSON header's length first
    if header > HEADER_BYTES:
        raise StatisticsError(f"{what} have a header of {header} bytes, more than a C file's {HEADER_BYTES}; refused")
    try:
        with safe_open(str(path), "pt") as fh:
            meta, names = fh.metadata() or {}, sorted(fh.keys())
            fits = names in (["C"], ["C", LEGACY_NAMES], ["C", NAMES]) and all(
                fh.get_slice(n).get_shape() == [dim, dim] for n in names
            )
            # sizes checked before anything is loaded; a legacy names tensor is never read, so not loaded
            found = {n: fh.get_tensor(n) for n in names if n != LEGACY_NAMES} if fits else {}
    except Exception as exc:  # a file that is not safetensors at all
        raise StatisticsError(f"{what} cannot be read ({type(exc).__name__}); refused") from None
    wrong = [k for k, v in spec.__dict__.items() if meta.get(k) != str(v)]
    if wrong:
        raise StatisticsError(f"{what} were computed for other settings ({', '.join(wrong)}); refused")
    C, named = found.get("C"), found.get(NAMES)
    if C is None or not _moment(C, spec.dtype) or int(torch.linalg.cholesky_ex(C.double()).info) != 0:
        raise StatisticsError(
            f"{what} are not a finite, symmetric, positive definite {dim}x{dim} {spec.dtype} matrix; refused"
        )
    if named is not None and not (
        _moment(named, spec.dtype)
        and _semidefinite(named)
        and float(named.double().trace()) <= MAX_NAMES_SCALE * float(C.double().trace())
    ):
        raise StatisticsError(
            f"{what} hold a names moment that is not a finite, symmetric, positive semidefinite {spec.dtype} matrix "
            f"of at most {MAX_NAMES_SCALE:g} times C's trace; refused"
        )


def _moment(M: torch.Tensor, dtype: str) -> bool:
    return (
        str(M.dtype).removeprefix("torch.") == dtype
        and bool(torch.isfinite(M).all())
        and torch.allclose(M, M.T, rtol=1e-5, atol=0)
    )


def _semidefinite(M: torch.Tensor) -> bool:
    """M (a moment of keys) is positive semidefinite up to rounding: zero (a corpus without names),
    or M + 1e-6 mean(diag M) I has a Cholesky factor (one factorisation, not an eigensolve)."""
    M64 = M.double()
    scale = float(M64.diagonal().mean())
    if not bool(M64.any()):
        return True
    eye = torch.eye(M64.shape[0], dtype=M64.dtype)
    return scale > 0 and int(torch.linalg.cholesky_ex(M64 + 1e-6 * scale * eye).info) == 0


def _verified(path: Path, expected_sha256: str | None) -> str:
    """PATH as a string, its bytes checked against EXPECTED_SHA256 when one is given."""
    if expected_sha256 and file_sha256(path) != expected_sha256:
        raise StatisticsError(
            f"{path} does not match its recorded sha256; delete it and rerun `factstore stats compute`"
        )
    return str(path)


def load_matrix(path: Path, expected_sha256: str | None = None) -> torch.Tensor:
    return load_file(_verified(path, expected_sha256))["C"]


def load_names(path: Path, expected_sha256: str | None = None) -> torch.Tensor | None:
    """The file's names moment (None: a file of a factstore before it had one), checked against
    EXPECTED_SHA256 as load_matrix checks C (so both come from the same bytes)."""
    with safe_open(_verified(path, expected_sha256), "pt") as fh:
        return fh.get_tensor(NAMES) if NAMES in list(fh.keys()) else None


def has_names(cov: Covariance) -> bool:
    """The C file of COV (on this machine) holds a names moment (read from its header only)."""
    path = local_file(cov)
    if path is None:
        return False
    with safe_open(str(path), "pt") as fh:
        return NAMES in list(fh.keys())


def names_missing(path: Path) -> StatisticsError:
    """The one-line refusal of a band_names_weight on a C file without a names moment."""
    return StatisticsError(
        f"the key statistics {path.name} were computed before factstore kept their names moment, which "
        "band_names_weight needs; register this band log with band_names_weight=0, or on a store whose statistics are new"
    )


class MatrixCache:
    """C matrices by covariance id, read once from disk and checked against their sha256.

    lookup: covariance id -> its record (the store's get_covariance)."""

    def __init__(self, lookup: Callable[[int], Covariance]) -> None:
        self.lookup = lookup
        self._loaded: dict[int, torch.Tensor] = {}
        self._names: dict[int, torch.Tensor] = {}
        self._paths: dict[int, Path] = {}

    def __call__(self, cov_id: int | None) -> torch.Tensor:
        cov_id = _recorded(cov_id)
        if cov_id not in self._loaded:
            cov = self.lookup(cov_id)
            path = local_file(cov)
            if path is None:
                raise StatisticsError(
                    f"the key statistics file {cov.path} is missing; recompute it with `factstore stats compute --layer {cov.layer}`"
                )
            self._loaded[cov_id] = load_matrix(path, cov.sha256).float()
            self._paths[cov_id] = path
        return self._loaded[cov_id]

    def names(self, cov_id: int | None) -> torch.Tensor:
        """The names moment of the C file of COV_ID (read after its sha256 was checked by __call__)."""
        self(cov_id)
        cov_id = _recorded(cov_id)
        if cov_id not in self._names:
            path = self._paths[cov_id]
            found = load_names(path, self.lookup(cov_id).sha256)  # the bytes C was read from
            if found is None:
                raise names_missing(path)
            self._names[cov_id] = found.float()
        return self._names[cov_id]


def _recorded(cov_id: int | None) -> int:
    if cov_id is None:
        raise StatisticsError("an edit has no key statistics recorded; it cannot be replayed")
    return cov_id
