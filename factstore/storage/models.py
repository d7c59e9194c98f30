"""SQLAlchemy 2.0 typed ORM. Portable types only: one migration tree serves SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, DateTime, ForeignKey, Index, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

EDIT_STATUSES = ("pending", "computing", "failed", "active", "retracted", "superseded")
QUEUED_STATUSES = ("pending", "computing")  # a request not yet computed: no seq, key or value
COMPUTED_STATUSES = ("active", "retracted", "superseded")  # seq, key and value set: replayable
STATS_SHARD, STATS_MERGE = "stats-shard", "stats-merge"  # key statistics as jobs (worker/stats_jobs.py)
STATS_JOBS = (STATS_SHARD, STATS_MERGE)
JOB_KINDS = ("compile", "trace", "publish", *STATS_JOBS)
EVERY_WORKER_RUNS = ("compile", "trace")  # publish needs Hub credentials, statistics jobs a share
_SHARE_NEED = "a statistics share every worker reaches (FACTSTORE_STATS_SHARE) in its own environment"
JOB_NEEDS = {
    "publish": "Hub credentials (HF_TOKEN, or `hf auth login`) and FACTSTORE_PUBLISH_REPOS in its own environment",
    **dict.fromkeys(STATS_JOBS, _SHARE_NEED),
}
JOB_STATUSES = ("pending", "running", "done", "failed")
TOKEN_SCOPES = ("read", "write", "admin")  # each scope allows what the ones before it allow
RELEASE_STATUSES = ("built", "published")  # a failed publish stays built; rerunning it finishes the job


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class BaseModelRow(Base):
    """A base checkpoint pinned to exact weights. An alias is never re-pointed."""

    __tablename__ = "base_models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    alias: Mapped[str] = mapped_column(String(200), unique=True)
    source: Mapped[str] = mapped_column(String(1000))  # Hub id, local path or starter:NAME
    revision: Mapped[str] = mapped_column(String(100))  # Hub commit SHA or sha256:<hex> of the weights
    model_type: Mapped[str] = mapped_column(String(64))
    license: Mapped[str | None] = mapped_column(String(64))
    recommended_layer: Mapped[int | None] = mapped_column(Integer)  # from causal tracing, when run
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    dtype: Mapped[str] = mapped_column(
        String(16), server_default="float32"
    )  # loaded and edited in; part of the identity


class CovarianceStat(Base):
    """Where C for (model identity, layer, corpus, tokens, dtype) lives on disk; never the matrix itself."""

    __tablename__ = "covariance_stats"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    base_model_id: Mapped[int] = mapped_column(ForeignKey("base_models.id"))
    cache_key: Mapped[str] = mapped_column(String(64), unique=True)
    layer: Mapped[int] = mapped_column(Integer)
    module: Mapped[str] = mapped_column(String(200))
    corpus: Mapped[str] = mapped_column(String(1000))
    corpus_sha256: Mapped[str] = mapped_column(String(64))
    tokens: Mapped[int] = mapped_column(Integer)
    dtype: Mapped[str] = mapped_column(String(16))
    path: Mapped[str] = mapped_column(String(2000))
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ContextTemplateRow(Base):
    """Prefixes sampled once per base model and seed, so keys stay reproducible."""

    __tablename__ = "context_templates"
    __table_args__ = (UniqueConstraint("base_model_id", "fingerprint"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    base_model_id: Mapped[int] = mapped_column(ForeignKey("base_models.id"))
    fingerprint: Mapped[str] = mapped_column(String(64))  # sha256 of (seed, lengths)
    seed: Mapped[int] = mapped_column(Integer)
    templates: Mapped[dict[str, Any]] = mapped_column(JSON)  # {"key": [...], "value": [...]}
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class EditRow(Base):
    """One requested fact edit with everything needed to replay it without gradient work.

    A request starts `pending` (no seq, key or value), is `computing` while a worker holding the
    model's lease works on it, and ends `active` (seq, key and value set) or `failed` (error set).
    """

    __tablename__ = "edits"
    __table_args__ = (
        UniqueConstraint("base_model_id", "seq"),
        Index("ix_edits_base_status", "base_model_id", "status"),
        Index("ix_edits_request", "base_model_id", "request_sha256"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    base_model_id: Mapped[int] = mapped_column(ForeignKey("base_models.id"))
    seq: Mapped[int | None] = mapped_column(Integer)  # replay order, unique per base model; set when computed
    prompt: Mapped[str] = mapped_column(Text)
    subject: Mapped[str] = mapped_column(Text)
    target_new: Mapped[str] = mapped_column(Text)
    target_true: Mapped[str | None] = mapped_column(Text)
    relation_id: Mapped[str | None] = mapped_column(String(64))
    request_sha256: Mapped[str] = mapped_column(String(64))  # of (prompt, subject, target_new, relation)
    requested_layer: Mapped[str | None] = mapped_column(
        String(16)
    )  # what was asked: a number, "auto", or None (the default)
    layer: Mapped[int | None] = mapped_column(Integer)
    module: Mapped[str | None] = mapped_column(String(200))
    key: Mapped[bytes | None] = mapped_column(LargeBinary)  # float32 little-endian
    key_shape: Mapped[list[int] | None] = mapped_column(JSON)
    key_sha256: Mapped[str | None] = mapped_column(String(64))
    value: Mapped[bytes | None] = mapped_column(LargeBinary)  # float32 little-endian
    value_shape: Mapped[list[int] | None] = mapped_column(JSON)
    value_sha256: Mapped[str | None] = mapped_column(String(64))
    hparams: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    hparams_fingerprint: Mapped[str | None] = mapped_column(String(64))
    covariance_id: Mapped[int | None] = mapped_column(ForeignKey("covariance_stats.id"))
    status: Mapped[str] = mapped_column(String(16), default="active")
    supersedes_id: Mapped[int | None] = mapped_column(ForeignKey("edits.id"))
    requested_by: Mapped[str | None] = mapped_column(String(200))
    note: Mapped[str | None] = mapped_column(Text)
    retracted_by: Mapped[str | None] = mapped_column(String(200))  # who asked (token name or local user)
    retracted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text)  # why a failed request failed, one line
    claimed_by: Mapped[str | None] = mapped_column(String(200))  # the worker computing it
    attempts: Mapped[int] = mapped_column(
        Integer, default=0
    )  # claims so far: a request that keeps killing workers fails
    idempotency_sha256: Mapped[str | None] = mapped_column(
        String(64), unique=True
    )  # of (token name, endpoint, Idempotency-Key)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    base_model: Mapped[BaseModelRow] = relationship()
    covariance: Mapped[CovarianceStat | None] = relationship()
    band: Mapped[list[EditLayerRow]] = relationship(
        order_by="EditLayerRow.layer", lazy="select", cascade="all, delete-orphan"
    )


class EditLayerRow(Base):
    """What an edit of a band asks of one layer: at KEY (the layer's down-projection input for
    the subject, (d_ff,)), a change TARGET ((d,)) of the layer's output relative to the base
    weights; float32 little-endian. Measured once on the head when the edit was computed."""

    __tablename__ = "edit_layers"

    edit_id: Mapped[int] = mapped_column(ForeignKey("edits.id", ondelete="CASCADE"), primary_key=True)
    layer: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[bytes] = mapped_column(LargeBinary)
    target: Mapped[bytes] = mapped_column(LargeBinary)


class ApiToken(Base):
    """An HTTP API token: only its sha256 is kept (the token itself is shown once)."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    scope: Mapped[str] = mapped_column(String(16))
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class WorkerRow(Base):
    """A worker process, alive while its heartbeat is recent."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)  # host:pid:random
    models: Mapped[list[str]] = mapped_column(JSON)  # aliases it serves; empty: all
    kinds: Mapped[list[str] | None] = mapped_column(JSON)  # job kinds it runs; None: compile and trace (before 0007)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    stopped_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ModelLease(Base):
    """Which worker computes on a model's head, until when. One holder per model at a time."""

    __tablename__ = "model_leases"

    base_model_id: Mapped[int] = mapped_column(ForeignKey("base_models.id"), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class JobRow(Base):
    """Long work asked for over HTTP (a compile, a trace), done by a worker."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_status", "status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    base_model_id: Mapped[int] = mapped_column(ForeignKey("base_models.id"))
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    claimed_by: Mapped[str | None] = mapped_column(String(200))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    requested_by: Mapped[str | None] = mapped_column(String(200))
    idempotency_sha256: Mapped[str | None] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class JobFile(Base):
    """A file a job produced (a trace's PNG), kept in the database so any server can send it."""

    __tablename__ = "job_files"

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    media_type: Mapped[str] = mapped_column(String(64))
    data: Mapped[bytes] = mapped_column(LargeBinary)


class ReleaseRow(Base):
    __tablename__ = "releases"
    __table_args__ = (UniqueConstraint("base_model_id", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    base_model_id: Mapped[int] = mapped_column(ForeignKey("base_models.id"))
    version: Mapped[int] = mapped_column(Integer)
    mode: Mapped[str] = mapped_column(String(16))
    edit_log_sha256: Mapped[str] = mapped_column(String(64))
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(2000))
    hub_repo: Mapped[str | None] = mapped_column(String(200))
    hub_commit: Mapped[str | None] = mapped_column(String(64))
    tag: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="built")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    scores: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # NULL: built before 0005 (in its manifest)


class ReleaseEdit(Base):
    """Freezes which edits, in which order, a release contains."""

    __tablename__ = "release_edits"

    release_id: Mapped[int] = mapped_column(ForeignKey("releases.id"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    edit_id: Mapped[int] = mapped_column(ForeignKey("edits.id"))
