#!/usr/bin/env bash
# One exact command per reported result. Set the three folders, then run: bash scripts/cmc_resnet50v1_4gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# CMC, ResNet-50 v1, ImageNet: the reference README's own 4-GPU command, verbatim. One process drives the 4 GPUs
# through nn.DataParallel (the memory bank and loss on the first GPU); --batch_size 128 is the whole batch.
# scripts/cmc_resnet50v1_ddp.sh is the same run with torchrun + DDP (faster; 4 processes of 32).
DATA=${DATA:-/path/to/imagenet}
MODELS=${MODELS:-/path/to/models}
TB=${TB:-/path/to/tensorboard}
CUDA_VISIBLE_DEVICES=0,1,2,3 python train_CMC.py --model resnet50v1 --batch_size 128 --num_workers 24 \
  --data_folder "$DATA" --model_path "$MODELS" --tb_path "$TB"
