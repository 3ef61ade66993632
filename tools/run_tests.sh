#!/usr/bin/env bash
# The README's test command: lint (flake8 + isort), then the default (fast) pytest suite.
# Slow tests (minutes each) run with: python3 -m pytest -m slow
set -euo pipefail
cd "$(dirname "$0")/.."
LINTED=(projects tests benchmarks tools datasets train_net.py demo.py)
python3 -m flake8 "${LINTED[@]}"
python3 -m isort --check-only --diff "${LINTED[@]}"
# two worker processes (most tests run on one thread); a test file stays on one worker so its
# module fixtures are built once. PYTEST_WORKERS=0 runs in this process (for -s / pdb).
python3 -m pytest -q -n "${PYTEST_WORKERS:-2}" --dist loadfile "$@"
