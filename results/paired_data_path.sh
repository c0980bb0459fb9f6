#!/usr/bin/env bash
# Paired comparison of two commits of timm_mimo on the CIFAR-10 study's single-WRN and Cut-MixMo rows: the same
# seeds, the same data, the same flags (results/cifar10_study.sh's), trained by each commit's own train.py and
# evaluated by this checkout's validate.py on the last checkpoint (top-1 / NLL on the test split of the subset).
#
#   OLD=e09f6fc NEW=6035539 SEEDS="0 1 2 3 4 5 6 7" bash results/paired_data_path.sh
#
# OLD / NEW are any commits of this repository (git worktrees are made for them under $OUT/src); the defaults compare
# the last commit before the training data path was rebuilt (plans and augmentation seeds in the loader workers,
# packed batches, device prefetcher) with the rebuilt one. Two queues side by side (OLD | NEW), one torch thread each,
# row after row, seed after seed, so that a cut-short run still has complete pairs. Resumable: a run whose last.pth.tar
# exists is not trained again, one with an eval.json not evaluated again. Then results/paired_data_path.py writes the
# table, the paired tests and the plot. DATA is the study's subset (results/cifar10_study_prepare.py writes it).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PY:-$ROOT/.venv/bin/python}
OLD=${OLD:-e09f6fc}
NEW=${NEW:-6035539}
SEEDS=${SEEDS:-"0 1 2 3 4 5 6 7"}
ROWS=${ROWS:-"single_wrn cut_mixmo"}
DATA=${DATA:-$ROOT/data/cifar10_study}
OUT=${OUT:-$ROOT/output/paired_data_path}
EPOCHS=${EPOCHS:-5}
WRN=${WRN:-"depth=10 widen_factor=1"}

if [ ! -d "$DATA/train" ]; then
  echo "error: no CIFAR-10 study subset at DATA=$DATA (write it with results/cifar10_study_prepare.py)" >&2; exit 2
fi
mkdir -p "$OUT/src"
for commit in "$OLD" "$NEW"; do
  [ -d "$OUT/src/$commit" ] || git worktree add -q --detach "$OUT/src/$commit" "$commit"
done

COMMON=(--data-dir "$DATA" --num-classes 10 --img-size 32 --crop-pad 4 -b 128 --epochs "$EPOCHS" --sched cosine
        --workers 1 --log-interval 100 --checkpoint-hist 1 --val-split ''
        --opt sgd --lr 0.1 --momentum 0.9 --weight-decay 5e-4 --warmup-epochs 0)

run_one() {  # run_one <commit> <row> <seed>: train with the commit's train.py, evaluate with this checkout's validate.py
  local commit=$1 row=$2 seed=$3 model kwargs
  local out="$OUT/$commit" name="$row-seed$seed"
  case "$row" in
    single_wrn) model=wrn28_2; kwargs="$WRN" ;;
    cut_mixmo) model=cut_mixmo; kwargs="backbone=wrn28_2 $WRN" ;;
    *) echo "error: unknown row $row (single_wrn, cut_mixmo)" >&2; return 2 ;;
  esac
  if [ ! -f "$out/$name/last.pth.tar" ]; then
    echo "== $commit $name: training"
    # shellcheck disable=SC2086
    (cd "$OUT/src/$commit" && PYTHONPATH=$PWD "$PY" train.py "${COMMON[@]}" --model "$model" --model-kwargs $kwargs \
      --seed "$seed" --output "$out" --experiment "$name")
  fi
  if [ ! -f "$out/$name/eval.json" ]; then
    echo "== $commit $name: evaluating"
    PYTHONPATH=$ROOT "$PY" validate.py --split test --workers 1 --config "$out/$name/args.yaml" \
      --checkpoint "$out/$name/last.pth.tar" --results-file "$out/$name/eval.json"
  fi
}

queue() {  # queue <commit>
  for row in $ROWS; do
    for seed in $SEEDS; do run_one "$1" "$row" "$seed"; done
  done
}

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
queue "$OLD" > "$OUT/queue-$OLD.log" 2>&1 & old_pid=$!
queue "$NEW" > "$OUT/queue-$NEW.log" 2>&1 & new_pid=$!
status=0
wait "$old_pid" || { status=$?; echo "error: the $OLD queue failed: see $OUT/queue-$OLD.log" >&2; }
wait "$new_pid" || { status=$?; echo "error: the $NEW queue failed: see $OUT/queue-$NEW.log" >&2; }
[ "$status" = 0 ] || exit "$status"
"$PY" results/paired_data_path.py "$OUT" --old "$OLD" --new "$NEW" --plot results/paired_data_path.png \
  | tee results/paired_data_path.md
