"""Every query and command on the database. No SQL anywhere else."""

from __future__ import annotations

import fcntl
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from sqlalchemy import func, or_, select, text
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from factstore import config
from factstore.domain import BaseModel, Covariance, ImportedRelease, ModelRef, NewEdit, Release, StoredEdit, check_alias, request_sha256
from factstore.errors import DatabaseError, DatabaseUnavailable, EditStateError, ImportConflict, ModelAliasTaken, UnknownEdit, UnknownModel
from factstore.storage import schema
from factstore.storage.engine import check_reachable, make_engine, readonly, session_scope
from factstore.storage.models import EDIT_STATUSES, BaseModelRow, ContextTemplateRow, CovarianceStat, EditRow, ReleaseEdit, ReleaseRow

_SEQ_RETRIES = 20
_SEQ_CONSTRAINT = ("edits_base_model_id_seq_key", "edits.base_model_id, edits.seq")  # PostgreSQL's name, SQLite's message


def _is_seq_race(exc: IntegrityError) -> bool:
    """Whether a failed insert lost the race for an edit's seq (and may be retried), rather
    than breaking another constraint."""
    return any(name in str(exc.orig) for name in _SEQ_CONSTRAINT)


def _first_line(exc: DBAPIError) -> str:
    return str(exc.orig).strip().splitlines()[0] if exc.orig is not None and str(exc.orig).strip() else type(exc).__name__


def _refused(exc: IntegrityError, what: str) -> DatabaseError:
    return DatabaseError(f"the database refused to {what} ({_first_line(exc)}); nothing was written")


def _base(row: BaseModelRow) -> BaseModel:
    return BaseModel(
        id=row.id, alias=row.alias, source=row.source, revision=row.revision, model_type=row.model_type,
        license=row.license, recommended_layer=row.recommended_layer, created_at=row.created_at.isoformat(),
    )


def _edit(row: EditRow) -> StoredEdit:
    return StoredEdit(
        id=row.id, base_model_id=row.base_model_id, seq=row.seq, prompt=row.prompt, subject=row.subject,
        target_new=row.target_new, target_true=row.target_true, relation_id=row.relation_id, layer=row.layer,
        module=row.module, key=bytes(row.key), key_shape=tuple(row.key_shape), key_sha256=row.key_sha256,
        value=bytes(row.value), value_shape=tuple(row.value_shape), value_sha256=row.value_sha256,
        hparams=dict(row.hparams), hparams_fingerprint=row.hparams_fingerprint, covariance_id=row.covariance_id,
        status=row.status, supersedes_id=row.supersedes_id, requested_by=row.requested_by, note=row.note,
        metrics=dict(row.metrics or {}), created_at=row.created_at.isoformat(),
    )


def _cov(row: CovarianceStat) -> Covariance:
    return Covariance(
        id=row.id, layer=row.layer, module=row.module, corpus=row.corpus, corpus_sha256=row.corpus_sha256,
        tokens=row.tokens, dtype=row.dtype, path=row.path, sha256=row.sha256,
    )


def _release(row: ReleaseRow, edit_ids: list[int]) -> Release:
    return Release(
        id=row.id, base_model_id=row.base_model_id, version=row.version, mode=row.mode, edit_log_sha256=row.edit_log_sha256,
        manifest_sha256=row.manifest_sha256, path=row.path, hub_repo=row.hub_repo, hub_commit=row.hub_commit, tag=row.tag,
        status=row.status, edit_ids=tuple(edit_ids), created_at=row.created_at.isoformat(),
    )


class Store:
    """The fact store on one database URL (FACTSTORE_DATABASE_URL or the embedded SQLite file)."""

    def __init__(self, url: str | None = None, migrate: bool = True) -> None:
        self.url = url or config.database_url()
        self.engine = make_engine(self.url)
        check_reachable(self.engine)
        if migrate:
            try:
                schema.ensure_current(self.engine, self.url)
            except OperationalError as exc:
                reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
                shown = self.engine.url.render_as_string(hide_password=True)
                raise DatabaseUnavailable(f"cannot read the schema of {shown} ({reason}); check FACTSTORE_DATABASE_URL") from None
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._read_sessions = sessionmaker(readonly(self.engine), expire_on_commit=False)

    @contextmanager
    def _tx(self, write: bool = True) -> Iterator[Session]:
        """One transaction (write=False: one that only reads, and never waits for a writer on SQLite).
        Database failures become one-line errors with the password masked."""
        shown = self.engine.url.render_as_string(hide_password=True)
        try:
            with session_scope(self._sessions if write else self._read_sessions) as session:
                yield session
        except OperationalError as exc:
            raise DatabaseUnavailable(f"the database {shown} failed ({_first_line(exc)}); check that it is running and writable, then retry") from None
        except DataError as exc:
            raise DatabaseError(f"the database {shown} refused a value ({_first_line(exc)}); nothing was written") from None

    def close(self) -> None:
        self.engine.dispose()

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
            return _base(row), created

    @staticmethod
    def _base_row(s: Session, alias: str, ref: ModelRef, license: str | None) -> tuple[BaseModelRow, bool]:
        row = s.scalar(select(BaseModelRow).where(BaseModelRow.alias == alias))
        if row is not None:
            if row.revision != ref.revision:
                raise ModelAliasTaken(
                    f"alias {alias!r} is pinned to {row.source} at {row.revision}; the weights you gave are "
                    f"{ref.revision}. Register them under a new alias"
                )
            return row, False
        row = BaseModelRow(alias=alias, source=ref.source, revision=ref.revision, model_type=ref.model_type, license=license)
        s.add(row)
        s.flush()
        return row, True

    def get_base_model(self, alias: str) -> BaseModel:
        with self._tx(write=False) as s:
            row = s.scalar(select(BaseModelRow).where(BaseModelRow.alias == alias))
            if row is None:
                known = s.scalars(select(BaseModelRow.alias).order_by(BaseModelRow.alias)).all()
                hint = f"known: {', '.join(known)}" if known else "none is registered yet"
                raise UnknownModel(f"no model with alias {alias!r} ({hint}); register one with `factstore model add ALIAS SOURCE`")
            return _base(row)

    def list_base_models(self) -> list[BaseModel]:
        with self._tx(write=False) as s:
            return [_base(r) for r in s.scalars(select(BaseModelRow).order_by(BaseModelRow.id))]

    # context templates and statistics ------------------------------------------------------

    def get_context_templates(self, base_id: int, fingerprint: str) -> dict | None:
        with self._tx(write=False) as s:
            row = s.scalar(
                select(ContextTemplateRow).where(ContextTemplateRow.base_model_id == base_id, ContextTemplateRow.fingerprint == fingerprint)
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
                raise _refused(exc, "store context templates") from None
            return stored

    def get_covariance_by_key(self, cache_key: str) -> Covariance | None:
        with self._tx(write=False) as s:
            row = s.scalar(select(CovarianceStat).where(CovarianceStat.cache_key == cache_key))
            return None if row is None else _cov(row)

    def get_latest_covariance(self, base_id: int, layer: int) -> Covariance | None:
        """The most recently recorded C of a layer, whatever corpus it came from."""
        with self._tx(write=False) as s:
            row = s.scalar(
                select(CovarianceStat)
                .where(CovarianceStat.base_model_id == base_id, CovarianceStat.layer == layer)
                .order_by(CovarianceStat.id.desc())
                .limit(1)
            )
            return None if row is None else _cov(row)

    def get_covariance(self, cov_id: int) -> Covariance:
        with self._tx(write=False) as s:
            return _cov(s.get_one(CovarianceStat, cov_id))

    def create_covariance(self, base_id: int, cache_key: str, *, record: Covariance) -> Covariance:
        """Record where a C file lives; if another process recorded the same key first, its row wins."""
        try:
            with self._tx() as s:
                return _cov(self._covariance_row(s, base_id, cache_key, record))
        except IntegrityError as exc:  # inserted by another process between our read and our write
            if (found := self.get_covariance_by_key(cache_key)) is None:  # not a concurrent record of the same key
                raise _refused(exc, "record key statistics") from None
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
                    raise _refused(exc, "store the edit") from None
                # another writer took this seq; read max(seq) again
        raise DatabaseUnavailable("could not allocate an edit sequence number after many concurrent retries; try again")

    def _insert_edit(self, s: Session, base_id: int, new: NewEdit) -> StoredEdit:
        s.execute(select(BaseModelRow.id).where(BaseModelRow.id == base_id).with_for_update())  # serialise writers per base
        seq = (s.scalar(select(func.max(EditRow.seq)).where(EditRow.base_model_id == base_id)) or 0) + 1
        req = new.request
        older = s.scalars(select(EditRow).where(*self._same_fact(base_id, req.subject, req.prompt, req.relation_id))).all()
        for row in older:
            row.status = "superseded"
        row = EditRow(
            base_model_id=base_id, seq=seq, prompt=req.prompt, subject=req.subject, target_new=req.target_new,
            target_true=new.target_true, relation_id=req.relation_id, request_sha256=request_sha256(req), layer=new.layer,
            module=new.module, key=new.key, key_shape=list(new.key_shape), key_sha256=hashlib.sha256(new.key).hexdigest(),
            value=new.value, value_shape=list(new.value_shape), value_sha256=hashlib.sha256(new.value).hexdigest(),
            hparams=new.hparams, hparams_fingerprint=new.hparams_fingerprint, covariance_id=new.covariance_id,
            status="active", supersedes_id=older[-1].id if older else None, requested_by=new.requested_by, note=new.note,
            metrics=new.metrics,
        )
        s.add(row)
        s.flush()
        return _edit(row)

    @staticmethod
    def _same_fact(base_id: int, subject: str, prompt: str, relation_id: str | None) -> list:
        same = EditRow.prompt == prompt if relation_id is None else or_(EditRow.prompt == prompt, EditRow.relation_id == relation_id)
        return [EditRow.base_model_id == base_id, EditRow.status == "active", EditRow.subject == subject, same]

    def list_conflicting_edits(self, base_id: int, *, subject: str, prompt: str, relation_id: str | None) -> list[StoredEdit]:
        """Active edits that a new request for this fact would supersede."""
        with self._tx(write=False) as s:
            return [_edit(r) for r in s.scalars(select(EditRow).where(*self._same_fact(base_id, subject, prompt, relation_id)))]

    def list_edits(self, base_id: int, status: str = "active") -> list[StoredEdit]:
        """Edits of a base model in seq order; status one of EDIT_STATUSES or "all"."""
        if status != "all" and status not in EDIT_STATUSES:
            raise EditStateError(f"unknown status {status!r}; use one of {', '.join(EDIT_STATUSES)} or all")
        query = select(EditRow).where(EditRow.base_model_id == base_id).order_by(EditRow.seq)
        if status != "all":
            query = query.where(EditRow.status == status)
        with self._tx(write=False) as s:
            return [_edit(r) for r in s.scalars(query)]

    @staticmethod
    def _edit_row(s: Session, edit_id: int, for_update: bool = False) -> EditRow:
        row = s.get(EditRow, edit_id, with_for_update=for_update)
        if row is None:
            raise UnknownEdit(f"no edit with id {edit_id}; list edits with `factstore edit list --model ALIAS --status all`")
        return row

    def get_edit(self, edit_id: int) -> StoredEdit:
        with self._tx(write=False) as s:
            return _edit(self._edit_row(s, edit_id))

    def list_edits_by_request(self, base_id: int, sha: str) -> list[StoredEdit]:
        with self._tx(write=False) as s:
            rows = s.scalars(select(EditRow).where(EditRow.base_model_id == base_id, EditRow.request_sha256 == sha))
            return [_edit(r) for r in rows]

    def set_edit_retracted(self, edit_id: int) -> StoredEdit:
        with self._tx() as s:
            row = self._edit_row(s, edit_id, for_update=True)
            if row.status != "active":
                raise EditStateError(f"edit {edit_id} is already {row.status}; only active edits can be retracted")
            row.status = "retracted"
            s.flush()
            return _edit(row)

    # releases ---------------------------------------------------------------------------

    def _release_edit_ids(self, s: Session, release_id: int) -> list[int]:
        query = select(ReleaseEdit.edit_id).where(ReleaseEdit.release_id == release_id).order_by(ReleaseEdit.position)
        return list(s.scalars(query))

    def list_releases(self, base_id: int) -> list[Release]:
        with self._tx(write=False) as s:
            rows = s.scalars(select(ReleaseRow).where(ReleaseRow.base_model_id == base_id).order_by(ReleaseRow.version)).all()
            return [_release(r, self._release_edit_ids(s, r.id)) for r in rows]

    def get_latest_release(self, base_id: int) -> Release | None:
        found = self.list_releases(base_id)
        return found[-1] if found else None

    def get_next_release_version(self, base_id: int) -> int:
        with self._tx(write=False) as s:
            return (s.scalar(select(func.max(ReleaseRow.version)).where(ReleaseRow.base_model_id == base_id)) or 0) + 1

    def create_release(
        self, base_id: int, version: int, *, mode: str, edit_log_sha256: str, manifest_sha256: str, path: str,
        edit_ids: list[int], published: tuple[str, str, str] | None = None,
    ) -> Release:
        """The release row and its frozen contents, in one transaction.

        published=(repo, commit, tag) records a release pulled from the Hub as already published.
        """
        repo, commit, tag = published or (None, None, None)
        with self._tx() as s:
            row = ReleaseRow(
                base_model_id=base_id, version=version, mode=mode, edit_log_sha256=edit_log_sha256,
                manifest_sha256=manifest_sha256, path=path, status="published" if published else "built",
                hub_repo=repo, hub_commit=commit, tag=tag,
            )
            s.add(row)
            s.flush()
            s.add_all(ReleaseEdit(release_id=row.id, position=i, edit_id=e) for i, e in enumerate(edit_ids))
            s.flush()
            return _release(row, edit_ids)

    def _release_row(self, s: Session, release_id: int) -> ReleaseRow:
        return s.get_one(ReleaseRow, release_id)

    def set_release_hub_commit(self, release_id: int, *, repo: str, commit: str) -> Release:
        """The upload landed as COMMIT; the release stays `built` until its tag exists."""
        with self._tx() as s:
            row = self._release_row(s, release_id)
            row.hub_repo, row.hub_commit = repo, commit
            return _release(row, self._release_edit_ids(s, row.id))

    def set_release_published(self, release_id: int, tag: str) -> Release:
        with self._tx() as s:
            row = self._release_row(s, release_id)
            row.tag, row.status = tag, "published"
            return _release(row, self._release_edit_ids(s, row.id))

    def get_published_release(self, base_id: int, repo: str) -> Release | None:
        """The newest release of a base model published to REPO: the parent of the next one."""
        found = [r for r in self.list_releases(base_id) if r.hub_repo == repo and r.status == "published"]
        return found[-1] if found else None

    def list_context_templates(self, base_id: int) -> list[dict]:
        with self._tx(write=False) as s:
            rows = s.scalars(select(ContextTemplateRow).where(ContextTemplateRow.base_model_id == base_id).order_by(ContextTemplateRow.id))
            return [{"fingerprint": r.fingerprint, "seed": r.seed, "templates": dict(r.templates)} for r in rows]

    def set_recommended_layer(self, base_id: int, layer: int) -> BaseModel:
        """Store the edit layer that causal tracing recommends for a base model."""
        with self._tx() as s:
            row = s.get_one(BaseModelRow, base_id)
            row.recommended_layer = layer
            return _base(row)

    # importing a pulled lineage --------------------------------------------------------------

    def import_lineage(
        self, alias: str, ref: ModelRef, *, license: str | None, prefix: list[tuple[str, str]], templates: list[dict],
        covariances: dict[str, Covariance], edits: list[tuple[NewEdit, str | None]], release: ImportedRelease,
    ) -> tuple[BaseModel, list[StoredEdit], Release]:
        """A pulled release's lineage in one transaction: all of it or nothing.

        prefix: (key, value sha256) of the active edits ALIAS must hold now; covariances: cache
        key -> C record; edits: each new edit with the cache key of its C (or None)."""
        check_alias(alias)
        with self._tx() as s:
            row, _ = self._base_row(s, alias, ref, license)
            base_id = row.id
            s.execute(select(BaseModelRow.id).where(BaseModelRow.id == base_id).with_for_update())  # one importer or writer at a time
            active = s.scalars(select(EditRow).where(EditRow.base_model_id == base_id, EditRow.status == "active").order_by(EditRow.seq)).all()
            if [(e.key_sha256, e.value_sha256) for e in active] != prefix:
                raise ImportConflict(f"the active edits of {alias} are not a prefix of this release's edit log; import under a fresh --alias")
            for t in templates:
                self._template_row(s, base_id, t["fingerprint"], t["seed"], t["templates"])
            cov_ids = {key: self._covariance_row(s, base_id, key, record).id for key, record in covariances.items()}
            added = [self._insert_edit(s, base_id, replace(new, covariance_id=cov_ids[key] if key else None)) for new, key in edits]
            stored = self._imported_release(s, base_id, alias, release)
            return _base(row), added, stored

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
                base_model_id=base_id, cache_key=cache_key, layer=record.layer, module=record.module, corpus=record.corpus,
                corpus_sha256=record.corpus_sha256, tokens=record.tokens, dtype=record.dtype, path=record.path, sha256=record.sha256,
            )
            s.add(row)
            s.flush()
        return row

    def _imported_release(self, s: Session, base_id: int, alias: str, release: ImportedRelease) -> Release:
        active = s.scalars(select(EditRow).where(EditRow.base_model_id == base_id, EditRow.status == "active").order_by(EditRow.seq)).all()
        log_sha = release.log_sha256([_edit(r) for r in active])
        rows = s.scalars(select(ReleaseRow).where(ReleaseRow.base_model_id == base_id)).all()
        for r in rows:
            if r.edit_log_sha256 == log_sha and (release.published is None or r.hub_commit == release.published[1]):
                return _release(r, self._release_edit_ids(s, r.id))  # this store already has that release
        version = release.version or max((r.version for r in rows), default=0) + 1
        if any(r.version == version for r in rows):
            raise ImportConflict(f"this store already has a different v{version} of {alias}; import under a fresh --alias")
        repo, commit, tag = release.published or (None, None, None)
        row = ReleaseRow(
            base_model_id=base_id, version=version, mode=release.mode, edit_log_sha256=log_sha, manifest_sha256=release.manifest_sha256,
            path=release.path, status="published" if release.published else "built", hub_repo=repo, hub_commit=commit, tag=tag,
        )
        s.add(row)
        s.flush()
        edit_ids = [e.id for e in active]
        s.add_all(ReleaseEdit(release_id=row.id, position=i, edit_id=e) for i, e in enumerate(edit_ids))
        s.flush()
        return _release(row, edit_ids)
