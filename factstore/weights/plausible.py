"""Is a C from elsewhere the second moment of this model's keys? Checked before a pulled or
shipped C is recorded (issue 23): a matrix can be finite, symmetric and positive definite and
still be built to steer edits. ROME's update is dW = L (C^-1 k*)^T: a C shrunk along one key
direction makes every later edit write along it (an unrelated edit destroys that subject's
fact); a C inflated everywhere else does the same. Both show against a small local sample of
the layer's keys: on the sample's principal directions, u^T C_local u / u^T C u is near one
for a genuine C (read from the same kind of text) and far from it for a crafted one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from factstore import arch
from factstore.domain import Covariance
from factstore.errors import StatisticsError
from factstore.rome.covariance import accumulate_second_moment
from factstore.weights import assets
from factstore.weights.corpus import DEFAULT_CORPUS, Corpus
from factstore.weights.stats import is_shipped

PRINCIPAL = 1e-3  # the local sample's directions down to this share of its largest eigenvalue are compared
MAX_SPREAD = 30.0  # a genuine C: every ratio within this factor of their median (docs/hparams.md: 7.6 measured)
MAX_SCALE = 30.0  # ... and the median within this factor of one (another corpus, another scale)
SAMPLE_KEYS_PER_DIM = 4  # local keys per input dimension of the layer: enough for its principal directions


def pencil_ratios(C: torch.Tensor, local: torch.Tensor, principal: float = PRINCIPAL) -> torch.Tensor:
    """(r,) the generalised eigenvalues of (LOCAL, C) restricted to LOCAL's principal subspace
    (eigenvalues >= PRINCIPAL x its largest): the stationary values of u^T LOCAL u / u^T C u there."""
    local64, C64 = local.double().cpu(), C.double().cpu()
    vals, vecs = torch.linalg.eigh(local64)
    U = vecs[:, vals >= principal * vals[-1]]  # (d, r)
    chol = torch.linalg.cholesky(U.T @ C64 @ U)  # (r, r); C is positive definite, so is its restriction
    half = torch.linalg.solve_triangular(chol, U.T @ local64 @ U, upper=False)  # L^-1 A
    pencil = torch.linalg.solve_triangular(chol, half.T, upper=False)  # L^-1 A L^-T (symmetric)
    return torch.linalg.eigvalsh((pencil + pencil.T) / 2)


def check_plausible(C: torch.Tensor, local: torch.Tensor, what: str) -> None:
    """Refuse (StatisticsError, one line) a C whose ratios against LOCAL spread or sit too far."""
    ratios = pencil_ratios(C, local)
    median = float(ratios.median())
    spread = max(float(ratios[-1]) / median, median / float(ratios[0]))
    if not (1 / MAX_SCALE <= median <= MAX_SCALE and spread <= MAX_SPREAD):
        raise StatisticsError(
            f"{what} do not match this model's keys on local text (ratios {float(ratios[0]):.3g}-{float(ratios[-1]):.3g}, "
            f"median {median:.3g}): built to steer edits, or read from other text than the store's own statistics "
            "(compute statistics of any layer on the same corpus first, so the check reads it); refused"
        )


def sample_corpus(own: Sequence[Covariance], named: str) -> str:
    """The text the local sample reads: the corpus of the store's own statistics of the model (the
    user's choice), else the corpus the foreign C names when it is a starter, else the default."""
    for record in own:
        if not is_shipped(record.path) and (
            record.corpus.startswith(assets.PREFIX) or Path(record.corpus).expanduser().is_file()
        ):
            return record.corpus
    return named if named.startswith(assets.PREFIX) else DEFAULT_CORPUS


def check_foreign(
    C: torch.Tensor, model: PreTrainedModel, tokenizer: Any, layer: int, corpus: Corpus, what: str
) -> None:
    """check_plausible against a sample of MODEL's keys at LAYER over CORPUS."""
    check_plausible(C, local_moment(model, tokenizer, corpus.texts, layer), what)


def local_moment(model: PreTrainedModel, tokenizer: Any, texts: Sequence[str], layer: int) -> torch.Tensor:
    """(d_ff, d_ff) float64: E[k k^T] over the first SAMPLE_KEYS_PER_DIM x d_ff keys of TEXTS."""
    dim = arch.down_proj_weight(model, layer).shape[1]
    state = accumulate_second_moment(model, tokenizer, texts, layer, SAMPLE_KEYS_PER_DIM * dim)
    return state.moment(layer)
