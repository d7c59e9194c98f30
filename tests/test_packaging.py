"""What `pip install factstore-edit` gives without extras: the library, the CLI and SQLite work,
and a front that needs an extra says which one in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXTRAS = ("fastapi", "uvicorn", "starlette", "jinja2", "multipart", "psycopg", "matplotlib", "gguf")

# Run in a child interpreter in which importing (or finding) any extra's package fails, as
# in an environment where only the core is installed.
BLOCK = f"""
import importlib.abc, sys
class _NoExtras(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {EXTRAS!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}")
        return None
sys.meta_path.insert(0, _NoExtras())
import importlib.util
_find = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a: None if name.split(".")[0] in {EXTRAS!r} else _find(name, *a)
"""


def _core(code: str, *, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCK + code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return _core(f"sys.argv = ['factstore', *{list(args)!r}]\nfrom factstore.cli.main import main\nmain()", env=env)


def test_the_core_runs_without_any_extra() -> None:
    done = _core("import factstore.api as api\nstore = api.open_store()\nprint(api.list_models(store))")
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr
    assert _cli("--help").returncode == 0
    listed = _cli("model", "list", "--json")
    assert listed.returncode == 0 and listed.stdout.strip() == "[]", listed.stderr


@pytest.mark.parametrize(
    ("args", "env", "extra"),
    [
        (("serve",), {}, "server"),
        (("model", "list"), {"FACTSTORE_DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:1/none"}, "postgres"),
    ],
)
def test_a_missing_extra_is_one_line_naming_it(args: tuple[str, ...], env: dict[str, str], extra: str) -> None:
    done = _cli(*args, env=env)
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error: ") and line.endswith(f"pip install 'factstore-edit[{extra}]'")


def test_the_distribution_declares_what_the_core_imports() -> None:
    from importlib.metadata import distribution

    meta = distribution("factstore-edit")
    core = {
        r.split(";")[0].split("[")[0].split(">")[0].split("<")[0].split("=")[0].strip().lower()
        for r in meta.requires or []
        if "extra ==" not in r
    }
    assert {
        "torch",
        "transformers",
        "huggingface-hub",
        "httpx2",
        "sqlalchemy",
        "alembic",
        "typer",
        "pydantic-settings",
    } <= core
    assert not core & {"fastapi", "uvicorn", "matplotlib", "psycopg", "gguf"}
    assert meta.version == __import__("factstore").__version__
    assert (Path(__import__("factstore").__file__).parent / "py.typed").exists()
