"""Registering edits: the head model (base + active edits, in memory) and one short write per edit."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from transformers import PreTrainedModel

from factstore import arch
from factstore.domain import BaseModel, Covariance, EditEntry, EditRequest, LayerAsk, LoggedEdit, NewEdit, StoredEdit
from factstore.editing.lease import Holder, compute_or_wait
from factstore.editing.requests import layer_spec, parse_layer_spec
from factstore.editing.resources import KeyStatistics, Settings
from factstore.errors import (
    DatabaseUnavailable,
    FactStoreError,
    HeadChanged,
    InvalidEditRequest,
    LeaseLost,
    NumericalError,
)
from factstore.progress import SILENT, Reporter
from factstore.results import Reply, TokenProb
from factstore.rome.edit import EditResult, Snapshot, compute_edits, validate_request
from factstore.rome.hparams import ROMEHyperParams, default_band, default_hparams
from factstore.rome.keys import ContextTemplates
from factstore.rome.prompts import decode
from factstore.rome.scoring import greedy_continuation
from factstore.storage.store import Store
from factstore.weights import band, checkpoints, stats
from factstore.weights.corpus import Corpus
from factstore.weights.join import join_of
from factstore.weights.replay import apply_sequential, apply_update, edit_vectors, solve_key
from factstore.weights.spread import spread_layers
from factstore.weights.vectors import from_bytes, to_bytes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EditOutcome:
    edit: StoredEdit
    superseded: list[StoredEdit] = field(default_factory=list)

    def to_json(self) -> dict:
        m = self.edit.metrics
        return {
            **self.edit.summary(),
            "prob_new_before": m["prob_new_before"],
            "prob_new_after": m["prob_new_after"],
            "prob_true_before": m["prob_true_before"],
            "prob_true_after": m["prob_true_after"],
            "superseded": [e.id for e in self.superseded],
        }


class EditSession:
    """A base model loaded with its active edits replayed (the head model), ready to take more."""

    def __init__(
        self,
        store: Store,
        alias: str,
        device: str | None = None,
        corpus: str | None = None,
        stats_tokens: int | None = None,
        progress: Reporter = SILENT,
        band: int | None = None,
    ) -> None:
        self.store = store
        self.progress = progress
        self.base: BaseModel = store.get_base_model(alias)
        loaded = checkpoints.load(
            self.base.source, expected=self.base.revision, device=device, progress=progress, dtype=self.base.dtype
        )
        self.model, self.tokenizer = loaded.model, loaded.tokenizer
        arch.model_spec(self.model)
        self.band = band  # None: the band of the log's newest edit, else the model's default
        self._originals = Snapshot(self.model)  # the unedited down-projection of every layer the log touches
        # corpus None: reuse whatever C is recorded for a layer, else the default corpus
        self.statistics = KeyStatistics(store, self.base, loaded, self.base_weights, corpus, stats_tokens, progress)
        self.matrix = self.statistics.matrix
        size = arch.config_size(self.model.config)
        self.settings = Settings(
            store, self.base, loaded, default_hparams(*size), self.statistics, self.base_weights, default_band(*size)
        )
        self.applied: list[StoredEdit] = []
        self.rebuild(store.list_edits(self.base.id, "active"))

    # the head model ---------------------------------------------------------------------

    def rebuild(self, edits: list[StoredEdit]) -> None:
        """Reset to the base weights and replay edits the way they were computed: sequentially,
        or, when the log has band edits, as the band compile (what they were measured on)."""
        self._originals.restore()
        if any(e.band for e in edits):
            self._originals.add({e.layer for e in edits} | {a.layer for e in edits for a in e.band})
            band.apply_band(self.model, edits, edit_vectors, self.layer_covariance, self._band_soft(edits))
        else:
            self._originals.add({e.layer for e in edits})
            apply_sequential(self.model, edits, self.matrix)
        self.applied = sorted(edits, key=lambda e: e.seq)

    def _base(self, layer: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The unedited (W0 (out, in), b) of a remembered layer."""
        W0 = self._originals.saved[layer]
        return (W0.T if arch.model_spec(self.model).fan_in_fan_out else W0), arch.down_proj_bias(self.model, layer)

    def _band_soft(self, edits: list[StoredEdit]) -> tuple[float, float]:
        return band.settings(edits, (self.settings.defaults.band_weight, self.settings.defaults.band_alpha))

    def _names_available(self, hp: ROMEHyperParams, cov: Covariance) -> ROMEHyperParams:
        """HP, or HP without its band_names_weight (warned) when a new band log would start on key
        statistics written before factstore kept their names moment: the log then registers, and
        always compiles, with C alone (a log keeps the rho of its first band edit)."""
        if hp.band == 1 or hp.band_names_weight == 0 or any(e.band for e in self.applied):
            return hp
        own = self.store.get_covariance(cov.id)
        records = [own, *self.covariances_like(own, spread_layers(hp.layer, hp.band)[:-1])]
        if all(stats.has_names(c) for c in records):
            return hp
        log.warning(
            "the key statistics of this band log predate their names moment: it registers without it "
            "(band_names_weight 0, not %g); statistics computed on a new store have it",
            hp.band_names_weight,
        )
        return replace(hp, band_names_weight=0.0)

    def _measure_band(
        self, requests: list[EditRequest], results: list[EditResult], hp: ROMEHyperParams, cov: Covariance
    ) -> list[tuple[LayerAsk, ...]]:
        """Each new edit's asks of every layer of its band, measured on the head; the head's band
        layers are left rewritten with the log's asks and these (the band compile of both)."""
        soft = (hp.band_weight, hp.band_alpha)
        if self._band_soft(self.applied) != soft and any(e.band for e in self.applied):
            raise InvalidEditRequest(
                f"this model's log was registered with band weight {self._band_soft(self.applied)[0]:g}; one log takes one"
            )
        for name, of, value in (
            ("band names weight", band.names_weight, hp.band_names_weight),
            ("band top weight", band.top_weight, hp.band_top_weight),
        ):
            if {of(e) for e in self.applied if e.band} - {value}:
                raise InvalidEditRequest(f"this model's log was registered with another {name}; one log takes one")
        layers = spread_layers(hp.layer, hp.band)
        self._originals.add(layers)
        own = self.store.get_covariance(cov.id)  # C of every layer below first, in one pass, before any write
        for below, found in zip(layers[:-1], self.covariances_like(own, layers[:-1])):
            self.statistics.remember(cov.id, below, found.id)
        keys = self.templates(hp).key
        prompt_sets = [band.key_prompts(r, keys, hp.band_plain_weight) for r in requests]
        W, b = arch.down_proj_weight(self.model, hp.layer).double().cpu(), arch.down_proj_bias(self.model, hp.layer)
        K = torch.stack([r.key for r in results]).double()  # (n, d_ff)
        V = torch.stack([r.value for r in results]).double()  # (n, d)
        shifts = V - K @ W.T - (0.0 if b is None else b.double().cpu())  # (n, d) of the layer's output
        shifts = join_of(self.model, hp.layer).shift(V - shifts, shifts)  # of the residual stream
        earlier, _ = band.collect(self.applied, edit_vectors, self._base)
        top = (hp.band_top_weight, band.tops(self.applied)[1] | {hp.layer})  # the head: the log and these

        def write(layer: int, rows: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
            held = self.statistics.band_matrix(cov.id, layer, hp.band_names_weight)
            delta = band.layer_delta(earlier.get(layer, []) + rows, held, band.layer_soft(soft, layer, top))
            band.write_layer(self.model, layer, self._base(layer)[0], delta)

        try:
            return band.measure_asks(
                self.model,
                self.tokenizer,
                prompt_sets,
                hp.layer,
                shifts,
                hp.band,
                write,
                lambda layer: self._base(layer)[0],
                hp.band_boost,
            )
        except BaseException:
            self.rebuild(self.applied)  # never a head with part of a band written
            raise

    @contextmanager
    def base_weights(self) -> Iterator[None]:
        """Temporarily the unedited base model (context templates are sampled on it)."""
        with Snapshot(self.model, self._originals.layers):
            self._originals.restore()
            yield

    # settings, templates, statistics -------------------------------------------------------

    def hparams(self, layer: int | str | None = None, band: int | None = None) -> ROMEHyperParams:
        """Settings for a new edit on this head (editing/resources.Settings); BAND: instead of the
        session's (1: one layer, as ROME's single-edit protocol asks)."""
        return self.settings.for_edit(layer, self.applied, self.band if band is None else band)

    def templates(self, hp: ROMEHyperParams) -> ContextTemplates:
        return self.settings.templates(hp)

    def covariance(self, layer: int, hp: ROMEHyperParams) -> Covariance:
        """The C record for a layer, computing it (with progress, resumable) on first need."""
        return self.covariances([layer], hp)[0]

    def covariances(self, layers: list[int], hp: ROMEHyperParams) -> list[Covariance]:
        """C records for LAYERS by spec (KeyStatistics.for_layers), the log's own C among them."""
        return self.statistics.for_layers(layers, hp, self.applied)

    def covariances_like(self, own: Covariance, layers: list[int]) -> list[Covariance]:
        return self.statistics.like(own, layers)

    def layer_covariance(self, edit: LoggedEdit[int | None], layer: int) -> torch.Tensor:
        """What the band compile of EDIT holds its update on LAYER to (C, and its names moment weighed)."""
        return self.statistics.band_matrix(edit.covariance_id, layer, band.names_weight(edit))

    def stats_corpus(self) -> Corpus:
        return self.statistics.corpus()

    def stats_spec(self, layer: int, hp: ROMEHyperParams, corpus: Corpus) -> stats.StatsSpec:
        return self.statistics.spec(layer, hp, corpus)

    # edits ---------------------------------------------------------------------------------

    def validate(self, request: EditRequest, layer: int | str | None = None) -> None:
        validate_request(self.model, self.tokenizer, request, self.hparams(layer).layer)

    def sync(self) -> bool:
        """Rebuild the head when the model's active log is no longer what it holds (another
        process retracted, imported or computed edits). Returns whether it rebuilt."""
        if self.store.list_active_ids(self.base.id) == [e.id for e in self.applied]:
            return False
        self.rebuild(self.store.list_edits(self.base.id, "active"))
        return True

    def add(
        self,
        request: EditRequest,
        layer: int | str | None = None,
        note: str | None = None,
        requested_by: str | None = None,
    ) -> EditOutcome:
        """Submit one request and compute it here (or, when a worker holds the model, wait for it)."""
        self.validate(request, layer)
        entry, _ = self.store.create_request(
            self.base.id, request, requested_layer=layer_spec(layer), note=note, requested_by=requested_by
        )
        return self.run(entry.id)

    def run(self, edit_id: int, poll: float = 0.2) -> EditOutcome:
        """Compute a submitted request in this process while holding the model's lease; if a
        worker holds the model, it computes the request and this waits for the result. Ctrl-C
        withdraws the request (it fails rather than being computed later by a worker)."""
        try:
            return self._run(edit_id, poll)
        except KeyboardInterrupt:
            self.store.withdraw_request(edit_id, "withdrawn: the command that submitted it was interrupted")
            raise

    def _run(self, edit_id: int, poll: float) -> EditOutcome:
        done = compute_or_wait(self.store, self.base.id, edit_id, self.process, poll)
        if isinstance(done, EditOutcome):
            return done
        self.sync()  # a worker computed it: the head takes it (and whatever else changed)
        superseded = [self.store.get_edit(done.supersedes_id)] if done.supersedes_id else []
        return EditOutcome(self.store.get_edit(edit_id), superseded)

    def process(self, entry: EditEntry, holder: str) -> EditOutcome:
        """Compute a request HOLDER has claimed and make it the next active edit.

        A failure of the request or the model is stored on it (one line) and raised. LeaseLost
        (another worker took the model), HeadChanged (the log changed meanwhile: the request is
        back in the queue) and DatabaseUnavailable (it stays claimed until the lease is taken
        again) are raised without failing the request."""
        self.sync()  # another process may have changed the log since the last edit
        request = _request(entry)
        try:
            new, conflicts = self._compute(
                request, parse_layer_spec(entry.requested_layer), entry.note, entry.requested_by
            )
        except (LeaseLost, DatabaseUnavailable):
            raise
        except Exception as exc:
            reason = str(exc) if isinstance(exc, FactStoreError) else f"{type(exc).__name__}: {exc}"
            self.store.fail_request(entry.id, holder, reason)
            raise
        try:
            saved = self._apply_checked(new)
        except FactStoreError as exc:  # computed on this head, it does not hold on it: the request's own failure
            self.store.fail_request(entry.id, holder, str(exc))
            raise
        stored = self._complete(entry, holder, new, saved, [e.id for e in self.applied if e.id not in conflicts])
        superseded = [self.store.get_edit(i) for i in conflicts]
        self.applied = [e for e in self.applied if e.id not in conflicts] + [stored]
        return EditOutcome(stored, superseded)

    def _apply_checked(self, new: NewEdit) -> Snapshot | None:
        """Apply a computed edit's update to the head (the step a replay of the log makes), and
        check it holds, before it is stored: a stored edit always replays. Returns a Snapshot of
        the layer from before, to put back if the store refuses the edit; None for a band edit,
        which its measurement already wrote (soft: nothing to check)."""
        if new.band:
            return None
        if any(e.band for e in self.applied):
            raise InvalidEditRequest(
                "this model's log is registered over a band of layers; a single-layer edit cannot join it"
            )
        self._originals.add([new.layer])
        saved = Snapshot(self.model, [new.layer])
        key, value = from_bytes(new.key, new.key_shape), from_bytes(new.value, new.value_shape)
        try:
            apply_update(
                self.model,
                new.layer,
                key,
                value,
                solve_key(self.model, new.layer, key, self.matrix(new.covariance_id)),
                "the edit",
            )
        except BaseException:
            saved.restore()
            raise
        return saved

    def _complete(
        self, entry: EditEntry, holder: str, new: NewEdit, saved: Snapshot | None, computed_on: list[int]
    ) -> StoredEdit:
        """Store a computed edit whose update is on the head. If the store refuses it, the head
        is put back (SAVED, or the log's rebuild for a band edit) and, when the log changed
        meanwhile (HeadChanged: the request is back in the queue), synced with it."""
        try:
            return self.store.complete_request(entry.id, holder, new, computed_on=computed_on)
        except BaseException as exc:
            if saved is None:  # a band edit: its measurement rewrote several layers
                self.rebuild(self.applied)
            else:
                saved.restore()
            if isinstance(exc, HeadChanged):
                self.sync()
            raise

    def run_many(self, edit_ids: list[int]) -> list[EditOutcome]:
        """Compute submitted requests here, batched (see process_many), while holding the model's
        lease; whatever cannot be batched, or is held by a worker, goes through run() one by one."""
        holder = Holder(self.store, "cli")
        outcomes: dict[int, EditOutcome] = {}
        try:
            with holder.model(self.base.id) as held:
                claimed = (
                    self.store.claim_requests(self.base.id, holder.id, len(edit_ids), only=edit_ids) if held else []
                )
                done, rest = self.process_many(claimed, holder.id) if claimed else ([], [])
                outcomes.update((o.edit.id, o) for o in done)
                for entry in rest:
                    with suppress(HeadChanged):  # back in the queue: computed again below
                        outcomes[entry.id] = self.process(entry, holder.id)
            for edit_id in edit_ids:
                if edit_id not in outcomes:
                    outcomes[edit_id] = self._run(edit_id, 0.2)
        except KeyboardInterrupt:
            for edit_id in set(edit_ids) - outcomes.keys():
                self.store.withdraw_request(edit_id, "withdrawn: the command that submitted it was interrupted")
            raise
        return [outcomes[i] for i in edit_ids]

    def process_many(self, entries: list[EditEntry], holder: str) -> tuple[list[EditOutcome], list[EditEntry]]:
        """Compute claimed requests of one layer in one batch on the head, then make them active
        in order, each with the rank-one update a replay of the log makes. Returns the outcomes
        and the claimed entries left to process one at a time: a request that replaces an
        active fact (or another in the batch), one for another layer, the rest of a batch whose
        log changed meanwhile, or every one of them when the batch computation fails (so that a
        bad request fails alone)."""
        self.sync()
        batch, rest = self._batchable(entries)
        if len(batch) < 2:
            return [], entries
        requests = [_request(e) for e in batch]
        try:
            hp = self.hparams(parse_layer_spec(batch[0].requested_layer))
            cov = self.covariance(hp.layer, hp)
            hp = self._names_available(hp, cov)
            results = compute_edits(self.model, self.tokenizer, requests, hp, self.matrix(cov.id), self.templates(hp))
            asks = self._measure_band(requests, results, hp, cov) if hp.band > 1 else [()] * len(results)
        except (LeaseLost, DatabaseUnavailable):
            raise
        except Exception as exc:  # one at a time instead: each failure is then stored on its own request
            log.info("batch of %d computed one at a time: %s: %s", len(batch), type(exc).__name__, exc)
            return [], entries  # (a failed band measurement put the head back itself)
        outcomes: list[EditOutcome] = []
        for i, (entry, result) in enumerate(zip(batch, results)):
            try:
                new = self._new_edit(requests[i], result, hp, cov, entry, batch=len(batch), band=asks[i])
                saved = self._apply_checked(new)
            except Exception as exc:
                # not finite, or it does not hold on the head its batch-mates changed (keys close to
                # theirs): this one and the rest are computed again one at a time, on the head as it is
                log.info("request %d and the %d after it computed one at a time: %s", entry.id, len(batch) - i - 1, exc)
                if hp.band > 1:
                    self.rebuild(self.applied)
                return outcomes, batch[i:] + rest
            try:
                stored = self._complete(entry, holder, new, saved, [e.id for e in self.applied])
            except HeadChanged:  # this one is back in the queue; the rest are recomputed on the new head
                return outcomes, batch[i + 1 :] + rest
            self.applied.append(stored)
            outcomes.append(EditOutcome(stored))
        return outcomes, rest

    def _batchable(self, entries: list[EditEntry]) -> tuple[list[EditEntry], list[EditEntry]]:
        """The leading entries that can share one optimisation, and the rest (in claim order, so
        edits still become active in submission order). A batch ends at the first entry for
        another requested layer, one that replaces an active fact, or one of the same fact as an
        entry before it (same subject, and same prompt or relation: what supersession matches)."""
        batch: list[EditEntry] = []
        for entry in entries:
            same_fact_in_batch = any(
                e.subject == entry.subject
                and (e.prompt == entry.prompt or (entry.relation_id is not None and e.relation_id == entry.relation_id))
                for e in batch
            )
            if (
                (batch and entry.requested_layer != batch[0].requested_layer)
                or same_fact_in_batch
                or self.store.list_conflicting_edits(
                    self.base.id, subject=entry.subject, prompt=entry.prompt, relation_id=entry.relation_id
                )
            ):
                break
            batch.append(entry)
        return batch, entries[len(batch) :]

    def _new_edit(
        self,
        request: EditRequest,
        result: EditResult,
        hp: ROMEHyperParams,
        cov: Covariance,
        entry: EditEntry | None = None,
        *,
        note: str | None = None,
        requested_by: str | None = None,
        batch: int = 1,
        band: tuple[LayerAsk, ...] = (),
    ) -> NewEdit:
        if not (torch.isfinite(result.key).all() and torch.isfinite(result.value).all()):
            raise NumericalError("the computed key or value is not finite; nothing was stored")
        key, key_shape = to_bytes(result.key)
        value, value_shape = to_bytes(result.value)
        metrics = {
            "prob_new_before": result.prob_new_before,
            "prob_true_before": result.prob_true_before,
            "prob_new_after": result.prob_new_after,
            "prob_true_after": result.prob_true_after,
            "loss": result.loss,
            "seconds": result.seconds,
            "batch": batch,
        }
        return NewEdit(
            request=request,
            target_true=result.target_true,
            layer=result.layer,
            module=result.module,
            key=key,
            key_shape=key_shape,
            value=value,
            value_shape=value_shape,
            hparams=hp.to_json(),
            hparams_fingerprint=hp.fingerprint(),
            covariance_id=cov.id,
            metrics=metrics,
            requested_by=entry.requested_by if entry else requested_by,
            note=entry.note if entry else note,
            band=band,
        )

    def _compute(
        self, request: EditRequest, layer: int | str | None, note: str | None, requested_by: str | None
    ) -> tuple[NewEdit, set[int]]:
        """k*, v* on the head model (without the active edits of the same fact, which it replaces)."""
        hp = self.hparams(layer)
        validate_request(self.model, self.tokenizer, request, hp.layer)
        same_fact = self.store.list_conflicting_edits(
            self.base.id, subject=request.subject, prompt=request.prompt, relation_id=request.relation_id
        )
        conflicts = {e.id for e in same_fact}
        if conflicts & {e.id for e in self.applied}:  # compute the correction on a head without the fact it replaces
            self.rebuild([e for e in self.applied if e.id not in conflicts])
        cov = self.covariance(hp.layer, hp)
        hp = self._names_available(hp, cov)
        result = compute_edits(self.model, self.tokenizer, [request], hp, self.matrix(cov.id), self.templates(hp))[0]
        asks = self._measure_band([request], [result], hp, cov)[0] if hp.band > 1 else ()
        return self._new_edit(request, result, hp, cov, note=note, requested_by=requested_by, band=asks), conflicts


def _request(entry: EditEntry) -> EditRequest:
    return EditRequest(entry.prompt, entry.subject, entry.target_new, entry.target_true, entry.relation_id)


@torch.no_grad()
def ask(model: PreTrainedModel, tokenizer: Any, prompt: str, top: int = 5, max_new_tokens: int = 12) -> Reply:
    """The model's top next tokens with probabilities, and its greedy continuation."""
    device = arch.input_device(model)
    ids = torch.tensor([tokenizer(prompt)["input_ids"]], device=device)
    if ids.shape[1] == 0 or ids.shape[1] + max_new_tokens > arch.context_length(model):
        raise InvalidEditRequest(
            f"the prompt is {ids.shape[1]} tokens; give 1 to {arch.context_length(model) - max_new_tokens} for this model"
        )
    probs = torch.softmax(model(input_ids=ids).logits[0, -1].float(), -1)
    values, indices = probs.topk(top)
    return Reply(
        prompt=prompt,
        top=[TokenProb(token=decode(tokenizer, [int(i)]), prob=float(p)) for p, i in zip(values, indices)],
        continuation=greedy_continuation(model, tokenizer, prompt, max_new_tokens),
    )
