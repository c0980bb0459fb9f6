"""The flags of ``timm-mimo-train``: timm's train.py options (names, meanings, defaults; refused ones say why), the
MIMO group and their checks (:func:`parse_args`), and the flag values a run records in ``args.yaml`` and its
checkpoints (:func:`recorded_args`).

The run (:mod:`timm_mimo.cli.run_loop`) and the resume rules (:mod:`timm_mimo.cli.resume`) read the recorded flags
from here, so the parser lives below them and below the command (:mod:`timm_mimo.cli.train`).
"""
import argparse
from collections import OrderedDict
from typing import Any, Dict, Optional, Sequence

import timm
import yaml

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
    check_refused,
    check_values,
    non_negative,
    parse_with_config,
    positive,
    unit_interval,
)
from timm_mimo.cli.data_path import DEVICE_DATA_REFUSED
from timm_mimo.labels import check_unique_names
from timm_mimo.mixing import MASK_KINDS

__all__ = ['build_parser', 'parse_args', 'recorded_args', 'flag_names', 'MIMO_FLAGS', 'REFUSED', 'TRAIN_CHECKS']


# MIMO flags: dest -> flag, refused on a non-MIMO model when set (not None); --batch-repeat is not one of them:
# on a plain model it is batch augmentation (Hoffer et al.), the MixViT papers' single-input baselines
MIMO_FLAGS = OrderedDict(
    num_members='--num-members', input_repeat='--input-repeat', mix='--mix', mix_prob='--mix-prob',
    mix_prob_decay='--mix-prob-decay', mix_alpha='--mix-alpha', loss_root='--loss-root',
    single_source_end='--single-source-end', mimo_cutmix='--mimo-cutmix', mimo_mixup='--mimo-mixup')


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


def recorded_args(args: argparse.Namespace) -> Dict[str, Any]:
    """The flag values of the run, by dest: ``args.yaml``, reusable as ``--config`` of both scripts."""
    dests = {action.dest for action in build_parser()._actions} - {'help', 'config', 'kill_after_steps', 'data',
                                                                    'dry_run'}
    return {key: value for key, value in sorted(vars(args).items()) if key in dests}


def flag_names() -> Dict[str, str]:
    """dest -> the flag as a user writes it (the longest option string)."""
    return {action.dest: max(action.option_strings, key=len) for action in build_parser()._actions
            if action.option_strings}
