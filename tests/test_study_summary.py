"""results/cifar10_study_summarize.py: mean ± std over seeds, the CSV's columns, the cost ratio, the plots."""
import csv
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def summarize():
    path = ROOT / 'results/cifar10_study_summarize.py'
    spec = importlib.util.spec_from_file_location('cifar10_study_summarize', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_run(out: Path, name: str, result: dict, train_seconds: int) -> None:
    run = out / name
    run.mkdir(parents=True)
    (run / 'validation.json').write_text(json.dumps(result))
    (run / 'train_seconds.txt').write_text(str(train_seconds))


def test_table_csv_and_plots_from_hand_built_runs(summarize, tmp_path, monkeypatch, capsys):
    out = tmp_path / 'study'
    _write_run(out, 'single_wrn-seed0', dict(model='wrn28_2', top1=50.0, top5=90.0, ece=4.0), 120)
    _write_run(out, 'single_wrn-seed1', dict(model='wrn28_2', top1=54.0, top5=92.0, ece=6.0), 180)
    _write_run(out, 'cut_mixmo-seed0', dict(model='cut_mixmo', top1=48.0, top5=91.0, member_top1=45.0,
                                            classifier_sharing_rate=0.8), 240)
    sizes = {'single_wrn': (100.0, 1000), 'cut_mixmo': (103.0, 1010)}  # FLOPs, parameters of each row's model
    monkeypatch.setattr(summarize, 'model_size', lambda run_dir: sizes[run_dir.name.rsplit('-seed', 1)[0]])
    csv_path, prefix = tmp_path / 'study.csv', tmp_path / 'plot'
    assert summarize.main([str(out), '--csv', str(csv_path), '--plots', str(prefix)]) == 0

    table = capsys.readouterr().out
    # mean ± sample std of (50, 54) = 52 ± 2.828; train minutes (2, 3) = 2.5 ± 0.707; one seed: no std
    assert '| single_wrn | 2 | 52.000 ± 2.828 |' in table
    assert '| 2.500 ± 0.707 | 1.000 ± 0.000 |' in table
    assert '| cut_mixmo | 1 | 48.000 | 45.000 |' in table and '| 4.000 | 1.030 |' in table

    rows = list(csv.DictReader(csv_path.open()))
    assert list(rows[0])[:7] == ['model', 'top1', 'top1_err', 'top5', 'top5_err', 'param_count', 'img_size']
    single, cut = rows
    assert (single['model'], single['row'], single['seeds']) == ('wrn28_2', 'single_wrn', '2')
    assert (float(single['top1']), float(single['top1_err']), float(single['top5'])) == (52.0, 48.0, 91.0)
    assert float(single['top1_std']) == pytest.approx(2.8284, abs=1e-4)
    assert float(single['ece']) == 5.0 and float(single['param_count']) == 0.001
    assert float(cut['cost_ratio']) == 1.03 and cut['cost_ratio_std'] == '' and float(cut['member_top1']) == 45.0
    assert float(cut['classifier_sharing_rate']) == 0.8
    for suffix in ('accuracy_vs_cost', 'member_vs_ensemble'):
        assert (tmp_path / f'plot_{suffix}.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_an_empty_study_folder_is_a_one_line_error(summarize, tmp_path, capsys):
    assert summarize.main([str(tmp_path)]) == 2
    assert 'no <run>-seed<k>/validation.json' in capsys.readouterr().err
    assert summarize.main([str(tmp_path / 'missing')]) == 2
    assert 'is not a folder' in capsys.readouterr().err
