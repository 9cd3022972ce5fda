#!/usr/bin/env bash
# One exact command per reported result. Set the three folders (and NGPUS), then run: bash scripts/moco_resnet50_ddp.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# MoCo, ResNet-50, ImageNet-100, softmax with a queue of 16384 keys, one node with NGPUS GPUs: scripts/moco_resnet50.sh
# (global batch 128) with torchrun + DDP, one process per GPU.
# - --batch_size is per process under DDP: 128 / NGPUS each keeps the global batch of 128.
# - --learning_rate stays 0.03: the global batch is unchanged.
# - --nce_k stays 16384: the queue is one queue, identical in every process (each step enqueues the keys of all
#   processes), so each query is contrasted with the same 16384 keys as in one process.
# - ShuffleBN runs across the processes: the keys are computed on the global batch shuffled across processes, so
#   each key's BatchNorm statistics come from a different process's sub-batch than its query's.
# - The run name carries the per-process batch: bsz_32 with 4 GPUs.
# - --num_workers is per process too: 24 / NGPUS each (at least 2).
# See README.md, "Scaling".
NGPUS=${NGPUS:-4}
DATA=${DATA:-/path/to/imagenet100}
MODELS=${MODELS:-/path/to/models}
TB=${TB:-/path/to/tensorboard}
if (( 128 % NGPUS )); then echo "error: NGPUS=$NGPUS does not divide the global batch of 128" >&2; exit 2; fi
WORKERS=$(( 24 / NGPUS > 2 ? 24 / NGPUS : 2 ))
torchrun --standalone --nproc_per_node "$NGPUS" train_moco_ins.py --batch_size $(( 128 / NGPUS )) \
  --num_workers "$WORKERS" --nce_k 16384 --softmax --moco \
  --data_folder "$DATA" --model_path "$MODELS" --tb_path "$TB"
