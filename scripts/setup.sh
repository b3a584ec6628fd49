#!/usr/bin/env bash
# Creates .venv with the pinned dependencies (idempotent; about 2 minutes on a fresh machine).
set -euo pipefail
cd "$(dirname "$0")/.."
# No wheel cache: the wheels pip downloads (TensorFlow, JAX, LiteRT: GBs) would sit on disk twice, and a CI
# machine once ran out of space in this install (Errno 28).
export PIP_NO_CACHE_DIR=1
# A fresh install grows the disk by ~4.7 GB (4734 MiB measured 2026-12-07, wheels unpacked into .venv; pip's
# temporary files included): on a machine with less free, say so and stop instead of failing inside pip.
if [ ! -d .venv ]; then
    free_mib=$(df -Pm . | awk 'NR==2 {print $4}')
    if [ "${free_mib:-0}" -lt 4800 ]; then
        echo "setup: only ${free_mib} MiB free on the disk holding $(pwd); a fresh .venv needs about 4800 MiB" >&2
        exit 1
    fi
fi
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade "pip>=26"
.venv/bin/python -m pip install -q -e ".[test]"
# iOS transport, second step (see pyproject.toml): then put back the typing_extensions ai-edge-litert needs.
.venv/bin/python -m pip install -q "pymobiledevice3==11.45.0"
.venv/bin/python -m pip install -q "typing_extensions==4.12.2"
# Headless Chromium (Debian's package) for the HTML report's browser test; skipped when already there,
# or when not root / no apt-get (the test then skips itself). A failed install does not fail setup.
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
        || echo "setup: chromium not installed; the report's browser test will be skipped" >&2
fi
# A C compiler for the host runtime's load-time page watch (host/native, built on first use); without one the
# models load as before, only with a higher peak. Installed like Chromium, only where it is missing.
if ! command -v "${CC:-cc}" >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc >/dev/null; } \
        || echo "setup: no C compiler installed; model loads will run without the page watch" >&2
fi
