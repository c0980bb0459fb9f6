"""The optimizer and learning-rate schedule of a training run, from its flags: timm's ``create_optimizer_v2`` and
``create_scheduler_v2``, the learning-rate rule when ``--lr`` is unset, ``--l2``, the fused update under float16 AMP
and the compiled update of ``--device-data --torchcompile``.
"""
import argparse
from typing import Any, Optional

import timm
import torch
import torch.nn as nn
from timm.optim import create_optimizer_v2, optimizer_kwargs
from timm.scheduler import create_scheduler_v2, scheduler_kwargs

from timm_mimo.cli.args import CliError, one_line
from timm_mimo.cli.evaluate import DECREASING_METRICS
from timm_mimo.compiled_optim import CompiledOptimizerStep
from timm_mimo.task import MimoTask

__all__ = ['resolve_lr', 'fused_for_amp', 'create_optimizer', 'create_scheduler', 'compiled_optimizer_step']


def resolve_lr(args: argparse.Namespace) -> None:
    """timm's rule when ``--lr`` is unset: ``lr_base`` scaled (linear or sqrt) by the batch over ``lr_base_size``.

    Decision: the batch counted is the number of UNIQUE images per optimizer step, ``G / b`` (global batch over
    ``--batch-repeat``; timm's global batch when b = 1). Both papers' rules count it so: MixMo's ``(0.1 / b) ·
    (bs / 128)`` (thesis, HAL tel-03952815, App. A.1.3.1) is ``0.1 · (bs / b) / 128``, and MixViT's ``√(b / B)``
    (thesis App. A.1.5) keeps the 0.001 rate at base batch B = 128 with 3 batch augmentations (384 images a step).
    """
    if args.lr is not None:
        return
    global_batch = args.batch_size * args.world_size * args.grad_accum_steps
    ratio = global_batch / args.batch_repeat / args.lr_base_size
    scale = args.lr_base_scale or ('sqrt' if any(o in args.opt.lower() for o in ('ada', 'lamb')) else 'linear')
    if scale not in ('linear', 'sqrt'):
        raise CliError(f"--lr-base-scale {args.lr_base_scale!r}: must be 'linear', 'sqrt' or ''")
    args.lr = args.lr_base * (ratio ** 0.5 if scale == 'sqrt' else ratio)


FUSED_OPTIMIZERS = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)


def fused_for_amp(args: argparse.Namespace, device: Optional[torch.device]) -> bool:
    """Whether the optimizer runs fused: float16 AMP on CUDA with torch's SGD / Adam / AdamW (``--opt-kwargs fused``
    unset). A fused step reads GradScaler's inf / NaN flag on the device; otherwise ``GradScaler.step`` reads it back
    to the host every step. The update it computes is the same."""
    if device is None or device.type != 'cuda' or not args.amp or args.amp_dtype != 'float16':
        return False
    if 'fused' in args.opt_kwargs or 'foreach' in args.opt_kwargs:
        return False
    try:
        opt_class = timm.optim.get_optimizer_class(args.opt, bind_defaults=False)
    except (ValueError, KeyError, TypeError):
        return False
    return opt_class in FUSED_OPTIMIZERS


def create_optimizer(args: argparse.Namespace, model: nn.Module,
                     device: Optional[torch.device] = None) -> torch.optim.Optimizer:
    """timm's optimizer from the flags; ``--l2`` is coupled weight decay 2·λ on every parameter (no filtering); fused
    with float16 AMP on CUDA (:func:`fused_for_amp`)."""
    kwargs = optimizer_kwargs(cfg=args)
    filter_bias_and_bn = True
    if args.l2 is not None:
        # MixMo arXiv:2103.06132 / thesis (HAL tel-03952815) App. A.1.3.1 and A.1.4: "l2 regularization 3e-4", the
        # official code adds 3e-4·ΣW² over all parameters to the loss; its gradient 6e-4·W is SGD's weight decay.
        kwargs['weight_decay'] = 2.0 * args.l2
        filter_bias_and_bn = False
    extra = dict(fused=True) if fused_for_amp(args, device) else {}
    try:
        return create_optimizer_v2(model, **kwargs, filter_bias_and_bn=filter_bias_and_bn, **args.opt_kwargs,
                                   **extra)
    except (ValueError, TypeError, AssertionError, KeyError) as exc:
        raise CliError(f'cannot create optimizer --opt {args.opt!r}: {one_line(exc)}') from None


def create_scheduler(args: argparse.Namespace, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """timm's scheduler from the flags; returns it and the number of epochs (with cooldown)."""
    decreasing = args.eval_metric in DECREASING_METRICS
    try:
        kwargs = scheduler_kwargs(args, decreasing_metric=decreasing)
        return create_scheduler_v2(optimizer, **kwargs, updates_per_epoch=steps_per_epoch)
    except (ValueError, AssertionError, TypeError) as exc:
        raise CliError(f'cannot create scheduler --sched {args.sched!r}: {one_line(exc)}') from None


def compiled_optimizer_step(args: argparse.Namespace, optimizer: torch.optim.Optimizer, task: MimoTask,
                            loss_scaler: Optional[Any]) -> Optional[CompiledOptimizerStep]:
    """With ``--device-data --torchcompile``, the clipping and update of torch's own optimizers as one compiled
    graph (:class:`~timm_mimo.compiled_optim.CompiledOptimizerStep`); ``None`` (eager update) otherwise, and under
    float16 AMP, whose GradScaler unscales and steps itself."""
    if not (args.device_data and args.torchcompile) or loss_scaler is not None:
        return None
    if not type(optimizer).__module__.startswith('torch.optim'):
        return None  # timm's own optimizers: not written for a tensor learning rate
    return CompiledOptimizerStep(optimizer, list(task.get_clip_parameters()), args.clip_grad, args.clip_mode,
                                 backend=args.torchcompile, mode=args.torchcompile_mode)
