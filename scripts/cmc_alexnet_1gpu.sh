#!/usr/bin/env bash
# One exact command per reported result. Set the three folders, then run: bash scripts/cmc_alexnet_1gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# CMC, AlexNet (two half-width AlexNets on L and ab), ImageNet, one GPU.
DATA=${DATA:-/path/to/imagenet}          # holds train/ (and val/)
MODELS=${MODELS:-/path/to/models}
TB=${TB:-/path/to/tensorboard}
python train_CMC.py --batch_size 256 --num_workers 36 \
  --data_folder "$DATA" --model_path "$MODELS" --tb_path "$TB"
