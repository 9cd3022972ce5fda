#!/usr/bin/env bash
# The L encoder's probe against the number of views (2, 3, 4; core and full), at demo scale on the CPU.
# SEEDS="0 1 2" bash scripts/findings_views.sh   repeats over seeds; extra arguments go to scripts/findings.py.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python scripts/findings.py views --seeds ${SEEDS:-0} "$@"
