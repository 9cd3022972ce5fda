#!/usr/bin/env bash
# One exact command per reported result. Run this same script on every node, each with its own NODE_RANK
# (0 .. NNODES-1) and the same MASTER_ADDR (the address of node 0, reachable from all nodes):
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 bash scripts/cmc_resnet50v1_multinode.sh     # on node 0
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=10.0.0.1 bash scripts/cmc_resnet50v1_multinode.sh     # on node 1
set -euo pipefail
cd "$(dirname "$0")/.."
# CMC, ResNet-50 v1, ImageNet, NNODES nodes x NGPUS GPUs with torchrun + DDP, the reference's global batch of 128:
# --batch_size is per process, 128 / (NNODES x NGPUS) each (16 with 2 x 4, so the run is named bsz_16);
# --learning_rate 0.03 and --nce_k 16384 stay as they are (same global batch; one memory bank, synchronised across
# all processes). See scripts/cmc_resnet50v1_ddp.sh for one node.
# Checkpoints: on a file system every node sees (NFS, Lustre, ...) global rank 0 saves them; without one each node's
# first process saves its own copy under --model_path, so every node can --resume auto (README.md, "Several nodes").
NNODES=${NNODES:-2}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
NGPUS=${NGPUS:-4}                        # GPUs per node
DATA=${DATA:-/path/to/imagenet}          # on every node (a local copy or a shared file system)
MODELS=${MODELS:-/path/to/shared/models}
TB=${TB:-/path/to/shared/tensorboard}
WORLD=$(( NNODES * NGPUS ))
if (( 128 % WORLD )); then
  echo "error: NNODES x NGPUS = $WORLD does not divide the global batch of 128" >&2; exit 2
fi
torchrun --nnodes "$NNODES" --node_rank "$NODE_RANK" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
  --nproc_per_node "$NGPUS" train_CMC.py --model resnet50v1 --batch_size $(( 128 / WORLD )) --num_workers 6 \
  --data_folder "$DATA" --model_path "$MODELS" --tb_path "$TB"
