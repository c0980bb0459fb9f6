"""``--dry-run`` of ``timm-mimo-train`` and ``timm-mimo-validate``: what a run would read and build, and what is wrong.

The recipe, the model and the data are resolved by the run's own functions (imported from the modules that own
them, never from the commands that call this one), in the run's order: the training split
opened (its class count sizing the head when ``--num-classes`` is unset), the model built on the ``meta`` device
(shapes only: no memory, no weights loaded, nothing downloaded), the transforms, the sampler (steps per epoch), the
class checks, the validation split. What was resolved is printed as it comes; the first error ends it with one
``error:`` line (exit status 2), as the run itself would. Nothing is written: no run folder, no args.yaml.
"""
import argparse
import math
import os
import sys
from collections import Counter
from typing import Any, Dict, List, Optional, Sequence

import torch
from timm.data import resolve_data_config

from timm_mimo.cli.args import CliError, check_model_input, one_line
from timm_mimo.cli.eval_models import create_ensemble, create_eval_model, eval_class_names
from timm_mimo.cli.optim_factory import resolve_lr
from timm_mimo.cli.resume import read_resume
from timm_mimo.cli.run_folder import plan_run_folder
from timm_mimo.cli.train_model import (
    build_task,
    check_binary_plans,
    check_eval_metric,
    check_labels,
    create_train_model,
    take_data_classes,
)
from timm_mimo.data import (
    DataError,
    dataset_class_descriptions,
    dataset_class_names,
    dataset_layout,
    dataset_num_classes,
)

__all__ = ['train_dry_run', 'validate_dry_run', 'sampled_image_sizes']

NUM_SIZE_SAMPLES = 8
NUM_NAMES_SHOWN = 5


def _line(key: str, value: str) -> None:
    print(f'  {key + ":":<14s}{value}', flush=True)


def _sampled_sizes(dataset: Any, count: int = NUM_SIZE_SAMPLES) -> List[Any]:
    """The stored sizes ``(W, H)`` of ``count`` images spread over the split (no transform applied)."""
    total = len(dataset)
    indices = sorted({round(i * (total - 1) / max(count - 1, 1)) for i in range(min(count, total))})
    saved = getattr(dataset, 'transform', None)
    sizes = []
    try:
        dataset.transform = None
        for index in indices:
            image = dataset[index][0]
            size = getattr(image, 'size', None)
            sizes.append(size if isinstance(size, tuple) else type(image).__name__)
    finally:
        dataset.transform = saved
    return sizes


def sampled_image_sizes(dataset: Any, count: int = NUM_SIZE_SAMPLES) -> str:
    """The sizes (W x H px) of ``count`` images spread over the split, as they are stored (no transform)."""
    return _format_sizes(_sampled_sizes(dataset, count))


def _format_sizes(sizes: Sequence[Any]) -> str:
    counts = Counter('x'.join(map(str, size)) if isinstance(size, tuple) else str(size) for size in sizes)
    shown = ', '.join(f'{size}' + (f' ({n})' if len(counts) > 1 else '') for size, n in counts.most_common(4))
    return f'{shown} in {len(sizes)} sampled images' + (' (sizes vary)' if len(counts) > 1 else '')


def _class_summary(names: Optional[Sequence[Optional[str]]], descriptions: Optional[Dict[str, str]],
                   count: Optional[int]) -> str:
    if not names:
        return f'{count if count is not None else "unknown"} (the data names none)'
    shown = []
    for name in list(names)[:NUM_NAMES_SHOWN]:
        words = (descriptions or {}).get(name) if name is not None else None
        shown.append(f'{name} ({words})' if words else str(name))
    more = ', ...' if len(names) > NUM_NAMES_SHOWN else ''
    return f'{len(names)}: {", ".join(shown)}{more}'


def _split_line(dataset: Any, name: str, split: str) -> str:
    return f'{split!r}, {len(dataset):,} images; {dataset_layout(dataset, name)}'


def _meta_copy(args: argparse.Namespace) -> argparse.Namespace:
    """The flags the model is built from in a dry run: no weights loaded (a meta model holds none)."""
    model_args = argparse.Namespace(**vars(args))
    model_args.pretrained, model_args.pretrained_path = False, None
    if hasattr(model_args, 'initial_checkpoint'):
        model_args.initial_checkpoint = ''
    return model_args


def _weights_line(args: argparse.Namespace) -> Optional[str]:
    for flag, path in (('--pretrained-path', getattr(args, 'pretrained_path', None)),
                       ('--initial-checkpoint', getattr(args, 'initial_checkpoint', None)),
                       ('--checkpoint', getattr(args, 'checkpoint', None))):
        if path:
            if not os.path.isfile(path):
                raise CliError(f'{flag} {path!r} does not exist')
            return f'{flag} {path} (read by the run, not by a dry run)'
    if getattr(args, 'pretrained', False):
        return f'the pretrained weights of {args.model!r} (loaded by the run, not by a dry run)'
    return None


def _run(report: Any) -> int:
    try:
        report()
    except (CliError, DataError) as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    print('dry run: nothing wrong found; nothing was written', flush=True)
    return 0


def train_dry_run(args: argparse.Namespace) -> int:
    """``timm-mimo-train --dry-run``: prints what the run would train on and what is wrong; writes nothing.

    Args:
        args: The parsed ``timm-mimo-train`` arguments.
    """
    return _run(lambda: _train_report(args))


def _train_report(args: argparse.Namespace) -> None:
    from timm_mimo.cli.data_path import open_eval_split, open_train_data, open_train_split
    args.world_size = int(os.environ.get('WORLD_SIZE', '1') or 1)
    args.rank, args.distributed, args.local_rank = 0, args.world_size > 1, 0
    print(f'dry run of timm-mimo-train{" --config " + args.config if args.config else ""}: the recipe, model and '
          'data as the run would resolve them', flush=True)
    lr_given = args.lr is not None
    resolve_lr(args)
    args.schedule_segment, args.schedule_segment_new = None, False
    resume_state = read_resume(args) if args.resume else None
    plan_run_folder(args, resume_state)  # checks only: the run folder is claimed by the run
    _line('dataset', f'{args.dataset or "(image folder)"!r} in {args.data_dir!r}')
    dataset = open_train_split(args)
    _line('train split', _split_line(dataset, args.dataset, args.train_split))
    given_classes = args.num_classes
    take_data_classes(args, dataset)
    names = dataset_class_names(dataset)
    descriptions = dataset_class_descriptions(dataset)
    _line('classes', _class_summary(names, descriptions, args.num_classes))
    sizes = _sampled_sizes(dataset)
    _line('image sizes', _format_sizes(sizes))
    weights = _weights_line(args)
    with torch.device('meta'):
        model = create_train_model(_meta_copy(args))
        try:
            task = build_task(args, model, torch.device('meta'))
        except ValueError as exc:
            raise CliError(f'bad MIMO flags: {one_line(exc)}') from None
        check_binary_plans(task, model)
        args.data_config = resolve_data_config(vars(args), model=model, verbose=False)
        check_model_input(model, args, args.data_config['input_size'])
    args.num_classes_resolved = model.num_classes
    check_labels(len(names) if names else dataset_num_classes(dataset), model.num_classes, args, names)
    head = (f'--num-classes {given_classes}' if given_classes is not None else
            "the training split's class count" if args.num_classes is not None else "the model's default")
    _line('model', f'{args.model}: {sum(p.numel() for p in model.parameters()):,} params, '
          f'{"MIMO M=" + str(task.num_members) if task.mimo else "plain"}, {model.num_classes} outputs ({head})')
    if weights:
        _line('weights', weights)
    config = args.data_config
    _line('input', f'{"x".join(map(str, config["input_size"]))}, mean {tuple(round(m, 4) for m in config["mean"])}, '
          f'std {tuple(round(s, 4) for s in config["std"])}, '
          f'{"CIFAR-style pad-crop " + str(args.crop_pad) if args.crop_pad is not None else "timm transforms"}')
    height, width = config['input_size'][-2:]
    small = [size for size in sizes if isinstance(size, tuple) and (size[0] < width or size[1] < height)]
    if small:
        grown = 'zero-padded (--crop-pad transform)' if args.crop_pad is not None else 'upscaled by the transforms'
        _line('note', f'{len(small)} of {len(sizes)} sampled images are smaller than the {width}x{height} input: '
                      f'{grown}')
    num_partners = args.batch_size if task.pixel_mix is not None else 0
    train_data = open_train_data(args, config, num_partners, dataset)
    class_names = train_data.class_names
    if resume_state is not None:
        from timm_mimo.cli.checkpoint import checkpoint_class_names
        if checkpoint_class_names(resume_state) not in (None, class_names):
            raise CliError(f'--resume {args.resume!r} was trained on other classes than the data gives: resume on '
                           'its data')
    global_batch = args.batch_size * args.world_size * args.grad_accum_steps
    _line('batch', f'{global_batch} images a step ({global_batch // args.batch_repeat} unique x b={args.batch_repeat}'
          f'; -b {args.batch_size} x {args.world_size} process(es) x {args.grad_accum_steps} accumulation step(s))')
    _line('steps', f'{train_data.sampler.steps_per_epoch:,} per epoch x {args.epochs} epochs')
    if lr_given:
        rule = '--lr as given'
    else:
        scale = args.lr_base_scale or ('sqrt' if any(o in args.opt.lower() for o in ('ada', 'lamb')) else 'linear')
        ratio = f'{global_batch // args.batch_repeat} unique a step / --lr-base-size {args.lr_base_size}'
        rule = f'--lr-base {args.lr_base:g} x {"sqrt" if scale == "sqrt" else ""}({ratio}), {scale} scaling'
    _line('lr', f'{args.lr:g} ({rule}); {args.opt}, sched {args.sched}, warm-up {args.warmup_epochs} epoch(s)')
    if args.val_split:
        check_eval_metric(args, task)
        val_set = open_eval_split(args, None, class_names)
        _line('val split', _split_line(val_set, args.dataset, args.val_split))
        val_names = set(dataset_class_names(val_set) or [])
        if class_names and val_names:
            missing = [name for name in class_names if name is not None and name not in val_names]
            if missing:
                _line('note', f'{len(missing)} training classes have no validation image '
                              f'({", ".join(map(str, missing[:4]))}{", ..." if len(missing) > 4 else ""})')
        _line('val batches', f'{math.ceil(len(val_set) / (args.validation_batch_size or args.batch_size)):,} of '
                             f'{args.validation_batch_size or args.batch_size}')
    else:
        _line('val split', "none (--val-split '')")
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        _line('note', f'--device {args.device}: CUDA is not available on this machine (the run needs it)')


def validate_dry_run(args: argparse.Namespace) -> int:
    """``timm-mimo-validate --dry-run``: prints what would be evaluated and what is wrong; writes nothing.

    Args:
        args: The parsed ``timm-mimo-validate`` arguments.
    """
    return _run(lambda: _validate_report(args))


def _validate_report(args: argparse.Namespace) -> None:
    import timm

    from timm_mimo.cli.checkpoint import check_checkpoint_model, read_checkpoint
    from timm_mimo.data import apply_class_names, dataset_num_classes, open_dataset
    print(f'dry run of timm-mimo-validate{" --config " + args.config if args.config else ""}: the model and data '
          'as the evaluation would resolve them', flush=True)
    if args.model_list or any(char in args.model for char in '*?['):
        raise CliError('--dry-run checks one model: drop --model-list / the wildcard')
    state = None
    if args.ensemble_checkpoints:
        model, class_names, _ = create_ensemble(args.ensemble_checkpoints, args.use_ema)
        weights = f'the ensemble of {len(args.ensemble_checkpoints)} checkpoints'
    else:
        if args.checkpoint:
            state = read_checkpoint(args.checkpoint)
            check_checkpoint_model(state, args.checkpoint, args.model, args.model_kwargs)
            weights = f'--checkpoint {args.checkpoint} (read; loaded by the run)'
        else:
            cfg = timm.models.get_pretrained_cfg(args.model.split(':')[-1]) if ':' not in args.model else None
            if ':' not in args.model and (cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file)) and \
                    not args.pretrained_path:
                raise CliError(f'no --checkpoint and {args.model!r} has no pretrained weights: give --checkpoint (a '
                               'run\'s model_best.pth.tar), otherwise random weights would be evaluated')
            weights = f'the pretrained weights of {args.model!r} (loaded by the run, not by a dry run)'
        model_args = _meta_copy(args)
        model_args.checkpoint = args.checkpoint or '(dry run)'  # no download: the weights are the run's business
        with torch.device('meta'):
            model = create_eval_model(model_args)
        class_names = eval_class_names(args, state, model)
    with torch.device('meta' if not args.ensemble_checkpoints else 'cpu'):
        data_config = resolve_data_config(vars(args), model=model)
        check_model_input(model, args, data_config['input_size'])
    _line('model', f'{args.model if not args.ensemble_checkpoints else "ensemble"}: '
          f'{sum(p.numel() for p in model.parameters()):,} params, {model.num_classes} outputs')
    _line('weights', weights)
    _line('dataset', f'{args.dataset or "(image folder)"!r} in {args.data_dir!r}')
    dataset = open_dataset(args.dataset, args.data_dir, args.split, False, args.dataset_download, None,
                           args.class_map, args.class_map_partial)
    _line('split', _split_line(dataset, args.dataset, args.split))
    split_names: List[Optional[str]] = list(dataset_class_names(dataset) or [])
    apply_class_names(dataset, class_names, f'split {args.split!r} of {args.data_dir!r}')
    num_data_classes = len(class_names) if class_names else dataset_num_classes(dataset)
    _line('classes', _class_summary(class_names or split_names, dataset_class_descriptions(dataset),
                                    num_data_classes) + (' (the model\'s)' if class_names else ' (the split\'s)'))
    if num_data_classes is not None and num_data_classes > model.num_classes:
        raise CliError(f'the data has {num_data_classes} classes but the model has {model.num_classes} outputs: set '
                       f'--num-classes {num_data_classes} (and a checkpoint trained with it)')
    _line('image sizes', sampled_image_sizes(dataset))
    _line('input', f'{"x".join(map(str, data_config["input_size"]))}, crop_pct {data_config.get("crop_pct")}, '
          f'{"CIFAR-style centre pad" if args.crop_pad is not None else "timm eval transform"}')
    _line('batches', f'{math.ceil(len(dataset) / args.batch_size):,} of {args.batch_size}')
