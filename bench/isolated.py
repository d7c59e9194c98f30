"""A throwaway FACTSTORE_HOME and Hugging Face home for benchmarks that talk to the suite's local
Hub server (tests/hub_server.py), so a run never touches the user's store or Hub cache."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def hub_bench_home(prefix: str) -> Path:
    """Point factstore and huggingface_hub at a fresh folder and the local server's token; the
    asset cache stays shared (FACTSTORE_CACHE, default ~/.factstore/cache)."""
    home = Path(tempfile.mkdtemp(prefix=prefix))
    os.environ.update(
        {
            "FACTSTORE_HOME": str(home),
            "HF_HOME": str(home / "hf"),
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_OFFLINE": "0",
            "HF_TOKEN": "bench-token",
            "NO_PROXY": "127.0.0.1,localhost",
            "HF_HUB_DISABLE_TELEMETRY": "1",
        }
    )
    os.environ.setdefault("FACTSTORE_CACHE", str(Path.home() / ".factstore" / "cache"))
    sys.path.insert(0, str(HERE / "tests"))
    return home
