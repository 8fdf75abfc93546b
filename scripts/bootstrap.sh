#!/usr/bin/env bash
# Create .venv (if missing) and install the project with the given extras, idempotently.
# Re-installs only when pyproject.toml or the extras change. Usage: scripts/bootstrap.sh test,bench
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-server}"
python_bin="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$python_bin" -m venv .venv
fi
stamp=".venv/.installed-$(echo "$extras" | tr ',' '-')"
want="$(cat pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[$extras]"
    echo "$want" > "$stamp"
fi
