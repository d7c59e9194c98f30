"""What an edit session's edits read besides the model: the key statistics C of each layer,
found by spec or computed once on the base weights and recorded; the hyperparameters and the
context templates."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace

import torch

from factstore import arch
from factstore.domain import BaseModel, Covariance, StoredEdit
from factstore.errors import InvalidEditRequest, StatisticsError
from factstore.progress import Reporter
from factstore.rome.hparams import ROMEHyperParams, has_measured_layer
from factstore.rome.keys import ContextTemplates, sample_contexts
from factstore.storage.store import Store
from factstore.weights import band, stats
from factstore.weights.checkpoints import LoadedModel
from factstore.weights.corpus import DEFAULT_CORPUS, Corpus, load_corpus


class KeyStatistics:
    """C of a base model's layers for one session. CORPUS_NAME or STATS_TOKENS given: that spec's
    C; else whatever the store records for a layer (see for_layers). BASE_WEIGHTS: a context in
    which the model holds its unedited weights (C is a property of the base model's keys)."""

    def __init__(
        self,
        store: Store,
        base: BaseModel,
        loaded: LoadedModel,
        base_weights: Callable[[], AbstractContextManager[None]],
        corpus_name: str | None,
        stats_tokens: int | None,
        progress: Reporter,
    ) -> None:
        self.store, self.base, self.model, self.tokenizer = store, base, loaded.model, loaded.tokenizer
        self.base_weights, self.corpus_name, self.stats_tokens = base_weights, corpus_name, stats_tokens
        self.progress = progress
        self.matrix = stats.MatrixCache(store.get_covariance)
        self._layer_cov: dict[tuple[int, int], int] = {}  # (edit layer's C id, layer) -> C id of that layer

    def remember(self, own_id: int, layer: int, cov_id: int) -> None:
        """The C of LAYER that an edit whose own C is OWN_ID reads is COV_ID."""
        self._layer_cov[(own_id, layer)] = cov_id

    def layer_matrix(self, own_id: int | None, layer: int) -> torch.Tensor:
        """C of LAYER for an edit whose own C is OWN_ID: that one on its layer, else the C of the
        same corpus, size and dtype (what the band compile of a release reads)."""
        return self.matrix(self._layer_id(own_id, layer))

    def band_matrix(self, own_id: int | None, layer: int, rho: float) -> torch.Tensor:
        """What a band solve on LAYER holds its update to for an edit whose own C is OWN_ID and
        whose band_names_weight is RHO (weights/band.held)."""
        found = self._layer_id(own_id, layer)
        return band.held(self.matrix(found), lambda: self.matrix.names(found), rho)

    def _layer_id(self, own_id: int | None, layer: int) -> int | None:
        if own_id is None:
            return None  # the matrix cache raises: an edit without C cannot be replayed
        own = self.store.get_covariance(own_id)
        if own.layer == layer:
            return own_id
        if (own_id, layer) not in self._layer_cov:
            self.remember(own_id, layer, self.like(own, [layer])[0].id)
        return self._layer_cov[(own_id, layer)]

    def for_layers(self, layers: list[int], hp: ROMEHyperParams, applied: Sequence[StoredEdit]) -> list[Covariance]:
        """C records for LAYERS, by spec, never by recency alone. With a corpus or size asked for,
        that spec's C. Otherwise, per layer: the store's own C of the layer (the newest computed
        here: `stats compute` with any corpus steers); else the C the log's newest edit of the
        layer used (an imported lineage keeps its statistics); else a C recorded (computed or
        pulled) for the spec of the store's own text (its newest own C of any layer), else the C
        of the default spec. A C pulled or shipped from elsewhere is taken only as the log's or
        where its spec is the one asked for: it never displaces the store's own, nor steers a
        store that has none. The missing ones are computed together, in one pass over the corpus."""
        found: dict[int, Covariance] = {}
        if self.corpus_name is None and self.stats_tokens is None:
            own = [c for c in self.store.list_covariances(self.base.id) if not stats.is_shipped(c.path)]
            logged: dict[int, int] = {}  # layer -> C id of the log's newest edit on it
            for edit in reversed(applied):
                if edit.covariance_id is not None and edit.layer in layers:
                    logged.setdefault(edit.layer, edit.covariance_id)
            for layer in layers:
                mine = [c for c in reversed(own) if c.layer == layer]  # newest first
                theirs = [self.store.get_covariance(logged[layer])] if layer in logged else []
                # the first whose file is here (or in the share) wins
                if (here := next(filter(None, map(_here, [*mine, *theirs])), None)) is not None:
                    found[layer] = here
            for layer in [layer for layer in layers if layer not in found and own]:
                like = stats.spec_like(own[-1], self.base.identity, self.model, layer)  # the store's own text and size
                if (here := _here(self.store.get_covariance_by_key(like.key()))) is not None:
                    found[layer] = here
        missing = [layer for layer in layers if layer not in found]
        if missing:
            corpus = self.corpus()
            found.update(
                self._recorded_or_computed([self.spec(layer, hp, corpus) for layer in missing], lambda: corpus)
            )
        return [found[layer] for layer in layers]

    def like(self, own: Covariance, layers: list[int]) -> list[Covariance]:
        """C of LAYERS with OWN's corpus, token count and dtype (the layers below an edit's that a
        band or spread compile reads), the missing ones from one pass."""

        def corpus() -> Corpus:
            text = load_corpus(own.corpus, self.progress)
            if text.sha256 != own.corpus_sha256:
                raise StatisticsError(
                    f"the corpus {own.corpus} changed since its key statistics were computed; compute C of layers {layers} by hand"
                )
            return text

        specs = [stats.spec_like(own, self.base.identity, self.model, layer) for layer in layers]
        found = self._recorded_or_computed(specs, corpus)
        return [found[layer] for layer in layers]

    def _recorded_or_computed(
        self, specs: list[stats.StatsSpec], corpus: Callable[[], Corpus]
    ) -> dict[int, Covariance]:
        """Layer -> the C record of each spec: the store's when its file is there, else computed
        in one pass over CORPUS (read only then) on the base weights and recorded."""
        specs = list({spec.layer: spec for spec in specs}.values())  # a layer asked for twice is summed once
        found: dict[int, Covariance] = {}
        for spec in specs:
            if (here := _here(self.store.get_covariance_by_key(spec.key()))) is not None:
                found[spec.layer] = here
        missing = [spec for spec in specs if spec.layer not in found]
        if missing:
            text = corpus()
            with self.base_weights():  # C is a property of the base model's keys
                results = stats.compute_many(self.model, self.tokenizer, missing, text, self.progress)
            for result in results:
                found[result.spec.layer] = self.store.create_covariance(
                    self.base.id, result.spec.key(), record=stats.covariance_record(result, text)
                )
        return found

    def corpus(self) -> Corpus:
        return load_corpus(self.corpus_name or DEFAULT_CORPUS, self.progress)

    def spec(self, layer: int, hp: ROMEHyperParams, corpus: Corpus) -> stats.StatsSpec:
        arch.check_layer(self.model, layer)
        return stats.stats_spec(self.base.identity, self.model, layer, corpus, hp.stats_tokens, hp.stats_dtype)


def _here(cov: Covariance | None) -> Covariance | None:
    """COV with the path of its file on this machine (fetched from the statistics share if need
    be, checked against its sha256), or None when this machine cannot have it."""
    path = stats.local_file(cov) if cov is not None else None
    return replace(cov, path=str(path)) if cov is not None and path is not None else None


class Settings:
    """How a session's new edits are made: the hyperparameters (the model's measured defaults,
    the layer asked for, the band of the log) and the context templates, sampled once per
    template setting on the base weights and recorded."""

    def __init__(
        self,
        store: Store,
        base: BaseModel,
        loaded: LoadedModel,
        defaults: ROMEHyperParams,
        statistics: KeyStatistics,
        base_weights: Callable[[], AbstractContextManager[None]],
        default_band: tuple[int, int] | None = None,
    ) -> None:
        self.store, self.base, self.model, self.tokenizer = store, base, loaded.model, loaded.tokenizer
        self.defaults, self.statistics, self.base_weights = defaults, statistics, base_weights
        self.default_band = default_band  # (width, top layer) of a new log; None: single-layer

    def for_edit(
        self, layer: int | str | None, applied: Sequence[StoredEdit], band_asked: int | None
    ) -> ROMEHyperParams:
        """Settings for an edit on a head holding APPLIED. layer: a number, "auto" (the traced
        layer), or None: the measured default for this model size, else the traced layer, else
        the 20 % rule; a band log's own top layer (a new log's: the model's default band's).
        BAND_ASKED: the band the session was opened with (None: the log's, else the default)."""
        hp = self.defaults
        if self.statistics.stats_tokens:  # asked for: the session's C and every edit's settings say so
            hp = replace(hp, stats_tokens=self.statistics.stats_tokens)
        hp, top = _with_band(hp, applied, band_asked, self.default_band)
        traced = self.base.recommended_layer
        if layer == "auto":
            if traced is None:
                raise InvalidEditRequest(
                    f"no traced layer for {self.base.alias}; run `factstore trace --model {self.base.alias} --dataset FILE` first, or give --layer N"
                )
            return hp.with_layer(traced)
        if layer is not None:
            arch.check_layer(self.model, int(layer))  # before any statistics are computed for it
            return hp.with_layer(int(layer))
        if top is not None:
            return hp.with_layer(top)
        cfg = self.model.config
        if traced is not None and not has_measured_layer(cfg.model_type, arch.num_layers(self.model), cfg.hidden_size):
            return hp.with_layer(traced)
        return hp

    def templates(self, hp: ROMEHyperParams) -> ContextTemplates:
        """The context templates of HP's setting: recorded, else sampled on the base weights now."""
        fingerprint = hp.templates_fingerprint()
        stored = self.store.get_context_templates(self.base.id, fingerprint)
        if stored is None:
            with self.base_weights():
                sampled = sample_contexts(
                    self.model, self.tokenizer, hp.context_seed, hp.context_lengths, hp.value_context_lengths
                )
            templates = {"key": sampled.key, "value": sampled.value}
            stored = self.store.create_context_templates(
                self.base.id, fingerprint, seed=hp.context_seed, templates=templates
            )
        return ContextTemplates(key=list(stored["key"]), value=list(stored["value"]))


def _with_band(
    hp: ROMEHyperParams, applied: Sequence[StoredEdit], asked: int | None, default: tuple[int, int] | None
) -> tuple[ROMEHyperParams, int | None]:
    """(settings, the top layer the band puts a new edit at, or None: the usual default layer).
    The band ASKED for, else the band settings and top layer of the log's newest band edit (a
    log compiles as one band), else, for a new log, the model's DEFAULT band (width, top). A log
    with band edits takes no single-layer edit (the head it is measured on is the band
    compile), and a single-layer log keeps to one layer unless a band is asked for (refused)."""
    last = next((e for e in reversed(applied) if e.band), None)
    if last is not None:
        logged = replace(
            hp,
            band=int(last.hparams["band"]),
            band_weight=float(last.hparams["band_weight"]),
            band_alpha=float(last.hparams.get("band_alpha", 0.0)),
            band_boost=float(last.hparams.get("band_boost", 1.0)),
            band_plain_weight=band.plain_weight(last),
            band_names_weight=band.names_weight(last),
            band_top_weight=band.top_weight(last),
        )
        if asked is not None and asked != logged.band:
            raise InvalidEditRequest(
                f"this model's log is registered over a band of {logged.band} layers; give --band {logged.band} or none"
            )
        return logged, last.layer
    if asked is not None and asked > 1 and applied:
        raise InvalidEditRequest(
            f"this model's log holds {len(applied)} single-layer edits; a band log starts empty "
            "(register the model again under another alias for one)"
        )
    if asked is None and not applied and default is not None:
        return replace(hp, band=default[0]), default[1]
    if asked is not None and asked > 1:
        return replace(hp, band=asked), default[1] if default is not None else None
    return (replace(hp, band=asked) if asked is not None else hp), None
