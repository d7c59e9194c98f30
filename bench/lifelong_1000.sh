#!/usr/bin/env bash
# The 1,000-record lifelong run of issue 25 (docs/results.md), resumable: rerun the same line to
# continue where it stopped. RUN_DIR holds its store and scores; FACTSTORE_HOME its model, C and
# caches. Registration alone takes ~2 hours on 2 CPU cores; run it in the background:
#   nohup nice -n 5 bash bench/lifelong_1000.sh > lifelong.log 2>&1 &
# Then sweep the compile's settings over what is registered:
#   FACTSTORE_HOME=... python bench/soft_sweep.py --run-dir "$RUN_DIR" --dataset ../shared/data/counterfact_val_1000.json --n N
set -euo pipefail
cd "$(dirname "$0")/.."
export FACTSTORE_HOME="${FACTSTORE_HOME:-$HOME/.factstore-lifelong}" OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
RUN_DIR="${RUN_DIR:-$FACTSTORE_HOME/lifelong-1000}"  # LAYER=N: the edit layer (default the measured one)
# BAND=B: register each edit over B layers ending at LAYER (scored with --compile-mode band; B=1: one layer)
# HPARAMS="band_boost=2 ...": SmolLM2's default hyperparameters overridden (bench/with_hparams.py)
# FLUENCY=1: score GE at the end (50 records' generations); RETRACT=N: then retract N edits at random
# MODEL=gemma3 SOURCE=starter:gemma3-270m FAMILY=gemma3_text: another starter model; N=100: fewer records
# DATASET=FILE: other records; the 1,500-record curve reads val_1000 then counterfact_500, joined by
#   python bench/join_records.py ../shared/data/counterfact_val_1000.json ../shared/data/counterfact_500.json -o F
DATASET="${DATASET:-../shared/data/counterfact_val_1000.json}"
MODEL="${MODEL:-smollm2}" SOURCE="${SOURCE:-starter:smollm2-135m}" FAMILY="${FAMILY:-llama}"
F=.venv/bin/factstore
# BAND unset: the model's default band (SmolLM2: 9 ending at layer 8, rome/hparams.py), else one
# layer; BAND=1: one layer on any model. Scored in the log's own compile mode (band for a band
# log, else every mode; joint alone with BAND=1), or MODES="joint soft": only those
[ "${BAND:-}" = 1 ] && MODES="${MODES:-joint}"
$F model list --json | grep -q "\"alias\": \"$MODEL\"" || $F model add "$MODEL" "$SOURCE"
[ -n "${HPARAMS:-}" ] && F=".venv/bin/python bench/with_hparams.py $FAMILY $HPARAMS --"
exec $F eval --model "$MODEL" --dataset "$DATASET" --n "${N:-1000}" --mode lifelong \
  --every "${EVERY:-1000}" --batch 8 $(for m in ${MODES:-}; do echo --compile-mode "$m"; done) --run-dir "$RUN_DIR" \
  ${LAYER:+--layer "$LAYER"} ${BAND:+--band "$BAND"} ${RETRACT:+--retract "$RETRACT"} $([ -n "${FLUENCY:-}" ] || echo --no-fluency)
