"""The GPU benchmark and correctness check are commands that must work when a GPU is lent: they
run here on shrunken shapes on the CPU."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _requests(tmp_path: Path) -> Path:
    facts = [
        ("The Eiffel Tower", "Rome"),
        ("The Louvre", "Berlin"),
        ("Big Ben", "Paris"),
        ("The Colosseum", "Madrid"),
        ("The Kremlin", "Oslo"),
    ]
    data = tmp_path / "requests.json"
    data.write_text(
        json.dumps([{"prompt": "{} is located in the city of", "subject": s, "target": t} for s, t in facts])
    )
    return data


def test_the_gpu_correctness_check_passes_with_both_sides_on_the_cpu(
    tmp_path: Path, gpt2_tokenizer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(
        sys, "argv", ["gpu_check.py", "--device", "cpu", "--n", "2", "--data", str(_requests(tmp_path))]
    )
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(REPO / "bench" / "gpu_check.py"), run_name="__main__")
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert done.value.code == 0, out
    assert len(rows) == 12 and all(r.endswith("| yes |") for r in rows)


@pytest.mark.slow
def test_the_gpu_benchmark_runs_end_to_end_on_tiny_shapes(
    tmp_path: Path, gpt2_tokenizer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    data = _requests(tmp_path)
    monkeypatch.setattr(sys, "argv", ["gpu.py", "--tiny", "--device", "cpu", "--data", str(data)])
    runpy.run_path(
        str(REPO / "bench" / "gpu.py"), run_name="__main__"
    )  # in-process: the script, not a process, is the subject
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == 6, out  # 3 shape/dtype runs x (single, B=2)
    assert {r.split(" | ")[1] for r in rows} == {"float32", "bfloat16"} and all(
        float(r.split(" | ")[4]) > 0 for r in rows
    )
