#!/usr/bin/env bash
# Creates .venv with the pinned dependencies (idempotent; about 2 minutes on a fresh machine).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade "pip>=26"
.venv/bin/python -m pip install -q -e ".[test]"
