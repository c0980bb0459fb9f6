"""Misuse of every command, table-driven: one row per case, so a new path is tested by adding a row.

A row is: the command (``train``, ``validate``, ``export`` / ``run`` of ``python -m timm_mimo``, ``analysis``,
``benchmark``, ``gpu_check``), a data recipe (what to build in the case's folder first, or what to break:
a full disk, a held lock), the ``argv``, the expected exit status, a regex the single ``error:`` line must match and
the files that must not change. Every command runs in-process through its ``main(argv)``: an escaping exception fails
the row as a traceback would fail the user. The data is built once per session: 16 px images in four colour classes.
"""
import fcntl
import hashlib
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import pytest
import torch
from PIL import Image

import timm_mimo  # noqa: F401
from timm_mimo import analysis, hub
from timm_mimo.cli import eval_splits, train, validate, validation

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import benchmark  # noqa: E402
from benchmarks import gpu_check  # noqa: E402

COLOURS = {'blue': (30, 40, 220), 'green': (30, 200, 40), 'red': (220, 30, 30), 'yellow': (230, 220, 30)}
MODEL = ['--model', 'cut_mixmo', '--model-kwargs', 'backbone=wrn28_2', 'depth=10', 'widen_factor=1',
         '--num-classes', '4', '--img-size', '16']
TRAIN = ['--workers', '0', '-b', '8', '--epochs', '1', '--warmup-epochs', '0', '--sched', 'cosine', '--crop-pad', '2',
         '--log-interval', '1000', '--seed', '1']
PER_CLASS = {'train': 4, 'validation': 2}


def write_colour_folder(root: str, splits: Dict[str, int] = PER_CLASS, classes: Sequence[str] = tuple(COLOURS)) -> str:
    """``root/<split>/<colour>/<i>.png``: 16 px images of one colour each, with a little noise."""
    rng = np.random.default_rng(0)
    for split, count in splits.items():
        for name in classes:
            os.makedirs(os.path.join(root, split, name), exist_ok=True)
            for index in range(count):
                pixels = np.clip(np.array(COLOURS[name]) + rng.integers(-20, 20, (16, 16, 3)), 0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(os.path.join(root, split, name, f'{index}.png'))
    return root


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    """The data (4 colour classes) and one trained run ``runs/A`` (WRN-10-1 Cut-MixMo, 1 epoch), built once."""
    root = str(tmp_path_factory.mktemp('fuzz'))
    data = write_colour_folder(os.path.join(root, 'data'))
    assert train.main([*MODEL, *TRAIN, '--data-dir', data, '--output', os.path.join(root, 'runs'),
                       '--experiment', 'A']) == 0
    run = os.path.join(root, 'runs', 'A')
    # an older checkpoint: the same weights, no class names recorded, no args.yaml beside it
    os.makedirs(os.path.join(root, 'old'))
    state = torch.load(os.path.join(run, 'last.pth.tar'), weights_only=True)
    state.pop('class_names')
    state['args'] = {key: value for key, value in state['args'].items() if key != 'class_names'}
    torch.save(state, os.path.join(root, 'old', 'last.pth.tar'))
    return dict(root=root, data=data, run=run, last=os.path.join(run, 'last.pth.tar'),
                best=os.path.join(run, 'model_best.pth.tar'), old=os.path.join(root, 'old', 'last.pth.tar'))


# ---- recipes: what a row builds (or breaks) before it runs; ``ctx`` has the world's paths and ``tmp`` ---------------

def text_file(name: str = 'notes.txt', content: bytes = b'hello\n') -> Callable:
    def recipe(ctx, monkeypatch):
        with open(os.path.join(ctx['tmp'], name), 'wb') as f:
            f.write(content)
    return recipe


def corruption_release(labels: Sequence[int]) -> Callable:
    """A CIFAR-*-C shaped release of one corruption (``fog``) over 4 images with ``labels``."""
    def recipe(ctx, monkeypatch):
        folder = os.path.join(ctx['tmp'], 'CIFAR-10-C')
        os.makedirs(folder)
        np.save(os.path.join(folder, 'fog.npy'), np.full((5 * len(labels), 16, 16, 3), 128, dtype=np.uint8))
        np.save(os.path.join(folder, 'labels.npy'), np.array(list(labels) * 5, dtype=np.int64))
    return recipe


def held_lock(folder_key: str = 'run') -> Callable:
    """Another process's lock on a run folder (an open file description of its own, as another process has)."""
    def recipe(ctx, monkeypatch):
        path = os.path.join(ctx[folder_key], '.lock')
        fd = os.open(path, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.ftruncate(fd, 0)
        os.pwrite(fd, b'process 4242: python train.py --resume A/last.pth.tar\n', 0)
        ctx['cleanup'].append(lambda: os.close(fd))
    return recipe


def disk_full_in(target: str, exc: Exception) -> Callable:
    """``target`` (``module.attr``) raises ``exc`` as a full disk does inside a writer."""
    def recipe(ctx, monkeypatch):
        def fail(*args, **kwargs):
            raise exc
        monkeypatch.setattr(target, fail)
    return recipe


def crash_in(target: str) -> Callable:
    """An internal error (not the user's input) raised at ``target``."""
    return disk_full_in(target, ZeroDivisionError('division by zero'))


def copy_run(name: str = 'B') -> Callable:
    def recipe(ctx, monkeypatch):
        shutil.copytree(ctx['run'], os.path.join(ctx['tmp'], name), ignore=shutil.ignore_patterns('.lock'))
    return recipe


def copy_file(key: str, name: str) -> Callable:
    """``ctx[key]`` copied to ``tmp/name`` (a checkpoint under a name that does not say it is one)."""
    def recipe(ctx, monkeypatch):
        shutil.copy(ctx[key], os.path.join(ctx['tmp'], name))
    return recipe


def broken_image_data(split: str = 'validation', extra_split: str = '') -> Callable:
    """A copy of the data in ``tmp/data`` whose ``split`` holds one file that is no image (``extra_split``: also a
    held-out split of one image per class)."""
    def recipe(ctx, monkeypatch):
        data = os.path.join(ctx['tmp'], 'data')
        shutil.copytree(ctx['data'], data)
        if extra_split:
            shutil.copytree(os.path.join(data, 'train'), os.path.join(data, extra_split))
        with open(os.path.join(data, extra_split or split, 'red', '0.png'), 'wb') as f:
            f.write(b'not a png')
    return recipe


def results_json(**columns) -> Callable:
    """``tmp/results.json``: a validate results file with ``columns`` (``{key}`` values are ``ctx`` paths)."""
    def recipe(ctx, monkeypatch):
        import json
        row = {key: _fill(value, ctx) for key, value in columns.items()}
        with open(os.path.join(ctx['tmp'], 'results.json'), 'w') as f:
            json.dump(dict(top1=100.0, loss=0.1, **row), f)
    return recipe


def recipes(*steps: Callable) -> Callable:
    def recipe(ctx, monkeypatch):
        for step in steps:
            step(ctx, monkeypatch)
    return recipe


# ---- the table ------------------------------------------------------------------------------------------------------

@dataclass
class Row:
    """One misuse: ``argv(ctx)`` for ``command`` after ``recipe(ctx, monkeypatch)``; exit ``code``, one ``error:``
    line matching ``message``; ``unchanged``: keys of ``ctx`` / paths under ``tmp`` whose bytes must not change
    (``run``: every file of the trained run folder)."""
    name: str
    command: str
    argv: Callable[[Dict[str, str]], List[str]]
    code: int
    message: str
    recipe: Optional[Callable] = None
    unchanged: Sequence[str] = ('run',)
    extra: Dict[str, object] = field(default_factory=dict)


def T(*extra):
    """train argv on the colour data, a new run ``tmp/out/new``; ``{key}`` items are ``ctx`` paths."""
    return lambda ctx: [*MODEL, *TRAIN, '--data-dir', ctx['data'], '--output', os.path.join(ctx['tmp'], 'out'),
                        '--experiment', 'new', *[_fill(e, ctx) for e in extra]]


def V(*extra, model=MODEL):
    return lambda ctx: [*model, '--data-dir', ctx['data'], '--workers', '0', '-b', '16', '--crop-pad', '2',
                        *[_fill(e, ctx) for e in extra]]


def A(*extra):
    return lambda ctx: [_fill(e, ctx) for e in extra]


def _fill(item: str, ctx: Dict[str, str]) -> str:
    return item.format(**ctx) if isinstance(item, str) else item


RESUME = ['--resume', '{last}', '--epochs', '1']
NO_SPACE = OSError(28, 'No space left on device')
TORCH_FULL = RuntimeError('[enforce fail at inline_container.cc:595] . PytorchStreamWriter failed writing file '
                          'data/0: file write failed')

ROWS = [
    # --- train ---------------------------------------------------------------------------------------------------
    Row('train-num-classes-0', 'train', T('--num-classes', '0'), 2, r'--num-classes 0'),
    Row('train-model-kwargs-without-equals', 'train', T('--model-kwargs', 'depth'), 2,
        r"--model-kwargs: 'depth' is not key=value"),
    Row('train-model-kwargs-empty-key', 'train', T('--model-kwargs', 'backbone=wrn28_2', 'widen_factor'), 2,
        r"'widen_factor' is not key=value"),
    Row('train-opt-kwargs-without-equals', 'train', T('--opt-kwargs', 'nesterov'), 2,
        r"--opt-kwargs: 'nesterov' is not key=value"),
    Row('train-pretrained-path-text-file', 'train', T('--pretrained-path', '{tmp}/notes.txt'), 2,
        r"--pretrained-path '.*notes.txt' cannot be read as a weights file", text_file()),
    Row('train-pretrained-path-binary-junk', 'train', T('--pretrained-path', '{tmp}/junk.bin'), 2,
        r'--pretrained-path .* cannot be read', text_file('junk.bin', bytes(range(256)) * 4)),
    Row('train-pretrained-path-empty-file', 'train', T('--pretrained-path', '{tmp}/empty.pth'), 2,
        r'--pretrained-path .*empty.pth', text_file('empty.pth', b'')),
    Row('train-initial-checkpoint-text-file', 'train', T('--initial-checkpoint', '{tmp}/notes.txt'), 2,
        r"--initial-checkpoint '.*notes.txt' cannot be loaded", text_file()),
    Row('train-resume-text-file', 'train', T('--resume', '{tmp}/notes.txt'), 2,
        r"--resume '.*notes.txt' cannot be read", text_file()),
    Row('train-unknown-model', 'train', lambda ctx: [*T()(ctx), '--model', 'no_such_net'], 2,
        r"--model 'no_such_net' is unknown"),
    Row('train-duplicate-class-names', 'train', T('--class-names', 'red', 'green', 'red', 'blue'), 2,
        r"--class-names names 'red' twice"),
    Row('train-start-epoch-on-in-place-resume', 'train', T(*RESUME, '--experiment', '', '--start-epoch', '0'), 2,
        r'--start-epoch 0 with --resume .* in its own run folder'),
    Row('train-start-epoch-on-in-place-resume-of-best', 'train',
        lambda ctx: [*T()(ctx), '--resume', os.path.join(ctx['tmp'], 'B', 'last.pth.tar'), '--start-epoch', '1',
                     '--experiment', ''], 2,
        r'--start-epoch 1 with --resume', copy_run('B'), ('run', 'B')),
    Row('train-resume-of-a-locked-run', 'train', T(*RESUME, '--epochs', '2', '--extend-lr', '0.05',
                                                   '--experiment', ''), 2,
        r"run folder '.*A' is in use by process 4242: python train.py --resume", held_lock()),
    Row('train-output-is-a-file', 'train', lambda ctx: [*T()(ctx), '--output', os.path.join(ctx['tmp'], 'notes.txt')],
        2, r"--output: '.*notes.txt' is a file", text_file()),
    Row('train-disk-full-in-torch-save', 'train', T(), 2,
        r'cannot write the epoch 0 checkpoint .*file write failed.*resume|cannot write the epoch 0 checkpoint',
        disk_full_in('torch.save', TORCH_FULL)),
    Row('train-disk-full-in-args-yaml', 'train', T(), 2, r"cannot write '.*args.yaml' \(.*No space left",
        disk_full_in('yaml.safe_dump', NO_SPACE)),
    Row('train-internal-error', 'train', T(), 1, r'internal error \(ZeroDivisionError: division by zero\); run the '
        r'command again with --debug', crash_in('timm_mimo.cli.run_loop.build_task')),
    Row('train-config-not-yaml', 'train', T('--config', '{tmp}/junk.yaml'), 2, r"cannot read config '.*junk.yaml'",
        text_file('junk.yaml', b'model: [unclosed\n')),
    # --- validate ------------------------------------------------------------------------------------------------
    Row('validate-results-file-is-the-runs-best-checkpoint', 'validate',
        V('--checkpoint', '{last}', '--results-file', '{best}'), 2,
        r"--results-file '.*model_best.pth.tar' is a file of the run folder"),
    Row('validate-results-file-is-the-runs-summary', 'validate',
        V('--checkpoint', '{last}', '--results-file', '{run}/summary.csv'), 2,
        r"--results-file '.*summary.csv' is a file of the run folder"),
    Row('validate-results-file-is-the-runs-args', 'validate',
        V('--checkpoint', '{last}', '--results-file', '{run}/args.yaml'), 2, r"'.*args.yaml' is a file of the run"),
    Row('validate-results-file-is-the-checkpoint', 'validate',
        V('--checkpoint', '{last}', '--results-file', '{last}'), 2, r'is also the input --checkpoint'),
    Row('validate-results-file-is-another-checkpoint', 'validate',
        V('--checkpoint', '{old}', '--results-file', '{tmp}/B/checkpoint-0.pth.tar'), 2,
        r"'.*checkpoint-0.pth.tar' is (a file of the run folder|an existing checkpoint)", copy_run('B'),
        ('run', 'B')),
    Row('validate-diagram-is-the-checkpoint', 'validate',
        V('--checkpoint', '{last}', '--reliability-diagram', '{best}'), 2, r'--reliability-diagram'),
    Row('validate-results-into-a-locked-run', 'validate',
        V('--checkpoint', '{last}', '--results-file', '{run}/results.csv'), 2, r"run folder '.*A' is in use by",
        held_lock()),
    Row('validate-duplicate-class-names', 'validate', V('--checkpoint', '{old}', '--class-names', 'red', 'red'), 2,
        r"--class-names names 'red' twice"),
    Row('validate-pretrained-path-text-file', 'validate', V('--pretrained-path', '{tmp}/notes.txt'), 2,
        r'--pretrained-path .* cannot be read as a weights file', text_file()),
    Row('validate-model-kwargs-without-equals', 'validate', V('--model-kwargs', 'depth'), 2,
        r"'depth' is not key=value"),
    Row('validate-unknown-model', 'validate', V('--checkpoint', '{last}', model=['--model', 'no_such_net']), 2,
        r'no_such_net'),
    Row('validate-release-label-minus-one', 'validate',
        V('--checkpoint', '{last}', '--corruption-dir', '{tmp}/CIFAR-10-C', '--corruptions', 'fog'), 2,
        r'labels.npy.* holds the label -1: a class index is >= 0', corruption_release([0, 1, 2, -1])),
    Row('validate-release-label-minus-100', 'validate',
        V('--checkpoint', '{last}', '--corruption-dir', '{tmp}/CIFAR-10-C', '--corruptions', 'fog'), 2,
        r'holds the label -100', corruption_release([0, -100, 2, 3])),
    Row('validate-release-label-past-the-classes', 'validate',
        V('--checkpoint', '{last}', '--corruption-dir', '{tmp}/CIFAR-10-C', '--corruptions', 'fog'), 2,
        r'has class index 7 but the model has 4 outputs', corruption_release([0, 1, 7, 3])),
    Row('validate-ensemble-of-an-unnamed-and-a-named-run', 'validate',
        lambda ctx: ['--data-dir', ctx['data'], '--workers', '0', '--crop-pad', '2', '--ensemble-checkpoints',
                     ctx['old'], ctx['last']], 2, r"'.*old/last.pth.tar' records no class names"),
    Row('validate-disk-full-writing-results', 'validate',
        V('--checkpoint', '{last}', '--results-file', '{tmp}/res.csv'), 2, r"cannot write '.*res.csv'",
        disk_full_in('os.replace', NO_SPACE)),
    Row('validate-internal-error', 'validate', V('--checkpoint', '{last}'), 1, r'internal error \(ZeroDivisionError',
        crash_in('timm_mimo.cli.validation.metric_columns')),
    Row('validate-unreadable-image', 'validate', V('--checkpoint', '{last}', '--data-dir', '{tmp}/data'), 2,
        r"image '.*red/0.png' \(index \d+ of the split\) cannot be read", broken_image_data()),
    Row('validate-unreadable-image-in-a-worker', 'validate',
        V('--checkpoint', '{last}', '--data-dir', '{tmp}/data', '--workers', '1'), 2,
        r"^error: image '.*red/0.png' \(index \d+ of the split\) cannot be read", broken_image_data()),
    Row('validate-unreadable-image-in-the-held-out-split', 'validate',
        V('--checkpoint', '{last}', '--data-dir', '{tmp}/data', '--fit-temperature', 'heldout'), 2,
        r"image '.*heldout/red/0.png' .* cannot be read", broken_image_data(extra_split='heldout')),
    # --- python -m timm_mimo export / run ------------------------------------------------------------------------
    Row('export-out-is-a-checkpoint', 'export', A('export', '--checkpoint', '{last}', '--out', '{best}'), 2,
        r'--out .*model_best.pth.tar.* (is a file|run folder|checkpoint)'),
    Row('export-checkpoint-text-file', 'export', A('export', '--checkpoint', '{tmp}/notes.txt', '--out', '{tmp}/e'),
        2, r"notes.txt", text_file()),
    Row('export-disk-full-in-safetensors', 'export', A('export', '--checkpoint', '{last}', '--out', '{tmp}/e'), 2,
        r'(file write failed|No space left)', disk_full_in('safetensors.torch.save_file', TORCH_FULL)),
    Row('export-internal-error', 'export', A('export', '--checkpoint', '{last}', '--out', '{tmp}/e'), 1,
        r'internal error \(ZeroDivisionError', crash_in('timm_mimo.hub.model_card')),
    Row('export-temperature-of-another-checkpoint', 'export',
        A('export', '--checkpoint', '{last}', '--out', '{tmp}/e', '--results', '{tmp}/results.json'), 2,
        r'holds a temperature fitted on another checkpoint',
        results_json(temperature=1.5, checkpoint='{old}', temperature_checkpoint='{old}',
                     temperature_checkpoint_sha256='0123456789abcdef')),
    Row('export-results-of-another-checkpoint-without-hash', 'export',
        A('export', '--checkpoint', '{last}', '--out', '{tmp}/e', '--results', '{tmp}/results.json'), 2,
        r"was written for the checkpoint '.*old/last.pth.tar'", results_json(temperature=1.5, checkpoint='{old}')),
    Row('export-flagged-temperature', 'export',
        A('export', '--checkpoint', '{last}', '--out', '{tmp}/e', '--results', '{tmp}/results.json'), 2,
        r'the temperature 0.001 is flagged \(at the search bound',
        results_json(temperature=0.001, checkpoint='{last}', temperature_flag='at the search bound (...)')),
    Row('run-binary-file', 'timm_mimo', A('run', '{tmp}/junk.py'), 2, r"run: '.*junk.py' is not a Python script",
        text_file('junk.py', b'\x00\x01\x02binary')),
    Row('run-missing-script', 'timm_mimo', A('run', '{tmp}/nothing.py'), 2, r"script '.*nothing.py' does not exist"),
    Row('run-folder-as-script', 'timm_mimo', A('run', '{tmp}'), 2, r'does not exist'),
    # --- analysis ------------------------------------------------------------------------------------------------
    Row('analysis-out-is-a-file', 'analysis', A('--config', '{run}/args.yaml', '--checkpoint', '{last}', '--out',
                                                '{tmp}/notes.txt', '--no-plots'), 2, r"--out .*notes.txt",
        text_file()),
    Row('analysis-threshold-out-of-range', 'analysis', A('--config', '{run}/args.yaml', '--checkpoint', '{last}',
                                                         '--out', '{tmp}/an', '--threshold', '2'), 2,
        r'--threshold 2.0: must be in \[0, 1\]'),
    Row('analysis-checkpoint-text-file', 'analysis', A('--config', '{run}/args.yaml', '--checkpoint',
                                                       '{tmp}/notes.txt', '--out', '{tmp}/an', '--no-plots'), 2,
        r'notes.txt', text_file()),
    # --- benchmark.py --------------------------------------------------------------------------------------------
    Row('benchmark-loop-unknown-model', 'benchmark', A('loop', '--model', 'no_such_net', '--', '--data-dir',
                                                       '{data}'), 2, r'no_such_net'),
    Row('benchmark-ops-unknown-model', 'benchmark', A('ops', '--model', 'no_such_net'), 2, r'no_such_net'),
    Row('benchmark-unknown-model', 'benchmark', A('--model', 'no_such_net'), 2, r'no_such_net'),
    Row('benchmark-loop-results-file-is-a-checkpoint', 'benchmark',
        A('loop', '--model', 'cut_mixmo', '--results-file', '{last}'), 2,
        r"--results-file '.*last.pth.tar' is (a file of the run folder|an existing checkpoint)"),
    Row('benchmark-results-file-is-a-checkpoint-elsewhere', 'benchmark',
        A('--model', 'cut_mixmo', '--results-file', '{tmp}/weights.data'), 2,
        r"'.*weights.data' is an existing checkpoint", copy_file('old', 'weights.data'), ('run', 'weights.data')),
    Row('benchmark-results-file-is-a-runs-summary', 'benchmark',
        A('--model', 'cut_mixmo', '--results-file', '{run}/summary.csv'), 2, r'is a file of the run folder'),
    Row('benchmark-model-kwargs-without-equals', 'benchmark', A('--model', 'cut_mixmo', '--model-kwargs', 'depth'), 2,
        r"'depth' is not key=value"),
    Row('benchmark-ops-model-kwargs-without-equals', 'benchmark',
        A('ops', '--model', 'cut_mixmo', '--model-kwargs', 'depth'), 2, r"'depth' is not key=value"),
    # --- benchmarks/gpu_check.py ---------------------------------------------------------------------------------
    Row('gpu-check-out-is-a-file', 'gpu_check', A('--cpu', '--out', '{tmp}/notes.txt'), 2,
        r"--out '.*notes.txt' is a file", text_file()),
    Row('gpu-check-budget-zero', 'gpu_check', A('--cpu', '--budget-minutes', '0'), 2, r'--budget-minutes 0'),
    Row('gpu-check-data-dir-missing', 'gpu_check', A('--cpu', '--data-dir', '{tmp}/nothing'), 2,
        r"--data-dir '.*nothing' is not a folder"),
]

COMMANDS = {'train': train.main, 'validate': validate.main, 'export': hub.main, 'timm_mimo': hub.main,
            'analysis': analysis.main, 'benchmark': benchmark.main, 'gpu_check': gpu_check.main}


def snapshot(paths: Sequence[str]) -> Dict[str, str]:
    digests = {}
    for path in paths:
        files = [os.path.join(folder, name) for folder, _, names in os.walk(path) for name in names] \
            if os.path.isdir(path) else [path]
        for file in files:
            if os.path.basename(file) != '.lock' and os.path.exists(file):
                with open(file, 'rb') as f:
                    digests[file] = hashlib.sha256(f.read()).hexdigest()
    return digests


def run_command(command: str, argv: List[str]) -> int:
    try:
        return COMMANDS[command](argv)
    except SystemExit as exc:  # argparse's own parsers (benchmarks) exit 2 after their one error line
        return exc.code


@pytest.mark.parametrize('row', ROWS, ids=[row.name for row in ROWS])
def test_fuzz(row, world, tmp_path, monkeypatch, capsys):
    ctx = dict(world, tmp=str(tmp_path), cleanup=[])
    try:
        if row.recipe is not None:
            row.recipe(ctx, monkeypatch)
        kept = [ctx[key] if key in ctx else os.path.join(ctx['tmp'], key) for key in row.unchanged]
        before = snapshot(kept)
        argv = [str(item) for item in row.argv(ctx)]
        code = run_command(row.command, argv)
        monkeypatch.undo()
    finally:
        for cleanup in ctx['cleanup']:
            cleanup()
    err = capsys.readouterr().err
    assert code == row.code, err
    assert 'Traceback' not in err, err
    errors = [line for line in err.splitlines() if 'error:' in line]
    assert len(errors) == 1, err
    assert re.search(row.message, errors[0]), errors[0]
    assert snapshot(kept) == before, 'a file that must not change was changed'
    leftovers = [name for folder, _, names in os.walk(ctx['root']) for name in names if '.tmp' in name]
    assert not leftovers, leftovers


def test_rows_cover_every_command():
    counts = {command: sum(row.command == command for row in ROWS) for command in COMMANDS}
    assert all(count >= 2 for count in counts.values()), counts
    assert len({row.name for row in ROWS}) == len(ROWS)


# ---- the paths the rows reach, checked where a row's one line cannot show them ---------------------------------------

def test_debug_shows_the_traceback_after_the_line(world, tmp_path, monkeypatch, capsys):
    crash_in('timm_mimo.cli.validation.metric_columns')(dict(world, tmp=str(tmp_path)), monkeypatch)
    assert validate.main([*V('--checkpoint', '{last}')(world), '--debug']) == 1
    err = capsys.readouterr().err
    assert 'Traceback' in err and 'ZeroDivisionError' in err and err.strip().splitlines()[-1].startswith('error:')


def test_disk_full_in_torch_save_leaves_a_resumable_run(world, tmp_path, monkeypatch, capsys):
    """A full disk inside torch.save at the second epoch: one line, no temporary file, the run resumes to its end."""
    argv = [*MODEL, *TRAIN, '--data-dir', world['data'], '--output', str(tmp_path), '--experiment', 'full',
            '--epochs', '2']
    real_save, calls = torch.save, []

    def save(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 2:
            raise TORCH_FULL
        return real_save(*args, **kwargs)
    with monkeypatch.context() as patch:
        patch.setattr(torch, 'save', save)
        assert train.main(argv) == 2
    assert '--resume' in capsys.readouterr().err
    run = tmp_path / 'full'
    assert not [name for name in os.listdir(run) if '.tmp' in name]
    assert torch.load(run / 'last.pth.tar', weights_only=True)['epoch'] == 0
    assert train.main([*argv, '--resume', str(run / 'last.pth.tar'), '--experiment', '']) == 0
    assert torch.load(run / 'last.pth.tar', weights_only=True)['epoch'] == 1


def test_summary_lr_is_the_lr_the_epoch_trained_at(world, tmp_path):
    """timm writes the lr an epoch trained at: a 2-epoch cosine from 0.1 trains epoch 0 at 0.1 and epoch 1 at 0.05."""
    argv = [*MODEL, *TRAIN, '--data-dir', world['data'], '--output', str(tmp_path), '--experiment', 'lr',
            '--epochs', '2', '--lr', '0.1']
    assert train.main(argv) == 0
    import csv
    with open(tmp_path / 'lr' / 'summary.csv') as f:
        assert [float(row['lr']) for row in csv.DictReader(f)] == pytest.approx([0.1, 0.05])


def test_held_out_temperature_split_is_labelled_by_the_runs_classes(world, tmp_path):
    """A held-out split without 'blue': its 'green' images are output 1 of the run (not 0, their folder index)."""
    import argparse
    write_colour_folder(str(tmp_path), {'heldout': 1}, classes=('green', 'red', 'yellow'))
    for split in ('validation',):
        shutil.copytree(os.path.join(world['data'], split), tmp_path / split)
    args = validate.parse_args([*MODEL, '--data-dir', str(tmp_path), '--checkpoint', world['last'], '--fit-temperature',
                                'heldout'])
    from timm_mimo.data import apply_class_names, open_dataset
    dataset = open_dataset('', str(tmp_path), 'validation', False, False, None, '')
    apply_class_names(dataset, ['blue', 'green', 'red', 'yellow'], 'validation')
    held_out = eval_splits.open_calibration_split(args, dataset, None)
    assert [held_out[i][1] for i in range(len(held_out))] == [1, 2, 3]
    assert isinstance(args, argparse.Namespace)


def test_temperature_records_its_provenance_and_a_tiny_fit_is_flagged(world, tmp_path, capsys):
    """A fit on 4 held-out images: the results name the checkpoint (hash), split and count, flag the fit, and
    export refuses it; the temperature column is exact (not rounded to 4 decimals)."""
    import json

    from timm_mimo.temperature_provenance import checkpoint_digest
    data = tmp_path / 'data'
    shutil.copytree(world['data'], data)
    write_colour_folder(str(data), {'heldout': 1})
    results = tmp_path / 'val.json'
    assert validate.main([*V('--checkpoint', '{last}')(world), '--data-dir', str(data), '--fit-temperature', 'heldout',
                          '--results-file', str(results)]) == 0
    assert 'warning: the temperature' in capsys.readouterr().err
    row = json.loads(results.read_text())
    assert row['temperature_checkpoint'] == world['last'] and row['temperature_images'] == 4
    assert row['temperature_checkpoint_sha256'] == checkpoint_digest(world['last'])
    assert 'fitted on 4 images (< 100)' in row['temperature_flag']
    assert validation.rounded_results({'temperature': 1.23456789e-5, 'loss': 0.123456})['temperature'] == 1.23456789e-5
    assert hub.main(['export', '--checkpoint', world['last'], '--results', str(results), '--out',
                     str(tmp_path / 'e')]) == 2
    assert 'is flagged' in capsys.readouterr().err and not (tmp_path / 'e').exists()


def test_export_reproduces_the_checkpoint_metrics(world, tmp_path, capsys):
    """``local-dir:`` of an export evaluates as the checkpoint does (its --crop-pad travels in config.json), and
    its label_names are the run's classes as a list in output order."""
    import json
    out = tmp_path / 'export'
    assert hub.main(['export', '--checkpoint', world['last'], '--out', str(out)]) == 0
    config = json.loads((out / 'config.json').read_text())
    assert config['label_names'] == ['blue', 'green', 'red', 'yellow']
    assert config['timm_mimo_eval_transform'] == {'crop_pad': 2}
    columns = ('top1', 'loss', 'member_top1', 'ece')
    checkpoint = validation.validate(validate.parse_args(V('--checkpoint', '{last}')(world)))
    exported = validation.validate(validate.parse_args(['--model', f'local-dir:{out}', '--data-dir', world['data'],
                                                      '--workers', '0', '-b', '16']))
    assert [round(exported[key], 4) for key in columns] == [round(checkpoint[key], 4) for key in columns]


def test_release_labels_are_scored_by_class_name(world, tmp_path):
    """CIFAR-*-C labels index the data set's classes: a run trained with its classes in another order scores the
    release by name, the same top-1 as the clean split on the same images."""
    from timm_mimo.labels import release_label_map
    mapped = release_label_map(np.array([0, 1, 2, 3, 1]), ['blue', 'green', 'red', 'yellow'],
                               ['red', 'blue', 'yellow', 'green'], 4, 'labels.npy')
    assert mapped.tolist() == [1, 3, 0, 2, 3]
    from timm_mimo.cli.args import CliError
    with pytest.raises(CliError, match="class\\(es\\) the run never had \\(yellow\\)"):
        release_label_map(np.array([0, 3]), ['blue', 'green', 'red', 'yellow'], ['blue', 'green', 'red'], 4, 'x')


def test_export_of_a_head_larger_than_its_classes_keeps_the_label_order(world, tmp_path):
    """A 6-output head trained on 4 classes mapped (``--class-map``) to outputs 0, 2, 3 and 5 in another order than
    the folders': the export's label_names are the class of every output, a list in output order (null for the
    outputs without one), and ``local-dir:`` scores the split as the checkpoint does."""
    import json
    import pickle
    with open(tmp_path / 'map.pkl', 'wb') as f:
        pickle.dump({'yellow': 0, 'red': 2, 'green': 3, 'blue': 5}, f)
    argv = [*MODEL, *TRAIN, '--num-classes', '6', '--class-map', str(tmp_path / 'map.pkl'), '--data-dir',
            world['data'], '--output', str(tmp_path), '--experiment', 'wide']
    assert train.main(argv) == 0
    out = tmp_path / 'export'
    assert hub.main(['export', '--checkpoint', str(tmp_path / 'wide' / 'last.pth.tar'), '--out', str(out)]) == 0
    assert json.loads((out / 'config.json').read_text())['label_names'] == ['yellow', None, 'red', 'green', None,
                                                                           'blue']
    checkpoint = validation.validate(validate.parse_args(
        [*MODEL, '--num-classes', '6', '--data-dir', world['data'], '--workers', '0', '--crop-pad', '2',
         '--checkpoint', str(tmp_path / 'wide' / 'last.pth.tar')]))
    exported = validation.validate(validate.parse_args(['--model', f'local-dir:{out}', '--data-dir', world['data'],
                                                      '--workers', '0']))
    assert (exported['top1'], round(exported['loss'], 4)) == (checkpoint['top1'], round(checkpoint['loss'], 4))


def test_an_atomic_write_that_fails_in_any_way_keeps_the_old_file(tmp_path):
    """Whatever the writer raises (a RuntimeError as torch's writer on a full disk), the old bytes stay and no
    temporary file is left; a successful write replaces the file whole."""
    from timm_mimo.outputs import write_atomically
    path = tmp_path / 'results.csv'
    path.write_text('old\n')

    def half_then_fail(tmp):
        with open(tmp, 'w') as f:
            f.write('half')
        raise RuntimeError('PytorchStreamWriter failed writing file data/0: file write failed')
    with pytest.raises(RuntimeError):
        write_atomically(path, half_then_fail)
    assert path.read_text() == 'old\n' and os.listdir(tmp_path) == ['results.csv']
    write_atomically(path, lambda tmp: open(tmp, 'w').write('new\n'))
    assert path.read_text() == 'new\n' and os.listdir(tmp_path) == ['results.csv']
