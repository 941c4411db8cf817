#!/usr/bin/env bash
# Set up (first time) and make a synthetic catalogue: bash scripts/synth.sh --out DIR [options]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${WHALEID_VENV:-.venv}
if [ ! -x "$VENV/bin/whaleid" ]; then
    "$(command -v python3.11 || command -v python3)" -m venv "$VENV"
    "$VENV/bin/pip" install -q -U pip
    "$VENV/bin/pip" install -q -e .
fi
exec "$VENV/bin/whaleid" synth "$@"
