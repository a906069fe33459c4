#!/bin/bash
# alternate.sh N: N rounds; in each, for each config, the reference run then the workbench run,
# so their timings are taken side by side. Lines go to $REFBENCH_DIR/times.txt.
N=${1:?usage: alternate.sh N}
D=$(dirname "$0")
for i in $(seq 1 "$N"); do
  for name in layercnn dgl trgl; do
    echo "== round $i/$N: $name"
    bash "$D/run_ref_$name.sh"
    bash "$D/run_wb_$name.sh"
  done
done
