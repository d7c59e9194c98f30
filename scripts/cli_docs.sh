#!/usr/bin/env bash
# Regenerate docs/cli.md, the reference of every command and option, from the typer app.
# tests/test_docs.py fails when the file is not what this writes.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/python.sh
"$PY" -m typer factstore.cli.main utils docs --name factstore --title "factstore command reference" --output docs/cli.md
