#!/usr/bin/env bash
# From a fresh checkout to a serving demo on this machine's CPU (a few minutes):
# sets up .venv with the train and serve extras, then runs `whaleid demo`.
# Usage: bash scripts/demo.sh [--out .demo] [--port 8000] [--no-serve]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${WHALEID_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
    echo "== creating $VENV" >&2
    "$(command -v python3.11 || command -v python3)" -m venv "$VENV"
    "$VENV/bin/pip" install -q -U pip
fi
if [ ! -x "$VENV/bin/whaleid" ] || ! "$VENV/bin/python" -c "import torch, fastapi" 2>/dev/null; then
    echo "== installing whaleid[train,serve]" >&2
    "$VENV/bin/pip" install -q -e ".[train,serve]"
fi
exec "$VENV/bin/whaleid" demo "$@"
