#!/usr/bin/env bash
# Install factstore and its test dependencies into the project's virtual environment (.venv,
# or the active one). torch is pinned to the CPU build that lies on disk here (a looser
# requirement lets pip fetch a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/python.sh
# 0.1.0 was installed as the distribution "factstore" (a name that belongs to another PyPI
# project); an environment made before the rename drops it so one package maps the import name
if "$PY" -m pip show --quiet factstore >/dev/null 2>&1; then "$PY" -m pip uninstall --quiet -y factstore; fi
# torch pinned in the same run: one resolution for everything. Where the CPU wheel lies on disk
# (/opt/wheels on these machines), uv installs from it in seconds (pip takes minutes); uv does
# not read pip's configuration, so the wheel is named exactly (+cpu).
WHEELS=/opt/wheels
if compgen -G "$WHEELS/torch-2.13.0+cpu-*.whl" >/dev/null && "$PY" -m pip install --quiet --disable-pip-version-check uv 2>/dev/null; then
  "$PY" -m uv pip install --quiet --python "$PY" --find-links "$WHEELS" "torch==2.13.0+cpu" -e '.[dev]'
else
  "$PY" -m pip install --quiet --disable-pip-version-check torch==2.13.0 -e '.[dev]'
fi
# The browser test drives Debian's chromium (Playwright's own browser download cannot work here).
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="$(command -v sudo || true)"
  if [ "$(id -u)" = 0 ] || [ -n "$SUDO" ]; then
    $SUDO apt-get install -y -q chromium >/dev/null 2>&1 || { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q chromium >/dev/null 2>&1; } \
      || echo "warning: could not install chromium; the browser test will be skipped" >&2
  else
    echo "warning: chromium is missing and apt-get needs root; the browser test will be skipped" >&2
  fi
fi
