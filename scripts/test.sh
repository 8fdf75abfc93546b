#!/usr/bin/env bash
# The full test suite: lint, format check, strict types, then pytest on asyncio and trio.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh test,bench
echo "== ruff check" && .venv/bin/ruff check .
echo "== ruff format --check" && .venv/bin/ruff format --check .
echo "== mypy --strict" && .venv/bin/mypy
echo "== pytest (every async test on asyncio and trio)"
.venv/bin/python -m pytest "$@"
