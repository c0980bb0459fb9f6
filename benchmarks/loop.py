"""The real training loop of a MIMO model and of its backbone, side by side: loop throughput against the isolated step.

    python benchmark.py loop --model cut_mixmo_wrn28_2 --batch-repeat 2 --steps 40 -- \\
        --data-dir data/cifar10 --crop-pad 4 -b 128 --workers 4 --amp --channels-last

Everything after ``--`` is ``timm-mimo-train``'s flags, shared by both sides (data, batch size, workers, AMP,
channels-last, ``--device-data``, ``--torchcompile``, ``--no-prefetcher``...); ``--batch-repeat`` and the MIMO flags
apply to the MIMO side only. Each side is built by the training command line's own functions (model, task, data
split, batch-repetition sampler, optimizer, scheduler, loader with its workers and prefetcher, ``Run``) and measured
three ways, in steady state:

* **step**: ``--steps`` optimizer steps of ``Run.train_step`` fed from batches already on the device (the first few
  of the loader, cycled): what the step costs without the data path;
* **loop**: ``--steps`` optimizer steps pulling batches from the real loader (images decoded and augmented in the
  workers, plans drawn there, copies and normalisation by the prefetcher);
* **loader**: ``--steps`` batches pulled from the same loader with no step at all: the batches per second the workers
  (and the prefetcher) deliver on their own.

Steady state: while the step is measured the loader's queue fills (``prefetch_factor`` x workers batches, plus the
one the prefetcher holds); a loop or loader round that started on that queue would get those batches for free (a data
path at 0.40 of the step rate read as loop / step 0.89 in 20 steps with 8 workers). Each loop and loader round
therefore first pulls the queued batches untimed (*drains* the queue), so that its timed steps wait for batches the
workers start after the round began; a round must also be at least ``10 x workers`` steps, which bounds what the
workers' batches in progress at the start can hide to 10 %.

``--data-delay-ms N`` makes every batch N ms slower to produce in the loader workers (a sleep in the worker before the
batch is packed: a stand-in for slow storage); the sleeps alone allow no more than one batch per ``N / workers`` ms, and
``ratio_loop_to_delay_floor`` / ``ratio_loader_to_delay_floor`` (time per batch over that floor) must read >= 1: below
it, batches produced before the round were counted; ``--loader-share S`` sets that delay from the measured step and
loader times so that the loader delivers S times the step rate (set again in each round from that round's step; e.g.
0.4: loop / step must then read about 0.4).

With ``--device-data`` the draws of a whole epoch are made ahead (in blocks, by the workers) and copied to the device
one block at a time (:class:`~timm_mimo.loader.DeviceDrawBatches`): nothing is queued per batch, a loop round reads the
block the way training does (crossing an epoch's end when the round does), and a per-batch data delay has no batch to
slow: ``--data-delay-ms`` / ``--loader-share`` are refused there (measure a slow data path on the worker path).

Both sides are built first and measured in alternating rounds (``--rounds``; the best time of each kept, like every
other benchmark family here; the ratios are the median of each round's own, as a round's step, loop and loader run
back to back). ``loop / step`` near 1 means the data path keeps up with the step; ``loader / step`` says by
how much it could (below 1 it cannot). The MIMO side's ratios to the backbone (same images per step) are printed too;
with batch repetition b an epoch has b times the steps, so the epoch ratio is
``b · step_time(MIMO) / step_time(backbone)``.
"""
import argparse
import itertools
import multiprocessing
import statistics
import time
from collections import OrderedDict
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import torch
from torch.utils.data import DataLoader

from benchmarks.common import print_table
from benchmarks.models import backbone_model_kwargs
from timm_mimo.loader import DeviceDrawBatches
from timm_mimo.outputs import write_csv

__all__ = ['add_arguments', 'run', 'measure', 'SlowCollate', 'MIN_STEPS_PER_WORKER']

CACHED_BATCHES = 8  # batches kept on the device for the isolated step (both plan kinds among them)
MIN_STEPS_PER_WORKER = 10  # a round of >= 10 x workers steps: batches in progress at its start hide <= 10 %


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


def _fraction(text: str) -> float:
    """argparse type: a number in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r} is not a number') from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f'{value:g} must be in (0, 1]')
    return value


def _milliseconds(text: str) -> float:
    """argparse type: milliseconds >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r} is not a number') from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f'{value:g} must be >= 0')
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--model', required=True, help='the MIMO model (or any timm model: then no backbone side)')
    parser.add_argument('--batch-repeat', type=_count(1), default=1, help='b of the MIMO side (default: 1)')
    parser.add_argument('--steps', type=_count(1), default=40,
                        help=f'timed optimizer steps (and loader batches) of each round, >= {MIN_STEPS_PER_WORKER} x '
                             'workers (default: 40)')
    parser.add_argument('--warmup-steps', type=_count(0), default=5, help='untimed steps first (compilation, cuDNN)')
    parser.add_argument('--rounds', type=_count(1), default=3, help='alternating timed rounds (the best one is kept)')
    parser.add_argument('--no-backbone', action='store_true', help='measure the MIMO side alone')
    delay = parser.add_mutually_exclusive_group()
    delay.add_argument('--data-delay-ms', type=_milliseconds, default=0.0, metavar='N',
                       help='every batch takes N ms longer to produce in the loader workers (slow storage stand-in)')
    delay.add_argument('--loader-share', type=_fraction, default=None, metavar='S',
                       help='set the delay so that the loader delivers S x the step rate (measured first), e.g. 0.4')
    parser.add_argument('--results-file', default='', help='CSV of the rows')
    parser.add_argument('train_args', nargs=argparse.REMAINDER,
                        help='-- then timm-mimo-train flags shared by both sides (data, -b, workers, AMP, ...)')


def _synchronize(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


class SlowCollate:
    """A loader's collate function that first sleeps a fixed time: every batch takes that much longer to produce in
    the worker that builds it (in the main process without workers), as with slow storage.

    The delay lives in shared memory, so it can be changed after the (persistent) workers started.
    """

    def __init__(self, collate: Callable[[Any], Any], seconds: float = 0.0):
        self.collate = collate
        self.seconds = multiprocessing.RawValue('d', seconds)

    def __call__(self, batch: Any) -> Any:
        delay = self.seconds.value
        if delay > 0:
            time.sleep(delay)
        return self.collate(batch)


def _data_loader(loader: Any) -> DataLoader:
    """The torch ``DataLoader`` under the training command's batches (``Prefetcher`` or moved batches)."""
    inner = loader
    while not isinstance(inner, DataLoader):
        inner = getattr(inner, 'loader', None)
        if inner is None:
            raise TypeError(f'no torch DataLoader found under {type(loader).__name__}')
    return inner


def _queue_depth(loader: DataLoader) -> int:
    """Batches the loader can have ready before they are asked for: ``prefetch_factor`` per worker, plus the one the
    prefetcher holds (without workers the loader loads each batch when asked: only the prefetcher's)."""
    return (loader.prefetch_factor or 0) * loader.num_workers + 1


def _build(argv: Sequence[str], delay_seconds: float) -> Dict[str, Any]:
    """One side's training objects, assembled by the training command line's functions."""
    from timm.data import resolve_data_config
    from timm.utils import init_distributed_device

    from timm_mimo.cli import data_path, optim_factory, run_loop, train, train_model
    args = train.parse_args(list(argv))
    device = init_distributed_device(args)
    optim_factory.resolve_lr(args)
    torch.manual_seed(args.seed)
    model = train_model.create_train_model(args)
    args.num_classes_resolved = model.num_classes
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    task = train_model.build_task(args, model, device)
    data_config = resolve_data_config(vars(args), model=model, verbose=False)
    num_partners = args.batch_size if task.pixel_mix is not None else 0
    data = data_path.open_train_data(args, data_config, num_partners)
    optimizer = optim_factory.create_optimizer(args, model, device)
    scheduler, num_epochs = optim_factory.create_scheduler(args, optimizer, data.sampler.steps_per_epoch)
    loader = data_path.create_train_loader(args, data, task, num_epochs, device, data_config)
    if isinstance(loader, DeviceDrawBatches):  # draws made an epoch ahead: nothing queued per batch
        collating, queue, workers = loader, 0, loader.num_workers
    else:
        collating = _data_loader(loader)
        queue, workers = _queue_depth(collating), collating.num_workers
    slow = SlowCollate(collating.collate_fn, delay_seconds)
    collating.collate_fn = slow  # before the first pass: the workers get it when they start
    if args.torchcompile:
        task.compile(backend=args.torchcompile, mode=args.torchcompile_mode)
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
    run = run_loop.Run(args, task, optimizer, scheduler, num_epochs, data.sampler.steps_per_epoch, device)
    return dict(args=args, device=device, model=model, task=task, loader=loader, sampler=data.sampler, run=run,
                slow=slow, queue=queue, workers=workers)


def _timed_steps(run: Any, batches: Any, first_step: int, count: int, device: torch.device) -> float:
    """Seconds for ``count`` optimizer steps (device work included)."""
    _synchronize(device)
    start = time.perf_counter()
    for step in range(first_step, first_step + count):
        run.train_step(batches, 0, step % run.steps_per_epoch)
    _synchronize(device)
    return time.perf_counter() - start


def _timed_pulls(batches: Iterator[Any], count: int, device: torch.device) -> float:
    """Seconds for ``count`` batches pulled from the loader with no step (copies to the device included)."""
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(count):
        next(batches)
    _synchronize(device)
    return time.perf_counter() - start


def _drain(side: Dict[str, Any]) -> None:
    """Pull the batches the loader has queued (untimed): the next timed round waits for fresh ones."""
    for _ in range(side['queue']):
        next(side['batches'])


def _endless(loader: Any, sampler: Any) -> Iterator[Any]:
    """The loader's batches epoch after epoch (a new epoch re-seeds the sampler, as the training loop does)."""
    epoch = 0
    while True:
        sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def _undelayed_loader_seconds(side: Dict[str, Any], steps: int) -> float:
    """Seconds per batch of the side's loader alone with no delay (best of two drained rounds)."""
    side['slow'].seconds.value = 0.0
    best = float('inf')
    for _ in range(2):
        _drain(side)
        best = min(best, _timed_pulls(side['batches'], steps, side['device']) / steps)
    return best


def _set_loader_share(side: Dict[str, Any], share: float, step_seconds: float) -> None:
    """Set the side's data delay so that its loader delivers ``share`` x the step rate: each worker's batch time (the
    undelayed loader's, times the workers) is filled up to ``workers x step / share``."""
    workers = max(side['workers'], 1)  # without workers the main process builds the batches one by one
    side['slow'].seconds.value = max(0.0, workers * (step_seconds / share - side['undelayed_loader']))


def measure(sides: Dict[str, Dict[str, Any]], steps: int, warmup: int, rounds: int,
            loader_share: Optional[float] = None) -> Dict[str, Dict[str, float]]:
    """Step, loop and loader seconds per step (per batch) of every side, in alternating rounds, so that slow drift
    of the machine hits every side alike: the best round of each time, and the ratios as the median over rounds of
    each round's own ratio (a round's step, loop and loader run back to back). Loop and loader rounds start on a
    drained queue (see the module's docstring); with ``loader_share`` the delay is set in each round from that
    round's step time.
    """
    for side in sides.values():
        side['task'].train()
        side['batches'] = _endless(side['loader'], side['sampler'])
        side['cached'] = itertools.cycle([next(side['batches']) for _ in range(CACHED_BATCHES)])
        _timed_steps(side['run'], side['batches'], 0, warmup, side['device'])  # workers started, kernels chosen
        _timed_steps(side['run'], side['cached'], 0, warmup, side['device'])
        if loader_share is not None:
            side['undelayed_loader'] = _undelayed_loader_seconds(side, steps)
    times = {name: dict(step=[], loop=[], loader=[], delay=[]) for name in sides}
    for round_index in range(rounds):
        first = warmup + round_index * steps
        for kind in ('step', 'loop', 'loader'):
            for name, side in sides.items():
                run, device = side['run'], side['device']
                if kind == 'step':
                    seconds = _timed_steps(run, side['cached'], first, steps, device)
                    if loader_share is not None:
                        _set_loader_share(side, loader_share, seconds / steps)
                    times[name]['delay'].append(side['slow'].seconds.value)
                elif kind == 'loop':
                    _drain(side)
                    seconds = _timed_steps(run, side['batches'], first, steps, device)
                else:
                    _drain(side)
                    seconds = _timed_pulls(side['batches'], steps, device)
                times[name][kind].append(seconds / steps)
    results = {}
    for name, per_round in times.items():
        result = results[name] = dict(
            step=min(per_round['step']), loop=min(per_round['loop']), loader=min(per_round['loader']),
            delay=statistics.mean(per_round['delay']),
            loop_to_step=statistics.median(s / t for s, t in zip(per_round['step'], per_round['loop'])),
            loader_to_step=statistics.median(s / t for s, t in zip(per_round['step'], per_round['loader'])))
        if result['delay'] > 0:  # the sleeps alone: no batch can arrive faster than delay / workers on average
            floors = [delay / max(sides[name]['workers'], 1) for delay in per_round['delay']]
            result['loop_to_floor'] = statistics.median(t / f for t, f in zip(per_round['loop'], floors))
            result['loader_to_floor'] = statistics.median(t / f for t, f in zip(per_round['loader'], floors))
    return results


def _row(side: Dict[str, Any], times: Dict[str, float], steps: int) -> Dict[str, Any]:
    args = side['args']
    images_per_step = args.batch_size * args.grad_accum_steps * args.world_size
    batches_per_step = args.grad_accum_steps
    return OrderedDict(
        model=args.model, batch_size=args.batch_size, batch_repeat=args.batch_repeat, workers=args.workers,
        device=str(side['device']), data_delay_ms=round(1000 * times['delay'], 3),
        loop_samples_per_sec=round(images_per_step / times['loop'], 2),
        step_samples_per_sec=round(images_per_step / times['step'], 2),
        loader_samples_per_sec=round(images_per_step / times['loader'], 2),
        loader_batches_per_sec=round(batches_per_step / times['loader'], 2),
        loop_step_time=round(1000 * times['loop'], 3), train_step_time=round(1000 * times['step'], 3),
        loader_step_time=round(1000 * times['loader'], 3),
        ratio_loop_to_step=round(times['loop_to_step'], 4), ratio_loader_to_step=round(times['loader_to_step'], 4),
        ratio_loop_to_delay_floor=round(times['loop_to_floor'], 4) if 'loop_to_floor' in times else '',
        ratio_loader_to_delay_floor=round(times['loader_to_floor'], 4) if 'loader_to_floor' in times else '',
        timed_steps=steps, drained_batches=side['queue'], steps_per_epoch=side['sampler'].steps_per_epoch,
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


def _check_round_length(steps: int, shared: Sequence[str], slowed: bool = False) -> None:
    """Refuse rounds so short that the batches the workers have in progress when a round starts would matter, and a
    per-batch data delay where batches are cut from draws made an epoch ahead (``--device-data``)."""
    from timm_mimo.cli import train
    from timm_mimo.cli.args import CliError
    train_args = train.parse_args(list(shared))
    if slowed and train_args.device_data:
        raise CliError('--data-delay-ms / --loader-share slow each loader batch, but with --device-data the batches '
                       'are cut on the device from draws made an epoch ahead: drop --device-data to measure a slow '
                       'data path (the worker path), or drop the delay')
    workers = train_args.workers
    if steps < MIN_STEPS_PER_WORKER * workers:
        raise CliError(f'--steps {steps} with --workers {workers}: the batches the workers have in progress when a '
                       f'round starts could hide up to {min(100, round(100 * workers / steps))} % of a slow data '
                       f'path; use --steps {MIN_STEPS_PER_WORKER * workers} or more (or fewer workers)')


def run(args: argparse.Namespace) -> List[Dict[str, Any]]:
    shared = list(args.train_args)
    if shared[:1] == ['--']:
        shared = shared[1:]
    _check_round_length(args.steps, shared, args.data_delay_ms > 0 or args.loader_share is not None)
    backbone_argv = None if args.no_backbone else _backbone_argv(args.model, shared)
    delay = args.data_delay_ms / 1000
    sides = OrderedDict()
    if backbone_argv is not None:
        sides['backbone'] = _build(backbone_argv, delay)
    sides['model'] = _build(['--model', args.model, '--batch-repeat', str(args.batch_repeat), *shared], delay)
    times = measure(sides, args.steps, args.warmup_steps, args.rounds, args.loader_share)
    rows = [_row(sides[name], times[name], args.steps) for name in sides]
    if backbone_argv is not None:
        mimo, base = rows[-1], rows[0]
        mimo['ratio_step_to_backbone'] = round(mimo['step_samples_per_sec'] / base['step_samples_per_sec'], 4)
        mimo['ratio_loop_to_backbone'] = round(mimo['loop_samples_per_sec'] / base['loop_samples_per_sec'], 4)
        mimo['ratio_epoch_to_backbone'] = round(args.batch_repeat * base['loop_samples_per_sec']
                                                / mimo['loop_samples_per_sec'], 4)
    columns = ['model', 'device', 'batch_size', 'batch_repeat', 'workers', 'data_delay_ms', 'loop_samples_per_sec',
               'step_samples_per_sec', 'loader_samples_per_sec', 'loop_step_time', 'train_step_time',
               'loader_step_time', 'ratio_loop_to_step', 'ratio_loader_to_step', 'ratio_step_to_backbone',
               'ratio_loop_to_backbone', 'ratio_epoch_to_backbone']
    print_table(rows, columns)
    delay_text = (f'data delay set in each round for a loader share of {args.loader_share:g}'
                  if args.loader_share is not None
                  else f'data delay {args.data_delay_ms:g} ms per batch')
    print(f'best of {args.rounds} alternating rounds of {args.steps} steps after {args.warmup_steps} warm-up steps '
          f'(ratios: median of each round\'s own); '
          f'loop and loader rounds start after pulling the {rows[-1]["drained_batches"]} batches the loader can hold '
          f'queued (untimed); step = batches already on the device, loader = batches pulled with no step; '
          f'{delay_text}; threads {torch.get_num_threads()}; flags: {" ".join(shared)}')
    if args.results_file:
        write_csv(args.results_file, rows)  # atomically
    return rows
