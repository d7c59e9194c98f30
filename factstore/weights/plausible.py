"""Is a C from elsewhere the second moment of this model's keys? Checked before a pulled or
shipped C is recorded (issue 23): a matrix can be finite, symmetric and positive definite and
still be built to steer edits. ROME's update is dW = L (C^-1 k*)^T: a C shrunk along one key
direction makes every later edit write along it (an unrelated edit destroys that subject's
fact); a C inflated everywhere else does the same. Both show against a small local sample of
the layer's keys: the ratios u^T C_local u / u^T C u at the stationary points (the generalised
eigenvalues of the pair, over the whole space) stay within a small factor of their mean for a
genuine C read from the same kind of text; C^-1 grown along a direction the keys use raises
the largest, C inflated elsewhere lowers the mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from factstore import arch
from factstore.domain import Covariance
from factstore.errors import FactStoreError, StatisticsError
from factstore.progress import SILENT, Reporter
from factstore.rome.covariance import MomentState, accumulate_second_moment
from factstore.weights import assets
from factstore.weights.checkpoints import LoadedModel
from factstore.weights.corpus import DEFAULT_CORPUS, is_starter_corpus, load_corpus
from factstore.weights.stats import is_shipped, load_matrix, load_names

MAX_SPREAD = 30.0  # a genuine C: the largest ratio within this factor of their mean (docs/hparams.md: 7.5-17.5)
MAX_SCALE = 30.0  # ... and the mean within this factor of one (another corpus, another scale)
SAMPLE_KEYS_PER_DIM = 4  # local keys per input dimension of the layer: enough for its principal directions


def pencil_ratios(C: torch.Tensor, local: torch.Tensor) -> torch.Tensor | None:
    """(d,) ascending: the generalised eigenvalues of (LOCAL, C) over the whole space, i.e. of
    L^-1 LOCAL L^-T for C = L L^T: u^T LOCAL u / u^T C u at its stationary points. C^-1 grown
    along any direction the local keys use (what steers ROME's C^-1 k*) raises the largest.
    None when C is not numerically positive definite."""
    local64, C64 = local.double().cpu(), C.double().cpu()
    chol, info = torch.linalg.cholesky_ex(C64)
    if int(info) != 0:
        return None
    half = torch.linalg.solve_triangular(chol, local64, upper=False)  # L^-1 A
    pencil = torch.linalg.solve_triangular(chol, half.T, upper=False)  # L^-1 A L^-T (symmetric)
    return torch.linalg.eigvalsh((pencil + pencil.T) / 2)


def check_plausible(C: torch.Tensor, local: torch.Tensor, what: str) -> None:
    """Refuse (StatisticsError, one line) a C whose largest ratio against LOCAL sits too far above
    their mean, or whose mean sits too far from one."""
    ratios = pencil_ratios(C, local)
    ok = ratios is not None and bool(torch.isfinite(ratios).all()) and float(ratios.mean()) > 0
    mean = float(ratios.mean()) if ratios is not None and ok else float("nan")
    top = float(ratios[-1]) if ratios is not None and ok else float("nan")
    if not (ok and 1 / MAX_SCALE <= mean <= MAX_SCALE and top / mean <= MAX_SPREAD):
        raise StatisticsError(
            f"{what} do not match this model's keys on local text (largest ratio {top:.3g}, mean {mean:.3g}): "
            "built to steer edits, or read from other text than the store's own statistics "
            "(compute statistics of any layer on the same corpus first, so the check reads it); refused"
        )


def sample_corpus(own: Sequence[Covariance], named: str, named_sha256: str) -> str:
    """The text the local sample reads: the store's own statistics' corpus (the user's choice),
    the one of the foreign C's corpus first; else the C's corpus when it is a starter corpus;
    else the default."""
    mine = [
        r
        for r in own
        if not is_shipped(r.path) and (r.corpus.startswith(assets.PREFIX) or Path(r.corpus).expanduser().is_file())
    ]
    if mine:
        return min(mine, key=lambda r: r.corpus_sha256 != named_sha256).corpus  # the same text first
    return named if is_starter_corpus(named) else DEFAULT_CORPUS


def check_installed(
    path: Path,
    loaded: LoadedModel,
    layer: int,
    sample: str,
    what: str,
    fresh: bool,
    progress: Reporter = SILENT,
) -> None:
    """check_plausible of the C file at PATH (installed from elsewhere) against a sample of the
    LOADED model's keys at LAYER over the corpus SAMPLE (sample_corpus). A refused file that the
    install before this check brought (FRESH) leaves the cache; one already there stays."""
    try:
        texts = load_corpus(sample, progress).texts
        local = local_moments(loaded.model, loaded.tokenizer, texts, layer)
        check_plausible(load_matrix(path), local.moment(layer), what)
        check_names(load_names(path), local, layer, what)
    except FactStoreError:
        if fresh:
            path.unlink(missing_ok=True)
        raise


def local_moments(model: PreTrainedModel, tokenizer: Any, texts: Sequence[str], layer: int) -> MomentState:
    """The sums over the first SAMPLE_KEYS_PER_DIM x d_ff keys of TEXTS (and their names' keys, each name read alone)."""
    dim = arch.down_proj_weight(model, layer).shape[1]
    return accumulate_second_moment(model, tokenizer, texts, layer, SAMPLE_KEYS_PER_DIM * dim)


def local_moment(model: PreTrainedModel, tokenizer: Any, texts: Sequence[str], layer: int) -> torch.Tensor:
    """(d_ff, d_ff) float64: E[k k^T] over the first SAMPLE_KEYS_PER_DIM x d_ff keys of TEXTS."""
    return local_moments(model, tokenizer, texts, layer).moment(layer)


def check_names(names: torch.Tensor | None, local: MomentState, layer: int, what: str) -> None:
    """Refuse a names moment whose scale (trace) sits more than MAX_SCALE from the local sample's
    (a sample without names checks nothing: the scale against C was checked on install)."""
    if names is None or local.names == 0:
        return
    ratio = float(names.double().trace()) / max(float(local.name_totals[layer].trace()) / local.names, 1e-30)
    if not 1 / MAX_SCALE <= ratio <= MAX_SCALE:
        raise StatisticsError(
            f"{what} hold a names moment {ratio:.3g} times the scale of this model's keys of names in local text; refused"
        )
