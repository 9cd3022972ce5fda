#!/usr/bin/env bash
# The test suite on a fresh machine (CPU only, a few minutes): makes .venv if needed, installs, runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh --test
exec .venv/bin/python -m pytest -q tests "$@"
