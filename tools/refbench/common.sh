# Sourced by run_ref_*.sh / run_wb_*.sh: the environment every run shares, and the timer.
#   REFBENCH_DIR   the folder setup.sh filled (the reference code; runs/, logs/, times.txt go there)
#   REFBENCH_CIFAR CIFAR-10 in torchvision's layout (cifar-10-batches-py inside)
#   REFBENCH_PYTHON the python with torch and torchvision (default: python3 on PATH)
#   WORKBENCH      the workbench command (default: workbench on PATH)
# SMOKE=1 shrinks the data to 512 training and 512 test images and records into times_smoke.txt.
RB=${REFBENCH_DIR:?set REFBENCH_DIR to the folder setup.sh filled}
CIFAR=${REFBENCH_CIFAR:?set REFBENCH_CIFAR to a folder holding cifar-10-batches-py}
PY=${REFBENCH_PYTHON:-python3}
WB=${WORKBENCH:-workbench}
export REFBENCH_CIFAR OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 CUDA_VISIBLE_DEVICES="" PYTHONUNBUFFERED=1
if [ "${SMOKE:-0}" = 1 ]; then
  export REFBENCH_NTRAIN=512 REFBENCH_NTEST=512   # read by the patched reference scripts
  N_TRAIN=512 N_TEST=512 TIMES=${TIMES:-$RB/times_smoke.txt} TAG=smoke
else
  export REFBENCH_NTRAIN=5000 REFBENCH_NTEST=0     # first 5,000 training images, all 10,000 test
  N_TRAIN=5000 N_TEST=10000 TIMES=${TIMES:-$RB/times.txt} TAG=full
fi
STAMP=$(date +%Y%m%d-%H%M%S)-$$
mkdir -p "$RB/logs" "$RB/runs"

# timed NAME KIND CWD CMD...: run CMD (one process) in CWD, stdin from /dev/null, output to
# logs/KIND_NAME_TAG_STAMP.log; append "NAME KIND SECONDS rc=RC" to $TIMES; exit with CMD's rc
timed() {
  local name=$1 kind=$2 dir=$3; shift 3
  local log="$RB/logs/${kind}_${name}_${TAG}_${STAMP}.log"
  mkdir -p "$dir"
  { echo "# $(date -Is) cwd=$dir"; printf '#'; printf ' %q' "$@"; echo; } > "$log"
  local t0 t1 rc
  t0=$(date +%s.%N)
  ( cd "$dir" && exec "$@" ) < /dev/null >> "$log" 2>&1
  rc=$?
  t1=$(date +%s.%N)
  local secs
  secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
  echo "$name $kind $secs rc=$rc" >> "$TIMES"
  echo "$name $kind $secs rc=$rc  (log: $log)"
  return $rc
}
