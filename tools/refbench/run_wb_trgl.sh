#!/bin/bash
# The workbench's equivalent of run_ref_trgl.sh (precise BN off: TRGL tests with BN's running averages;
# eval protocol last on the whole test set, as the reference is run with -vls 0 -tss 1; the script's
# apc [16, 8] pools both heads to 1x1 on CIFAR, and its CIFAR loader pads crops by reflection).
source "$(dirname "$0")/common.sh"
OUT="$RB/runs/wb_trgl_${TAG}_$STAMP"
timed trgl wb "$RB/runs" \
  "$WB" run --dataset cifar10 --data-dir "$CIFAR" --allow-modified-copy true \
  --n-train $N_TRAIN --n-test $N_TEST --subset first --augment reflect-crop-flip --normalization dataset \
  --arch resnet20 --n-modules 2 --shortcut A --downsampling stride \
  --aux-type 1cnn --aux-depth 2 --aux-width 0 --aux-pool 16,8 --init orthogonal \
  --method parallel --regularization kinetic --tau 1 --varying-tau true \
  --epochs $EPOCHS --batch-size 128 --lr 0.002 --lr-schedule constant --momentum 0.9 --nesterov false \
  --weight-decay 2e-4 --label-smoothing 0.1 --eval-protocol last \
  --precise-bn false --device cpu --precision fp32 --seed $SEED --out "$OUT" $WB_FLAGS
