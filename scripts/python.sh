# Sourced by the other scripts: PY is the interpreter of the project's virtual environment.
# An active virtual environment is used as it is; otherwise .venv in the checkout (made once).
# A stock Debian/Ubuntu python3 refuses system-wide pip installs (PEP 668), and a venv keeps
# factstore's pins away from whatever else is installed.
if [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then
  PY="$VIRTUAL_ENV/bin/python"
else
  if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv || { echo "error: could not create .venv; on Debian/Ubuntu run: apt-get install python3-venv" >&2; exit 1; }
  fi
  PY="$PWD/.venv/bin/python"
fi
export PY
