#!/usr/bin/env bash
# The README's test command: lint where cheap, then the default (fast) pytest suite.
# Slow tests (minutes each) run with: python3 -m pytest -m slow
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m flake8 projects tests benchmarks tools datasets train_net.py demo.py 2>/dev/null \
  || python3 -m flake8 projects tests benchmarks tools datasets train_net.py
python3 -m isort --check-only --diff projects tests benchmarks tools datasets *.py
python3 -m pytest -q "$@"
