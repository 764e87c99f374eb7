#!/usr/bin/env bash
# Set up, export ResNet-18 (random weights), optimize it, and time the plan against ONNX Runtime.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
mkdir -p models plans  # wpk writes only into folders that exist
.venv/bin/wpk export resnet18 -o models/resnet18.onnx
.venv/bin/wpk optimize models/resnet18.onnx -o plans/resnet18 --budget "${BUDGET:-4}"
.venv/bin/wpk bench plans/resnet18 --vs onnxruntime
