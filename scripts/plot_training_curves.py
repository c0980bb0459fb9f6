"""Training curves from the ``summary.csv`` of timm-mimo-train runs: training loss and validation top-1 per epoch.

    python scripts/plot_training_curves.py RUN/summary.csv [RUN2/summary.csv ...] --out curves.png [--labels A B]

Each curve is labelled by ``--labels`` or the file name (its run folder for ``summary.csv``). Needs matplotlib
(``pip install ".[plots]"``).
"""
import argparse
import csv
import os
import sys
from typing import List, Optional, Sequence


def read_summary(path: str) -> List[dict]:
    """The rows of a summary.csv, numbers as floats."""
    with open(path, newline='') as f:
        return [{key: float(value) for key, value in row.items() if value not in ('', None)}
                for row in csv.DictReader(f)]


def plot(paths: Sequence[str], out: str, labels: Optional[Sequence[str]] = None) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, (loss_ax, top1_ax) = plt.subplots(1, 2, figsize=(9, 3.4))
    for index, path in enumerate(paths):
        rows = read_summary(path)
        name = labels[index] if labels else os.path.basename(path).removesuffix('.csv').removesuffix('-summary')
        if name == 'summary':
            name = os.path.basename(os.path.dirname(os.path.abspath(path)))
        epochs = [int(row['epoch']) for row in rows]
        loss_ax.plot(epochs, [row['train_loss'] for row in rows], marker='o', label=name)
        if all('eval_top1' in row for row in rows):
            top1_ax.plot(epochs, [row['eval_top1'] for row in rows], marker='o', label=name)
    loss_ax.set(xlabel='epoch', ylabel='training loss', title='training loss')
    top1_ax.set(xlabel='epoch', ylabel='top-1 (%)', title='validation top-1 (ensemble)')
    top1_ax.legend(fontsize=8)
    for ax in (loss_ax, top1_ax):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('summaries', nargs='+', help='summary.csv files of timm-mimo-train runs')
    parser.add_argument('--out', required=True, help='PNG to write')
    parser.add_argument('--labels', nargs='+', default=None, help='one label per summary (default: the file names)')
    args = parser.parse_args(argv)
    if args.labels and len(args.labels) != len(args.summaries):
        print(f'error: {len(args.labels)} --labels for {len(args.summaries)} summaries', file=sys.stderr)
        return 2
    for path in args.summaries:
        if not os.path.isfile(path):
            print(f'error: summary {path!r} does not exist', file=sys.stderr)
            return 2
    plot(args.summaries, args.out, args.labels)
    return 0


if __name__ == '__main__':
    sys.exit(main())
