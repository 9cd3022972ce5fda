#!/usr/bin/env bash
# The demo on a fresh machine, offline, CPU only: pretrain CMC (Lab), InsDis and MoCo on the bundled emoji set,
# linear-probe them and random encoders, print the table (also in results/demo.md, with results/demo.png).
#   bash scripts/demo.sh              # README, "The demo", for the minutes on 2 CPU cores
#   bash scripts/demo.sh --minutes 5  # every stage scaled to fit 5 minutes here
#   bash scripts/demo.sh --smoke      # one short epoch per stage
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/python scripts/run_demo.py "$@"
