#!/usr/bin/env python3
"""Train timm and timm_mimo models with timm's flags, on one process or many (torchrun).

A MIMO model (one with ``num_members`` and ``forward_members``) trains on multi-input batches: batch repetition b,
pairing by permutation with input repetition ρ, a :class:`~timm_mimo.mixing.Mixer` plan per batch, optional §1.7
pixel CutMix/Mixup, and :class:`~timm_mimo.loss.MimoLoss`. Any other timm model trains as in timm (cross-entropy,
label smoothing, timm's Mixup/CutMix). Global-batch semantics and the lr / b rule: see :mod:`timm_mimo.data`.

    python train.py --config configs/cut_mixmo_wrn28_10_cifar100_b4.yaml --data-dir /data/cifar100
    torchrun --nproc_per_node 2 train.py --model cut_mixmo --model-kwargs backbone=wrn28_2 ...
"""
import argparse
import contextlib
import logging
import math
import os
import shutil
import signal
import sys
import time
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import timm
import torch
import torch.distributed as dist
import torch.nn as nn
import yaml
from timm.data import Mixup, resolve_data_config
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import (
    AverageMeter,
    ModelEmaV3,
    NativeScaler,
    ParseKwargs,
    get_outdir,
    init_distributed_device,
    update_summary,
)
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset

import timm_mimo  # noqa: F401  (registers the MIMO models)
from timm_mimo.data import (
    BatchRepeatSampler,
    DataError,
    PixelMix,
    create_image_transform,
    open_dataset,
    pair_inputs,
    shard_seed,
    soft_targets,
)
from timm_mimo.loss import MimoLoss
from timm_mimo.metrics import collect_member_logits, ensemble_metrics, is_mimo
from timm_mimo.mixing import Mixer, progress

# MIMO flags: dest -> flag, refused on a non-MIMO model; unset (None) ones fall back to model.mix_cfg / loss_cfg
MIMO_FLAGS = OrderedDict(
    num_members='--num-members', input_repeat='--input-repeat', mix='--mix', mix_prob='--mix-prob',
    mix_prob_decay='--mix-prob-decay', mix_alpha='--mix-alpha', loss_root='--loss-root',
    single_source_end='--single-source-end', mimo_cutmix='--mimo-cutmix', mimo_mixup='--mimo-mixup')
MIXER_FLAGS = dict(mix='kind', mix_prob='prob', mix_prob_decay='prob_decay', mix_alpha='alpha',
                   single_source_end='single_source_end', input_repeat='input_repeat')
DECREASING_METRICS = ('loss', 'nll_c', 'ece', 'nll_prob')  # --eval-metric values where lower is better
CHECKPOINT_LAST = 'last.pth.tar'
CHECKPOINT_BEST = 'model_best.pth.tar'


class CliError(Exception):
    """Bad user input: reported as one line on stderr, exit status 2."""


def _alpha(value: Any) -> Union[float, str]:
    """``--mix-alpha``: a float, or ``'none'`` for the fixed κ = 1/M of MIMO (mapped to ``alpha=None``)."""
    return 'none' if str(value).lower() == 'none' else float(value)


def build_parser() -> argparse.ArgumentParser:
    """timm's train.py flags (same names and meaning) plus the MIMO ones."""
    parser = argparse.ArgumentParser(description='timm_mimo training', formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument('-c', '--config', default='', metavar='FILE', help='YAML file of flag defaults (dest names)')
    group = parser.add_argument_group('Dataset')
    group.add_argument('--data-dir', metavar='DIR', help='dataset root')
    group.add_argument('--dataset', default='', help="timm dataset name, e.g. 'torch/cifar100'; '' = image folder")
    group.add_argument('--train-split', default='train')
    group.add_argument('--val-split', default='validation', help="'' = no evaluation")
    group.add_argument('--dataset-download', action='store_true', default=False)
    group = parser.add_argument_group('Model')
    group.add_argument('--model', required=False, help='timm model name (timm_mimo models included)')
    group.add_argument('--pretrained', action='store_true', default=False)
    group.add_argument('--initial-checkpoint', default='', metavar='PATH')
    group.add_argument('--resume', default='', metavar='PATH', help='checkpoint to resume from (model, optimizer, ...)')
    group.add_argument('--no-resume-opt', action='store_true', default=False)
    group.add_argument('--num-classes', type=int, default=None)
    group.add_argument('--in-chans', type=int, default=None)
    group.add_argument('--img-size', type=int, default=None)
    group.add_argument('--input-size', default=None, nargs=3, type=int, metavar='N')
    group.add_argument('--mean', type=float, nargs='+', default=None)
    group.add_argument('--std', type=float, nargs='+', default=None)
    group.add_argument('--interpolation', default='')
    group.add_argument('-b', '--batch-size', type=int, default=128, help='per-process batch of one forward pass')
    group.add_argument('-vb', '--validation-batch-size', type=int, default=None)
    group.add_argument('--grad-accum-steps', type=int, default=1)
    group.add_argument('--channels-last', action='store_true', default=False)
    group.add_argument('--sync-bn', action='store_true', default=False)
    group.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs)
    group = parser.add_argument_group('Optimizer')
    group.add_argument('--opt', default='sgd')
    group.add_argument('--opt-eps', default=None, type=float)
    group.add_argument('--opt-betas', default=None, type=float, nargs='+')
    group.add_argument('--momentum', type=float, default=0.9)
    group.add_argument('--weight-decay', type=float, default=2e-5)
    group.add_argument('--clip-grad', type=float, default=None)
    group = parser.add_argument_group('Learning rate schedule')
    group.add_argument('--sched', default='cosine', help="'cosine', 'step', 'multistep', ...")
    group.add_argument('--sched-on-updates', action='store_true', default=False)
    group.add_argument('--lr', type=float, default=0.1, help='the rate the optimizer uses (configs include lr / b)')
    group.add_argument('--min-lr', type=float, default=0.0)
    group.add_argument('--epochs', type=int, default=300)
    group.add_argument('--decay-epochs', type=float, default=90)
    group.add_argument('--decay-milestones', type=int, nargs='+', default=[90, 180, 270])
    group.add_argument('--decay-rate', '--dr', type=float, default=0.1)
    group.add_argument('--warmup-lr', type=float, default=1e-5)
    group.add_argument('--warmup-epochs', type=int, default=0)
    group.add_argument('--warmup-prefix', action='store_true', default=False)
    group.add_argument('--cooldown-epochs', type=int, default=0)
    group = parser.add_argument_group('Augmentation and regularisation')
    group.add_argument('--no-aug', action='store_true', default=False)
    group.add_argument('--crop-pad', type=int, default=None,
                       help='CIFAR-style pad + random crop + h-flip (SPEC §1.7: 4); unset = timm transforms')
    group.add_argument('--hflip', type=float, default=0.5)
    group.add_argument('--aa', default=None, help="timm auto-augment policy, e.g. 'original', 'rand-m9-mstd0.5'")
    group.add_argument('--reprob', type=float, default=0.0, help='random erasing probability')
    group.add_argument('--smoothing', type=float, default=None,
                       help='label smoothing; unset = 0.1 (timm) for plain models, model.loss_cfg for MIMO')
    group.add_argument('--mixup', type=float, default=0.0, help='timm Mixup alpha (non-MIMO models)')
    group.add_argument('--cutmix', type=float, default=0.0, help='timm CutMix alpha (non-MIMO models)')
    group.add_argument('--mixup-prob', type=float, default=1.0)
    group.add_argument('--mixup-switch-prob', type=float, default=0.5)
    group.add_argument('--mixup-mode', default='batch')
    group.add_argument('--drop', type=float, default=None, help='dropout rate (model kwarg drop_rate)')
    group.add_argument('--drop-path', type=float, default=None, help='stochastic depth (model kwarg drop_path_rate)')
    group.add_argument('--model-ema', action='store_true', default=False)
    group.add_argument('--model-ema-decay', type=float, default=0.9998)
    group.add_argument('--model-ema-warmup', action='store_true', default=False)
    group = parser.add_argument_group('MIMO (unset = the model\'s mix_cfg / loss_cfg)')
    group.add_argument('--num-members', type=int, default=None, help='M, passed to the model')
    group.add_argument('--batch-repeat', type=int, default=1,
                       help='b: each global batch holds G/b unique images, each b times (SPEC §1.4)')
    group.add_argument('--input-repeat', type=float, default=None, help='ρ: share of positions where all M inputs '
                       'are the same image (SPEC §1.1)')
    group.add_argument('--mix', default=None, help='mask kind: ' + ', '.join(timm_mimo.MASK_KINDS))
    group.add_argument('--mix-prob', type=float, default=None, help='p: probability of a binary (cut) batch')
    group.add_argument('--mix-prob-decay', action=argparse.BooleanOptionalAction, default=None,
                       help='p descends to 0 over the last twelfth (SPEC §1.3)')
    group.add_argument('--mix-alpha', type=_alpha, default=None, help="κ ~ Beta(α, α); 'none' = 1/M (MIMO)")
    group.add_argument('--loss-root', type=float, default=None, help='r of w_r(κ) (SPEC §1.4); inf = no weighting')
    group.add_argument('--single-source-end', action=argparse.BooleanOptionalAction, default=None,
                       help="MixViT's end-of-training all-tokens-from-one-input schedule (SPEC §1.10)")
    group.add_argument('--mimo-cutmix', type=float, default=None, help='§1.7 pixel CutMix alpha on every member input')
    group.add_argument('--mimo-mixup', type=float, default=None, help='§1.7 pixel Mixup alpha on every member input')
    group.add_argument('--mimo-mix-prob', type=float, default=0.5,
                       help='§1.7 probability that one member input is pixel-mixed ([AMBIG] 0.5)')
    group = parser.add_argument_group('Misc')
    group.add_argument('--seed', type=int, default=42)
    group.add_argument('--log-interval', type=int, default=50)
    group.add_argument('--checkpoint-hist', type=int, default=10, help='number of epoch checkpoints kept')
    group.add_argument('-j', '--workers', type=int, default=4)
    group.add_argument('--pin-mem', action='store_true', default=False)
    group.add_argument('--output', default='', metavar='PATH', help='output root (default ./output/train)')
    group.add_argument('--experiment', default='', help='name of the run folder under --output')
    group.add_argument('--eval-metric', default='top1')
    group.add_argument('--amp', action='store_true', default=False)
    group.add_argument('--amp-dtype', default='float16', help='float16 (CUDA) or bfloat16; CPU always bfloat16')
    group.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    group.add_argument('--dist-backend', default=None, help='default: nccl on GPU, gloo on CPU')
    group.add_argument('--dist-url', default=None)
    # test hook: SIGKILL this process after N optimizer steps, to check that a killed run resumes exactly
    group.add_argument('--kill-after-steps', type=int, default=None, help=argparse.SUPPRESS)
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse flags; a ``--config`` YAML sets defaults that the command line overrides (as timm does)."""
    parser = build_parser()
    known, _ = parser.parse_known_args(argv)
    if known.config:
        parser.set_defaults(**load_config(known.config, parser))
    args = parser.parse_args(argv)
    if not args.model:
        raise CliError('--model is required (on the command line or in --config)')
    return args


def load_config(path: str, parser: argparse.ArgumentParser) -> Dict[str, Any]:
    """Flag defaults from a YAML file; keys are flag dests (``batch_size``) or flags (``batch-size``)."""
    try:
        with open(path) as f:
            config = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise CliError(f'cannot read config {path!r}: {" ".join(str(exc).split())}') from None
    if not isinstance(config, dict):
        raise CliError(f'config {path!r} must be a mapping of flag names to values')
    dests = {action.dest for action in parser._actions}
    config = {key.replace('-', '_'): value for key, value in config.items()}
    unknown = sorted(set(config) - dests)
    if unknown:
        raise CliError(f'config {path!r} has unknown keys: {", ".join(unknown)}')
    return config


def resolve_device(args: argparse.Namespace) -> torch.device:
    """torchrun-aware device and process group (nccl on GPU, gloo on CPU; multi-node through torchrun's env vars)."""
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        raise CliError(f'--device {args.device} requested but CUDA is not available')
    return init_distributed_device(args)


def create_train_model(args: argparse.Namespace) -> nn.Module:
    """``timm.create_model`` with the flags; unknown model and MIMO flags on a plain model are one-line errors."""
    if ':' not in args.model and not timm.is_model(args.model):
        raise CliError(f'unknown model {args.model!r} (see timm.list_models())')
    kwargs = dict(args.model_kwargs)
    for dest, key in (('num_classes', 'num_classes'), ('in_chans', 'in_chans'), ('drop', 'drop_rate'),
                      ('drop_path', 'drop_path_rate'), ('num_members', 'num_members')):
        if getattr(args, dest) is not None:
            kwargs[key] = getattr(args, dest)
    if args.input_size is not None:
        kwargs['in_chans'] = args.input_size[0]
    try:
        model = timm.create_model(args.model, pretrained=args.pretrained, **kwargs)
    except TypeError as exc:
        if 'num_members' in str(exc):
            raise CliError(f'--num-members given but {args.model!r} is not a MIMO model') from None
        raise CliError(f'cannot create model {args.model!r} with {kwargs}: {exc}') from None
    except (RuntimeError, ValueError) as exc:
        raise CliError(f'cannot create model {args.model!r}: {" ".join(str(exc).split())}') from None
    if not is_mimo(model):
        given = [flag for dest, flag in MIMO_FLAGS.items() if getattr(args, dest) is not None]
        if given:
            raise CliError(f'{", ".join(given)} given but {args.model!r} is not a MIMO model '
                           '(it has no num_members / forward_members)')
    elif args.mixup > 0 or args.cutmix > 0:
        raise CliError(f'--mixup/--cutmix are timm\'s batch mixing for plain models; for the MIMO model '
                       f'{args.model!r} use --mimo-mixup/--mimo-cutmix (SPEC §1.7)')
    return model


def mixer_kwargs(args: argparse.Namespace, model: nn.Module) -> Dict[str, Any]:
    """The model's ``mix_cfg`` with the MIMO flags that were set on top."""
    kwargs = dict(getattr(model, 'mix_cfg', {}) or {})
    kwargs['num_members'] = model.num_members
    for dest, key in MIXER_FLAGS.items():
        value = getattr(args, dest)
        if value is not None:
            kwargs[key] = None if value == 'none' else value
    return kwargs


def loss_kwargs(args: argparse.Namespace, model: nn.Module) -> Dict[str, Any]:
    """The model's ``loss_cfg`` with ``--loss-root`` and ``--smoothing`` on top."""
    kwargs = dict(getattr(model, 'loss_cfg', {}) or {})
    if args.loss_root is not None:
        kwargs['root'] = args.loss_root
    if args.smoothing is not None:
        kwargs['label_smoothing'] = args.smoothing
    return kwargs


def build_loaders(args: argparse.Namespace, data_config: Dict[str, Any]) -> Tuple[DataLoader, Optional[DataLoader],
                                                                                  BatchRepeatSampler, int]:
    """Training loader with the batch-repetition sampler, evaluation loader on this rank's share of the val set."""
    train_tf = create_image_transform(data_config, True, args.crop_pad, args.hflip, args.no_aug,
                                      auto_augment=args.aa, re_prob=args.reprob)
    train_set = open_dataset(args.dataset, args.data_dir, args.train_split, True, args.dataset_download, train_tf)
    sampler = BatchRepeatSampler(len(train_set), args.batch_size, args.batch_repeat, args.world_size, args.rank,
                                 args.grad_accum_steps, args.seed)
    if sampler.steps_per_epoch < 1:
        raise CliError(f'{len(train_set)} training images give no full step of global batch '
                       f'{args.batch_size * args.world_size * args.grad_accum_steps}')
    loader_gen = torch.Generator()
    train_loader = DataLoader(train_set, batch_sampler=sampler, num_workers=args.workers, pin_memory=args.pin_mem,
                              generator=loader_gen, persistent_workers=False)
    eval_loader, num_eval = None, 0
    if args.val_split:
        eval_tf = create_image_transform(data_config, False, args.crop_pad)
        eval_set = open_dataset(args.dataset, args.data_dir, args.val_split, False, args.dataset_download, eval_tf)
        num_eval = len(eval_set)
        shard = Subset(eval_set, list(range(args.rank, num_eval, args.world_size)))
        eval_loader = DataLoader(shard, batch_size=args.validation_batch_size or args.batch_size, shuffle=False,
                                 num_workers=args.workers, pin_memory=args.pin_mem)
    return train_loader, eval_loader, sampler, num_eval


def gather_eval(member_logits: torch.Tensor, targets: torch.Tensor, args: argparse.Namespace,
                num_eval: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Every rank's evaluation shard (indices ``rank::world``) back in dataset order, on every rank."""
    if not args.distributed:
        return member_logits, targets
    parts: List[Any] = [None] * args.world_size
    dist.all_gather_object(parts, (member_logits, targets))
    full_logits = torch.empty(num_eval, *member_logits.shape[1:])
    full_targets = torch.empty(num_eval, dtype=targets.dtype)
    for rank, (logits, labels) in enumerate(parts):
        full_logits[rank::args.world_size] = logits
        full_targets[rank::args.world_size] = labels
    return full_logits, full_targets


def save_checkpoint(path: str, state: Dict[str, Any]) -> None:
    """Write to a temporary file, then rename: a checkpoint is complete or absent, never half-written."""
    tmp_path = f'{path}.tmp'
    torch.save(state, tmp_path)
    os.replace(tmp_path, path)


def load_resume(path: str, model: nn.Module, optimizer: Optional[torch.optim.Optimizer], model_ema: Optional[nn.Module],
                loss_scaler: Optional[NativeScaler]) -> Tuple[int, Optional[float]]:
    """Restore a :func:`save_checkpoint` state (``weights_only`` load); returns (next epoch, best metric)."""
    if not os.path.isfile(path):
        raise CliError(f'--resume checkpoint {path!r} does not exist')
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
        model.load_state_dict(state['state_dict'])
    except (RuntimeError, KeyError, OSError, EOFError) as exc:
        raise CliError(f'cannot resume from {path!r}: {" ".join(str(exc).split())[:300]}') from None
    if optimizer is not None and 'optimizer' in state:
        optimizer.load_state_dict(state['optimizer'])
    if model_ema is not None and 'state_dict_ema' in state:
        model_ema.module.load_state_dict(state['state_dict_ema'])
    if loss_scaler is not None and 'scaler' in state:
        loss_scaler.load_state_dict(state['scaler'])
    return int(state['epoch']) + 1, state.get('best_metric')


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """Seed of the process RNGs (augmentation without workers, dropout) for one epoch: resumable per epoch."""
    return (seed * 7919 + epoch * 104729 + rank) % (2 ** 31)


class Trainer:
    """One training run: the model, its optimizer, schedule, EMA, loss and the MIMO batch machinery."""

    def __init__(self, args: argparse.Namespace, model: nn.Module, device: torch.device, steps_per_epoch: int):
        self.args = args
        self.device = device
        self.model = model
        self.mimo = is_mimo(model)
        self.steps_per_epoch = steps_per_epoch
        self.img_size = tuple(args.data_config['input_size'][1:])
        self.autocast_dtype = None
        if args.amp:
            self.autocast_dtype = torch.float16 if args.amp_dtype == 'float16' and device.type == 'cuda' \
                else torch.bfloat16
        self.loss_scaler = NativeScaler() if self.autocast_dtype == torch.float16 else None
        self.optimizer = create_optimizer_v2(model, opt=args.opt, lr=args.lr, weight_decay=args.weight_decay,
                                             momentum=args.momentum, eps=args.opt_eps, betas=args.opt_betas)
        self.scheduler, self.num_epochs = create_scheduler_v2(
            self.optimizer, sched=args.sched, num_epochs=args.epochs, decay_epochs=args.decay_epochs,
            decay_milestones=args.decay_milestones, decay_rate=args.decay_rate, min_lr=args.min_lr,
            warmup_lr=args.warmup_lr, warmup_epochs=args.warmup_epochs, warmup_prefix=args.warmup_prefix,
            cooldown_epochs=args.cooldown_epochs, step_on_epochs=not args.sched_on_updates,
            updates_per_epoch=steps_per_epoch)
        self.model_ema = ModelEmaV3(model, decay=args.model_ema_decay, use_warmup=args.model_ema_warmup) \
            if args.model_ema else None
        self.generator = torch.Generator()  # re-seeded per shard: pairing, plans and pixel mixing
        self.pixel_mix = None
        self.timm_mixup = None
        if self.mimo:
            self.mixer = Mixer(**args.mixer_kwargs, generator=self.generator)
            self.loss_fn = MimoLoss(**args.loss_kwargs)
            self.grid = model.mix_grid(self.img_size)
            if args.mimo_cutmix or args.mimo_mixup:
                self.pixel_mix = PixelMix(args.mimo_cutmix or 0.0, args.mimo_mixup or 0.0, args.mimo_mix_prob)
        else:
            smoothing = 0.1 if args.smoothing is None else args.smoothing
            if args.mixup > 0 or args.cutmix > 0:
                self.timm_mixup = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, prob=args.mixup_prob,
                                        switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                                        label_smoothing=smoothing, num_classes=args.num_classes_resolved)
                self.loss_fn = SoftTargetCrossEntropy()
            elif smoothing > 0:
                self.loss_fn = LabelSmoothingCrossEntropy(smoothing=smoothing)
            else:
                self.loss_fn = nn.CrossEntropyLoss()
        self.train_model = model
        if args.distributed:
            self.train_model = DistributedDataParallel(model, device_ids=[device] if device.type == 'cuda' else None)

    def mimo_loss(self, images: torch.Tensor, targets: torch.Tensor, epoch: int, step: int,
                  shard: int) -> Tuple[torch.Tensor, float]:
        """Pair, mix and score one shard (SPEC §1.1, §1.3, §1.7); returns the loss and the batch's κ spread."""
        args = self.args
        self.generator.manual_seed(shard_seed(args.seed, epoch, step, shard))
        xs, ys = pair_inputs(images, targets, self.model.num_members, self.mixer.input_repeat, self.generator)
        plan = self.mixer(xs.shape[0], self.grid, progress(epoch, step, self.steps_per_epoch, self.num_epochs),
                          device=self.device, epoch=epoch + step / self.steps_per_epoch)
        if self.pixel_mix is not None:
            smoothing = self.loss_fn.label_smoothing
            ys = soft_targets(ys, args.num_classes_resolved, smoothing)
            xs, ys = self.pixel_mix(xs, ys, plan, self.generator)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            logits = self.train_model(xs, plan)
            return self.loss_fn(logits, ys, plan.kappas), float(plan.binary)

    def plain_loss(self, images: torch.Tensor, targets: torch.Tensor) -> Tuple[torch.Tensor, float]:
        """timm's step: optional Mixup/CutMix on the batch, then the criterion."""
        if self.timm_mixup is not None:
            images, targets = self.timm_mixup(images, targets)
        if self.args.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            return self.loss_fn(self.train_model(images), targets), 0.0

    def train_one_epoch(self, epoch: int, loader: DataLoader) -> Dict[str, float]:
        """One epoch of optimizer steps; logs progress on rank 0."""
        args = self.args
        self.model.train()
        loss_meter, binary_meter, time_meter = AverageMeter(), AverageMeter(), AverageMeter()
        accum = args.grad_accum_steps
        step_start = time.perf_counter()
        data_iter = iter(loader)
        for step in range(self.steps_per_epoch):
            step_images = 0
            for micro_step in range(accum):
                images, targets = next(data_iter)
                images, targets = images.to(self.device), targets.to(self.device)
                step_images += images.shape[0]
                shard = args.rank * accum + micro_step
                if self.mimo:
                    loss, binary = self.mimo_loss(images, targets, epoch, step, shard)
                else:
                    loss, binary = self.plain_loss(images, targets)
                loss_value = loss.item()
                if not math.isfinite(loss_value):
                    raise CliError(f'loss is {loss_value} at epoch {epoch} step {step}: lower --lr or check data')
                sync = micro_step == accum - 1 or not args.distributed
                context = self.train_model.no_sync() if not sync else contextlib.nullcontext()
                with context:
                    self.backward(loss / accum, update=micro_step == accum - 1)
                loss_meter.update(loss_value, images.shape[0])
                binary_meter.update(binary)
            num_updates = epoch * self.steps_per_epoch + step + 1
            if self.model_ema is not None:
                self.model_ema.update(self.model, step=num_updates)
            self.scheduler.step_update(num_updates=num_updates, metric=loss_meter.avg)
            time_meter.update(time.perf_counter() - step_start)
            step_start = time.perf_counter()
            if args.kill_after_steps is not None and num_updates >= args.kill_after_steps:
                os.kill(os.getpid(), signal.SIGKILL)  # test hook: die like a killed job, without any cleanup
            last = step + 1 == self.steps_per_epoch
            if args.rank == 0 and (step % args.log_interval == 0 or last):
                rate = step_images * args.world_size / max(time_meter.val, 1e-9)
                lr = self.optimizer.param_groups[0]['lr']
                done = 100 * (step + 1) / self.steps_per_epoch
                print(f'Train: {epoch} [{step + 1:>5d}/{self.steps_per_epoch} ({done:3.0f}%)]'
                      f'  loss {loss_meter.val:.4f} ({loss_meter.avg:.4f})  lr {lr:.3e}  {rate:,.0f} img/s', flush=True)
        metrics = OrderedDict(loss=loss_meter.avg)
        if self.mimo:
            metrics['binary_batches'] = binary_meter.avg
        return metrics

    def backward(self, loss: torch.Tensor, update: bool) -> None:
        """Backward (scaled for float16 AMP), optional gradient clipping, optimizer step when ``update``."""
        params = self.model.parameters()
        if self.loss_scaler is not None:
            self.loss_scaler(loss, self.optimizer, clip_grad=self.args.clip_grad, parameters=params,
                             need_update=update)
        else:
            loss.backward()
            if update:
                if self.args.clip_grad is not None:
                    torch.nn.utils.clip_grad_norm_(params, self.args.clip_grad)
                self.optimizer.step()
        if update:
            self.optimizer.zero_grad(set_to_none=True)

    def evaluate(self, model: nn.Module, loader: DataLoader, num_eval: int) -> Dict[str, float]:
        """SPEC §5 metrics of ``model`` on the whole validation split (shards gathered across ranks)."""
        member_logits, targets = collect_member_logits(model, loader, self.device, self.autocast_dtype,
                                                       self.args.channels_last)
        member_logits, targets = gather_eval(member_logits, targets, self.args, num_eval)
        return ensemble_metrics(member_logits, targets)

    def state(self, epoch: int, metrics: Dict[str, float], best_metric: Optional[float]) -> Dict[str, Any]:
        """Everything a resumed run needs, as tensors and plain values (``torch.load(weights_only=True)``)."""
        state = dict(epoch=epoch, arch=self.args.model, state_dict=self.model.state_dict(),
                     optimizer=self.optimizer.state_dict(), metric=metrics.get(self.args.eval_metric),
                     best_metric=best_metric, version=2)
        if self.model_ema is not None:
            state['state_dict_ema'] = self.model_ema.module.state_dict()
        if self.loss_scaler is not None:
            state['scaler'] = self.loss_scaler.state_dict()
        return state


def keep_epoch_checkpoint(output_dir: str, epoch: int, hist: int) -> None:
    """Copy ``last`` to ``checkpoint-<epoch>`` (atomically) and keep only the newest ``hist`` of them."""
    if hist <= 0:
        return
    target = os.path.join(output_dir, f'checkpoint-{epoch}.pth.tar')
    shutil.copyfile(os.path.join(output_dir, CHECKPOINT_LAST), f'{target}.tmp')
    os.replace(f'{target}.tmp', target)
    kept = sorted((int(name[len('checkpoint-'):-len('.pth.tar')]), name) for name in os.listdir(output_dir)
                  if name.startswith('checkpoint-') and name.endswith('.pth.tar'))
    for _, name in kept[:-hist]:
        os.remove(os.path.join(output_dir, name))


def format_metrics(metrics: Dict[str, float]) -> str:
    """One human line: ensemble and member accuracy, NLL, NLL_c, ECE and diversity where present."""
    parts = [f"top1 {metrics['top1']:.2f}", f"top5 {metrics['top5']:.2f}"]
    if 'member_top1' in metrics:
        members = ' / '.join(f'{v:.2f}' for k, v in metrics.items() if k.startswith('top1_m'))
        parts.append(f'members {members}')
    parts += [f"NLL {metrics['loss']:.4f}", f"NLL_c {metrics['nll_c']:.4f}", f"ECE {metrics['ece']:.2f}%"]
    if 'd_re' in metrics:
        parts += [f"d_re {metrics['d_re']:.3f}", f"disagreement {metrics['disagreement']:.3f}"]
    return '  '.join(parts)


def train(args: argparse.Namespace) -> Dict[str, float]:
    """The whole run: checks, model, data, loop, checkpoints, summary; returns the last evaluation metrics."""
    device = resolve_device(args)
    torch.manual_seed(args.seed)
    model = create_train_model(args)
    args.num_classes_resolved = model.num_classes
    if args.initial_checkpoint:
        timm.models.load_checkpoint(model, args.initial_checkpoint, use_ema=False, weights_only=True)
    if is_mimo(model):
        args.mixer_kwargs = mixer_kwargs(args, model)
        args.loss_kwargs = loss_kwargs(args, model)
        try:  # refuse bad mixing / loss flags before anything is written
            Mixer(**args.mixer_kwargs)
            MimoLoss(**args.loss_kwargs)
        except (ValueError, TypeError) as exc:
            raise CliError(f'bad MIMO flags: {exc}') from None
    if args.sync_bn and args.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    args.data_config = resolve_data_config(vars(args), model=model, verbose=args.rank == 0)
    train_loader, eval_loader, sampler, num_eval = build_loaders(args, args.data_config)
    trainer = Trainer(args, model, device, sampler.steps_per_epoch)
    start_epoch, best_metric = 0, None
    if args.resume:
        start_epoch, best_metric = load_resume(args.resume, model, None if args.no_resume_opt else trainer.optimizer,
                                               trainer.model_ema, trainer.loss_scaler)
    if start_epoch > 0:
        trainer.scheduler.step(start_epoch)

    output_dir = ''
    if args.rank == 0:
        name = args.experiment or '-'.join([time.strftime('%Y%m%d-%H%M%S'), args.model.replace('/', '_'),
                                            str(args.data_config['input_size'][-1])])
        output_dir = get_outdir(args.output or './output/train', name, inc=not args.resume)
        with open(os.path.join(output_dir, 'args.yaml'), 'w') as f:
            yaml.safe_dump(recorded_args(args), f, sort_keys=False)
        global_batch = args.batch_size * args.world_size * args.grad_accum_steps
        print(f'Model {args.model}: {sum(p.numel() for p in model.parameters()):,} params, '
              f'{"MIMO M=" + str(model.num_members) if trainer.mimo else "plain"}; {args.world_size} process(es), '
              f'global batch {global_batch} ({global_batch // args.batch_repeat} unique x b={args.batch_repeat}), '
              f'{sampler.steps_per_epoch} steps/epoch; output {output_dir}', flush=True)
        if trainer.mimo:
            print(f'Mixer({args.mixer_kwargs})  MimoLoss({args.loss_kwargs})', flush=True)

    eval_metrics: Dict[str, float] = {}
    for epoch in range(start_epoch, trainer.num_epochs):
        sampler.set_epoch(epoch)
        torch.manual_seed(epoch_seed(args.seed, epoch, args.rank))
        train_loader.generator.manual_seed(epoch_seed(args.seed, epoch, args.rank))
        if trainer.pixel_mix is not None:
            trainer.pixel_mix.reset()
        train_metrics = trainer.train_one_epoch(epoch, train_loader)
        if eval_loader is not None:
            eval_metrics = trainer.evaluate(model, eval_loader, num_eval)
            if trainer.model_ema is not None:
                ema_metrics = trainer.evaluate(trainer.model_ema.module, eval_loader, num_eval)
                eval_metrics.update((f'ema_{k}', v) for k, v in ema_metrics.items())
        trainer.scheduler.step(epoch + 1, eval_metrics.get(args.eval_metric))
        if args.rank == 0:
            metric = eval_metrics.get(args.eval_metric)
            is_best = metric is not None and (best_metric is None or (
                metric < best_metric if args.eval_metric in DECREASING_METRICS else metric > best_metric))
            best_metric = metric if is_best else best_metric
            if eval_metrics:
                print(f'Eval: {epoch}  {format_metrics(eval_metrics)}', flush=True)
            update_summary(epoch, train_metrics, eval_metrics, os.path.join(output_dir, 'summary.csv'),
                           lr=trainer.optimizer.param_groups[0]['lr'])
            state = trainer.state(epoch, eval_metrics, best_metric)
            save_checkpoint(os.path.join(output_dir, CHECKPOINT_LAST), state)
            keep_epoch_checkpoint(output_dir, epoch, args.checkpoint_hist)
            if is_best:
                save_checkpoint(os.path.join(output_dir, CHECKPOINT_BEST), state)
    if args.rank == 0 and eval_metrics:
        print(f'*** Final ({args.model}, epoch {trainer.num_epochs - 1}): {format_metrics(eval_metrics)}', flush=True)
        if best_metric is not None:
            print(f'*** Best {args.eval_metric}: {best_metric:.4f}', flush=True)
    return eval_metrics


def recorded_args(args: argparse.Namespace) -> Dict[str, Any]:
    """The flag values of the run, by dest: ``args.yaml``, reusable as ``--config`` of train.py and validate.py."""
    dests = {action.dest for action in build_parser()._actions} - {'help', 'config', 'kill_after_steps'}
    return {key: value for key, value in sorted(vars(args).items()) if key in dests}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point: bad input ends with one line on stderr and exit status 2."""
    logging.basicConfig(level=logging.WARNING, format='%(message)s')
    try:
        args = parse_args(argv)
        train(args)
    except (CliError, DataError) as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == '__main__':
    sys.exit(main())
