"""Rows to the torch-free value types of factstore.domain (no queries here)."""

from __future__ import annotations

from datetime import datetime, timezone
from functools import partial
from typing import TypeVar

from factstore.domain import BaseModel, Covariance, EditEntry, Job, LayerAsk, Release, StoredEdit
from factstore.storage.models import BaseModelRow, CovarianceStat, EditRow, JobRow, ReleaseRow

T = TypeVar("T")


def aware(moment: datetime) -> datetime:
    """SQLite gives back naive datetimes for what was stored as UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def iso(moment: datetime | None) -> str | None:
    return None if moment is None else aware(moment).isoformat()


def base(row: BaseModelRow) -> BaseModel:
    return BaseModel(
        id=row.id,
        alias=row.alias,
        source=row.source,
        revision=row.revision,
        model_type=row.model_type,
        license=row.license,
        recommended_layer=row.recommended_layer,
        created_at=iso(row.created_at) or "",
        dtype=row.dtype,
    )


def _computed(row: EditRow, value: T | None, what: str) -> T:
    if value is None:
        raise ValueError(f"edit {row.id} is {row.status}: it has no {what} (not computed)")
    return value


def edit(row: EditRow) -> StoredEdit:
    """A computed edit (active, retracted or superseded): every replay field is set."""
    c = partial(_computed, row)
    return StoredEdit(
        id=row.id,
        base_model_id=row.base_model_id,
        seq=c(row.seq, "seq"),
        prompt=row.prompt,
        subject=row.subject,
        target_new=row.target_new,
        target_true=row.target_true,
        relation_id=row.relation_id,
        layer=c(row.layer, "layer"),
        module=c(row.module, "module"),
        key=bytes(c(row.key, "key")),
        key_shape=tuple(c(row.key_shape, "key shape")),
        key_sha256=c(row.key_sha256, "key sha256"),
        value=bytes(c(row.value, "value")),
        value_shape=tuple(c(row.value_shape, "value shape")),
        value_sha256=c(row.value_sha256, "value sha256"),
        hparams=dict(c(row.hparams, "hparams")),
        hparams_fingerprint=c(row.hparams_fingerprint, "hparams fingerprint"),
        covariance_id=row.covariance_id,
        status=row.status,
        supersedes_id=row.supersedes_id,
        requested_by=row.requested_by,
        note=row.note,
        metrics=dict(row.metrics or {}),
        created_at=iso(row.created_at) or "",
        band=tuple(LayerAsk(a.layer, bytes(a.key), bytes(a.target)) for a in row.band),
    )


def entry(row: EditRow, alias: str) -> EditEntry:
    return EditEntry(
        id=row.id,
        model=alias,
        seq=row.seq,
        status=row.status,
        prompt=row.prompt,
        subject=row.subject,
        target_new=row.target_new,
        target_true=row.target_true,
        relation_id=row.relation_id,
        requested_layer=row.requested_layer,
        layer=row.layer,
        requested_by=row.requested_by,
        note=row.note,
        error=row.error,
        supersedes_id=row.supersedes_id,
        metrics=dict(row.metrics or {}),
        created_at=iso(row.created_at) or "",
        updated_at=iso(row.updated_at),
        retracted_by=row.retracted_by,
        retracted_at=iso(row.retracted_at),
    )


def covariance(row: CovarianceStat) -> Covariance:
    return Covariance(
        id=row.id,
        layer=row.layer,
        module=row.module,
        corpus=row.corpus,
        corpus_sha256=row.corpus_sha256,
        tokens=row.tokens,
        dtype=row.dtype,
        path=row.path,
        sha256=row.sha256,
        key=row.cache_key,
    )


def release(row: ReleaseRow, edit_ids: list[int]) -> Release:
    return Release(
        id=row.id,
        base_model_id=row.base_model_id,
        version=row.version,
        mode=row.mode,
        edit_log_sha256=row.edit_log_sha256,
        manifest_sha256=row.manifest_sha256,
        path=row.path,
        hub_repo=row.hub_repo,
        hub_commit=row.hub_commit,
        tag=row.tag,
        status=row.status,
        edit_ids=tuple(edit_ids),
        created_at=iso(row.created_at) or "",
        scores=row.scores,
    )


def job(row: JobRow, alias: str, files: list[str], waiting: str | None = None) -> Job:
    return Job(
        id=row.id,
        kind=row.kind,
        model=alias,
        params=dict(row.params),
        status=row.status,
        result=row.result,
        error=row.error,
        requested_by=row.requested_by,
        files=tuple(files),
        created_at=iso(row.created_at) or "",
        updated_at=iso(row.updated_at),
        waiting=waiting,
    )
