#!/usr/bin/env bash
# Create .venv/ and install Woodpecker with pinned dependencies (torch from local disk when present).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip 2>&1 | grep -v "is ignored" || true
.venv/bin/python -m pip install --quiet -r requirements.txt 2>&1 | grep -v "is ignored" || true
.venv/bin/python -m pip install --quiet --no-deps -e . 2>&1 | grep -v "is ignored" || true
.venv/bin/python -c "import woodpecker, halide, onnxruntime, torch, torchvision, openvino" \
    || { echo "setup failed: a dependency did not import" >&2; exit 1; }
