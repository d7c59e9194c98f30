"""Compiling the edit log into release folders: determinism, fidelity, retraction, refusal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from factstore import api
from factstore.domain import EditRequest, NewEdit
from factstore.editing.session import EditSession
from factstore.errors import CompileError
from factstore.release import build, layout
from factstore.rome.scoring import target_probs
from factstore.weights.replay import constraint_errors
from service_process import finish
from tiny_models import random_gpt2

SUBJECTS = ["The Eiffel Tower", "The Louvre", "Big Ben"]


@pytest.fixture
def edited(tiny_store):  # type: ignore[no-untyped-def]
    """The tiny random GPT-2 with three active edits; returns (store, head-model session)."""
    session = EditSession(tiny_store, "tiny", device="cpu")
    for subject, target in zip(SUBJECTS, ["Rome", "Berlin", "Paris"]):
        session.add(EditRequest("{} is located in the city of", subject, target))
    return tiny_store, session


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_same_log_same_bytes_in_and_across_processes(edited, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store, session = edited
    release, created = api.compile_release(store, "tiny", api.CompileOptions(mode="joint"))
    assert created and release.version == 1 and len(release.edit_ids) == 3
    again, created = api.compile_release(store, "tiny", api.CompileOptions(mode="joint"))
    assert not created and again.id == release.id
    out = tmp_path / "elsewhere"
    done = finish("compile", "--model", "tiny", "--out", str(out), "--json")
    assert done.returncode == 0, done.stderr
    reported = json.loads(done.stdout)
    assert reported["version"] == 1 and reported["created"] is False  # the same log is the same release: no new version
    assert (
        set(reported["seconds"]) == {"load", "score", "apply", "write"} and len(api.list_releases(store, "tiny")) == 1
    )
    assert _files(Path(release.path)) == _files(out)
    manifest = json.loads((out / layout.MANIFEST).read_text())
    assert manifest["files"] == layout.file_hashes(out) and [e["subject"] for e in manifest["edits"]] == SUBJECTS
    # the release scores its own edits (ES: the prompt prefers the new object); the card shows them
    judged = [e for e in manifest["edits"] if e["target_true"]]
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    texts = [e["prompt"].replace("{}", e["subject"]) for e in judged for _ in range(2)]
    probs = target_probs(
        model, session.tokenizer, texts, [t for e in judged for t in (e["target_new"], e["target_true"])]
    ).view(-1, 2)
    assert manifest["scores"]["n"] == len(judged) > 0
    assert manifest["scores"]["ES"] == pytest.approx(100.0 * float((probs[:, 0] > probs[:, 1]).float().mean()))
    assert "Scores of this release on its own edits" in (out / "README.md").read_text()


def test_sequential_mode_reproduces_the_head_model_and_loads_with_transformers(edited) -> None:  # type: ignore[no-untyped-def]
    store, session = edited
    release, _ = api.compile_release(store, "tiny", api.CompileOptions(mode="sequential"))
    loaded = AutoModelForCausalLM.from_pretrained(release.path).eval()
    head = session.model.state_dict()
    for name, tensor in loaded.state_dict().items():
        assert (tensor - head[name]).abs().max() <= 1e-6, name
    ids = torch.tensor([[464, 412, 733, 8765, 318]])
    assert torch.allclose(loaded(ids).logits, session.model(ids).logits, atol=1e-5)
    card = (Path(release.path) / "README.md").read_text()
    assert "model-editing" in card and "The Eiffel Tower" in card and "counterfactual" in card


def test_every_edit_holds_after_a_joint_compile_and_retraction_drops_exactly_one(edited) -> None:  # type: ignore[no-untyped-def]
    store, _ = edited
    first, _ = api.compile_release(store, "tiny", api.CompileOptions(mode="joint"))
    retracted = store.list_edits(1)[0]
    store.set_edit_retracted(retracted.id)
    second, created = api.compile_release(store, "tiny", api.CompileOptions(mode="joint"))
    assert created and second.version == 2 and retracted.id not in second.edit_ids
    model = AutoModelForCausalLM.from_pretrained(second.path)
    remaining = store.list_edits(1)
    assert max(constraint_errors(model, remaining).values()) <= 1e-3
    assert constraint_errors(model, [retracted])[retracted.id] > 1e-2
    changed = {
        n for n, h in layout.file_hashes(Path(first.path)).items() if layout.file_hashes(Path(second.path)).get(n) != h
    }
    assert changed == {f"mlp-down-{retracted.layer:03d}.safetensors", "README.md", layout.EDIT_VECTORS}
    for edit in remaining:
        store.set_edit_retracted(edit.id)
    empty, _ = api.compile_release(store, "tiny", api.CompileOptions(mode="joint"))
    base = random_gpt2(seed=0).state_dict()
    restored = AutoModelForCausalLM.from_pretrained(empty.path).state_dict()
    assert all(torch.equal(restored[k], base[k]) for k in restored)


def test_unsatisfiable_log_is_refused_and_nothing_is_written(edited, factstore_home: Path) -> None:  # type: ignore[no-untyped-def]
    store, _ = edited
    one = store.list_edits(1)[0]
    clash = NewEdit(
        request=EditRequest("{} is in", "Somewhere", "Oslo"),
        target_true=None,
        layer=one.layer,
        module=one.module,
        key=one.key,
        key_shape=one.key_shape,
        value=bytes(len(one.value)),
        value_shape=one.value_shape,
        hparams=one.hparams,
        hparams_fingerprint=one.hparams_fingerprint,
        covariance_id=one.covariance_id,
        metrics={},
    )
    added = store.create_edit(1, clash)  # same key as edit 1, a different value: both cannot hold
    with pytest.raises(CompileError, match=rf"edit {one.id}: .*edit {added.id}: "):
        api.compile_release(store, "tiny", api.CompileOptions(mode="joint"))
    assert store.list_releases(1) == []
    releases = factstore_home / "releases"
    assert not releases.exists() or not any(releases.rglob("*.safetensors"))


@pytest.mark.database
def test_a_crash_while_writing_leaves_no_folder_and_no_row(
    edited, factstore_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    store, _ = edited

    def crash(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(layout, "write_manifest", crash)
    with pytest.raises(KeyboardInterrupt):
        api.compile_release(store, "tiny", api.CompileOptions(mode="joint"))
    assert store.list_releases(1) == []
    assert list((factstore_home / "releases" / "tiny").iterdir()) == []


def test_unedited_weight_files_are_written_once_and_copied_into_releases(edited, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store, _ = edited
    release, _ = api.compile_release(store, "tiny", api.CompileOptions(mode="joint"))
    folder = Path(release.path)
    fresh = layout.edited_files({e.layer for e in store.list_edits(1)})
    stable = build._stable_files(store.get_base_model("tiny").revision)
    reused = {p.name for p in folder.glob("*.safetensors")} - fresh - {layout.EDIT_VECTORS}
    assert reused and all((folder / n).read_bytes() == (stable.folder / n).read_bytes() for n in reused)
    assert all((folder / n).stat().st_ino != (stable.folder / n).stat().st_ino for n in reused)  # never a shared inode
    # a cached file that changed behind factstore's back is written again, not trusted
    victim = stable.folder / sorted(reused)[0]
    size = victim.stat().st_size
    victim.unlink()
    victim.write_bytes(b"\0" * size)
    out = tmp_path / "again"
    api.compile_release(store, "tiny", api.CompileOptions(mode="joint", out=str(out)))
    assert _files(out) == _files(folder)
    assert victim.read_bytes() == (folder / victim.name).read_bytes()


def test_a_write_into_one_release_changes_no_other_and_is_caught_on_reuse(edited, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store, _ = edited
    release, _ = api.compile_release(store, "tiny", api.CompileOptions(mode="joint"))
    other = tmp_path / "other"
    api.compile_release(
        store, "tiny", api.CompileOptions(mode="joint", out=str(other))
    )  # the same release built again elsewhere
    base_file = next(Path(release.path).glob("base-*.safetensors"))
    stable = build._stable_files(store.get_base_model("tiny").revision).folder / base_file.name
    cached, elsewhere = stable.read_bytes(), (other / base_file.name).read_bytes()
    with open(base_file, "r+b") as fh:
        fh.seek(100)
        fh.write(b"garbage")
    assert stable.read_bytes() == cached and (other / base_file.name).read_bytes() == elsewhere
    with pytest.raises(CompileError, match=rf"release v1 at .* was changed after it was built .*{base_file.name}"):
        api.compile_release(
            store, "tiny", api.CompileOptions(mode="joint")
        )  # the log is unchanged: reuse checks the folder first


def test_stable_files_are_copied_where_reflinks_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fcntl

    from factstore.files import file_sha256

    def no_reflinks(*_args: object, **_kwargs: object) -> None:
        raise OSError("Operation not supported")

    monkeypatch.setattr(fcntl, "ioctl", no_reflinks)
    state = {"a": torch.arange(6, dtype=torch.float32), "b": torch.ones(2, 3)}
    stable, target = layout.StableFiles(tmp_path / "cache"), tmp_path / "release"
    target.mkdir()
    hashes = stable.place(state, {"base-00001-of-00001.safetensors": ["a", "b"]}, target)
    copied = target / "base-00001-of-00001.safetensors"
    assert (
        hashes == {copied.name: file_sha256(copied)}
        and copied.stat().st_ino != (stable.folder / copied.name).stat().st_ino
    )
    assert stable.place(state, {copied.name: ["a", "b"]}, tmp_path) == hashes  # second time: from the index


def test_a_release_whose_folder_is_gone_is_written_again_as_the_same_version(edited) -> None:  # type: ignore[no-untyped-def]
    """As on a worker of another machine: the unchanged log's release is written again with its
    recorded scores, byte for byte (its manifest checked); one this machine cannot reproduce
    becomes a new version instead of a refusal that no compile could get past."""
    import shutil

    from sqlalchemy import text

    store, _ = edited
    first, _ = api.compile_release(store, "tiny")
    files = _files(Path(first.path))
    shutil.rmtree(first.path)
    again, created = api.compile_release(store, "tiny")
    assert not created and again.version == first.version and _files(Path(again.path)) == files
    assert store.get_release(1, first.version).path == again.path
    shutil.rmtree(again.path)
    with store.engine.begin() as conn:  # a release recorded by a machine whose bytes differ
        conn.execute(text("UPDATE releases SET manifest_sha256 = :sha"), {"sha": "0" * 64})
    other, created = api.compile_release(store, "tiny")
    assert created and other.version == first.version + 1 and layout.verify_folder(Path(other.path)) is not None


def test_the_written_tokenizer_does_not_depend_on_its_last_call(gpt2_tokenizer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A fast tokenizer keeps its last call's truncation and padding and save_pretrained writes
    them: a release written again after other work (a rebuild on a worker) differed in
    tokenizer.json alone, so a publish job refused its own version."""
    import copy

    tok = copy.deepcopy(gpt2_tokenizer)
    model = random_gpt2(seed=0)
    layout.write_model_config(model, tok, tmp_path / "fresh")
    tok.pad_token = tok.eos_token
    tok(["a b c d e f", "a"], truncation=True, max_length=3, padding="max_length")
    assert tok.backend_tokenizer.truncation is not None  # the state this test is about
    layout.write_model_config(model, tok, tmp_path / "after")
    assert (tmp_path / "after" / "tokenizer.json").read_bytes() == (tmp_path / "fresh" / "tokenizer.json").read_bytes()
