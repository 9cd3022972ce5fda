#!/usr/bin/env bash
# One exact command per reported result. Set the three folders, then run: bash scripts/insdis_resnet50.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# Instance Discrimination, ResNet-50, ImageNet-100, softmax with 16384 negatives.
DATA=${DATA:-/path/to/imagenet100}
MODELS=${MODELS:-/path/to/models}
TB=${TB:-/path/to/tensorboard}
python train_moco_ins.py --batch_size 128 --num_workers 24 --nce_k 16384 --softmax \
  --data_folder "$DATA" --model_path "$MODELS" --tb_path "$TB"
