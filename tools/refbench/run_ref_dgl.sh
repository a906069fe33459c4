#!/bin/bash
# DGL learning_curves/cifar_dgl.py, patched to Net(depth=3): conv 64 | max-pool, conv 128 | conv 128,
# trained in parallel (decoupled), mlp-sr heads, last head an MLP; 1 epoch. Its loaders' workers
# (4 train, 2 test) are hard-coded.
source "$(dirname "$0")/common.sh"
timed dgl ref "$RB/runs/ref_dgl_${TAG}_$STAMP" \
  "$PY" "$RB/DGL/learning_curves/cifar_dgl.py" --epochs $EPOCHS --batch-size 128 --seed $SEED
