"""The model and task a training run builds: ``timm.create_model`` from the flags, the ``--pretrained-path`` and
``--initial-checkpoint`` weights, the :class:`~timm_mimo.task.MimoTask`, and the class, metric and mixing checks made
before anything is written.
"""
import argparse
import contextlib
from typing import Any, Dict, List, Optional, Sequence, Tuple

import timm
import torch
import torch.nn as nn
from timm.loss import SoftTargetCrossEntropy

import timm_mimo  # noqa: F401  (registers the MIMO models)
from timm_mimo.checkpoint import allow_train_args
from timm_mimo.cli.args import CliError, existing_file, one_line, quiet_warnings
from timm_mimo.cli.checkpoint import read_weights_file
from timm_mimo.cli.evaluate import metric_columns
from timm_mimo.cli.train_args import MIMO_FLAGS
from timm_mimo.data import dataset_class_descriptions, dataset_class_names, dataset_num_classes
from timm_mimo.metrics import is_mimo
from timm_mimo.pretrained import PretrainedDownloadError, hub_errors_with_offline_hint
from timm_mimo.task import MimoTask

__all__ = ['create_train_model', 'check_pretrained_weights', 'load_initial_checkpoint', 'build_task',
           'check_binary_plans', 'take_data_classes', 'check_labels', 'check_eval_metric']


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


def check_eval_metric(args: argparse.Namespace, task: MimoTask) -> None:
    """``--eval-metric`` must name an evaluation column (checked on dummy logits, before anything is written)."""
    num_classes = args.num_classes_resolved
    columns = list(metric_columns(torch.randn(4, task.num_members, num_classes), torch.arange(4) % num_classes))
    if args.model_ema:
        columns += [f'ema_{column}' for column in columns]
    if args.eval_metric not in columns:
        raise CliError(f'--eval-metric {args.eval_metric!r} is not an evaluation column; pick one of '
                       f'{", ".join(columns)}')
