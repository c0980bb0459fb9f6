#!/usr/bin/env python3
"""The GPU check: one script, under 8 minutes on one recent GPU, that shows what the training path does there.

    python benchmarks/gpu_check.py --data-dir /data/cifar10            # a CIFAR-10 image folder (train/, test/)
    python benchmarks/gpu_check.py --data-dir /data --dataset torch/cifar10   # torchvision's CIFAR-10 files
    python benchmarks/gpu_check.py --cpu                                 # tiny sizes on the CPU (what CI runs)

The CPU mode runs every part on a WRN-10-1 Cut-MixMo at 8 px (sklearn's digits unless ``--data-dir`` is given), with
a few steps each and ``--torchcompile aot_eager`` (the graphs dynamo and AOTAutograd capture, without inductor's C++
code generation, which would take minutes on two cores): it checks that every command of the GPU run works.

Parts, each a real command of this repository run as a subprocess with its own time limit (a failed or timed-out part
is recorded and the check goes on):

1. ``benchmark.py``: the model table at B = 256 (bfloat16 autocast, channels-last): Cut-MixMo WRN-28-10, MixShare
   WRN-28-5, MixViT on the papers' ConViT and on DeiT-S, each against its backbone (train-step and inference ratios);
   then the same train step with ``--torchcompile`` for Cut-MixMo WRN-28-10;
2. ``benchmark.py loop``: the real training loop (loader workers, plans, prefetcher) of Cut-MixMo WRN-28-10 b = 2 and
   of WRN-28-10 against their isolated steps, from the image folder and with ``--device-data``;
3. ``train.py``: one epoch of the Cut-MixMo WRN-28-10 CIFAR-10 b = 2 recipe with ``--amp`` (float16 + GradScaler) and
   one with bfloat16 and ``--device-data``;
4. ``validate.py`` on the float16 epoch's checkpoint;
5. a one-process ``torchrun`` smoke run (nccl on CUDA, gloo on the CPU);
6. the 10-minute target: the real loop of the Cut-MixMo WRN-28-2 b = 2 CIFAR-10 recipe (batch 64, ``--device-data``,
   bfloat16, the whole step compiled with CUDA graphs: ``--torchcompile-mode reduce-overhead``) and the 300-epoch time
   it projects (loop step time x steps per epoch x 300).

The whole check keeps to ``--budget-minutes`` (8 on a GPU): each part's limit is cut to what is left, and a part
that no longer fits is recorded as skipped. Refused before anything is written: the GPU sizes without a CUDA device,
a ``--data-dir`` that does not exist, an ``--out`` folder that already holds files.

Everything lands in ``--out`` (default ``results/gpu_check/<date>-<device>``): ``gpu_check.log`` (every command and
its output), ``gpu_check.csv`` (part, status, seconds, the headline figures) and each part's own CSV / JSON.
"""
import argparse
import csv
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

GPU_MODELS = ['cut_mixmo_wrn28_10', 'mixshare_wrn28_5', 'mixvit_convit_gpsa5_ca2', 'mixvit_deit_small_patch16_224']
RECIPE = 'cut_mixmo_wrn28_10_cifar10_b2'
TARGET_MODEL = 'cut_mixmo_wrn28_2'  # 300 epochs of its b = 2 recipe in one 10-minute GPU job


def _tiny_cpu_flags(data_dir: str) -> Dict[str, List[str]]:
    """The CPU mode's stand-ins: a WRN-10-1 Cut-MixMo on 8 px gray digits, a few steps of everything."""
    model = ['--model-kwargs', 'backbone=wrn28_2', 'depth=10', 'widen_factor=1', '--num-classes', '10',
             '--in-chans', '1', '--img-size', '8', '--mean', '0.5', '--std', '0.5']
    data = ['--data-dir', data_dir, '--crop-pad', '1']
    return dict(model=model, data=data)


def _write_digits(root: str) -> None:
    """A small real image folder for the CPU mode: sklearn's digits as 8x8 gray PNGs (train / validation)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits
    digits = load_digits()
    images = np.clip(digits.images * 16, 0, 255).astype(np.uint8)
    for i, (image, label) in enumerate(zip(images, digits.target)):
        split = 'validation' if i % 6 == 0 else 'train'
        folder = os.path.join(root, split, str(label))
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(image, mode='L').save(os.path.join(folder, f'{i}.png'))


class Check:
    """Runs the parts within one time budget, logs every command and its output, collects one CSV row per part."""

    MIN_PART_SECONDS = 20  # a part with less time left than this is skipped, not started

    def __init__(self, out: str, env: Dict[str, str], budget_seconds: float):
        self.out = out
        self.env = env
        self.rows: List[Dict[str, Any]] = []
        self.log = open(os.path.join(out, 'gpu_check.log'), 'a')
        self.deadline = time.perf_counter() + budget_seconds

    def run(self, part: str, argv: Sequence[str], timeout: float, figures: Optional[Any] = None) -> bool:
        """Run one command; record its status, duration and the figures ``figures()`` reads from its outputs."""
        command = ' '.join(shlex.quote(a) for a in argv)
        left = self.deadline - time.perf_counter()
        if left < self.MIN_PART_SECONDS:
            self.log.write(f'\n=== {part}: skipped, {max(left, 0):.0f}s of the budget left\n$ {command}\n')
            self.rows.append(OrderedDict(part=part, status='skipped (budget)', seconds=0, command=command))
            print(f'--- {part}: skipped ({max(left, 0):.0f}s of the budget left)', flush=True)
            return False
        timeout = min(timeout, left)
        self.log.write(f'\n=== {part}  [{time.strftime("%H:%M:%S")}]\n$ {command}\n')
        self.log.flush()
        print(f'--- {part}: {command}', flush=True)
        start = time.perf_counter()
        try:
            proc = subprocess.run(list(argv), cwd=REPO, env=self.env, capture_output=True, text=True,
                                  timeout=timeout)
            output, status = proc.stdout + proc.stderr, 'ok' if proc.returncode == 0 else f'exit {proc.returncode}'
        except subprocess.TimeoutExpired as exc:
            output = exc.stdout.decode(errors='replace') if isinstance(exc.stdout, bytes) else (exc.stdout or '')
            status = f'timeout after {timeout:.0f}s'
        seconds = time.perf_counter() - start
        self.log.write(output)
        self.log.write(f'\n=== {part}: {status} in {seconds:.1f}s\n')
        self.log.flush()
        row = OrderedDict(part=part, status=status, seconds=round(seconds, 1))
        if status == 'ok' and figures is not None:
            try:
                row.update(figures())
            except (OSError, ValueError, KeyError, IndexError) as exc:
                row['figures_error'] = str(exc)
        else:
            row['tail'] = ' '.join(output.strip().splitlines()[-3:])[:300]
        row['command'] = command
        self.rows.append(row)
        print(f'    {status} in {seconds:.1f}s', flush=True)
        return status == 'ok'

    def write(self) -> str:
        from timm_mimo.outputs import write_csv
        path = os.path.join(self.out, 'gpu_check.csv')
        columns = list(OrderedDict.fromkeys(key for row in self.rows for key in row))
        write_csv(path, [{key: row.get(key, '') for key in columns} for row in self.rows])  # atomically
        self.log.close()
        return path


def _csv_rows(path: str) -> List[Dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def _model_table_figures(path: str) -> Dict[str, Any]:
    figures = OrderedDict()
    for row in _csv_rows(path):
        for key in ('ratio_train_samples_per_sec', 'ratio_infer_samples_per_sec', 'train_step_time'):
            if row.get(key):
                figures[f'{row["model"]}:{key}'] = row[key]
    return figures


def _loop_figures(path: str) -> Dict[str, Any]:
    figures = OrderedDict()
    for row in _csv_rows(path):
        for key in ('loop_step_time', 'train_step_time', 'ratio_loop_to_step', 'ratio_epoch_to_backbone'):
            if row.get(key):
                figures[f'{row["model"]}:{key}'] = row[key]
    return figures


def _projection_figures(path: str, epochs: int = 300) -> Dict[str, Any]:
    row = _csv_rows(path)[-1]
    step_ms, steps = float(row['loop_step_time']), int(row['steps_per_epoch'])
    return OrderedDict([(f'{row["model"]}:loop_step_time', row['loop_step_time']),
                        (f'{row["model"]}:steps_per_epoch', steps),
                        (f'{row["model"]}:projected_{epochs}_epochs_min', round(step_ms * steps * epochs / 60000, 1))])


def _train_figures(run_dir: str) -> Dict[str, Any]:
    rows = _csv_rows(os.path.join(run_dir, 'summary.csv'))
    return dict(train_loss=rows[-1].get('train_loss'), eval_top1=rows[-1].get('eval_top1'))


def _validate_figures(path: str) -> Dict[str, Any]:
    with open(path) as f:
        results = json.load(f)
    return {key: results[key] for key in ('top1', 'member_top1', 'loss', 'ece') if key in results}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point in the top-level handler (:func:`timm_mimo.cli.errors.handle_errors`): one ``error:`` line for
    anything that stops the check itself (a part that fails is a row of its table)."""
    from timm_mimo.cli.errors import handle_errors
    return handle_errors(_main)(argv)


def _main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--data-dir', default='', help='CIFAR-10: an image folder with train/ and test/ splits, or '
                                                        "torchvision's files with --dataset torch/cifar10")
    parser.add_argument('--dataset', default='', help='timm dataset name, e.g. torch/cifar10 (default: image folder)')
    parser.add_argument('--val-split', default='test', help='evaluation split of the data (default: test)')
    parser.add_argument('--cpu', action='store_true', help='tiny sizes on the CPU (a few steps of every part)')
    parser.add_argument('--workers', type=int, default=8, help='loader workers (default: 8)')
    parser.add_argument('--out', default='', help='output folder, new or empty (default: '
                                                  'results/gpu_check/<date>-<device>)')
    parser.add_argument('--budget-minutes', type=float, default=None,
                        help='time for the whole check (default: 8 on a GPU, 20 in --cpu mode)')
    args = parser.parse_args(argv)
    import torch
    if not args.cpu and not torch.cuda.is_available():
        parser.error('no CUDA device here: the GPU sizes (B = 256, WRN-28-10 epochs) would run for hours on a CPU; '
                     'use --cpu for the tiny check of every command')
    if args.data_dir and not os.path.isdir(args.data_dir):
        parser.error(f'--data-dir {args.data_dir!r} is not a folder')
    if args.out and os.path.exists(args.out) and not os.path.isdir(args.out):
        parser.error(f'--out {args.out!r} is a file: give a new or empty folder')
    if args.out and os.path.isdir(args.out) and os.listdir(args.out):
        parser.error(f'--out {args.out!r} already holds files: give a new or empty folder (nothing is overwritten)')
    if args.budget_minutes is not None and args.budget_minutes <= 0:
        parser.error(f'--budget-minutes {args.budget_minutes:g}: must be > 0')
    if not args.cpu and not args.data_dir:
        parser.error('--data-dir is needed on a GPU (a CIFAR-10 image folder, or torchvision files with '
                     '--dataset torch/cifar10)')
    budget_minutes = args.budget_minutes or (20.0 if args.cpu else 8.0)

    python = sys.executable
    torchrun = os.path.join(os.path.dirname(python), 'torchrun')
    stamp = time.strftime('%Y%m%d-%H%M%S')
    kind = 'cpu' if args.cpu else 'gpu'
    out = os.path.abspath(args.out or os.path.join(REPO, 'results', 'gpu_check', f'{stamp}-{kind}'))
    os.makedirs(out, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''), HF_HUB_OFFLINE='1')
    check = Check(out, env, 60 * budget_minutes)
    work = tempfile.mkdtemp(prefix='gpu_check-')

    if args.cpu:
        data_dir = args.data_dir or os.path.join(work, 'digits')
        if not args.data_dir:
            _write_digits(data_dir)
        tiny = _tiny_cpu_flags(data_dir)
        val_split = args.val_split if args.data_dir else 'validation'
        table_models = ['cut_mixmo', *tiny['model'][:4]]  # --model NAME --model-kwargs ...: the WRN-10-1 Cut-MixMo
        bench_flags = ['--num-classes', '10', '-b', '4', '--rounds', '1', '--min-seconds', '0.05', '--device', 'cpu']
        compiled_models = table_models
        loop_model = 'cut_mixmo'
        loop_shared = [*tiny['model'], *tiny['data'], '-b', '16', '--workers', '1', '--val-split', '', '--device',
                       'cpu']
        loop_steps = ['--steps', '2', '--warmup-steps', '1', '--rounds', '1']
        recipe = ['--model', 'cut_mixmo', *tiny['model'], *tiny['data'], '-b', '32', '--batch-repeat', '2',
                  '--lr', '0.05', '--device', 'cpu', '--workers', '1', '--val-split', val_split]
        target_flags = [*loop_shared, '--device-data', '--torchcompile', 'aot_eager']
        target_steps, smoke_model = loop_steps, []
        device, limit, backend = 'cpu', 300, 'aot_eager'  # dynamo + AOTAutograd graphs, no C++ code generation
    else:
        data = ['--data-dir', args.data_dir, '--dataset', args.dataset]
        table_models = GPU_MODELS
        bench_flags = ['-b', '256', '--amp', '--amp-dtype', 'bfloat16', '--channels-last', '--rounds', '3',
                       '--min-seconds', '0.5']
        compiled_models = GPU_MODELS[:1]
        loop_model = 'cut_mixmo_wrn28_10'
        loop_shared = [*data, '--crop-pad', '4', '-b', '64', '--workers', str(args.workers), '--amp',
                       '--channels-last', '--val-split', '', '--num-classes', '10']
        loop_steps = ['--steps', '20', '--warmup-steps', '5', '--rounds', '3']
        recipe = ['--config', RECIPE, *data, '--workers', str(args.workers), '--channels-last',
                  '--val-split', args.val_split]
        # the 10-minute target: the WRN-28-2 member of the recipe, data on the device, the step in CUDA graphs
        target_flags = ['--config', RECIPE, *data, '--workers', str(args.workers), '--val-split', '', '--device-data',
                        '--amp', '--amp-dtype', 'bfloat16', '--channels-last', '--torchcompile', 'inductor',
                        '--torchcompile-mode', 'reduce-overhead']
        target_steps = ['--steps', '300', '--warmup-steps', '30', '--rounds', '2']
        smoke_model = ['--model', TARGET_MODEL]  # the nccl smoke needs no WRN-28-10 epoch
        device, limit, backend = 'cuda', 240, 'inductor'
    recipe += ['--epochs', '1', '--warmup-epochs', '0', '--log-interval', '200', '--output', work]

    table = os.path.join(out, 'models_eager.csv')
    check.run('model table (eager)', [python, 'benchmark.py', '--model', *table_models, *bench_flags, '--no-memory',
                                      '--results-file', table], limit, lambda: _model_table_figures(table))
    compiled = os.path.join(out, 'models_compiled.csv')
    check.run(f'model table (--torchcompile {backend}, train step)',
              [python, 'benchmark.py', '--model', *compiled_models, *bench_flags, '--no-memory', '--bench', 'train',
               '--torchcompile', backend, '--results-file', compiled], limit * 2,
              lambda: _model_table_figures(compiled))
    for name, extra in (('loop (image folder)', []), ('loop (--device-data)', ['--device-data'])):
        path = os.path.join(out, f'loop{"_device_data" if extra else ""}.csv')
        check.run(name, [python, 'benchmark.py', 'loop', '--model', loop_model, '--batch-repeat', '2', *loop_steps,
                         '--results-file', path, '--', *loop_shared, *extra], limit,
                  lambda p=path: _loop_figures(p))
    fp16_dir, bf16_dir = os.path.join(work, 'epoch-fp16'), os.path.join(work, 'epoch-bf16')
    check.run('train.py epoch, --amp float16 + GradScaler',
              [python, 'train.py', *recipe, '--amp', '--amp-dtype', 'float16', '--experiment', 'epoch-fp16'],
              limit * 1.5, lambda: _train_figures(fp16_dir))
    check.run('train.py epoch, bfloat16 + --device-data',
              [python, 'train.py', *recipe, '--amp', '--amp-dtype', 'bfloat16', '--device-data', '--experiment',
               'epoch-bf16'], limit * 1.5, lambda: _train_figures(bf16_dir))
    results = os.path.join(out, 'validate.json')
    check.run('validate.py', [python, 'validate.py', '--config', os.path.join(fp16_dir, 'args.yaml'),
                              '--checkpoint', os.path.join(fp16_dir, 'last.pth.tar'), '--results-file', results],
              limit, lambda: _validate_figures(results))
    check.run(f'torchrun, 1 process ({"nccl" if device == "cuda" else "gloo"})',
              [torchrun, '--nproc_per_node', '1', '--standalone', 'train.py', *recipe, *smoke_model, '--experiment',
               'torchrun', '--amp', '--amp-dtype', 'bfloat16', '--device-data'], limit,
              lambda: _train_figures(os.path.join(work, 'torchrun')))
    target = os.path.join(out, 'loop_target.csv')
    check.run('10-minute target: loop of Cut-MixMo WRN-28-2 b = 2, --device-data, compiled'
              + (' with CUDA graphs' if device == 'cuda' else ''),
              [python, 'benchmark.py', 'loop', '--model', TARGET_MODEL if device == 'cuda' else loop_model,
               '--batch-repeat', '2', '--no-backbone', *target_steps, '--results-file', target, '--', *target_flags],
              limit, lambda: _projection_figures(target))
    path = check.write()
    failed = [row['part'] for row in check.rows if row['status'] != 'ok']
    print(f'wrote {path} and gpu_check.log in {out}; {len(check.rows) - len(failed)} of {len(check.rows)} parts ok'
          + (f'; failed: {", ".join(failed)}' if failed else ''))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
