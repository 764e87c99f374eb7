#!/usr/bin/env bash
# Set up, lint, and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check woodpecker tests benchmarks
.venv/bin/python -m pytest tests "$@"
