#!/usr/bin/env bash
# Does results/cifar10_mixshare.sh compute the same thing with the merged CLI (timm_mimo.cli) as with the train.py of
# commit 19d5388 that produced results/cifar10_mixshare.md? Trains each kind of row (MixShare fadeout, Cut-MixMo,
# single WRN-10-1) for 2 epochs with the study's flags on a 420-image subset of CIFAR-10 (32 train / 10 test images per
# class, symlinks), once with each revision, and compares the final weights and the logged metrics.
#   CIFAR10=/path/to/cifar10 bash results/cifar10_mixshare_cli_check.sh     (a folder with train/ and test/)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
OLD_REV=${OLD_REV:-19d5388}
CIFAR10=${CIFAR10:?set CIFAR10 to the folder holding train/ and test/}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
for split_count in train:32 test:10; do
  split=${split_count%%:*} count=${split_count##*:}
  for class_dir in "$CIFAR10/$split"/*/; do
    target="$WORK/data/$split/$(basename "$class_dir")"
    mkdir -p "$target"
    find "$class_dir" -maxdepth 1 -type f | sort | sed -n "1,${count}p" | while read -r f; do ln -s "$f" "$target/"; done
  done
done
mkdir -p "$WORK/old"
git archive "$OLD_REV" | tar -x -C "$WORK/old"
export OMP_NUM_THREADS=1
WRN=(backbone=wrn28_2 depth=10 widen_factor=1)
COMMON=(--data-dir "$WORK/data" --val-split test --num-classes 10 --img-size 32 --crop-pad 4 -b 64 --opt sgd --lr 0.05
        --momentum 0.9 --weight-decay 3e-4 --sched cosine --sched-on-updates --warmup-epochs 0 --epochs 2
        --smoothing 0.0 --workers 1 --log-interval 200 --checkpoint-hist 1 --seed 0)
for side in old new; do
  code=$PWD
  [ "$side" = old ] && code="$WORK/old"
  for row in mixshare_fadeout cut_mixmo single_wrn; do
    case $row in
      mixshare_fadeout) model=(--model mixshare --model-kwargs "${WRN[@]}" unmixing=fadeout fadeout_epochs=0.6667) ;;
      cut_mixmo) model=(--model cut_mixmo --model-kwargs "${WRN[@]}") ;;
      single_wrn) model=(--model wrn28_2 --model-kwargs depth=10 widen_factor=1) ;;
    esac
    (cd "$code" && PYTHONPATH="$code" $PY train.py "${model[@]}" "${COMMON[@]}" --output "$WORK/runs/$side" \
      --experiment "$row" > "$WORK/$side-$row.log" 2>&1) || { cat "$WORK/$side-$row.log"; exit 1; }
  done
done
$PY - "$WORK/runs" <<'EOF'
import csv
import sys

import torch

root = sys.argv[1]
same = True
for row in ('mixshare_fadeout', 'cut_mixmo', 'single_wrn'):
    old, new = (torch.load(f'{root}/{side}/{row}/last.pth.tar', map_location='cpu', weights_only=True)['state_dict']
                for side in ('old', 'new'))
    weights_equal = old.keys() == new.keys() and all(torch.equal(old[k], new[k]) for k in old)
    logs = [list(csv.DictReader(open(f'{root}/{side}/{row}/summary.csv'))) for side in ('old', 'new')]
    differing = sorted({k for a, b in zip(*logs) for k in a if k in b and float(a[k]) != float(b[k])})
    largest = {k: max(abs(float(a[k]) - float(b[k])) for a, b in zip(*logs)) for k in differing}
    print(f'{row}: weights bitwise equal: {weights_equal}; logged columns that differ: {largest or "none"}')
    same &= weights_equal
sys.exit(0 if same else 1)
EOF
