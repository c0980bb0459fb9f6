"""Summary of results/paired_data_path.sh: per row, each seed's top-1 / NLL / final training loss under the two
commits, the paired differences (NEW - OLD) with a paired t-test and a Wilcoxon signed-rank test, and a plot.

    python results/paired_data_path.py output/paired_data_path --old e09f6fc --new 6035539 \
        --plot results/paired_data_path.png > results/paired_data_path.md
"""
import argparse
import csv
import json
import os
import platform
import re
import sys
from typing import Dict, List, Optional, Tuple

import numpy as np

ROWS = ('single_wrn', 'cut_mixmo')
METRICS = (('top1', 'top-1 %'), ('loss', 'NLL'), ('train_loss', 'final train loss'))


def read_run(run_dir: str) -> Optional[Dict[str, float]]:
    """Test-split top-1 / NLL (eval.json) and the last epoch's training loss (summary.csv) of one run."""
    eval_file, summary_file = os.path.join(run_dir, 'eval.json'), os.path.join(run_dir, 'summary.csv')
    if not (os.path.isfile(eval_file) and os.path.isfile(summary_file)):
        return None
    with open(eval_file) as f:
        results = json.load(f)
    with open(summary_file) as f:
        last = list(csv.DictReader(f))[-1]
    return dict(top1=float(results['top1']), loss=float(results['loss']), train_loss=float(last['train_loss']))


def paired_runs(out: str, old: str, new: str, row: str) -> List[Tuple[int, Dict[str, float], Dict[str, float]]]:
    """(seed, old run, new run) for every seed that both commits finished, by seed."""
    pairs = []
    for name in sorted(os.listdir(os.path.join(out, old)) if os.path.isdir(os.path.join(out, old)) else []):
        match = re.fullmatch(rf'{row}-seed(\d+)', name)
        if not match:
            continue
        first, second = read_run(os.path.join(out, old, name)), read_run(os.path.join(out, new, name))
        if first and second:
            pairs.append((int(match.group(1)), first, second))
    return sorted(pairs, key=lambda pair: pair[0])


def paired_tests(differences: np.ndarray) -> Tuple[float, float, float]:
    """(t statistic, two-sided p of the paired t-test, two-sided p of the Wilcoxon signed-rank test)."""
    from scipy import stats
    if differences.size < 2 or np.all(differences == differences[0]):
        return float('nan'), float('nan'), float('nan')
    t = stats.ttest_1samp(differences, 0.0)
    return float(t.statistic), float(t.pvalue), float(stats.wilcoxon(differences).pvalue)


def table(out: str, old: str, new: str) -> Tuple[str, Dict[str, list]]:
    lines, collected = [], {}
    for row in ROWS:
        pairs = paired_runs(out, old, new, row)
        if not pairs:
            continue
        collected[row] = pairs
        lines += [f'### {row} ({len(pairs)} seeds)', '',
                  f'| seed | top-1 {old} | top-1 {new} | Δ top-1 | NLL {old} | NLL {new} | train loss {old} | '
                  f'train loss {new} |', '|---|---|---|---|---|---|---|---|']
        for seed, first, second in pairs:
            delta = second['top1'] - first['top1']
            lines.append(f'| {seed} | {first["top1"]:.2f} | {second["top1"]:.2f} | {delta:+.2f} '
                         f'| {first["loss"]:.4f} | {second["loss"]:.4f} | {first["train_loss"]:.4f} | '
                         f'{second["train_loss"]:.4f} |')
        lines += ['', f'| metric | {old} mean ± std | {new} mean ± std | mean Δ (new − old) ± std | paired t | '
                      'p (t-test) | p (Wilcoxon) |', '|---|---|---|---|---|---|---|']
        for key, label in METRICS:
            first = np.array([pair[1][key] for pair in pairs])
            second = np.array([pair[2][key] for pair in pairs])
            diff = second - first
            t, p_t, p_w = paired_tests(diff)
            lines.append(f'| {label} | {first.mean():.3f} ± {first.std(ddof=1):.3f} | {second.mean():.3f} ± '
                         f'{second.std(ddof=1):.3f} | {diff.mean():+.3f} ± {diff.std(ddof=1):.3f} | {t:.2f} | '
                         f'{p_t:.3f} | {p_w:.3f} |')
        lines.append('')
    return '\n'.join(lines), collected


def plot(collected: Dict[str, list], old: str, new: str, path: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(collected), figsize=(4.2 * len(collected), 3.6), squeeze=False)
    for ax, (row, pairs) in zip(axes[0], collected.items()):
        for seed, first, second in pairs:
            ax.plot([0, 1], [first['top1'], second['top1']], '-o', color='tab:gray', alpha=0.7)
            ax.annotate(str(seed), (1.03, second['top1']), fontsize=7)
        means = [np.mean([pair[i]['top1'] for pair in pairs]) for i in (1, 2)]
        ax.plot([0, 1], means, '-s', color='tab:red', linewidth=2, label='mean')
        ax.set_xticks([0, 1], [old, new])
        ax.set_xlim(-0.3, 1.3)
        ax.set_title(f'{row}: test top-1 by seed')
        ax.set_ylabel('top-1 %')
        ax.legend(loc='lower center', fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('out', help="results/paired_data_path.sh's OUT folder")
    parser.add_argument('--old', required=True)
    parser.add_argument('--new', required=True)
    parser.add_argument('--plot', default='', help='PNG of top-1 by seed under both commits')
    args = parser.parse_args()
    text, collected = table(args.out, args.old, args.new)
    if not collected:
        print(f'error: no seed finished under both {args.old} and {args.new} in {args.out!r}', file=sys.stderr)
        return 2
    print(f'# Paired comparison: {args.old} against {args.new}\n')
    print('CIFAR-10 (JPEG copy), the study\'s subset (1,000 training images per class, the 10,000 test images), '
          'WRN-10-1 and Cut-MixMo WRN-10-1 (b = 1), 5 epochs, batch 128, SGD lr 0.1 cosine; each commit\'s own '
          'train.py, one validate.py for all (last checkpoint, test split). Made by `bash results/paired_data_path.sh` '
          f'on a 2-core x86_64 CPU VM ({platform.python_implementation()} {platform.python_version()}).\n')
    print(text)
    if args.plot:
        plot(collected, args.old, args.new, args.plot)
    return 0


if __name__ == '__main__':
    sys.exit(main())
