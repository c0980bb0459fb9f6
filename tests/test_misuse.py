"""Misuse of timm-mimo-train / timm-mimo-validate: one clear line, exit status 2, nothing written, nothing lost.

Every case runs the CLI's ``main(argv)`` in-process (an escaping exception fails the test, as a traceback would fail
the user) and checks: the exit code, exactly one ``error: ...`` line on stderr naming the bad value (and usually the
way out), and that the files that existed before (a previous run folder) are byte-for-byte unchanged. ``CASES`` is
plain data so the same cases can be replayed against another version of the scripts.
"""
import csv
import hashlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import pytest
import timm
import torch
import yaml
from PIL import Image
from torchvision.transforms.functional import to_tensor

import timm_mimo  # noqa: F401
from timm_mimo import analysis, hub
from timm_mimo.cli import checkpoint_saver, run_folder, run_loop, train, validate, validation
from timm_mimo.cli.run_folder import Interrupted, SignalGuard

MODEL = ['--model', 'cut_mixmo', '--model-kwargs', 'backbone=wrn28_2', 'depth=10', 'widen_factor=1',
         '--num-classes', '10', '--in-chans', '1', '--img-size', '8', '--mean', '0.5', '--std', '0.5']
PLAIN = ['--model', 'test_resnet', '--num-classes', '10', '--in-chans', '1', '--img-size', '8', '--mean', '0.5',
         '--std', '0.5']
COMMON = ['--workers', '0', '--sched', 'multistep', '--warmup-epochs', '0', '--log-interval', '1000', '--seed', '7',
          '--epochs', '1', '-b', '32', '--crop-pad', '1']


@dataclass
class Case:
    """One misuse: ``argv(tmp, data)`` for ``script`` after ``setup(tmp, data)``; the error line must contain every
    fragment (``code=0``: the misuse is handled by doing the right thing, checked by ``check(tmp)``)."""
    name: str
    script: str
    argv: Callable[[str, str], List[str]]
    fragments: List[str] = field(default_factory=list)
    setup: Optional[Callable[[str, str], None]] = None
    code: int = 2
    check: Optional[Callable[[str], None]] = None


def _train(*extra, model=MODEL, run='run'):
    return lambda tmp, data: [*model, *COMMON, '--data-dir', data, '--output', os.path.join(tmp, 'out'),
                              '--experiment', run, *[e(tmp, data) if callable(e) else e for e in extra]]


def _validate(*extra, model=MODEL):
    return lambda tmp, data: [*model, '--data-dir', data, '--workers', '0', '-b', '100',
                              *[e(tmp, data) if callable(e) else e for e in extra]]


def _path(*parts):
    return lambda tmp, data: os.path.join(tmp, *parts)


def _cut_mixmo(num_members=2):
    return timm.create_model('cut_mixmo', backbone='wrn28_2', depth=10, widen_factor=1, num_classes=10, in_chans=1,
                             num_members=num_members)


def _write(name, content: bytes):
    def setup(tmp, data):
        with open(os.path.join(tmp, name), 'wb') as f:
            f.write(content)
    return setup


def _checkpoint(name, **state):
    def setup(tmp, data):
        model = _cut_mixmo(state.pop('num_members', 2))
        torch.save(dict(state_dict=model.state_dict(), **state), os.path.join(tmp, name))
    return setup


class Payload:
    """A pickle that would create a file if it were unpickled with weights_only=False."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, 'w'))


def _payload(tmp, data):
    with open(os.path.join(tmp, 'payload.pth.tar'), 'wb') as f:
        pickle.dump({'state_dict': Payload(os.path.join(tmp, 'PAYLOAD_RAN'))}, f)


def _payload_not_run(tmp):
    assert not os.path.exists(os.path.join(tmp, 'PAYLOAD_RAN'))


def _flat_data(tmp, data):
    """A data dir with a train folder and no validation folder (timm would 'validate' on the whole root)."""
    os.makedirs(os.path.join(tmp, 'flat'), exist_ok=True)
    link = os.path.join(tmp, 'flat', 'train')
    if not os.path.exists(link):
        os.symlink(os.path.join(data, 'train'), link)


def _config(content):
    def setup(tmp, data):
        with open(os.path.join(tmp, 'bad.yaml'), 'w') as f:
            f.write(content)
    return setup


def _stray_final_checkpoint(tmp, data):
    """A run folder holding the user's checkpoint-final.pth.tar next to the epoch-0 checkpoint being resumed."""
    run = os.path.join(tmp, 'out', 'stray')
    os.makedirs(run, exist_ok=True)
    with open(os.path.join(run, 'checkpoint-final.pth.tar'), 'wb') as f:
        f.write(b'the user keeps this')
    torch.save(dict(epoch=0, version=2, state_dict=_cut_mixmo().state_dict()), os.path.join(run, 'last.pth.tar'))


def _stray_kept(tmp):
    run = os.path.join(tmp, 'out', 'stray')
    assert open(os.path.join(run, 'checkpoint-final.pth.tar'), 'rb').read() == b'the user keeps this'
    assert os.path.exists(os.path.join(run, 'checkpoint-1.pth.tar'))  # the rotation ran past it


def _ensemble(*extra):
    """validate with --ensemble-checkpoints and the data flags only (no --model)."""
    return lambda tmp, data: ['--data-dir', data, '--workers', '0', '-b', '100', '--in-chans', '1', '--img-size', '8',
                              '--mean', '0.5', '--std', '0.5', *[e(tmp, data) if callable(e) else e for e in extra]]


def _run_checkpoint(tmp, data):
    """A train.py-like run folder: run2/last.pth.tar (no EMA weights) with the run's args.yaml beside it."""
    run = os.path.join(tmp, 'run2')
    os.makedirs(run, exist_ok=True)
    torch.save(dict(state_dict=_cut_mixmo().state_dict(), arch='cut_mixmo'), os.path.join(run, 'last.pth.tar'))
    with open(os.path.join(run, 'args.yaml'), 'w') as f:
        yaml.safe_dump(dict(model='cut_mixmo', model_kwargs=dict(backbone='wrn28_2', depth=10, widen_factor=1),
                            num_classes=10, in_chans=1), f)


def _folder_without_images(tmp, data):
    os.makedirs(os.path.join(tmp, 'noimages', 'sub'), exist_ok=True)
    with open(os.path.join(tmp, 'noimages', 'sub', 'readme.txt'), 'w') as f:
        f.write('no images here')


def _results_written(tmp):
    assert os.path.getsize(os.path.join(tmp, 'new', 'folder', 'val.csv')) > 0


CASES = [
    # silent wrong results
    Case('train-split typo', 'train', _train('--train-split', 'trian'), ["'trian'", 'train, validation']),
    Case('val-split typo', 'train', _train('--val-split', 'valdation'), ["'valdation'", 'train, validation']),
    Case('no validation folder', 'train',
         lambda tmp, data: _train()(tmp, os.path.join(tmp, 'flat')), ["'validation'", 'folders there: train'],
         setup=_flat_data),
    Case('validate split typo', 'validate', _validate('--split', 'valdation', '--checkpoint', _path('m2.pth.tar')),
         ["'valdation'"], setup=_checkpoint('m2.pth.tar')),
    Case('diverged run', 'train', _train('--lr', '1e4', run='diverged'), ['diverged', 'epoch 0', '--lr']),
    Case('use-ema without EMA weights', 'validate', _validate('--checkpoint', _path('m2.pth.tar'), '--use-ema'),
         ['--use-ema', 'no EMA'], setup=_checkpoint('m2.pth.tar')),
    # numeric flags
    Case('batch-repeat 0', 'train', _train('--batch-repeat', '0'), ['--batch-repeat 0', '>= 1']),
    Case('batch-repeat -2', 'train', _train('--batch-repeat', '-2'), ['--batch-repeat -2', '>= 1']),
    Case('batch size 0', 'train', _train('-b', '0'), ['--batch-size 0', '>= 1']),
    Case('batch larger than the data', 'train', _train('-b', '5000'), ['-b 5000', '1497 samples']),
    Case('grad-accum-steps 0', 'train', _train('--grad-accum-steps', '0'), ['--grad-accum-steps 0', '>= 1']),
    Case('epochs 0', 'train', _train('--epochs', '0'), ['--epochs 0', '>= 1']),
    Case('negative lr', 'train', _train('--lr', '-0.1'), ['--lr -0.1', '> 0']),
    Case('input-repeat 2', 'train', _train('--input-repeat', '2'), ['--input-repeat 2.0', '[0, 1]']),
    Case('epochs list in a config', 'train', _train('--config', _path('bad.yaml')), ["'epochs'", '[1, 2]'],
         setup=_config('epochs: [1, 2]\n')),
    Case('num-members 2.5', 'train', _train('--num-members', '2.5'), ['--num-members', "'2.5'"]),
    Case('num-members 1', 'train', _train('--num-members', '1'), ['--num-members 1', '>= 2']),
    Case('unknown flag', 'train', _train('--lr-typo', '0.1'), ['--lr-typo']),
    Case('refused timm flag', 'train', _train('--aug-splits', '2'), ['--aug-splits 2', '--aa augmix']),
    Case('bad eval metric', 'train', _train('--eval-metric', 'acc'), ["'acc'", 'top1']),
    Case('bad mask kind', 'train', _train('--mix', 'stars'), ["'stars'", 'cutmix']),
    Case('bad YAML', 'train', _train('--config', _path('bad.yaml')), ['bad.yaml'], setup=_config('epochs: [1,\n')),
    Case('CUDA without a GPU', 'train', _train('--device', 'cuda'), ['--device cuda'])
    if not torch.cuda.is_available() else Case('bad device', 'train', _train('--device', 'nodevice'),
                                               ['nodevice']),
    # checkpoints
    Case('resume a text file', 'train', _train('--resume', _path('notes.txt')), ['notes.txt'],
         setup=_write('notes.txt', b'just some notes\n')),
    Case('resume a pickle payload', 'train', _train('--resume', _path('payload.pth.tar')),
         ['payload.pth.tar', 'refused to unpickle'], setup=_payload, check=_payload_not_run),
    Case('resume a 0-byte file', 'train', _train('--resume', _path('empty.pth.tar')),
         ['empty.pth.tar', '0 bytes'], setup=_write('empty.pth.tar', b'')),
    Case('resume a finished run', 'train', _train('--resume', _path('done.pth.tar')),
         ['done.pth.tar', '--epochs'], setup=_checkpoint('done.pth.tar', epoch=0, version=2)),
    Case('initial checkpoint missing', 'train', _train('--initial-checkpoint', _path('missing.pth.tar')),
         ['--initial-checkpoint', 'missing.pth.tar', 'does not exist']),
    Case('initial checkpoint truncated', 'train', _train('--initial-checkpoint', _path('cut.pth.tar')),
         ['cut.pth.tar'], setup=_write('cut.pth.tar', b'PK\x03\x04truncated')),
    Case('initial checkpoint of another member count', 'train',
         _train('--initial-checkpoint', _path('m3.pth.tar')), ['m3.pth.tar'],
         setup=_checkpoint('m3.pth.tar', num_members=3)),
    Case('validate checkpoint of another member count', 'validate', _validate('--checkpoint', _path('m3.pth.tar')),
         ['m3.pth.tar', 'does not fit'], setup=_checkpoint('m3.pth.tar', num_members=3)),
    Case('validate a text checkpoint', 'validate', _validate('--checkpoint', _path('notes.txt')), ['notes.txt'],
         setup=_write('notes.txt', b'just some notes\n')),
    Case('validate random weights', 'validate', _validate(), ['no --checkpoint', 'random weights']),
    # output and data
    Case('output is a file', 'train',
         lambda tmp, data: [*MODEL, *COMMON, '--data-dir', data, '--output', os.path.join(tmp, 'afile')],
         ['afile', 'is a file'], setup=_write('afile', b'x')),
    Case('results file in a missing folder', 'validate',
         _validate('--checkpoint', _path('m2.pth.tar'), '--results-file', _path('new', 'folder', 'val.csv')),
         setup=_checkpoint('m2.pth.tar'), code=0, check=_results_written),
    Case('labels beyond --num-classes', 'train', _train('--num-classes', '5'), ['10 classes', '--num-classes 10']),
    Case('validate labels beyond --num-classes', 'validate',
         _validate('--num-classes', '5', '--checkpoint', _path('m2.pth.tar')), ['10 classes', '--num-classes 10'],
         setup=_checkpoint('m2.pth.tar')),
    Case('stray checkpoint-final in the run folder', 'train',
         _train('--checkpoint-hist', '1', '--epochs', '2', '--resume', _path('out', 'stray', 'last.pth.tar'),
                run='stray'), setup=_stray_final_checkpoint, code=0, check=_stray_kept),
    # evaluation beyond the test split
    Case('ood dir missing', 'validate', _validate('--checkpoint', _path('m2.pth.tar'), '--ood-dir', _path('nowhere')),
         ['--ood-dir', 'nowhere', 'does not exist'], setup=_checkpoint('m2.pth.tar')),
    Case('ood dir without images', 'validate',
         _validate('--checkpoint', _path('m2.pth.tar'), '--ood-dir', _path('noimages')),
         ['--ood-dir', 'noimages', 'holds no images'], setup=_folder_without_images),
    Case('unknown corruption', 'validate', _validate('--checkpoint', _path('m2.pth.tar'), '--corruptions', 'rain'),
         ["--corruptions 'rain'", 'gaussian_noise']),
    Case('corruption severity 6', 'validate',
         _validate('--corruptions', 'fog', '--corruption-severities', '6'), ['--corruption-severities', "6"]),
    Case('repeated corruption', 'validate', _validate('--corruptions', 'fog', 'fog'), ['--corruptions', 'once']),
    Case('corruption images without corruptions', 'validate', _validate('--corruption-images', '5'),
         ['--corruption-images', 'needs --corruptions']),
    Case('corruption images 0', 'validate', _validate('--corruptions', '--corruption-images', '0'),
         ['--corruption-images 0', '>= 1']),
    Case('corruptions on 8 px images', 'validate',
         _validate('--checkpoint', _path('m2.pth.tar'), '--corruptions', 'fog'), ['--corruptions', '32 px'],
         setup=_checkpoint('m2.pth.tar')),
    Case('reliability diagram not a png', 'validate', _validate('--reliability-diagram', _path('diagram.pdf')),
         ['--reliability-diagram', 'diagram.pdf', '.png']),
    Case('reliability diagram in an unwritable folder', 'validate',
         _validate('--checkpoint', _path('m2.pth.tar'), '--reliability-diagram', _path('afile', 'diagram.png')),
         ['--reliability-diagram', 'diagram.png', 'cannot be written'], setup=_write('afile', b'x')),
    Case('ensemble with --checkpoint', 'validate',
         _ensemble('--ensemble-checkpoints', _path('run2', 'last.pth.tar'), '--checkpoint', _path('m2.pth.tar')),
         ['--checkpoint', '--ensemble-checkpoints'], setup=_run_checkpoint),
    Case('ensemble with --model', 'validate', _validate('--ensemble-checkpoints', _path('run2', 'last.pth.tar')),
         ['--model', '--ensemble-checkpoints'], setup=_run_checkpoint),
    Case('ensemble checkpoint missing', 'validate', _ensemble('--ensemble-checkpoints', _path('missing.pth.tar')),
         ['--ensemble-checkpoints', 'missing.pth.tar', 'does not exist']),
    Case('ensemble of a text file', 'validate', _ensemble('--ensemble-checkpoints', _path('notes.txt')),
         ['--ensemble-checkpoints', 'notes.txt'], setup=_write('notes.txt', b'just some notes\n')),
    Case('ensemble use-ema without EMA weights', 'validate',
         _ensemble('--ensemble-checkpoints', _path('run2', 'last.pth.tar'), '--use-ema'), ['--use-ema', 'no EMA'],
         setup=_run_checkpoint),
    Case('ensemble on 3-channel data', 'validate',
         lambda tmp, data: ['--data-dir', data, '--workers', '0', '--img-size', '8',
                            '--ensemble-checkpoints', os.path.join(tmp, 'run2', 'last.pth.tar')],
         ['1 input channels', '--in-chans 1'], setup=_run_checkpoint),
    Case('validate mean of two values for one channel', 'validate',
         _validate('--mean', '0.5', '0.5', '--checkpoint', _path('m2.pth.tar')), ['--mean 0.5 0.5', '2 values'],
         setup=_checkpoint('m2.pth.tar')),
    Case('extend-lr without resume', 'train', _train('--extend-lr', '0.01'), ['--extend-lr 0.01', '--resume']),
    Case('missing data dir', 'train', lambda tmp, data: _train()(tmp, os.path.join(tmp, 'nowhere')),
         ['nowhere', 'does not exist']),
    Case('unknown model', 'train', _train(model=['--model', 'no_such_model']), ["'no_such_model'"]),
]


def snapshot(root):
    """{relative path: sha1} of every file under ``root``."""
    files = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, 'rb') as f:
                files[os.path.relpath(path, root)] = hashlib.sha1(f.read()).hexdigest()
    return files


def existing_run(tmp):
    """A previous run's folder that no misuse may touch."""
    run = os.path.join(tmp, 'out', 'existing')
    os.makedirs(run, exist_ok=True)
    torch.save({'epoch': 3, 'state_dict': {}}, os.path.join(run, 'last.pth.tar'))
    with open(os.path.join(run, 'summary.csv'), 'w') as f:
        f.write('epoch,train_loss\n0,1.0\n')


@pytest.mark.parametrize('case', CASES, ids=[case.name for case in CASES])
def test_misuse_is_one_clear_line_and_loses_nothing(case, digits_dir, tmp_path, capsys):
    tmp, data = str(tmp_path), str(digits_dir)
    existing_run(tmp)
    if case.setup is not None:
        case.setup(tmp, data)
    before = snapshot(os.path.join(tmp, 'out'))
    argv = case.argv(tmp, data)
    code = (train if case.script == 'train' else validate).main(argv)
    captured = capsys.readouterr()
    assert code == case.code, captured.err
    after = snapshot(os.path.join(tmp, 'out'))
    kept = before if case.code else {k: v for k, v in before.items() if k.startswith('existing')}
    assert {k: v for k, v in after.items() if k in kept} == kept  # nothing that existed was changed
    if case.code:
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith('error: '), captured.err
        for fragment in case.fragments:
            assert fragment in lines[0], (fragment, lines[0])
        new = set(after) - set(before)
        assert not any(name.endswith(('.pth.tar', '.tmp')) for name in new), new  # no checkpoint was written
    if case.check is not None:
        case.check(tmp)


def test_disk_full_leaves_no_tmp_and_no_duplicated_summary_row(digits_dir, tmp_path, capsys, monkeypatch):
    argv = _train('--epochs', '2', '--decay-milestones', '1', run='full')(str(tmp_path), str(digits_dir))
    real_save = torch.save
    calls = []

    def save_until_disk_full(obj, path, *args, **kwargs):
        calls.append(path)
        if isinstance(obj, dict) and obj.get('epoch') == 1:
            with open(path, 'wb') as f:
                f.write(b'partial')
            raise OSError(28, 'No space left on device')
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, 'save', save_until_disk_full)
    assert train.main(argv) == 2
    line = capsys.readouterr().err.strip()
    assert 'No space left on device' in line and '--resume' in line
    run = tmp_path / 'out' / 'full'
    assert not [name for name in os.listdir(run) if name.endswith('.tmp')]
    monkeypatch.setattr(torch, 'save', real_save)
    assert train.main([*argv, '--resume', str(run / 'last.pth.tar')]) == 0
    with open(run / 'summary.csv') as f:
        epochs = [line.split(',')[0] for line in f.read().splitlines()[1:]]
    assert epochs == ['0', '1']


def test_yaml_config_of_a_run_is_reusable(digits_dir, tmp_path):
    # args.yaml holds only flag values: it loads back as a config of both scripts
    assert train.main(_train(run='ok')(str(tmp_path), str(digits_dir))) == 0
    config = tmp_path / 'out' / 'ok' / 'args.yaml'
    assert yaml.safe_load(open(config))['model'] == 'cut_mixmo'
    assert validate.main(['--config', str(config), '--checkpoint', str(tmp_path / 'out' / 'ok' / 'last.pth.tar'),
                          '--workers', '0']) == 0


# ====================================================================================================================
# Labels, run folders, resumed runs, combinations that cannot run, the analysis / export commands, faults
# ====================================================================================================================

TINY = ['--model-kwargs', 'backbone=wrn28_2', 'depth=10', 'widen_factor=1']
DIGITS = ['--num-classes', '10', '--in-chans', '1', '--img-size', '8', '--mean', '0.5', '--std', '0.5']
SMALL = ['--workers', '0', '--sched', 'cosine', '--warmup-epochs', '0', '--log-interval', '1000', '--seed', '7',
         '-b', '32', '--crop-pad', '1', '--lr', '0.05']
CLASSES = [str(i) for i in range(10)]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_argv(model, data, out, name, *extra):
    return ['--model', model, *TINY, *DIGITS, *SMALL, '--data-dir', str(data), '--output', str(out),
            '--experiment', name, *[str(e) for e in extra]]


@pytest.fixture(scope='module')
def runs(tmp_path_factory, digits_dir):
    """Two finished 2-epoch runs on the digits (cosine schedule): Cut-MixMo ``cut`` and MixShare ``share``."""
    out = tmp_path_factory.mktemp('runs')
    for name, model in (('cut', 'cut_mixmo'), ('share', 'mixshare')):
        assert train.main(_run_argv(model, digits_dir, out, name, '--epochs', '2')) == 0
    return out


@pytest.fixture
def out(runs, tmp_path):
    """A private copy of the finished runs (each test may resume or damage them)."""
    copy = tmp_path / 'out'
    shutil.copytree(runs, copy)
    return copy


def _error_line(capsys, *fragments):
    err = capsys.readouterr().err.strip()
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def _digit_split(root, split, source, classes=CLASSES, rename=None):
    """``root/split/<class>``: links to ``source/split/<class>`` for a subset of the classes, optionally renamed."""
    for name in classes:
        link = root / split / (rename or {}).get(name, name)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(source / split / name, target_is_directory=True)


def _accuracy_by_folder_name(checkpoint, split_dir):
    """Top-1 (%) of a run's Cut-MixMo weights on ``split_dir/<class>/*.png``, the label being the folder's name."""
    model = timm.create_model('cut_mixmo', backbone='wrn28_2', depth=10, widen_factor=1, num_classes=10, in_chans=1)
    model.load_state_dict(torch.load(checkpoint, map_location='cpu', weights_only=True)['state_dict'])
    model.eval()
    correct = total = 0
    for folder in sorted(split_dir.iterdir()):
        images = torch.stack([(to_tensor(Image.open(path).convert('L')) - 0.5) / 0.5
                              for path in sorted(folder.glob('*.png'))])
        with torch.no_grad():
            correct += int((model(images).argmax(-1) == CLASSES.index(folder.name)).sum())
        total += len(images)
    return 100.0 * correct / total


def _summary(run):
    with open(run / 'summary.csv') as f:
        return list(csv.DictReader(f))


# ---- classes are named, not counted ---------------------------------------------------------------------------------

def test_validate_maps_a_split_without_a_class_by_name(runs, small_digits_dir, tmp_path):
    data = tmp_path / 'data'
    _digit_split(data, 'validation', small_digits_dir, CLASSES[1:])  # no '0' folder: '1' must stay label 1
    run = runs / 'cut'
    results = tmp_path / 'val.json'
    assert validate.main(['--config', str(run / 'args.yaml'), '--checkpoint', str(run / 'last.pth.tar'),
                          '--data-dir', str(data), '--workers', '0', '--results-file', str(results)]) == 0
    top1 = json.loads(results.read_text())['top1']
    assert top1 == pytest.approx(_accuracy_by_folder_name(run / 'last.pth.tar', data / 'validation'))


def test_validate_refuses_a_split_with_a_renamed_class_folder(runs, small_digits_dir, tmp_path, capsys):
    data = tmp_path / 'data'
    _digit_split(data, 'validation', small_digits_dir, rename={'9': 'nine'})
    run = runs / 'cut'
    code = validate.main(['--config', str(run / 'args.yaml'), '--checkpoint', str(run / 'last.pth.tar'),
                          '--data-dir', str(data), '--workers', '0', '--results-file', str(tmp_path / 'val.json')])
    assert code == 2
    _error_line(capsys, "'nine'", "'9'")
    assert not (tmp_path / 'val.json').exists()


def test_train_evaluates_a_validation_split_without_a_class_by_name(small_digits_dir, tmp_path):
    data = tmp_path / 'data'
    (data / 'train').parent.mkdir(parents=True, exist_ok=True)
    (data / 'train').symlink_to(small_digits_dir / 'train', target_is_directory=True)
    _digit_split(data, 'validation', small_digits_dir, CLASSES[1:])
    assert train.main(_run_argv('cut_mixmo', data, tmp_path / 'out', 'partial', '--epochs', '1')) == 0
    run = tmp_path / 'out' / 'partial'
    expected = _accuracy_by_folder_name(run / 'last.pth.tar', data / 'validation')
    assert float(_summary(run)[0]['eval_top1']) == pytest.approx(expected)
    assert torch.load(run / 'model_best.pth.tar', weights_only=True)['metric'] == pytest.approx(expected)


def test_run_records_its_class_names_in_args_and_every_checkpoint(runs):
    run = runs / 'cut'
    assert yaml.safe_load(open(run / 'args.yaml'))['class_names'] == CLASSES
    for name in ('last.pth.tar', 'model_best.pth.tar', 'checkpoint-0.pth.tar', 'checkpoint-1.pth.tar'):
        assert torch.load(run / name, weights_only=True)['class_names'] == CLASSES, name


def test_export_writes_the_label_names(runs, tmp_path):
    run = runs / 'cut'
    folder = tmp_path / 'export'
    assert hub.main(['export', '--checkpoint', str(run / 'last.pth.tar'), '--args', str(run / 'args.yaml'),
                     '--out', str(folder)]) == 0
    assert json.loads((folder / 'config.json').read_text())['label_names'] == CLASSES
    model = timm.create_model(f'local-dir:{folder}', pretrained=True)
    assert list(model.pretrained_cfg['label_names']) == CLASSES


def test_partial_class_map_is_refused(small_digits_dir, tmp_path, capsys):
    class_map = tmp_path / 'classes.txt'
    class_map.write_text('\n'.join(CLASSES[:9]) + '\n')
    code = train.main(_run_argv('cut_mixmo', small_digits_dir, tmp_path / 'out', 'run', '--epochs', '1',
                                '--class-map', class_map))
    assert code == 2
    _error_line(capsys, '--class-map', "'9'", '--class-map-partial')
    assert not (tmp_path / 'out' / 'run').exists()


def test_val_split_typo_names_the_empty_value(small_digits_dir, tmp_path, capsys):
    code = train.main(_run_argv('cut_mixmo', small_digits_dir, tmp_path / 'out', 'run', '--val-split', 'valdation'))
    assert code == 2
    _error_line(capsys, "'valdation'", "--val-split ''")


# ---- a run folder belongs to one run; no output is an input ---------------------------------------------------------

def test_resume_into_another_existing_run_is_refused(out, small_digits_dir, capsys):
    before = snapshot(out / 'share')
    code = train.main(_run_argv('cut_mixmo', small_digits_dir, out, 'share', '--epochs', '2',
                                '--resume', out / 'cut' / 'checkpoint-0.pth.tar'))
    assert code == 2
    _error_line(capsys, '--resume', 'share')
    assert snapshot(out / 'share') == before


def _validate_argv(run, *extra):
    return ['--config', str(run / 'args.yaml'), '--workers', '0', *[str(e) for e in extra]]


def test_validate_checkpoint_that_is_a_run_folder_validates_each_checkpoint(runs, tmp_path, capsys):
    """timm's --checkpoint DIR: one row per checkpoint of the folder; a folder without any names the way out."""
    run = runs / 'cut'
    assert validate.main(_validate_argv(run, '--checkpoint', run)) == 0
    rows = json.loads(capsys.readouterr().out.split('--result\n', 1)[1])
    assert sorted(row['checkpoint'] for row in rows) == sorted(str(path) for path in run.glob('*.pth.tar'))
    assert validate.main(_validate_argv(run, '--checkpoint', tmp_path)) == 2
    _error_line(capsys, 'holding no checkpoint', 'local-dir:FOLDER')


@pytest.mark.parametrize('collision', ['results-checkpoint', 'results-config', 'diagram-results',
                                       'diagram-checkpoint'])
def test_validate_output_that_is_an_input_is_refused(out, collision, capsys):
    run = out / 'cut'
    checkpoint, config = run / 'last.pth.tar', run / 'args.yaml'
    if collision == 'diagram-checkpoint':
        shutil.copy(checkpoint, run / 'weights.png')
        checkpoint = run / 'weights.png'
    extra = dict(
        results_checkpoint=['--results-file', checkpoint],
        results_config=['--results-file', config],
        diagram_results=['--results-file', run / 'val.png', '--reliability-diagram', run / 'val.png'],
        diagram_checkpoint=['--reliability-diagram', checkpoint])[collision.replace('-', '_')]
    before = snapshot(out)
    assert validate.main(_validate_argv(run, '--checkpoint', checkpoint, *extra)) == 2
    _error_line(capsys, str(extra[1]))
    assert snapshot(out) == before


def test_two_runs_started_in_the_same_second_get_two_folders(small_digits_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(run_folder.time, 'strftime', lambda *args: '20250101-000000')  # the same instant for both
    argv = _run_argv('cut_mixmo', small_digits_dir, tmp_path / 'out', '', '--epochs', '1')
    argv.remove('--experiment')
    argv.remove('')
    assert train.main(argv) == 0 and train.main([*argv, '--seed', '8']) == 0
    folders = sorted(os.listdir(tmp_path / 'out'))
    assert len(folders) == 2, folders
    seeds = {yaml.safe_load(open(tmp_path / 'out' / folder / 'args.yaml'))['seed'] for folder in folders}
    assert seeds == {7, 8} and all(len(_summary(tmp_path / 'out' / folder)) == 1 for folder in folders)


# ---- resume is the same run, or it says so ---------------------------------------------------------------------------

@pytest.mark.parametrize('flags, fragments', [
    (['--lr', '0.2'], ['--lr 0.2', '0.05']),
    (['--opt', 'adamw'], ['--opt', 'adamw', 'sgd']),
    (['--sched', 'step'], ['--sched', 'step', 'cosine']),
    (['-b', '16'], ['--batch-size 16', '32']),
    (['--num-members', '3'], ['--num-members 3']),
], ids=['lr', 'opt', 'sched', 'batch', 'members'])
def test_resume_with_a_flag_that_changes_the_run_is_refused(out, small_digits_dir, flags, fragments, capsys):
    code = train.main(_run_argv('cut_mixmo', small_digits_dir, out, 'fork', '--epochs', '2',
                                '--resume', out / 'cut' / 'checkpoint-0.pth.tar', *flags))
    assert code == 2
    _error_line(capsys, *fragments)
    assert not (out / 'fork').exists()


@pytest.mark.parametrize('run, model', [('share', 'cut_mixmo'), ('cut', 'linear_mixmo')])
def test_resume_into_another_kind_of_model_is_refused(out, small_digits_dir, run, model, capsys):
    kind = 'mixshare' if run == 'share' else 'cut_mixmo'
    code = train.main(_run_argv(model, small_digits_dir, out, 'fork', '--epochs', '2',
                                '--resume', out / run / 'checkpoint-0.pth.tar'))
    assert code == 2
    _error_line(capsys, repr(kind), repr(model))
    assert not (out / 'fork').exists()


def test_resume_with_more_epochs_needs_a_schedule_for_them(out, small_digits_dir, capsys):
    before = snapshot(out / 'cut')
    code = train.main(_run_argv('cut_mixmo', small_digits_dir, out, 'cut', '--epochs', '3',
                                '--resume', out / 'cut' / 'last.pth.tar'))
    assert code == 2
    _error_line(capsys, '--epochs 3', '--extend-lr')
    assert snapshot(out / 'cut') == before


def test_resume_extended_with_a_schedule_trains_at_that_schedule(out, small_digits_dir, capsys):
    rows_before = _summary(out / 'cut')
    code = train.main(_run_argv('cut_mixmo', small_digits_dir, out, 'cut', '--epochs', '4', '--extend-lr', '0.02',
                                '--resume', out / 'cut' / 'last.pth.tar'))
    assert code == 0
    printed = capsys.readouterr().out
    rows = _summary(out / 'cut')
    assert rows[:2] == rows_before and [row['epoch'] for row in rows] == ['0', '1', '2', '3']
    # a fresh cosine from 0.02 over the two added epochs: 0.02 during epoch 2, 0.01 during epoch 3, then 0
    assert 'Train: 2 [' in printed and 'lr 2.000e-02' in printed.split('Train: 2 [')[1].splitlines()[0]
    assert float(rows[2]['lr']) == pytest.approx(0.02) and float(rows[3]['lr']) == pytest.approx(0.01)  # trained at
    recorded = yaml.safe_load(open(out / 'cut' / 'args.yaml'))
    assert recorded['epochs'] == 4 and recorded['extend_lr'] == 0.02


def test_extended_run_resumes_exactly_inside_its_extension(out, small_digits_dir, monkeypatch):
    shutil.copytree(out / 'cut', out / 'cut2')

    def argv(name):
        return _run_argv('cut_mixmo', small_digits_dir, out, name, '--epochs', '4', '--extend-lr', '0.02', '--resume',
                         out / name / 'last.pth.tar')
    assert train.main(argv('cut')) == 0  # the whole extension
    real_write_summary = checkpoint_saver.write_summary

    def stop_after_epoch_2(path, epoch, row):
        real_write_summary(path, epoch, row)
        if epoch == 2:
            raise KeyboardInterrupt  # a Ctrl-C inside the extension, after the epoch-2 checkpoint
    monkeypatch.setattr(run_loop, 'write_summary', stop_after_epoch_2)
    assert train.main(argv('cut2')) == 130
    monkeypatch.setattr(run_loop, 'write_summary', real_write_summary)
    assert torch.load(out / 'cut2' / 'last.pth.tar', weights_only=True)['epoch'] == 2
    assert train.main(argv('cut2')) == 0  # resumed inside the extension: its schedule, not a new one
    whole = torch.load(out / 'cut' / 'last.pth.tar', weights_only=True)
    resumed = torch.load(out / 'cut2' / 'last.pth.tar', weights_only=True)
    assert all(torch.equal(resumed['state_dict'][key], value) for key, value in whole['state_dict'].items())
    assert resumed['scheduler'] == whole['scheduler'] and resumed['schedule_segment'] == dict(start=2, lr=0.02)
    assert _summary(out / 'cut2') == _summary(out / 'cut')


def test_validate_checkpoint_of_another_kind_of_model_is_refused(runs, capsys):
    run = runs / 'cut'
    code = validate.main(_validate_argv(run, '--checkpoint', run / 'last.pth.tar', '--model', 'linear_mixmo'))
    assert code == 2
    _error_line(capsys, "'cut_mixmo'", "'linear_mixmo'")


# ---- combinations that cannot run are refused before the run folder exists -----------------------------------------

MIXVIT = ['--model', 'mixvit', '--model-kwargs', 'backbone=deit_tiny_patch16_224', 'patch_size=4', 'depth=3',
          'embed_dim=48', 'num_heads=3']


@pytest.mark.parametrize('argv, fragments', [
    (['--model', 'mixshare', *TINY, '--mix-prob', '0.5'], ['--mix-prob', 'binary']),
    (['--model', 'mixshare', *TINY, '--mix', 'linear'], ['--mix', 'linear']),
    ([*MIXVIT, 'img_size=16'], ['--img-size 8', '16']),
    ([*MIXVIT, 'img_size=18', '--img-size', '18'], ['18', 'patch']),
    (['--model', 'cut_mixmo', *TINY, '--mean', '0.5', '0.5'], ['--mean', '2 values', '1 input channel']),
    (['--model', 'cut_mixmo', *TINY, '--std', '0.5', '0.5', '0.5', '0.5'], ['--std', '4 values']),
], ids=['mixshare-mix-prob', 'mixshare-linear', 'mixvit-size', 'mixvit-patch', 'mean-count', 'std-count'])
def test_combination_that_cannot_run_is_refused_before_the_run_folder(small_digits_dir, tmp_path, argv, fragments,
                                                                       capsys):
    full = [*DIGITS, *SMALL, '--epochs', '1', *argv, '--data-dir', str(small_digits_dir), '--output',
            str(tmp_path / 'out'), '--experiment', 'run']
    assert train.main(full) == 2
    _error_line(capsys, *fragments)
    assert not (tmp_path / 'out').exists()


def test_warmup_as_long_as_the_run_is_refused(small_digits_dir, tmp_path, capsys):
    argv = _run_argv('cut_mixmo', small_digits_dir, tmp_path / 'out', 'run', '--epochs', '1', '--warmup-epochs', '5')
    assert train.main(argv) == 2
    _error_line(capsys, '--warmup-epochs 5', '--epochs 1')
    assert not (tmp_path / 'out').exists()


def _unrelated_weights(path):
    torch.save(timm.create_model('test_resnet', num_classes=10).state_dict(), path)


@pytest.mark.parametrize('weights, fragments', [('unrelated', ['--pretrained-path', 'unrelated.pth']),
                                                ('mimo', ['--pretrained-path', '--initial-checkpoint'])])
def test_pretrained_path_without_a_matching_weight_is_refused(runs, small_digits_dir, tmp_path, weights, fragments,
                                                              capsys):
    path = tmp_path / 'unrelated.pth'
    if weights == 'unrelated':
        _unrelated_weights(path)
    else:
        path = runs / 'cut' / 'last.pth.tar'
    argv = _run_argv('cut_mixmo', small_digits_dir, tmp_path / 'out', 'run', '--epochs', '1', '--pretrained-path', path)
    assert train.main(argv) == 2
    _error_line(capsys, *fragments)
    assert not (tmp_path / 'out').exists()


def _sized_run(tmp, name, img_size, class_names=CLASSES):
    run = os.path.join(tmp, name)
    os.makedirs(run)
    torch.save(dict(state_dict=_cut_mixmo().state_dict(), arch='cut_mixmo', class_names=class_names),
               os.path.join(run, 'last.pth.tar'))
    with open(os.path.join(run, 'args.yaml'), 'w') as f:
        yaml.safe_dump(dict(model='cut_mixmo', model_kwargs=dict(backbone='wrn28_2', depth=10, widen_factor=1),
                            num_classes=10, in_chans=1, img_size=img_size, class_names=class_names), f)
    return os.path.join(run, 'last.pth.tar')


def test_ensemble_of_networks_trained_at_two_sizes_is_refused(small_digits_dir, tmp_path, capsys):
    paths = [_sized_run(tmp_path, 'r16', 16), _sized_run(tmp_path, 'r32', 32)]
    code = validate.main(['--data-dir', str(small_digits_dir), '--workers', '0', '--in-chans', '1', '--mean', '0.5',
                          '--std', '0.5', '--ensemble-checkpoints', *paths])
    assert code == 2
    _error_line(capsys, '16', '32')


# ---- timm-mimo-analysis meets the standard of train / validate -----------------------------------------------------

@pytest.mark.parametrize('case', ['use-ema', 'text', 'empty', 'model-kwargs', 'layers', 'wrong-pair'])
def test_analysis_misuse_is_one_line_and_writes_nothing(runs, small_digits_dir, tmp_path, case, capsys):
    run = runs / 'cut'
    (tmp_path / 'notes.txt').write_text('just some notes\n')
    (tmp_path / 'empty.pth.tar').write_bytes(b'')
    base = ['--config', str(run / 'args.yaml'), '--checkpoint', str(run / 'last.pth.tar')]
    argv, fragments = dict(
        use_ema=([*base, '--use-ema'], ['--use-ema', 'no EMA']),
        text=(['--config', str(run / 'args.yaml'), '--checkpoint', str(tmp_path / 'notes.txt')], ['notes.txt']),
        empty=(['--config', str(run / 'args.yaml'), '--checkpoint', str(tmp_path / 'empty.pth.tar')],
               ['empty.pth.tar', '0 bytes']),
        model_kwargs=([*base, '--model-kwargs', 'widen_factor=wide'], ['--model-kwargs', 'wide']),
        layers=([*base, '--data-dir', str(small_digits_dir), '--num-images', '8', '--layers', 'bogus'],
                ["--layers 'bogus'"]),
        wrong_pair=(['--model', 'mixshare_wrn28_2', '--checkpoint', str(run / 'last.pth.tar')],
                    [str(run / 'last.pth.tar')]),
    )[case.replace('-', '_')]
    assert analysis.main([*argv, '--out', str(tmp_path / 'analysis')]) == 2
    _error_line(capsys, *fragments)
    assert not (tmp_path / 'analysis').exists()


# ---- faults: disk full, SIGINT, SIGTERM ------------------------------------------------------------------------------

def _fail_replace_once(monkeypatch, suffix, calls_before=0):
    """``os.replace`` onto a path ending in ``suffix`` fails like a full disk (after ``calls_before`` successes)."""
    real_replace = os.replace
    seen = []

    def replace(src, dst, *args, **kwargs):
        if str(dst).endswith(suffix):
            seen.append(dst)
            if len(seen) == calls_before + 1:
                raise OSError(28, 'No space left on device')
        return real_replace(src, dst, *args, **kwargs)
    monkeypatch.setattr(os, 'replace', replace)


@pytest.mark.parametrize('suffix, calls_before', [('checkpoint-1.pth.tar', 0), ('summary.csv', 1)],
                         ids=['epoch-checkpoint', 'summary'])
def test_disk_full_at_an_epoch_end_resumes_with_every_summary_row(small_digits_dir, tmp_path, monkeypatch, capsys,
                                                                  suffix, calls_before):
    argv = _run_argv('cut_mixmo', small_digits_dir, tmp_path / 'out', 'full', '--epochs', '3')
    run = tmp_path / 'out' / 'full'
    with monkeypatch.context() as patch:
        _fail_replace_once(patch, suffix, calls_before)  # the disk is full at the end of epoch 1
        assert train.main(argv) == 2
    _error_line(capsys, 'No space left on device', '--resume')
    assert not [name for name in os.listdir(run) if name.endswith('.tmp')]
    assert train.main([*argv, '--resume', str(run / 'last.pth.tar')]) == 0
    assert [row['epoch'] for row in _summary(run)] == ['0', '1', '2']
    assert torch.load(run / 'checkpoint-1.pth.tar', weights_only=True)['epoch'] == 1


def test_disk_full_writing_the_results_file_is_one_line(runs, tmp_path, monkeypatch, capsys):
    run = runs / 'cut'
    _fail_replace_once(monkeypatch, 'val.csv')
    assert validate.main(_validate_argv(run, '--checkpoint', run / 'last.pth.tar', '--results-file',
                                        tmp_path / 'val.csv')) == 2
    _error_line(capsys, 'val.csv', 'No space left on device')
    assert os.listdir(tmp_path) == []


def test_sigint_in_validate_is_one_line_and_writes_nothing(runs, tmp_path, monkeypatch, capsys):
    run = runs / 'cut'

    def interrupted(*args, **kwargs):
        signal.raise_signal(signal.SIGINT)  # Ctrl-C while the split is evaluated
    monkeypatch.setattr(validation, 'collect_logged', interrupted)
    code = validate.main(_validate_argv(run, '--checkpoint', run / 'last.pth.tar', '--results-file',
                                        tmp_path / 'val.csv'))
    assert code == 130
    _error_line(capsys, 'interrupted')
    assert os.listdir(tmp_path) == []


SIGNAL_SCRIPT = '''
import os, signal, sys
from timm_mimo.cli import run_loop, train
how, argv = sys.argv[1], sys.argv[2:]
if how == 'sigint-epoch-boundary':
    # Ctrl-C while a destructor runs at the end of the first epoch (as when a data loader iterator shuts its workers
    # down): Python cannot raise there, it prints "Exception ignored" and goes on
    run_epoch = run_loop.Run.train_one_epoch
    class Finalizer:
        def __del__(self):
            signal.raise_signal(signal.SIGINT)
    def epoch_then_ctrl_c(self, epoch, loader):
        metrics = run_epoch(self, epoch, loader)
        if epoch == 0:
            finalizer = Finalizer()
            del finalizer
        return metrics
    run_loop.Run.train_one_epoch = epoch_then_ctrl_c
else:  # SIGTERM (a job scheduler) in the middle of the second epoch
    run_epoch = run_loop.Run.train_one_epoch
    def terminated_in_epoch_1(self, epoch, loader):
        if epoch == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return run_epoch(self, epoch, loader)
    run_loop.Run.train_one_epoch = terminated_in_epoch_1
sys.exit(train.main(argv))
'''


@pytest.mark.parametrize('how, code', [('sigint-epoch-boundary', 130), ('sigterm', 143)])
def test_signal_stops_the_run_with_one_line_and_a_resumable_state(small_digits_dir, tmp_path, how, code):
    argv = _run_argv('cut_mixmo', small_digits_dir, tmp_path / 'out', 'sig', '--epochs', '3', '--workers', '1')
    proc = subprocess.run([sys.executable, '-c', SIGNAL_SCRIPT, how, *argv], capture_output=True, text=True,
                          cwd=REPO, timeout=300, env=dict(os.environ, OMP_NUM_THREADS='1'))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code and len(lines) == 1 and lines[0].startswith('error: '), proc.stderr
    assert '--resume' in lines[0]
    run = tmp_path / 'out' / 'sig'
    assert not [name for name in os.listdir(run) if name.endswith('.tmp')]
    assert torch.load(run / 'last.pth.tar', weights_only=True)['epoch'] == 0
    assert [row['epoch'] for row in _summary(run)] == ['0']
    assert train.main([*argv, '--workers', '0', '--resume', str(run / 'last.pth.tar')]) == 0
    assert [row['epoch'] for row in _summary(run)] == ['0', '1', '2']


@pytest.mark.parametrize('signum, code', [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=['ctrl-c', 'timeout'])
def test_signal_to_the_process_group_with_workers_is_one_line(small_digits_dir, tmp_path, signum, code):
    """Ctrl-C, ``timeout`` and ``kill -- -PGID`` signal the loader workers too: still one line, a resumable state."""
    import time
    argv = _run_argv('cut_mixmo', small_digits_dir, tmp_path / 'out', 'group', '--epochs', '200', '--workers', '2')
    run = tmp_path / 'out' / 'group'
    proc = subprocess.Popen([sys.executable, '-m', 'timm_mimo.cli.train', *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, cwd=REPO, start_new_session=True,
                            env=dict(os.environ, OMP_NUM_THREADS='1'))
    try:
        deadline = time.monotonic() + 240
        while not (run / 'last.pth.tar').exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)  # inside the second epoch, workers busy
        os.killpg(proc.pid, signum)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    lines = stderr.strip().splitlines()
    assert proc.returncode == code and len(lines) == 1 and lines[0].startswith('error: interrupted'), stderr
    assert not [name for name in os.listdir(run) if name.endswith('.tmp')]
    last_epoch = torch.load(run / 'last.pth.tar', weights_only=True)['epoch']
    assert [row['epoch'] for row in _summary(run)] == [str(e) for e in range(last_epoch + 1)]


# ---- more cases on the paths above -----------------------------------------------------------------------------------

def test_class_map_naming_every_class_orders_the_labels_by_it(small_digits_dir, tmp_path):
    from timm_mimo.data import dataset_class_names, open_dataset
    class_map = tmp_path / 'classes.txt'
    class_map.write_text('\n'.join(reversed(CLASSES)) + '\n')  # label 0 is folder '9'
    dataset = open_dataset('', str(small_digits_dir), 'validation', class_map=str(class_map))
    assert dataset_class_names(dataset) == list(reversed(CLASSES))
    for index in (0, len(dataset) - 1):
        folder = os.path.basename(os.path.dirname(dataset.reader.samples[index][0]))
        assert dataset[index][1] == 9 - int(folder)


def test_partial_class_map_when_asked_trains_and_records_the_mapped_classes(small_digits_dir, tmp_path):
    class_map = tmp_path / 'classes.txt'
    names = list(reversed(CLASSES[:9]))  # no '9'; label 0 is '8'
    class_map.write_text('\n'.join(names) + '\n')
    argv = _run_argv('cut_mixmo', small_digits_dir, tmp_path / 'out', 'run', '--epochs', '1', '--class-map', class_map,
                     '--class-map-partial', '--num-classes', '9')  # a head of the 9 mapped classes
    assert train.main(argv) == 0
    run = tmp_path / 'out' / 'run'
    assert yaml.safe_load(open(run / 'args.yaml'))['class_names'] == names
    assert torch.load(run / 'last.pth.tar', weights_only=True)['class_names'] == names


def test_training_split_with_a_class_outside_class_names_is_refused(small_digits_dir, tmp_path, capsys):
    argv = _run_argv('cut_mixmo', small_digits_dir, tmp_path / 'out', 'run', '--epochs', '1',
                     '--class-names', *CLASSES[:9])
    assert train.main(argv) == 2
    _error_line(capsys, "'9'", 'training split')
    assert not (tmp_path / 'out').exists()


def test_class_names_label_a_checkpoint_that_records_none(runs, small_digits_dir, tmp_path, capsys):
    data = tmp_path / 'data'
    _digit_split(data, 'validation', small_digits_dir, CLASSES[1:])
    state = torch.load(runs / 'cut' / 'last.pth.tar', weights_only=True)
    del state['class_names']  # a checkpoint of an older version
    torch.save(state, tmp_path / 'legacy.pth.tar')
    config = yaml.safe_load(open(runs / 'cut' / 'args.yaml'))
    del config['class_names']
    (tmp_path / 'legacy.yaml').write_text(yaml.safe_dump(config))
    argv = ['--config', str(tmp_path / 'legacy.yaml'), '--checkpoint', str(tmp_path / 'legacy.pth.tar'),
            '--data-dir', str(data), '--workers', '0', '--class-names', *CLASSES]
    assert validate.main([*argv, '--results-file', str(tmp_path / 'val.json')]) == 0
    top1 = json.loads((tmp_path / 'val.json').read_text())['top1']
    assert top1 == pytest.approx(_accuracy_by_folder_name(runs / 'cut' / 'last.pth.tar', data / 'validation'))
    # names given against the ones a checkpoint records are refused
    run = runs / 'cut'
    assert validate.main(['--config', str(run / 'args.yaml'), '--checkpoint', str(run / 'last.pth.tar'),
                          '--data-dir', str(data), '--workers', '0', '--class-names', *reversed(CLASSES)]) == 2
    _error_line(capsys, '--class-names', 'trained on')


def test_ensemble_of_networks_trained_on_other_classes_is_refused(small_digits_dir, tmp_path, capsys):
    paths = [_sized_run(tmp_path, 'a', 8), _sized_run(tmp_path, 'b', 8, class_names=list(reversed(CLASSES)))]
    code = validate.main(['--data-dir', str(small_digits_dir), '--workers', '0', '--in-chans', '1', '--img-size', '8',
                          '--mean', '0.5', '--std', '0.5', '--ensemble-checkpoints', *paths])
    assert code == 2
    _error_line(capsys, 'different classes')


def test_resume_of_an_older_checkpoint_in_its_own_folder_is_refused(out, small_digits_dir, capsys):
    before = snapshot(out / 'cut')
    code = train.main(_run_argv('cut_mixmo', small_digits_dir, out, 'cut', '--epochs', '2',
                                '--resume', out / 'cut' / 'checkpoint-0.pth.tar'))
    assert code == 2
    _error_line(capsys, 'epoch 0', 'epoch 1', '--experiment')
    assert snapshot(out / 'cut') == before


def test_resume_in_a_new_folder_continues_a_copy_of_the_run(out, small_digits_dir):
    before = snapshot(out / 'cut')
    assert train.main(_run_argv('cut_mixmo', small_digits_dir, out, 'fork', '--epochs', '2',
                                '--resume', out / 'cut' / 'checkpoint-0.pth.tar')) == 0
    assert snapshot(out / 'cut') == before
    rows = _summary(out / 'fork')
    assert [row['epoch'] for row in rows] == ['0', '1'] and rows[0] == _summary(out / 'cut')[0]


def test_resume_with_the_runs_config_applies_and_prints_other_flags(out, small_digits_dir, capsys):
    run = out / 'cut'
    shutil.copy(run / 'checkpoint-0.pth.tar', run / 'last.pth.tar')  # as if stopped after epoch 0
    os.remove(run / 'checkpoint-1.pth.tar')
    argv = ['--config', str(run / 'args.yaml'), '--resume', str(run / 'last.pth.tar'), '--output', str(out),
            '--experiment', 'cut', '--data-dir', str(small_digits_dir), '--hflip', '0']
    assert train.main(argv) == 0
    printed = capsys.readouterr().out
    assert 'Resumed with changed flags' in printed and '--hflip 0 (was 0.5)' in printed
    assert yaml.safe_load(open(run / 'args.yaml'))['hflip'] == 0
    assert [row['epoch'] for row in _summary(run)] == ['0', '1']


def test_run_folder_inside_the_data_is_refused(small_digits_dir, tmp_path, capsys):
    data = tmp_path / 'data'
    shutil.copytree(small_digits_dir, data, symlinks=True)
    assert train.main(_run_argv('cut_mixmo', data, data / 'train', 'run', '--epochs', '1')) == 2
    _error_line(capsys, '--output', 'inside --data-dir')
    assert not (data / 'train' / 'run').exists()


def test_disk_full_writing_args_yaml_leaves_no_run_folder(small_digits_dir, tmp_path, monkeypatch, capsys):
    _fail_replace_once(monkeypatch, 'args.yaml')
    assert train.main(_run_argv('cut_mixmo', small_digits_dir, tmp_path / 'out', 'full', '--epochs', '1')) == 2
    _error_line(capsys, 'args.yaml', 'No space left on device')
    assert os.listdir(tmp_path / 'out') == []


def _export_argv(run, folder):
    return ['export', '--checkpoint', str(run / 'last.pth.tar'), '--args', str(run / 'args.yaml'), '--out',
            str(folder)]


def test_export_never_overwrites_an_earlier_export(runs, tmp_path, capsys):
    folder = tmp_path / 'export'
    assert hub.main(_export_argv(runs / 'cut', folder)) == 0
    capsys.readouterr()
    before = snapshot(folder)
    assert hub.main(_export_argv(runs / 'cut', folder)) == 2
    _error_line(capsys, 'already holds', 'model.safetensors')
    assert snapshot(folder) == before


def test_export_misuse_is_one_line_and_writes_nothing(runs, tmp_path, capsys, monkeypatch):
    run = runs / 'cut'
    config = yaml.safe_load(open(run / 'args.yaml'))
    (tmp_path / 'other.yaml').write_text(yaml.safe_dump(dict(config, model='linear_mixmo')))
    (tmp_path / 'bare').mkdir()  # a state dict with neither an args.yaml beside it nor run arguments in it
    torch.save(dict(state_dict=torch.load(run / 'last.pth.tar', weights_only=True)['state_dict']),
               tmp_path / 'bare' / 'weights.pth')
    assert hub.main(['export', '--checkpoint', str(tmp_path / 'bare' / 'weights.pth'), '--out',
                     str(tmp_path / 'x')]) == 2
    _error_line(capsys, '--args')
    assert hub.main(['export', '--checkpoint', str(run / 'last.pth.tar'), '--args', str(tmp_path / 'other.yaml'),
                     '--out', str(tmp_path / 'x')]) == 2
    _error_line(capsys, "'cut_mixmo'", "'linear_mixmo'")
    monkeypatch.setattr(hub, 'save_pretrained', lambda *args, **kwargs: signal.raise_signal(signal.SIGINT))
    assert hub.main(_export_argv(run, tmp_path / 'x')) == 130
    _error_line(capsys, 'interrupted')
    assert sorted(os.listdir(tmp_path)) == ['bare', 'other.yaml']


@pytest.mark.parametrize('case', ['layers-without-data', 'other-kind', 'sigint'])
def test_analysis_refusals_and_interruption_write_nothing(runs, tmp_path, monkeypatch, case, capsys):
    run = runs / 'cut'
    base = ['--config', str(run / 'args.yaml'), '--checkpoint', str(run / 'last.pth.tar'), '--out',
            str(tmp_path / 'analysis')]
    if case == 'sigint':
        monkeypatch.setattr(analysis, 'active_filters', lambda *args: signal.raise_signal(signal.SIGINT))
    argv, code, fragments = dict(
        layers_without_data=([*base, '--layers', 'backbone.stages.0'], 2, ['--layers', '--data-dir']),
        other_kind=([*base, '--model', 'linear_mixmo'], 2, ["'cut_mixmo'", "'linear_mixmo'"]),
        sigint=(base, 130, ['interrupted']),
    )[case.replace('-', '_')]
    assert analysis.main(argv) == code
    _error_line(capsys, *fragments)
    assert not (tmp_path / 'analysis').exists()


    done = []
    with SignalGuard() as guard:
        with pytest.raises(Interrupted):
            with guard.deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                done.append('after the signal')
        assert done == ['after the signal']
        with pytest.raises(Interrupted):
            os.kill(os.getpid(), signal.SIGTERM)
