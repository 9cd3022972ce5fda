#!/usr/bin/env bash
# Make .venv (if there is none) and install requirements.txt (+ pytest with --test) into it. Idempotent and quick
# when everything is already there. Used by scripts/demo.sh and scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
need="import torch, torchvision, numpy, PIL, skimage, tensorboard, tqdm, matplotlib, safetensors, sklearn, resvg_py"
[ "${1:-}" = "--test" ] && need="$need, pytest, timm"
if ! .venv/bin/python -c "$need" 2>/dev/null; then
  echo "installing requirements into .venv (PyTorch is large: this takes a few minutes once)"
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/python -m pip install -q -r requirements.txt $([ "${1:-}" = "--test" ] && echo pytest timm)
fi
