#!/usr/bin/env bash
# One exact command per reported result. Set the three folders, then run: bash scripts/probe_cmc_resnet50v1.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# Linear probe of a CMC ResNet-50 v1 (v2: set MODEL=resnet50v2) after global pooling (layer 6). The default CKPT is
# what scripts/cmc_resnet50v1_4gpu.sh writes (DDP, --batch_size 32 per process).
DATA=${DATA:-/path/to/imagenet}
MODEL=${MODEL:-resnet50v1}
CKPT=${CKPT:-/path/to/models/memory_nce_16384_resnet50v1_lr_0.03_decay_0.0001_bsz_32_view_Lab/ckpt_epoch_240.pth}
SAVE=${SAVE:-/path/to/linear}
TB=${TB:-/path/to/tensorboard}
python LinearProbing.py --dataset imagenet --model "$MODEL" --learning_rate 30 --layer 6 \
  --data_folder "$DATA" --model_path "$CKPT" --save_path "$SAVE" --tb_path "$TB"
