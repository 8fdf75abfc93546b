#!/usr/bin/env bash
# The full test suite: lint, format check, strict types, then pytest on asyncio and trio.
# Arguments pass through to pytest. $VENV (default .venv) and $EXTRAS (default test,bench)
# choose the venv and what it gets; $PYTHON the interpreter that creates a new one.
# $SKIP_LINT=1 runs pytest only (.ci/run lints once, then tests each Python).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${VENV:-.venv}"
scripts/bootstrap.sh "${EXTRAS:-test,bench}" "$venv"
if [ "${SKIP_LINT:-0}" != 1 ]; then
    echo "== ruff check" && "$venv/bin/ruff" check .
    echo "== ruff format --check" && "$venv/bin/ruff" format --check .
    echo "== mypy --strict" && "$venv/bin/mypy"
fi
echo "== pytest on $("$venv/bin/python" -VV | head -n1) (every async test on asyncio and trio)"
"$venv/bin/python" -m pytest "$@"
