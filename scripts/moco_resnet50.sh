#!/usr/bin/env bash
# One exact command per reported result. Set the three folders, then run: bash scripts/moco_resnet50.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# MoCo, ResNet-50, ImageNet-100, softmax with a queue of 16384 keys.
DATA=${DATA:-/path/to/imagenet100}
MODELS=${MODELS:-/path/to/models}
TB=${TB:-/path/to/tensorboard}
python train_moco_ins.py --batch_size 128 --num_workers 24 --nce_k 16384 --softmax --moco \
  --data_folder "$DATA" --model_path "$MODELS" --tb_path "$TB"
