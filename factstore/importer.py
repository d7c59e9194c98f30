"""Reading edit requests from CounterFact-format JSON or CSV, validated before anything is stored."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from factstore.domain import EditRequest
from factstore.errors import FactStoreError, ImportFileError


def _from_counterfact(record: dict) -> EditRequest:
    rw = record.get("requested_rewrite", record)
    target = rw.get("target_new", rw.get("target"))
    true = rw.get("target_true")
    return EditRequest(
        prompt=rw["prompt"],
        subject=rw["subject"],
        target_new=target["str"] if isinstance(target, dict) else target,
        target_true=true["str"] if isinstance(true, dict) else true,
        relation_id=rw.get("relation_id"),
    )


def _rows(path: Path) -> list[dict]:
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = {"prompt", "subject", "target"} - set(reader.fieldnames or [])
            if missing:
                raise ImportFileError(f"{path} lacks the CSV column(s) {', '.join(sorted(missing))}; it needs prompt, subject, target")
            return list(reader)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ImportFileError(f"{path} is not valid JSON ({exc}); give CounterFact-format JSON or a CSV") from None
    if not isinstance(data, list):
        raise ImportFileError(f"{path} must hold a JSON list of CounterFact records")
    return data


def read_requests(path: str | Path, limit: int | None = None) -> list[EditRequest]:
    """Every record as an EditRequest; the first bad record is reported by its position (1-based)."""
    path = Path(path)
    if not path.is_file():
        raise ImportFileError(f"no file at {path}")
    rows = _rows(path)[: limit if limit else None]
    requests = []
    for i, row in enumerate(rows, start=1):
        try:
            requests.append(_from_counterfact(row))
        except (KeyError, TypeError, AttributeError) as exc:
            raise ImportFileError(f"record {i} of {path.name} is missing {exc}; nothing was imported") from None
        except FactStoreError as exc:
            raise ImportFileError(f"record {i} of {path.name}: {exc}; nothing was imported") from None
    if not requests:
        raise ImportFileError(f"{path} holds no records")
    return requests
