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
# Two workers (CI's two cores): most of the suite is single-threaded Halide compilation. `-n 0` runs it in one process.
.venv/bin/python -m pytest tests -n 2 "$@"
