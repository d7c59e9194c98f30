"""Reading files of facts: CounterFact-format JSON or CSV edit requests, CounterFact records for
evaluation, and known facts for causal tracing. One reader, one-line errors that name the
record by its position (1-based); nothing is computed or stored until a whole file reads."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from factstore.domain import EditRequest, KnownFact, Record
from factstore.errors import FactStoreError, ImportFileError, shown

T = TypeVar("T")


def _text(path: Path) -> str:
    if not path.is_file():
        raise ImportFileError(f"no file at {path}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ImportFileError(f"{path} is not UTF-8 text (byte {exc.start}); save it as UTF-8 and retry") from None
    except OSError as exc:
        raise ImportFileError(f"cannot read {path}: {exc.strerror}") from None


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSON list of objects, or of a CSV file with a header row."""
    path = Path(path).expanduser()
    text = _text(path)
    if path.suffix.lower() == ".csv":
        return list(csv.DictReader(io.StringIO(text, newline="")))
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ImportFileError(f"{path} is not valid JSON ({exc}); give a JSON list of records or a CSV") from None
    if not isinstance(data, list):
        raise ImportFileError(f"{path} holds a JSON {type(data).__name__}, not a list of records")
    for i, row in enumerate(data, start=1):
        if not isinstance(row, dict):
            raise ImportFileError(f"record {i} of {path.name} is a JSON {type(row).__name__}, not an object")
    return data


def _string(value: Any, name: str) -> str:
    if isinstance(value, dict):  # CounterFact writes objects as {"str": ..., "id": ...}
        value = value.get("str")
    if not isinstance(value, str):
        raise ImportFileError(f"{name} must be a string")
    return value


def _optional(row: dict[str, Any], key: str) -> str | None:
    return None if row.get(key) in (None, "") else _string(row[key], key)


def _strings(row: dict[str, Any], key: str) -> tuple[str, ...]:
    values = row.get(key) or []
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ImportFileError(f"{key} must be a list of strings")
    return tuple(values)


def _request(row: dict[str, Any]) -> EditRequest:
    """A CounterFact record (fields under requested_rewrite) or a flat one (prompt, subject, target)."""
    rw = row.get("requested_rewrite", row)
    if not isinstance(rw, dict):
        raise ImportFileError("requested_rewrite must be an object")
    for key in ("prompt", "subject"):
        if key not in rw:
            raise ImportFileError(f"it has no {key}")
    target = rw.get("target_new", rw.get("target"))
    if target is None:
        raise ImportFileError("it has no target_new (or target)")
    return EditRequest(
        prompt=_string(rw["prompt"], "prompt"),
        subject=_string(rw["subject"], "subject"),
        target_new=_string(target, "target_new"),
        target_true=_optional(rw, "target_true"),
        relation_id=_optional(rw, "relation_id"),
    )


def _record(row: dict[str, Any]) -> Record:
    request = _request(row)
    if not request.target_true:
        raise ImportFileError("it has no target_true, which scoring compares the new object with")
    return Record(
        request,
        _strings(row, "paraphrase_prompts"),
        _strings(row, "neighborhood_prompts"),
        _strings(row, "generation_prompts"),
    )


def _known_fact(row: dict[str, Any]) -> KnownFact:
    subject, prompt, attribute = (_string(row.get(k), k) for k in ("subject", "prompt", "attribute"))
    template = prompt if "{}" in prompt else prompt.replace(subject, "{}", 1)
    if "{}" not in template:
        raise ImportFileError(f"the prompt does not contain the subject {shown(subject)}")
    return KnownFact(subject, template, attribute)


def _parse_all(path: str | Path, parse: Callable[[dict[str, Any]], T], limit: int | None) -> list[T]:
    if limit is not None and limit < 1:
        raise ImportFileError(f"the record limit must be at least 1, not {limit}")
    rows = read_rows(path)[:limit]
    out: list[T] = []
    for i, row in enumerate(rows, start=1):
        try:
            out.append(parse(row))
        except FactStoreError as exc:
            raise ImportFileError(f"record {i} of {Path(path).name}: {exc}; nothing was imported") from None
    if not out:
        raise ImportFileError(f"{path} holds no records")
    return out


def read_requests(path: str | Path, limit: int | None = None) -> list[EditRequest]:
    """Edit requests from CounterFact-format JSON or a CSV with columns prompt, subject, target."""
    return _parse_all(path, _request, limit)


def read_records(path: str | Path, limit: int | None = None) -> list[Record]:
    """CounterFact records (ROME's JSON format) with their paraphrase, neighbourhood and generation prompts."""
    return _parse_all(path, _record, limit)


def read_known_facts(path: str | Path, limit: int | None = None) -> list[KnownFact]:
    """Records with subject, prompt (filled, or with "{}") and attribute, as in ROME's known_1000.json."""
    return _parse_all(path, _known_fact, limit)
