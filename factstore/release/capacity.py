"""How full each edited layer is: active edits per key dimension, against the load that the
1,000-edit run measured as safe, and the health of the model's last release."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

from factstore import arch
from factstore.domain import BaseModel, StoredEdit
from factstore.errors import FactStoreError
from factstore.release import manifest
from factstore.rome.hparams import default_band
from factstore.storage.store import Store
from factstore.weights import checkpoints

log = logging.getLogger(__name__)

# docs/results.md, SmolLM2-135M, one layer 1,536 keys wide: held-out perplexity had risen 10 %
# at 100 exact edits (the joint curve), a load of 100 / 1,536 edits per key dimension.
SAFE_LOAD = 100 / 1536


def band_remedy(band: tuple[int, int] | None) -> str:
    """The warning's advice to a single-layer log (which cannot become a band log): what
    docs/results.md measured to hold past a few hundred edits, with the model's default BAND
    (width, top layer) when it has one."""
    how = (
        f"--band {band[0]} --layer {band[1]}` (this model's default"
        if band
        else "--band B --layer L` (SmolLM2: 9 and 8"
    )
    return (
        "; a log that grows past a few hundred edits holds better registered over a band of layers "
        f"(a new alias, `edit add/import {how}; docs/hparams.md)"
    )


@dataclass(frozen=True)
class LayerLoad:
    layer: int
    edits: int  # active edits that ask something of this layer
    key_dim: int
    shares: float | None = None  # their shares: a band edit of B layers asks each for 1/B (None: one each)

    @property
    def load(self) -> float:
        """Active edits per key dimension of the layer's down-projection, a band edit counting
        for its share (the issue's measure: 1,000 edits over 12 layers of 1,536 is 0.054)."""
        return (self.edits if self.shares is None else self.shares) / self.key_dim

    def to_json(self) -> dict:
        return {"layer": self.layer, "edits": self.edits, "key_dim": self.key_dim, "load": round(self.load, 4)}


@dataclass(frozen=True)
class Capacity:
    alias: str
    layers: tuple[LayerLoad, ...]
    release: int | None  # the newest release's version
    health: dict  # its scores' health entry ({} when none or its folder is not here)
    default_band: tuple[int, int] | None = None  # the model's (width, top layer), for the warning's advice

    @property
    def over(self) -> tuple[LayerLoad, ...]:
        """The layers past the safe load."""
        return tuple(layer for layer in self.layers if layer.load > SAFE_LOAD)

    @property
    def warning(self) -> str | None:
        """One line when a layer is past the safe load, else None."""
        if not self.over:
            return None
        worst = max(self.over, key=lambda layer: layer.load)
        # a single-layer log cannot become a band log: the remedy is a new log, so say so early
        remedy = "" if worst.shares is not None else band_remedy(self.default_band)
        return (
            f"layer {worst.layer} of {self.alias} holds {worst.edits} active edits, {worst.load:.3f} per key dimension, "
            f"past the {SAFE_LOAD:.3f} measured as safe (docs/hparams.md): check the next release's health{remedy}"
        )

    def to_json(self) -> dict:
        return {
            "alias": self.alias,
            "safe_load": round(SAFE_LOAD, 4),
            "layers": [layer.to_json() for layer in self.layers],
            "release": self.release,
            "health": self.health,
        }


def layer_loads(edits: list[StoredEdit]) -> tuple[LayerLoad, ...]:
    counts: dict[int, list[float]] = {}  # layer -> [edits, key dim, shares]
    banded = any(e.band for e in edits)
    for e in edits:
        asks = [(a.layer, len(a.key) // 4) for a in e.band] or [(e.layer, e.key_shape[0])]
        for layer, dim in asks:
            row = counts.setdefault(layer, [0, dim, 0.0])
            row[0] += 1
            row[2] += 1 / len(asks)
    return tuple(
        LayerLoad(layer, int(n), int(dim), shares if banded else None)
        for layer, (n, dim, shares) in sorted(counts.items())
    )


def capacity(store: Store, alias: str) -> Capacity:
    base = store.get_base_model(alias)
    latest = store.get_latest_release(base.id)
    found = manifest.folder_scores(Path(latest.path)).get("health") if latest is not None else None
    version = latest.version if latest is not None else None
    checkup = dict(found) if isinstance(found, dict) else {}  # none, or built on a machine not this one
    found_capacity = Capacity(alias, layer_loads(store.list_edits(base.id, "active")), version, checkup)
    if any(layer.shares is None for layer in found_capacity.over):  # the warning advises a band: the config only then
        return replace(found_capacity, default_band=_model_band(base))
    return found_capacity


def _model_band(base: BaseModel) -> tuple[int, int] | None:
    """The default band (width, top layer) of BASE's size, read off its config; None when the
    config cannot be read here (the advice is then generic, never an error)."""
    try:
        config = checkpoints.load_config(base.source, base.revision)
    except (FactStoreError, OSError, ValueError) as exc:
        log.info("%s: no config for the capacity advice: %s", base.alias, exc)
        return None
    return default_band(*arch.config_size(config))
