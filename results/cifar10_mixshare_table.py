"""The table of results/cifar10_mixshare.md: mean ± std over seeds of validate.py's and the analysis' JSON files.

    python results/cifar10_mixshare_table.py OUTPUT_DIR     (the runs OUTPUT_DIR/<row>-seed<k>/)
"""
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

ROWS = [('single_wrn', 'single WRN-10-1'), ('cut_mixmo', 'Cut-MixMo'), ('mixshare_fadeout', 'MixShare (fadeout)'),
        ('mixshare_partial', 'MixShare (partial 25 %)')]
COLUMNS = [('top1', 'ensemble top-1 %', 1), ('member_top1', 'member top-1 %', 1), ('loss', 'NLL', 3),
           ('nll_c', 'NLL_c', 3), ('ece', 'ECE %', 2), ('disagreement', 'disagreement', 3),
           ('classifier_sharing_rate', 'classifier sharing', 3),
           ('encoder_sharing_rate', 'encoder sharing', 3), ('variance_sharing_0', 'core sharing, stage 1', 3),
           ('variance_sharing_1', 'stage 2', 3), ('variance_sharing_2', 'stage 3', 3),
           ('active_filters', 'active filters %', 1)]


def load(run: Path) -> dict:
    result = json.loads((run / 'validation.json').read_text())
    analysis = run / 'analysis' / 'analysis.json'
    if analysis.exists():
        measured = json.loads(analysis.read_text())
        result.update({k: v for k, v in measured.items() if isinstance(v, float)})
        # feature-variance sharing after each stage, in order
        for i, rate in enumerate(measured.get('feature_variance_sharing_rate', {}).values()):
            result[f'variance_sharing_{i}'] = rate
    return result


def cell(values: list, digits: int) -> str:
    if not values:
        return '—'
    if len(values) == 1:
        return f'{values[0]:.{digits}f}'
    return f'{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}'


def main(out_dir: str) -> None:
    runs = defaultdict(list)
    for run in sorted(Path(out_dir).glob('*-seed*')):
        if (run / 'validation.json').exists():
            runs[run.name.rsplit('-seed', 1)[0]].append(load(run))
    print('| row | seeds | ' + ' | '.join(title for _, title, _ in COLUMNS) + ' |')
    print('|---|---|' + '---|' * len(COLUMNS))
    for key, title in ROWS:
        results = runs.get(key, [])
        cells = [cell([r[k] for r in results if k in r], digits) for k, _, digits in COLUMNS]
        print(f'| {title} | {len(results)} | ' + ' | '.join(cells) + ' |')


if __name__ == '__main__':
    main(sys.argv[1])
