#!/usr/bin/env bash
# The README's test command: set up, then run the whole suite on two xdist workers.
#   bash scripts/test.sh            everything (what CI runs)
#   bash scripts/test.sh --fast     the developer loop: leaves out tests marked slow
# Other arguments go to pytest (e.g. tests/test_cli.py -k retract).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/python.sh
args=()
for arg in "$@"; do
  if [ "$arg" = "--fast" ]; then args+=(-m "not slow"); else args+=("$arg"); fi
done
exec "$PY" -m pytest -q -p no:cacheprovider -n "${FACTSTORE_TEST_WORKERS:-2}" --durations=25 "${args[@]}"
