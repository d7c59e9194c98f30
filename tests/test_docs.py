"""The documentation a newcomer reads stays true: the CLI reference is the typer app's, the
README is short and links only to files that exist."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_cli_reference_is_generated_from_the_current_app(tmp_path: Path) -> None:
    out = tmp_path / "cli.md"
    command = [sys.executable, "-m", "typer", "factstore.cli.main", "utils", "docs", "--name", "factstore"]
    done = subprocess.run(
        [*command, "--title", "factstore command reference", "--output", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert out.read_text() == (REPO / "docs" / "cli.md").read_text(), (
        "docs/cli.md is stale: run bash scripts/cli_docs.sh"
    )


def test_the_readme_is_short_and_its_links_resolve() -> None:
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    links = re.findall(r"\]\(([^)#]+)\)", readme)
    assert links and all((REPO / link).exists() for link in links), [
        link for link in links if not (REPO / link).exists()
    ]
    assert readme.splitlines()[12:14] == [
        'bash scripts/demo.sh    # set up, then edit "The Eiffel Tower is in Paris" -> Rome on SmolLM2 (SQLite, offline)',
        "bash scripts/test.sh    # set up, then run the whole test suite (bash scripts/test.sh --fast: without the slow tests)",
    ]
