#!/usr/bin/env bash
# The test command: set up what the tests need, then run the whole suite (unit + integration).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
ruff check .
mypy sandlot
lint-imports --no-cache  # the layers and the no-cycles rule (pyproject's contracts)
python -m pytest -q "$@"
