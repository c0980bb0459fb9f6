"""What a MIMO train step adds to its backbone's, counted op by op (what a GPU launches), and its host reads.

    python benchmark.py ops --model cut_mixmo_wrn28_10 mixshare_wrn28_5 mixvit_convit_gpsa5_ca2

For each model and its backbone, on the same batch: the ATen ops of one training step (forward, loss, backward; the
plan drawn ahead, as the loader's workers deliver it), counted in a ``TorchDispatchMode``, split into compute ops
(each one kernel launch or more on a GPU) and metadata ops (views, which launch nothing); the ops the MIMO step adds
beyond the backbone's, by name; and the host reads (``aten._local_scalar_dense`` / ``aten.equal`` / ``is_nonzero``,
each a GPU sync). MIMO CNNs are counted with their GPU encoder path (one grouped conv) and with the CPU one (M
convs). ``--profile`` adds ``torch.profiler``'s top self-CPU ops of both steps.
"""
import argparse
from collections import Counter, OrderedDict
from typing import Any, Dict, List

import timm
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import timm_mimo  # noqa: F401
from benchmarks.common import print_table
from benchmarks.models import backbone_model_kwargs
from timm_mimo.metrics import is_mimo
from timm_mimo.models.mixvit import MixViT
from timm_mimo.models.mixvit import create_backbone as create_vit_backbone
from timm_mimo.task import MimoTask

__all__ = ['add_arguments', 'run', 'count_step_ops', 'METADATA_OPS', 'HOST_READS']

# ops that only make new views of existing storage: no kernel is launched for them
METADATA_OPS = frozenset({
    'aten.view', 'aten._unsafe_view', 'aten.reshape', 'aten.expand', 'aten.unsqueeze', 'aten.squeeze',
    'aten.permute', 'aten.transpose', 'aten.t', 'aten.select', 'aten.slice', 'aten.alias', 'aten.detach',
    'aten.as_strided', 'aten.unbind', 'aten.split', 'aten.split_with_sizes', 'aten.chunk', 'aten.lift_fresh',
    'aten.empty', 'aten.empty_like', 'aten.empty_strided', 'aten.narrow', 'aten.flatten', 'aten.unflatten',
    'aten.movedim', 'aten.diagonal', 'aten.numpy_T', 'aten.view_as',
})
HOST_READS = frozenset({'aten._local_scalar_dense', 'aten.equal', 'aten.is_nonzero'})


class _Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--model', nargs='+', default=['cut_mixmo_wrn28_2', 'mixshare_wrn28_2',
                                                       'mixvit_convit_gpsa5_ca2'], help='MIMO models')
    parser.add_argument('-b', '--batch-size', type=int, default=8, help='batch of the counted step')
    parser.add_argument('--img-size', type=int, default=None, help="input size (default: the model's)")
    parser.add_argument('--num-classes', type=int, default=10)
    parser.add_argument('--model-kwargs', nargs='*', default={}, action=timm.utils.ParseKwargs)
    parser.add_argument('--profile', action='store_true', help="torch.profiler's top self-CPU ops of both steps")


def count_step_ops(step: Any) -> Counter:
    """ATen ops of one call of ``step`` (after a warm call)."""
    step()
    with _Ops() as ops:
        step()
    return ops.counts


def _steps(name: str, args: argparse.Namespace) -> Dict[str, Any]:
    kwargs = dict(args.model_kwargs, num_classes=args.num_classes)
    model = timm.create_model(name, **kwargs).train()
    if not is_mimo(model):
        raise ValueError(f'{name} is not a MIMO model')
    arch = dict(backbone_model_kwargs(model, args.model_kwargs), num_classes=args.num_classes)
    if isinstance(model, MixViT):
        backbone = create_vit_backbone(model.backbone_name, **arch).train()
    else:
        backbone = timm.create_model(model.backbone_name, **arch).train()
    size = tuple(model.pretrained_cfg['input_size'])
    if args.img_size:
        size = (size[0], args.img_size, args.img_size)
    batch = args.batch_size
    images, targets = torch.randn(batch, *size), torch.randint(0, args.num_classes, (batch,))
    task = MimoTask.from_model(model, seed=0, verbose=False)
    sampler = task.plan_sampler(size[-2:])
    plans = [sampler.sample(batch, 150, step, 8, 300) for step in range(8)]
    plan = next((p for p in plans if p.mix.binary), plans[0])

    def mimo_step() -> None:
        task(images, targets, plan=plan)['loss'].backward()

    def backbone_step() -> None:
        F.cross_entropy(backbone(images), targets).backward()

    return dict(model=model, mimo=mimo_step, backbone=backbone_step, binary=plan.mix.binary)


def _row(name: str, side: str, counts: Counter, base: Counter) -> Dict[str, Any]:
    compute = sum(v for k, v in counts.items() if k not in METADATA_OPS)
    extra = counts - base
    return OrderedDict(
        model=name, side=side, ops=sum(counts.values()), compute_ops=compute,
        extra_compute_ops=sum(v for k, v in extra.items() if k not in METADATA_OPS) if side != 'backbone' else '',
        host_reads=sum(v for k, v in counts.items() if k in HOST_READS),
        extra=' '.join(f'{k.removeprefix("aten.")}x{v}' for k, v in sorted(extra.items())
                       if k not in METADATA_OPS) if side != 'backbone' else '')


def run(args: argparse.Namespace) -> List[Dict[str, Any]]:
    torch.set_num_threads(1)
    rows: List[Dict[str, Any]] = []
    for name in args.model:
        steps = _steps(name, args)
        base = count_step_ops(steps['backbone'])
        rows.append(_row(steps['model'].backbone_name, 'backbone', base, base))
        encoders = getattr(steps['model'], 'encoders', None)
        paths = [('GPU path (grouped conv)', True), ('CPU path (M convs)', False)] if encoders is not None else \
            [('MIMO', None)]
        for label, grouped in paths:
            if encoders is not None:
                encoders.grouped_conv = grouped
            rows.append(_row(name, label, count_step_ops(steps['mimo']), base))
        if encoders is not None:
            encoders.grouped_conv = None
        if args.profile:
            from torch.profiler import ProfilerActivity, profile
            for label in ('backbone', 'mimo'):
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    for _ in range(3):
                        steps[label]()
                print(f'{name} {label}: top self-CPU ops of 3 steps')
                print(prof.key_averages().table(sort_by='self_cpu_time_total', row_limit=10))
    print_table(rows, ['model', 'side', 'ops', 'compute_ops', 'extra_compute_ops', 'host_reads', 'extra'])
    print(f'one training step (forward, loss, backward) at batch {args.batch_size}, plan drawn ahead (a binary one '
          'where the Mixer drew one); compute ops = ops minus views / metadata')
    return rows
