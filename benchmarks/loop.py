"""The real training loop of a MIMO model and of its backbone, side by side: loop throughput against the isolated step.

    python benchmark.py loop --model cut_mixmo_wrn28_2 --batch-repeat 2 --steps 40 -- \\
        --data-dir data/cifar10 --crop-pad 4 -b 128 --workers 4 --amp --channels-last

Everything after ``--`` is ``timm-mimo-train``'s flags, shared by both sides (data, batch size, workers, AMP,
channels-last, ``--device-data``, ``--torchcompile``, ``--no-prefetcher``...); ``--batch-repeat`` and the MIMO flags
apply to the MIMO side only. Each side is built by the training command line's own functions (model, task, data
split, batch-repetition sampler, optimizer, scheduler, loader with its workers and prefetcher, ``Run``) and measured
twice:

* **loop**: ``--steps`` optimizer steps of ``Run.train_step`` pulling batches from the real loader (images decoded and
  augmented in the workers, plans drawn there, copies and normalisation by the prefetcher), after ``--warmup-steps``;
* **step**: the same number of steps fed from batches already on the device (the first few of the loader, cycled):
  what the step costs without the data path.

Both sides are built first and measured in alternating rounds (``--rounds``, the best of each kept), like every other
benchmark family here.

``loop / step`` near 1 means the data path keeps up with the step. The MIMO side's ratios to the backbone (same
images per step) are printed too; with batch repetition b an epoch has b times the steps, so the epoch ratio is
``b · step_time(MIMO) / step_time(backbone)``.
"""
import argparse
import itertools
import time
from collections import OrderedDict
from typing import Any, Dict, Iterator, List, Optional, Sequence

import torch

from benchmarks.common import print_table
from benchmarks.models import backbone_model_kwargs
from timm_mimo.outputs import write_csv

__all__ = ['add_arguments', 'run', 'measure']

CACHED_BATCHES = 8  # batches kept on the device for the isolated step (both plan kinds among them)


def _count(minimum: int) -> Any:
    """argparse type: an integer >= ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'{text!r} is not an integer') from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f'{value} must be >= {minimum}')
        return value
    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--model', required=True, help='the MIMO model (or any timm model: then no backbone side)')
    parser.add_argument('--batch-repeat', type=_count(1), default=1, help='b of the MIMO side (default: 1)')
    parser.add_argument('--steps', type=_count(1), default=30, help='timed optimizer steps of each measurement')
    parser.add_argument('--warmup-steps', type=_count(0), default=5, help='untimed steps first (compilation, cuDNN)')
    parser.add_argument('--rounds', type=_count(1), default=3, help='alternating timed rounds (the best one is kept)')
    parser.add_argument('--no-backbone', action='store_true', help='measure the MIMO side alone')
    parser.add_argument('--results-file', default='', help='CSV of the rows')
    parser.add_argument('train_args', nargs=argparse.REMAINDER,
                        help='-- then timm-mimo-train flags shared by both sides (data, -b, workers, AMP, ...)')


def _synchronize(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _build(argv: Sequence[str]) -> Dict[str, Any]:
    """One side's training objects, assembled by the training command line's functions."""
    from timm.data import resolve_data_config
    from timm.utils import init_distributed_device

    from timm_mimo.cli import train
    args = train.parse_args(list(argv))
    device = init_distributed_device(args)
    train.resolve_lr(args)
    torch.manual_seed(args.seed)
    model = train.create_train_model(args)
    args.num_classes_resolved = model.num_classes
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    task = train.build_task(args, model, device)
    data_config = resolve_data_config(vars(args), model=model, verbose=False)
    num_partners = args.batch_size if task.pixel_mix is not None else 0
    data = train.open_train_data(args, data_config, num_partners)
    optimizer = train.create_optimizer(args, model, device)
    scheduler, num_epochs = train.create_scheduler(args, optimizer, data.sampler.steps_per_epoch)
    loader = train.create_train_loader(args, data, task, num_epochs, device, data_config)
    if args.torchcompile:
        task.compile(backend=args.torchcompile, mode=args.torchcompile_mode)
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
    run = train.Run(args, task, optimizer, scheduler, num_epochs, data.sampler.steps_per_epoch, device)
    return dict(args=args, device=device, model=model, task=task, loader=loader, sampler=data.sampler, run=run)


def _timed_steps(run: Any, batches: Any, first_step: int, count: int, device: torch.device) -> float:
    """Seconds for ``count`` optimizer steps (device work included)."""
    _synchronize(device)
    start = time.perf_counter()
    for step in range(first_step, first_step + count):
        run.train_step(batches, 0, step % run.steps_per_epoch)
    _synchronize(device)
    return time.perf_counter() - start


def _endless(loader: Any, sampler: Any) -> Iterator[Any]:
    """The loader's batches epoch after epoch (a new epoch re-seeds the sampler, as the training loop does)."""
    epoch = 0
    while True:
        sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def measure(sides: Dict[str, Dict[str, Any]], steps: int, warmup: int, rounds: int) -> Dict[str, Dict[str, Any]]:
    """Loop and isolated-step seconds per step of every side, in alternating rounds (the best round of each kept), so
    that slow drift of the machine hits every side alike."""
    for side in sides.values():
        side['task'].train()
        side['batches'] = _endless(side['loader'], side['sampler'])
        side['cached'] = itertools.cycle([next(side['batches']) for _ in range(CACHED_BATCHES)])
        _timed_steps(side['run'], side['batches'], 0, warmup, side['device'])  # workers started, kernels chosen
        _timed_steps(side['run'], side['cached'], 0, warmup, side['device'])
    best = {name: dict(loop=float('inf'), step=float('inf')) for name in sides}
    for round_index in range(rounds):
        for kind, source in (('loop', 'batches'), ('step', 'cached')):
            for name, side in sides.items():
                seconds = _timed_steps(side['run'], side[source], warmup + round_index * steps, steps,
                                       side['device'])
                best[name][kind] = min(best[name][kind], seconds / steps)
    return best


def _row(side: Dict[str, Any], times: Dict[str, float]) -> Dict[str, Any]:
    args = side['args']
    images_per_step = args.batch_size * args.grad_accum_steps * args.world_size
    return OrderedDict(
        model=args.model, batch_size=args.batch_size, batch_repeat=args.batch_repeat, workers=args.workers,
        device=str(side['device']), loop_samples_per_sec=round(images_per_step / times['loop'], 2),
        step_samples_per_sec=round(images_per_step / times['step'], 2),
        loop_step_time=round(1000 * times['loop'], 3), train_step_time=round(1000 * times['step'], 3),
        ratio_loop_to_step=round(times['step'] / times['loop'], 4), steps_per_epoch=side['sampler'].steps_per_epoch,
        mimo=side['task'].mimo, backbone=getattr(side['model'], 'backbone_name', None))


def _backbone_argv(model_name: str, shared: List[str]) -> Optional[List[str]]:
    """The backbone side's flags: its name and the architecture's own model kwargs, no MIMO options."""
    import timm

    from timm_mimo.cli import train
    from timm_mimo.metrics import is_mimo
    args = train.parse_args(['--model', model_name, *shared])
    probe = timm.create_model(model_name, **args.model_kwargs)
    if not is_mimo(probe):
        return None
    kwargs = backbone_model_kwargs(probe, args.model_kwargs)
    flags = ['--model-kwargs', *[f'{k}={v}' for k, v in kwargs.items()]] if kwargs else []
    return ['--model', probe.backbone_name, *shared, *flags]


def run(args: argparse.Namespace) -> List[Dict[str, Any]]:
    shared = list(args.train_args)
    if shared[:1] == ['--']:
        shared = shared[1:]
    backbone_argv = None if args.no_backbone else _backbone_argv(args.model, shared)
    sides = OrderedDict()
    if backbone_argv is not None:
        sides['backbone'] = _build(backbone_argv)
    sides['model'] = _build(['--model', args.model, '--batch-repeat', str(args.batch_repeat), *shared])
    times = measure(sides, args.steps, args.warmup_steps, args.rounds)
    rows = [_row(sides[name], times[name]) for name in sides]
    if backbone_argv is not None:
        mimo, base = rows[-1], rows[0]
        mimo['ratio_step_to_backbone'] = round(mimo['step_samples_per_sec'] / base['step_samples_per_sec'], 4)
        mimo['ratio_loop_to_backbone'] = round(mimo['loop_samples_per_sec'] / base['loop_samples_per_sec'], 4)
        mimo['ratio_epoch_to_backbone'] = round(args.batch_repeat * base['loop_samples_per_sec']
                                                / mimo['loop_samples_per_sec'], 4)
    columns = ['model', 'device', 'batch_size', 'batch_repeat', 'workers', 'loop_samples_per_sec',
               'step_samples_per_sec', 'loop_step_time', 'train_step_time', 'ratio_loop_to_step',
               'ratio_step_to_backbone', 'ratio_loop_to_backbone', 'ratio_epoch_to_backbone']
    print_table(rows, columns)
    print(f'best of {args.rounds} alternating rounds of {args.steps} steps after {args.warmup_steps} warm-up steps; '
          f'loop = real loader (workers, plans, prefetcher), step = batches already on the device; '
          f'threads {torch.get_num_threads()}; flags: {" ".join(shared)}')
    if args.results_file:
        write_csv(args.results_file, rows)  # atomically
    return rows
