"""The store on SQLite and PostgreSQL: exact vectors, seq order, supersession, retraction."""

from __future__ import annotations

import hashlib

import pytest
import torch

from factstore.api import upgrade_database
from factstore.domain import EditRequest, ModelRef, NewEdit
from factstore.errors import (
    DatabaseError,
    DatabaseUnavailable,
    EditStateError,
    ModelAliasTaken,
    UnknownEdit,
    UnknownModel,
)
from factstore.storage.store import Store
from factstore.weights.vectors import from_bytes, to_bytes

pytestmark = pytest.mark.database  # the store is the subject: SQLite and PostgreSQL

REF = ModelRef(source="starter:x", revision="sha256:" + "a" * 64, model_type="gpt2")


def new_edit(
    subject: str = "The Eiffel Tower", target: str = "Rome", prompt: str = "{} is in", seed: int = 0
) -> NewEdit:
    g = torch.Generator().manual_seed(seed)
    key, key_shape = to_bytes(torch.randn(16, generator=g))
    value, value_shape = to_bytes(torch.randn(8, generator=g))
    return NewEdit(
        request=EditRequest(prompt, subject, target),
        target_true="Paris",
        layer=1,
        module="transformer.h.1.mlp.c_proj",
        key=key,
        key_shape=key_shape,
        value=value,
        value_shape=value_shape,
        hparams={"layer": 1},
        hparams_fingerprint="f" * 64,
        covariance_id=None,
        metrics={"prob_new_after": 0.9},
    )


@pytest.fixture
def store(db_url: str) -> Store:
    upgrade_database(db_url)
    return Store(db_url)


def test_vectors_round_trip_bit_exactly(store: Store) -> None:
    base, created = store.create_base_model("m", REF)
    assert created
    g = torch.Generator().manual_seed(1)
    key = torch.randn(1536, generator=g) * 1e-3
    data, shape = to_bytes(key)
    edit = store.create_edit(base.id, NewEdit(**{**new_edit().__dict__, "key": data, "key_shape": shape}))
    back = store.get_edit(edit.id)
    assert back.key_sha256 == hashlib.sha256(data).hexdigest()
    assert torch.equal(from_bytes(back.key, back.key_shape, back.key_sha256), key)


def test_each_field_of_a_new_edit_reads_back_and_a_request_not_computed_is_no_stored_edit(store: Store) -> None:
    """Rows become domain types by field name (storage/convert.from_row): every field written
    comes back as its declared type, and a row without what its type requires is refused by name."""
    from factstore.storage import convert
    from factstore.storage.models import EditRow

    base, _ = store.create_base_model("m", REF)
    new = new_edit()
    stored = store.create_edit(base.id, new)
    asked = new.request
    assert (stored.prompt, stored.subject, stored.target_new) == (asked.prompt, asked.subject, asked.target_new)
    assert stored.status == "active" and stored.seq == 1
    for name in ("target_true", "layer", "module", "key", "key_shape", "value", "value_shape", "hparams"):
        assert getattr(stored, name) == getattr(new, name), name
    assert (stored.hparams_fingerprint, stored.metrics, stored.band) == (new.hparams_fingerprint, new.metrics, ())
    assert type(stored.key) is bytes and type(stored.key_shape) is tuple and stored.created_at.endswith("+00:00")
    with pytest.raises(ValueError, match="edits row 9 is pending: it has no seq"):
        convert.edit(EditRow(id=9, status="pending", prompt="{} is in", subject="Big Ben", target_new="Rome"))


def test_seq_counts_up_and_a_new_edit_of_the_same_fact_supersedes(store: Store) -> None:
    base, _ = store.create_base_model("m", REF)
    first = store.create_edit(base.id, new_edit())
    other = store.create_edit(base.id, new_edit(subject="The Louvre"))
    again = store.create_edit(base.id, new_edit(target="Berlin", seed=2))
    assert [first.seq, other.seq, again.seq] == [1, 2, 3]
    assert store.get_edit(first.id).status == "superseded" and again.supersedes_id == first.id
    assert [e.id for e in store.list_edits(base.id)] == [other.id, again.id]
    assert len(store.list_edits(base.id, "all")) == 3


def test_retract_and_its_errors(store: Store) -> None:
    base, _ = store.create_base_model("m", REF)
    edit = store.create_edit(base.id, new_edit())
    assert store.set_edit_retracted(edit.id).status == "retracted"
    with pytest.raises(EditStateError, match="already retracted"):
        store.set_edit_retracted(edit.id)
    with pytest.raises(UnknownEdit, match="no edit with id 999"):
        store.set_edit_retracted(999)
    assert store.list_edits(base.id) == []


def test_aliases_are_never_repointed(store: Store) -> None:
    store.create_base_model("m", REF)
    assert store.create_base_model("m", REF)[1] is False
    with pytest.raises(ModelAliasTaken, match="new alias"):
        store.create_base_model("m", ModelRef(source="starter:x", revision="sha256:" + "b" * 64, model_type="gpt2"))
    with pytest.raises(UnknownModel, match="known: m"):
        store.get_base_model("nope")


def test_a_broken_reference_is_refused_at_once_not_retried_as_a_seq_race(store: Store) -> None:
    base, _ = store.create_base_model("m", REF)
    dangling = NewEdit(**{**new_edit().__dict__, "covariance_id": 12345})  # no such key statistics row
    with pytest.raises(DatabaseError, match=r"refused to store the edit .*nothing was written"):
        store.create_edit(base.id, dangling)
    assert store.list_edits(base.id, "all") == []
    with pytest.raises(DatabaseError, match="refused to store context templates"):
        store.create_context_templates(base.id + 99, "f" * 64, seed=0, templates={"key": []})


def test_unreachable_database_is_a_clear_error() -> None:
    with pytest.raises(DatabaseUnavailable, match="cannot reach"):
        Store("postgresql+psycopg://nobody@127.0.0.1:1/none")


def test_sqlite_reads_do_not_queue_behind_a_writer(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import sqlite3
    import threading

    url = f"sqlite:///{tmp_path / 'r.db'}"
    upgrade_database(url)
    store = Store(url)
    store.create_base_model("m", REF)
    writer = sqlite3.connect(tmp_path / "r.db", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # another process holds the write lock (SQLite waits up to 60 s for it)
    try:
        seen: list[list[str]] = []
        reader = threading.Thread(target=lambda: seen.append([m.alias for m in store.list_base_models()]), daemon=True)
        reader.start()
        reader.join(timeout=20)
        assert seen == [["m"]], "a read queued behind the writer"
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_every_timestamp_is_utc_aware_in_one_format(tiny_store) -> None:  # type: ignore[no-untyped-def]
    # one API response used to mix naive (SQLite) and aware timestamps
    from datetime import datetime

    from factstore import api
    from factstore.domain import EditRequest
    from factstore.editing.session import EditSession

    EditSession(tiny_store, "tiny", device="cpu").add(EditRequest("{} is in", "The Louvre", "Rome"))
    release, _ = api.compile_release(tiny_store, "tiny")
    [entry] = api.list_log(tiny_store, "tiny")
    stamps = [
        tiny_store.get_base_model("tiny").created_at,
        api.list_edits(tiny_store, "tiny")[0].created_at,
        release.created_at,
        entry.created_at,
    ]
    assert all(datetime.fromisoformat(s).utcoffset() is not None for s in stamps), stamps
