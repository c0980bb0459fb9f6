"""Misuse of timm-mimo-train / timm-mimo-validate: one clear line, exit status 2, nothing written, nothing lost.

Every case runs the CLI's ``main(argv)`` in-process (an escaping exception fails the test, as a traceback would fail
the user) and checks: the exit code, exactly one ``error: ...`` line on stderr naming the bad value (and usually the
way out), and that the files that existed before (a previous run folder) are byte-for-byte unchanged. ``CASES`` is
plain data so the same cases can be replayed against another version of the scripts.
"""
import hashlib
import os
import pickle
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import pytest
import timm
import torch
import yaml

import timm_mimo  # noqa: F401
from timm_mimo.cli import train, validate

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
    Case('resume a text file', 'train', _train('--resume', _path('notes.txt'), run='existing'), ['notes.txt'],
         setup=_write('notes.txt', b'just some notes\n')),
    Case('resume a pickle payload', 'train', _train('--resume', _path('payload.pth.tar'), run='existing'),
         ['payload.pth.tar', 'refused to unpickle'], setup=_payload, check=_payload_not_run),
    Case('resume a 0-byte file', 'train', _train('--resume', _path('empty.pth.tar'), run='existing'),
         ['empty.pth.tar', '0 bytes'], setup=_write('empty.pth.tar', b'')),
    Case('resume a finished run', 'train', _train('--resume', _path('done.pth.tar'), run='existing'),
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
