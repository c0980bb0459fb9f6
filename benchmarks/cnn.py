"""MIMO / MixMo CNN vs its plain backbone: parameters, forward FLOPs, eval and train-step throughput.

For every pair, in one process, measured in alternating rounds (``interleaved_throughput``): the MIMO model and a
backbone created with the same architecture and classes. Eval: ``model(x)`` on a ``(B, C, H, W)`` batch under
``no_grad`` in eval mode (MIMO: one pass on the summed encodings, M heads averaged). Train step: MIMO on a real
multi-input batch ``(B, M, C, H, W)`` with a plan from ``Mixer(**model.mix_cfg)`` + ``MimoLoss(**model.loss_cfg)``
+ SGD step; backbone on a plain ``(B, C, H, W)`` batch + cross-entropy + SGD step; same B. Targets (the
project's, batch 64 on CPU): eval >= 0.97x and train step >= 0.95x the backbone's throughput. The machine may be
shared: ratios are the meaningful figures, absolute numbers are noisy: a second, identical copy of the backbone is
measured as a noise control (its ratio to the backbone should be 1; its spread is the measurement noise).
"""
import argparse
import copy
from typing import Callable, Dict, List, Tuple

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

import timm_mimo  # noqa: F401  (registration)
from benchmarks.common import count_flops, count_params, interleaved_throughput, print_table
from timm_mimo.loss import MimoLoss
from timm_mimo.mixing import Mixer

# pair name -> (MIMO entrypoint, backbone kwargs, image size)
PAIRS: Dict[str, Tuple[str, Dict, int]] = {
    'wrn28_2': ('cut_mixmo', dict(backbone='wrn28_2'), 32),
    'resnet18': ('cut_mixmo', dict(backbone='resnet18', num_classes=200), 64),
    'wrn28_10': ('cut_mixmo', dict(backbone='wrn28_10'), 32),
    'preact_resnet18': ('cut_mixmo', dict(backbone='preact_resnet18'), 64),
}
EVAL_TARGET, TRAIN_TARGET = 0.97, 0.95


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--models', nargs='+', default=['wrn28_2'], choices=list(PAIRS),
                        help='backbones to measure (the MIMO model wraps each)')
    parser.add_argument('--method', default=None, choices=['mimo', 'linear_mixmo', 'cut_mixmo'],
                        help='MIMO method (default: cut_mixmo)')
    parser.add_argument('--num-members', type=int, default=2, help='M')
    parser.add_argument('--batch-size', type=int, default=64, help='B (images per eval call / train step)')
    parser.add_argument('--rounds', type=int, default=5, help='alternating timed rounds per measurement')
    parser.add_argument('--min-seconds', type=float, default=1.0, help='minimum duration of one timed round')
    parser.add_argument('--no-train', action='store_true', help='skip the train-step measurement')
    parser.add_argument('--threads', type=int, default=None, help='torch.set_num_threads')
    parser.add_argument('--no-control', action='store_true', help='skip the backbone-copy noise control')


def _sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)


def mimo_train_step(model: nn.Module, batch_size: int, img_size: int) -> Callable[[], None]:
    """One MIMO training step: real (B, M, C, H, W) batch, a Mixer plan per step, MimoLoss, SGD."""
    num_members, num_classes = model.num_members, model.num_classes
    xs = torch.randn(batch_size, num_members, model.in_chans, img_size, img_size)
    targets = torch.randint(0, num_classes, (batch_size, num_members))
    mixer = Mixer(num_members=num_members, **model.mix_cfg, generator=torch.Generator().manual_seed(0))
    loss_fn, optimizer, grid = MimoLoss(**model.loss_cfg), _sgd(model), model.mix_grid(img_size)
    model.train()

    def step() -> None:
        plan = mixer(batch_size, grid, progress=0.5)
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(xs, plan), targets, plan.kappas).backward()
        optimizer.step()
    return step


def backbone_train_step(model: nn.Module, batch_size: int, img_size: int, in_chans: int) -> Callable[[], None]:
    """One plain training step: (B, C, H, W) batch, cross-entropy, SGD."""
    x = torch.randn(batch_size, in_chans, img_size, img_size)
    targets = torch.randint(0, model.num_classes, (batch_size,))
    optimizer = _sgd(model)
    model.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), targets).backward()
        optimizer.step()
    return step


def eval_call(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def call() -> None:
        with torch.no_grad():
            model(x)
    return call


def measure(pair: str, args: argparse.Namespace) -> List[Dict[str, object]]:
    entrypoint, kwargs, img_size = PAIRS[pair]
    entrypoint = args.method or entrypoint
    torch.manual_seed(0)
    mimo = timm.create_model(entrypoint, num_members=args.num_members, **kwargs)
    backbone_kwargs = {k: v for k, v in kwargs.items() if k != 'backbone'}
    backbone = timm.create_model(kwargs['backbone'], **backbone_kwargs)
    control = None if args.no_control else copy.deepcopy(backbone)
    batch = args.batch_size
    x = torch.randn(batch, mimo.in_chans, img_size, img_size)
    models = {'mimo': mimo, 'backbone': backbone, **({'control': control} if control is not None else {})}
    for model in models.values():
        model.eval()
    flops = {key: count_flops(lambda m=model: m(x[:1])) for key, model in models.items()}
    evals = interleaved_throughput({key: eval_call(model, x) for key, model in models.items()}, batch,
                                   rounds=args.rounds, min_seconds=args.min_seconds)
    trains = {}
    if not args.no_train:
        steps = {key: backbone_train_step(model, batch, img_size, mimo.in_chans) for key, model in models.items()
                 if key != 'mimo'}
        trains = interleaved_throughput({'mimo': mimo_train_step(mimo, batch, img_size), **steps}, batch,
                                        rounds=args.rounds, min_seconds=args.min_seconds)
    labels = {'mimo': f'{entrypoint} M={mimo.num_members}', 'backbone': pair, 'control': f'{pair} (copy)'}
    rows = [{'model': labels[key], 'params': count_params(model), 'GFLOPs/img': flops[key] / 1e9,
             'eval img/s': evals[key], 'train img/s': trains.get(key, float('nan'))} for key, model in models.items()]
    for key in models:
        if key == 'backbone':
            continue
        ratio = {'model': f'ratio {labels[key]} / {pair} @{img_size}px',
                 'params': count_params(models[key]) / count_params(backbone),
                 'GFLOPs/img': flops[key] / flops['backbone'], 'eval img/s': evals[key] / evals['backbone'],
                 'train img/s': trains[key] / trains['backbone'] if trains else float('nan')}
        if key == 'mimo':
            verdicts = [f"eval {'OK' if ratio['eval img/s'] >= EVAL_TARGET else 'MISS'} (>= {EVAL_TARGET})"]
            if trains:
                verdicts.append(
                    f"train {'OK' if ratio['train img/s'] >= TRAIN_TARGET else 'MISS'} (>= {TRAIN_TARGET})")
            ratio['targets'] = ', '.join(verdicts)
        else:
            ratio['targets'] = 'noise control (ideal 1.000)'
        rows.append(ratio)
    return rows


def run(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    rows: List[Dict[str, object]] = []
    for pair in args.models:
        rows.extend(measure(pair, args))
    print(f'batch {args.batch_size}, CPU threads {torch.get_num_threads()}, rounds {args.rounds} x '
          f'{args.min_seconds}s (best round kept); shared machine: absolute numbers are noisy, ratios less so')
    print_table(rows, ['model', 'params', 'GFLOPs/img', 'eval img/s', 'train img/s', 'targets'])


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__)
    add_arguments(parser)
    run(parser.parse_args())
