"""The CIFAR-10 study table: mean ± std over seeds of validate.py's results, one row per model.

    python results/cifar10_study_summarize.py output/cifar10_study > results/cifar10_study.md

Reads ``<run>-seed<k>/validation.json`` and ``train_seconds.txt`` of every run. The inference cost ratio is the
forward FLOPs of the row's model (one image, ``torch.utils.flop_counter``) over those of the single network of its
family (single WRN for the CNN rows, the ConViT for the MixViT rows); 2 Nets is two single WRNs.
"""
import json
import os
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional

COLUMNS = [('top1', 'Top-1 %'), ('member_top1', 'member Top-1 %'), ('loss', 'NLL'), ('nll_c', 'NLL_c'),
           ('ece', 'ECE %'), ('brier', 'Brier'), ('aurc', 'AURC'), ('d_re', 'd_re'),
           ('classifier_sharing_rate', 'classifier sharing'), ('c_mean_top1', 'corruption Top-1 %'),
           ('ood_msp_auroc', 'OOD AUROC (MSP) %'), ('ood_mutual_info_auroc', 'OOD AUROC (MI) %'),
           ('train_minutes', 'train min'), ('cost_ratio', 'inference cost ×')]
ORDER = ['single_wrn', 'two_nets', 'mimo', 'linear_mixmo', 'cut_mixmo', 'mixshare', 'convit', 'mixvit_embedding',
         'mixvit_encoding']
FAMILY_BASE = {'single_wrn': 'single_wrn', 'two_nets': 'single_wrn', 'mimo': 'single_wrn',
               'linear_mixmo': 'single_wrn', 'cut_mixmo': 'single_wrn', 'mixshare': 'single_wrn',
               'convit': 'convit', 'mixvit_embedding': 'convit', 'mixvit_encoding': 'convit'}


def forward_flops(run_dir: Path) -> Optional[float]:
    """Forward FLOPs of one image for the model of a run (rebuilt from its args.yaml and checkpoint)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from timm_mimo.evaluation import model_from_checkpoint
    checkpoint = run_dir / 'last.pth.tar'
    if not checkpoint.is_file():
        return None
    model = model_from_checkpoint(str(checkpoint)).eval()
    with FlopCounterMode(display=False) as counter:
        model(torch.randn(1, *model.pretrained_cfg['input_size']))
    return float(counter.get_total_flops())


def cell(values: List[float]) -> str:
    if not values:
        return '—'
    if len(values) == 1:
        return f'{values[0]:.3f}'
    return f'{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}'


def main(out: str) -> None:
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
    flops = {name: forward_flops(run_dir) for name, run_dir in dirs.items() if name != 'two_nets'}
    if 'single_wrn' in flops and flops['single_wrn']:
        flops['two_nets'] = 2 * flops['single_wrn']
    for name, results in runs.items():
        base = flops.get(FAMILY_BASE.get(name, ''))
        if base and flops.get(name):
            for result in results:
                result['cost_ratio'] = flops[name] / base
    seeds = ', '.join(f'{name} {len(results)}' for name, results in runs.items())
    print(f'CIFAR-10 (JPEG copy) study; runs per row: {seeds}. Last-epoch checkpoints, mean ± std over seeds.\n')
    print('| row | seeds | ' + ' | '.join(title for _, title in COLUMNS) + ' |')
    print('|---|---|' + '---|' * len(COLUMNS))
    for name in sorted(runs, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n)):
        results = runs[name]
        cells = [cell([r[key] for r in results if isinstance(r.get(key), (int, float))]) for key, _ in COLUMNS]
        print(f'| {name} | {len(results)} | ' + ' | '.join(cells) + ' |')


if __name__ == '__main__':
    if len(sys.argv) != 2 or not os.path.isdir(sys.argv[1]):
        print('usage: python results/cifar10_study_summarize.py OUTPUT_DIR', file=sys.stderr)
        sys.exit(2)
    main(sys.argv[1])
