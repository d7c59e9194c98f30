"""Replay an edit log onto a model: the log of (key, value, layer) is a set of constraints."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from factstore import arch
from factstore.domain import StoredEdit
from factstore.errors import CompileError
from factstore.evaluate import RELEASE_PREFIX_SEED, RELEASE_PREFIXES, release_prefixes, release_records
from factstore.rome.edit import add_delta
from factstore.rome.update import constraint_error, joint_delta, rank_one_delta_given
from factstore.vectors import from_bytes

MODES = ("joint", "sequential")
DEFAULT_MODE = "joint"
JOINT_RIDGE = 1e-6  # lambda relative to the mean diagonal of K^T C^-1 K
CONSTRAINT_TOLERANCE = 1e-3  # ||W k - v|| / ||v|| allowed after compiling

CovarianceLoader = Callable[[int | None], torch.Tensor]


def edit_vectors(edit: StoredEdit) -> tuple[torch.Tensor, torch.Tensor]:
    return from_bytes(edit.key, edit.key_shape, edit.key_sha256), from_bytes(edit.value, edit.value_shape, edit.value_sha256)


def _check_module(model: nn.Module, edit: StoredEdit) -> None:
    expected = arch.down_proj_name(model, edit.layer)
    if edit.module != expected:
        raise CompileError(f"edit {edit.id} rewrites {edit.module}, but this model's layer {edit.layer} is {expected}")


def apply_sequential(model: nn.Module, edits: Sequence[StoredEdit], covariance: CovarianceLoader) -> None:
    """Each edit's rank-one update in seq order: reproduces the model the edits were computed on.

    Each constraint holds right after its own update; later updates of the same layer move
    earlier keys' outputs (that drift is what joint mode avoids). C^-1 k does not depend on
    the weights, so it is solved up front for all keys that share a C.
    """
    ordered = sorted(edits, key=lambda e: e.seq)
    for edit in ordered:
        _check_module(model, edit)
    solved = _solved_keys(model, ordered, covariance)
    for edit in ordered:
        key, value = edit_vectors(edit)
        W, b = arch.down_proj_weight(model, edit.layer), arch.down_proj_bias(model, edit.layer)
        key, value = key.to(W.device), value.to(W.device)
        add_delta(model, edit.layer, rank_one_delta_given(W, b, key, value, solved[edit.id].to(W.device)))
        W = arch.down_proj_weight(model, edit.layer)  # after the update
        err = float(constraint_error(W, b, key.unsqueeze(1), value.unsqueeze(1))[0])
        if not err <= CONSTRAINT_TOLERANCE:
            raise CompileError(f"edit {edit.id} does not hold after its own update (constraint error {err:.2g}); nothing was written")


def _solved_keys(model: nn.Module, edits: Sequence[StoredEdit], covariance: CovarianceLoader) -> dict[int, torch.Tensor]:
    """edit id -> C^-1 k (in,) float64, one solve per C with every key as a column."""
    by_cov: dict[int | None, list[StoredEdit]] = defaultdict(list)
    for edit in edits:
        by_cov[edit.covariance_id].append(edit)
    solved = {}
    for cov_id, group in by_cov.items():
        device = arch.down_proj_weight(model, group[0].layer).device
        K = torch.stack([edit_vectors(e)[0] for e in group], dim=1).to(device, torch.float64)  # (in, n)
        U = torch.linalg.solve(covariance(cov_id).to(device, torch.float64), K)
        solved.update({e.id: U[:, i] for i, e in enumerate(group)})
    return solved


def apply_joint(model: nn.Module, edits: Sequence[StoredEdit], covariance: CovarianceLoader, ridge: float = JOINT_RIDGE) -> None:
    """All edits of a layer solved at once in float64: order-independent, none erases another."""
    by_layer: dict[int, list[StoredEdit]] = defaultdict(list)
    for edit in sorted(edits, key=lambda e: e.seq):
        _check_module(model, edit)
        by_layer[edit.layer].append(edit)
    for layer, group in sorted(by_layer.items()):
        keys, values = zip(*(edit_vectors(e) for e in group))
        W, b = arch.down_proj_weight(model, layer), arch.down_proj_bias(model, layer)
        K = torch.stack(keys, dim=1).to(W.device)  # (d_ff, n)
        V = torch.stack(values, dim=1).to(W.device)  # (d_model, n)
        C = covariance(group[-1].covariance_id).to(W.device)
        add_delta(model, layer, joint_delta(W, b, K, V, C, ridge))


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise CompileError(f"unknown compile mode {mode!r}; use one of {', '.join(MODES)}")


def apply_edits(model: nn.Module, edits: Sequence[StoredEdit], covariance: CovarianceLoader, mode: str = DEFAULT_MODE) -> None:
    check_mode(mode)
    if mode == "sequential":
        apply_sequential(model, edits, covariance)
    else:
        apply_joint(model, edits, covariance)


def constraint_errors(model: nn.Module, edits: Sequence[StoredEdit]) -> dict[int, float]:
    """edit id -> ||W k + b - v|| / ||v|| on the model as it is now."""
    errors = {}
    for edit in edits:
        key, value = edit_vectors(edit)
        W, b = arch.down_proj_weight(model, edit.layer), arch.down_proj_bias(model, edit.layer)
        err = constraint_error(W, b, key.unsqueeze(1).to(W.device), value.unsqueeze(1).to(W.device))
        errors[edit.id] = float(err[0])
    return errors


# building a release folder --------------------------------------------------------------

def log_entries(edits: Sequence[StoredEdit]) -> list[dict]:
    return [{"id": e.id, "seq": e.seq, "layer": e.layer, "key_sha256": e.key_sha256, "value_sha256": e.value_sha256} for e in edits]


def verify(model: nn.Module, edits: Sequence[StoredEdit], mode: str, prefers_new: dict[int, bool]) -> None:
    """Refuse a compiled model on which an edit's constraint (joint) or preference fails, or
    weights are not finite. prefers_new: edit id -> its prompt prefers the new target on the
    compiled model (the release's efficacy scores), for the edits that have an old target."""
    from factstore.layout import finite

    if not finite(model):
        raise CompileError("the compiled weights are not finite; nothing was written")
    errors = constraint_errors(model, edits) if mode == "joint" else {}  # sequential: checked per update
    bad = {i: f"constraint error {err:.2g}" for i, err in errors.items() if not err <= CONSTRAINT_TOLERANCE}
    # An edit that took when it was registered (new target preferred on the head model) must
    # still take on the compiled one; one that never took cannot be held against the compile.
    took = [e for e in edits if e.target_true and e.metrics.get("prob_new_after", 0) > e.metrics.get("prob_true_after", 1)]
    bad.update({e.id: "prompt prefers the old target" for e in took if not prefers_new[e.id] and e.id not in bad})
    if bad:
        detail = "; ".join(f"edit {i}: {why}" for i, why in sorted(bad.items()))
        raise CompileError(f"compile refused, these edits do not hold on the compiled model: {detail}. Retract them or use --mode sequential; nothing was written")


class _Laps:
    """Seconds per phase of a compile, written into a caller's dict."""

    def __init__(self, into: dict[str, float] | None) -> None:
        self.into = into if into is not None else {}
        self.start = time.perf_counter()

    def __call__(self, phase: str) -> None:
        now = time.perf_counter()
        self.into[phase] = self.into.get(phase, 0.0) + now - self.start
        self.start = now


def build(store, alias: str, mode: str = DEFAULT_MODE, out: str | None = None, device: str | None = None,  # type: ignore[no-untyped-def]
          check: bool = True, timings: dict[str, float] | None = None):
    """Compile the active edit log of ALIAS into a release folder. Returns (Release, created).

    check=False skips refusing edits that do not hold (benchmarks measure how edits fare
    instead); timings, when given, receives seconds per phase (load, apply, score, write).
    """
    from factstore import checkpoints, layout

    check_mode(mode)  # before the model is loaded
    base = store.base_model(alias)
    edits = store.edits(base.id, "active")
    log_sha = layout.edit_log_sha256(base.revision, mode, log_entries(edits))
    latest = store.latest_release(base.id)
    if out is None and latest and latest.edit_log_sha256 == log_sha and Path(latest.path, layout.MANIFEST).exists():
        return latest, False
    lap = _Laps(timings)
    loaded = checkpoints.load(base.source, expected=base.revision, device=device)
    lap("load")
    scores = _compile_in_memory(store, base, loaded, edits, mode, check, lap)
    version = store.next_release_version(base.id)
    final = _release_folder(alias, version, out)
    manifest_sha = _write_release(store, base, loaded, edits, mode, log_sha, scores, final)
    release = store.record_release(base.id, version, mode, log_sha, manifest_sha, str(final), [e.id for e in edits])
    lap("write")
    return release, True


def _compile_in_memory(store, base, loaded, edits: Sequence[StoredEdit], mode: str, check: bool, lap: _Laps) -> dict:  # type: ignore[no-untyped-def]
    """Apply the log to the loaded base model, score the release on its own edits, and refuse
    it (check) when an edit does not hold. Returns the release's scores."""
    from factstore import evaluate, stats

    model, tok = loaded.model, loaded.tokenizer
    judged = [e for e in edits if e.target_true]  # an edit needs its old target to be judged
    records = _release_records(store, base, model, tok, judged)  # on the unedited model
    lap("score")
    apply_edits(model, edits, stats.MatrixCache(store), mode)
    lap("apply")
    after = evaluate.score_records(model, tok, records)  # one record per judged edit
    if check:
        verify(model, edits, mode, {e.id: s.efficacy[0] for e, s in zip(judged, after)})
    lap("score")
    return evaluate.aggregate(after)


def _release_folder(alias: str, version: int, out: str | None) -> Path:
    from factstore import config

    final = Path(out).expanduser().resolve() if out else config.releases_dir() / alias / f"v{version}"
    if final.exists() and any(final.iterdir()):
        if out:
            raise CompileError(f"{final} exists and is not empty; choose another --out")
        shutil.rmtree(final)  # left by a compile killed after its rename and before its row
    return final


def _write_release(store, base, loaded, edits: Sequence[StoredEdit], mode: str, log_sha: str, scores: dict, final: Path) -> str:  # type: ignore[no-untyped-def]
    """Write the release folder through a staged folder renamed into place; returns the manifest's sha256."""
    from factstore import card, layout

    with layout.staged_folder(final) as tmp:
        known = layout.write_weights(loaded.model, tmp, layout.edited_files({e.layer for e in edits}), _stable_files(base.revision))
        layout.write_model_config(loaded.model, loaded.tokenizer, tmp)
        (tmp / "README.md").write_text(card.render(base, mode, edits, scores))
        layout.write_edit_vectors(tmp, [edit_vectors(e) for e in edits])
        return layout.write_manifest(tmp, {**_manifest(store, base, mode, edits, log_sha), "scores": scores}, known)


_PREFIX_FINGERPRINT = hashlib.sha256(json.dumps(["release-prefixes", RELEASE_PREFIX_SEED, RELEASE_PREFIXES]).encode()).hexdigest()


def _release_records(store, base, model, tokenizer, edits: Sequence[StoredEdit]) -> list:  # type: ignore[no-untyped-def]
    """The records a release is scored on (EDITS all have an old target); their held-out prefixes are sampled once per base
    model and kept with the context templates (so they travel in the manifest too)."""
    requests = [e.request() for e in edits]
    if not requests:
        return []
    stored = store.context_templates(base.id, _PREFIX_FINGERPRINT)
    if stored is None:
        prefixes = release_prefixes(model, tokenizer)
        stored = store.save_context_templates(base.id, _PREFIX_FINGERPRINT, RELEASE_PREFIX_SEED, {"prefixes": prefixes})
    return release_records(model, tokenizer, requests, stored["prefixes"])


def _stable_files(revision: str):  # type: ignore[no-untyped-def]
    """The per-base cache of unedited weight files (keyed by weights identity and serialiser)."""
    import safetensors

    from factstore import config, layout

    key = hashlib.sha256(f"{revision}|safetensors {safetensors.__version__}|layout {layout.LAYOUT_VERSION}".encode()).hexdigest()[:32]
    return layout.StableFiles(config.cache_dir() / "release-files" / key)


def _covariance_entry(store, cov_id: int | None) -> dict | None:  # type: ignore[no-untyped-def]
    """How an edit's C was computed, so an importer can recompute (and compare) it."""
    if cov_id is None:
        return None
    c = store.covariance_by_id(cov_id)
    return {"layer": c.layer, "corpus": c.corpus, "corpus_sha256": c.corpus_sha256, "tokens": c.tokens, "dtype": c.dtype, "sha256": c.sha256}


def _manifest(store, base, mode: str, edits: Sequence[StoredEdit], log_sha: str) -> dict:  # type: ignore[no-untyped-def]
    """Everything a teammate needs to continue the lineage: base identity, templates, the log."""
    return {
        "base": {"source": base.source, "revision": base.revision, "model_type": base.model_type, "license": base.license},
        "mode": mode,
        "joint_ridge": JOINT_RIDGE if mode == "joint" else None,
        "edit_log_sha256": log_sha,
        "context_templates": store.all_context_templates(base.id),
        "edits": [
            {
                "seq": e.seq, "prompt": e.prompt, "subject": e.subject, "target_new": e.target_new,
                "target_true": e.target_true, "relation_id": e.relation_id, "layer": e.layer, "module": e.module,
                "key_sha256": e.key_sha256, "key_shape": list(e.key_shape), "value_sha256": e.value_sha256,
                "value_shape": list(e.value_shape), "hparams": e.hparams, "hparams_fingerprint": e.hparams_fingerprint,
                "covariance": _covariance_entry(store, e.covariance_id), "note": e.note,
                "metrics": {k: v for k, v in e.metrics.items() if k.startswith("prob_")},
            }
            for e in edits
        ],
    }
