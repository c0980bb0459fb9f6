#!/usr/bin/env bash
# The training path's CPU figures (the GPU ones come from benchmarks/gpu_check.py on a GPU):
#   CIFAR10=<folder with train/ test/> bash results/gpu_first_cpu.sh
# Writes results/gpu_first_cpu/: the model table (MIMO train step / inference against the backbone, plan sampling
# share), the ATen ops a MIMO step adds (what a GPU launches) and its host reads, and the real loop against the
# isolated step (image folder with workers, and --device-data). Run on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
CIFAR10=${CIFAR10:-data/cifar10}
OUT=results/gpu_first_cpu
mkdir -p "$OUT"
[ -d "$CIFAR10/train" ] || { echo "error: $CIFAR10/train not found: set CIFAR10 to a CIFAR-10 image folder (scripts/cifar10_image_folder.py writes one)" >&2; exit 2; }

run() {  # run <name> <command...>: the command line and its output into $OUT/<name>.txt
  local name=$1; shift
  { echo "\$ $*"; echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, torch threads default"; "$@"; } 2>&1 \
    | grep -v -e 'UserWarning' -e 'warnings.warn' | tee "$OUT/$name.txt"
}

run models $PY benchmark.py --model cut_mixmo_wrn28_2 mixshare_wrn28_2 mixvit_convit_gpsa5_ca2 -b 32 --rounds 5 \
  --min-seconds 2 --no-memory --results-file "$OUT/models.csv"
run ops $PY benchmark.py ops --model cut_mixmo_wrn28_10 mixshare_wrn28_5 mixvit_convit_gpsa5_ca2 \
  mixvit_deit_small_patch16_224 -b 2
for workers in 1 2; do
  run "loop_workers$workers" $PY benchmark.py loop --model cut_mixmo_wrn28_2 --batch-repeat 2 --steps 20 \
    --warmup-steps 3 --rounds 3 --results-file "$OUT/loop_workers$workers.csv" -- --data-dir "$CIFAR10" \
    --dataset '' --num-classes 10 --crop-pad 4 -b 64 --workers "$workers" --val-split ''
done
run loop_device_data $PY benchmark.py loop --model cut_mixmo_wrn28_2 --batch-repeat 2 --steps 20 --warmup-steps 3 \
  --rounds 3 --results-file "$OUT/loop_device_data.csv" -- --data-dir "$CIFAR10" --dataset '' --num-classes 10 \
  --crop-pad 4 -b 64 --workers 1 --val-split '' --device-data
# the whole step compiled (inductor), MIMO and backbone; against the eager train steps of models.txt
run models_compiled $PY benchmark.py --model cut_mixmo_wrn28_2 -b 32 --rounds 5 --min-seconds 2 --no-memory \
  --bench train --torchcompile --results-file "$OUT/models_compiled.csv"
run models_eager_same_run $PY benchmark.py --model cut_mixmo_wrn28_2 -b 32 --rounds 5 --min-seconds 2 --no-memory \
  --bench train --results-file "$OUT/models_eager_same_run.csv"
