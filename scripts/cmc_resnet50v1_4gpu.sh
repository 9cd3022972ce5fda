#!/usr/bin/env bash
# One exact command per reported result. Set the three folders, then run: bash scripts/cmc_resnet50v1_4gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# CMC, ResNet-50 v1, ImageNet, 4 GPUs on one node (torchrun + DDP; --batch_size is per process: 4 x 32 = 128,
# the reference's global batch).
DATA=${DATA:-/path/to/imagenet}
MODELS=${MODELS:-/path/to/models}
TB=${TB:-/path/to/tensorboard}
torchrun --nproc_per_node 4 train_CMC.py --model resnet50v1 --batch_size 32 --num_workers 6 \
  --data_folder "$DATA" --model_path "$MODELS" --tb_path "$TB"
