# Sourced by run_ref_*.sh / run_wb_*.sh: the environment every run shares, and the timer.
#   REFBENCH_DIR   the folder setup.sh filled (the reference code; runs/, logs/, times.txt go there)
#   REFBENCH_CIFAR CIFAR-10 in torchvision's layout (cifar-10-batches-py inside)
#   REFBENCH_PYTHON the python with torch and torchvision (default: python3 on PATH)
#   WORKBENCH      the workbench command (default: workbench on PATH)
#   EPOCHS, SEED   epochs (per module where sequential) and seed of both codes (default 1, 0)
#   N_TRAIN, N_TEST the first N training and test images both codes read (default 5000, 10000)
#   WB_FLAGS       extra `workbench run` flags, after the config's own (an ablation, say)
#   TAG            the runs' and logs' name tag (default full; smoke with SMOKE=1)
# SMOKE=1 shrinks the data to 512 training and 512 test images and records into times_smoke.txt.
RB=${REFBENCH_DIR:?set REFBENCH_DIR to the folder setup.sh filled}
CIFAR=${REFBENCH_CIFAR:?set REFBENCH_CIFAR to a folder holding cifar-10-batches-py}
PY=${REFBENCH_PYTHON:-python3}
WB=${WORKBENCH:-workbench}
export REFBENCH_CIFAR OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 CUDA_VISIBLE_DEVICES="" PYTHONUNBUFFERED=1
EPOCHS=${EPOCHS:-1} SEED=${SEED:-0} WB_FLAGS=${WB_FLAGS:-}
if [ "${SMOKE:-0}" = 1 ]; then
  N_TRAIN=512 N_TEST=512 TIMES=${TIMES:-$RB/times_smoke.txt} TAG=${TAG:-smoke}
else
  N_TRAIN=${N_TRAIN:-5000} N_TEST=${N_TEST:-10000} TIMES=${TIMES:-$RB/times.txt} TAG=${TAG:-full}
fi
# read by the patched reference scripts: the first N training and test images (0: all 10,000)
export REFBENCH_NTRAIN=$N_TRAIN REFBENCH_NTEST=$([ "$N_TEST" = 10000 ] && echo 0 || echo "$N_TEST")
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
