#!/usr/bin/env bash
# The README's test command: set up, then run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/python.sh
exec "$PY" -m pytest -q -p no:cacheprovider --durations=25 tests "$@"
