"""timm's bulk validation: several models (``--model-list``, ``--model FILE``, a wildcard ``--model``) or every
checkpoint of a ``--checkpoint`` folder, one results row each; a failing one is reported and skipped
(:func:`validate_each`).
"""
import argparse
import os
import sys
from typing import Any, Dict, List, Sequence, Tuple

import timm

from timm_mimo.cli.args import CliError, existing_file, one_line
from timm_mimo.cli.validation import rounded_results, validate
from timm_mimo.data import DataError

__all__ = ['bulk_models', 'checkpoint_runs', 'validate_each']


WILDCARD_CHARS = '*?['


def bulk_models(args: argparse.Namespace) -> list:
    """timm's bulk mode: the models of ``--model-list FILE``, of ``--model FILE`` (an existing file, as timm's
    validate.py reads it) or of a wildcard ``--model`` (registered names with pretrained weights, timm's
    ``list_models(pattern, pretrained=True)``; ``local-dir:<glob>``: every matching folder with a config.json);
    ``[]`` for a single model. Every name is checked before anything runs."""
    if args.model_list:
        source, names = f'--model-list {args.model_list!r}', _names_in_file(existing_file(args.model_list,
                                                                                            '--model-list'))
    elif ':' not in args.model and not timm.is_model(args.model) and os.path.isfile(args.model):
        source, names = f'--model {args.model!r} (a file)', _names_in_file(args.model)
    elif any(char in args.model for char in WILDCARD_CHARS):
        source, names = f'--model {args.model!r}', _expand_wildcard(args.model)
    else:
        return []
    if not names:
        raise CliError(f'{source} names no model')
    for name in names:
        _check_model_name(name, source)
    for dest in ('checkpoint', 'ensemble_checkpoints', 'reliability_diagram', 'pretrained_path'):
        if getattr(args, dest):
            raise CliError(f'{source} validates several models with their own weights; '
                           f'--{dest.replace("_", "-")} applies to one model: drop one of them')
    return names


CHECKPOINT_PATTERNS = ('*.pth.tar', '*.pth')  # what timm's validate.py validates in a --checkpoint folder


def checkpoint_runs(args: argparse.Namespace) -> List[str]:
    """timm's ``--checkpoint DIR``: every checkpoint in the folder (``*.pth.tar``, ``*.pth``, in natural order), each
    validated as ``--model`` and written as one row; ``[]`` when ``--checkpoint`` is not a folder."""
    import glob

    from timm.utils import natural_key
    folder = args.checkpoint
    if not folder or not os.path.isdir(folder):
        return []
    paths = sorted({path for pattern in CHECKPOINT_PATTERNS for path in glob.glob(os.path.join(folder, pattern))},
                   key=natural_key)
    if not paths:
        raise CliError(f'--checkpoint {folder!r} is a folder holding no checkpoint ({", ".join(CHECKPOINT_PATTERNS)}); '
                       'an exported model folder validates with --model local-dir:FOLDER')
    for dest in ('ensemble_checkpoints', 'reliability_diagram'):
        if getattr(args, dest):
            raise CliError(f'--checkpoint {folder!r} (a folder) validates each of its {len(paths)} checkpoints; '
                           f'--{dest.replace("_", "-")} applies to one: drop one of them')
    return paths


def validate_each(args: argparse.Namespace, runs: Sequence[Tuple[str, str]]
                  ) -> Tuple[List[Dict[str, Any]], List[Tuple[str, str]]]:
    """Bulk mode as timm's: validate every ``(model, checkpoint)``; a failing one is reported on stderr and
    skipped, the others go on. Returns the rows (sorted by top1, timm's order) and the ``(run, error)`` failures."""
    rows, failed = [], []
    for index, (name, checkpoint) in enumerate(runs):
        label = f'{name} {checkpoint}' if checkpoint else name
        print(f'== [{index + 1}/{len(runs)}] {label}', flush=True)
        try:
            rows.append(rounded_results(validate(argparse.Namespace(**dict(vars(args), model=name,
                                                                           checkpoint=checkpoint)))))
        except (CliError, DataError) as exc:
            failed.append((label, str(exc)))
        except Exception as exc:  # noqa: BLE001 - as timm's bulk mode: one model's failure does not stop the rest
            failed.append((label, f'{type(exc).__name__}: {one_line(exc)}'))
        else:
            continue
        print(f'error: {label}: {failed[-1][1]} (skipped; the others go on)', file=sys.stderr, flush=True)
    return sorted(rows, key=lambda row: row['top1'], reverse=True), failed


def _names_in_file(path: str) -> list:
    with open(path) as f:
        return [line.split('#', 1)[0].strip() for line in f if line.split('#', 1)[0].strip()]


def _expand_wildcard(pattern: str) -> list:
    import glob
    if pattern.startswith('local-dir:'):
        folders = sorted(glob.glob(pattern.split(':', 1)[1]))
        return [f'local-dir:{folder}' for folder in folders if os.path.isfile(os.path.join(folder, 'config.json'))]
    names = timm.list_models(pattern, pretrained=True)
    if not names:
        registered = len(timm.list_models(pattern))
        raise CliError(f'--model {pattern!r} matches no model with pretrained weights ({registered} registered names '
                       'match, none with weights); validate trained models with --checkpoint, or export them and '
                       'give --model "local-dir:<folder pattern>"')
    return names


def _check_model_name(name: str, source: str) -> None:
    if name.startswith('local-dir:'):
        folder = name.split(':', 1)[1]
        if not os.path.isfile(os.path.join(folder, 'config.json')):
            raise CliError(f'{source}: {name!r} is not a folder with a config.json (written by python -m timm_mimo '
                           'export or timm_mimo.hub.save_pretrained)')
    elif ':' not in name and not timm.is_model(name):
        raise CliError(f'{source}: model {name!r} is unknown (see timm.list_models())')
