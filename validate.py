#!/usr/bin/env python3
"""Evaluate a timm or timm_mimo model with timm's flags; MIMO models get member and diversity metrics too.

Ensemble (logit averaging) top-1 / top-5, NLL (``loss``), calibrated NLL (two-half cross temperature scaling) and
ECE for every model; for MIMO models also probability averaging, per-member top-1 / top-5 / NLL, ratio-error
diversity and disagreement (SPEC §5). ``--config`` accepts a training run's ``args.yaml``, so the evaluation uses
the run's model, data and transform flags:

    python validate.py --config output/train/run/args.yaml --checkpoint output/train/run/model_best.pth.tar
"""
import argparse
import csv
import json
import os
import sys
from typing import Any, Dict, Optional, Sequence

import timm
import torch
import yaml
from timm.data import resolve_data_config
from timm.utils import ParseKwargs
from torch.utils.data import DataLoader

import timm_mimo  # noqa: F401  (registers the MIMO models)
from timm_mimo.data import DataError, create_image_transform, open_dataset
from timm_mimo.metrics import collect_member_logits, ensemble_metrics, is_mimo


class CliError(Exception):
    """Bad user input: reported as one line on stderr, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    """timm's validate.py flags plus the transform flags of train.py."""
    parser = argparse.ArgumentParser(description='timm_mimo validation')
    parser.add_argument('-c', '--config', default='', help="YAML flag defaults, e.g. a training run's args.yaml")
    parser.add_argument('--data-dir', metavar='DIR')
    parser.add_argument('--dataset', default='')
    parser.add_argument('--split', default='validation')
    parser.add_argument('--dataset-download', action='store_true', default=False)
    parser.add_argument('--model', help='timm model name')
    parser.add_argument('--pretrained', action='store_true', default=False)
    parser.add_argument('--checkpoint', default='', metavar='PATH')
    parser.add_argument('--use-ema', action='store_true', default=False, help="evaluate the checkpoint's EMA weights")
    parser.add_argument('--num-classes', type=int, default=None)
    parser.add_argument('--in-chans', type=int, default=None)
    parser.add_argument('--num-members', type=int, default=None)
    parser.add_argument('--img-size', type=int, default=None)
    parser.add_argument('--input-size', default=None, nargs=3, type=int, metavar='N')
    parser.add_argument('--mean', type=float, nargs='+', default=None)
    parser.add_argument('--std', type=float, nargs='+', default=None)
    parser.add_argument('--interpolation', default='')
    parser.add_argument('--crop-pct', type=float, default=None)
    parser.add_argument('--crop-pad', type=int, default=None, help='CIFAR-style data: centred pad, no crop')
    parser.add_argument('-b', '--batch-size', type=int, default=256)
    parser.add_argument('-j', '--workers', type=int, default=4)
    parser.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs)
    parser.add_argument('--channels-last', action='store_true', default=False)
    parser.add_argument('--amp', action='store_true', default=False)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--results-file', default='', help='write the metrics to this .csv or .json file')
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Flags; ``--config`` sets defaults for the keys this parser knows (a train ``args.yaml`` has more)."""
    parser = build_parser()
    known, _ = parser.parse_known_args(argv)
    if known.config:
        try:
            with open(known.config) as f:
                config = yaml.safe_load(f) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise CliError(f'cannot read config {known.config!r}: {" ".join(str(exc).split())}') from None
        dests = {action.dest for action in parser._actions}
        config = {key.replace('-', '_'): value for key, value in config.items()}
        if 'val_split' in config and 'split' not in config:
            config['split'] = config['val_split']
        parser.set_defaults(**{k: v for k, v in config.items() if k in dests and k != 'config'})
    args = parser.parse_args(argv)
    if not args.model:
        raise CliError('--model is required (on the command line or in --config)')
    return args


def create_eval_model(args: argparse.Namespace) -> torch.nn.Module:
    """The model with its checkpoint; a checkpoint of another architecture is a one-line error."""
    if ':' not in args.model and not timm.is_model(args.model):
        raise CliError(f'unknown model {args.model!r} (see timm.list_models())')
    kwargs = dict(args.model_kwargs)
    for dest in ('num_classes', 'in_chans', 'num_members'):
        if getattr(args, dest) is not None:
            kwargs[dest] = getattr(args, dest)
    try:
        model = timm.create_model(args.model, pretrained=args.pretrained, **kwargs)
    except (TypeError, RuntimeError, ValueError) as exc:
        raise CliError(f'cannot create model {args.model!r}: {" ".join(str(exc).split())}') from None
    if args.checkpoint:
        if not os.path.isfile(args.checkpoint):
            raise CliError(f'checkpoint {args.checkpoint!r} does not exist')
        try:
            timm.models.load_checkpoint(model, args.checkpoint, use_ema=args.use_ema, weights_only=True)
        except (RuntimeError, KeyError, OSError, EOFError, ValueError) as exc:
            first = ' '.join(str(exc).split())[:240]
            raise CliError(f'checkpoint {args.checkpoint!r} does not fit model {args.model!r}: {first}') from None
    return model


def validate(args: argparse.Namespace) -> Dict[str, Any]:
    """Evaluate and return the metrics (timm's ``top1``, ``top5``, ``loss`` + SPEC §5 columns)."""
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        raise CliError(f'--device {args.device} requested but CUDA is not available')
    device = torch.device(args.device)
    model = create_eval_model(args).to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    data_config = resolve_data_config(vars(args), model=model)
    transform = create_image_transform(data_config, False, args.crop_pad)
    dataset = open_dataset(args.dataset, args.data_dir, args.split, False, args.dataset_download, transform)
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=False, num_workers=args.workers)
    autocast_dtype = (torch.float16 if device.type == 'cuda' else torch.bfloat16) if args.amp else None
    member_logits, targets = collect_member_logits(model, loader, device, autocast_dtype, args.channels_last)
    results: Dict[str, Any] = dict(model=args.model, checkpoint=args.checkpoint, num_images=len(dataset),
                                   num_members=model.num_members if is_mimo(model) else 1)
    results.update(ensemble_metrics(member_logits, targets))
    return results


def write_results(path: str, results: Dict[str, Any]) -> None:
    """Write ``results`` as JSON (``.json``) or a one-row CSV (anything else), via a temporary file."""
    tmp_path = f'{path}.tmp'
    with open(tmp_path, 'w', newline='') as f:
        if path.endswith('.json'):
            json.dump(results, f, indent=2)
        else:
            writer = csv.DictWriter(f, fieldnames=list(results))
            writer.writeheader()
            writer.writerow(results)
    os.replace(tmp_path, path)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point: prints the metrics; bad input ends with one line on stderr and exit status 2."""
    try:
        args = parse_args(argv)
        results = validate(args)
    except (CliError, DataError) as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    for key, value in results.items():
        print(f'{key:>14s}: {value:.6f}' if isinstance(value, float) else f'{key:>14s}: {value}')
    if args.results_file:
        write_results(args.results_file, results)
    return 0


if __name__ == '__main__':
    sys.exit(main())
