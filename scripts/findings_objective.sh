#!/usr/bin/env bash
# Contrastive against predictive (cross-view L2) learning: the same encoders and epochs, at demo scale on the CPU.
# SEEDS="0 1 2" bash scripts/findings_objective.sh   repeats over seeds; extra arguments go to scripts/findings.py.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python scripts/findings.py objective --seeds ${SEEDS:-0} "$@"
