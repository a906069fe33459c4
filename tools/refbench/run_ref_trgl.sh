#!/bin/bash
# TRGL (block-wise/module-wise) resnet110-2modules-stl10.py patched into resnet20-2modules-cifar10.py:
# ResNet-20 (option A) in 2 modules (stem + 5 blocks | 4 blocks), parallel, kinetic term tau 1 with
# varying tau (0.5 | 1), 1CNN heads, orthogonal init gain 0.1, SGD lr 0.002 constant, wd 2e-4,
# label smoothing 0.1 (the README's flags for this script, with tau 1, batch 128, 1 epoch);
# -vls 0 -tss 1: evaluate on the whole test set (default: a seeded half). Loader workers (2) are hard-coded.
source "$(dirname "$0")/common.sh"
timed trgl ref "$RB/runs/ref_trgl_${TAG}_$STAMP" \
  "$PY" "$RB/module-wise/resnet20-2modules-cifar10.py" -trt par -bas 128 -lbs 0.1 -lrt 0.002 \
  -ing 0.1 -tra 1 -tau 1 -vta 1 -ne0 $EPOCHS -cln 1CNN -inn orthogonal -opt sgd -lrd 0 -vls 0 -tss 1 -see $SEED
