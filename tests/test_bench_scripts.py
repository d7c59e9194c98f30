"""The GPU benchmark is one command that must work the first time a GPU is lent: it runs here
on shrunken shapes on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_gpu_benchmark_runs_end_to_end_on_tiny_shapes(tmp_path: Path, gpt2_tokenizer) -> None:  # type: ignore[no-untyped-def]
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
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu.py"), "--tiny", "--device", "cpu", "--data", str(data)],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == 9  # 3 shape/dtype runs x (single, B=2, B=4)
    assert {r.split(" | ")[1] for r in rows} == {"float32", "bfloat16"} and all(
        float(r.split(" | ")[4]) > 0 for r in rows
    )
