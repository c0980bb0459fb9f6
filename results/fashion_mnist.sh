#!/usr/bin/env bash
# Real runs behind results/fashion_mnist.md: a single WRN-10-1 against MIMO / Linear-MixMo / Cut-MixMo WRN-10-1
# (M = 2, one network's parameters), full Fashion-MNIST (60k train / 10k test), same recipe and compute (b = 1),
# two seeds each; then validate.py on every final checkpoint and results/summarize.py to make the table.
#   bash results/fashion_mnist.sh          (after scripts/quickstart.sh has made .venv and data/)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
EPOCHS=${EPOCHS:-5}
OUT=output/results
COMMON=(--num-classes 10 --in-chans 1 --img-size 28 --mean 0.286 --std 0.353 --dataset torch/fashion_mnist
        --data-dir data --crop-pad 2 -b 128 --opt sgd --lr 0.1 --weight-decay 3e-4 --sched cosine
        --epochs "$EPOCHS" --warmup-epochs 0 --workers 1 --log-interval 200 --output "$OUT")
for seed in 0 1; do
  $PY train.py --model wrn28_2 --model-kwargs depth=10 widen_factor=1 "${COMMON[@]}" --seed $seed \
    --experiment "wrn10_1-seed$seed"
  for method in mimo linear_mixmo cut_mixmo; do
    $PY train.py --model $method --model-kwargs backbone=wrn28_2 depth=10 widen_factor=1 "${COMMON[@]}" \
      --batch-repeat 1 --seed $seed --experiment "$method-wrn10_1-seed$seed"
  done
done
for run in "$OUT"/*-seed*; do
  $PY validate.py --config "$run/args.yaml" --checkpoint "$run/last.pth.tar" --workers 1 \
    --results-file "$run/validation.json"
done
$PY results/summarize.py "$OUT"/*-seed*/validation.json > results/fashion_mnist.md
cat results/fashion_mnist.md
