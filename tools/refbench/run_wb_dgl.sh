#!/bin/bash
# The workbench's equivalent of run_ref_dgl.sh (precise BN off: DGL tests with BN's running averages).
source "$(dirname "$0")/common.sh"
OUT="$RB/runs/wb_dgl_${TAG}_$STAMP"
timed dgl wb "$RB/runs" \
  "$WB" run --dataset cifar10 --data-dir "$CIFAR" --allow-modified-copy true \
  --n-train $N_TRAIN --n-test $N_TEST --subset first --augment crop-flip --normalization layercnn \
  --arch greedy-cnn --n-modules 3 --width 64 --batchnorm true --conv-bias all \
  --downsampling maxpool --schedule 2 --aux-type mlp-sr --aux-depth 4 --aux-width 0 \
  --last-aux-type mlp --last-aux-depth 3 \
  --method parallel --epochs $EPOCHS --batch-size 128 --lr 0.1 --lr-schedule step --lr-step 15 \
  --lr-decay 0.2 --momentum-restart false --momentum 0.9 --weight-decay 5e-4 --init default \
  --precise-bn false --device cpu --precision fp32 --seed $SEED --out "$OUT" $WB_FLAGS
