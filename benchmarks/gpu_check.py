#!/usr/bin/env python3
"""The GPU check: one script that shows what the training path does on a GPU, and gives its answer whatever happens.

    python benchmarks/gpu_check.py --data-dir /data/cifar10            # a CIFAR-10 image folder (train/, test/)
    python benchmarks/gpu_check.py --data-dir /data --dataset torch/cifar10   # torchvision's CIFAR-10 files
    python benchmarks/gpu_check.py --cpu                                 # tiny sizes on the CPU (what CI runs)

First the machine is recorded (GPU name, driver, torch, CUDA, cuDNN, timm versions; in ``--cpu`` mode the CPU, its
cores and load). Then the parts run, each a real command of this repository in its own process group with its own
time limit (on a timeout the whole group is killed: loader workers and ``torchrun``'s children included; a failed,
timed-out or skipped part is recorded and the check goes on). The headline parts come first:

1. ``benchmark.py``: the model table at B = 256 (bfloat16 autocast, channels-last), eager: Cut-MixMo WRN-28-10,
   MixShare WRN-28-5, MixViT on the papers' ConViT and on DeiT-S, each against its backbone (target: train step
   >= 0.95x the backbone's);
2. ``benchmark.py loop``: the real training loop (loader workers, plans, prefetcher) of Cut-MixMo WRN-28-10 b = 2
   and of WRN-28-10 against their isolated steps and their loaders alone (target: loop >= 0.9x its step);
3. the same loop with a slow data path (``--loader-share 0.4``: the loader delivers 0.4x the step rate), which the
   loop must see (loop / step <= 0.45);
4. the 10-minute target: ``train.py`` runs a few real epochs of the Cut-MixMo WRN-28-2 b = 2 CIFAR-10 recipe (batch
   64, ``--device-data``, bfloat16, channels-last, the whole step compiled with CUDA graphs), evaluation and
   checkpoints included; from the time of each line it prints, the run's wall time (start-up and compilation
   included) and its steady epoch time give the 300-epoch projection: wall + (300 - epochs) x epoch time
   (target: <= 10 minutes);

then the rest: the compiled model table (inductor, and ``--torchcompile-mode reduce-overhead``), the loop with
``--device-data``, one ``train.py`` epoch with float16 AMP + GradScaler, ``validate.py`` on its checkpoint, and a
one-process ``torchrun`` run (nccl on CUDA, gloo on the CPU; recorded as skipped when ``torchrun`` is missing).

The CPU mode runs every part on a WRN-10-1 Cut-MixMo at 8 px (sklearn's digits unless ``--data-dir`` is given), with
a few steps each and ``--torchcompile aot_eager`` (dynamo and AOTAutograd graphs without inductor's C++ code
generation): it checks that every command works. There ``reduce-overhead`` (CUDA graphs) is skipped, and the float16
epoch runs bfloat16, said in its name: ``train.py`` autocasts bfloat16 on the CPU (float16 + GradScaler is its CUDA
path).

The whole check keeps to ``--budget-minutes`` (10 on a GPU): each part's limit is cut to what is left, a part that no
longer fits is recorded as skipped. Refused before anything is written: the GPU sizes without a CUDA device, a
``--data-dir`` that does not exist, an ``--out`` that is a file or a folder that already holds files.

Everything lands in ``--out`` (default ``results/gpu_check/<date>-<device>``): ``machine.json``, ``gpu_check.log``
(every command and its output), ``gpu_check.csv`` (one row per part) and ``gpu_check.json`` (the machine, the parts
and the summary: every figure against its target), rewritten after each part; the summary table is printed at the end.
"""
import argparse
import csv
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # run as a script: benchmarks/ is not a package on sys.path then
    sys.path.insert(0, REPO)

GPU_MODELS = ['cut_mixmo_wrn28_10', 'mixshare_wrn28_5', 'mixvit_convit_gpsa5_ca2', 'mixvit_deit_small_patch16_224']
RECIPE = 'cut_mixmo_wrn28_10_cifar10_b2'
TARGET_MODEL = 'cut_mixmo_wrn28_2'  # 300 epochs of its b = 2 recipe in one 10-minute GPU job
TARGET_EPOCHS = 300
TARGET_MINUTES = 10.0
KILL_GRACE_SECONDS = 10  # SIGTERM to a timed-out part's process group, then SIGKILL after this

Figure = Tuple[str, Any, Optional[str], Optional[float], Tuple[str, ...]]  # name, value, op, bound, where it applies


def figure(name: str, value: Any, op: Optional[str] = None, bound: Optional[float] = None,
           applies: Tuple[str, ...] = ('gpu',)) -> Figure:
    """One summary figure; ``op`` / ``bound`` its target (``applies``: the modes, 'gpu' / 'cpu', it is judged in)."""
    return name, value, op, bound, applies


@dataclass
class Result:
    """What one part's process did: status, seconds, and every output line with the time it arrived."""
    status: str
    seconds: float
    lines: List[Tuple[float, str]] = field(default_factory=list)
    start: float = 0.0
    end: float = 0.0

    @property
    def output(self) -> str:
        return ''.join(line for _, line in self.lines)


@dataclass
class Part:
    """One command of the check.

    Attributes:
        name: What it checks (the summary's label).
        argv: The command (``python benchmark.py ...``, ``python train.py ...``, ``torchrun ... train.py ...``).
        timeout: Seconds it may run (cut to the budget left).
        figures: Reads the part's figures from its outputs and the :class:`Result` (``None``: status only).
        headline: Runs first.
        skip: A reason to record the part as skipped without running it (e.g. no ``torchrun``): it counts as not ok.
        not_here: A reason why the part does not apply in this mode (``reduce-overhead`` on the CPU): recorded as
            ``n/a``, not run, not a failure.
    """
    name: str
    argv: List[str]
    timeout: float
    figures: Optional[Callable[[Result], List[Figure]]] = None
    headline: bool = False
    skip: str = ''
    not_here: str = ''


# --------------------------------------------------------------------------------------------------------------------
# The machine
# --------------------------------------------------------------------------------------------------------------------

def _command_output(argv: Sequence[str]) -> str:
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=20, cwd=REPO).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ''


def _cpu_model() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _commit() -> Optional[str]:
    """The checkout's commit, ``-dirty`` when files differ from it; ``None`` outside a git checkout."""
    commit = _command_output(['git', 'rev-parse', 'HEAD'])
    if not commit:
        return None
    return commit + ('-dirty' if _command_output(['git', 'status', '--porcelain', '--untracked-files=no']) else '')


def machine_record() -> Dict[str, Any]:
    """The machine and software the figures come from (first thing the check writes)."""
    import timm
    import torch
    record: Dict[str, Any] = OrderedDict(
        time_utc=time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()), hostname=platform.node(),
        platform=platform.platform(), python=platform.python_version(), torch=torch.__version__,
        timm=timm.__version__, cuda=torch.version.cuda, cudnn=None,
        commit=_commit(),
        cpu=_cpu_model(), cpu_count=os.cpu_count(), load_average=[round(x, 2) for x in os.getloadavg()])
    if torch.cuda.is_available():
        record['cudnn'] = torch.backends.cudnn.version()
        props = torch.cuda.get_device_properties(0)
        record.update(gpu=torch.cuda.get_device_name(0), gpu_count=torch.cuda.device_count(),
                      gpu_capability='.'.join(map(str, torch.cuda.get_device_capability(0))),
                      gpu_memory_gib=round(props.total_memory / 2 ** 30, 1))
        smi = _command_output(['nvidia-smi', '--query-gpu=driver_version', '--format=csv,noheader'])
        record['driver'] = smi.splitlines()[0] if smi else None
    else:
        record.update(gpu=None, driver=None)
    return record


# --------------------------------------------------------------------------------------------------------------------
# Running a part
# --------------------------------------------------------------------------------------------------------------------

def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the part's whole process group (it runs in its own session), SIGKILL if it is still there."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_SECONDS), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            if sig == signal.SIGTERM:  # the leader left; its children (workers) may not have: end them too
                os.killpg(proc.pid, signal.SIGKILL)
            return
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return


def run_process(argv: Sequence[str], timeout: float, env: Dict[str, str], log: Any) -> Result:
    """Run ``argv`` in a new session (its own process group), stream its output into ``log`` with the time each line
    arrived; on a timeout (or an interrupt of the check) kill the whole group."""
    start = time.perf_counter()
    try:
        proc = subprocess.Popen(list(argv), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors='replace', bufsize=1, start_new_session=True)
    except OSError as exc:
        return Result(f'not started ({type(exc).__name__}: {exc})', 0.0, start=start, end=start)
    lines: List[Tuple[float, str]] = []

    def read() -> None:
        for line in proc.stdout:
            lines.append((time.perf_counter(), line))
            log.write(line)
        log.flush()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        code = proc.wait(timeout=timeout)
        status = 'ok' if code == 0 else f'exit {code}'
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        status = f'timeout after {timeout:.0f}s (process group killed)'
    except BaseException:  # interrupted: leave nothing running on the device
        _kill_group(proc)
        raise
    reader.join(timeout=KILL_GRACE_SECONDS)
    end = time.perf_counter()
    return Result(status, end - start, lines, start, end)


def _verdict(op: Optional[str], bound: Optional[float], value: Any, applies: Tuple[str, ...], mode: str) -> str:
    if op is None:
        return ''
    if mode not in applies:
        return f'n/a ({mode} sizes)'
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 'MISS (no value)'
    ok = number >= bound if op == '>=' else number <= bound
    return 'OK' if ok else 'MISS'


class Check:
    """Runs the parts within one time budget, logs every command and its output, keeps one row per part and the
    summary figures, and rewrites ``gpu_check.csv`` / ``gpu_check.json`` after every part."""

    MIN_PART_SECONDS = 20  # a part with less time left than this is skipped, not started

    def __init__(self, out: str, env: Dict[str, str], budget_seconds: float, machine: Dict[str, Any], mode: str):
        self.out = out
        self.env = env
        self.mode = mode
        self.machine = machine
        self.rows: List[Dict[str, Any]] = []
        self.summary: List[Dict[str, Any]] = []
        self.log = open(os.path.join(out, 'gpu_check.log'), 'a')
        self.deadline = time.perf_counter() + budget_seconds

    def run(self, part: Part) -> bool:
        """Run one part; record its status, duration and figures."""
        command = ' '.join(shlex.quote(a) for a in part.argv)
        if part.not_here:
            self.log.write(f'\n=== {part.name}: n/a, {part.not_here}\n$ {command}\n')
            self._record(OrderedDict(part=part.name, status=f'n/a ({part.not_here})', seconds=0, command=command))
            print(f'--- {part.name}: n/a ({part.not_here})', flush=True)
            return False
        left = self.deadline - time.perf_counter()
        reason = part.skip or (f'{max(left, 0):.0f}s of the budget left' if left < self.MIN_PART_SECONDS else '')
        if reason:
            self.log.write(f'\n=== {part.name}: skipped, {reason}\n$ {command}\n')
            self._record(OrderedDict(part=part.name, status=f'skipped ({reason})', seconds=0, command=command))
            print(f'--- {part.name}: skipped ({reason})', flush=True)
            return False
        timeout = min(part.timeout, left)
        self.log.write(f'\n=== {part.name}  [{time.strftime("%H:%M:%S")}]\n$ {command}\n')
        self.log.flush()
        print(f'--- {part.name}: {command}', flush=True)
        result = run_process(part.argv, timeout, self.env, self.log)
        self.log.write(f'\n=== {part.name}: {result.status} in {result.seconds:.1f}s\n')
        self.log.flush()
        row = OrderedDict(part=part.name, status=result.status, seconds=round(result.seconds, 1))
        if result.status == 'ok' and part.figures is not None:
            try:
                for name, value, op, bound, applies in part.figures(result):
                    row[name] = value
                    self.summary.append(OrderedDict(
                        part=part.name, figure=name, value=value,
                        target=f'{op} {bound:g}' if op is not None else '',
                        verdict=_verdict(op, bound, value, applies, self.mode)))
            except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
                row['figures_error'] = f'{type(exc).__name__}: {exc}'
        if result.status != 'ok':
            row['tail'] = ' '.join(result.output.strip().splitlines()[-3:])[:300]
        row['command'] = command
        self._record(row)
        print(f'    {result.status} in {result.seconds:.1f}s', flush=True)
        return result.status == 'ok'

    def _record(self, row: Dict[str, Any]) -> None:
        self.rows.append(row)
        self.write()

    def write(self) -> str:
        """``gpu_check.csv`` (one row per part) and ``gpu_check.json`` (machine, parts, summary)."""
        path = os.path.join(self.out, 'gpu_check.csv')
        columns = list(OrderedDict.fromkeys(key for row in self.rows for key in row))
        with open(path, 'w', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.rows)
        with open(os.path.join(self.out, 'gpu_check.json'), 'w') as f:
            json.dump(OrderedDict(mode=self.mode, machine=self.machine, parts=self.rows, summary=self.summary), f,
                      indent=1, default=str)
        return path

    def print_summary(self) -> None:
        """The summary table on stdout: every figure against its target, then each part's status."""
        print('\n| part | figure | value | target | verdict |\n|---|---|---|---|---|')
        for row in self.summary:
            print(f'| {row["part"]} | {row["figure"]} | {row["value"]} | {row["target"]} | {row["verdict"]} |')
        print('\n| part | status | seconds |\n|---|---|---|')
        for row in self.rows:
            print(f'| {row["part"]} | {row["status"]} | {row["seconds"]} |')
        sys.stdout.flush()


# --------------------------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------------------------

def _csv_rows(path: str) -> List[Dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def _model_table_figures(path: str) -> Callable[[Result], List[Figure]]:
    def read(result: Result) -> List[Figure]:
        figures = []
        for row in _csv_rows(path):
            name = row['model']
            if row.get('ratio_train_samples_per_sec'):
                figures.append(figure(f'{name}: train step / backbone', row['ratio_train_samples_per_sec'], '>=',
                                      0.95))
            if row.get('ratio_infer_samples_per_sec'):
                mixmo = 'mixvit' not in name
                figures.append(figure(f'{name}: inference / backbone', row['ratio_infer_samples_per_sec'],
                                      '>=' if mixmo else None, 0.97 if mixmo else None))
            if row.get('train_step_time'):
                figures.append(figure(f'{name}: train step ms', row['train_step_time']))
        return figures
    return read


def _loop_figures(path: str, slow: bool) -> Callable[[Result], List[Figure]]:
    def read(result: Result) -> List[Figure]:
        figures = []
        for row in _csv_rows(path):
            name = row['model']
            if slow:  # the instrument must see a data path at 0.4x the step rate: on the GPU and on the CPU
                figures.append(figure(f'{name}: loader / step (delay {row["data_delay_ms"]} ms)',
                                      row['ratio_loader_to_step']))
                figures.append(figure(f'{name}: loop / step, slow data path', row['ratio_loop_to_step'], '<=', 0.45,
                                      ('gpu', 'cpu')))
            else:
                figures.append(figure(f'{name}: loop / step', row['ratio_loop_to_step'], '>=', 0.9))
                figures.append(figure(f'{name}: loader / step', row['ratio_loader_to_step']))
                figures.append(figure(f'{name}: step ms', row['train_step_time']))
        return figures
    return read


def epoch_times(result: Result) -> Tuple[List[float], float]:
    """Seconds from the process start to the end of each epoch (the time its ``Eval:`` line arrived, else its last
    ``Train:`` line), and the whole run's wall time (start-up to exit)."""
    ends: Dict[int, float] = OrderedDict()
    evals: Dict[int, float] = OrderedDict()
    for arrived, line in result.lines:
        words = line.split()
        if len(words) >= 2 and words[0] in ('Train:', 'Eval:') and words[1].isdigit():
            (evals if words[0] == 'Eval:' else ends)[int(words[1])] = arrived - result.start
    ends.update(evals)
    return [ends[epoch] for epoch in sorted(ends)], result.end - result.start


def _target_figures(run_dir: str, epochs: int) -> Callable[[Result], List[Figure]]:
    def read(result: Result) -> List[Figure]:
        ends, wall = epoch_times(result)
        if len(ends) < 2:
            raise ValueError(f'{len(ends)} epoch(s) seen in the output: the projection needs 2 or more')
        steady = statistics.median(b - a for a, b in zip(ends, ends[1:]))
        projected = (wall + (TARGET_EPOCHS - len(ends)) * steady) / 60
        summary = _csv_rows(os.path.join(run_dir, 'summary.csv'))[-1]
        return [figure('epochs run (evaluation, checkpoint each)', len(ends)),
                figure('wall s (start-up, compile, all epochs, exit)', round(wall, 1)),
                figure('start-up + first epoch s', round(ends[0], 1)),
                figure('steady epoch s', round(steady, 2)),
                figure(f'projected {TARGET_EPOCHS} epochs min', round(projected, 2), '<=', TARGET_MINUTES),
                figure('eval_top1 after these epochs', summary.get('eval_top1'))]
    return read


def _train_figures(run_dir: str) -> Callable[[Result], List[Figure]]:
    def read(result: Result) -> List[Figure]:
        row = _csv_rows(os.path.join(run_dir, 'summary.csv'))[-1]
        return [figure('train_loss', row.get('train_loss')), figure('eval_top1', row.get('eval_top1'))]
    return read


def _validate_figures(path: str) -> Callable[[Result], List[Figure]]:
    def read(result: Result) -> List[Figure]:
        with open(path) as f:
            results = json.load(f)
        return [figure(key, results[key]) for key in ('top1', 'member_top1', 'loss', 'ece') if key in results]
    return read


# --------------------------------------------------------------------------------------------------------------------
# The parts
# --------------------------------------------------------------------------------------------------------------------

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


def find_torchrun(python: str) -> Optional[str]:
    """``torchrun`` next to the interpreter, else on ``PATH``; ``None`` when there is none."""
    beside = os.path.join(os.path.dirname(python), 'torchrun')
    if os.path.isfile(beside) and os.access(beside, os.X_OK):
        return beside
    return shutil.which('torchrun')


def plan_parts(cpu: bool, data_dir: str, dataset: str, val_split: str, workers: int, out: str, work: str,
               python: str, torchrun: Optional[str]) -> List[Part]:
    """Every part of the check, headline parts first (the order they run in)."""
    if cpu:
        tiny = _tiny_cpu_flags(data_dir)
        table_models = ['cut_mixmo', *tiny['model'][:4]]  # --model NAME --model-kwargs ...: the WRN-10-1 Cut-MixMo
        bench_flags = ['--num-classes', '10', '-b', '4', '--rounds', '1', '--min-seconds', '0.05', '--device', 'cpu']
        compiled_models = table_models
        loop_model = 'cut_mixmo'
        loop_shared = [*tiny['model'], *tiny['data'], '-b', '16', '--workers', str(workers), '--val-split', '',
                       '--device', 'cpu']
        loop_steps = ['--steps', str(max(10, 10 * workers)), '--warmup-steps', '1', '--rounds', '1']
        recipe = ['--model', 'cut_mixmo', *tiny['model'], *tiny['data'], '-b', '32', '--batch-repeat', '2',
                  '--lr', '0.05', '--device', 'cpu', '--workers', str(workers), '--val-split', val_split]
        target = [*recipe, '--device-data', '--amp', '--amp-dtype', 'bfloat16', '--torchcompile', 'aot_eager',
                  '--warmup-epochs', '0']
        target_epochs, smoke_model = 2, []
        fp16 = ['--amp', '--amp-dtype', 'bfloat16']  # train.py autocasts bfloat16 on the CPU: say so, run it so
        fp16_name = 'train.py epoch, --amp bfloat16 (CPU stand-in: float16 + GradScaler is train.py\'s CUDA path)'
        device, limit, backend = 'cpu', 300, 'aot_eager'
        reduce_overhead_skip = 'reduce-overhead is CUDA graphs: GPU only'
    else:
        data = ['--data-dir', data_dir, '--dataset', dataset]
        table_models = GPU_MODELS
        bench_flags = ['-b', '256', '--amp', '--amp-dtype', 'bfloat16', '--channels-last', '--rounds', '3',
                       '--min-seconds', '0.5']
        compiled_models = GPU_MODELS[:1]
        loop_model = 'cut_mixmo_wrn28_10'
        loop_shared = [*data, '--crop-pad', '4', '-b', '64', '--workers', str(workers), '--amp', '--amp-dtype',
                       'bfloat16', '--channels-last', '--val-split', '', '--num-classes', '10']
        loop_steps = ['--steps', str(max(40, 10 * workers)), '--warmup-steps', '10', '--rounds', '2']
        recipe = ['--config', RECIPE, *data, '--workers', str(workers), '--channels-last', '--val-split', val_split]
        # the 10-minute target: the WRN-28-2 member of the recipe, data on the device, the step in CUDA graphs
        target = ['--config', RECIPE, '--model', TARGET_MODEL, *data, '--workers', str(workers), '--val-split',
                  val_split, '--device-data', '--amp', '--amp-dtype', 'bfloat16', '--channels-last', '--torchcompile',
                  'inductor', '--torchcompile-mode', 'reduce-overhead']
        target_epochs, smoke_model = 3, ['--model', TARGET_MODEL]  # the nccl smoke needs no WRN-28-10 epoch
        fp16 = ['--amp', '--amp-dtype', 'float16']
        fp16_name = 'train.py epoch, --amp float16 + GradScaler'
        device, limit, backend = 'cuda', 240, 'inductor'
        reduce_overhead_skip = ''
    epoch_flags = ['--epochs', '1', '--warmup-epochs', '0', '--log-interval', '200', '--output', work]
    table = os.path.join(out, 'models_eager.csv')
    loop = os.path.join(out, 'loop.csv')
    slow = os.path.join(out, 'loop_slow_data.csv')
    target_dir = os.path.join(work, 'target')
    compiled = os.path.join(out, 'models_compiled.csv')
    reduce_overhead = os.path.join(out, 'models_compiled_reduce_overhead.csv')
    device_data = os.path.join(out, 'loop_device_data.csv')
    fp16_dir = os.path.join(work, 'epoch-fp16')
    validated = os.path.join(out, 'validate.json')
    loop_argv = [python, 'benchmark.py', 'loop', '--model', loop_model, '--batch-repeat', '2', *loop_steps]
    parts = [
        Part('model table (eager)', [python, 'benchmark.py', '--model', *table_models, *bench_flags, '--no-memory',
                                     '--results-file', table], limit, _model_table_figures(table), headline=True),
        Part('loop / step / loader (image folder)', [*loop_argv, '--results-file', loop, '--', *loop_shared],
             limit, _loop_figures(loop, slow=False), headline=True),
        Part('loop / step, slow data path (loader at 0.4x the step rate)',
             [*loop_argv, '--no-backbone', '--loader-share', '0.4', '--results-file', slow, '--', *loop_shared],
             limit, _loop_figures(slow, slow=True), headline=True),
        Part(f'10-minute target: {target_epochs} real epochs of Cut-MixMo WRN-28-2 b = 2 end to end'
             + (' (CUDA graphs)' if device == 'cuda' else ''),
             [python, 'train.py', *target, '--epochs', str(target_epochs), '--log-interval', '1000', '--output',
              work, '--experiment', 'target'], limit * 1.5, _target_figures(target_dir, target_epochs),
             headline=True),
        Part(f'model table (--torchcompile {backend}, train step)',
             [python, 'benchmark.py', '--model', *compiled_models, *bench_flags, '--no-memory', '--bench', 'train',
              '--torchcompile', backend, '--results-file', compiled], limit * 2, _model_table_figures(compiled)),
        Part('model table (--torchcompile inductor --torchcompile-mode reduce-overhead, train step)',
             [python, 'benchmark.py', '--model', *compiled_models, *bench_flags, '--no-memory', '--bench', 'train',
              '--torchcompile', 'inductor', '--torchcompile-mode', 'reduce-overhead', '--results-file',
              reduce_overhead], limit * 2, _model_table_figures(reduce_overhead), not_here=reduce_overhead_skip),
        Part('loop / step / loader (--device-data)',
             [*loop_argv, '--results-file', device_data, '--', *loop_shared, '--device-data'], limit,
             _loop_figures(device_data, slow=False)),
        Part(fp16_name, [python, 'train.py', *recipe, *fp16, *epoch_flags, '--experiment', 'epoch-fp16'],
             limit * 1.5, _train_figures(fp16_dir)),
        Part('validate.py', [python, 'validate.py', '--config', os.path.join(fp16_dir, 'args.yaml'), '--checkpoint',
                             os.path.join(fp16_dir, 'last.pth.tar'), '--results-file', validated], limit,
             _validate_figures(validated)),
        Part(f'torchrun, 1 process ({"nccl" if device == "cuda" else "gloo"})',
             [torchrun or 'torchrun', '--nproc_per_node', '1', '--standalone', 'train.py', *recipe, *smoke_model,
              *epoch_flags, '--experiment', 'torchrun', '--amp', '--amp-dtype', 'bfloat16', '--device-data'], limit,
             _train_figures(os.path.join(work, 'torchrun')),
             skip='' if torchrun else 'no torchrun next to the interpreter or on PATH'),
    ]
    return sorted(parts, key=lambda part: not part.headline)  # stable: headline parts first, each group in order


def parse_part_arguments(argv: Sequence[str]) -> argparse.Namespace:
    """Parse a part's command line with the real parser of the command it calls (``benchmark.py`` and its families,
    ``train.py``, ``validate.py``, ``torchrun ... train.py``), and its own checks; raises on a wrong flag."""
    argv = list(argv)
    if os.path.basename(argv[0]) == 'torchrun':
        argv = argv[argv.index('train.py') - 1:]
    script, rest = argv[1], argv[2:]
    if script == 'train.py':
        from timm_mimo.cli import train
        return train.parse_args(rest)
    if script == 'validate.py':
        from timm_mimo.cli import validate
        return validate.parse_args(rest)
    if script != 'benchmark.py':
        raise ValueError(f'unknown command {script!r}')
    import benchmark
    from timm_mimo.cli.args import check_compile
    parser = argparse.ArgumentParser(prog='benchmark.py', exit_on_error=False)
    if rest and rest[0] in benchmark.FAMILIES:
        import importlib
        family = importlib.import_module(benchmark.FAMILIES[rest[0]])
        family.add_arguments(parser)
        args = parser.parse_args(rest[1:])
        if rest[0] == 'loop':
            from timm_mimo.cli import train
            shared = args.train_args[1:] if args.train_args[:1] == ['--'] else args.train_args
            args.train = train.parse_args(['--model', args.model, *shared])
            family._check_round_length(args.steps, shared)
        return args
    from benchmarks import models
    models.add_arguments(parser)
    args = parser.parse_args(rest)
    check_compile(args)
    return args


# --------------------------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------------------------

def _refusal(args: argparse.Namespace, cuda: bool) -> str:
    """Why the command line is refused before anything is written ('' when it is not)."""
    if not args.cpu and not cuda:
        return ('no CUDA device here: the GPU sizes (B = 256, WRN-28-10 epochs) would run for hours on a CPU; use '
                '--cpu for the tiny check of every command')
    if args.data_dir and not os.path.isdir(args.data_dir):
        return f'--data-dir {args.data_dir!r} is not a folder: give a CIFAR-10 image folder (or torchvision files)'
    if args.out and os.path.exists(args.out) and not os.path.isdir(args.out):
        return f'--out {args.out!r} is a file: give a new or empty folder for the results'
    if args.out and os.path.isdir(args.out) and os.listdir(args.out):
        return f'--out {args.out!r} already holds files: give a new or empty folder (nothing is overwritten)'
    if args.budget_minutes is not None and not args.budget_minutes > 0:
        return f'--budget-minutes {args.budget_minutes:g}: must be > 0'
    if args.workers < 0:
        return f'--workers {args.workers}: must be >= 0'
    if not args.cpu and not args.data_dir:
        return ('--data-dir is needed on a GPU (a CIFAR-10 image folder, or torchvision files with --dataset '
                'torch/cifar10)')
    return ''


def _interrupt(signum: int, frame: Any) -> None:
    """SIGTERM: end like Ctrl-C (the running part's process group is killed, the answer so far written)."""
    raise KeyboardInterrupt


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--data-dir', default='', help='CIFAR-10: an image folder with train/ and test/ splits, or '
                                                        "torchvision's files with --dataset torch/cifar10")
    parser.add_argument('--dataset', default='', help='timm dataset name, e.g. torch/cifar10 (default: image folder)')
    parser.add_argument('--val-split', default='test', help='evaluation split of the data (default: test)')
    parser.add_argument('--cpu', action='store_true', help='tiny sizes on the CPU (a few steps of every part)')
    parser.add_argument('--workers', type=int, default=None, help='loader workers (default: 8; --cpu: 1)')
    parser.add_argument('--out', default='', help='output folder, new or empty (default: '
                                                  'results/gpu_check/<date>-<device>)')
    parser.add_argument('--budget-minutes', type=float, default=None,
                        help='time for the whole check (default: 10 on a GPU, 20 in --cpu mode)')
    args = parser.parse_args(argv)
    if args.workers is None:
        args.workers = 1 if args.cpu else 8
    import torch
    refusal = _refusal(args, torch.cuda.is_available())
    if refusal:
        print(f'error: {refusal}', file=sys.stderr)
        return 2
    budget_minutes = args.budget_minutes or (20.0 if args.cpu else 10.0)
    mode = 'cpu' if args.cpu else 'gpu'
    out = os.path.abspath(args.out or os.path.join(REPO, 'results', 'gpu_check',
                                                    f'{time.strftime("%Y%m%d-%H%M%S")}-{mode}'))
    os.makedirs(out, exist_ok=True)
    machine = machine_record()  # first: whatever happens next, the figures say where they come from
    with open(os.path.join(out, 'machine.json'), 'w') as f:
        json.dump(machine, f, indent=1, default=str)
    print('machine: ' + ', '.join(f'{k}={v}' for k, v in machine.items() if v is not None), flush=True)

    python = sys.executable
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''), HF_HUB_OFFLINE='1')
    check = Check(out, env, 60 * budget_minutes, machine, mode)
    work = tempfile.mkdtemp(prefix='gpu_check-')
    data_dir, val_split = args.data_dir, args.val_split
    if args.cpu and not args.data_dir:
        data_dir, val_split = os.path.join(work, 'digits'), 'validation'
        _write_digits(data_dir)
    parts = plan_parts(args.cpu, data_dir, args.dataset, val_split, args.workers, out, work, python,
                       find_torchrun(python))
    interrupted = False
    previous = signal.signal(signal.SIGTERM, _interrupt)  # a terminated check still ends its part's process group
    try:
        for part in parts:
            check.run(part)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the running part's group is killed; still give the answer so far
        interrupted = True
        check.rows.append(OrderedDict(part='(check interrupted)', status='interrupted', seconds=0))
    except Exception as exc:  # a defect of the check itself: still give the answer so far
        check.rows.append(OrderedDict(part='(check error)', status=f'{type(exc).__name__}: {exc}', seconds=0))
    finally:
        signal.signal(signal.SIGTERM, previous)
        path = check.write()
        check.log.close()
        shutil.rmtree(work, ignore_errors=True)
    check.print_summary()
    failed = [row['part'] for row in check.rows if row['status'] != 'ok' and not row['status'].startswith('n/a')]
    missed = [f'{row["part"]}: {row["figure"]}' for row in check.summary if row['verdict'].startswith('MISS')]
    print(f'wrote {path}, gpu_check.json, machine.json and gpu_check.log in {out}; '
          f'{len(check.rows) - len(failed)} of {len(check.rows)} parts ok or n/a'
          + (f'; not ok: {", ".join(failed)}' if failed else '')
          + (f'; targets missed: {len(missed)}' if missed else ''), flush=True)
    if interrupted:
        return 130
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
