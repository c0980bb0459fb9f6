"""timm-mimo-train: train timm and timm_mimo models with timm's flags, on one process or many (torchrun).

The training step is :class:`timm_mimo.task.MimoTask` (a ``timm.task.TrainingTask``): for a MIMO model (one with
``num_members`` and ``forward_members``) it pairs the batch, samples the mixing plan, optionally pixel-mixes every
member input with partners from the whole dataset and weighs the member losses; any other timm model trains as in
timm (cross-entropy, label smoothing, timm's Mixup/CutMix). Global-batch semantics and batch repetition:
:mod:`timm_mimo.data`.

    timm-mimo-train --config cut_mixmo_wrn28_10_cifar100_b4 --data-dir /data/cifar100
    torchrun --nproc_per_node 2 train.py --model cut_mixmo --model-kwargs backbone=wrn28_2 ...

What is timm's and what is ours: the model, optimizer (``optimizer_kwargs``), scheduler (``scheduler_kwargs``),
Mixup, EMA, AMP scaler, distributed set-up, datasets and transforms are timm's. The loader is a plain
``DataLoader`` with :class:`~timm_mimo.data.BatchRepeatSampler` (timm's ``create_loader`` takes no batch sampler, and
the batch-repetition / DDP / gradient-accumulation shard equality needs one). Checkpoints are written here rather
than by timm's ``CheckpointSaver``: they also hold the scheduler state (exact resume of every ``--sched``), are written
atomically and never with non-finite weights, and hold no pickled objects (``torch.load(weights_only=True)``).
"""
import argparse
import contextlib
import importlib
import importlib.util
import logging
import math
import os
import random
import re
import shutil
import signal
import sys
import time
from collections import OrderedDict
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import timm
import torch
import torch.distributed as dist
import torch.nn as nn
import yaml
from timm.data import Mixup, resolve_data_config
from timm.layers import set_fast_norm
from timm.loss import SoftTargetCrossEntropy
from timm.models import clean_state_dict
from timm.optim import create_optimizer_v2, optimizer_kwargs
from timm.scheduler import create_scheduler_v2, scheduler_kwargs
from timm.scheduler.plateau_lr import PlateauLRScheduler
from timm.utils import NativeScaler, dispatch_clip_grad, distribute_bn, init_distributed_device

import timm_mimo  # noqa: F401  (registers the MIMO models)
from timm_mimo.checkpoint import allow_train_args
from timm_mimo.cli.args import (
    MODEL_CHECKS,
    ArgumentParser,
    CliError,
    Refused,
    add_data_args,
    add_device_args,
    add_loader_args,
    add_model_args,
    add_refused,
    at_least,
    check_channel_stats,
    check_compile,
    check_model_input,
    check_refused,
    check_values,
    existing_file,
    non_negative,
    one_line,
    parse_with_config,
    positive,
    quiet_warnings,
    unit_interval,
)
from timm_mimo.cli.checkpoint import (
    check_checkpoint_model,
    checkpoint_class_names,
    read_checkpoint,
    read_weights_file,
)
from timm_mimo.cli.data_path import (
    DEVICE_DATA_REFUSED,
    create_eval_loader,
    create_train_loader,
    open_train_data,
    open_train_split,
)
from timm_mimo.cli.dry_run import train_dry_run
from timm_mimo.cli.errors import report_unexpected, split_debug
from timm_mimo.cli.evaluate import DECREASING_METRICS, format_metrics, metric_columns
from timm_mimo.cli.progress import (
    StepTimes,
    add_log_file,
    close_logging,
    collect_logged,
    rounded_summary,
    setup_console_logging,
)
from timm_mimo.cli.run_folder import (
    Interrupted,
    SignalGuard,
    claim_run_folder,
    is_inside,
    same_path,
    write_atomically,
    write_error,
)
from timm_mimo.compiled_optim import CompiledOptimizerStep
from timm_mimo.data import (
    DataError,
    SimultaneousMixup,
    dataset_class_descriptions,
    dataset_class_names,
    dataset_num_classes,
)
from timm_mimo.labels import check_unique_names
from timm_mimo.metrics import is_mimo
from timm_mimo.mixing import MASK_KINDS
from timm_mimo.outputs import check_start_epoch, lock_run_folder, release_run_folders, remove_empty_run_folder
from timm_mimo.pretrained import PretrainedDownloadError, hub_errors_with_offline_hint
from timm_mimo.task import MimoTask

__all__ = ['build_parser', 'parse_args', 'train', 'main', 'save_checkpoint', 'load_resume', 'MIMO_FLAGS']

_logger = logging.getLogger('timm_mimo.train')

# MIMO flags: dest -> flag, refused on a non-MIMO model when set (not None); --batch-repeat is not one of them:
# on a plain model it is batch augmentation (Hoffer et al.), the MixViT papers' single-input baselines
MIMO_FLAGS = OrderedDict(
    num_members='--num-members', input_repeat='--input-repeat', mix='--mix', mix_prob='--mix-prob',
    mix_prob_decay='--mix-prob-decay', mix_alpha='--mix-alpha', loss_root='--loss-root',
    single_source_end='--single-source-end', mimo_cutmix='--mimo-cutmix', mimo_mixup='--mimo-mixup')
CHECKPOINT_LAST = 'last.pth.tar'
CHECKPOINT_BEST = 'model_best.pth.tar'
EPOCH_CHECKPOINT = re.compile(r'^checkpoint-(\d+)\.pth\.tar$')
L2_OPTIMIZERS = ('sgd', 'nesterov', 'momentum')  # optimizers whose weight decay is the gradient of an L2 term
# timm transform options that only apply to timm's (RandomResizedCrop) training transform, not to --crop-pad's
TIMM_TRANSFORM_ONLY = ('train_crop_mode', 'scale', 'ratio', 'vflip', 'color_jitter', 'color_jitter_prob',
                       'grayscale_prob', 'gaussian_blur_prob', 'train_interpolation')

REFUSED = {
    'Dataset parameters': [
        Refused(('--train-num-samples',), 'for iterable datasets, which the batch-repetition sampler cannot index',
                default=None, type=int),
        Refused(('--val-num-samples',), 'for iterable datasets, which the batch-repetition sampler cannot index',
                default=None, type=int),
    ],
    'Model parameters': [
        Refused(('--head-init-scale',), 'MIMO models have M classifier heads; scale them in --model-kwargs or code',
                default=None, type=float),
        Refused(('--head-init-bias',), 'MIMO models have M classifier heads; set them in --model-kwargs or code',
                default=None, type=float),
    ],
    'Learning rate schedule parameters': [
        Refused(('--epoch-repeats',), 'an epoch is one pass over |D|·b images (batch repetition b); use '
                '--batch-repeat or --epochs', type=float, default=0.),
    ],
    'Augmentation and regularization parameters': [
        Refused(('--aug-repeats',), "timm's repeated-augmentation sampler; use --batch-repeat (b), which also works "
                'on one process and keeps DDP / gradient accumulation equal', type=float, default=0),
        Refused(('--aug-splits',), 'AugMix splits with a JSD loss; use --aa augmix (the MixMo AugMix, no JSD)',
                type=int, default=0),
        Refused(('--jsd-loss',), 'needs --aug-splits (see there)', action='store_true', default=False),
        Refused(('--bce-loss',), 'timm_mimo trains with (member) cross-entropy', action='store_true', default=False),
        Refused(('--bce-sum',), 'see --bce-loss', action='store_true', default=False),
        Refused(('--bce-target-thresh',), 'see --bce-loss', type=float, default=None),
        Refused(('--bce-pos-weight',), 'see --bce-loss', type=float, default=None),
        Refused(('--resplit',), 'needs --aug-splits (see there)', action='store_true', default=False),
        Refused(('--drop-connect',), 'deprecated in timm; use --drop-path', type=float, default=None),
    ],
    'Batch norm parameters': [
        Refused(('--split-bn',), 'needs --aug-splits (see there)', action='store_true', default=False),
    ],
    'Model exponential moving average parameters': [
        Refused(('--model-ema-force-cpu',), 'the EMA model is evaluated every epoch on the training device',
                action='store_true', default=False),
    ],
    'Miscellaneous parameters': [
        Refused(('--worker-seeding',), "workers are always seeded as timm's 'all' (torch, random and numpy from "
                'the per-epoch loader generator)', type=str, default='all'),
        Refused(('--val-interval',), 'every epoch is evaluated and checkpointed (exact resume from any epoch)',
                type=int, default=1),
        Refused(('--recovery-interval',), 'last.pth.tar is written atomically at every epoch end; mid-epoch '
                'recovery points are not supported', type=int, default=0),
        Refused(('--save-images',), 'not implemented for multi-input batches', action='store_true', default=False),
        Refused(('--tta',), 'test-time augmentation is not implemented', type=int, default=0),
        Refused(('--use-multi-epochs-loader',), 'the batch-repetition sampler is re-seeded every epoch',
                action='store_true', default=False),
    ],
    'NaFlex loader parameters (timm)': [
        Refused(('--naflex-loader',), 'variable-resolution NaFlex batches cannot be paired into MIMO inputs',
                action='store_true', default=False),
        Refused(('--naflex-train-seq-lens',), 'see --naflex-loader', type=int, nargs='+',
                default=[128, 256, 576, 784, 1024]),
        Refused(('--naflex-max-seq-len',), 'see --naflex-loader', type=int, default=576),
        Refused(('--naflex-patch-sizes',), 'see --naflex-loader', type=int, nargs='+', default=None),
        Refused(('--naflex-patch-size-probs',), 'see --naflex-loader', type=float, nargs='+', default=None),
        Refused(('--naflex-loss-scale',), 'see --naflex-loader', type=str, default='linear'),
    ],
    'Knowledge distillation parameters (timm)': [
        Refused(('--kd-model-name',), "timm's distillation tasks are single-output; a MIMO teacher/student is not "
                'implemented', type=str, default=None),
        Refused(('--kd-distill-type',), 'see --kd-model-name', type=str, default='logit'),
        Refused(('--kd-loss-type',), 'see --kd-model-name', type=str, default='kl'),
        Refused(('--distill-loss-weight',), 'see --kd-model-name', type=float, default=None),
        Refused(('--task-loss-weight',), 'see --kd-model-name', type=float, default=None),
        Refused(('--kd-temperature',), 'see --kd-model-name', type=float, default=4.0),
        Refused(('--kd-student-feature-dim',), 'see --kd-model-name', type=int, default=None),
        Refused(('--kd-teacher-feature-dim',), 'see --kd-model-name', type=int, default=None),
        Refused(('--kd-token-distill-type',), 'see --kd-model-name', type=str, default='soft'),
    ],
}


def _alpha(value: Any) -> Any:
    """``--mix-alpha``: a float, or ``'none'`` for the fixed κ = 1/M of MIMO."""
    return 'none' if str(value).lower() == 'none' else float(value)


def build_parser() -> argparse.ArgumentParser:
    """timm's train.py options (names, meanings, defaults; refused ones say why) plus the MIMO group."""
    parser = ArgumentParser(prog='timm-mimo-train', usage='%(prog)s [-c FILE] [--data-dir DIR] [--model MODEL] '
                            '[options]', description="Train a timm model, MIMO ensembles included, with timm's "
                                                     'train.py flags (the MIMO options first).')
    parser.add_argument('-c', '--config', default='', type=str, metavar='FILE',
                        help='YAML file of default flag values (keys: flag names), or the name of a shipped recipe '
                             '(python -m timm_mimo configs); command-line flags override it')
    group = parser.add_argument_group('Dataset parameters')
    add_data_args(parser, group)
    group.add_argument('--train-split', metavar='NAME', default='train',
                       help="split to train on (default: train); '.' = the data dir itself")
    group.add_argument('--val-split', metavar='NAME', default='validation',
                       help="split evaluated after each epoch (default: validation); '' = no evaluation")
    group.add_argument('--dry-run', action='store_true', default=False,
                       help='resolve the recipe, the model and the data as the run would, print what it would train '
                            'on (dataset layout, classes, images, sizes, steps, batch, lr) and what is wrong, then '
                            'exit without writing anything')
    # the readable class names a release gives (Tiny ImageNet's words.txt), recorded in args.yaml for the model card
    group.add_argument('--class-descriptions', type=yaml.safe_load, default=None, help=argparse.SUPPRESS)
    add_refused(group, REFUSED['Dataset parameters'])
    group = parser.add_argument_group('Model parameters')
    add_model_args(group)
    group.add_argument('--pretrained-path', default=None, type=str,
                       help='checkpoint file used in place of the pretrained weights (adapted to the model like '
                            'them); implies --pretrained')
    group.add_argument('--initial-checkpoint', default='', type=str, metavar='PATH',
                       help='checkpoint whose weights are loaded into the freshly built model (default: none)')
    group.add_argument('--resume', default='', type=str, metavar='PATH',
                       help='continue a run from this checkpoint: model, optimizer, scheduler, EMA and loss-scaler '
                            'state')
    group.add_argument('--no-resume-opt', action='store_true', default=False,
                       help='with --resume, restore the model but not the optimizer state')
    group.add_argument('-b', '--batch-size', type=int, default=128, metavar='N',
                       help='images per forward pass on each process (default: 128)')
    group.add_argument('-vb', '--validation-batch-size', type=int, default=None, metavar='N',
                       help='evaluation batch size (default: --batch-size)')
    group.add_argument('--grad-accum-steps', type=int, default=1, metavar='N',
                       help='forward / backward passes whose gradients add up to one optimizer step (default: 1)')
    group.add_argument('--grad-checkpointing', action='store_true', default=False,
                       help='recompute activations in the backward pass to save memory, where the model supports it')
    add_refused(group, REFUSED['Model parameters'])
    group = parser.add_argument_group('Device parameters')
    add_device_args(group)
    group.add_argument('--no-ddp-bb', action='store_true', default=False,
                       help='DDP: do not broadcast buffers from rank 0 at each forward pass')
    group.add_argument('--synchronize-step', action='store_true', default=False,
                       help='wait for the CUDA device to finish at the end of every step (for timing)')
    group.add_argument('--local_rank', default=0, type=int,
                       help='filled in by torch.distributed.launch and unused: the rank comes from the environment, '
                            'as in timm')
    group = parser.add_argument_group('Optimizer parameters')
    group.add_argument('--opt', default='sgd', type=str, metavar='OPTIMIZER',
                       help="optimizer name in timm's registry (default: sgd, SGD with Nesterov momentum)")
    group.add_argument('--opt-eps', default=None, type=float, metavar='EPSILON',
                       help="optimizer epsilon (default: the optimizer's own)")
    group.add_argument('--opt-betas', default=None, type=float, nargs='+', metavar='BETA',
                       help="optimizer beta coefficients (default: the optimizer's own)")
    group.add_argument('--momentum', type=float, default=0.9, metavar='M',
                       help='momentum of the optimizers that take one (default: 0.9)')
    group.add_argument('--weight-decay', type=float, default=2e-5,
                       help="optimizer weight decay, which timm skips on biases and norm parameters (default: 2e-5)")
    group.add_argument('--l2', type=float, default=None, metavar='LAMBDA',
                       help='timm_mimo: the MixMo / MIMO papers\' L2 regularisation: LAMBDA·ΣW² over ALL '
                            'parameters (BatchNorm and biases included) added to the loss, i.e. a gradient of '
                            '2·LAMBDA·W (applied as coupled SGD weight decay 2·LAMBDA, no parameter filtering). '
                            'SGD only; set --weight-decay 0 with it')
    group.add_argument('--clip-grad', type=float, default=None, metavar='NORM',
                       help='gradient clipping threshold, see --clip-mode (default: no clipping)')
    group.add_argument('--clip-mode', type=str, default='norm', choices=('norm', 'value', 'agc'),
                       help='how --clip-grad clips: total norm, each value, or adaptive (agc) (default: norm)')
    group.add_argument('--layer-decay', type=float, default=None,
                       help='per-layer learning-rate decay factor, towards the input (default: none)')
    group.add_argument('--layer-decay-min-scale', type=float, default=0,
                       help='lower bound of the per-layer learning-rate scale (default: 0)')
    group.add_argument('--layer-decay-no-opt-scale', type=float, default=None,
                       help='layers whose learning-rate scale falls below this are not optimised (default: none)')
    group.add_argument('--opt-kwargs', nargs='*', default={}, action=timm.utils.ParseKwargs,
                       help='additional optimizer arguments, as key=value')
    group = parser.add_argument_group('Learning rate schedule parameters')
    group.add_argument('--sched', type=str, default='cosine', metavar='SCHEDULER',
                       help='learning-rate schedule: cosine, tanh, step, multistep, plateau, poly, wsd, rsqrt, '
                            'constant or none (default: cosine)')
    group.add_argument('--sched-on-updates', action='store_true', default=False,
                       help='advance the schedule after every optimizer update instead of every epoch')
    group.add_argument('--lr', type=float, default=None, metavar='LR',
                       help='absolute learning rate; when set, --lr-base is ignored (default: none); the configs give '
                            'the papers\' rate, (0.1 / b)·(bs / 128) for MixMo')
    group.add_argument('--lr-base', type=float, default=0.1, metavar='LR',
                       help='reference rate used when --lr is unset, scaled by the unique images per step (global '
                            'batch / --batch-repeat) over --lr-base-size (default: 0.1)')
    group.add_argument('--lr-base-size', type=int, default=256, metavar='DIV',
                       help='unique images per step at which --lr-base applies unscaled (default: 256)')
    group.add_argument('--lr-base-scale', type=str, default='', metavar='SCALE',
                       help='how --lr-base scales with the batch: linear or sqrt (default: chosen by the optimizer)')
    group.add_argument('--lr-noise', type=float, nargs='+', default=None, metavar='FRAC',
                       help='start [end] of learning-rate noise, as fractions of the schedule length')
    group.add_argument('--lr-noise-pct', type=float, default=0.67, metavar='PERCENT',
                       help='bound of the relative learning-rate noise (default: 0.67)')
    group.add_argument('--lr-noise-std', type=float, default=1.0, metavar='STDDEV',
                       help='standard deviation of the learning-rate noise (default: 1.0)')
    group.add_argument('--lr-cycle-mul', type=float, default=1.0, metavar='MULT',
                       help='factor on the length of each successive schedule cycle (default: 1.0)')
    group.add_argument('--lr-cycle-decay', type=float, default=0.5, metavar='MULT',
                       help='factor on the peak rate of each successive schedule cycle (default: 0.5)')
    group.add_argument('--lr-cycle-limit', type=int, default=1, metavar='N',
                       help='number of schedule cycles; restarts only when > 1 (default: 1)')
    group.add_argument('--lr-k-decay', type=float, default=1.0,
                       help='k of the k-decay variant of the cosine / poly schedules (default: 1.0)')
    group.add_argument('--lr-decay-fn', type=str, default=None, help='decay function of the wsd / rsqrt schedules')
    group.add_argument('--lr-stable-timescale', type=float, default=None,
                       help='stable-phase timescale of the wsd / rsqrt schedules')
    group.add_argument('--warmup-lr', type=float, default=1e-5, metavar='LR',
                       help='learning rate at the start of warmup (default: 1e-5)')
    group.add_argument('--min-lr', type=float, default=0, metavar='LR',
                       help='floor of the learning rate for schedules that decay towards 0 (default: 0)')
    group.add_argument('--epochs', type=int, default=300, metavar='N', help='training epochs (default: 300)')
    group.add_argument('--extend-lr', type=float, default=None, metavar='LR',
                       help='timm_mimo: with --resume and a larger --epochs, the epochs from the resumed one on follow '
                            'a fresh --sched schedule from LR (no warm-up) instead of the run\'s ended one; without it '
                            'a larger --epochs is refused')
    group.add_argument('--start-epoch', default=None, type=int, metavar='N',
                       help='epoch to start from, overriding the one of a --resume checkpoint')
    group.add_argument('--decay-milestones', default=[90, 180, 270], type=int, nargs='+', metavar='MILESTONES',
                       help='increasing epochs at which multistep multiplies the rate by --decay-rate (default: 90 '
                            '180 270)')
    group.add_argument('--decay-epochs', type=float, default=90, metavar='N',
                       help='epochs between two decays of the step schedule (default: 90)')
    group.add_argument('--warmup-epochs', type=int, default=5, metavar='N',
                       help='epochs of warmup from --warmup-lr, for schedules that have one (default: 5)')
    group.add_argument('--warmup-prefix', action='store_true', default=False,
                       help='run the warmup before the schedule instead of within its first epochs')
    group.add_argument('--cooldown-epochs', type=int, default=0, metavar='N',
                       help='extra epochs at --min-lr after the schedule ends (default: 0)')
    group.add_argument('--patience-epochs', type=int, default=10, metavar='N',
                       help='plateau schedule: epochs without improvement before a decay (default: 10)')
    group.add_argument('--decay-rate', '--dr', type=float, default=0.1, metavar='RATE',
                       help='factor applied at each step / multistep / plateau decay (default: 0.1)')
    add_refused(group, REFUSED['Learning rate schedule parameters'])
    group = parser.add_argument_group('Augmentation and regularization parameters')
    group.add_argument('--no-aug', action='store_true', default=False,
                       help='no training augmentation at all (overrides the other augmentation flags)')
    group.add_argument('--train-crop-mode', type=str, default=None,
                       help="random crop of timm's training transform: rrc, rkrc or rkrr (default: rrc)")
    group.add_argument('--scale', type=float, nargs='+', default=[0.08, 1.0], metavar='PCT',
                       help='area fraction range of the random resized crop (default: 0.08 1.0)')
    group.add_argument('--ratio', type=float, nargs='+', default=[3. / 4., 4. / 3.], metavar='RATIO',
                       help='aspect ratio range of the random resized crop (default: 0.75 1.33)')
    group.add_argument('--hflip', type=float, default=0.5,
                       help='probability of a horizontal flip in training (default: 0.5)')
    group.add_argument('--vflip', type=float, default=0.,
                       help='probability of a vertical flip in training (default: 0)')
    group.add_argument('--color-jitter', type=float, default=0.4, metavar='PCT',
                       help='strength of the brightness / contrast / saturation jitter (default: 0.4)')
    group.add_argument('--color-jitter-prob', type=float, default=None, metavar='PCT',
                       help='probability that the colour jitter is applied at all (default: always)')
    group.add_argument('--grayscale-prob', type=float, default=None, metavar='PCT',
                       help='probability of turning a training image to grayscale (default: never)')
    group.add_argument('--gaussian-blur-prob', type=float, default=None, metavar='PCT',
                       help='probability of a gaussian blur of a training image (default: never)')
    group.add_argument('--aa', type=str, default=None, metavar='NAME',
                       help='AutoAugment policy: timm\'s ("v0", "original", "rand-m9-mstd0.5", ...), or with '
                            '--crop-pad "cifar10" (torchvision\'s CIFAR-10 policy) and "augmix" (the MixMo AugMix)')
    group.add_argument('--reprob', type=float, default=0., metavar='PCT',
                       help='probability of random erasing per image (default: 0)')
    group.add_argument('--remode', type=str, default='pixel',
                       help='fill of erased regions: const, rand or pixel (default: pixel)')
    group.add_argument('--recount', type=int, default=1, help='number of regions erased per image (default: 1)')
    group.add_argument('--mixup', type=float, default=0.0,
                       help="Mixup alpha of plain models, through timm's Mixup; MIMO models: --mimo-mixup "
                            "(default: 0, off)")
    group.add_argument('--cutmix', type=float, default=0.0,
                       help="CutMix alpha of plain models, through timm's Mixup; MIMO models: --mimo-cutmix "
                            "(default: 0, off)")
    group.add_argument('--cutmix-minmax', type=float, nargs='+', default=None,
                       help='CutMix box area fraction range, min max; replaces the alpha and turns CutMix on '
                            '(default: none)')
    group.add_argument('--mixup-prob', type=float, default=1.0,
                       help='probability of mixing a batch when Mixup or CutMix is on (default: 1.0)')
    group.add_argument('--mixup-switch-prob', type=float, default=0.5,
                       help='probability of CutMix instead of Mixup when both are on (default: 0.5)')
    group.add_argument('--mixup-mode', type=str, default='batch',
                       help='granularity of the mixing draws: batch, pair or elem; timm_mimo adds simultaneous '
                            '(plain models, --mixup and --cutmix both > 0: a CutMix box filled by a Mixup blend, '
                            "MixViT's pixel MSDA, one draw per batch) (default: batch)")
    group.add_argument('--mixup-off-epoch', default=0, type=int, metavar='N',
                       help='stop Mixup / CutMix from this epoch on; 0 = never (default: 0)')
    group.add_argument('--smoothing', type=float, default=None,
                       help="label smoothing; unset: 0.1 (timm's default) for plain models, the model's loss_cfg "
                            '(0 for MixMo, 0.1 for MixViT) for MIMO models')
    group.add_argument('--train-interpolation', type=str, default='random',
                       help='resize interpolation in training: random, bilinear or bicubic (default: random)')
    group.add_argument('--drop', type=float, default=None, metavar='PCT',
                       help="dropout rate, the model's drop_rate (default: the model's own)")
    group.add_argument('--drop-path', type=float, default=None, metavar='PCT',
                       help="stochastic depth (drop path) rate (default: the model's own)")
    group.add_argument('--drop-block', type=float, default=None, metavar='PCT',
                       help="DropBlock rate (default: the model's own)")
    add_refused(group, REFUSED['Augmentation and regularization parameters'])
    group = parser.add_argument_group('Batch norm parameters')
    group.add_argument('--bn-momentum', type=float, default=None,
                       help='momentum set on every BatchNorm layer (default: left as built)')
    group.add_argument('--bn-eps', type=float, default=None,
                       help='epsilon set on every BatchNorm layer (default: left as built)')
    group.add_argument('--sync-bn', action='store_true', default=False,
                       help='turn BatchNorm into SyncBatchNorm in distributed training')
    group.add_argument('--dist-bn', type=str, default='reduce', choices=('reduce', 'broadcast', ''),
                       help='after each epoch, align BatchNorm statistics across processes: reduce (average), '
                            'broadcast (from rank 0) or "" (leave them) (default: reduce)')
    add_refused(group, REFUSED['Batch norm parameters'])
    group = parser.add_argument_group('Model exponential moving average parameters')
    group.add_argument('--model-ema', action='store_true', default=False,
                       help='keep an exponential moving average (EMA) of the model weights')
    group.add_argument('--model-ema-decay', type=float, default=0.9998,
                       help='EMA decay per update (default: 0.9998)')
    group.add_argument('--model-ema-warmup', action='store_true', default=False,
                       help='ramp the EMA decay up over the first updates')
    add_refused(group, REFUSED['Model exponential moving average parameters'])
    group = parser.add_argument_group('Miscellaneous parameters')
    group.add_argument('--seed', type=int, default=42, metavar='S',
                       help='seed of the random number generators (default: 42)')
    group.add_argument('--log-interval', type=int, default=50, metavar='N',
                       help='log training progress every N batches (default: 50)')
    group.add_argument('--log-file', default='', type=str, metavar='FILE',
                       help="also write the log to FILE, relative to the run folder (timm's rotating log file; "
                            'default: none)')
    group.add_argument('--checkpoint-hist', type=int, default=10, metavar='N',
                       help='per-epoch checkpoints kept, the newest ones; 0 = none (default: 10)')
    add_loader_args(group)
    group.add_argument('--device-data', action='store_true', default=False,
                       help='timm_mimo: decode the training and validation splits once and keep them on the device as '
                            'uint8; the CIFAR recipe (--crop-pad pad-crop, --hflip) runs there, every batch-repeated '
                            'copy with its own crop. For small data sets of one image size (CIFAR, Tiny ImageNet); '
                            'needs --crop-pad')
    group.add_argument('--output', default='', type=str, metavar='PATH',
                       help='parent folder of the run folders (default: ./output/train)')
    group.add_argument('--experiment', default='', type=str, metavar='NAME',
                       help='run folder name under --output (default: date-model-size)')
    group.add_argument('--eval-metric', default='top1', type=str, metavar='EVAL_METRIC',
                       help='evaluation column that picks the best checkpoint, e.g. nll_c (default: top1)')
    group.add_argument('--log-wandb', action='store_true', default=False,
                       help='log training and validation metrics to wandb (needs the wandb package)')
    group.add_argument('--wandb-project', default=None, type=str, help='project of the wandb run')
    group.add_argument('--wandb-tags', default=[], type=str, nargs='+', help='tags of the wandb run')
    group.add_argument('--wandb-resume-id', default='', type=str, metavar='ID',
                       help='id of the wandb run to continue when resuming')
    # test hook: SIGKILL this process after N optimizer steps, to check that a killed run resumes exactly
    group.add_argument('--kill-after-steps', type=int, default=None, help=argparse.SUPPRESS)
    add_refused(group, REFUSED['Miscellaneous parameters'])
    for title in ('NaFlex loader parameters (timm)', 'Knowledge distillation parameters (timm)'):
        add_refused(parser.add_argument_group(title), REFUSED[title])
    group = parser.add_argument_group('MIMO parameters (timm_mimo; unset = the model\'s mix_cfg / loss_cfg; refused '
                                      'on plain models)')
    group.add_argument('--num-members', type=int, default=None, help='M, the number of members (model kwarg)')
    group.add_argument('--batch-repeat', type=int, default=1,
                       help='b: every global batch holds G/b unique images, each b times (MIMO arXiv:2010.06610 '
                            'batch repetition; on a plain model, batch augmentation)')
    group.add_argument('--input-repeat', type=float, default=None,
                       help='ρ in [0, 1]: share of positions where all M inputs are the same image')
    group.add_argument('--mix', default=None, help='mask kind of binary batches: ' + ', '.join(MASK_KINDS))
    group.add_argument('--mix-prob', type=float, default=None, help='p in [0, 1]: probability of a binary batch')
    group.add_argument('--mix-prob-decay', action=argparse.BooleanOptionalAction, default=None,
                       help='p descends linearly to 0 over the last twelfth of training (MixMo)')
    group.add_argument('--mix-alpha', type=_alpha, default=None,
                       help="κ ~ Beta(α, α) (Dirichlet(α) for M > 2); 'none' = κ fixed at 1/M (MIMO)")
    group.add_argument('--loss-root', type=float, default=None, help='r of the loss weights w_r(κ); inf = none')
    group.add_argument('--single-source-end', action=argparse.BooleanOptionalAction, default=None,
                       help="MixViT's end-of-training schedule: batches take all tokens from one input")
    group.add_argument('--mimo-cutmix', type=float, default=None,
                       help='pixel CutMix alpha on every member input, partners from the whole dataset')
    group.add_argument('--mimo-mixup', type=float, default=None,
                       help='pixel Mixup alpha on every member input; with --mimo-cutmix both apply at once '
                            '(MixViT)')
    group.add_argument('--mimo-mix-prob', type=float, default=0.5,
                       help='probability that one member input is pixel-mixed (default 0.5, the official MixMo '
                            'code; the papers give none)')
    parser._action_groups.insert(2, parser._action_groups.pop())  # --help: the MIMO group right after the options
    return parser


TRAIN_CHECKS = MODEL_CHECKS + [
    ('validation_batch_size', at_least(1), 'an integer >= 1'),
    ('grad_accum_steps', at_least(1), 'an integer >= 1'),
    ('epochs', at_least(1), 'an integer >= 1'),
    ('start_epoch', non_negative, 'an integer >= 0'),
    ('lr', positive, '> 0 (or unset to use --lr-base)'),
    ('extend_lr', positive, '> 0'),
    ('lr_base', positive, '> 0'),
    ('lr_base_size', at_least(1), 'an integer >= 1'),
    ('warmup_lr', non_negative, '>= 0'),
    ('min_lr', non_negative, '>= 0'),
    ('warmup_epochs', non_negative, 'an integer >= 0'),
    ('cooldown_epochs', non_negative, 'an integer >= 0'),
    ('patience_epochs', non_negative, 'an integer >= 0'),
    ('decay_epochs', positive, '> 0'),
    ('decay_milestones', non_negative, 'epochs >= 0'),
    ('decay_rate', positive, '> 0'),
    ('momentum', lambda v: 0 <= v < 1, 'in [0, 1)'),
    ('weight_decay', non_negative, '>= 0'),
    ('l2', non_negative, '>= 0'),
    ('clip_grad', positive, '> 0'),
    ('hflip', unit_interval, 'a probability in [0, 1]'),
    ('vflip', unit_interval, 'a probability in [0, 1]'),
    ('reprob', unit_interval, 'a probability in [0, 1]'),
    ('recount', at_least(1), 'an integer >= 1'),
    ('mixup', non_negative, '>= 0'),
    ('cutmix', non_negative, '>= 0'),
    ('mixup_prob', unit_interval, 'a probability in [0, 1]'),
    ('mixup_switch_prob', unit_interval, 'a probability in [0, 1]'),
    ('smoothing', lambda v: 0 <= v < 1, 'in [0, 1)'),
    ('drop', unit_interval, 'in [0, 1]'),
    ('drop_path', unit_interval, 'in [0, 1]'),
    ('drop_block', unit_interval, 'in [0, 1]'),
    ('model_ema_decay', unit_interval, 'in [0, 1]'),
    ('log_interval', at_least(1), 'an integer >= 1'),
    ('checkpoint_hist', non_negative, 'an integer >= 0'),
    ('num_members', at_least(2), 'an integer >= 2'),
    ('batch_repeat', at_least(1), 'an integer >= 1'),
    ('input_repeat', unit_interval, 'in [0, 1]'),
    ('mix_prob', unit_interval, 'a probability in [0, 1]'),
    ('mix_alpha', lambda v: v == 'none' or v > 0, "> 0 or 'none'"),
    ('loss_root', positive, '> 0 (inf for no weighting)'),
    ('mimo_cutmix', non_negative, '>= 0'),
    ('mimo_mixup', non_negative, '>= 0'),
    ('mimo_mix_prob', unit_interval, 'a probability in [0, 1]'),
]


MIXUP_MODES = ('batch', 'pair', 'elem', 'simultaneous')  # timm's three, and MixViT's CutMix + Mixup at once


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse and check every flag; a ``--config`` YAML sets defaults that the command line overrides."""
    parser = build_parser()
    args = parse_with_config(parser, argv)
    check_refused(parser, args)
    check_values(parser, args, TRAIN_CHECKS)
    if args.data and not args.data_dir:
        args.data_dir = args.data
    check_channel_stats(args)
    check_compile(args)
    check_unique_names(args.class_names)
    if args.sched != 'none' and args.warmup_epochs and args.warmup_epochs >= args.epochs:
        raise CliError(f'--warmup-epochs {args.warmup_epochs} >= --epochs {args.epochs}: the whole run would train at '
                       f'the warm-up lr (from --warmup-lr {args.warmup_lr:g}), never at --lr; lower --warmup-epochs '
                       '(e.g. 0) or raise --epochs')
    if args.extend_lr is not None and not args.resume:
        raise CliError(f'--extend-lr {args.extend_lr:g} schedules the added epochs of a resumed run: give it with '
                       '--resume and a larger --epochs (for a new run use --lr)')
    if args.extend_lr is not None and args.sched == 'none':
        raise CliError(f'--extend-lr {args.extend_lr:g} with --sched none: without a schedule a resumed run goes on at '
                       '--lr; drop --extend-lr')
    if args.mix is not None and args.mix not in MASK_KINDS:
        raise CliError(f'--mix {args.mix!r}: unknown mask kind; expected one of {", ".join(MASK_KINDS)}')
    if args.mixup_mode not in MIXUP_MODES:
        raise CliError(f'--mixup-mode {args.mixup_mode!r}: expected one of {", ".join(MIXUP_MODES)}')
    if args.mixup_mode == 'simultaneous' and not (args.mixup > 0 and args.cutmix > 0 and args.cutmix_minmax is None):
        raise CliError(f'--mixup-mode simultaneous applies CutMix and Mixup at once: it needs --mixup and --cutmix > 0 '
                       f'(got {args.mixup} and {args.cutmix}) and no --cutmix-minmax')
    if args.crop_pad is not None:
        changed = [dest for dest in TIMM_TRANSFORM_ONLY if getattr(args, dest) != parser.get_default(dest)]
        if changed:
            flag = '--' + changed[0].replace('_', '-')
            raise CliError(f'{flag} {getattr(args, changed[0])!r} applies to timm\'s training transform, but '
                           '--crop-pad selects the CIFAR-style one (pad, random crop, flip): drop one of them')
    elif args.aa in ('cifar10', 'augmix'):
        raise CliError(f'--aa {args.aa!r} is a CIFAR policy of the --crop-pad transform: add --crop-pad 4')
    if args.device_data:
        if args.crop_pad is None:
            raise CliError('--device-data runs the CIFAR recipe on the device (pad-crop, flip): add --crop-pad N '
                           '(the papers use 4), or drop --device-data for timm\'s transforms')
        for dest, default, flag in DEVICE_DATA_REFUSED:
            if getattr(args, dest) != default:
                raise CliError(f'{flag} {getattr(args, dest)!r} is an image-level augmentation of the loader '
                               'workers; --device-data augments on the device with pad-crop and flip only: drop one '
                               'of them')
    if args.l2 is not None:
        if args.weight_decay:
            raise CliError(f'--l2 {args.l2} and --weight-decay {args.weight_decay} both set: the papers\' L2 '
                           'replaces weight decay, add --weight-decay 0')
        if args.opt.lower() not in L2_OPTIMIZERS:
            raise CliError(f'--l2 with --opt {args.opt!r}: only SGD weight decay is the gradient of an L2 term '
                           f'({", ".join(L2_OPTIMIZERS)}); use --weight-decay for {args.opt}')
    return args


# --------------------------------------------------------------------------------------------------------------------
# Model, data, optimizer
# --------------------------------------------------------------------------------------------------------------------

def create_train_model(args: argparse.Namespace) -> nn.Module:
    """``timm.create_model`` with the flags; unknown model and MIMO flags on a plain model are one-line errors."""
    if ':' not in args.model and not timm.is_model(args.model):
        raise CliError(f'--model {args.model!r} is unknown (see timm.list_models())')
    kwargs = dict(args.model_kwargs)
    for dest, key in (('num_classes', 'num_classes'), ('in_chans', 'in_chans'), ('drop', 'drop_rate'),
                      ('drop_path', 'drop_path_rate'), ('drop_block', 'drop_block_rate'), ('gp', 'global_pool'),
                      ('bn_momentum', 'bn_momentum'), ('bn_eps', 'bn_eps'), ('num_members', 'num_members')):
        if getattr(args, dest) is not None:
            kwargs[key] = getattr(args, dest)
    if args.input_size is not None:
        kwargs['in_chans'] = args.input_size[0]
    if args.pretrained_path:  # timm's meaning: the backbone's weights from a file, the classifier left fresh
        read_weights_file(args.pretrained_path, '--pretrained-path')  # a one-line error for a bad file
        kwargs['pretrained_cfg_overlay'] = dict(file=args.pretrained_path, num_classes=-1)
    hub_name = args.model.startswith('hf-hub:')
    try:  # --pretrained-path implies --pretrained (it is never silently ignored)
        with hub_errors_with_offline_hint(args.model) if hub_name else contextlib.nullcontext():
            model = timm.create_model(args.model, pretrained=args.pretrained or bool(args.pretrained_path), **kwargs)
    except TypeError as exc:
        if 'num_members' in str(exc):
            raise CliError(f'--num-members given but {args.model!r} is not a MIMO model') from None
        raise CliError(f'cannot create model {args.model!r} with {kwargs}: {one_line(exc, None)}') from None
    except PretrainedDownloadError as exc:  # whole, with the command-line way out
        raise CliError(f'cannot create model {args.model!r}: {one_line(exc, None)}; on the command line: '
                       f'{exc.cli_way_out}') from None
    except (RuntimeError, ValueError, OSError, AssertionError) as exc:
        raise CliError(f'cannot create model {args.model!r}: {one_line(exc, None)}') from None
    if args.pretrained_path:
        check_pretrained_weights(model, args.pretrained_path)
    if not is_mimo(model):
        given = [flag for dest, flag in MIMO_FLAGS.items() if getattr(args, dest) is not None]
        if given:
            raise CliError(f'{", ".join(given)} given but {args.model!r} is not a MIMO model (it has no num_members '
                           '/ forward_members); drop the flag or pick a timm_mimo model')
    elif args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None:
        raise CliError(f"--mixup/--cutmix are timm's batch mixing for plain models; for the MIMO model {args.model!r} "
                       'use --mimo-mixup/--mimo-cutmix')
    if args.grad_checkpointing:
        model.set_grad_checkpointing(enable=True)
    return model


def _informative(tensor: torch.Tensor) -> bool:
    """A weight worth comparing: floating point, more than one value, not constant (fresh biases, BN's ones)."""
    return tensor.is_floating_point() and tensor.numel() > 1 and bool(tensor.min() != tensor.max())


def check_pretrained_weights(model: nn.Module, path: str) -> None:
    """``--pretrained-path`` must have given the model some weight: timm loads a file of another network without
    strictness (only logging "Unexpected keys"), which would train from random weights. Refused when no weight of
    the model equals a tensor of the file."""
    try:
        with quiet_warnings():
            weights = timm.models.load_state_dict(path, weights_only=True)
    except Exception as exc:  # any failure to read the file is the file's fault: say which file
        raise CliError(f'--pretrained-path {path!r} cannot be read as a checkpoint ({type(exc).__name__}: '
                       f'{one_line(exc, 200)})') from None
    by_shape: Dict[Tuple[int, ...], List[torch.Tensor]] = {}
    for tensor in weights.values():
        if isinstance(tensor, torch.Tensor) and _informative(tensor):
            by_shape.setdefault(tuple(tensor.shape), []).append(tensor)
    for tensor in model.state_dict().values():
        if _informative(tensor) and any(torch.equal(tensor.cpu(), other.to(tensor.dtype))
                                        for other in by_shape.get(tuple(tensor.shape), ())):
            return
    keys = list(weights)
    if any(key.startswith(('backbone.', 'encoders.')) for key in keys):
        way_out = 'it holds a whole MIMO model (backbone.* keys): start from it with --initial-checkpoint'
    else:
        backbone = getattr(model, 'backbone_name', None) or type(model).__name__
        way_out = f'give a checkpoint of {backbone} (or drop --pretrained-path)'
    raise CliError(f'--pretrained-path {path!r}: none of its {len(keys)} tensors fits a layer of the model (keys such '
                   f'as {", ".join(keys[:3])}), which would train from random weights; {way_out}')


def load_initial_checkpoint(model: nn.Module, path: str) -> None:
    """``--initial-checkpoint``: model weights only, any of timm's checkpoint layouts; one-line errors."""
    existing_file(path, '--initial-checkpoint')
    try:
        with quiet_warnings():
            with allow_train_args():  # a timm train.py checkpoint holds its argparse Namespace
                timm.models.load_checkpoint(model, path, use_ema=False, weights_only=True)
    except Exception as exc:  # unreadable file or other architecture: say which file and why
        raise CliError(f'--initial-checkpoint {path!r} cannot be loaded into {type(model).__name__} '
                       f'({type(exc).__name__}: {one_line(exc, 240)})') from None


def set_cuda_backends(device: torch.device) -> None:
    """On CUDA, as timm's train.py: ``cudnn.benchmark`` (fixed input sizes: cuDNN picks the fastest kernels once) and
    TF32 matrix products for float32 work (cuDNN convolutions already allow TF32 by default). Nothing on other
    devices."""
    if device.type != 'cuda':
        return
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


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


# --------------------------------------------------------------------------------------------------------------------
# Checkpoints and the run folder
# --------------------------------------------------------------------------------------------------------------------

def save_checkpoint(path: str, state: Dict[str, Any]) -> None:
    """Write to a temporary file, then rename: a checkpoint is complete or absent, never half-written; a failed
    write leaves no ``.tmp`` file behind."""
    write_atomically(path, lambda tmp_path: torch.save(state, tmp_path))


def copy_checkpoint(source: str, path: str) -> None:
    """``source``'s bytes to ``path``, atomically (one serialization per epoch, the other files are copies)."""
    def copy(tmp_path: str) -> None:
        with open(source, 'rb') as src, open(tmp_path, 'wb') as dst:
            shutil.copyfileobj(src, dst, 1 << 24)
    write_atomically(path, copy)


def save_epoch(output_dir: str, epoch: int, state: Dict[str, Any], is_best: bool, hist: int) -> None:
    """The files of one finished epoch, ``last.pth.tar`` last: it is the commit point of the epoch.

    ``checkpoint-<epoch>`` (with ``hist``) and ``model_best`` (when ``is_best``) are written before ``last``, so a
    failure (a full disk, a signal) before ``last`` is replaced leaves the previous epoch's complete state, from which
    ``--resume`` re-runs this epoch and writes every file again. The summary row is in the state too
    (``summary_row``): a row lost after ``last`` is restored by ``--resume``."""
    last = os.path.join(output_dir, CHECKPOINT_LAST)
    targets = ([os.path.join(output_dir, f'checkpoint-{epoch}.pth.tar')] if hist > 0 else []) + \
        ([os.path.join(output_dir, CHECKPOINT_BEST)] if is_best else []) + [last]
    save_checkpoint(targets[0], state)
    for target in targets[1:]:
        copy_checkpoint(targets[0], target)


def prune_epoch_checkpoints(output_dir: str, hist: int) -> None:
    """Keep only the newest ``hist`` of the ``checkpoint-<epoch>.pth.tar`` files.

    Only files named ``checkpoint-<integer>.pth.tar`` take part in the rotation (a user's ``checkpoint-final``
    is left alone)."""
    if hist <= 0:
        return
    kept = sorted((int(match.group(1)), name) for name in os.listdir(output_dir)
                  if (match := EPOCH_CHECKPOINT.match(name)))
    for _, name in kept[:-hist]:
        os.remove(os.path.join(output_dir, name))


def write_summary(path: str, epoch: int, row: Dict[str, Any]) -> None:
    """Put the row of ``epoch`` into ``summary.csv``, dropping rows of this epoch or later (a resumed run re-writes
    them, never duplicates them); the file is replaced atomically."""
    import csv
    rows: List[Dict[str, Any]] = []
    if os.path.exists(path):
        with open(path, newline='') as f:
            rows = [r for r in csv.DictReader(f) if r.get('epoch', '').isdigit() and int(r['epoch']) < epoch]
    rows.append(OrderedDict(epoch=epoch, **row))
    fields: List[str] = []
    for r in rows:
        fields += [key for key in r if key not in fields]

    def write(tmp_path: str) -> None:
        with open(tmp_path, 'w', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
    write_atomically(path, write)


class ShiftedScheduler:
    """A timm scheduler whose epoch 0 is epoch ``start`` of the run: the schedule of a resumed run's added epochs
    (``--extend-lr``). The loop calls it as the run's scheduler, with the run's epoch and update counts."""

    def __init__(self, scheduler: Any, start: int, updates_per_epoch: int):
        self.scheduler = scheduler
        self.start = start
        self.updates_per_epoch = updates_per_epoch

    def step(self, epoch: int, metric: Optional[float] = None) -> None:
        self.scheduler.step(epoch - self.start, metric)

    def step_update(self, num_updates: int, metric: Optional[float] = None) -> None:
        self.scheduler.step_update(num_updates - self.start * self.updates_per_epoch, metric)


def scheduler_state(scheduler: Any) -> Optional[Dict[str, Any]]:
    """Everything a scheduler needs to resume exactly (timm's plateau state lacks torch's patience counters)."""
    if isinstance(scheduler, ShiftedScheduler):
        scheduler = scheduler.scheduler
    if scheduler is None:  # --sched none
        return None
    if isinstance(scheduler, PlateauLRScheduler):
        return dict(timm=scheduler.state_dict(), torch=scheduler.lr_scheduler.state_dict())
    return scheduler.state_dict()


def load_scheduler_state(scheduler: Any, state: Optional[Dict[str, Any]]) -> None:
    if isinstance(scheduler, ShiftedScheduler):
        scheduler = scheduler.scheduler
    if scheduler is None or state is None:
        return
    if isinstance(scheduler, PlateauLRScheduler):
        scheduler.load_state_dict(state['timm'])
        scheduler.lr_scheduler.load_state_dict(state['torch'])
    else:
        scheduler.load_state_dict(state)


def non_finite_tensor(model: nn.Module) -> Optional[str]:
    """The name of the first parameter or buffer holding NaN or inf, ``None`` if all are finite.

    One host read for the whole model (a flag per tensor, stacked on the device), once per epoch.
    """
    named = [(name, tensor) for name, tensor in list(model.named_parameters()) + list(model.named_buffers())
             if tensor.is_floating_point() and tensor.numel()]
    if not named:
        return None
    finite = torch.stack([torch.isfinite(tensor).all() for _, tensor in named]).cpu()
    bad = (~finite).nonzero()
    return named[int(bad[0])][0] if bad.numel() else None


def load_resume(path: str, state: Dict[str, Any], task: MimoTask, optimizer: Optional[torch.optim.Optimizer],
                scheduler: Any, loss_scaler: Optional[NativeScaler]) -> Tuple[int, Optional[float]]:
    """Restore a :func:`read_resume` state into the run; returns (next epoch, best metric). ``scheduler`` ``None``
    keeps the one just built (a new ``--extend-lr`` schedule)."""
    try:
        task.load_checkpoint_state(clean_state_dict(state['state_dict']))
        if optimizer is not None and 'optimizer' in state:
            optimizer.load_state_dict(state['optimizer'])
        if optimizer is not None and scheduler is not None and 'scheduler' in state:
            load_scheduler_state(scheduler, state['scheduler'])
        if task.has_ema() and 'state_dict_ema' in state:
            task.load_checkpoint_state(clean_state_dict(state['state_dict_ema']), ema=True)
        if loss_scaler is not None and 'scaler' in state:
            loss_scaler.load_state_dict(state['scaler'])
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise CliError(f'--resume {path!r} does not fit this run (model {state.get("arch")!r}, flags given now): '
                       f'{one_line(exc, 240)}') from None
    return int(state['epoch']) + 1, state.get('best_metric')


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """Seed of the process RNGs (augmentation without workers, dropout) for one epoch: resumable per epoch."""
    return (seed * 7919 + epoch * 104729 + rank) % (2 ** 31)


def seed_epoch(args: argparse.Namespace, epoch: int) -> None:
    """Seed the process's random sources for one epoch: torch (dropout, stochastic depth), Python's ``random`` and
    numpy (timm's Mixup, random erasing on the device). The loader's image augmentations and plans are seeded per
    shard in the workers (:mod:`timm_mimo.loader`)."""
    seed = epoch_seed(args.seed, epoch, args.rank)
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002  (the global numpy RNG is the one timm's Mixup draws from)


def recorded_args(args: argparse.Namespace) -> Dict[str, Any]:
    """The flag values of the run, by dest: ``args.yaml``, reusable as ``--config`` of both scripts."""
    dests = {action.dest for action in build_parser()._actions} - {'help', 'config', 'kill_after_steps', 'data',
                                                                    'dry_run'}
    return {key: value for key, value in sorted(vars(args).items()) if key in dests}


# flags a resumed run must keep: a change makes it another run, refused with both values named
RESUME_LOCKED = (
    # the model, its input and its classes
    'model', 'model_kwargs', 'num_classes', 'in_chans', 'input_size', 'img_size', 'num_members', 'gp', 'drop',
    'drop_path', 'drop_block', 'bn_momentum', 'bn_eps', 'class_names', 'mean', 'std', 'crop_pad', 'model_ema',
    'model_ema_decay', 'model_ema_warmup',
    # the batch and the sampling
    'batch_size', 'grad_accum_steps', 'batch_repeat', 'seed',
    # the MIMO recipe (and timm's batch mixing of plain models)
    'input_repeat', 'mix', 'mix_prob', 'mix_prob_decay', 'mix_alpha', 'loss_root', 'single_source_end', 'mimo_cutmix',
    'mimo_mixup', 'mimo_mix_prob', 'smoothing', 'mixup', 'cutmix', 'cutmix_minmax', 'mixup_prob', 'mixup_switch_prob',
    'mixup_mode', 'mixup_off_epoch', 'eval_metric',
)
# the optimizer and its schedule: locked too, unless --no-resume-opt starts them afresh
RESUME_OPTIMIZER = (
    'opt', 'opt_eps', 'opt_betas', 'momentum', 'weight_decay', 'l2', 'layer_decay', 'layer_decay_min_scale',
    'layer_decay_no_opt_scale', 'opt_kwargs', 'lr', 'sched', 'sched_on_updates', 'lr_noise', 'lr_noise_pct',
    'lr_noise_std', 'lr_cycle_mul', 'lr_cycle_decay', 'lr_cycle_limit', 'lr_k_decay', 'lr_decay_fn',
    'lr_stable_timescale', 'warmup_lr', 'min_lr', 'decay_milestones', 'decay_epochs', 'warmup_epochs', 'warmup_prefix',
    'cooldown_epochs', 'patience_epochs', 'decay_rate',
)
# flags that say where and how to run, not what: a change is not reported
RESUME_QUIET = (
    'output', 'experiment', 'resume', 'no_resume_opt', 'start_epoch', 'initial_checkpoint', 'pretrained',
    'pretrained_path', 'data_dir', 'workers', 'pin_mem', 'no_prefetcher', 'log_interval', 'local_rank',
    'checkpoint_hist', 'log_wandb', 'wandb_project', 'wandb_tags', 'wandb_resume_id', 'device_modules',
    'synchronize_step', 'validation_batch_size', 'class_map_partial', 'class_descriptions', 'dry_run', 'log_file',
)


def _flag_names() -> Dict[str, str]:
    """dest -> the flag as a user writes it (the longest option string)."""
    return {action.dest: max(action.option_strings, key=len) for action in build_parser()._actions
            if action.option_strings}


def _shown(value: Any) -> str:
    if value is None:
        return '(unset)'
    if isinstance(value, float):
        return f'{value:g}'
    if isinstance(value, (list, tuple)):
        return ' '.join(_shown(v) for v in value)
    if isinstance(value, dict):
        return ' '.join(f'{k}={v}' for k, v in value.items()) or '(none)'
    return repr(value) if isinstance(value, str) else str(value)


def _resumed_epoch_of(path: str) -> Optional[int]:
    """The epoch of a checkpoint file (read lazily), ``None`` when it cannot be read."""
    try:
        with quiet_warnings():
            state = torch.load(path, map_location='cpu', weights_only=True, mmap=True)
        return int(state['epoch'])
    except Exception:  # noqa: BLE001 - an unreadable file is one a resume may replace
        return None


def read_resume(args: argparse.Namespace) -> Dict[str, Any]:
    """``--resume``'s checkpoint, checked against the flags before anything is built: the same kind of model
    (``arch``, constructor arguments), the flags that make the run (:data:`RESUME_LOCKED`, and
    :data:`RESUME_OPTIMIZER` unless ``--no-resume-opt``) and the number of processes. A larger ``--epochs`` needs
    ``--extend-lr``: it sets ``args.schedule_segment`` (the added epochs' schedule, ``args.schedule_segment_new``); a
    run extended before keeps its segment. Other changed flags are applied, and printed."""
    path = args.resume
    args.schedule_segment_new = False
    state = read_checkpoint(path, '--resume')
    if not isinstance(state, dict) or 'state_dict' not in state or 'epoch' not in state:
        raise CliError(f'--resume {path!r} is not a training checkpoint (no state_dict / epoch); use '
                       '--initial-checkpoint to start from its weights')
    if isinstance(state.get('args'), argparse.Namespace):
        raise CliError(f"--resume {path!r} was written by timm's train.py (its args are an argparse Namespace): a "
                       'timm-mimo-train run continues only its own runs (batch-repetition sampler, plans, schedule '
                       f'state); start a run from its weights with --initial-checkpoint {path}, or continue it with '
                       "timm's train.py (python -m timm_mimo run train.py ...)")
    check_checkpoint_model(state, path, args.model, args.model_kwargs, '--resume')
    recorded = state.get('args') if isinstance(state.get('args'), dict) else {}
    current = recorded_args(args)
    flags = _flag_names()
    run_dir = os.path.dirname(os.path.abspath(path))
    start = int(state['epoch']) + 1
    way_out = (f"give the run's value (--config {os.path.join(run_dir, 'args.yaml')} repeats its flags), or start a "
               f'new run from these weights with --initial-checkpoint {path}')
    locked = RESUME_LOCKED + (() if args.no_resume_opt else RESUME_OPTIMIZER)
    segment = state.get('schedule_segment')
    old_epochs = recorded.get('epochs')
    extending = old_epochs is not None and args.epochs != old_epochs
    if extending and args.epochs < old_epochs:
        raise CliError(f'--resume {path!r} continues a run of --epochs {old_epochs}; --epochs {args.epochs} would '
                       f'shorten its schedule; {way_out}')
    if extending and not args.no_resume_opt and args.sched != 'none':
        if args.extend_lr is None:
            raise CliError(f'--resume {path!r}: --epochs {args.epochs} adds epochs to a run whose --sched '
                           f'{args.sched} schedule ends at epoch {old_epochs}, so they would train at its final lr; '
                           f'give --extend-lr LR (a fresh {args.sched} schedule from LR over epochs {start} to '
                           f'{args.epochs - 1}), or keep --epochs {old_epochs}')
        if args.epochs <= start:
            raise CliError(f'--resume {path!r} continues at epoch {start}: --epochs {args.epochs} adds no epoch after '
                           'it; raise --epochs')
        segment = dict(start=start, lr=float(args.extend_lr))
        args.schedule_segment_new = True
    elif 'extend_lr' in recorded:
        locked = locked + ('extend_lr',)
    for dest in locked:
        if dest in recorded and dest in current and current[dest] != recorded[dest] and not (
                dest in ('class_names', 'num_classes') and current[dest] is None):
            flag = flags.get(dest, dest)
            raise CliError(f'--resume {path!r} continues a run trained with {flag} {_shown(recorded[dest])}; '
                           f'{flag} {_shown(current[dest])} would make it another run: {way_out}')
    if state.get('world_size') is not None and state['world_size'] != args.world_size:
        raise CliError(f'--resume {path!r} continues a run of {state["world_size"]} process(es), now '
                       f'{args.world_size}: the global batch and its shards would change; resume with '
                       f'{state["world_size"]} process(es)')
    applied = [dest for dest in current if dest in recorded and dest not in locked + RESUME_QUIET + ('epochs',)
               and current[dest] != recorded[dest]]
    if applied and args.rank == 0:
        print('Resumed with changed flags (applied from now on): ' + ', '.join(
            f'{flags.get(dest, dest)} {_shown(current[dest])} (was {_shown(recorded[dest])})' for dest in applied),
            flush=True)
    args.schedule_segment = dict(segment) if isinstance(segment, dict) else None
    if args.class_names is None:
        args.class_names = checkpoint_class_names(state)
    if args.num_classes is None:  # the run's head (a run records the class count it took from its data)
        args.num_classes = recorded.get('num_classes')
    return state


def plan_run_folder(args: argparse.Namespace, state: Optional[Dict[str, Any]]) -> Tuple[str, Optional[str], str]:
    """Where the run will write, decided before anything is built or written: ``(root, name, how)``.

    ``how`` is ``'continue'`` (a resumed run in its checkpoint's folder), ``'new'`` (a resumed run continued in a new
    folder ``root/name``, claimed as is) or ``'next_free'`` (a new run: ``--experiment`` or a date-model-size name,
    with a ``-1``, ``-2`` ... suffix when taken; ``name`` ``None`` until the data config is known). A run folder
    belongs to one run: ``--experiment`` naming another existing folder while resuming is refused, as is continuing in
    the checkpoint's folder from an epoch older than its ``last.pth.tar`` (that would replace the later epochs)."""
    root = args.output or './output/train'
    name: Optional[str] = args.experiment or None
    how = 'next_free'
    if state is not None:
        source = os.path.dirname(os.path.abspath(args.resume))
        target = os.path.join(root, args.experiment) if args.experiment else source
        if same_path(target, source):
            root, name, how = os.path.dirname(source), os.path.basename(source), 'continue'
            last = os.path.join(source, CHECKPOINT_LAST)
            last_epoch = _resumed_epoch_of(last) if os.path.isfile(last) and not same_path(last, args.resume) else None
            if last_epoch is not None and last_epoch > int(state['epoch']):
                raise CliError(f'--resume {args.resume!r} is epoch {state["epoch"]} but the run\'s {last!r} is epoch '
                               f'{last_epoch}: continuing in {source!r} would replace the later epochs; give a new '
                               f'--experiment to continue from epoch {state["epoch"]} in a copy, or resume {last}')
        elif os.path.exists(target):
            raise CliError(f'--resume {args.resume!r} continues the run in {source!r}, but --experiment '
                           f'{args.experiment!r} names another run\'s folder {target!r}: drop --experiment to continue '
                           'in the checkpoint\'s folder, or give a new --experiment to continue a copy of the run')
        else:
            how = 'new'
    folder = os.path.join(root, name) if name else root
    if args.data_dir and os.path.isdir(args.data_dir) and is_inside(folder, args.data_dir):
        raise CliError(f'--output {root!r} lies inside --data-dir {args.data_dir!r}: the run folder would become part '
                       'of the data (another class folder); pick an --output outside it')
    if how == 'continue':
        run_files = ('args.yaml', 'summary.csv', CHECKPOINT_LAST, CHECKPOINT_BEST)
        inputs = (('--initial-checkpoint', args.initial_checkpoint), ('--pretrained-path', args.pretrained_path),
                  ('--class-map', args.class_map))
        for flag, path in inputs:
            if path and is_inside(path, folder) and (os.path.basename(path) in run_files or
                                                    EPOCH_CHECKPOINT.match(os.path.basename(path))):
                raise CliError(f'{flag} {path!r} is a file of the run folder {folder!r}, which the resumed run '
                               'rewrites; copy it elsewhere first')
    return root, name, how


def prepare_output(args: argparse.Namespace, data_config: Dict[str, Any],
                   plan: Tuple[str, Optional[str], str]) -> str:
    """The run folder (claimed here, after every check passed; :func:`plan_run_folder`); a file in the way or no
    permission is one line."""
    root, name, how = plan
    if name is None:
        name = '-'.join([time.strftime('%Y%m%d-%H%M%S'), args.model.replace('/', '_'),
                         str(data_config['input_size'][-1])])
    output_dir = os.path.join(root, name)
    for path in (root, output_dir):
        if os.path.exists(path) and not os.path.isdir(path):
            raise CliError(f'--output: {path!r} is a file, not a folder; pick another --output / --experiment')
    try:
        if how != 'continue':
            output_dir = claim_run_folder(root, name, next_free=how == 'next_free')
        lock_run_folder(output_dir)  # held until the process ends: another process writing into it is refused
        probe = os.path.join(output_dir, '.write-probe')
        with open(probe, 'w') as f:
            f.write('ok')
        os.remove(probe)
    except OSError as exc:
        raise CliError(f'--output: cannot write to {output_dir!r} ({one_line(exc)}); pick a writable --output') \
            from None
    return output_dir


def restore_summary(output_dir: str, state: Dict[str, Any], source_dir: str) -> None:
    """The summary rows up to the resumed epoch: the resumed epoch's row from the checkpoint (it may have been lost
    after the checkpoint was written), earlier rows from the resumed run's ``summary.csv`` when the run continues in
    a new folder."""
    row = state.get('summary_row')
    if not isinstance(row, dict):
        return
    epoch = int(state['epoch'])
    path = os.path.join(output_dir, 'summary.csv')
    source = os.path.join(source_dir, 'summary.csv')
    if not same_path(path, source) and os.path.isfile(source):
        import csv
        with open(source, newline='') as f:
            for earlier in csv.DictReader(f):
                if earlier.get('epoch', '').isdigit() and int(earlier['epoch']) < epoch:
                    write_summary(path, int(earlier['epoch']), {k: v for k, v in earlier.items() if k != 'epoch'})
    write_summary(path, epoch, row)


# --------------------------------------------------------------------------------------------------------------------
# The loop (timm's train.py shape: task(input, target) -> loss, backward, step, EMA, scheduler)
# --------------------------------------------------------------------------------------------------------------------

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


class Run:
    """One training run's objects: the task, optimizer, scheduler, AMP and the timm Mixup of plain models."""

    def __init__(self, args: argparse.Namespace, task: MimoTask, optimizer: torch.optim.Optimizer, scheduler: Any,
                 num_epochs: int, steps_per_epoch: int, device: torch.device):
        self.args = args
        self.task = task
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.num_epochs = num_epochs
        self.steps_per_epoch = steps_per_epoch
        self.device = device
        self.autocast_dtype = None
        if args.amp:
            self.autocast_dtype = torch.float16 if args.amp_dtype == 'float16' and device.type == 'cuda' \
                else torch.bfloat16
        self.loss_scaler = NativeScaler(device=device.type) if self.autocast_dtype == torch.float16 else None
        self.optimizer_step = compiled_optimizer_step(args, optimizer, task, self.loss_scaler)
        self.eval_seconds = 0.0  # the last evaluation's duration, for the run's ETA
        self.mixup_fn = None
        if not task.mimo and (args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None):
            smoothing = 0.1 if args.smoothing is None else args.smoothing
            if args.mixup_mode == 'simultaneous':
                self.mixup_fn = SimultaneousMixup(args.mixup, args.cutmix, prob=args.mixup_prob,
                                                  label_smoothing=smoothing, num_classes=args.num_classes_resolved)
            else:
                self.mixup_fn = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix,
                                      cutmix_minmax=args.cutmix_minmax, prob=args.mixup_prob,
                                      switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                                      label_smoothing=smoothing, num_classes=args.num_classes_resolved)

    def forward_shard(self, batch: Any, epoch: int, step: int, shard: int) -> Dict[str, Any]:
        """The task's forward on one shard already on the device (a :class:`~timm_mimo.loader.MimoBatch`)."""
        self.task.set_step(epoch, step, self.steps_per_epoch, self.num_epochs, shard)
        images, targets = batch.images, batch.targets
        if self.mixup_fn is not None:
            images, targets = self.mixup_fn(images, targets)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            if self.task.mimo:
                return self.task(images, targets, batch.partner_images, batch.partner_targets, plan=batch.plan)
            return self.task(images, targets)

    def train_step(self, batches: Iterator[Any], epoch: int, step: int) -> Tuple[torch.Tensor, int, int]:
        """One optimizer step over ``grad_accum_steps`` shards; no host read of any device value.

        Returns:
            The sum of the shards' losses times their image counts (a device tensor), the images and binary batches.
        """
        args, task, accum = self.args, self.task, self.args.grad_accum_steps
        loss_sum, images, binary = None, 0, 0
        for micro_step in range(accum):
            batch = next(batches)
            update = micro_step == accum - 1
            sync = contextlib.nullcontext() if update or not args.distributed else task.no_sync()
            with sync:
                result = self.forward_shard(batch, epoch, step, args.rank * accum + micro_step)
                self.backward(result['loss'] / accum if accum > 1 else result['loss'], update)
            count = batch.images.shape[0]
            weighted = result['loss'].detach().float() * count
            loss_sum = weighted if loss_sum is None else loss_sum + weighted
            images += count
            binary += int(task.mimo and batch.plan.mix.binary)  # a host bool drawn with the plan: no device read
        num_updates = epoch * self.steps_per_epoch + step + 1
        task.update_ema(step=num_updates)
        if self.scheduler is not None:
            self.scheduler.step_update(num_updates=num_updates)
        return loss_sum, images, binary

    def train_one_epoch(self, epoch: int, loader: Any) -> Dict[str, float]:
        """One epoch of optimizer steps; logs progress on rank 0.

        The loss stays on the device: it is summed there and read back (one host read) only every ``--log-interval``
        steps and at the end of the epoch, where a non-finite value stops the run before any checkpoint is written.
        """
        args, task = self.args, self.task
        task.train()
        if self.mixup_fn is not None and args.mixup_off_epoch and epoch >= args.mixup_off_epoch:
            self.mixup_fn.mixup_enabled = False
        epoch_loss, epoch_images, binary_batches = 0.0, 0, 0
        window_loss: Optional[torch.Tensor] = None
        window_images = 0
        times = StepTimes(self.steps_per_epoch, self.num_epochs - epoch - 1, self.eval_seconds)
        batches = times.wrap(loader)  # data time: the wait for each batch
        for step in range(self.steps_per_epoch):
            loss_sum, images, binary = self.train_step(batches, epoch, step)
            times.step_done(images)
            window_loss = loss_sum if window_loss is None else window_loss + loss_sum
            window_images += images
            binary_batches += binary
            if args.synchronize_step and self.device.type == 'cuda':
                torch.cuda.synchronize()
            num_updates = epoch * self.steps_per_epoch + step + 1
            if args.kill_after_steps is not None and num_updates >= args.kill_after_steps:
                os.kill(os.getpid(), signal.SIGKILL)  # test hook: die like a killed job, without any cleanup
            last = step + 1 == self.steps_per_epoch
            if step % args.log_interval == 0 or last:
                window_value = window_loss.item()  # the host read of the loss: at the log interval only
                if not math.isfinite(window_value):
                    raise CliError(f'the loss is not finite ({window_value}) in epoch {epoch} by step {step}: the '
                                   f'run diverged; lower --lr (now {args.lr:g}) or add --clip-grad (no checkpoint '
                                   'written for this epoch)')
                epoch_loss += window_value
                epoch_images += window_images
                if args.rank == 0:
                    lr = self.optimizer.param_groups[0]['lr']
                    done = 100 * (step + 1) / self.steps_per_epoch
                    _logger.info(f'Train: {epoch} [{step + 1:>5d}/{self.steps_per_epoch} ({done:3.0f}%)]'
                                 f'  loss {window_value / window_images:.4f} ({epoch_loss / epoch_images:.4f})'
                                 f'  lr {lr:.3e}  {times.line(args.world_size)}')
                window_loss, window_images = None, 0
        metrics = OrderedDict(loss=epoch_loss / epoch_images)
        if task.mimo:
            metrics['binary_batches'] = binary_batches / (self.steps_per_epoch * args.grad_accum_steps)
        return metrics

    def backward(self, loss: torch.Tensor, update: bool) -> None:
        """Backward (scaled for float16 AMP), optional gradient clipping, optimizer step when ``update``."""
        args = self.args
        params = self.task.get_clip_parameters()
        if self.loss_scaler is not None:
            self.loss_scaler(loss, self.optimizer, clip_grad=args.clip_grad, clip_mode=args.clip_mode,
                             parameters=params, need_update=update)
        else:
            loss.backward()
            if update and self.optimizer_step is not None:
                self.optimizer_step()  # clipping and the update: one compiled graph
            elif update:
                if args.clip_grad is not None:
                    dispatch_clip_grad(params, value=args.clip_grad, mode=args.clip_mode)
                self.optimizer.step()
        if update:
            self.optimizer.zero_grad(set_to_none=True)

    def evaluate(self, model: nn.Module, loader: Any, num_eval: int, label: str = 'Eval:') -> Dict[str, float]:
        """The evaluation columns of ``model`` on the whole validation split (shards gathered across ranks); logs
        ``label`` lines with the running top-1 every ``--log-interval`` batches (rank 0)."""
        start = time.perf_counter()
        log = _logger.info if self.args.rank == 0 else (lambda line: None)
        member_logits, targets = collect_logged(timm.utils.unwrap_model(model), loader, self.device,
                                                self.autocast_dtype, self.args.channels_last,
                                                self.args.log_interval, label, log)
        self.eval_seconds = time.perf_counter() - start
        member_logits, targets = gather_eval(member_logits, targets, self.args, num_eval)
        return metric_columns(member_logits, targets)

    def state(self, epoch: int, metrics: Dict[str, float], best_metric: Optional[float]) -> Dict[str, Any]:
        """Everything a resumed run needs, as tensors and plain values (``torch.load(weights_only=True)``)."""
        state = dict(epoch=epoch, arch=self.args.model, optimizer=self.optimizer.state_dict(),
                     scheduler=scheduler_state(self.scheduler), metric=metrics.get(self.args.eval_metric),
                     best_metric=best_metric, version=2, args=recorded_args(self.args))
        state.update(self.task.get_checkpoint_state())
        if self.task.has_ema():
            state['state_dict_ema'] = timm.utils.get_state_dict(self.task.get_trainable_module(ema=True))
        if self.loss_scaler is not None:
            state['scaler'] = self.loss_scaler.state_dict()
        return state


def check_eval_metric(args: argparse.Namespace, task: MimoTask) -> None:
    """``--eval-metric`` must name an evaluation column (checked on dummy logits, before anything is written)."""
    num_classes = args.num_classes_resolved
    columns = list(metric_columns(torch.randn(4, task.num_members, num_classes), torch.arange(4) % num_classes))
    if args.model_ema:
        columns += [f'ema_{column}' for column in columns]
    if args.eval_metric not in columns:
        raise CliError(f'--eval-metric {args.eval_metric!r} is not an evaluation column; pick one of '
                       f'{", ".join(columns)}')


def take_data_classes(args: argparse.Namespace, dataset: Any) -> None:
    """Before the model is built: with ``--num-classes`` unset (and no ``--initial-checkpoint``, whose head decides),
    the head gets the training split's class count, recorded in args.yaml; the release's readable class names
    (``words.txt``) are recorded too."""
    names = dataset_class_names(dataset)
    count = len(names) if names else dataset_num_classes(dataset)
    if args.num_classes is None and not args.initial_checkpoint and count is not None:
        args.num_classes = count
    if args.class_descriptions is None:
        args.class_descriptions = dataset_class_descriptions(dataset)


def check_labels(num_data_classes: Optional[int], num_model_classes: int, args: argparse.Namespace,
                 class_names: Optional[Sequence[Optional[str]]] = None) -> None:
    """Before the first step: at least two training classes, and exactly as many as the model's outputs (more would
    fail with 'Target N is out of bounds', fewer would train outputs no image ever labels)."""
    if num_data_classes is None:
        return
    where = f'the training split {args.train_split!r} in {args.data_dir!r}'
    if num_data_classes < 2:
        named = f' ({", ".join(repr(name) for name in class_names)})' if class_names else ''
        raise CliError(f'{where} has {num_data_classes} class{named}: a classifier needs at least two. Point '
                       '--data-dir at the folder whose split folders hold one folder per class, or name a published '
                       'layout with --dataset tinyimagenet / imagenet / imagenet100 (docs/datasets.md)')
    if num_data_classes != num_model_classes:
        source = f'--num-classes {args.num_classes}' if args.num_classes is not None else "the model's default"
        raise CliError(f'the model has {num_model_classes} outputs ({source}, from the command line or the recipe) '
                       f'but {where} has {num_data_classes} classes: set --num-classes {num_data_classes}, or label '
                       f'the data into the {num_model_classes} outputs with --class-map FILE')


def check_binary_plans(task: MimoTask, model: nn.Module) -> None:
    """A MixShare model that unmixes features needs binary masks in every batch: a linear batch (``--mix linear``,
    ``--mix-prob`` < 1, its decay, or M > 2 cut-in-mix) would stop the run at its first such batch, maybe hours in."""
    if not task.mimo or not getattr(model, 'unmixed_channels', 0):
        return
    mixer = task.mixer
    reason = None
    if mixer.kind == 'linear':
        reason = f"--mix linear (mask kind {mixer.kind!r}) never cuts"
    elif mixer.prob < 1:
        reason = f'--mix-prob {mixer.prob:g} makes {100 * (1 - mixer.prob):.0f} % of the batches linear'
    elif mixer.prob_decay:
        reason = '--mix-prob-decay makes the last twelfth of training linear'
    elif mixer.num_members > 2 and not mixer.pair_only:
        reason = f'M = {mixer.num_members} cut-in-mix shares the rest of each image linearly'
    if reason:
        raise CliError(f'{reason}, but {type(model).__name__} (unmixing={model.unmixing!r}) unmixes binary (0/1) '
                       'masks only; keep its mixing (drop the flag: p = 1, no decay) or train with --model-kwargs '
                       'unmixing=none')


def create_segment_scheduler(args: argparse.Namespace, optimizer: torch.optim.Optimizer, steps_per_epoch: int,
                             segment: Dict[str, Any]) -> Tuple[ShiftedScheduler, int]:
    """The schedule of a resumed run's added epochs (``--extend-lr``): ``--sched`` from ``segment['lr']`` over epochs
    ``segment['start']`` to ``--epochs`` (its cooldown after), no warm-up; returns it and the run's epoch count."""
    start, lr = int(segment['start']), float(segment['lr'])
    segment_args = argparse.Namespace(**vars(args))
    segment_args.epochs, segment_args.warmup_epochs, segment_args.lr = args.epochs - start, 0, lr
    for group in optimizer.param_groups:
        group['initial_lr'] = lr
    scheduler, num_epochs = create_scheduler(segment_args, optimizer, steps_per_epoch)
    return ShiftedScheduler(scheduler, start, steps_per_epoch), start + num_epochs


def train(args: argparse.Namespace, guard: Optional[SignalGuard] = None) -> Dict[str, float]:
    """The whole run: checks, model, task, data, loop, checkpoints, summary; returns the last evaluation metrics.

    Every check runs before the run folder is claimed; ``guard`` (:class:`SignalGuard`) raises, after the epoch's
    files are written, a signal that arrived where it could not (a data loader shutting its workers down)."""
    guard = guard or SignalGuard()
    for module in args.device_modules or []:
        importlib.import_module(module)
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        raise CliError(f'--device {args.device} requested but CUDA is not available; use --device cpu')
    if args.log_wandb and importlib.util.find_spec('wandb') is None:
        raise CliError('--log-wandb needs the wandb package: pip install wandb')
    device = init_distributed_device(args)
    if args.fast_norm:
        set_fast_norm()
    resolve_lr(args)
    args.schedule_segment, args.schedule_segment_new = None, False
    resume_state = read_resume(args) if args.resume else None
    plan = plan_run_folder(args, resume_state)
    check_start_epoch(args.start_epoch, plan[2], args.resume)
    if plan[2] == 'continue' and args.rank == 0:  # before anything is built: a second resume of it is refused now
        lock_run_folder(os.path.join(plan[0], plan[1]))
    train_split = open_train_split(args)  # before the model: with --num-classes unset its classes size the head
    take_data_classes(args, train_split)
    torch.manual_seed(args.seed)
    model = create_train_model(args)
    args.num_classes_resolved = model.num_classes
    if args.initial_checkpoint:
        load_initial_checkpoint(model, args.initial_checkpoint)
    split_names = dataset_class_names(train_split)
    check_labels(len(split_names) if split_names else dataset_num_classes(train_split), model.num_classes, args,
                 split_names)
    if args.sync_bn and args.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    try:
        task = build_task(args, model, device)
    except ValueError as exc:
        raise CliError(f'bad MIMO flags: {one_line(exc)}') from None
    check_binary_plans(task, model)
    args.data_config = resolve_data_config(vars(args), model=model, verbose=False)
    check_model_input(model, args, args.data_config['input_size'])
    num_partners = args.batch_size if task.pixel_mix is not None else 0
    train_data = open_train_data(args, args.data_config, num_partners, train_split)
    sampler = train_data.sampler
    class_names = args.class_names = train_data.class_names
    if resume_state is not None and checkpoint_class_names(resume_state) not in (None, class_names):
        raise CliError(f'--resume {args.resume!r} was trained on the classes '
                       f'{checkpoint_class_names(resume_state)}, the data gives {class_names}: resume on its data')
    optimizer = create_optimizer(args, model, device)
    segment = args.schedule_segment
    if segment is not None:
        scheduler, num_epochs = create_segment_scheduler(args, optimizer, sampler.steps_per_epoch, segment)
    else:
        scheduler, num_epochs = create_scheduler(args, optimizer, sampler.steps_per_epoch)
    if args.model_ema:
        task.setup_ema(decay=args.model_ema_decay, use_warmup=args.model_ema_warmup)
    if args.val_split:
        check_eval_metric(args, task)
    train_loader = create_train_loader(args, train_data, task, num_epochs, device, args.data_config)
    eval_loader, num_eval = create_eval_loader(args, args.data_config, device, class_names)
    run = Run(args, task, optimizer, scheduler, num_epochs, sampler.steps_per_epoch, device)
    if run.autocast_dtype is not None:  # args.yaml records the dtype that runs (the CPU's autocast is bfloat16)
        args.amp_dtype = str(run.autocast_dtype).removeprefix('torch.')
    start_epoch, best_metric = 0, None
    if resume_state is not None:
        start_epoch, best_metric = load_resume(args.resume, resume_state, task,
                                               None if args.no_resume_opt else optimizer,
                                               None if args.schedule_segment_new else scheduler, run.loss_scaler)
    if args.start_epoch is not None:
        start_epoch = args.start_epoch
    if start_epoch >= num_epochs:
        raise CliError(f'--resume {args.resume!r} ends at epoch {start_epoch - 1}, the last of --epochs {num_epochs}: '
                       'nothing to train; to train longer give a larger --epochs with --extend-lr LR (a fresh '
                       'schedule for the added epochs)')
    if args.torchcompile:
        task.compile(backend=args.torchcompile, mode=args.torchcompile_mode)
    if args.distributed:
        # static_graph: every step uses the same parameters in the same graph; DDP refuses it when the first step
        # starts under no_sync (accumulation), so it is on without accumulation only
        task.prepare_distributed(device_ids=[device] if device.type == 'cuda' else None,
                                 broadcast_buffers=not args.no_ddp_bb, static_graph=args.grad_accum_steps == 1)
    if start_epoch > 0 and scheduler is not None:
        scheduler.step(start_epoch)

    output_dir = ''
    if args.rank == 0:
        output_dir = prepare_output(args, args.data_config, plan)
        args.output_dir = output_dir
        args_path = os.path.join(output_dir, 'args.yaml')
        try:
            write_atomically(args_path, lambda tmp_path: _dump_yaml(recorded_args(args), tmp_path))
            if resume_state is not None:
                restore_summary(output_dir, resume_state, os.path.dirname(os.path.abspath(args.resume)))
        except Exception as exc:  # noqa: BLE001 - a full disk is not always an OSError (torch.save, yaml)
            if plan[2] != 'continue':
                with contextlib.suppress(OSError):
                    remove_empty_run_folder(output_dir)  # claimed for nothing (the write left no file)
            raise CliError(write_error(args_path, exc, 'free space or pick a writable --output')) from None
        global_batch = args.batch_size * args.world_size * args.grad_accum_steps
        lr_text = f'lr {args.lr:g}' if segment is None else \
            f'lr {args.lr:g}, from epoch {segment["start"]} a fresh {args.sched} schedule from {segment["lr"]:g}'
        if args.log_file:
            try:
                add_log_file(os.path.join(output_dir, args.log_file))
            except OSError as exc:
                raise CliError(write_error(args.log_file, exc, 'pick a writable --log-file')) from None
        amp = 'off' if run.autocast_dtype is None else f'on, {args.amp_dtype} on {device.type}' + (
            ' with loss scaling' if run.loss_scaler is not None else '')
        _logger.info(f'Model {args.model}: {sum(p.numel() for p in model.parameters()):,} params, '
                     f'{"MIMO M=" + str(task.num_members) if task.mimo else "plain"}; {args.world_size} process(es), '
                     f'global batch {global_batch} ({global_batch // args.batch_repeat} unique x '
                     f'b={args.batch_repeat}), {sampler.steps_per_epoch} steps/epoch, {num_epochs} epochs, {lr_text}; '
                     f'AMP {amp}; output {output_dir}')
        if task.mimo:
            _logger.info(f'{task.mixer}  {task.criterion}  input_repeat={task.input_repeat}  '
                         f'pixel_mix={task.pixel_mix}')
        if fused_for_amp(args, device):
            _logger.info(f'{type(optimizer).__name__} runs fused: float16 AMP reads no inf / NaN flag back to the '
                         'host')
        if plan[2] == 'new':
            _logger.info(f'Continuing the run of {os.path.dirname(os.path.abspath(args.resume))} from epoch '
                         f'{start_epoch} in a new run folder, {output_dir}')
        if args.log_wandb:
            import wandb
            wandb.init(project=args.wandb_project, config=recorded_args(args), tags=args.wandb_tags,
                       id=args.wandb_resume_id or None, resume='must' if args.wandb_resume_id else None)

    eval_metrics: Dict[str, float] = {}
    set_cuda_backends(device)
    for epoch in range(start_epoch, num_epochs):
        sampler.set_epoch(epoch)
        seed_epoch(args, epoch)
        train_metrics = run.train_one_epoch(epoch, train_loader)
        if args.distributed and args.dist_bn in ('broadcast', 'reduce'):
            distribute_bn(model, args.world_size, args.dist_bn == 'reduce')
        bad = non_finite_tensor(model)
        if bad is not None:
            raise CliError(f'the run diverged at epoch {epoch}: {bad} is not finite (NaN or inf); start again with a '
                           f'lower --lr (now {args.lr:g}), or add --clip-grad (also on --resume of an earlier '
                           'checkpoint). No checkpoint of this epoch was written')
        if eval_loader is not None:
            eval_metrics = run.evaluate(model, eval_loader, num_eval, f'Eval: {epoch}')
            if task.has_ema():
                ema_metrics = run.evaluate(task.get_trainable_module(ema=True).module, eval_loader, num_eval,
                                           f'Eval (EMA): {epoch}')
                eval_metrics.update((f'ema_{k}', v) for k, v in ema_metrics.items())
        epoch_lrs = [group['lr'] for group in optimizer.param_groups]  # the lr this epoch trained at (timm's row)
        if scheduler is not None:
            scheduler.step(epoch + 1, eval_metrics.get(args.eval_metric))
        if args.rank == 0:
            metric = eval_metrics.get(args.eval_metric)
            is_best = metric is not None and (best_metric is None or (
                metric < best_metric if args.eval_metric in DECREASING_METRICS else metric > best_metric))
            best_metric = metric if is_best else best_metric
            if eval_metrics:
                _logger.info(f'Eval: {epoch}  {format_metrics(eval_metrics)}')
            row = OrderedDict((f'train_{k}', v) for k, v in train_metrics.items())
            row.update((f'eval_{k}', v) for k, v in eval_metrics.items())
            row['lr'] = sum(epoch_lrs) / len(epoch_lrs)
            row = rounded_summary(row)
            state = run.state(epoch, eval_metrics, best_metric)
            state.update(class_names=class_names, world_size=args.world_size, schedule_segment=segment,
                         summary_row=dict(row))
            try:
                with guard.deferred():  # the checkpoint and its summary row land together or not at all
                    save_epoch(output_dir, epoch, state, is_best, args.checkpoint_hist)
                    write_summary(os.path.join(output_dir, 'summary.csv'), epoch, row)
                    prune_epoch_checkpoints(output_dir, args.checkpoint_hist)
            except Exception as exc:  # noqa: BLE001 - torch.save / safetensors on a full disk raise more than OSError
                raise CliError(f'cannot write the epoch {epoch} checkpoint / summary in {output_dir!r} '
                               f'({one_line(exc)}); free space or fix the folder, then resume with --resume '
                               f'{os.path.join(output_dir, CHECKPOINT_LAST)}') from None
            if args.log_wandb:
                import wandb
                wandb.log(dict(epoch=epoch, **row))
        guard.check()  # a signal swallowed during the epoch (e.g. by a loader's worker shutdown) ends the run here
    if args.rank == 0 and eval_metrics:
        _logger.info(f'*** Final ({args.model}, epoch {num_epochs - 1}): {format_metrics(eval_metrics)}')
        if best_metric is not None:
            _logger.info(f'*** Best {args.eval_metric}: {best_metric:.4f}')
    return eval_metrics


def _dump_yaml(values: Dict[str, Any], path: str) -> None:
    with open(path, 'w') as f:
        yaml.safe_dump(values, f, sort_keys=False)


def build_task(args: argparse.Namespace, model: nn.Module, device: torch.device) -> MimoTask:
    """The training task from the flags: MIMO flags left unset keep the model's mix_cfg / loss_cfg."""
    verbose = False  # the run prints its own one-line summary of the task
    if not is_mimo(model):
        if args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None:
            return MimoTask(model, criterion=SoftTargetCrossEntropy(), device=device, verbose=verbose)
        return MimoTask.from_model(model, smoothing=args.smoothing, device=device, verbose=verbose)
    return MimoTask.from_model(
        model, mix=args.mix, mix_prob=args.mix_prob, mix_prob_decay=args.mix_prob_decay, mix_alpha=args.mix_alpha,
        single_source_end=args.single_source_end, loss_root=args.loss_root, smoothing=args.smoothing,
        input_repeat=args.input_repeat, mimo_cutmix=args.mimo_cutmix, mimo_mixup=args.mimo_mixup,
        mimo_mix_prob=args.mimo_mix_prob, seed=args.seed, num_classes=model.num_classes, device=device,
        verbose=verbose)


def _interrupted_line(exc: BaseException, args: Optional[argparse.Namespace]) -> str:
    """The one line of a run stopped by SIGINT / SIGTERM: how to go on from what was saved."""
    name = exc.name if isinstance(exc, Interrupted) else 'SIGINT'
    output_dir = getattr(args, 'output_dir', '') if args is not None else ''
    last = os.path.join(output_dir, CHECKPOINT_LAST) if output_dir else ''
    if last and os.path.isfile(last):
        return f'error: interrupted ({name}); resume with --resume {last}'
    return f'error: interrupted ({name}) before the first epoch was saved; run the command again'


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point: bad input ends with one line on stderr and exit status 2; SIGINT / SIGTERM with one line and
    status 130 / 143, after the files being written are complete or removed."""
    argv, debug = split_debug(argv)
    args = None
    with SignalGuard() as guard:
        try:
            args = parse_args(argv)
            if args.dry_run:
                return train_dry_run(args, sys.modules[__name__])
            setup_console_logging()  # timm's setup_default_logging, on stdout
            train(args, guard)
        except (CliError, DataError) as exc:
            print(f'error: {exc}', file=sys.stderr)
            return 2
        except (KeyboardInterrupt, Interrupted) as exc:
            print(_interrupted_line(exc, args), file=sys.stderr)
            return exc.exit_code if isinstance(exc, Interrupted) else 130
        except Exception as exc:  # noqa: BLE001 - the one line of anything else (timm_mimo.cli.errors)
            return report_unexpected(exc, debug)
        finally:
            release_run_folders()
            close_logging()
            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()
    return 0


if __name__ == '__main__':
    sys.exit(main())
