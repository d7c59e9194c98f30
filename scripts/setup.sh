#!/usr/bin/env bash
# Install factstore and its test dependencies into the project's virtual environment (.venv,
# or the active one). torch is pinned to the CPU build that lies on disk here (a looser
# requirement lets pip fetch a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/python.sh
"$PY" -m pip install --quiet --disable-pip-version-check torch==2.13.0
"$PY" -m pip install --quiet --disable-pip-version-check -e '.[dev]'
