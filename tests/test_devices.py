"""Devices: the engine runs where it is told and touches no other device."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from factstore import api
from factstore.errors import InvalidArgument
from factstore.storage.store import Store
from factstore.weights import checkpoints

PACKAGE = Path(__file__).resolve().parents[1] / "factstore"


def _cuda_forbidden(monkeypatch: pytest.MonkeyPatch) -> None:
    def touched(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("CUDA was touched on a run told to use the CPU")

    monkeypatch.delenv("FACTSTORE_DEVICE", raising=False)
    for name in (
        "is_available",
        "device_count",
        "current_device",
        "synchronize",
        "set_device",
        "init",
        "max_memory_allocated",
    ):
        monkeypatch.setattr(torch.cuda, name, touched)
    monkeypatch.setattr(torch.Tensor, "cuda", touched)
    monkeypatch.setattr(torch.nn.Module, "cuda", touched)


def test_a_cpu_run_never_touches_cuda(tiny_store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    _cuda_forbidden(monkeypatch)
    api.add_edit(
        tiny_store, "tiny", api.EditRequest("{} is located in the city of", "The Eiffel Tower", "Rome"), device="cpu"
    )
    records = tmp_path / "edits.json"
    facts = [("The Louvre", "Berlin"), ("Big Ben", "Paris"), ("The Colosseum", "Madrid")]
    records.write_text(
        json.dumps([{"prompt": "{} is located in the city of", "subject": s, "target": t} for s, t in facts])
    )
    assert (
        api.import_edits(tiny_store, "tiny", str(records), None, api.EditOptions(batch=3), device="cpu")["added"] == 3
    )
    release, _ = api.compile_release(tiny_store, "tiny", device="cpu")
    assert Path(release.path).is_dir()
    assert api.ask_model(tiny_store, "tiny", "The Louvre is located in the city of", device="cpu").top


def test_no_device_is_named_outside_the_one_place_that_chooses_it() -> None:
    """Tensors are created on the device of the module they meet; only the default is chosen by name."""
    allowed = {("weights/checkpoints.py", "_placement")}
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        functions = {n: fn.name for fn in ast.walk(tree) if isinstance(fn, ast.FunctionDef) for n in ast.walk(fn)}
        for node in ast.walk(tree):
            named = isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("cuda")
            called = (
                isinstance(node, ast.Attribute)
                and node.attr == "cuda"
                and not (isinstance(node.value, ast.Name) and node.value.id == "torch")
            )
            if (named or called) and (str(path.relative_to(PACKAGE)), functions.get(node)) not in allowed:
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert found == []


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "cpu; rm -rf /", ""])
def test_an_unknown_device_is_refused_in_one_line(device: str) -> None:
    with pytest.raises(InvalidArgument, match="unknown device"):
        checkpoints.check_device(device)
