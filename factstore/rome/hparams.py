"""ROME hyperparameters and per-architecture defaults."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

# band fields added after logs existed, and the value that means "off": left out of to_json when
# off (and every band field when band == 1), so older logs' fingerprints still match
_OFF_WHEN: dict[str, float] = {
    "band_boost": 1.0,
    "band_plain_weight": 0,
    "band_names_weight": 0.0,
    "band_top_weight": 1.0,
}


@dataclass(frozen=True)
class ROMEHyperParams:
    layer: int  # block whose MLP down-projection is rewritten
    lr: float = 0.5  # Adam learning rate for the value delta
    steps: int = 20  # maximum optimisation steps for v*
    early_stop_loss: float = 0.05  # stop optimising once the loss is below this
    # MPES (ENCORE): stop once the target has been top-1 on every rewrite prompt for this many
    # more steps; None: run to early_stop_loss. Smaller v* are what a long log can hold.
    top1_patience: int | None = None
    kl_factor: float = 0.0625  # weight of KL(P_delta || P_0) on the essence prompt
    weight_decay: float = 0.5  # weight of ||delta|| / ||v0||^2 (ROME's form: the norm, not its square)
    clamp_norm_factor: float = 4.0  # ||delta|| <= factor * ||v0||
    kl_prompt: str = "{} is a"  # essence prompt whose next-token distribution must not drift
    context_seed: int = 0  # seed of the sampled context prefixes (keys are reproducible)
    # (tokens per prefix, number of prefixes); ROME samples 10 of ~5 and 10 of ~10 tokens
    context_lengths: tuple[tuple[int, int], ...] = ((5, 10), (10, 10))
    # prefixes for the v* rewrite prompts; ROME uses 5 of ~10 tokens
    value_context_lengths: tuple[tuple[int, int], ...] = ((10, 5),)
    stats_tokens: int = 100_000  # tokens of ordinary text for the key second moment C
    stats_dtype: str = "float32"  # storage dtype of C (accumulated in float64)
    # a band of layers (MEMIT): the edit layer and the band - 1 below it each take a share of the
    # edit, measured on the head at registration and stored (weights/band.py); 1: one layer
    band: int = 1
    band_weight: float = 1e4  # tokens of preserved text against each key in a band layer's soft solve
    band_alpha: float = 0.0  # ENCORE's alpha I in that solve, as a share of C's mean variance
    # > 1: a new band edit's shares are scaled (by at most this) until its whole shift reaches
    # the edit layer on the head, which the soft solves would otherwise deliver only in part
    band_boost: float = 1.0
    # copies of the bare prompt added to the context-templated prompts whose mean is a band edit's
    # key at each layer: a prompt that starts the sequence (no BOS: SmolLM2) puts the subject on
    # the attention sink, where its keys differ most from the templated ones. 0: the plain mean
    band_plain_weight: int = 0
    # rho: a band layer's solve holds its update to C + rho N, N the second moment of the keys of
    # the corpus's names, each read alone as a subject is (rome/covariance.py), which C barely
    # weighs: other subjects' keys, which a long log otherwise moves (issue 25). 0: C alone
    band_names_weight: float = 0.0
    # the band weight at the edit layer (the band's top) as a multiple of band_weight: the top
    # takes what the layers below did not deliver of every shift, the largest update of the band
    # and the costliest to ordinary text (docs/results.md). 1: every layer alike
    band_top_weight: float = 1.0

    def __post_init__(self) -> None:  # hyperparameters arrive from pulled manifests too
        if not (isinstance(self.band, int) and 1 <= self.band <= 64):
            raise ValueError(f"band must be a whole number of layers from 1 to 64, not {self.band!r}")
        if not (0 < self.band_weight <= 1e12 and 0 <= self.band_alpha <= 1e6 and 1 <= self.band_boost <= 100):
            raise ValueError("band_weight must be in (0, 1e12], band_alpha in [0, 1e6] and band_boost in [1, 100]")
        if not 0 <= self.band_names_weight <= 1e6:
            raise ValueError(f"band_names_weight must be in [0, 1e6], not {self.band_names_weight!r}")
        if not 0.01 <= self.band_top_weight <= 1e4:
            raise ValueError(f"band_top_weight must be in [0.01, 1e4], not {self.band_top_weight!r}")
        if not (isinstance(self.band_plain_weight, int) and 0 <= self.band_plain_weight <= 1000):
            raise ValueError(f"band_plain_weight must be a whole number from 0 to 1000, not {self.band_plain_weight!r}")

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        if data["top1_patience"] is None:
            del data["top1_patience"]  # fields added later stay out when off: older fingerprints still match
        for name, off in _OFF_WHEN.items():
            if data[name] == off:
                del data[name]
        if data["band"] == 1:
            for name in ("band", "band_weight", "band_alpha", *_OFF_WHEN):
                data.pop(name, None)
        data["context_lengths"] = [list(x) for x in self.context_lengths]
        data["value_context_lengths"] = [list(x) for x in self.value_context_lengths]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ROMEHyperParams:
        data = dict(data)
        for name in ("context_lengths", "value_context_lengths"):
            if name in data:
                data[name] = tuple(tuple(x) for x in data[name])
        return cls(**data)

    def fingerprint(self) -> str:
        """sha256 of the canonical JSON: two edits with equal fingerprints used equal settings."""
        blob = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()

    def templates_fingerprint(self) -> str:
        """sha256 of what the context templates are sampled from (stored per base model under it)."""
        spec = json.dumps([self.context_seed, self.context_lengths, self.value_context_lengths])
        return hashlib.sha256(spec.encode()).hexdigest()

    def with_layer(self, layer: int) -> ROMEHyperParams:
        return replace(self, layer=layer)


@dataclass(frozen=True)
class _Default:
    model_type: str
    n_layer: int  # the known size this row is for
    d_model: int
    params: dict[str, Any] = field(default_factory=dict)
    measured: bool = True  # the layer was chosen by measurement (a traced layer must not override it)
    # (width, top layer) of the band a new log registers over when no --band is given; None: one
    # layer. A log keeps what it started with (a single-layer log cannot become a band log).
    band: tuple[int, int] | None = None


# SmolLM2-135M's band settings (docs/hparams.md), which Gemma 3 270M's row borrows
_SMOLLM2_BAND: dict[str, Any] = dict(top1_patience=2, band_weight=3e3, band_plain_weight=20, band_names_weight=0.3)

# ROME's published settings (GPT-2 medium/large/XL, GPT-J) and ours, chosen by measurement
# (SmolLM2-135M, Gemma 3 270M: see docs/hparams.md; the tiny test GPT-2: tests/tiny_models.py).
_DEFAULTS = (
    _Default("gpt2", 24, 1024, dict(layer=8, clamp_norm_factor=3.0)),  # gpt2-medium
    _Default("gpt2", 36, 1280, dict(layer=12)),  # gpt2-large
    _Default("gpt2", 48, 1600, dict(layer=17)),  # gpt2-xl
    _Default("gptj", 28, 4096, dict(layer=5)),  # gpt-j-6b
    # SmolLM2-135M (docs/hparams.md); band_weight: a band of 9 at 320 edits; band_plain_weight: ES
    # 89.0 -> 96.5 at 200 band edits; band_names_weight: NS -4.8 -> -1.6 and half the perplexity
    # rise at 1,000 band edits for 1.5 ES; band (9, 8): new logs register over layers 0-8, which
    # compile at 300 and 1,000 edits where one exact layer refuses or breaks (docs/results.md)
    _Default(
        "llama",
        30,
        576,
        dict(layer=4, stats_tokens=200_000, **_SMOLLM2_BAND),
        band=(9, 8),
    ),
    # Gemma 3 270M: the single layer by analogy (not traced); band (6, 5) with SmolLM2's band
    # settings: at 100 edits ES 93 / NS -6 / +4.3 % perplexity where one exact layer gives ES 79 /
    # NS -12 / +183 %; 9 layers ending at 8 and rho 1 do worse by 500 edits (docs/results.md)
    _Default(
        "gemma3_text",
        18,
        640,
        dict(layer=4, stats_tokens=200_000, **_SMOLLM2_BAND),
        measured=False,
        band=(6, 5),
    ),
)


def _row(model_type: str, n_layer: int, d_model: int) -> _Default | None:
    """The defaults row for this model size, if there is one."""
    return next((r for r in _DEFAULTS if (r.model_type, r.n_layer, r.d_model) == (model_type, n_layer, d_model)), None)


def has_measured_layer(model_type: str, n_layer: int, d_model: int) -> bool:
    """Whether the default layer for this model size was chosen by measurement (else the 20 % rule)."""
    row = _row(model_type, n_layer, d_model)
    return row is not None and row.measured and "layer" in row.params


def default_band(model_type: str, n_layer: int, d_model: int) -> tuple[int, int] | None:
    """(width, top layer) of the band a new log of this model size registers over by default,
    or None: single-layer edits at default_hparams' layer."""
    row = _row(model_type, n_layer, d_model)
    return row.band if row is not None else None


def default_hparams(model_type: str, n_layer: int, d_model: int) -> ROMEHyperParams:
    """The settings for a known model size, else ROME's defaults at a layer ~20 % deep.

    The 20 % rule is where causal tracing puts the MLP peak for GPT-2 XL (17 of 48) and
    GPT-J (5 of 28); a traced recommendation stored for a base model overrides it.
    """
    if (row := _row(model_type, n_layer, d_model)) is not None:
        return ROMEHyperParams(**row.params)
    return ROMEHyperParams(layer=max(0, min(n_layer - 1, round(0.2 * n_layer))))
