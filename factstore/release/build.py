"""Compile: the active edit log of a base model, replayed onto its checkpoint, written as a
release folder (weights, config, tokenizer, model card, edit vectors, manifest) and scored on
its own edits. Deterministic: the same log gives byte-identical files."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors
import torch
from transformers import PreTrainedModel

from factstore import config
from factstore.analysis.metrics import aggregate, score_records
from factstore.domain import (
    BaseModel,
    Covariance,
    LoggedEdit,
    NewRelease,
    Record,
    Release,
    StoredEdit,
    band_sha256,
    check_alias,
)
from factstore.errors import CompileError, ReleaseVerificationError
from factstore.files import file_sha256, staged_folder, usable_folder
from factstore.options import CompileOptions
from factstore.progress import SILENT, Reporter
from factstore.release import card, health, layout
from factstore.release.manifest import Manifest
from factstore.release.scoring import RELEASE_PREFIX_SEED, RELEASE_PREFIXES, release_prefixes, release_records
from factstore.rome.edit import Snapshot
from factstore.rome.hparams import ROMEHyperParams
from factstore.storage.store import Store
from factstore.weights import assets, checkpoints, stats
from factstore.weights.band import vector
from factstore.weights.checkpoints import LoadedModel
from factstore.weights.corpus import DEFAULT_CORPUS
from factstore.weights.replay import (
    EXACT_MODES,
    JOINT_RIDGE,
    LAYERED_MODES,
    NULL_SPACE_THRESHOLD,
    SOFT_MODES,
    apply_edits,
    check_mode,
    constraint_errors,
    default_mode,
    edit_vectors,
    soft_settings,
    tolerance,
    touched_layers,
)
from factstore.weights.spread import LOWER_RIDGE, SPREAD_LAYERS, LayerInputs
from factstore.weights.stats import MatrixCache

log = logging.getLogger(__name__)


def log_entries(edits: Sequence[StoredEdit]) -> list[dict]:
    return [
        {
            "id": e.id,
            "seq": e.seq,
            "layer": e.layer,
            "key_sha256": e.key_sha256,
            "value_sha256": e.value_sha256,
            **({"band_sha256": band_sha256(e.band)} if e.band else {}),  # single-layer logs hash as before
        }
        for e in edits
    ]


MIN_EFFICACY = 0.95  # soft modes: the share of edits that must hold on the release (compile --min-efficacy)


def held_share(failing: int, judged: int) -> float:
    """The share of JUDGED edits (those that took) that still hold when FAILING do not."""
    return 1 - failing / judged if judged else 1.0


def verify(
    model: PreTrainedModel,
    edits: Sequence[StoredEdit],
    mode: str,
    prefers_new: dict[int, bool],
    min_efficacy: float = MIN_EFFICACY,
) -> list[int]:
    """Refuse a compiled model on which an edit's constraint (joint) or preference fails, or
    weights are not finite. prefers_new: edit id -> its prompt prefers the new target on the
    compiled model (the release's efficacy scores), for the edits that have an old target.
    A soft mode holds no constraint exactly: it is refused only when fewer than MIN_EFFICACY
    of the edits that took when registered still take. Returns the ids of edits that do not."""
    if not layout.finite(model):
        raise CompileError("the compiled weights are not finite; nothing was written")
    errors = constraint_errors(model, edits) if mode in EXACT_MODES else {}  # sequential, spread: checked as they go
    layers = {e.id: e.layer for e in edits}
    bad = {i: f"constraint error {err:.2g}" for i, err in errors.items() if not err <= tolerance(model, layers[i])}
    # An edit that took when it was registered (new target preferred on the head model) must
    # still take on the compiled one; one that never took cannot be held against the compile.
    took = [
        e for e in edits if e.target_true and e.metrics.get("prob_new_after", 0) > e.metrics.get("prob_true_after", 1)
    ]
    failing = [e.id for e in took if not prefers_new[e.id]]
    if mode in SOFT_MODES:
        held = held_share(len(failing), len(took))
        if held < min_efficacy:
            raise CompileError(
                f"compile refused: {len(failing)} of {len(took)} edits do not hold on the {mode} compile "
                f"({held:.1%} hold, --min-efficacy {min_efficacy:.0%}); retract some, or compile with a lower "
                "--min-efficacy; nothing was written"
            )
        return failing
    bad.update({i: "prompt prefers the old target" for i in failing if i not in bad})
    if bad:
        detail = "; ".join(f"edit {i}: {why}" for i, why in sorted(bad.items()))
        raise CompileError(
            f"compile refused, these edits do not hold on the compiled model: {detail}. Retract them"
            f"{'' if mode == 'sequential' else ' or use --mode sequential'}; nothing was written"
        )
    return []


class _Laps:
    """Seconds per phase of a compile, written into a caller's dict."""

    def __init__(self, into: dict[str, float] | None) -> None:
        self.into = into if into is not None else {}
        self.start = time.perf_counter()

    def __call__(self, phase: str) -> None:
        now = time.perf_counter()
        self.into[phase] = self.into.get(phase, 0.0) + now - self.start
        self.start = now


def build(
    store: Store,
    alias: str,
    options: CompileOptions = CompileOptions(),
    *,
    device: str | None = None,
    timings: dict[str, float] | None = None,
    progress: Reporter = SILENT,
) -> tuple[Release, bool]:
    """Compile the active edit log of ALIAS into a release folder. Returns (release, created).

    An unchanged log reuses its release (checked against its manifest); with options.out it is
    built again there, as the same version (no new release is recorded). options.check=False
    skips refusing edits that do not hold (benchmarks measure how edits fare instead); timings,
    when given, receives seconds per phase (load, apply, score, write).
    """
    if options.mode is not None:
        check_mode(options.mode)  # before the model is loaded
    base = store.get_base_model(alias)
    target = usable_folder(options.out) if options.out else None
    with store.model_lock(base.id):  # two compiles of one model run one after the other; the second may reuse
        return _build(store, base, options, target, device, _Laps(timings), progress)


def current_log_sha256(store: Store, alias: str, mode: str | None = None) -> str:
    """What a compile of ALIAS's active log in MODE (None: the log's default) would be keyed by."""
    base = store.get_base_model(alias)
    edits = store.list_edits(base.id, "active")
    return layout.edit_log_sha256(base.identity, mode or default_mode(edits), log_entries(edits))


def _build(
    store: Store,
    base: BaseModel,
    options: CompileOptions,
    target: Path | None,
    device: str | None,
    lap: _Laps,
    progress: Reporter,
) -> tuple[Release, bool]:
    """TARGET: options.out, checked usable (None: the release's own folder under FACTSTORE_HOME)."""
    edits = store.list_edits(base.id, "active")
    mode = options.mode or default_mode(edits)
    least = MIN_EFFICACY if options.min_efficacy is None else options.min_efficacy
    check = least if options.check else None  # the soft modes' minimum efficacy, or None to refuse nothing
    log_sha = layout.edit_log_sha256(base.identity, mode, log_entries(edits))
    latest = store.get_latest_release(base.id)
    unchanged = latest if latest and latest.edit_log_sha256 == log_sha else None
    if unchanged and target is None and Path(unchanged.path, layout.MANIFEST).exists():
        checked_folder(unchanged)
        return unchanged, False
    lap.start = time.perf_counter()  # waiting for the lock is not compile time
    loaded = checkpoints.load(base.source, expected=base.revision, device=device, progress=progress, dtype=base.dtype)
    lap("load")
    if unchanged and target is None and unchanged.scores is not None:
        rebuilt = _rebuilt_here(store, base, loaded, unchanged, edits, lap)
        if rebuilt is not None:
            return rebuilt, False
    scores = _compile_in_memory(store, base, loaded, edits, mode, check, lap)
    compiled = _Compiled(edits, mode, log_sha, scores)
    if unchanged and target:
        _write_release(store, base, loaded, compiled, target)
        lap("write")
        return unchanged, False
    version = store.get_next_release_version(base.id)
    final = target or _release_folder(base.alias, version)
    manifest_sha = _write_release(store, base, loaded, compiled, final)
    release = store.create_release(
        base.id,
        version,
        NewRelease(
            mode=mode,
            edit_log_sha256=log_sha,
            manifest_sha256=manifest_sha,
            path=str(final),
            edit_ids=[e.id for e in edits],
            scores=scores,
        ),
    )
    lap("write")
    return release, True


def _rebuilt_here(
    store: Store, base: BaseModel, loaded: LoadedModel, release: Release, edits: Sequence[StoredEdit], lap: _Laps
) -> Release | None:
    """RELEASE, whose folder is not on this machine (built by another host, or removed), written
    again here as the same version (its folder recorded): the compile is deterministic and the
    scores are the recorded ones, so the manifest must be the recorded one byte for byte. None
    when it is not (another factstore or torch, templates added since): LOADED is the base
    model again and nothing is kept, so the caller compiles a new version."""
    inputs = spread_inputs(store, base, loaded.model, loaded.tokenizer) if release.mode in LAYERED_MODES else None
    with Snapshot(loaded.model, touched_layers(edits, release.mode)):
        apply_edits(loaded.model, edits, MatrixCache(store.get_covariance), release.mode, inputs)
        lap("apply")
        final = _release_folder(base.alias, release.version)
        compiled = _Compiled(edits, release.mode, release.edit_log_sha256, release.scores or {})
        written = _write_release(store, base, loaded, compiled, final)
    lap("write")
    if written != release.manifest_sha256:
        log.info("v%d written here differs from its recorded manifest: compiling a new version", release.version)
        shutil.rmtree(final)
        return None
    return store.set_release_path(release.id, str(final))


def checked_folder(release: Release) -> Manifest:
    """A built release's folder, checked against its manifest (and the manifest against the
    store) before it is reused or published: release folders are plain files a user can change."""
    folder = Path(release.path)
    try:
        manifest = layout.verify_folder(folder)
    except ReleaseVerificationError as exc:
        raise CompileError(
            f"release v{release.version} at {folder} was changed after it was built ({exc}); move the folder away and compile again"
        ) from None
    if file_sha256(folder / layout.MANIFEST) != release.manifest_sha256:
        raise CompileError(
            f"the manifest of release v{release.version} at {folder} was changed after it was built; move the folder away and compile again"
        )
    return manifest


def _compile_in_memory(
    store: Store,
    base: BaseModel,
    loaded: LoadedModel,
    edits: Sequence[StoredEdit],
    mode: str,
    check: float | None,
    lap: _Laps,
) -> dict:
    """Apply the log to the loaded base model, score the release on its own edits, and refuse
    it (check) when an edit does not hold. Returns the release's scores."""
    model, tok = loaded.model, loaded.tokenizer
    judged = [e for e in edits if e.target_true]  # an edit needs its old target to be judged
    records = _release_records(store, base, loaded, judged)  # on the unedited model
    text, base_health = health.measured(store, base.id, edits, model, tok)
    lap("score")
    inputs = spread_inputs(store, base, model, tok) if mode in LAYERED_MODES else None
    apply_edits(model, edits, MatrixCache(store.get_covariance), mode, inputs)
    lap("apply")
    after = score_records(model, tok, records)  # one record per judged edit
    prefers = {e.id: s.efficacy[0] for e, s in zip(judged, after)}
    failing = verify(model, edits, mode, prefers, check) if check is not None else []
    checkup = health.report(base_health, health.measure(model, tok, text), text) if text else base_health
    lap("score")
    return {
        **aggregate(after),
        **({"edits_not_holding": len(failing)} if mode in SOFT_MODES else {}),
        "health": checkup,
    }


def _release_folder(alias: str, version: int) -> Path:
    """FACTSTORE_HOME/releases/ALIAS/vN. A folder already there (a compile killed after its rename
    and before its row, or another store sharing FACTSTORE_HOME) is moved aside, never emptied."""
    final = config.releases_dir() / check_alias(alias) / f"v{version}"
    if final.exists() and (not final.is_dir() or any(final.iterdir())):
        aside = final.with_name(f"{final.name}.moved-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
        final.rename(aside)
    return final


@dataclass(frozen=True, slots=True)
class _Compiled:
    """A log compiled in a mode: what a release folder is written from, beside the weights."""

    edits: Sequence[StoredEdit]
    mode: str
    log_sha256: str  # the log's identity in that mode (layout.edit_log_sha256)
    scores: dict


def _write_release(store: Store, base: BaseModel, loaded: LoadedModel, compiled: _Compiled, final: Path) -> str:
    """Write the release folder through a staged folder renamed into place; returns the manifest's sha256."""
    edits, mode, scores = compiled.edits, compiled.mode, compiled.scores
    with staged_folder(final) as tmp:
        known = layout.write_weights(
            loaded.model, tmp, layout.edited_files(touched_layers(edits, mode)), _stable_files(base.identity)
        )
        layout.write_model_config(loaded.model, loaded.tokenizer, tmp)
        (tmp / "README.md").write_text(card.render(base, mode, edits, scores))
        layout.write_edit_vectors(
            tmp,
            [edit_vectors(e) for e in edits],
            [[(a.layer, vector(a.key), vector(a.target)) for a in e.band] for e in edits],
        )
        manifest = _manifest(store, base, loaded.model, mode, edits, compiled.log_sha256)
        return layout.write_manifest(tmp, {**manifest, "scores": scores}, known)


_PREFIX_FINGERPRINT = hashlib.sha256(
    json.dumps(["release-prefixes", RELEASE_PREFIX_SEED, RELEASE_PREFIXES]).encode()
).hexdigest()


def _release_records(store: Store, base: BaseModel, loaded: LoadedModel, edits: Sequence[StoredEdit]) -> list[Record]:
    """The records a release is scored on (EDITS all have an old target); their held-out
    prefixes are sampled once per base model and kept with the context templates (so they
    travel in the manifest too)."""
    requests = [e.request() for e in edits]
    if not requests:
        return []
    stored = store.get_context_templates(base.id, _PREFIX_FINGERPRINT)
    if stored is None:
        prefixes = release_prefixes(loaded.model, loaded.tokenizer)
        stored = store.create_context_templates(
            base.id, _PREFIX_FINGERPRINT, seed=RELEASE_PREFIX_SEED, templates={"prefixes": prefixes}
        )
    return release_records(loaded.model, loaded.tokenizer, requests, stored["prefixes"])


def _stable_files(revision: str) -> layout.StableFiles:
    """The per-base cache of unedited weight files (keyed by weights identity and serialiser)."""
    key = hashlib.sha256(
        f"{revision}|safetensors {safetensors.__version__}|layout {layout.LAYOUT_VERSION}".encode()
    ).hexdigest()[:32]
    return layout.StableFiles(config.cache_dir() / "release-files" / key)


def _covariance_entry(store: Store, cov_id: int | None) -> dict | None:
    """How an edit's C was computed, so an importer can recompute (and compare) it."""
    if cov_id is None:
        return None
    c = store.get_covariance(cov_id)
    corpus = (
        c.corpus if c.corpus.startswith(assets.PREFIX) else Path(c.corpus).name
    )  # never a local path in published files
    return {
        "layer": c.layer,
        "corpus": corpus,
        "corpus_sha256": c.corpus_sha256,
        "tokens": c.tokens,
        "dtype": c.dtype,
        "sha256": c.sha256,
    }


def _published_source(base: BaseModel) -> str:
    return base.source if base.source.startswith(assets.PREFIX) or card.public_source(base) else "local"


def layer_covariance(
    store: Store, base: BaseModel, model: PreTrainedModel, edit: LoggedEdit[int | None], layer: int
) -> Covariance:
    """The C record of LAYER whose spec is the edit's own C's with the layer changed: what a
    band or spread compile reads below an edit's layer (one file, not "the newest")."""
    own = store.get_covariance(edit.covariance_id) if edit.covariance_id is not None else None
    if own is not None:
        found = store.get_covariance_by_key(stats.spec_like(own, base.identity, model, layer).key())
        if found is not None and Path(found.path).exists():
            return found
    tokens = own.tokens if own else ROMEHyperParams.from_json(edit.hparams).stats_tokens
    corpus = "" if own is None or own.corpus == DEFAULT_CORPUS else f" --corpus {own.corpus}"
    raise CompileError(
        f"this compile needs key statistics of layer {layer}: run `factstore stats compute --model {base.alias} "
        f"--layer {layer} --tokens {tokens}{corpus}`; nothing was written"
    )


def _band_entry(store: Store, base: BaseModel, model: PreTrainedModel, edit: StoredEdit) -> dict:
    """A band edit's manifest fields (none for a single-layer edit)."""
    if not edit.band:
        return {}
    below = [a.layer for a in edit.band if a.layer != edit.layer]
    return {
        "band": [a.layer for a in edit.band],
        "band_sha256": band_sha256(edit.band),
        "band_covariances": [
            _covariance_entry(store, layer_covariance(store, base, model, edit, layer).id) for layer in below
        ],
    }


def _manifest(
    store: Store, base: BaseModel, model: PreTrainedModel, mode: str, edits: Sequence[StoredEdit], log_sha: str
) -> dict:
    """Everything a teammate needs to continue the lineage: base identity, templates, the log."""
    return {
        # a local path is never published: the source is the Hub id or starter asset, else "local"
        "base": {
            "source": _published_source(base),
            "revision": base.revision,
            "model_type": base.model_type,
            "license": base.license,
            **({"dtype": base.dtype} if base.dtype != "float32" else {}),
        },  # float32 releases stay readable by older factstore
        "mode": mode,
        "joint_ridge": JOINT_RIDGE if mode in EXACT_MODES else None,
        **({"null_space_threshold": NULL_SPACE_THRESHOLD} if mode == "null-space" else {}),
        **({"spread_layers": SPREAD_LAYERS} if mode == "spread" else {}),
        **({"spread_lower_ridge": LOWER_RIDGE} if mode == "spread" else {}),
        **(dict(zip(("soft_weight", "soft_alpha"), soft_settings(mode, edits))) if mode in SOFT_MODES else {}),
        "edit_log_sha256": log_sha,
        "context_templates": store.list_context_templates(base.id),
        "edits": [
            {
                "seq": e.seq,
                "prompt": e.prompt,
                "subject": e.subject,
                "target_new": e.target_new,
                "target_true": e.target_true,
                "relation_id": e.relation_id,
                "layer": e.layer,
                "module": e.module,
                "key_sha256": e.key_sha256,
                "key_shape": list(e.key_shape),
                "value_sha256": e.value_sha256,
                "value_shape": list(e.value_shape),
                "hparams": e.hparams,
                "hparams_fingerprint": e.hparams_fingerprint,
                "covariance": _covariance_entry(store, e.covariance_id),
                "note": e.note,
                "metrics": {k: v for k, v in e.metrics.items() if k.startswith("prob_")},
                **_band_entry(store, base, model, e),
            }
            for e in edits
        ],
    }


def spread_inputs(store: Store, base: BaseModel, model: PreTrainedModel, tokenizer: Any) -> LayerInputs[int | None]:
    """What the spread mode reads besides the log: each edit's key context templates (stored per
    base model) and C of the layers below its own, of the same corpus and size (recorded, on disk)."""
    matrices = MatrixCache(store.get_covariance)

    def templates(edit: LoggedEdit[Any]) -> list[str]:
        stored = store.get_context_templates(base.id, ROMEHyperParams.from_json(edit.hparams).templates_fingerprint())
        if stored is None:
            raise CompileError(f"the context templates of {edit.label} are missing from the store; nothing was written")
        return list(stored["key"])

    def covariance(edit: LoggedEdit[int | None], layer: int) -> torch.Tensor:
        return matrices(layer_covariance(store, base, model, edit, layer).id)

    def names(edit: LoggedEdit[int | None], layer: int) -> torch.Tensor:
        own = layer == edit.layer and edit.covariance_id is not None
        return matrices.names(edit.covariance_id if own else layer_covariance(store, base, model, edit, layer).id)

    return LayerInputs(tokenizer=tokenizer, templates=templates, covariance=covariance, names=names)
