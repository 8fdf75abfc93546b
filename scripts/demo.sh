#!/usr/bin/env bash
# The main job: the demo (local SGP server in a subprocess unless --remote). Args pass through.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh server
exec .venv/bin/python -m demo "$@"
