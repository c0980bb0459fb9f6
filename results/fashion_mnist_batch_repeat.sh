#!/usr/bin/env bash
# Second part of results/fashion_mnist.md: Cut-MixMo WRN-10-1 with batch repetition b = 2 (each step repeats
# 64 unique images twice, twice the steps per epoch, lr / b as in the papers, thesis (HAL tel-03952815)
# App. A.1.3.1), two seeds; run after fashion_mnist.sh,
# then the table is remade over every run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
EPOCHS=${EPOCHS:-5}
OUT=output/results
COMMON=(--num-classes 10 --in-chans 1 --img-size 28 --mean 0.286 --std 0.353 --dataset torch/fashion_mnist
        --data-dir data --crop-pad 2 -b 128 --opt sgd --lr 0.05 --weight-decay 3e-4 --sched cosine
        --epochs "$EPOCHS" --warmup-epochs 0 --workers 1 --log-interval 200 --output "$OUT")
for seed in 0 1; do
  for method in cut_mixmo; do
    run="$method-wrn10_1-b2-seed$seed"
    $PY train.py --model $method --model-kwargs backbone=wrn28_2 depth=10 widen_factor=1 "${COMMON[@]}" \
      --batch-repeat 2 --seed $seed --experiment "$run"
    $PY validate.py --config "$OUT/$run/args.yaml" --checkpoint "$OUT/$run/last.pth.tar" --workers 1 \
      --results-file "$OUT/$run/validation.json"
  done
done
$PY results/summarize.py "$OUT"/*-seed*/validation.json > results/fashion_mnist.md
cat results/fashion_mnist.md
