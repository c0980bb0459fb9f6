#!/usr/bin/env bash
# The README's main command: set up, fetch Fashion-MNIST, train a small Cut-MixMo for a few minutes on CPU, validate.
#   bash scripts/quickstart.sh            (from the repository root; EPOCHS=5 or RUN=name change the run)
set -euo pipefail
cd "$(dirname "$0")/.."

# 1. Python environment
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  python3.11 -m venv .venv
  .venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1
  .venv/bin/pip install -q -e '.[test]'
fi
PY=.venv/bin/python

# 2. Fashion-MNIST (Debian package dataset-fashion-mnist) unpacked where torchvision's FashionMNIST reads it
SRC=/usr/share/datasets/fashion-mnist
DATA=data/FashionMNIST/raw
if [ ! -f "$SRC/train-images-idx3-ubyte.gz" ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO=sudo;
  else SUDO=none; fi
  if [ "$SUDO" = none ] || ! command -v apt-get >/dev/null; then
    echo "error: Fashion-MNIST is not installed and this script cannot install it (needs apt-get and root or sudo)." >&2
    echo "       Run 'sudo apt-get install dataset-fashion-mnist', or put the four *-ubyte files of" >&2
    echo "       https://github.com/zalandoresearch/fashion-mnist into $DATA/ and run this script again." >&2
    [ -f "$DATA/train-images-idx3-ubyte" ] || exit 1
  else
    echo "== installing dataset-fashion-mnist with apt"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
  fi
fi
mkdir -p "$DATA"
for f in "$SRC"/*-ubyte.gz; do
  [ -f "$f" ] || continue
  out="$DATA/$(basename "$f" .gz)"
  [ -s "$out" ] || gunzip -c "$f" > "$out"
done

# 3. Train a Cut-MixMo WRN-10-1 (2 members, 78k parameters, gray 28 px) and validate its checkpoint
EPOCHS=${EPOCHS:-3}
RUN=${RUN:-quickstart-$(date +%Y%m%d-%H%M%S)}
echo "== training cut_mixmo (WRN-10-1, M=2) on Fashion-MNIST for $EPOCHS epoch(s): output/train/$RUN"
$PY train.py --model cut_mixmo --model-kwargs backbone=wrn28_2 depth=10 widen_factor=1 \
  --num-classes 10 --in-chans 1 --img-size 28 --mean 0.286 --std 0.353 \
  --dataset torch/fashion_mnist --data-dir data --crop-pad 2 \
  -b 128 --batch-repeat 1 --opt sgd --lr 0.1 --weight-decay 3e-4 --sched cosine --epochs "$EPOCHS" \
  --warmup-epochs 0 --workers 1 --log-interval 50 --output output/train --experiment "$RUN"
echo "== validating output/train/$RUN/last.pth.tar"
$PY validate.py --config "output/train/$RUN/args.yaml" --checkpoint "output/train/$RUN/last.pth.tar" \
  --workers 1 --results-file "output/train/$RUN/validation.json"
