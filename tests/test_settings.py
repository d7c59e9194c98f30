"""Every FACTSTORE_* setting: a good value is used, a bad one stops the command at start in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli_runner import run
from factstore import config

REPO = Path(__file__).resolve().parents[1]

BAD = [
    ("FACTSTORE_LEASE_SECONDS", "abc", "whole number from 1 to 86400"),
    ("FACTSTORE_LEASE_SECONDS", "0", "whole number from 1 to 86400"),
    ("FACTSTORE_MAX_PROMPT_TOKENS", "-5", "whole number from 1 to 1000000"),
    ("FACTSTORE_MAX_TARGET_TOKENS", "1.5", "whole number from 1 to 1000000"),
    ("FACTSTORE_DEVICE", "gpu", "cpu, cuda, cuda:N, mps or auto"),
    ("FACTSTORE_DEBUG", "maybe", "boolean"),
    ("FACTSTORE_HEALTH_TOKENS", "-1", "whole number from 0 to 1000000"),
    ("FACTSTORE_MAX_PERPLEXITY_RISE", "-1", "number from 0 to 1,000,000"),
    ("FACTSTORE_JOB_SECONDS", "0", "whole number from 1 to 604800"),
    ("FACTSTORE_TRACE_MAX_TOKENS", "many", "whole number from 1 to 1000000"),
    ("FACTSTORE_TRACE_MAX_SAMPLES", "10001", "whole number from 1 to 10000"),
    ("FACTSTORE_MAX_PENDING", "0", "whole number from 1 to 10000000"),
    ("FACTSTORE_ASK_THREADS", "0", "whole number from 1 to 64"),
    ("FACTSTORE_ASK_QUEUE", "-1", "whole number from 0 to 10000"),
    ("FACTSTORE_ASK_PER_MINUTE", "x", "whole number from 1 to 1000000"),
    ("FACTSTORE_ASK_HEADS", "65", "whole number from 1 to 64"),
]


@pytest.mark.parametrize(("name", "value", "accepts"), BAD)
def test_a_bad_value_is_one_line_naming_the_variable(
    name: str, value: str, accepts: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(config.SettingsError, match=f"^{name}='{value}' is not valid: .*{accepts}"):
        config.settings()
    done = run("model", "list", check=False)
    assert done.returncode == 1 and done.stdout == ""
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"error: {name}='{value}' is not valid: it takes ") and accepts in line


def test_good_values_are_used(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FACTSTORE_LEASE_SECONDS", "7")
    monkeypatch.setenv("FACTSTORE_MAX_PROMPT_TOKENS", "12")
    monkeypatch.setenv("FACTSTORE_MAX_TARGET_TOKENS", "3")
    monkeypatch.setenv("FACTSTORE_DEVICE", "cuda:1")
    monkeypatch.setenv("FACTSTORE_DEBUG", "yes")
    monkeypatch.setenv("FACTSTORE_DATABASE_URL", "")  # empty counts as unset
    assert (config.lease_seconds(), config.max_prompt_tokens(), config.max_target_tokens()) == (7, 12, 3)
    assert config.device() == "cuda:1" and config.debug() is True
    assert config.database_url() == f"sqlite:///{tmp_path / 'home' / 'factstore.db'}"


def test_the_worker_refuses_a_bad_lease_before_it_starts() -> None:
    """The issue's own check, as a user runs it: a real process, exit 1, one line."""
    done = subprocess.run(
        [sys.executable, "-m", "factstore.cli.main", "worker"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "FACTSTORE_LEASE_SECONDS": "abc"},
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "error: FACTSTORE_LEASE_SECONDS='abc' is not valid: it takes a whole number from 1 to 86400"
    ]
