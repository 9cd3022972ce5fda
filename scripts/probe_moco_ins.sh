#!/usr/bin/env bash
# One exact command per reported result. Set the three folders, then run: bash scripts/probe_moco_ins.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# Linear probe of an InsDis or MoCo ResNet-50 (layer 6).
DATA=${DATA:-/path/to/imagenet100}
CKPT=${CKPT:-/path/to/models/MoCo0.999_softmax_16384_resnet50_lr_0.03_decay_0.0001_bsz_128_crop_0.2_aug_CJ/current.pth}
SAVE=${SAVE:-/path/to/linear}
TB=${TB:-/path/to/tensorboard}
python eval_moco_ins.py --model resnet50 --learning_rate 10 \
  --data_folder "$DATA" --model_path "$CKPT" --save_path "$SAVE" --tb_path "$TB"
