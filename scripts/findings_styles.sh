#!/usr/bin/env bash
# The L encoder against the number of views on the emoji styles data set (data/styles32: Google, Fluent-3D and
# OpenMoji renderings of each emoji; scripts/findings_styles.py), both objectives, at demo scale on the CPU: two runs
# side by side, one thread each.
# SEEDS="0 1 2" bash scripts/findings_styles.sh   repeats over seeds; extra arguments go to scripts/findings.py.
set -euo pipefail
cd "$(dirname "$0")/.."
lanes=2
for arg in "$@"; do [ "$arg" = --smoke ] && lanes=1; done     # a smoke run's scripts share one process
exec .venv/bin/python scripts/findings.py styles --lanes "$lanes" --seeds ${SEEDS:-0} "$@"
