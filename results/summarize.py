"""Mean ± spread over seeds of validate.py's JSON results, one row per model (results/fashion_mnist.md)."""
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

COLUMNS = [('top1', 'Top-1 %'), ('member_top1', 'member Top-1 %'), ('loss', 'NLL'), ('nll_c', 'NLL_c'),
           ('ece', 'ECE %'), ('d_re', 'd_re'), ('disagreement', 'disagreement')]


def main(paths: list) -> None:
    runs = defaultdict(list)
    for path in paths:
        result = json.loads(Path(path).read_text())
        runs[Path(path).parent.name.rsplit('-seed', 1)[0]].append(result)
    print('| run | seeds | ' + ' | '.join(title for _, title in COLUMNS) + ' |')
    print('|---|---|' + '---|' * len(COLUMNS))
    for name, results in sorted(runs.items()):
        cells = []
        for key, _ in COLUMNS:
            values = [r[key] for r in results if key in r]
            if not values:
                cells.append('—')
            elif len(values) == 1:
                cells.append(f'{values[0]:.3f}')
            else:
                cells.append(f'{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}')
        print(f'| {name} | {len(results)} | ' + ' | '.join(cells) + ' |')


if __name__ == '__main__':
    main(sys.argv[1:])
