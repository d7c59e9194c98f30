"""Importing a pulled release's lineage: its base model, context templates and edit log, so a
teammate continues it. The release is untrusted: every entry is checked against the schema and
the model before anything is stored, the weights must equal a local compile of the imported log,
and the store is written in one transaction (all or nothing)."""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from factstore import arch
from factstore.domain import (
    Covariance,
    EditRequest,
    ImportedRelease,
    LayerAsk,
    LoggedEdit,
    ModelRef,
    NewEdit,
    StoredEdit,
    band_sha256,
    check_alias,
)
from factstore.errors import CompileError, FactStoreError, ImportConflict, NumericalError, ReleaseVerificationError
from factstore.files import file_sha256
from factstore.hub import REPO_ID, VERSION_TAG
from factstore.progress import SILENT, Reporter
from factstore.release import claims, layout
from factstore.release.build import MIN_EFFICACY, held_share, log_entries
from factstore.release.manifest import INT32, MANIFEST, CovarianceInfo, Manifest, ManifestEdit
from factstore.results import Imported
from factstore.rome.edit import Snapshot
from factstore.rome.hparams import ROMEHyperParams
from factstore.storage.store import Store
from factstore.weights import assets, band, checkpoints, stats
from factstore.weights.checkpoints import LoadedModel
from factstore.weights.corpus import is_starter_corpus, load_corpus
from factstore.weights.plausible import check_installed, sample_corpus
from factstore.weights.replay import (
    MODES,
    NULL_SPACE_THRESHOLD,
    SOFT_MODES,
    apply_edits,
    soft_settings,
)
from factstore.weights.spread import LayerInputs, spread_layers
from factstore.weights.stats import MatrixCache
from factstore.weights.vectors import to_bytes

ShippedStats = Callable[
    [str, int], Path | None
]  # (sha256 of a C, its largest size) -> the file the release shipped for it, if any
MAX_STATS_TOKENS = 10_000_000  # key statistics a release may ask an importer to compute


NOTHING_IMPORTED = "nothing was imported"


def import_release(
    store: Store,
    folder: Path,
    alias: str,
    published: tuple[str, str, str] | None = None,
    *,
    device: str | None = None,
    progress: Reporter = SILENT,
    shipped: ShippedStats | None = None,
) -> Imported:
    """Continue a pulled release's lineage locally under ALIAS (_import); a refusal says, once,
    that nothing was imported: the store is written in one transaction at the very end."""
    try:
        return _import(store, folder, alias, published, device=device, progress=progress, shipped=shipped)
    except ReleaseVerificationError as exc:  # its own type kept (HubFileTooLarge, say), the message said once
        exc.args = (_nothing_imported(str(exc)),)
        raise


def _nothing_imported(reason: str) -> str:
    """REASON with what a lower layer said was left untouched replaced by this import's own word."""
    for said in ("; nothing was written", "; nothing was changed", f"; {NOTHING_IMPORTED}"):
        reason = reason.removesuffix(said)
    return f"{reason}; {NOTHING_IMPORTED}"


def _import(
    store: Store,
    folder: Path,
    alias: str,
    published: tuple[str, str, str] | None,
    *,
    device: str | None,
    progress: Reporter,
    shipped: ShippedStats | None,
) -> Imported:
    """Continue a pulled release's lineage locally under ALIAS.

    The local active log of ALIAS must be a prefix of the release's (a fresh alias is the
    empty prefix); the rest of the release's edits are appended in order with their stored
    k* and v*; their key statistics come from this machine's cache, from SHIPPED (the release's
    own C files, checked), or are computed. The release itself is recorded (as published when
    PUBLISHED, its (repo, commit, tag) on the Hub, is given), so the next compile is the next
    version and the next publish builds on its commit.
    """
    check_alias(alias)
    manifest = layout.verify_folder(folder)
    version = _version(published[2] if published else None)
    if manifest.mode not in MODES:
        raise ReleaseVerificationError(f"the release's compile mode {manifest.mode!r} is not one of {', '.join(MODES)}")
    if manifest.mode == "null-space" and manifest.null_space_threshold != NULL_SPACE_THRESHOLD:
        raise ReleaseVerificationError(
            f"the release's null space threshold {manifest.null_space_threshold} is not this factstore's "
            f"{NULL_SPACE_THRESHOLD}"
        )
    if manifest.mode == "spread":  # its compile runs forward passes, whose last bits differ between machines
        raise ReleaseVerificationError(
            f"a {manifest.mode}-mode release cannot be rebuilt byte for byte on another machine, so its edits cannot "
            "be imported; pull it without --import-edits, or ask for a joint release"
        )
    ours = soft_settings(manifest.mode)  # band: the edits' own, checked at the rebuild
    if manifest.mode == "soft" and (manifest.soft_weight, manifest.soft_alpha) != ours:
        raise ReleaseVerificationError(
            f"the release's soft compile settings (weight {manifest.soft_weight}, alpha {manifest.soft_alpha}) are not "
            f"this factstore's {ours}"
        )
    banded = [bool(e.band) for e in manifest.edits]
    if any(banded) and (manifest.mode != "band" or not all(banded)):
        raise ReleaseVerificationError(
            "the release's edits are registered over bands, so its weights must be their band compile and every "
            f"edit a band edit (mode {manifest.mode!r}, {sum(banded)} of {len(banded)} band edits)"
        )
    ref = _base_ref(store, alias, manifest, progress)
    local = store.list_edits(store.get_base_model(alias).id, "active") if _registered(store, alias) else []
    prefix = [(e.key_sha256, e.value_sha256, band_sha256(e.band)) for e in local]
    if prefix != [(x.key_sha256, x.value_sha256, x.band_sha256) for x in manifest.edits[: len(local)]]:
        raise ImportConflict(
            f"the active edits of {alias} are not a prefix of this release's edit log; import under a fresh --alias"
        )
    loaded = checkpoints.load(ref.source, expected=ref.revision, device=device, progress=progress, dtype=ref.dtype)
    vectors, asks = _read_vectors(folder, manifest.edits)
    entries = list(zip(manifest.edits, vectors, asks))[len(local) :]
    new = [
        (_checked_edit(loaded, i, entry, key, value, vectors), _cov_key(ref, loaded, entry.covariance))
        for i, (entry, (key, value), vectors) in enumerate(entries, start=len(local) + 1)
    ]
    own = store.list_covariances(store.get_base_model(alias).id) if _registered(store, alias) else []
    infos = [info for entry, _, _ in entries for info in [entry.covariance, *entry.band_covariances] if info]
    covariances = _covariances(loaded, ref, infos, progress, shipped, own)
    _check_rebuild(store, _Imported(ref, loaded, manifest), local, new, covariances, progress)
    record = ImportedRelease(
        mode=manifest.mode,
        version=version,
        manifest_sha256=file_sha256(folder / MANIFEST),
        path=str(folder),
        published=published,
        scores=dict(manifest.scores),
        log_sha256=lambda edits: layout.edit_log_sha256(ref.identity, manifest.mode, log_entries(edits)),
        templates=tuple(t.model_dump() for t in manifest.context_templates),
    )
    base, added, release = store.import_lineage(
        alias,
        ref,
        license=manifest.base.license,
        prefix=[(k, v) for k, v, _ in prefix],
        covariances={k: c for k, (c, _) in covariances.items()},
        edits=new,
        release=record,
    )
    return Imported(
        alias=alias,
        base_revision=base.revision,
        edits_added=len(added),
        edits_total=len(manifest.edits),
        release=release.version,
        rebuilt_identical=True,
    )


def _registered(store: Store, alias: str) -> bool:
    return any(m.alias == alias for m in store.list_base_models())


def _version(tag: str | None) -> int | None:
    if tag is None:
        return None
    match = VERSION_TAG.fullmatch(tag)
    if match is None or not 0 < int(match.group(1)) <= INT32:
        raise ReleaseVerificationError(f"the release's tag {tag[:40]!r} is not a version v1 to v{INT32}")
    return int(match.group(1))


def _base_ref(store: Store, alias: str, manifest: Manifest, progress: Reporter) -> ModelRef:
    """The base model's exact weights. An alias already registered must hold the same revision;
    otherwise the manifest's source must be a Hub id or a starter asset: a release never makes
    factstore read a local path it names."""
    base = manifest.base
    if _registered(store, alias):
        mine = store.get_base_model(alias)
        if (mine.revision, mine.dtype) != (base.revision, base.dtype):
            raise ImportConflict(
                f"alias {alias} is {mine.source}@{mine.revision[:19]} in {mine.dtype}, the release is built on {base.revision[:19]} "
                f"in {base.dtype}; import under another --alias"
            )
        return ModelRef(source=mine.source, revision=mine.revision, model_type=mine.model_type, dtype=mine.dtype)
    is_starter = base.source.startswith(assets.PREFIX) and base.source.removeprefix(assets.PREFIX) in assets.STARTERS
    if not is_starter and not (REPO_ID.fullmatch(base.source) and ".." not in base.source):
        raise ReleaseVerificationError(
            f"the release is built on a model that is neither a Hub id nor a starter asset; register the same weights "
            f"(revision {base.revision[:19]}...) with `factstore model add ALIAS SOURCE`, then pull again with --alias ALIAS"
        )
    ref = checkpoints.resolve(base.source, base.revision if not base.revision.startswith("sha256:") else None, progress)
    if ref.revision != base.revision:
        raise ReleaseVerificationError(
            f"{base.source} resolves to weights {ref.revision[:19]}..., not the release's {base.revision[:19]}..."
        )
    return replace(ref, dtype=base.dtype)


def _read_vectors(
    folder: Path, entries: list[ManifestEdit]
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], list[list[tuple[int, torch.Tensor, torch.Tensor]]]]:
    try:
        return layout.read_edit_vectors(folder, len(entries), [e.band for e in entries])
    except (KeyError, OSError, ValueError, RuntimeError) as exc:
        raise ReleaseVerificationError(
            f"{layout.EDIT_VECTORS} does not hold the {len(entries)} edits' vectors ({type(exc).__name__})"
        ) from None


def _checked_edit(
    loaded: LoadedModel,
    position: int,
    entry: ManifestEdit,
    key: torch.Tensor,
    value: torch.Tensor,
    per_layer: list[tuple[int, torch.Tensor, torch.Tensor]],
) -> NewEdit:
    """The edit as the store takes it, after checking everything the manifest says against the
    model: layer, module, shapes, finite vectors matching their sha256, settings, the request."""
    model = loaded.model
    where = f"edit {position} of the release"
    if not 0 <= entry.layer < arch.num_layers(model):
        raise ReleaseVerificationError(
            f"{where}: layer {entry.layer} is outside the model (layers 0 to {arch.num_layers(model) - 1})"
        )
    expected_module = arch.down_proj_name(model, entry.layer)
    if entry.module != expected_module:
        raise ReleaseVerificationError(
            f"{where}: it rewrites {entry.module[:80]!r}, but this model's layer {entry.layer} is {expected_module}"
        )
    d_model, d_ff = arch.down_proj_weight(model, entry.layer).shape
    for name, tensor, shape, want in (
        ("key", key, entry.key_shape, d_ff),
        ("value", value, entry.value_shape, d_model),
    ):
        if tensor.dtype != torch.float32 or list(tensor.shape) != shape or shape != [want]:
            raise ReleaseVerificationError(
                f"{where}: its {name} has shape {list(tensor.shape)}, the model needs [{want}]"
            )
        if not torch.isfinite(tensor).all():
            raise ReleaseVerificationError(f"{where}: its {name} is not finite")
    key_bytes, key_shape = to_bytes(key)
    value_bytes, value_shape = to_bytes(value)
    if (
        hashlib.sha256(key_bytes).hexdigest() != entry.key_sha256
        or hashlib.sha256(value_bytes).hexdigest() != entry.value_sha256
    ):
        raise ReleaseVerificationError(f"{where}: its vectors do not match their sha256 in the manifest")
    hp = _hparams(where, entry)
    if entry.covariance is not None and entry.covariance.layer != entry.layer:
        raise ReleaseVerificationError(
            f"{where}: its key statistics are of layer {entry.covariance.layer}, not {entry.layer}"
        )
    try:
        request = EditRequest(entry.prompt, entry.subject, entry.target_new, entry.target_true, entry.relation_id)
    except FactStoreError as exc:
        raise ReleaseVerificationError(f"{where}: {exc}") from None
    asks = _checked_band(model, where, entry, hp, per_layer)
    return NewEdit(
        request=request,
        target_true=request.target_true,
        layer=entry.layer,
        module=entry.module,
        key=key_bytes,
        key_shape=key_shape,
        value=value_bytes,
        value_shape=value_shape,
        hparams=hp.to_json(),
        hparams_fingerprint=hp.fingerprint(),
        covariance_id=None,
        metrics=dict(entry.metrics),
        requested_by="import",
        note=entry.note,
        band=asks,
    )


def _checked_band(
    model: PreTrainedModel,
    where: str,
    entry: ManifestEdit,
    hp: ROMEHyperParams,
    per_layer: list[tuple[int, torch.Tensor, torch.Tensor]],
) -> tuple[LayerAsk, ...]:
    """A band edit's per-layer vectors: the layers its hyperparameters give, shapes of those
    layers, finite, matching their sha256, with the C of each layer below of its own C's spec."""
    if not entry.band and hp.band == 1:
        if entry.band_covariances:  # each would be fetched or computed, for nothing
            raise ReleaseVerificationError(f"{where}: it lists the key statistics of a band it does not have")
        return ()
    if not entry.band or hp.band == 1 or entry.band != spread_layers(entry.layer, hp.band):
        raise ReleaseVerificationError(
            f"{where}: its band {entry.band[:8]} is not the {hp.band} layers ending at {entry.layer}"
        )
    asks = []
    for layer, key, target in per_layer:
        d_model, d_ff = arch.down_proj_weight(model, layer).shape
        for name, tensor, want in (("key", key, d_ff), ("target", target, d_model)):
            if tensor.dtype != torch.float32 or list(tensor.shape) != [want] or not torch.isfinite(tensor).all():
                raise ReleaseVerificationError(
                    f"{where}: its {name} of layer {layer} is not a finite float32 vector of {want}"
                )
        asks.append(LayerAsk(layer, to_bytes(key)[0], to_bytes(target)[0]))
    if band_sha256(tuple(asks)) != entry.band_sha256:
        raise ReleaseVerificationError(f"{where}: its per-layer vectors do not match their sha256 in the manifest")
    own = entry.covariance
    below = [layer for layer in entry.band if layer != entry.layer]
    wanted = [(layer, own.corpus_sha256, own.tokens, own.dtype) for layer in below] if own else None
    if wanted != [(c.layer, c.corpus_sha256, c.tokens, c.dtype) for c in entry.band_covariances]:
        raise ReleaseVerificationError(
            f"{where}: the key statistics of its band are not those of its own layer's corpus and size"
        )
    return tuple(asks)


def _hparams(where: str, entry: ManifestEdit) -> ROMEHyperParams:
    try:
        hp = ROMEHyperParams.from_json(entry.hparams)
    except (TypeError, ValueError):
        raise ReleaseVerificationError(f"{where}: its hyperparameters are not factstore's") from None
    if hp.layer != entry.layer or hp.fingerprint() != entry.hparams_fingerprint:
        raise ReleaseVerificationError(f"{where}: its hyperparameters do not match their layer or fingerprint")
    return hp


def _spec(ref: ModelRef, loaded: LoadedModel, info: CovarianceInfo) -> stats.StatsSpec:
    """The spec of a C the release recorded, on this machine's model."""
    module = arch.down_proj_name(loaded.model, info.layer)
    return stats.StatsSpec(ref.identity, info.layer, module, info.corpus_sha256, info.tokens, info.dtype)


def _cov_key(ref: ModelRef, loaded: LoadedModel, info: CovarianceInfo | None) -> str | None:
    return None if info is None else _spec(ref, loaded, info).key()


@dataclass(frozen=True, slots=True)
class _Wanted:
    """One C the release's edits used, as this machine names it."""

    info: CovarianceInfo
    spec: stats.StatsSpec
    dim: int  # the layer's key width


Found = tuple[Covariance, torch.Tensor]  # the C record and its matrix (d_ff, d_ff) float32


def _covariances(
    loaded: LoadedModel,
    ref: ModelRef,
    infos: list[CovarianceInfo],
    progress: Reporter,
    shipped: ShippedStats | None = None,
    own: Sequence[Covariance] = (),
) -> dict[str, Found]:
    """cache key -> (C record, matrix) for every distinct C the new edits used, resolved in order:
    this machine's cache when its file has the release's sha256; else the file the release
    shipped (checked); else this machine's C of the spec whatever its sha256 (another machine's
    rounding or a merge: the rebuild's byte comparison judges it); else computed on the
    unedited base the way the release recorded it."""
    out: dict[str, Found] = {}
    for info in infos:
        spec = _spec(ref, loaded, info)
        if spec.key() in out:
            continue
        wanted = _Wanted(info, spec, arch.down_proj_weight(loaded.model, info.layer).shape[1])
        hit = stats.cached(spec)  # keyed by all of the spec
        if hit is not None and hit.sha256 == info.sha256:
            out[spec.key()] = _found(wanted, hit)
            continue
        out[spec.key()] = (
            (_shipped(wanted, loaded, shipped, own, progress) if shipped is not None else None)
            or (_found(wanted, hit) if hit is not None else None)
            or _computed(wanted, loaded, progress)
        )
    return out


def _found(wanted: _Wanted, hit: stats.StatsFile) -> Found:
    info = wanted.info
    record = Covariance(
        0,
        info.layer,
        wanted.spec.module,
        info.corpus,
        info.corpus_sha256,
        hit.tokens,
        info.dtype,
        str(hit.path),
        hit.sha256,
    )
    return record, stats.load_matrix(hit.path, hit.sha256).float()


def _shipped(
    wanted: _Wanted, loaded: LoadedModel, shipped: ShippedStats, own: Sequence[Covariance], progress: Reporter
) -> Found | None:
    """The C file the release shipped: its sha256, its shape, and this model's keys on local text checked."""
    info = wanted.info
    source = shipped(info.sha256, stats.max_file_bytes(wanted.dim, info.dtype))
    if source is None:
        return None
    fresh = not stats.shipped_path(info.sha256).exists()  # only a file this import brought is removed
    try:
        hit = stats.install_shipped(source, info.sha256, wanted.spec, wanted.dim)
        sample = sample_corpus(own, info.corpus, info.corpus_sha256)
        what = f"the shipped key statistics of layer {info.layer}"
        check_installed(hit.path, loaded, info.layer, sample, what, fresh, progress)
    except FactStoreError as exc:
        raise ReleaseVerificationError(str(exc)) from None
    return _found(wanted, hit)


def _computed(wanted: _Wanted, loaded: LoadedModel, progress: Reporter) -> Found:
    """C computed here, on a starter corpus only (a release never makes factstore read a local
    file), of at most MAX_STATS_TOKENS; the corpus must be the one the release read."""
    info = wanted.info
    if not is_starter_corpus(info.corpus):
        raise ReleaseVerificationError(
            f"the release's key statistics come from {info.corpus[:60]!r}, which is not a starter corpus, and this machine does not have them"
        )
    if info.tokens > MAX_STATS_TOKENS:
        raise ReleaseVerificationError(
            f"the release asks for key statistics over {info.tokens} tokens, more than {MAX_STATS_TOKENS}"
        )
    corpus = load_corpus(info.corpus, progress)
    if corpus.sha256 != info.corpus_sha256:
        raise ReleaseVerificationError(
            f"the release's corpus {info.corpus} differs from this machine's (sha256 {corpus.sha256[:12]}...)"
        )
    spec = stats.stats_spec(wanted.spec.identity, loaded.model, info.layer, corpus, info.tokens, info.dtype)
    result = stats.compute(loaded.model, loaded.tokenizer, spec, corpus, progress)
    return stats.covariance_record(result, corpus), stats.load_matrix(result.path, result.sha256).float()


@dataclass(frozen=True, slots=True)
class _Imported:
    """The release being imported: its pinned base (REF, loaded here) and its checked manifest."""

    ref: ModelRef
    loaded: LoadedModel
    manifest: Manifest


class _ReleaseMatrices:
    """C (and its names moment) by an edit's handle while a release is verified: a release's C by
    its key in COVARIANCES, the store's by its id."""

    def __init__(
        self,
        store: Store,
        covariances: dict[str, tuple[Covariance, torch.Tensor]],
        identity: str,
        model: PreTrainedModel,
    ) -> None:
        self.store, self.covariances, self.identity, self.model = store, covariances, identity, model
        self.in_store = MatrixCache(store.get_covariance)
        self._names: dict[str, torch.Tensor] = {}

    def matrix(self, handle: int | str | None) -> torch.Tensor:
        return self.covariances[handle][1] if isinstance(handle, str) else self.in_store(handle)

    def names(self, handle: int | str | None) -> torch.Tensor:
        """The names moment of the C file of HANDLE (band_names_weight; weights/band.held)."""
        if not isinstance(handle, str):
            return self.in_store.names(handle)
        if handle not in self._names:
            record = self.covariances[handle][0]
            found = stats.load_names(Path(record.path), record.sha256)  # the bytes C was checked in
            if found is None:
                raise ReleaseVerificationError(str(stats.names_missing(Path(record.path))))
            self._names[handle] = found.float()
        return self._names[handle]

    def layer_handle(self, edit: LoggedEdit[int | str | None], layer: int) -> int | str | None:
        """The handle of LAYER's C with the spec of the edit's own C (the release's, or the store's for local edits)."""
        if layer == edit.layer:
            return edit.covariance_id
        handle = edit.covariance_id
        own = (
            self.covariances[handle][0]
            if isinstance(handle, str)
            else self.store.get_covariance(handle)
            if handle
            else None
        )
        if own is None:
            raise ReleaseVerificationError(f"the edit of {edit.subject[:60]!r} has no key statistics")
        key = stats.spec_like(own, self.identity, self.model, layer).key()
        if key in self.covariances:
            return key
        found = self.store.get_covariance_by_key(key)
        if found is None:  # a local edit's, computed when it was registered
            raise ReleaseVerificationError(
                f"this store lacks the key statistics of layer {layer} its own band edits were compiled with"
            )
        return found.id

    def layer_matrix(self, edit: LoggedEdit[int | str | None], layer: int) -> torch.Tensor:
        return self.matrix(self.layer_handle(edit, layer))

    def layer_names(self, edit: LoggedEdit[int | str | None], layer: int) -> torch.Tensor:
        return self.names(self.layer_handle(edit, layer))

    def band(self, edit: LoggedEdit[int | str | None], layer: int) -> torch.Tensor:
        """What the edits' band solve on LAYER holds its update to (weights/band.held)."""
        handle = self.layer_handle(edit, layer)
        return band.held(self.matrix(handle), lambda: self.names(handle), band.names_weight(edit))


def _check_rebuild(
    store: Store,
    release: _Imported,
    local: list[StoredEdit],
    new: list[tuple[NewEdit, str | None]],
    covariances: dict[str, tuple[Covariance, torch.Tensor]],
    progress: Reporter = SILENT,
) -> None:
    """Each imported edit must be what its label says (release/claims.py: its key, and what its
    update does on its own head), and the pulled weights a compile of the imported log on the
    pinned base: replay the log here and compare the weight files byte for byte (compiles are
    deterministic); the edits that took must still take on those weights."""
    ref, loaded, manifest = release.ref, release.loaded, release.manifest
    last = local[-1].seq if local else 0
    imported = [ImportedEdit.of(edit, last + i, len(local) + i, key) for i, (edit, key) in enumerate(new, start=1)]
    replayed: list[LoggedEdit[int | str | None]] = [*local, *imported]
    model = loaded.model

    found = _ReleaseMatrices(store, covariances, ref.identity, model)
    matrix, layer_matrix, layer_names, band_matrix = found.matrix, found.layer_matrix, found.layer_names, found.band
    banded = any(e.band for e in replayed)
    try:
        soft = band.settings(replayed, soft_settings("band"))
    except CompileError as exc:
        raise ReleaseVerificationError(f"{exc}") from None
    if manifest.mode == "band" and (manifest.soft_weight, manifest.soft_alpha) != soft:
        raise ReleaseVerificationError(
            f"the release's soft compile settings (weight {manifest.soft_weight}, alpha {manifest.soft_alpha}) are not "
            f"those its edits were registered with {soft}"
        )
    touched = {e.layer for e in replayed} | {a.layer for e in replayed for a in e.band}
    restore = Snapshot(model, touched).restore
    try:
        todo = {e.seq for e in imported}
        templates = _key_templates(manifest)
        if banded:  # the heads the edits were measured on are band compiles
            try:
                solve = claims.BandCompile(band_matrix, soft)
                judged = claims.check_band_heads(model, loaded.tokenizer, replayed, todo, templates, solve, progress)
            except (CompileError, NumericalError) as exc:  # crafted vectors that no solve can hold
                raise ReleaseVerificationError(str(exc)) from None
        else:
            judged = claims.check_heads(model, loaded.tokenizer, replayed, todo, templates, matrix, progress)
        restore()
        inputs = LayerInputs(loaded.tokenizer, templates, layer_matrix, layer_names)
        try:
            apply_edits(model, replayed, matrix, manifest.mode, inputs if manifest.mode == "band" else None)
        except NumericalError as exc:  # crafted vectors that no solve can hold
            raise ReleaseVerificationError(str(exc)) from None
        with tempfile.TemporaryDirectory(prefix="factstore-rebuild-") as tmp:
            layout.write_weights(model, Path(tmp))
            differ = sorted(p.name for p in Path(tmp).iterdir() if manifest.files.get(p.name) != file_sha256(p))
        holding = claims.still_taking(model, loaded.tokenizer, judged) if not differ else {}
    finally:
        restore()
    if differ:
        raise ReleaseVerificationError(
            f"the release's weights are not a compile of its own edit log on {manifest.base.revision[:19]}... "
            f"({', '.join(differ[:3])} differ)"
        )
    _check_holding(manifest.mode, holding, {e.seq: e.position for e in imported})


def _key_templates(manifest: Manifest) -> Callable[[LoggedEdit[Any]], list[str]]:
    by_fingerprint = {t.fingerprint: t.templates for t in manifest.context_templates}

    def templates(edit: LoggedEdit[Any]) -> list[str]:
        found = by_fingerprint.get(ROMEHyperParams.from_json(edit.hparams).templates_fingerprint(), {}).get("key")
        if found is None:
            raise ReleaseVerificationError(
                f"the release lacks the context templates of the edit of {edit.subject[:60]!r}"
            )
        return list(found)

    return templates


def _check_holding(mode: str, holding: dict[int, bool], positions: dict[int, int]) -> None:
    """The edits that took on their own head must take on the rebuilt release: all of them in
    the exact modes, the compile's minimum share in a soft mode. HOLDING: seq -> still takes;
    POSITIONS: seq -> place in the replayed log."""
    failing = sorted(positions[seq] for seq, ok in holding.items() if not ok)
    if not failing:
        return
    if mode in SOFT_MODES and held_share(len(failing), len(holding)) >= MIN_EFFICACY:
        return
    named = ", ".join(str(p) for p in failing[:5])
    raise ReleaseVerificationError(
        f"the release does not do what its log says: edit(s) {named} took on their own head but their prompt does "
        f"not prefer the new object on the release's weights ({len(failing)} of {len(holding)})"
    )


@dataclass(frozen=True, kw_only=True)
class ImportedEdit(LoggedEdit[str | None]):
    """An edit of a pulled release before it is stored, as replay and the claim checks read it:
    its C is named by the release's key statistics key."""

    position: int  # its place in the replayed log (1-based): how a message names it

    @classmethod
    def of(cls, edit: NewEdit, seq: int, position: int, stats_key: str | None) -> ImportedEdit:
        """EDIT as the SEQ-th of the replayed log (after the store's own edits), at POSITION."""
        req, digest = edit.request, lambda data: hashlib.sha256(data).hexdigest()
        return cls(
            seq=seq, prompt=req.prompt, subject=req.subject, target_new=req.target_new,
            target_true=edit.target_true, relation_id=req.relation_id, layer=edit.layer, module=edit.module,
            key=edit.key, key_shape=edit.key_shape, key_sha256=digest(edit.key),
            value=edit.value, value_shape=edit.value_shape, value_sha256=digest(edit.value),
            hparams=edit.hparams, covariance_id=stats_key, band=edit.band, position=position,
        )  # fmt: skip

    @property
    def label(self) -> str:
        return f"edit {self.position}"
