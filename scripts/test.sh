#!/usr/bin/env bash
# Set up, lint, and run the test suite: all of it (CI), or with --fast only the tests not marked slow
# (a few minutes, for the inner loop). Other arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check woodpecker tests benchmarks
if [ "${1:-}" = "--fast" ]; then
    shift
    set -- -m "not slow" "$@"
fi
.venv/bin/python -m pytest tests "$@"
