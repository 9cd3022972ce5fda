#!/usr/bin/env bash
# One exact command per reported result. Set the three folders, then run: bash scripts/probe_cmc_alexnet.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# Linear probe of a CMC AlexNet on conv5 (layer 5).
DATA=${DATA:-/path/to/imagenet}
CKPT=${CKPT:-/path/to/models/memory_nce_16384_alexnet_lr_0.03_decay_0.0001_bsz_256_view_Lab/ckpt_epoch_240.pth}
SAVE=${SAVE:-/path/to/linear}
TB=${TB:-/path/to/tensorboard}
python LinearProbing.py --dataset imagenet --model alexnet --learning_rate 0.1 --layer 5 \
  --data_folder "$DATA" --model_path "$CKPT" --save_path "$SAVE" --tb_path "$TB"
