#!/usr/bin/env bash
# The training path's CPU figures (the GPU ones come from benchmarks/gpu_check.py on a GPU):
#   CIFAR10=<folder with train/ test/> bash results/gpu_first_cpu.sh
#   PARTS="loop slow" CIFAR10=... bash results/gpu_first_cpu.sh  # some parts (models ops loop slow loop_more compiled)
# Writes results/gpu_first_cpu/: the model table (MIMO train step / inference against the backbone, plan sampling
# share), the ATen ops a MIMO step adds (what a GPU launches) and its host reads, and the real loop against the
# isolated step and the loader alone, in steady state (each loop / loader round starts on a drained loader queue):
# image folder with 1 and 2 workers, --device-data, and a slow data path (the loader at 0.4x the step rate, which the
# loop must show as loop / step <= 0.45). Each output starts with the command, the time, the commit and the machine's
# load: figures from a loaded machine are marked as such.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
CIFAR10=${CIFAR10:-data/cifar10}
PARTS=${PARTS:-models ops loop slow loop_more compiled}
OUT=results/gpu_first_cpu
mkdir -p "$OUT"
[ -d "$CIFAR10/train" ] || { echo "error: $CIFAR10/train not found: set CIFAR10 to a CIFAR-10 image folder (scripts/cifar10_image_folder.py writes one)" >&2; exit 2; }

run() {  # run <name> <command...>: the command line and its output into $OUT/<name>.txt
  local name=$1; shift
  { echo "\$ $*"; echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD), $(nproc) cores," \
      "runnable processes $(cut -d' ' -f1-3 /proc/loadavg) (1, 5, 15-min means), torch threads default"; "$@"; } 2>&1 \
    | grep -v -e 'UserWarning' -e 'warnings.warn' | tee "$OUT/$name.txt"
}
part() { [[ " $PARTS " == *" $1 "* ]]; }
LOOP_DATA=(--data-dir "$CIFAR10" --dataset '' --num-classes 10 --crop-pad 4 -b 32 --val-split '')
LOOP=(benchmark.py loop --model cut_mixmo_wrn28_2 --batch-repeat 2 --steps 20 --warmup-steps 3 --rounds 2)

if part models; then
  run models $PY benchmark.py --model cut_mixmo_wrn28_2 mixshare_wrn28_2 mixvit_convit_gpsa5_ca2 -b 32 --rounds 5 \
    --min-seconds 2 --no-memory --results-file "$OUT/models.csv"
fi
if part ops; then
  run ops $PY benchmark.py ops --model cut_mixmo_wrn28_10 mixshare_wrn28_5 mixvit_convit_gpsa5_ca2 \
    mixvit_deit_small_patch16_224 -b 2
fi
if part loop; then  # the MIMO model against its backbone, 1 worker
  run loop_workers1 $PY "${LOOP[@]}" --results-file "$OUT/loop_workers1.csv" -- "${LOOP_DATA[@]}" --workers 1
fi
if part slow; then
  # the instrument itself: a data path at 0.4x the step rate (a delay slept in the 2 workers) must read <= 0.45;
  # batch 8 and one round: the delay is 2 x step / 0.4 per batch, long on a slow CPU
  run loop_slow_data $PY benchmark.py loop --model cut_mixmo_wrn28_2 --batch-repeat 2 --steps 20 --warmup-steps 3 \
    --rounds 1 --no-backbone --loader-share 0.4 --results-file "$OUT/loop_slow_data.csv" -- --data-dir "$CIFAR10" \
    --dataset '' --num-classes 10 --crop-pad 4 -b 8 --val-split '' --workers 2
fi
if part loop_more; then  # the other loaders, the MIMO side alone
  run loop_workers2 $PY "${LOOP[@]}" --no-backbone --results-file "$OUT/loop_workers2.csv" -- "${LOOP_DATA[@]}" \
    --workers 2
  run loop_device_data $PY "${LOOP[@]}" --no-backbone --results-file "$OUT/loop_device_data.csv" \
    -- "${LOOP_DATA[@]}" --workers 1 --device-data
fi
if part compiled; then
  # the whole step compiled (inductor), MIMO and backbone; against the eager train steps of the same minutes
  run models_compiled $PY benchmark.py --model cut_mixmo_wrn28_2 -b 32 --rounds 5 --min-seconds 2 --no-memory \
    --bench train --torchcompile --results-file "$OUT/models_compiled.csv"
  run models_eager_same_run $PY benchmark.py --model cut_mixmo_wrn28_2 -b 32 --rounds 5 --min-seconds 2 \
    --no-memory --bench train --results-file "$OUT/models_eager_same_run.csv"
fi
