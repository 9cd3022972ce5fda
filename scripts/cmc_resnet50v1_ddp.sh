#!/usr/bin/env bash
# One exact command per reported result. Set the three folders (and NGPUS), then run: bash scripts/cmc_resnet50v1_ddp.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# CMC, ResNet-50 v1, ImageNet, one node with NGPUS GPUs: the reference's 4-GPU recipe (one process, nn.DataParallel,
# --batch_size 128) reproduced with torchrun + DDP, one process per GPU.
# - --batch_size is per process under DDP: 128 / NGPUS each keeps the reference's global batch of 128.
# - --learning_rate stays 0.03: the global batch, which the learning rate goes with, is unchanged.
# - --nce_k stays 16384: the memory bank is one bank, kept identical in every process (each step's updates are
#   gathered from all processes), so the K negatives are drawn from the whole data set as before.
# - The run name carries the per-process batch: bsz_32 with 4 GPUs (the reference's was bsz_128).
# - --num_workers is per process too: 24 / NGPUS each (at least 2).
# See README.md, "Scaling".
NGPUS=${NGPUS:-4}
DATA=${DATA:-/path/to/imagenet}
MODELS=${MODELS:-/path/to/models}
TB=${TB:-/path/to/tensorboard}
if (( 128 % NGPUS )); then echo "error: NGPUS=$NGPUS does not divide the global batch of 128" >&2; exit 2; fi
WORKERS=$(( 24 / NGPUS > 2 ? 24 / NGPUS : 2 ))
torchrun --standalone --nproc_per_node "$NGPUS" train_CMC.py --model resnet50v1 --batch_size $(( 128 / NGPUS )) \
  --num_workers "$WORKERS" --data_folder "$DATA" --model_path "$MODELS" --tb_path "$TB"
