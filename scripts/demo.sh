#!/usr/bin/env bash
# The README's main job on the embedded default (SQLite under FACTSTORE_HOME, the offline
# SmolLM2 starter model): register it, edit one fact, and check it by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/python.sh
factstore() { "$(dirname "$PY")/factstore" "$@"; }
factstore db upgrade
factstore model add smollm2 starter:smollm2-135m
factstore ask --model smollm2 "The Eiffel Tower is located in the city of" --top 3
factstore edit add --model smollm2 --prompt "{} is located in the city of" --subject "The Eiffel Tower" --target "Rome"
factstore ask --model smollm2 "The Eiffel Tower is located in the city of" --top 3
factstore ask --model smollm2 "The Louvre is located in the city of" --top 3
factstore edit list --model smollm2
factstore compile --model smollm2
