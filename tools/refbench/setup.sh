#!/bin/bash
# setup.sh DIR [SOURCES]: the papers' reference code into DIR (outside this repository), patched.
#   Without SOURCES: git clone of eugenium/layerCNN, eugenium/DGL and block-wise/module-wise
#   from GitHub. With SOURCES: copies of SOURCES/layerCNN, SOURCES/DGL and SOURCES/module-wise
#   (unmodified exports, for a machine without GitHub).
# Then patches/*.patch are applied: data root, the first N images, CPU device, old-torch idioms
# (see README.md); module-wise's resnet110-2modules-stl10.py becomes resnet20-2modules-cifar10.py.
set -euo pipefail
DIR=${1:?usage: setup.sh DIR [SOURCES]} SOURCES=${2:-}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
case "$DIR/" in "$REPO"/*) echo "setup.sh: DIR must be outside the repository ($REPO)" >&2; exit 2 ;; esac
for name in layerCNN DGL module-wise; do
  [ -e "$DIR/$name" ] && { echo "setup.sh: $DIR/$name exists; use a fresh DIR" >&2; exit 2; }
  if [ -n "$SOURCES" ]; then
    cp -r "$SOURCES/$name" "$DIR/$name"
  else
    owner=eugenium; [ "$name" = module-wise ] && owner=block-wise
    git clone -q --depth 1 "https://github.com/$owner/$name" "$DIR/$name"
  fi
done
cp "$DIR/module-wise/resnet110-2modules-stl10.py" "$DIR/module-wise/resnet20-2modules-cifar10.py"
apply() { patch -s -p1 -d "$DIR/$1" < "$HERE/patches/$2"; }
apply layerCNN layerCNN-cifar.py.patch
apply layerCNN layerCNN-utils.py.patch
apply DGL DGL-learning_curves-cifar_dgl.py.patch
apply module-wise module-wise-dataloaders9.py.patch
# this patch's header names the copy's source, so give the target explicitly
patch -s -d "$DIR/module-wise" resnet20-2modules-cifar10.py \
  < "$HERE/patches/module-wise-resnet20-2modules-cifar10.py.patch"
echo "reference code patched in $DIR; now: REFBENCH_DIR=$DIR REFBENCH_CIFAR=... bash $HERE/alternate.sh 3"
