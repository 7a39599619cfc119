#!/usr/bin/env bash
# Run parts of the course on a GPU machine and keep every log.
#   bash benchmarks/gpu_run.sh LOGDIR STEP [STEP ...]
# A STEP is "tests:<pytest args>", "nb:<notebook paths>", "bench:NN [--quick]" (runs
# `gpulab bench NN`, chapter NN's benchmark from the registry), "bench:ready" (every ready
# chapter's benchmark, one step each), "bench:built" (every built chapter's: their first
# GPU figures) or "script:<path>" (any script); each gets
# its own log in LOGDIR and a one-line summary; STEP_TIMEOUT (seconds, default 600) bounds
# each step. After every step LOGDIR/../gpu_run.tgz packs the logs and
# benchmarks/results, so whatever finished comes back even if a later step is cut off.
# Source benchmarks/gpu_setup.sh first where the machine lacks the course's wheels.
set -u
logdir=$1; shift
mkdir -p "$logdir"
# gpulab's command line without relying on an installed `gpulab` entry point
gpulab_cmd() { python3 -c 'import sys; from gpulab_cli import main; sys.exit(main(sys.argv[1:]))' "$@"; }
steps=()
for step in "$@"; do   # bench:ready / bench:built expand to one bench step per such chapter
  if [ "$step" = "bench:ready" ] || [ "$step" = "bench:built" ]; then
    for ch in $(gpulab_cmd chapters "--${step#bench:}" | awk '{print $1}'); do steps+=("bench:$ch"); done
  else steps+=("$step"); fi
done
n=0
for step in "${steps[@]}"; do
  n=$((n + 1)); kind=${step%%:*}; arg=${step#*:}
  log="$logdir/$n-$kind.log"; start=$(date +%s)
  t="timeout ${STEP_TIMEOUT:-600}"
  case $kind in
    tests) $t python3 -m pytest -q -p no:cacheprovider $arg >"$log" 2>&1 ;;
    nb)    $t python3 -m pytest -q -p no:cacheprovider --nbval-lax $arg >"$log" 2>&1 ;;
    bench) $t python3 -c 'import sys; from gpulab_cli import main; sys.exit(main(sys.argv[1:]))' bench $arg >"$log" 2>&1 ;;
    script) $t python3 $arg >"$log" 2>&1 ;;
    *) echo "unknown step $step"; continue ;;
  esac
  rc=$?
  echo "[$n] $step -> rc=$rc in $(( $(date +%s) - start )) s: $(grep -E 'passed|failed|error' "$log" | tail -1 | cut -c1-160)"
  tar czf "$logdir/../gpu_run.tgz" -C "$logdir/.." "$(basename "$logdir")" -C "$PWD" benchmarks/results 2>/dev/null
done
