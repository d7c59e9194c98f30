"""How full each edited layer is: active edits per key dimension, against the load that the
1,000-edit run measured as safe, and the health of the model's last release."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from factstore.domain import StoredEdit
from factstore.release import manifest
from factstore.storage.store import Store

# docs/results.md, SmolLM2-135M, one layer 1,536 keys wide: held-out perplexity had risen 10 %
# at 100 exact edits (the joint curve), a load of 100 / 1,536 edits per key dimension.
SAFE_LOAD = 100 / 1536


@dataclass(frozen=True)
class LayerLoad:
    layer: int
    edits: int
    key_dim: int

    @property
    def load(self) -> float:
        """Active edits per key dimension of the layer's down-projection."""
        return self.edits / self.key_dim

    def to_json(self) -> dict:
        return {"layer": self.layer, "edits": self.edits, "key_dim": self.key_dim, "load": round(self.load, 4)}


@dataclass(frozen=True)
class Capacity:
    alias: str
    layers: tuple[LayerLoad, ...]
    release: int | None  # the newest release's version
    health: dict  # its scores' health entry ({} when none or its folder is not here)

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
        return (
            f"layer {worst.layer} of {self.alias} holds {worst.edits} active edits, {worst.load:.3f} per key dimension, "
            f"past the {SAFE_LOAD:.3f} measured as safe (docs/hparams.md): check the next release's health"
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
    counts: dict[int, list[int]] = {}
    for e in edits:
        counts.setdefault(e.layer, [0, e.key_shape[0]])[0] += 1
    return tuple(LayerLoad(layer, n, dim) for layer, (n, dim) in sorted(counts.items()))


def capacity(store: Store, alias: str) -> Capacity:
    base = store.get_base_model(alias)
    latest = store.get_latest_release(base.id)
    found = manifest.folder_scores(Path(latest.path)).get("health") if latest is not None else None
    version = latest.version if latest is not None else None
    checkup = dict(found) if isinstance(found, dict) else {}  # none, or built on a machine not this one
    return Capacity(alias, layer_loads(store.list_edits(base.id, "active")), version, checkup)
