#!/usr/bin/env bash
# The CIFAR-10 study, one command: single WRN vs MIMO / Linear-MixMo / Cut-MixMo / MixShare on one small WRN, the
# papers' ConViT (small width) vs MixViT with source embedding / encoding, and 2 single WRNs as a deep ensemble
# ("2 Nets"); equal epochs (and steps: b = 1) for every row, SEEDS seeds each (single WRNs also train seeds s + 100:
# the single row is seeds s, 2 Nets pairs seed s with seed s + 100).
# Every run is evaluated on its LAST checkpoint (no per-epoch evaluation, no selection on the test split) with
# validate.py: accuracy, NLL, NLL_c, ECE, Brier, AURC, diversity, classifier sharing rate (MIMO rows), the 15 common
# corruptions x 5 severities on a fixed subset of the test split, OOD detection against Fashion-MNIST test images, a
# reliability diagram; then cifar10_study_summarize.py writes the table, the CSV and the plots (mean ± std over seeds).
#
#   bash results/cifar10_study.sh      (after scripts/quickstart.sh)
#
# CIFAR-10 comes from CIFAR10 (default data/cifar10), an image folder with train/<class>/ and test/<class>/; when it is
# missing, scripts/cifar10_image_folder.py writes it from torchvision's CIFAR-10 (downloaded into data/). A JPEG copy
# in the same layout works too (the committed results came from one: results/README.md says how it differs).
# Resumable: a run whose last.pth.tar exists is not trained again, one with a validation.json not evaluated again.
# Defaults (30 training runs, 27 evaluations; with two seeds, 20 and 18, took 1 h 07 min) on a 2-core CPU VM (two queues
# side by side, one torch thread each; results/README.md has the measured times): WRN-10-1 (78k parameters) and a
# ConViT of width 64 (3 GPSA + 1 class-attention blocks, 4 heads), 1,000 training images per class (10,000), the full
# test split (10,000), 5 epochs, batch 128, seeds 0 1 2; corruptions on 300 test images (75 corrupted sets of 300).
# Change the budget with the variables below (e.g. TRAIN_PER_CLASS=5000 EPOCHS=30 for the full training split on a
# bigger machine).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
CIFAR10=${CIFAR10:-data/cifar10}
DATA_NAME=${DATA_NAME:-CIFAR-10}   # the table's title, e.g. DATA_NAME="CIFAR-10 (JPEG copy)" for a JPEG copy
DATA=${DATA:-data/cifar10_study}
OUT=${OUT:-output/cifar10_study}
TRAIN_PER_CLASS=${TRAIN_PER_CLASS:-1000}
TEST_PER_CLASS=${TEST_PER_CLASS:-1000}
OOD_IMAGES=${OOD_IMAGES:-2000}
CORRUPTION_IMAGES=${CORRUPTION_IMAGES:-300}
EPOCHS=${EPOCHS:-5}
SEEDS=${SEEDS:-"0 1 2"}
WORKERS=${WORKERS:-1}
WRN=${WRN:-"depth=10 widen_factor=1"}
VIT=${VIT:-"embed_dim=64 num_heads=4 depth=3 depth_token_only=1"}
EXTRA_VALIDATE_FLAGS=${EXTRA_VALIDATE_FLAGS:-}   # added to every validate.py call

read -r -a SEED_LIST <<< "$SEEDS"
if [ "${#SEED_LIST[@]}" -lt 2 ]; then echo "error: SEEDS needs at least two seeds, got '$SEEDS'" >&2; exit 2; fi

if [ ! -d "$CIFAR10/train" ]; then
  $PY scripts/cifar10_image_folder.py --root data --out "$CIFAR10" --download
fi
if [ ! -d "$DATA/train" ]; then
  $PY results/cifar10_study_prepare.py --cifar10 "$CIFAR10" --out "$DATA" --train-per-class "$TRAIN_PER_CLASS" \
    --test-per-class "$TEST_PER_CLASS" --ood-fashion-mnist data --ood-images "$OOD_IMAGES"
fi

COMMON=(--data-dir "$DATA" --num-classes 10 --img-size 32 --crop-pad 4 -b 128
        --epochs "$EPOCHS" --sched cosine --workers "$WORKERS" --log-interval 100 --checkpoint-hist 1
        --output "$OUT" --val-split '')   # no per-epoch evaluation: every row is judged on its last checkpoint
CNN=(--opt sgd --lr 0.1 --momentum 0.9 --weight-decay 5e-4 --warmup-epochs 0)
# AdamW with its default eps / betas spelled out (train.py passes them even when unset); one warm-up epoch, per step
VITOPT=(--opt adamw --opt-eps 1e-8 --opt-betas 0.9 0.999 --lr 1e-3 --weight-decay 0.05 --warmup-epochs 1
        --sched-on-updates)

train() {  # train <run name> <train.py flags...>: skips a run whose last checkpoint exists; records the wall time
  local name=$1; shift
  if [ -f "$OUT/$name/last.pth.tar" ]; then echo "== $name: done before"; return; fi
  echo "== training $name"
  local start; start=$(date +%s)
  $PY train.py "${COMMON[@]}" "$@" --experiment "$name"
  echo $(( $(date +%s) - start )) > "$OUT/$name/train_seconds.txt"
}

evaluate() {  # evaluate <run dir> <validate.py flags...>
  local run=$1; shift
  echo "== evaluating $(basename "$run")"
  # shellcheck disable=SC2086
  $PY validate.py --split test --workers "$WORKERS" --ood-dir "$DATA/ood" --corruptions \
    --corruption-images "$CORRUPTION_IMAGES" --reliability-diagram "$run/reliability.png" \
    --results-file "$run/validation.json" $EXTRA_VALIDATE_FLAGS "$@"
}

evaluate_run() {  # evaluate_run <run dir>: the last checkpoint of a trained run, once
  local run=$1 rates=()
  [ -f "$run/validation.json" ] && { echo "== $(basename "$run"): evaluated before"; return; }
  case "$(basename "$run")" in single_wrn-*|convit-*) ;; *) rates=(--sharing-rates) ;; esac  # MIMO rows only
  evaluate "$run" --config "$run/args.yaml" --checkpoint "$run/last.pth.tar" "${rates[@]}"
}

row() {  # row <run name> <train.py flags...>: train, then evaluate
  local name=$1
  train "$@"
  evaluate_run "$OUT/$name"
}

# Two queues side by side, one torch thread each (CNN rows | ConViT rows), one seed after the other, so that a cut-short
# study still has complete rows. Single WRNs: seeds s and s + 100 (the single row is seeds s, 2 Nets pairs s with
# s + 100; the s + 100 nets are only trained). MixShare: fadeout unmixing ending at a third of the schedule, as its
# paper's fadeout ends at epoch 100 of 300 (arXiv:2205.10139 Sec. 3.3).
FADEOUT=$($PY -c "print(round($EPOCHS / 3, 4))")
# shellcheck disable=SC2086
cnn_queue() {
  for seed in "${SEED_LIST[@]}"; do
    row "single_wrn-seed$seed" --model wrn28_2 --model-kwargs $WRN "${CNN[@]}" --seed "$seed"
    train "single_wrn-seed$((seed + 100))" --model wrn28_2 --model-kwargs $WRN "${CNN[@]}" --seed "$((seed + 100))"
    for method in mimo linear_mixmo cut_mixmo; do
      row "$method-seed$seed" --model $method --model-kwargs backbone=wrn28_2 $WRN "${CNN[@]}" --seed "$seed"
    done
    row "mixshare-seed$seed" --model mixshare --model-kwargs backbone=wrn28_2 $WRN unmixing=fadeout \
      "fadeout_epochs=$FADEOUT" "${CNN[@]}" --seed "$seed"
  done
}
# shellcheck disable=SC2086
vit_queue() {
  for seed in "${SEED_LIST[@]}"; do
    row "convit-seed$seed" --model convit_gpsa5_ca2 --model-kwargs $VIT "${VITOPT[@]}" --seed "$seed"
    for source in embedding encoding; do
      row "mixvit_$source-seed$seed" --model mixvit_convit_gpsa5_ca2 --model-kwargs source=$source $VIT \
        "${VITOPT[@]}" --seed "$seed"
    done
  done
}
mkdir -p "$OUT"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
cnn_queue > "$OUT/cnn_queue.log" 2>&1 & cnn_pid=$!
vit_queue > "$OUT/vit_queue.log" 2>&1 & vit_pid=$!
status=0
wait "$cnn_pid" || { status=$?; echo "error: the CNN queue failed (exit $status): see $OUT/cnn_queue.log" >&2; }
wait "$vit_pid" || { status=$?; echo "error: the ConViT queue failed (exit $status): see $OUT/vit_queue.log" >&2; }
[ "$status" = 0 ] || exit "$status"

for seed in "${SEED_LIST[@]}"; do  # 2 Nets: single WRN seed s with single WRN seed s + 100
  run="$OUT/two_nets-seed$seed"
  mkdir -p "$run"
  [ -f "$run/validation.json" ] && { echo "== $(basename "$run"): evaluated before"; continue; }
  evaluate "$run" --config "$OUT/single_wrn-seed$seed/args.yaml" --ensemble-checkpoints \
    "$OUT/single_wrn-seed$seed/last.pth.tar" "$OUT/single_wrn-seed$((seed + 100))/last.pth.tar"
  echo $(( $(cat "$OUT/single_wrn-seed$seed/train_seconds.txt") + \
           $(cat "$OUT/single_wrn-seed$((seed + 100))/train_seconds.txt") )) > "$run/train_seconds.txt"
done

$PY results/cifar10_study_summarize.py "$OUT" --data "$DATA_NAME" --csv results/cifar10_study.csv \
  --plots results/cifar10_study \
  | tee results/cifar10_study.md
