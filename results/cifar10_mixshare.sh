#!/usr/bin/env bash
# Real runs behind results/cifar10_mixshare.md: single WRN-10-1 vs Cut-MixMo vs MixShare (fadeout) vs MixShare
# (partial, 25 % of the channels) on CIFAR-10 (JPEG copy), M = 2 on one network's parameters, the same recipe and
# compute for every row (b = 1, batch 64, EPOCHS epochs), SEEDS seeds each (default 0 1 2). Two queues run side by
# side, one torch thread each; then validate.py on every last checkpoint, the sharing analysis, and the table.
#   CIFAR10=data/cifar10 bash results/cifar10_mixshare.sh     (a folder with train/ and test/ class folders,
#   written from torchvision's CIFAR-10 by: python scripts/cifar10_image_folder.py --root data --out data/cifar10
#   --download; the committed results came from a JPEG copy in the same layout, see results/README.md)
# STAGE=train only trains and validates, STAGE=report only analyses finished runs and writes the table.
# The test split is only evaluated, never used to choose anything (every run reports its LAST epoch).
# Code revision: the committed numbers (results/cifar10_mixshare.md) came from the pre-CLI train.py / validate.py of
# commit 19d5388; every flag below has the same name and meaning in timm_mimo.cli (train.py / validate.py are now shims
# over it), and a 2-epoch run of each kind of row with these flags ends in bitwise-identical weights under both
# revisions (results/cifar10_mixshare_cli_check.sh).
set -euo pipefail
shopt -s nullglob
cd "$(dirname "$0")/.."
PY=${PY:-python}
CIFAR10=${CIFAR10:?set CIFAR10 to the folder holding train/ and test/}
OUT=${OUT:-output/cifar10_mixshare}
EPOCHS=${EPOCHS:-2}
SEEDS=${SEEDS:-"0 1 2"}
# MixShare's fadeout ends at epoch 100 of 300 (arXiv:2205.10139 Sec. 3.3): the same third of this schedule
FADEOUT=$(python3 -c "print(round($EPOCHS / 3, 4))")
WRN=(backbone=wrn28_2 depth=10 widen_factor=1)
COMMON=(--data-dir "$CIFAR10" --val-split test --num-classes 10 --img-size 32 --crop-pad 4 -b 64 --opt sgd --lr 0.05
        --momentum 0.9 --weight-decay 3e-4 --sched cosine --sched-on-updates --warmup-epochs 0 --epochs "$EPOCHS"
        --smoothing 0.0 --workers 1 --log-interval 200 --checkpoint-hist 1 --output "$OUT")
export OMP_NUM_THREADS=1

run() {  # run NAME SEED ARGS...: train, then validate the last checkpoint
  local name=$1 seed=$2
  shift 2
  $PY train.py "$@" "${COMMON[@]}" --seed "$seed" --experiment "$name-seed$seed" > "$OUT/$name-seed$seed.log" 2>&1
  $PY validate.py --config "$OUT/$name-seed$seed/args.yaml" --checkpoint "$OUT/$name-seed$seed/last.pth.tar" \
    --workers 1 --results-file "$OUT/$name-seed$seed/validation.json" >> "$OUT/$name-seed$seed.log" 2>&1
}

STAGE=${STAGE:-all}
mkdir -p "$OUT"
if [ "$STAGE" != report ]; then
(
  for seed in $SEEDS; do
    run mixshare_fadeout "$seed" --model mixshare --model-kwargs "${WRN[@]}" unmixing=fadeout "fadeout_epochs=$FADEOUT"
    run mixshare_partial "$seed" --model mixshare --model-kwargs "${WRN[@]}" unmixing=partial
  done
) &
(
  for seed in $SEEDS; do
    run cut_mixmo "$seed" --model cut_mixmo --model-kwargs "${WRN[@]}"
    run single_wrn "$seed" --model wrn28_2 --model-kwargs depth=10 widen_factor=1
  done
) &
wait
fi
[ "$STAGE" = train ] && exit 0
for run_dir in "$OUT"/{cut_mixmo,mixshare_fadeout,mixshare_partial}-seed*/; do  # the MIMO runs
  $PY -m timm_mimo.analysis --config "$run_dir/args.yaml" --checkpoint "$run_dir/last.pth.tar" \
    --out "$run_dir/analysis" --data-dir "$CIFAR10" --split test --num-images 500 > /dev/null
done
for run_dir in "$OUT"/single_wrn-seed*/; do  # the plain network: active filters only
  $PY -m timm_mimo.analysis --config "$run_dir/args.yaml" --checkpoint "$run_dir/last.pth.tar" \
    --out "$run_dir/analysis" > /dev/null
done
mkdir -p results/cifar10_mixshare
for run_dir in "$OUT"/*-seed*/; do  # the raw numbers of every run, and the plots
  run=$(basename "$run_dir")
  cp "$run_dir/validation.json" "results/cifar10_mixshare/$run-validation.json"
  cp "$run_dir/summary.csv" "results/cifar10_mixshare/$run-summary.csv"
  if [ -d "$run_dir/analysis" ]; then
    cp "$run_dir/analysis/analysis.json" "results/cifar10_mixshare/$run-analysis.json"
    if [[ $run == *-seed0 ]]; then  # the plots of the first seed (as the papers' figures)
      for plot in "$run_dir"/analysis/*.png; do cp "$plot" "results/cifar10_mixshare/$run-$(basename "$plot")"; done
    fi
  fi
done
$PY results/cifar10_mixshare_table.py "$OUT" > results/cifar10_mixshare/table.md
cat results/cifar10_mixshare/table.md
