#!/usr/bin/env bash
# Create .venv/ and install Woodpecker with pinned dependencies (torch from local disk when present).
# pip's chatter goes to .venv/setup.log, shown only if something fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
log=.venv/setup.log
echo "setting up .venv (log: $log)" >&2
{
    .venv/bin/python -m pip install --upgrade pip &&
    .venv/bin/python -m pip install -r requirements.txt &&
    .venv/bin/python -m pip install --no-deps -e .
} > "$log" 2>&1 || { tail -n 40 "$log" >&2; echo "setup failed: see $log" >&2; exit 1; }
.venv/bin/python -c "import woodpecker, halide, onnxruntime, torch, torchvision, openvino" \
    || { echo "setup failed: a dependency did not import" >&2; exit 1; }
