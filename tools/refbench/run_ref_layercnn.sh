#!/bin/bash
# layerCNN (Belilovsky et al.) cifar.py: 3 layers of 64, k=2 heads (--nlin 1) of width 64, psi before
# layer 3 (--down [1]), BN, sequential greedy training, 1 epoch per layer; -j 0: no loader workers
# for training (the test loader's 2 workers are hard-coded).
source "$(dirname "$0")/common.sh"
timed layercnn ref "$RB/runs/ref_layercnn_${TAG}_$STAMP" \
  "$PY" "$RB/layerCNN/cifar.py" --ncnn 3 --nlin 1 --feature_size 64 --width_aux 64 --down '[1]' --bn 1 \
  --nepochs $EPOCHS --batch_size 128 -j 0 --seed $SEED
