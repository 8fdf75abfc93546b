#!/usr/bin/env bash
# Create a venv (if missing) and install the project with the given extras, idempotently.
# Re-installs only when pyproject.toml or the extras change.
#   scripts/bootstrap.sh [EXTRAS] [VENV_DIR]      e.g. scripts/bootstrap.sh test,bench
# EXTRAS defaults to `server`, VENV_DIR to `.venv`; the interpreter that creates a new venv is
# $PYTHON (default python3), e.g. PYTHON=~/.pyenv/versions/3.12.1/bin/python ... .venv-3.12.
# pip's output goes to VENV_DIR/install.log and is shown only when the install fails.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-server}"
venv="${2:-.venv}"
python_bin="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
    "$python_bin" -m venv "$venv"
fi
stamp="$venv/.installed-$(echo "$extras" | tr ',' '-')"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    log="$venv/install.log"
    if ! { "$venv/bin/python" -m pip install --disable-pip-version-check --upgrade pip &&
        "$venv/bin/python" -m pip install --disable-pip-version-check -e ".[$extras]"; } \
        >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        echo "bootstrap: installing .[$extras] into $venv failed (full log: $log)" >&2
        exit 1
    fi
    echo "$want" > "$stamp"
fi
