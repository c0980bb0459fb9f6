"""The CIFAR-10 study's table, CSV and plots: mean ± std over seeds of validate.py's results, one row per model.

    python results/cifar10_study_summarize.py output/cifar10_study --csv results/cifar10_study.csv \
        --plots results/cifar10_study > results/cifar10_study.md

Reads ``<run>-seed<k>/validation.json`` and ``train_seconds.txt`` of every run. The inference cost ratio is the
forward FLOPs of the row's model (one image, ``torch.utils.flop_counter``) over those of the single network of its
family (single WRN for the CNN rows, the ConViT for the MixViT rows); 2 Nets is two single WRNs.

Writes (with ``--csv``) one line per row with timm's leading result columns (``model, top1, top1_err, top5,
top5_err, param_count, img_size``; means over seeds, parameters in millions) then ``row, seeds, top1_std, top5_std``
and every other metric as ``<name>`` (mean) and ``<name>_std``; and (with ``--plots PREFIX``)
``PREFIX_accuracy_vs_cost.png`` (ensemble top-1 against the inference cost ratio), ``PREFIX_member_vs_ensemble.png``
(ensemble against mean member top-1) and ``PREFIX_reliability.png`` (the first seed's reliability diagrams, as
validate.py drew them, side by side).
"""
import argparse
import csv
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Tuple

COLUMNS = [('top1', 'Top-1 %'), ('member_top1', 'member Top-1 %'), ('loss', 'NLL'), ('nll_c', 'NLL_c'),
           ('ece', 'ECE %'), ('brier', 'Brier'), ('aurc', 'AURC'), ('d_re', 'd_re'),
           ('classifier_sharing_rate', 'classifier sharing'), ('c_mean_top1', 'corruption Top-1 %'),
           ('ood_msp_auroc', 'OOD AUROC (MSP) %'), ('ood_mutual_info_auroc', 'OOD AUROC (MI) %'),
           ('train_minutes', 'train min'), ('cost_ratio', 'inference cost ×')]
CSV_METRICS = ['member_top1', 'loss', 'nll_c', 'ece', 'brier', 'aurc', 'd_re', 'disagreement',
               'encoder_sharing_rate', 'classifier_sharing_rate', 'c_mean_top1', 'c_mean_nll', 'c_mean_ece',
               'ood_msp_auroc', 'ood_msp_aupr', 'ood_msp_fpr95', 'ood_entropy_auroc', 'ood_mutual_info_auroc',
               'train_minutes', 'cost_ratio']
ORDER = ['single_wrn', 'two_nets', 'mimo', 'linear_mixmo', 'cut_mixmo', 'mixshare', 'convit', 'mixvit_embedding',
         'mixvit_encoding']
FAMILY_BASE = {'single_wrn': 'single_wrn', 'two_nets': 'single_wrn', 'mimo': 'single_wrn',
               'linear_mixmo': 'single_wrn', 'cut_mixmo': 'single_wrn', 'mixshare': 'single_wrn',
               'convit': 'convit', 'mixvit_embedding': 'convit', 'mixvit_encoding': 'convit'}
RELIABILITY_ROWS = ['single_wrn', 'cut_mixmo', 'mixshare', 'convit', 'mixvit_embedding']


def model_size(run_dir: Path) -> Tuple[Optional[float], Optional[int]]:
    """Forward FLOPs of one image and the parameter count of a run's model (rebuilt from its checkpoint)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from timm_mimo.evaluation import model_from_checkpoint
    checkpoint = run_dir / 'last.pth.tar'
    if not checkpoint.is_file():
        return None, None
    model = model_from_checkpoint(str(checkpoint)).eval()
    with FlopCounterMode(display=False) as counter:
        model(torch.randn(1, *model.pretrained_cfg['input_size']))
    return float(counter.get_total_flops()), sum(p.numel() for p in model.parameters())


def cell(values: List[float]) -> str:
    if not values:
        return '—'
    if len(values) == 1:
        return f'{values[0]:.3f}'
    return f'{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}'


def mean_std(results: List[Dict[str, float]], key: str) -> Tuple[Optional[float], Optional[float]]:
    values = [r[key] for r in results if isinstance(r.get(key), (int, float))]
    if not values:
        return None, None
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else None)


def collect(out: str) -> Tuple[Dict[str, List[Dict[str, float]]], Dict[str, Path], Dict[str, int]]:
    """Results per row (one dict per seed, cost ratio and training minutes added), first run dir, parameters."""
    runs: Dict[str, List[Dict[str, float]]] = defaultdict(list)
    dirs: Dict[str, Path] = {}
    for path in sorted(Path(out).glob('*-seed*/validation.json')):
        name = path.parent.name.rsplit('-seed', 1)[0]
        result = json.loads(path.read_text())
        seconds = path.parent / 'train_seconds.txt'
        if seconds.is_file():
            result['train_minutes'] = int(seconds.read_text()) / 60
        runs[name].append(result)
        dirs.setdefault(name, path.parent)
    flops: Dict[str, Optional[float]] = {}
    params: Dict[str, int] = {}
    for name, run_dir in dirs.items():
        if name != 'two_nets':
            flops[name], count = model_size(run_dir)
            if count is not None:
                params[name] = count
    if flops.get('single_wrn'):
        flops['two_nets'] = 2 * flops['single_wrn']
        params['two_nets'] = 2 * params['single_wrn']
    for name, results in runs.items():
        base = flops.get(FAMILY_BASE.get(name, ''))
        if base and flops.get(name):
            for result in results:
                result['cost_ratio'] = flops[name] / base
    return runs, dirs, params


def ordered(runs: Dict[str, List[Dict[str, float]]]) -> List[str]:
    return sorted(runs, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))


def write_markdown(runs: Dict[str, List[Dict[str, float]]], data: str = 'CIFAR-10') -> None:
    seeds = ', '.join(f'{name} {len(runs[name])}' for name in ordered(runs))
    print(f'{data} study; runs per row: {seeds}. Last-epoch checkpoints, mean ± std over seeds.\n')
    print('| row | seeds | ' + ' | '.join(title for _, title in COLUMNS) + ' |')
    print('|---|---|' + '---|' * len(COLUMNS))
    for name in ordered(runs):
        results = runs[name]
        cells = [cell([r[key] for r in results if isinstance(r.get(key), (int, float))]) for key, _ in COLUMNS]
        print(f'| {name} | {len(results)} | ' + ' | '.join(cells) + ' |')


def write_csv(runs: Dict[str, List[Dict[str, float]]], params: Dict[str, int], path: str) -> None:
    def rounded(value: Optional[float]) -> str:
        return '' if value is None else f'{round(value, 4):g}'

    header = ['model', 'top1', 'top1_err', 'top5', 'top5_err', 'param_count', 'img_size', 'row', 'seeds', 'top1_std',
              'top5_std']
    header += [f'{key}{suffix}' for key in CSV_METRICS for suffix in ('', '_std')]
    with open(path, 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for name in ordered(runs):
            results = runs[name]
            top1, top5 = mean_std(results, 'top1')[0], mean_std(results, 'top5')[0]
            model = results[0]['model']
            if name == 'two_nets' and 'single_wrn' in runs:  # validate.py names a checkpoint ensemble 'ensemble'
                model = '2x ' + runs['single_wrn'][0]['model']
            line = [model, rounded(top1), rounded(None if top1 is None else 100 - top1), rounded(top5),
                    rounded(None if top5 is None else 100 - top5),
                    rounded(params[name] / 1e6) if name in params else '', 32, name, len(results),
                    rounded(mean_std(results, 'top1')[1]), rounded(mean_std(results, 'top5')[1])]
            for key in CSV_METRICS:
                line += [rounded(v) for v in mean_std(results, key)]
            writer.writerow(line)


def _pyplot():
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def plot_accuracy_vs_cost(runs: Dict[str, List[Dict[str, float]]], path: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for index, name in enumerate(ordered(runs)):
        cost, _ = mean_std(runs[name], 'cost_ratio')
        top1, std = mean_std(runs[name], 'top1')
        if cost is None or top1 is None:
            continue
        marker = 'o' if FAMILY_BASE.get(name) == 'single_wrn' else 's'
        ax.errorbar(cost, top1, yerr=std or 0, fmt=marker, capsize=3)
        ax.annotate(name, (cost, top1), textcoords='offset points', xytext=(6, 4 if index % 2 else -10), fontsize=8)
    ax.set_xlabel('inference cost (forward FLOPs / single network of the family)')
    ax.set_ylabel('ensemble top-1 % (mean ± std over seeds)')
    ax.set_title('CIFAR-10 study: accuracy vs inference cost\n(circles: WRN-10-1 family, squares: ConViT family)',
                 fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_member_vs_ensemble(runs: Dict[str, List[Dict[str, float]]], path: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    points = []
    for index, name in enumerate(ordered(runs)):
        member, member_std = mean_std(runs[name], 'member_top1')
        top1, std = mean_std(runs[name], 'top1')
        if member is None or top1 is None:
            continue
        points += [member, top1]
        ax.errorbar(member, top1, xerr=member_std or 0, yerr=std or 0, fmt='o', capsize=3)
        ax.annotate(name, (member, top1), textcoords='offset points', xytext=(6, -10 if index % 2 else 5), fontsize=8)
    if points:
        low, high = min(points) - 2, max(points) + 2
        ax.plot([low, high], [low, high], 'k--', linewidth=1, label='ensemble = member')
        ax.set_xlim(low, high)
        ax.set_ylim(low, high)
        ax.legend(loc='upper left')
    ax.set_xlabel('mean member top-1 %')
    ax.set_ylabel('ensemble top-1 %')
    ax.set_title('CIFAR-10 study: members vs their ensemble', fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_reliability(dirs: Dict[str, Path], path: str) -> None:
    plt = _pyplot()
    images = [(name, dirs[name] / 'reliability.png') for name in RELIABILITY_ROWS
              if name in dirs and (dirs[name] / 'reliability.png').is_file()]
    if not images:
        return
    fig, axes = plt.subplots(1, len(images), figsize=(3.2 * len(images), 4.4))
    for ax, (name, png) in zip(axes if len(images) > 1 else [axes], images):
        ax.imshow(plt.imread(png))
        ax.set_title(f'{name} ({dirs[name].name.rsplit("-", 1)[1]})', fontsize=9)
        ax.axis('off')
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('out', help='the study output folder (OUT of cifar10_study.sh)')
    parser.add_argument('--csv', default='', help='write the table as CSV here')
    parser.add_argument('--plots', default='', metavar='PREFIX', help='write the three PNG plots as PREFIX_*.png')
    parser.add_argument('--data', default='CIFAR-10', help="the data's name in the table's title, e.g. 'CIFAR-10 (JPEG "
                        "copy)'")
    args = parser.parse_args(argv)
    if not Path(args.out).is_dir():
        print(f'error: {args.out!r} is not a folder; give the OUT folder of results/cifar10_study.sh', file=sys.stderr)
        return 2
    runs, dirs, params = collect(args.out)
    if not runs:
        print(f'error: no <run>-seed<k>/validation.json under {args.out!r}; run results/cifar10_study.sh first',
              file=sys.stderr)
        return 2
    write_markdown(runs, args.data)
    if args.csv:
        write_csv(runs, params, args.csv)
    if args.plots:
        plot_accuracy_vs_cost(runs, f'{args.plots}_accuracy_vs_cost.png')
        plot_member_vs_ensemble(runs, f'{args.plots}_member_vs_ensemble.png')
        plot_reliability(dirs, f'{args.plots}_reliability.png')
    return 0


if __name__ == '__main__':
    sys.exit(main())
