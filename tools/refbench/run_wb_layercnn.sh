#!/bin/bash
# The workbench's equivalent of run_ref_layercnn.sh (precise BN off: layerCNN tests with BN's running averages).
source "$(dirname "$0")/common.sh"
OUT="$RB/runs/wb_layercnn_${TAG}_$STAMP"
timed layercnn wb "$RB/runs" \
  "$WB" run --dataset cifar10 --data-dir "$CIFAR" --allow-modified-copy true \
  --n-train $N_TRAIN --n-test $N_TEST --subset first --augment crop-flip --normalization layercnn \
  --arch greedy-cnn --n-modules 3 --width 64 --batchnorm true --conv-bias auto \
  --downsampling invertible --schedule 3 --aux-type cnn --aux-depth 2 --aux-width 64 \
  --method sequential --epochs $EPOCHS --batch-size 128 --lr 0.1 --lr-schedule step --lr-step 15 \
  --lr-decay 0.2 --momentum-restart true --momentum 0.9 --weight-decay 5e-4 --init default \
  --precise-bn false --device cpu --precision fp32 --seed $SEED --out "$OUT" $WB_FLAGS
