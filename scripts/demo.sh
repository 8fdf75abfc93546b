#!/usr/bin/env bash
# The main job: the demo (a Temporal dev server, worker processes, the local SGP server
# unless --remote). Args pass through.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh server,temporal
exec .venv/bin/python -m demo "$@"
