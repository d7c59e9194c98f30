#!/usr/bin/env bash
# Install factstore and its test dependencies. torch is pinned to the CPU build that lies
# on disk here (a looser requirement lets pip fetch a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check torch==2.13.0
python3 -m pip install --quiet --disable-pip-version-check -e '.[dev]'
