#!/usr/bin/env bash
# The converged, powered comparisons of docs/RESULTS.md:
#   1. baseline vs SE vs CBAM, ResNet-20 on the full Fashion-MNIST (60k/10k), 15 epochs (suite "converged";
#      PAPER=1 runs the paper's 10 variants at that recipe instead: suite "converged-paper");
#   2. baseline vs channel-only vs CBAM on cluttered Fashion-MNIST, 48x48 (suite "cluttered").
# SEEDS seeds each (default 3), paired by seed; recipes: src/cbam/train/ablate.py.
#
# Resumable: run the same command again and finished runs are skipped.
# Shardable: SHARD=K/N on each of N machines sharing OUT (SHARD=auto in a SLURM array), then
#   SUMMARY_ONLY=1 once to merge. Background-friendly: everything goes to $OUT/evidence.log.
#
#   nohup bash scripts/evidence.sh >/dev/null 2>&1 &   tail -f runs/evidence/evidence.log
#   SHARD=1/4 OUT=/shared/evidence bash scripts/evidence.sh       # machine 1 of 4
#   SUMMARY_ONLY=1 OUT=/shared/evidence bash scripts/evidence.sh  # merge when all shards are done
#   PUBLISH=1 bash scripts/evidence.sh   # then ship seed 0 of baseline/SE/CBAM (>= 92 %) as pretrained weights
#   SMOKE=1 bash scripts/evidence.sh     # tiny settings, a few minutes on 2 cores: checks the machinery only
#   JOBS=12 bash scripts/evidence.sh     # 12 runs side by side on this machine: a GPU trains many ResNet-20s at
#                                        # once (start MPS first there: nvidia-cuda-mps-control -d)
# Extra arguments go to every `cbam ablate` call (recipe flags such as --amp bf16 must be the same on all shards).
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS="${SEEDS:-3}"
SHARD="${SHARD:-0/1}"
JOBS="${JOBS:-1}"
case "$JOBS" in ''|*[!0-9]*|0) echo "JOBS must be a positive integer (runs side by side), got '$JOBS'" >&2; exit 2;; esac
if [ "$JOBS" -gt 1 ] && [ "$SHARD" != 0/1 ]; then
  echo "JOBS=$JOBS splits this machine's grid into shards itself; it does not combine with SHARD=$SHARD" >&2
  exit 2
fi
PY="${PY:-.venv/bin/python}"
MAIN="converged"
[ "${PAPER:-0}" = 1 ] && MAIN="converged-paper"
TINY=()
MIN_ACC=92
DEST=""  # the package's pretrained/ folder
if [ "${SMOKE:-0}" = 1 ]; then
  OUT="${OUT:-runs/evidence-smoke}"
  TINY=(--epochs 1 --train-subset 256 --test-subset 128 --batch-size 64 --max-steps-per-epoch 2 --impl reference)
  MIN_ACC=0
  DEST="$OUT/pretrained"
fi
OUT="${OUT:-runs/evidence}"
[ -x "$PY" ] || bash scripts/setup.sh dev
mkdir -p "$OUT"
LOG="$OUT/evidence.log"
echo "evidence: seeds $SEEDS, shard $SHARD, output $OUT; progress in $LOG"
exec >>"$LOG" 2>&1
export TQDM_MININTERVAL="${TQDM_MININTERVAL:-60}"  # one progress line a minute in the log, not ten a second
echo "== $(date '+%F %T') start on $(hostname): seeds $SEEDS, shard $SHARD, suites $MAIN + cluttered =="

EXTRA=("$@")
ablate() {  # ablate SUITE: the suite's grid in $OUT/SUITE
  local name="$1"
  set -- --suite "$name" --out "$OUT/$name"
  if [ "${SUMMARY_ONLY:-0}" = 1 ]; then
    "$PY" -m cbam ablate --summary-only "$@"
  elif [ "$JOBS" -gt 1 ]; then  # one process per shard, all at once; then one merged summary
    local pids=() k
    for k in $(seq 0 $((JOBS - 1))); do
      "$PY" -m cbam ablate --seeds "$SEEDS" --shard "$k/$JOBS" --no-progress "$@" ${TINY[@]+"${TINY[@]}"} \
        ${EXTRA[@]+"${EXTRA[@]}"} > "$OUT/$name-job$k.log" 2>&1 &
      pids+=($!)
    done
    local failed=0
    for k in "${pids[@]}"; do wait "$k" || failed=1; done  # every shard ends before a failure is reported
    [ "$failed" = 0 ] || { echo "a shard of $name failed: see $OUT/$name-job*.log" >&2; exit 1; }
    "$PY" -m cbam ablate --summary-only "$@"
  else
    "$PY" -m cbam ablate --seeds "$SEEDS" --shard "$SHARD" --progress "$@" ${TINY[@]+"${TINY[@]}"} \
      ${EXTRA[@]+"${EXTRA[@]}"}
  fi
}
ablate "$MAIN"
ablate cluttered

if [ "${PUBLISH:-0}" = 1 ]; then
  for v in baseline se cbam; do
    "$PY" -m cbam publish "$OUT/$MAIN/$v/seed0" --tag fashion-mnist --min-acc "$MIN_ACC" \
      ${DEST:+--dest "$DEST"}
  done
fi
echo "== $(date '+%F %T') done: $OUT/$MAIN/summary.md, $OUT/cluttered/summary.md =="
