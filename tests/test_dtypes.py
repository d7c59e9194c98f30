"""Checkpoints kept in their own dtype: a bfloat16 or float16 model is loaded, edited, compiled
and released in that dtype, its rebuilds are byte-identical, and the dtype is part of its identity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from factstore import api, arch
from factstore.editing.session import EditSession
from factstore.errors import InvalidArgument, ModelAliasTaken
from factstore.release import layout
from factstore.weights.replay import constraint_errors, tolerance
from tiny_models import random_decoder

REQUESTS = [("The Eiffel Tower", "Rome"), ("The Louvre", "Berlin"), ("Big Ben", "Paris")]


def _store(db_url: str, tmp_path: Path, gpt2_tokenizer, family: str, saved: torch.dtype):  # type: ignore[no-untyped-def]
    folder = tmp_path / f"{family}-{saved}"
    random_decoder(family, seed=0, dtype=saved).save_pretrained(folder)
    gpt2_tokenizer.save_pretrained(folder)
    corpus = tmp_path / "corpus.json"
    corpus.write_text(
        json.dumps([f"Paragraph {i}: the river runs through the old town and the fields." for i in range(100)])
    )
    api.upgrade_database(db_url)
    return api.open_store(db_url), folder, corpus


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize(
    ("dtype", "pinned"), [("bfloat16", False), ("float16", True)], ids=["bf16-declared", "fp16-pinned"]
)
def test_a_low_precision_model_stays_in_its_dtype(
    family: str, dtype: str, pinned: bool, db_url: str, tmp_path: Path, gpt2_tokenizer
) -> None:  # type: ignore[no-untyped-def]
    torch_dtype = getattr(torch, dtype)
    # bfloat16: the checkpoint declares it; float16: a float32 checkpoint pinned with --dtype
    store, folder, corpus = _store(db_url, tmp_path, gpt2_tokenizer, family, torch.float32 if pinned else torch_dtype)
    base, _ = api.add_model(store, "m", str(folder), dtype=dtype if pinned else None)
    assert base.dtype == dtype and base.identity == f"{base.revision}+{dtype}"
    api.compute_stats(store, "m", api.StatsOptions(layer=1, corpus=str(corpus), tokens=1000), device="cpu")
    session = EditSession(store, "m", device="cpu")
    for subject, target in REQUESTS:
        session.add(api.EditRequest("{} is located in the city of", subject, target), layer=1)
    assert {p.dtype for p in session.model.parameters()} == {torch_dtype}  # nothing upcast, the edited layer included
    edits = api.list_edits(store, "m")
    assert (
        constraint_errors(session.model, edits)[edits[-1].id] <= tolerance(session.model, 1) < 0.02
    )  # (each held after its own update)

    first, _ = api.compile_release(
        store, "m", api.CompileOptions(mode="joint"), device="cpu"
    )  # refused if an edit's constraint failed after rounding
    again, _ = api.compile_release(
        store, "m", api.CompileOptions(mode="joint", out=str(tmp_path / "again")), device="cpu"
    )
    files = sorted(p.name for p in Path(first.path).iterdir())
    assert files == sorted(p.name for p in Path(again.path).iterdir())
    assert all((Path(first.path) / n).read_bytes() == (Path(again.path) / n).read_bytes() for n in files)
    weights = [p for p in Path(first.path).glob("*.safetensors") if p.name != layout.EDIT_VECTORS]
    for path in weights:
        with safe_open(str(path), "pt") as f:
            names = f.keys()  # safe_open is not iterable
            assert {f.get_slice(k).get_dtype() for k in names} == {"BF16" if dtype == "bfloat16" else "F16"}, path.name
    manifest = json.loads((Path(first.path) / layout.MANIFEST).read_text())
    assert manifest["base"]["dtype"] == dtype
    loaded = AutoModelForCausalLM.from_pretrained(first.path, dtype="auto")
    assert loaded.dtype == torch_dtype and max(constraint_errors(loaded, edits).values()) <= tolerance(loaded, 1)
    sequential, _ = api.compile_release(store, "m", api.CompileOptions(mode="sequential"), device="cpu")
    loaded = AutoModelForCausalLM.from_pretrained(sequential.path, dtype="auto")
    assert torch.equal(
        arch.down_proj_weight(loaded, 1), arch.down_proj_weight(session.model, 1)
    )  # the sequential release is the head


def test_the_dtype_is_part_of_the_identity(db_url: str, tmp_path: Path, gpt2_tokenizer) -> None:  # type: ignore[no-untyped-def]
    store, folder, _ = _store(db_url, tmp_path, gpt2_tokenizer, "gpt2", torch.float32)
    base, created = api.add_model(store, "m", str(folder))
    assert created and base.dtype == "float32" and base.identity == base.revision  # float32 identities are unchanged
    with pytest.raises(ModelAliasTaken, match=r"in float32.*in bfloat16"):
        api.add_model(store, "m", str(folder), dtype="bfloat16")
    with pytest.raises(InvalidArgument, match="unknown dtype 'float8'; use one of float32, bfloat16, float16"):
        api.add_model(store, "m2", str(folder), dtype="float8")
    bf16, created = api.add_model(store, "m-bf16", str(folder), dtype="bfloat16")
    assert created and bf16.revision == base.revision and bf16.identity != base.identity
