"""One evaluation of ``timm-mimo-validate``: :func:`validate` scores a model (or an ensemble) on ``--split`` and every
requested extra and returns one results row; timm validate.py's leading columns and rounding (:func:`timm_columns`,
:func:`rounded_results`) and the results file (:func:`write_results`).
"""
import argparse
import csv
import importlib
import importlib.util
import json
import os
from collections import OrderedDict
from typing import Any, Dict

import torch
from timm.data import resolve_data_config
from timm.layers import set_fast_norm
from torch.utils.data import DataLoader

from timm_mimo.cli.args import CliError, check_model_input, one_line, reader_kwargs
from timm_mimo.cli.checkpoint import check_checkpoint_model, read_checkpoint
from timm_mimo.cli.data_path import device_batches, pin_memory
from timm_mimo.cli.eval_models import (
    check_ensemble_input,
    check_ensemble_size,
    create_ensemble,
    create_eval_model,
    eval_class_names,
    load_weights,
    sharing_rate_columns,
    temperature_of,
)
from timm_mimo.cli.eval_splits import check_corruptible, fit_temperature_columns, open_calibration_split, open_release
from timm_mimo.cli.evaluate import metric_columns
from timm_mimo.cli.progress import collect_logged
from timm_mimo.cli.run_folder import write_atomically, write_error
from timm_mimo.data import apply_class_names, create_image_transform, dataset_num_classes, open_dataset
from timm_mimo.evaluation import (
    SEVERITIES,
    corruption_metrics,
    ood_folder_metrics,
    open_ood_folder,
    released_corruption_metrics,
    save_reliability_diagram,
)
from timm_mimo.export_preprocessing import exported_crop_pad
from timm_mimo.loader import quiet_worker_signals
from timm_mimo.metrics import is_mimo
from timm_mimo.outputs import lock_run_folder, run_folder_of
from timm_mimo.strict_images import strict_images

__all__ = ['validate', 'prepare_output_file', 'timm_columns', 'rounded_results', 'write_results']


def prepare_output_file(path: str, flag: str = '--results-file') -> None:
    """Create the folder of an output file (``flag``) and make sure it is writable, before the evaluation runs."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise CliError(f'{flag} {path!r} is a folder; give a file name')
    try:
        os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, f'.{os.path.basename(path)}.probe')
        with open(probe, 'w') as f:
            f.write('ok')
        os.remove(probe)
    except OSError as exc:
        raise CliError(f'{flag} {path!r} cannot be written ({one_line(exc)}); pick another path') from None


def validate(args: argparse.Namespace) -> Dict[str, Any]:
    """Evaluate and return the metrics (timm's ``top1``, ``top5``, ``loss`` + the MIMO columns)."""
    for module in args.device_modules or []:
        importlib.import_module(module)
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        raise CliError(f'--device {args.device} requested but CUDA is not available; use --device cpu')
    for path, flag in ((args.results_file, '--results-file'), (args.reliability_diagram, '--reliability-diagram')):
        if path:
            prepare_output_file(path, flag)
            if (folder := run_folder_of(path)) is not None:  # not while a run (or another validate) writes there
                lock_run_folder(folder)
    torch.manual_seed(args.seed)
    if args.fast_norm:
        set_fast_norm()
    device = torch.device(args.device)
    state = None
    if args.ensemble_checkpoints:
        model, class_names, trained_sizes = create_ensemble(args.ensemble_checkpoints, args.use_ema)
    else:
        if args.checkpoint:
            state = read_checkpoint(args.checkpoint)
            check_checkpoint_model(state, args.checkpoint, args.model, args.model_kwargs)
        model = create_eval_model(args)
        class_names = eval_class_names(args, state, model)
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    data_config = resolve_data_config(vars(args), model=model)
    args.crop_pad = exported_crop_pad(args.model, args.crop_pad)  # a local-dir: export's recorded --crop-pad
    if args.ensemble_checkpoints:
        check_ensemble_input(model, data_config['input_size'][0])
        check_ensemble_size(trained_sizes[0], data_config['input_size'])
    check_model_input(model, args, data_config['input_size'], 'the ensemble' if args.ensemble_checkpoints else None)
    try:
        transform = create_image_transform(data_config, False, args.crop_pad)
        # the main loader hands uint8 images to the device prefetcher, which normalises them there
        loader_transform = transform if args.no_prefetcher else create_image_transform(
            data_config, False, args.crop_pad, normalize=False)
    except (ValueError, TypeError) as exc:
        raise CliError(f'cannot build the image transform: {one_line(exc)}') from None
    dataset = open_dataset(args.dataset, args.data_dir, args.split, False, args.dataset_download, loader_transform,
                           args.class_map, args.class_map_partial, **reader_kwargs(args))
    strict_images(dataset)  # an unreadable image is an error, not replaced by the next one (scored twice)
    where = f'split {args.split!r} of {args.data_dir!r}'
    apply_class_names(dataset, class_names, where)
    num_data_classes = len(class_names) if class_names else dataset_num_classes(dataset)
    if num_data_classes is not None and num_data_classes > model.num_classes:
        raise CliError(f'the data has {num_data_classes} classes but the model has {model.num_classes} outputs: set '
                       f'--num-classes {num_data_classes} (and a checkpoint trained with it)')
    if state is not None:
        load_weights(model, args.checkpoint, args.use_ema, state)
    rates = sharing_rate_columns(model, args.model) if args.sharing_rates else {}  # before the evaluation
    ood_set = clean_set = calibration_set = release = None
    try:
        if args.fit_temperature is not None:  # opened (and checked held out) before any evaluation runs
            calibration_set = open_calibration_split(args, dataset, loader_transform)
        if args.ood_dir:
            ood_set = open_ood_folder(args.ood_dir, data_config['input_size'], transform)
        if args.corruption_dir:
            release = open_release(args.corruption_dir, dataset, model.num_classes)
        elif args.corruptions is not None:
            clean_set = open_dataset(args.dataset, args.data_dir, args.split, False, args.dataset_download, None,
                                     args.class_map, args.class_map_partial, **reader_kwargs(args))
            apply_class_names(clean_set, class_names, where)
            check_corruptible(clean_set)
    except ValueError as exc:  # DataError is a ValueError
        raise CliError(one_line(exc)) from None
    loader = device_batches(DataLoader(dataset, batch_size=args.batch_size, shuffle=False, num_workers=args.workers,
                                       pin_memory=pin_memory(args, device), worker_init_fn=quiet_worker_signals),
                            args, data_config, device)
    eval_model = model
    if args.torchcompile:
        eval_model = torch.compile(model, backend=args.torchcompile, mode=args.torchcompile_mode)
    autocast_dtype = None
    if args.amp:
        autocast_dtype = torch.float16 if device.type == 'cuda' and args.amp_dtype == 'float16' else torch.bfloat16
    member_logits, targets = collect_logged(eval_model, loader, device, autocast_dtype, args.channels_last,
                                            args.log_freq, 'Test:')  # the running top-1 every --log-freq batches
    if args.ensemble_checkpoints:
        name, checkpoint = 'ensemble', ' '.join(args.ensemble_checkpoints)
    else:
        name, checkpoint = args.model, args.checkpoint
    metrics = metric_columns(member_logits, targets)
    results = timm_columns(name, metrics, model, data_config)
    results.update(checkpoint=checkpoint, dataset=args.dataset, split=args.split, num_images=len(dataset),
                   num_members=model.num_members if is_mimo(model) else 1)
    results.update((key, value) for key, value in metrics.items() if key not in results)
    results.update(temperature_of(model))
    results.update(rates)
    if calibration_set is not None:
        results.update(fit_temperature_columns(args, eval_model, model, calibration_set, data_config, member_logits,
                                               targets, device, autocast_dtype))
    if ood_set is not None:
        results.update(ood_folder_metrics(eval_model, member_logits, ood_set, device, args.batch_size, args.workers,
                                          autocast_dtype, args.channels_last))
    if release is not None:
        try:
            results.update(released_corruption_metrics(
                eval_model, release, transform, device, args.corruptions or None,
                args.corruption_severities or SEVERITIES, args.corruption_images, args.batch_size, args.workers,
                autocast_dtype=autocast_dtype, channels_last=args.channels_last))
        except (ValueError, OSError) as exc:
            raise CliError(f'--corruption-dir: {one_line(exc)}') from None
    if clean_set is not None:
        try:
            results.update(corruption_metrics(
                eval_model, clean_set, transform, device, args.corruptions or None,
                args.corruption_severities or SEVERITIES, args.corruption_images, args.batch_size, args.workers,
                autocast_dtype=autocast_dtype, channels_last=args.channels_last))
        except (ValueError, TypeError) as exc:
            raise CliError(f'--corruptions: {one_line(exc)}') from None
    if args.reliability_diagram:  # written once every evaluation has succeeded
        probs = member_logits.double().mean(dim=1).softmax(dim=-1)
        try:
            write_atomically(args.reliability_diagram,
                             lambda tmp_path: save_reliability_diagram(probs, targets, tmp_path, title=name),
                             keep_suffix=True)
        except OSError as exc:
            raise CliError(write_error(args.reliability_diagram, exc)) from None
    return results


def timm_columns(name: str, metrics: Dict[str, float], model: torch.nn.Module,
                 data_config: Dict[str, Any]) -> Dict[str, Any]:
    """timm validate.py's leading columns, in its order: ``model, top1, top1_err, top5, top5_err, param_count``
    (millions), ``img_size, crop_pct, interpolation`` (unrounded; :func:`rounded_results` rounds as timm does)."""
    return OrderedDict(model=name, top1=metrics['top1'], top1_err=100.0 - metrics['top1'], top5=metrics['top5'],
                       top5_err=100.0 - metrics['top5'], param_count=sum(p.numel() for p in model.parameters()) / 1e6,
                       img_size=data_config['input_size'][-1], crop_pct=data_config['crop_pct'],
                       interpolation=data_config['interpolation'])


def rounded_results(results: Dict[str, Any]) -> Dict[str, Any]:
    """timm's rounding: ``param_count`` (millions) to 2 decimals, every other number to 4 (timm rounds its top-k
    columns to 4; the same for the MIMO columns: losses in nats, ECE and accuracies in %, rates in [0, 1])."""
    return OrderedDict((key, round(value, 2 if key == 'param_count' else 4)
                        if isinstance(value, float) and key != 'temperature' else value)  # T exact: it is applied
                       for key, value in results.items())


def write_results(path: str, results: Any, results_format: str = 'csv') -> None:
    """Write one row (a dict) or the rows of a bulk run (a list) as JSON or CSV, via a temporary file (complete or
    absent). CSV columns: every row's keys in first-seen order (plain models have no member columns)."""
    rows = results if isinstance(results, list) else [results]

    def write(tmp_path: str) -> None:
        with open(tmp_path, 'w', newline='') as f:
            if results_format == 'json':
                json.dump(results, f, indent=2)
            else:
                fieldnames = list(OrderedDict.fromkeys(key for row in rows for key in row))
                writer = csv.DictWriter(f, fieldnames=fieldnames, restval='')
                writer.writeheader()
                writer.writerows(rows)
    write_atomically(path, write)
