#!/usr/bin/env bash
# The README's demo numbers: the demo with seeds 0, 1 and 2 in float32 (--amp off, as a CPU without bfloat16 runs it;
# about 8 minutes each on 2 CPU cores), then the mean and spread per method.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/demo.sh --amp off --seed 0 --out results/demo
bash scripts/demo.sh --amp off --seed 1 --out results/demo_seed1
bash scripts/demo.sh --amp off --seed 2 --out results/demo_seed2
.venv/bin/python scripts/run_demo.py --summarise results/demo.md results/demo_seed1.md results/demo_seed2.md
