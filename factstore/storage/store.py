"""Every query and command on the database. No SQL anywhere else."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from factstore.domain import (
    BaseModel,
    Covariance,
    ImportedRelease,
    ModelRef,
    NewEdit,
    NewRelease,
    Release,
    StoredEdit,
    check_alias,
)
from factstore.errors import (
    DatabaseUnavailable,
    EditStateError,
    ImportConflict,
    ModelAliasTaken,
    UnknownEdit,
    UnknownModel,
    UnknownRelease,
    shown,
)
from factstore.storage import convert
from factstore.storage.base import refused
from factstore.storage.models import (
    COMPUTED_STATUSES,
    BaseModelRow,
    ContextTemplateRow,
    CovarianceStat,
    EditRow,
    ReleaseEdit,
    ReleaseRow,
)
from factstore.storage.queue import QueueVerbs, fill_computed, new_request_row, same_fact
from factstore.storage.tokens import TokenVerbs

_SEQ_RETRIES = 20
# lists of computed edits load their per-layer asks in one more query; listings of the log
# (EditEntry) never read them (~0.1 MB per band edit on SmolLM2)
WITH_BAND = selectinload(EditRow.band)
_SEQ_CONSTRAINT = (
    "edits_base_model_id_seq_key",
    "edits.base_model_id, edits.seq",
)  # PostgreSQL's name, SQLite's message


def _is_seq_race(exc: IntegrityError) -> bool:
    """Whether a failed insert lost the race for an edit's seq (and may be retried), rather
    than breaking another constraint."""
    return any(name in str(exc.orig) for name in _SEQ_CONSTRAINT)


class Store(QueueVerbs, TokenVerbs):
    """The fact store on one database URL (FACTSTORE_DATABASE_URL or the embedded SQLite file)."""

    @contextmanager
    def model_lock(self, base_id: int) -> Iterator[None]:
        """Hold a base model exclusively for long work (a compile) without holding a transaction:
        an advisory lock on PostgreSQL, a file lock beside the database file on SQLite. Other
        processes asking for the same model wait; edits and reads go on meanwhile."""
        if self.engine.dialect.name == "postgresql":
            with self.engine.connect() as conn:
                key = 0x66616374_0000_0000 + base_id  # "fact" in the high bits, a namespace of our own
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
                conn.commit()
                try:
                    yield
                finally:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                    conn.commit()
            return
        database = self.engine.url.database
        if not database or database == ":memory:":
            yield
            return
        path = Path(database).resolve()
        with open(path.with_name(f".{path.name}.model-{base_id}.lock"), "a") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    # base models -------------------------------------------------------------------------

    def create_base_model(self, alias: str, ref: ModelRef, *, license: str | None = None) -> tuple[BaseModel, bool]:
        """Register alias -> exact weights. Returns (model, created). Never re-points an alias."""
        check_alias(alias)
        with self._tx() as s:
            row, created = self._base_row(s, alias, ref, license)
            return convert.base(row), created

    @staticmethod
    def _base_row(s: Session, alias: str, ref: ModelRef, license: str | None) -> tuple[BaseModelRow, bool]:
        row = s.scalar(select(BaseModelRow).where(BaseModelRow.alias == alias))
        if row is not None:
            if (row.revision, row.dtype) != (ref.revision, ref.dtype):
                raise ModelAliasTaken(
                    f"alias {alias!r} is pinned to {row.source} at {row.revision} in {row.dtype}; the weights you gave are "
                    f"{ref.revision} in {ref.dtype}. Register them under a new alias"
                )
            return row, False
        row = BaseModelRow(
            alias=alias,
            source=ref.source,
            revision=ref.revision,
            model_type=ref.model_type,
            license=license,
            dtype=ref.dtype,
        )
        s.add(row)
        s.flush()
        return row, True

    def get_base_model(self, alias: str) -> BaseModel:
        with self._tx(write=False) as s:
            row = s.scalar(select(BaseModelRow).where(BaseModelRow.alias == alias))
            if row is None:
                known = s.scalars(select(BaseModelRow.alias).order_by(BaseModelRow.alias)).all()
                hint = f"known: {', '.join(known)}" if known else "none is registered yet"
                raise UnknownModel(
                    f"no model with alias {shown(alias)} ({hint}); register one with `factstore model add ALIAS SOURCE`"
                )
            return convert.base(row)

    def list_base_models(self) -> list[BaseModel]:
        with self._tx(write=False) as s:
            return [convert.base(r) for r in s.scalars(select(BaseModelRow).order_by(BaseModelRow.id))]

    # context templates and statistics ------------------------------------------------------

    def get_context_templates(self, base_id: int, fingerprint: str) -> dict | None:
        with self._tx(write=False) as s:
            row = s.scalar(
                select(ContextTemplateRow).where(
                    ContextTemplateRow.base_model_id == base_id, ContextTemplateRow.fingerprint == fingerprint
                )
            )
            return None if row is None else dict(row.templates)

    def create_context_templates(self, base_id: int, fingerprint: str, *, seed: int, templates: dict) -> dict:
        """Store sampled templates; if another process stored them first, theirs win (same seed, same text)."""
        try:
            with self._tx() as s:
                return dict(self._template_row(s, base_id, fingerprint, seed, templates).templates)
        except IntegrityError as exc:  # inserted by another process between our read and our write
            stored = self.get_context_templates(base_id, fingerprint)
            if stored is None:  # not a concurrent insert of the same row
                raise refused(exc, "store context templates") from None
            return stored

    def get_covariance_by_key(self, cache_key: str) -> Covariance | None:
        with self._tx(write=False) as s:
            row = s.scalar(select(CovarianceStat).where(CovarianceStat.cache_key == cache_key))
            return None if row is None else convert.covariance(row)

    def list_covariances(self, base_id: int) -> list[Covariance]:
        with self._tx(write=False) as s:
            rows = s.scalars(
                select(CovarianceStat).where(CovarianceStat.base_model_id == base_id).order_by(CovarianceStat.id)
            )
            return [convert.covariance(r) for r in rows]

    def get_covariance(self, cov_id: int) -> Covariance:
        with self._tx(write=False) as s:
            return convert.covariance(s.get_one(CovarianceStat, cov_id))

    def create_covariance(self, base_id: int, cache_key: str, *, record: Covariance) -> Covariance:
        """Record where a C file lives; if another process recorded the same key first, its row wins."""
        try:
            with self._tx() as s:
                return convert.covariance(self._covariance_row(s, base_id, cache_key, record))
        except IntegrityError as exc:  # inserted by another process between our read and our write
            if (found := self.get_covariance_by_key(cache_key)) is None:  # not a concurrent record of the same key
                raise refused(exc, "record key statistics") from None
            return found

    # edits -----------------------------------------------------------------------------

    def create_edit(self, base_id: int, new: NewEdit) -> StoredEdit:
        """Write one edit with the next seq, superseding active edits of the same fact, atomically."""
        for _ in range(_SEQ_RETRIES):
            try:
                with self._tx() as s:
                    return self._insert_edit(s, base_id, new)
            except IntegrityError as exc:
                if not _is_seq_race(exc):
                    raise refused(exc, "store the edit") from None
                # another writer took this seq; read max(seq) again
        raise DatabaseUnavailable("could not allocate an edit sequence number after many concurrent retries; try again")

    @staticmethod
    def _insert_edit(s: Session, base_id: int, new: NewEdit) -> StoredEdit:
        row = new_request_row(base_id, new.request, requested_by=new.requested_by, note=new.note)
        s.add(row)
        fill_computed(s, row, new)
        return convert.edit(row)

    def list_conflicting_edits(
        self, base_id: int, *, subject: str, prompt: str, relation_id: str | None
    ) -> list[StoredEdit]:
        """Active edits that a new request for this fact would supersede."""
        with self._tx(write=False) as s:
            return [
                convert.edit(r)
                for r in s.scalars(
                    select(EditRow).options(WITH_BAND).where(*same_fact(base_id, subject, prompt, relation_id))
                )
            ]

    def list_edits(self, base_id: int, status: str = "active") -> list[StoredEdit]:
        """Computed edits of a base model in seq order; status one of COMPUTED_STATUSES or "all" (all of them).
        Requests not computed (or failed) are in list_entries."""
        if status != "all" and status not in COMPUTED_STATUSES:
            raise EditStateError(f"unknown status {shown(status)}; use one of {', '.join(COMPUTED_STATUSES)} or all")
        chosen = COMPUTED_STATUSES if status == "all" else (status,)
        query = (
            select(EditRow)
            .options(WITH_BAND)
            .where(EditRow.base_model_id == base_id, EditRow.status.in_(chosen))
            .order_by(EditRow.seq)
        )
        with self._tx(write=False) as s:
            return [convert.edit(r) for r in s.scalars(query)]

    @staticmethod
    def _edit_row(s: Session, edit_id: int, for_update: bool = False) -> EditRow:
        row = s.get(EditRow, edit_id, with_for_update=for_update)
        if row is None:
            raise UnknownEdit(
                f"no edit with id {edit_id}; list edits with `factstore edit list --model ALIAS --status all`"
            )
        return row

    def get_edit(self, edit_id: int) -> StoredEdit:
        with self._tx(write=False) as s:
            row = self._edit_row(s, edit_id)
            if row.status not in COMPUTED_STATUSES:
                raise EditStateError(f"edit {edit_id} is {row.status}: it has no key and value yet")
            return convert.edit(row)

    def list_request_rows(self, base_id: int, sha: str) -> list[tuple[int, str]]:
        """(id, status) of the rows made for one request text, oldest first (a rerun import skips
        stored edits and finishes requests an interrupted run left queued)."""
        with self._tx(write=False) as s:
            rows = s.execute(
                select(EditRow.id, EditRow.status)
                .where(EditRow.base_model_id == base_id, EditRow.request_sha256 == sha)
                .order_by(EditRow.id)
            )
            return [(int(i), str(status)) for i, status in rows]

    def set_edit_retracted(self, edit_id: int, by: str | None = None) -> StoredEdit:
        with self._tx() as s:
            row = self._edit_row(s, edit_id, for_update=True)
            if row.status != "active":
                raise EditStateError(f"edit {edit_id} is already {row.status}; only active edits can be retracted")
            row.status, row.retracted_by, row.retracted_at = "retracted", by, datetime.now(timezone.utc)
            s.flush()
            return convert.edit(row)

    # releases ---------------------------------------------------------------------------

    def _release_edit_ids(self, s: Session, release_id: int) -> list[int]:
        query = select(ReleaseEdit.edit_id).where(ReleaseEdit.release_id == release_id).order_by(ReleaseEdit.position)
        return list(s.scalars(query))

    def list_releases(self, base_id: int, limit: int | None = None, offset: int = 0) -> list[Release]:
        """Releases by version; LIMIT of them from OFFSET (all when None)."""
        with self._tx(write=False) as s:
            rows = s.scalars(
                select(ReleaseRow)
                .where(ReleaseRow.base_model_id == base_id)
                .order_by(ReleaseRow.version)
                .offset(offset)
                .limit(limit)
            ).all()
            return [convert.release(r, self._release_edit_ids(s, r.id)) for r in rows]

    def count_releases(self, base_id: int) -> int:
        with self._tx(write=False) as s:
            return s.scalar(select(func.count()).where(ReleaseRow.base_model_id == base_id)) or 0

    def get_latest_release(self, base_id: int) -> Release | None:
        """The highest version (one row read, however many releases there are)."""
        with self._tx(write=False) as s:
            row = s.scalars(
                select(ReleaseRow)
                .where(ReleaseRow.base_model_id == base_id)
                .order_by(ReleaseRow.version.desc())
                .limit(1)
            ).first()
            return None if row is None else convert.release(row, self._release_edit_ids(s, row.id))

    def get_release(self, base_id: int, version: int) -> Release:
        with self._tx(write=False) as s:
            row = s.scalars(
                select(ReleaseRow).where(ReleaseRow.base_model_id == base_id, ReleaseRow.version == version)
            ).first()
            if row is None:
                alias = s.scalar(select(BaseModelRow.alias).where(BaseModelRow.id == base_id))
                raise UnknownRelease(
                    f"{alias} has no release v{version}; see `factstore releases list --model {alias}`"
                )
            return convert.release(row, self._release_edit_ids(s, row.id))

    def get_next_release_version(self, base_id: int) -> int:
        with self._tx(write=False) as s:
            return (s.scalar(select(func.max(ReleaseRow.version)).where(ReleaseRow.base_model_id == base_id)) or 0) + 1

    def create_release(self, base_id: int, version: int, release: NewRelease) -> Release:
        """The release row and its frozen contents, in one transaction (release.published: a
        release pulled from the Hub, recorded as already published)."""
        repo, commit, tag = release.published or (None, None, None)
        with self._tx() as s:
            row = ReleaseRow(
                base_model_id=base_id,
                version=version,
                mode=release.mode,
                edit_log_sha256=release.edit_log_sha256,
                manifest_sha256=release.manifest_sha256,
                path=release.path,
                status="published" if release.published else "built",
                hub_repo=repo,
                hub_commit=commit,
                tag=tag,
                scores=release.scores,
            )
            s.add(row)
            s.flush()
            s.add_all(ReleaseEdit(release_id=row.id, position=i, edit_id=e) for i, e in enumerate(release.edit_ids))
            s.flush()
            return convert.release(row, release.edit_ids)

    def _release_row(self, s: Session, release_id: int) -> ReleaseRow:
        return s.get_one(ReleaseRow, release_id)

    def set_release_path(self, release_id: int, path: str) -> Release:
        """The release's folder was written again here (built elsewhere, or its folder removed)."""
        with self._tx() as s:
            row = self._release_row(s, release_id)
            row.path = path
            return convert.release(row, self._release_edit_ids(s, row.id))

    def set_release_hub_commit(self, release_id: int, *, repo: str, commit: str) -> Release:
        """The upload landed as COMMIT; the release stays `built` until its tag exists."""
        with self._tx() as s:
            row = self._release_row(s, release_id)
            row.hub_repo, row.hub_commit = repo, commit
            return convert.release(row, self._release_edit_ids(s, row.id))

    def set_release_published(self, release_id: int, tag: str) -> Release:
        with self._tx() as s:
            row = self._release_row(s, release_id)
            row.tag, row.status = tag, "published"
            return convert.release(row, self._release_edit_ids(s, row.id))

    def get_published_release(self, base_id: int, repo: str) -> Release | None:
        """The newest release of a base model published to REPO: the parent of the next one."""
        found = [r for r in self.list_releases(base_id) if r.hub_repo == repo and r.status == "published"]
        return found[-1] if found else None

    def list_context_templates(self, base_id: int) -> list[dict]:
        with self._tx(write=False) as s:
            rows = s.scalars(
                select(ContextTemplateRow)
                .where(ContextTemplateRow.base_model_id == base_id)
                .order_by(ContextTemplateRow.id)
            )
            return [{"fingerprint": r.fingerprint, "seed": r.seed, "templates": dict(r.templates)} for r in rows]

    def set_recommended_layer(self, base_id: int, layer: int) -> BaseModel:
        """Store the edit layer that causal tracing recommends for a base model."""
        with self._tx() as s:
            row = s.get_one(BaseModelRow, base_id)
            row.recommended_layer = layer
            return convert.base(row)

    # importing a pulled lineage --------------------------------------------------------------

    def import_lineage(
        self,
        alias: str,
        ref: ModelRef,
        *,
        license: str | None,
        prefix: list[tuple[str, str]],
        covariances: dict[str, Covariance],
        edits: list[tuple[NewEdit, str | None]],
        release: ImportedRelease,
    ) -> tuple[BaseModel, list[StoredEdit], Release]:
        """A pulled release's lineage in one transaction: all of it or nothing.

        prefix: (key, value sha256) of the active edits ALIAS must hold now; covariances: cache
        key -> C record; edits: each new edit with the cache key of its C (or None); the
        release's context templates are added where missing."""
        check_alias(alias)
        with self._tx() as s:
            row, _ = self._base_row(s, alias, ref, license)
            base_id = row.id
            s.execute(
                select(BaseModelRow.id).where(BaseModelRow.id == base_id).with_for_update()
            )  # one importer or writer at a time
            active = s.scalars(
                select(EditRow)
                .where(EditRow.base_model_id == base_id, EditRow.status == "active")
                .order_by(EditRow.seq)
            ).all()
            if [(e.key_sha256, e.value_sha256) for e in active] != prefix:
                raise ImportConflict(
                    f"the active edits of {alias} are not a prefix of this release's edit log; import under a fresh --alias"
                )
            for t in release.templates:
                self._template_row(s, base_id, t["fingerprint"], t["seed"], t["templates"])
            cov_ids = {key: self._covariance_row(s, base_id, key, record).id for key, record in covariances.items()}
            added = [
                self._insert_edit(s, base_id, replace(new, covariance_id=cov_ids[key] if key else None))
                for new, key in edits
            ]
            stored = self._imported_release(s, base_id, alias, release)
            return convert.base(row), added, stored

    @staticmethod
    def _template_row(s: Session, base_id: int, fingerprint: str, seed: int, templates: dict) -> ContextTemplateRow:
        """The stored templates of that fingerprint, added when there are none (same seed, same text)."""
        where = (ContextTemplateRow.base_model_id == base_id, ContextTemplateRow.fingerprint == fingerprint)
        row = s.scalar(select(ContextTemplateRow).where(*where))
        if row is None:
            row = ContextTemplateRow(base_model_id=base_id, fingerprint=fingerprint, seed=seed, templates=templates)
            s.add(row)
            s.flush()
        return row

    @staticmethod
    def _covariance_row(s: Session, base_id: int, cache_key: str, record: Covariance) -> CovarianceStat:
        row = s.scalar(select(CovarianceStat).where(CovarianceStat.cache_key == cache_key))
        if row is None:
            row = CovarianceStat(
                base_model_id=base_id,
                cache_key=cache_key,
                layer=record.layer,
                module=record.module,
                corpus=record.corpus,
                corpus_sha256=record.corpus_sha256,
                tokens=record.tokens,
                dtype=record.dtype,
                path=record.path,
                sha256=record.sha256,
            )
            s.add(row)
            s.flush()
        return row

    def _imported_release(self, s: Session, base_id: int, alias: str, release: ImportedRelease) -> Release:
        active = s.scalars(
            select(EditRow)
            .options(WITH_BAND)
            .where(EditRow.base_model_id == base_id, EditRow.status == "active")
            .order_by(EditRow.seq)
        ).all()
        log_sha = release.log_sha256([convert.edit(r) for r in active])
        rows = s.scalars(select(ReleaseRow).where(ReleaseRow.base_model_id == base_id)).all()
        for r in rows:
            if r.edit_log_sha256 == log_sha and (release.published is None or r.hub_commit == release.published[1]):
                return convert.release(r, self._release_edit_ids(s, r.id))  # this store already has that release
        version = release.version or max((r.version for r in rows), default=0) + 1
        if any(r.version == version for r in rows):
            raise ImportConflict(
                f"this store already has a different v{version} of {alias}; import under a fresh --alias"
            )
        repo, commit, tag = release.published or (None, None, None)
        row = ReleaseRow(
            base_model_id=base_id,
            version=version,
            mode=release.mode,
            edit_log_sha256=log_sha,
            manifest_sha256=release.manifest_sha256,
            path=release.path,
            status="published" if release.published else "built",
            hub_repo=repo,
            hub_commit=commit,
            tag=tag,
            scores=release.scores,
        )
        s.add(row)
        s.flush()
        edit_ids = [e.id for e in active]
        s.add_all(ReleaseEdit(release_id=row.id, position=i, edit_id=e) for i, e in enumerate(edit_ids))
        s.flush()
        return convert.release(row, edit_ids)
