"""Rows to the torch-free value types of factstore.domain (no queries here).

Each type is built field by field from the row's attribute of the same name (`from_row`), so a
column added to a row and a field of the same name added to its type need nothing here."""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from datetime import datetime, timezone
from typing import Any, TypeVar

import pydantic
import sqlalchemy

from factstore.domain import BaseModel, Covariance, EditEntry, Job, LayerAsk, Release, StoredEdit
from factstore.storage.models import BaseModelRow, CovarianceStat, EditRow, JobRow, ReleaseRow

T = TypeVar("T")


def aware(moment: datetime) -> datetime:
    """SQLite gives back naive datetimes for what was stored as UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def iso(moment: datetime | None) -> str | None:
    """MOMENT in UTC, ISO 8601 with its offset (PostgreSQL gives timestamptz in the session's zone)."""
    return None if moment is None else aware(moment).astimezone(timezone.utc).isoformat()


@functools.cache
def _fields(cls: type) -> tuple[tuple[str, Any], ...]:
    """(name, declared type) of each field of CLS, a dataclass or a pydantic model."""
    hints = typing.get_type_hints(cls)
    if dataclasses.is_dataclass(cls):
        names = [f.name for f in dataclasses.fields(cls)]
    else:
        names = list(typing.cast(type[pydantic.BaseModel], cls).model_fields)
    return tuple((name, hints[name]) for name in names)


def _optional(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint)


def _as_declared(row: Any, name: str, hint: Any, value: Any) -> Any:
    """VALUE read from ROW as the field's declared type: drivers give memoryviews for bytes, lists
    for tuples, naive datetimes on SQLite; a NULL where the type has no None is not computed yet."""
    if isinstance(hint, TypeVar):  # a generic field (LoggedEdit's C handle): what the row holds
        return value
    if value is None:
        if _optional(hint) or hint is dict:
            return {} if hint is dict else None
        state = f"is {row.status}" if hasattr(row, "status") else "is incomplete"
        raise ValueError(f"{row.__tablename__} row {row.id} {state}: it has no {name} (not computed)")
    if isinstance(value, datetime):
        return iso(value)
    base = typing.get_origin(hint) or hint
    if base is bytes:
        return bytes(value)
    if base in (tuple, dict):
        return base(value)
    return value


def from_row(cls: type[T], row: Any, **given: Any) -> T:
    """CLS with each field from ROW's attribute of the same name (GIVEN first: what the row does
    not hold, or holds under another name)."""
    values = {
        name: given[name] if name in given else _as_declared(row, name, hint, getattr(row, name))
        for name, hint in _fields(typing.cast(type, cls))
        if name in given or hasattr(row, name)
    }
    return cls(**values)


def onto_row(row: Any, value: Any, *, skip: tuple[str, ...] = ()) -> None:
    """Each field of the dataclass VALUE (but SKIP) onto ROW's column of the same name (tuples as
    the lists a JSON column holds)."""
    columns = sqlalchemy.inspect(type(row)).column_attrs.keys()
    for field in dataclasses.fields(value):
        if field.name not in skip:
            if field.name not in columns:  # an ORM row takes any attribute and would store nothing
                raise TypeError(f"{type(value).__name__}.{field.name} has no column on {type(row).__name__}")
            item = getattr(value, field.name)
            setattr(row, field.name, list(item) if isinstance(item, tuple) else item)


def base(row: BaseModelRow) -> BaseModel:
    return from_row(BaseModel, row)


def edit(row: EditRow) -> StoredEdit:
    """A computed edit (active, retracted or superseded): every replay field is set."""
    band = tuple(LayerAsk(a.layer, bytes(a.key), bytes(a.target)) for a in row.band)
    return from_row(StoredEdit, row, band=band)


def entry(row: EditRow, alias: str) -> EditEntry:
    return from_row(EditEntry, row, model=alias)


def covariance(row: CovarianceStat) -> Covariance:
    return from_row(Covariance, row, key=row.cache_key)


def release(row: ReleaseRow, edit_ids: list[int]) -> Release:
    return from_row(Release, row, edit_ids=tuple(edit_ids))


def job(row: JobRow, alias: str, files: list[str], waiting: str | None = None) -> Job:
    return from_row(Job, row, model=alias, files=tuple(files), waiting=waiting)
