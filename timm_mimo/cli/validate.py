"""timm-mimo-validate: evaluate a timm or timm_mimo model with timm's flags; MIMO models get member columns too.

Ensemble (logit averaging) top-1 / top-5, NLL (``loss``), calibrated NLL (two-half cross temperature scaling) and
ECE for every model; for MIMO models also probability averaging, per-member top-1 / top-5 / NLL, ratio-error
diversity and disagreement (MixMo arXiv:2103.06132 Sec. 4, thesis (HAL tel-03952815) App. A.1.3.2). ``--config``
accepts a training run's ``args.yaml``, so the evaluation uses the run's model, data and transform flags::

    timm-mimo-validate --config output/train/run/args.yaml --checkpoint output/train/run/model_best.pth.tar

With no ``--checkpoint`` the model's pretrained weights are loaded, as timm's validate.py does (``--pretrained`` is
implied); a model without pretrained weights is then an error rather than an evaluation of random weights.

Beyond the test split (each group adds columns to the same result row): ``--ensemble-checkpoints`` evaluates a deep
ensemble of training runs (the papers' "2 Nets" / "2 MixMos" rows), ``--ood-dir`` out-of-distribution detection
against an image folder, ``--corruptions`` the common corruptions of Hendrycks & Dietterich (ICLR 2019) through the
``imagecorruptions`` package, ``--corruption-dir`` the same columns from the released CIFAR-10-C / CIFAR-100-C /
Tiny-ImageNet-C files, ``--reliability-diagram`` a PNG of the ensemble's calibration, ``--fit-temperature SPLIT`` a
deployable temperature fitted on a held-out split (:mod:`timm_mimo.calibration`).

Results files start with timm validate.py's columns and rounding (:func:`timm_columns`, :func:`rounded_results`);
timm's bulk mode (``--model-list``, ``--model FILE``, wildcards, a ``--checkpoint`` folder) writes one row per model
(:func:`bulk_models`, :func:`checkpoint_runs`); a failing model is reported and skipped (exit status 1). Like timm's
validate.py, the command ends by printing ``--result`` and the results as JSON on stdout.
"""
import argparse
import contextlib
import csv
import importlib
import importlib.util
import json
import os
import sys
import time
from collections import OrderedDict
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import timm
import torch
from timm.data import resolve_data_config
from timm.data.readers.img_extensions import get_img_extensions
from timm.layers import set_fast_norm
from timm.models import clean_state_dict
from torch.utils.data import DataLoader

import timm_mimo  # noqa: F401  (registers the MIMO models)
from timm_mimo.analysis import sharing_rates
from timm_mimo.calibration import at_search_bound, columns_after, fit_temperature, get_temperature, temperature_heads
from timm_mimo.checkpoint import run_train_args
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
    one_line,
    parse_with_config,
    quiet_warnings,
    reader_kwargs,
)
from timm_mimo.cli.checkpoint import (
    check_checkpoint_model,
    checkpoint_class_names,
    checkpoint_weights,
    read_checkpoint,
    read_weights_file,
)
from timm_mimo.cli.data_path import device_batches, pin_memory
from timm_mimo.cli.dry_run import validate_dry_run
from timm_mimo.cli.errors import report_unexpected, split_debug
from timm_mimo.cli.evaluate import metric_columns
from timm_mimo.cli.progress import collect_logged
from timm_mimo.cli.run_folder import (
    Interrupted,
    SignalGuard,
    check_outputs_are_not_inputs,
    write_atomically,
    write_error,
)
from timm_mimo.data import (
    DataError,
    apply_class_names,
    create_image_transform,
    dataset_class_names,
    dataset_num_classes,
    open_dataset,
)
from timm_mimo.evaluation import (
    MIN_CORRUPTION_SIZE,
    SEVERITIES,
    CheckpointEnsemble,
    CorruptionRelease,
    corruption_metrics,
    known_corruptions,
    model_from_checkpoint,
    ood_folder_metrics,
    open_ood_folder,
    released_corruption_metrics,
    save_reliability_diagram,
)
from timm_mimo.export_preprocessing import exported_crop_pad
from timm_mimo.labels import (
    check_ensemble_names,
    check_unique_names,
    label_names_list,
    release_class_names,
    release_label_map,
)
from timm_mimo.loader import quiet_worker_signals
from timm_mimo.metrics import is_mimo
from timm_mimo.outputs import lock_run_folder, release_run_folders, run_folder_of
from timm_mimo.pretrained import PretrainedDownloadError, hub_errors_with_offline_hint
from timm_mimo.recipes import config_path
from timm_mimo.strict_images import strict_images
from timm_mimo.temperature_provenance import provenance_columns

__all__ = ['build_parser', 'parse_args', 'validate', 'write_results', 'main', 'timm_columns', 'rounded_results',
           'bulk_models', 'checkpoint_runs', 'validate_each', 'shape_mismatch', 'fit_temperature_columns',
           'open_calibration_split', 'shared_images', 'temperature_of']

REFUSED = [
    Refused(('--num-samples',), 'for iterable datasets; this evaluation indexes the whole split', default=None,
            type=int),
    Refused(('--use-train-size',), "the input size comes from --img-size / --input-size / the model's config",
            action='store_true', default=False),
    Refused(('--crop-mode',), "use --crop-pct, or --crop-pad for CIFAR-shaped data", default=None, type=str),
    Refused(('--crop-border-pixels',), 'use --crop-pct', type=int, default=None),
    Refused(('--num-gpu',), 'one device per process', type=int, default=1),
    Refused(('--test-pool',), 'not implemented for MIMO models', action='store_true', default=False),
    Refused(('--reparam',), 'not implemented for MIMO models', action='store_true', default=False),
    Refused(('--results-dir',), 'use --results-file', type=str, default=''),
    Refused(('--real-labels',), 'ImageNet-only relabelling', type=str, default=''),
    Refused(('--valid-labels',), 'ImageNet-only label subsets', type=str, default=''),
    Refused(('--retry',), 'batch-size back-off is not implemented; set -b', action='store_true', default=False),
    Refused(('--tta',), 'test-time augmentation is not implemented', type=int, default=0),
    Refused(('--naflex-loader',), 'variable-resolution NaFlex batches are not implemented for MIMO models',
            action='store_true', default=False),
    Refused(('--naflex-max-seq-len',), 'see --naflex-loader', type=int, default=576),
]


def build_parser() -> argparse.ArgumentParser:
    """timm's validate.py options (names, meanings, defaults; refused ones say why) plus ``--crop-pad``."""
    parser = ArgumentParser(prog='timm-mimo-validate', usage='%(prog)s [-c FILE] [--data-dir DIR] [--model MODEL] '
                            '[--checkpoint PATH] [options]',
                            description="Evaluate a timm or timm_mimo model with timm's validate.py flags: timm's "
                                        'columns, then the ensemble, member, calibration and robustness ones.')
    parser.add_argument('-c', '--config', default='', type=str, metavar='FILE',
                        help="YAML flag defaults, e.g. a training run's args.yaml (training-only keys are "
                             'skipped), or a shipped recipe name')
    group = parser.add_argument_group('Dataset parameters')
    add_data_args(parser, group)
    group.add_argument('--split', metavar='NAME', default='validation',
                       help="split to evaluate (default: validation); '.' = the data dir itself")
    group.add_argument('--dry-run', action='store_true', default=False,
                       help='resolve the model and the data as the evaluation would, print what it would evaluate '
                            '(dataset layout, classes, images, sizes, batches) and what is wrong, then exit without '
                            'writing anything')
    group = parser.add_argument_group('Model parameters')
    add_model_args(group)
    group.add_argument('--checkpoint', default='', type=str, metavar='PATH',
                       help="checkpoint file whose weights are evaluated, timm_mimo's or timm's train.py (default: "
                            'none => the pretrained weights); a folder: each of its *.pth.tar / *.pth checkpoints, '
                            "one results row each (timm's bulk mode)")
    group.add_argument('--pretrained-path', default=None, type=str, metavar='FILE',
                       help="a local copy of the model's pretrained weights (e.g. the model.safetensors of its Hub "
                            'repository, downloaded elsewhere), loaded as the published weights would be')
    group.add_argument('--model-list', default='', type=str, metavar='FILE',
                       help="timm's bulk mode: validate every model named in FILE (one per line; registered names "
                            'with pretrained weights, local-dir:<folder>, hf-hub:<repo>), one results row each, '
                            'sorted by top1; --model with a wildcard (e.g. "mixvit_cait_*" or "local-dir:exports/*") '
                            'or a file name does the same')
    group.add_argument('--use-ema', dest='use_ema', action='store_true',
                       help="use the checkpoint's EMA weights (an error if it has none)")
    group.add_argument('--num-members', type=int, default=None, help='timm_mimo: M of a MIMO model')
    group.add_argument('--sharing-rates', action='store_true', default=False,
                       help="timm_mimo: add the members' encoder / classifier sharing rates (overlap of their "
                            'feature-influence histograms, MixShare arXiv:2205.10139 Sec. 2) to the results; '
                            'MIMO models only')
    group.add_argument('-b', '--batch-size', default=256, type=int, metavar='N',
                       help='images per evaluation batch (default: 256)')
    group = parser.add_argument_group('Device parameters')
    add_device_args(group)
    group = parser.add_argument_group('Miscellaneous parameters')
    add_loader_args(group)
    group.add_argument('--log-freq', default=10, type=int, metavar='N',
                       help='log progress every N batches (default: 10)')
    group.add_argument('--seed', type=int, default=42, metavar='S',
                       help='seed of torch (default: 42); the NLL_c halves use their own fixed seed')
    group.add_argument('--results-file', default='', type=str, metavar='FILENAME',
                       help='write the results to this .csv or .json file (its folder is created)')
    group.add_argument('--results-format', default='csv', type=str, choices=('csv', 'json'),
                       help='format of --results-file: csv or json (default: csv)')
    add_refused(group, REFUSED)
    add_uncertainty_args(parser.add_argument_group('Uncertainty and robustness (timm_mimo)'))
    return parser


def add_uncertainty_args(group: argparse._ArgumentGroup) -> None:
    """Deep ensembles of checkpoints, OOD detection, common corruptions and the reliability diagram."""
    group.add_argument('--ensemble-checkpoints', nargs='+', default=None, metavar='PATH',
                       help='evaluate a deep ensemble of train.py checkpoints (plain or MIMO; each network rebuilt '
                            'from the args.yaml beside its checkpoint, else from its arch) averaging the networks\' '
                            'logits; replaces --model / --checkpoint (the model flags of a --config are not used; '
                            'the data flags --img-size / --in-chans / --mean / --std / --crop-pad are, e.g. --config '
                            "with a run's args.yaml)")
    group.add_argument('--ood-dir', default='', metavar='DIR',
                       help='out-of-distribution image folder (any layout, labels ignored): ood_* columns, AUROC / '
                            'AUPR / FPR@95 of the test split against it from max-softmax, predictive entropy and '
                            "the members' mutual information")
    group.add_argument('--corruptions', nargs='*', default=None, metavar='NAME',
                       help='evaluate under common corruptions (imagecorruptions package, ImageNet-C parameters) of '
                            'the split: c_* columns (top1 / top5 / nll / ece per corruption, per severity, mean); '
                            'the flag alone = the 15 common corruptions')
    group.add_argument('--corruption-dir', default='', metavar='DIR',
                       help='read the corrupted test sets from a released benchmark instead of generating them: '
                            'CIFAR-10-C / CIFAR-100-C (<corruption>.npy + labels.npy) or Tiny-ImageNet-C '
                            '(<corruption>/<severity>/<class>/*.JPEG); same c_* columns; --corruptions NAME ... '
                            "picks among the release's corruptions (default: the benchmark's 15)")
    group.add_argument('--corruption-severities', nargs='+', type=int, default=None, choices=SEVERITIES,
                       metavar='S', help='severities of --corruptions / --corruption-dir, among 1..5 (default: '
                                         'all five)')
    group.add_argument('--corruption-images', type=int, default=None, metavar='N',
                       help='corrupt (or, with --corruption-dir, read) a fixed-seed random subset of N images of '
                            'the split (default: all of them)')
    group.add_argument('--reliability-diagram', default='', metavar='PNG',
                       help="write the ensemble's reliability diagram (accuracy per confidence bin) to this .png")
    group.add_argument('--fit-temperature', default=None, metavar='SPLIT',
                       help='fit a temperature on SPLIT, a held-out split sharing no image with --split (e.g. '
                            'validation when --split is test), by minimising the NLL of the ensemble: the temperature '
                            '(what python -m timm_mimo export --results applies to the model) and the NLL / ECE of '
                            '--split after it (loss_ts, ece_ts; loss and ece are before)')


VALIDATE_CHECKS = MODEL_CHECKS + [
    ('num_members', at_least(2), 'an integer >= 2'),
    ('log_freq', at_least(1), 'an integer >= 1'),
    ('corruption_images', at_least(1), 'an integer >= 1'),
]

# flags that build the single --model; a deep ensemble rebuilds every network from its own run instead
ENSEMBLE_CONFLICTS = ('model', 'checkpoint', 'pretrained', 'num_classes', 'num_members', 'gp', 'model_kwargs')


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Flags; ``--config`` sets defaults for the keys this parser knows (a train ``args.yaml`` has more)."""
    parser = build_parser()
    args = parse_with_config(parser, argv, ignore_unknown_config=True, config_aliases={'val_split': 'split'})
    check_refused(parser, args)
    check_values(parser, args, VALIDATE_CHECKS)
    if args.data and not args.data_dir:
        args.data_dir = args.data
    if args.results_file and os.path.splitext(args.results_file)[1] == '.json':
        args.results_format = 'json'
    check_channel_stats(args)
    check_compile(args)
    check_uncertainty_args(parser, args)
    check_unique_names(args.class_names)
    check_outputs_are_not_inputs(
        {'--results-file': args.results_file, '--reliability-diagram': args.reliability_diagram},
        {'--checkpoint': args.checkpoint, '--config': config_path(args.config) if args.config else '',
         '--ensemble-checkpoints': args.ensemble_checkpoints, '--class-map': args.class_map})
    return args


def _flag(parser: argparse.ArgumentParser, dest: str) -> str:
    return next(action.option_strings[-1] for action in parser._actions if action.dest == dest)


def check_uncertainty_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """One-line errors for the evaluation-group flags, before any model, data or file is touched."""
    if args.ensemble_checkpoints:
        # a value other than the parser's default (which a --config has set) came from the command line
        for dest in ENSEMBLE_CONFLICTS:
            if getattr(args, dest) != parser.get_default(dest):
                raise CliError(f'{_flag(parser, dest)} cannot be combined with --ensemble-checkpoints (every network '
                               'is rebuilt from the args.yaml beside its checkpoint); drop one of them')
        for path in args.ensemble_checkpoints:
            existing_file(path, '--ensemble-checkpoints')
    if args.ood_dir:
        if not os.path.isdir(args.ood_dir):
            raise CliError(f'--ood-dir {args.ood_dir!r} does not exist or is not a folder')
        extensions = get_img_extensions(as_set=True)
        if not any(os.path.splitext(name)[1].lower() in extensions
                   for _, _, names in os.walk(args.ood_dir, followlinks=True) for name in names):
            raise CliError(f'--ood-dir {args.ood_dir!r} holds no images ({", ".join(sorted(extensions))} in any '
                           'subfolder)')
    if args.corruption_dir:
        try:
            release = CorruptionRelease(args.corruption_dir)
            names = args.corruptions or release.default_corruptions()
            release.check(names, args.corruption_severities or SEVERITIES)
        except (ValueError, OSError) as exc:
            raise CliError(f'--corruption-dir: {one_line(exc)}') from None
        for dest in ('corruptions', 'corruption_severities'):
            values = getattr(args, dest) or []
            if len(set(values)) != len(values):
                raise CliError(f'{_flag(parser, dest)} {values}: each value at most once')
    elif args.corruptions is None:
        for dest in ('corruption_severities', 'corruption_images'):
            if getattr(args, dest) is not None:
                raise CliError(f'{_flag(parser, dest)} needs --corruptions (give it alone for the 15 common ones) or '
                               '--corruption-dir')
    else:
        try:
            names = known_corruptions()
        except ImportError as exc:
            raise CliError(f'--corruptions: {exc}') from None
        unknown = [name for name in args.corruptions if name not in names]
        if unknown:
            raise CliError(f'--corruptions {unknown[0]!r} is unknown; choose from {", ".join(names)}')
        for dest in ('corruptions', 'corruption_severities'):
            values = getattr(args, dest) or []
            if len(set(values)) != len(values):
                raise CliError(f'{_flag(parser, dest)} {values}: each value at most once')
    if args.fit_temperature is not None:
        if args.fit_temperature in ('', args.split):
            raise CliError(f'--fit-temperature {args.fit_temperature!r}: the temperature is fitted on a held-out '
                           f'split, never on the reported --split {args.split!r}; name another split (e.g. '
                           '--split test --fit-temperature validation)')
    if args.pretrained_path:
        read_weights_file(args.pretrained_path, '--pretrained-path')  # a one-line error for a bad file
        if args.checkpoint or args.ensemble_checkpoints:
            raise CliError('--pretrained-path loads pretrained weights; with --checkpoint / --ensemble-checkpoints '
                           'they would be replaced: drop one of them')
    if args.reliability_diagram:
        if os.path.splitext(args.reliability_diagram)[1].lower() != '.png':
            raise CliError(f'--reliability-diagram {args.reliability_diagram!r}: give a .png file name')
        if importlib.util.find_spec('matplotlib') is None:
            raise CliError('--reliability-diagram needs matplotlib: pip install matplotlib (or, in a timm_mimo '
                           'checkout, pip install ".[plots]")')


def load_weights(model: torch.nn.Module, path: str, use_ema: bool, state: Any = None,
                 flag: str = '--checkpoint') -> None:
    """Checkpoint weights into ``model``; ``use_ema`` needs ``state_dict_ema`` in the file (no silent fallback).
    ``state``: the file already read (:func:`timm_mimo.cli.checkpoint.read_checkpoint`)."""
    if state is None:
        state = read_checkpoint(path, flag)
    weights = clean_state_dict(checkpoint_weights(state, path, use_ema, flag))
    mismatch = shape_mismatch(model, weights)
    if mismatch:
        raise CliError(f'checkpoint {path!r} does not fit model {type(model).__name__}: {mismatch}')
    try:
        model.load_state_dict(weights)
    except (RuntimeError, KeyError, ValueError) as exc:
        raise CliError(f'checkpoint {path!r} does not fit model {type(model).__name__}: {one_line(exc, 240)}') \
            from None


def shape_mismatch(model: torch.nn.Module, weights: Dict[str, torch.Tensor]) -> Optional[str]:
    """What differs in size between ``weights`` and ``model`` (``None``: nothing); a classifier of another class
    count is named with both sizes and the ``--num-classes`` way out."""
    own = model.state_dict()
    differ = [(key, tuple(weights[key].shape), tuple(own[key].shape)) for key in weights
              if key in own and tuple(weights[key].shape) != tuple(own[key].shape)]
    if not differ:
        return None
    num_classes = getattr(model, 'num_classes', None)
    for key, theirs, ours in differ:
        if key.endswith('.bias') and ours and ours[-1] == num_classes and theirs:
            return (f'its classifier head has {theirs[-1]} outputs ({key} {theirs}) and the model {num_classes} '
                    f'({ours}): set --num-classes {theirs[-1]} (or --config with the run\'s args.yaml)')
    shown = '; '.join(f'{key} {theirs} in the checkpoint, {ours} in the model' for key, theirs, ours in differ[:3])
    more = f' and {len(differ) - 3} more' if len(differ) > 3 else ''
    return (f'{len(differ)} tensors differ in size ({shown}{more}): give the --model / --model-kwargs of the run '
            "that wrote it (or --config with the run's args.yaml)")


def eval_class_names(args: argparse.Namespace, state: Any, model: torch.nn.Module) -> Optional[List[str]]:
    """The class of each model output, by which the split is labelled: ``--class-names`` (or a run's args.yaml as
    ``--config``), the checkpoint's, or the pretrained cfg's ``label_names``; ``None`` (the split's own order) for
    checkpoints that record none. Disagreeing sources are refused."""
    recorded = checkpoint_class_names(state)
    if args.class_names and recorded and list(args.class_names) != recorded:
        raise CliError(f'--class-names (or the --config) lists {len(args.class_names)} classes '
                       f'({", ".join(args.class_names[:4])}, ...) but --checkpoint {args.checkpoint!r} was trained on '
                       f'{len(recorded)} ({", ".join(recorded[:4])}, ...): give the run\'s args.yaml as --config')
    names = list(args.class_names or recorded or [])
    if not names and not args.checkpoint:
        names = label_names_list((getattr(model, 'pretrained_cfg', None) or {}).get('label_names'),
                                 model.num_classes) or []  # an export's classes, in output order
    if names and len(names) > model.num_classes:
        raise CliError(f'{len(names)} class names for a model of {model.num_classes} outputs: set --num-classes '
                       f'{len(names)} (and a checkpoint trained with it)')
    return names or None


def create_eval_model(args: argparse.Namespace) -> torch.nn.Module:
    """The model, with its pretrained weights when no checkpoint is given (as timm does); see :func:`load_weights`."""
    if ':' not in args.model and not timm.is_model(args.model):
        raise CliError(f'--model {args.model!r} is unknown (see timm.list_models())')
    kwargs = dict(args.model_kwargs)
    for dest, key in (('num_classes', 'num_classes'), ('in_chans', 'in_chans'), ('num_members', 'num_members'),
                      ('gp', 'global_pool')):
        if getattr(args, dest) is not None:
            kwargs[key] = getattr(args, dest)
    if args.input_size is not None:
        kwargs['in_chans'] = args.input_size[0]
    pretrained = args.pretrained or not args.checkpoint
    if args.pretrained_path:
        kwargs['pretrained_cfg_overlay'] = dict(file=args.pretrained_path)
    elif pretrained and not args.checkpoint:
        cfg = timm.models.get_pretrained_cfg(args.model.split(':')[-1]) if ':' not in args.model else None
        if ':' not in args.model and (cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file)):
            raise CliError(f'no --checkpoint and {args.model!r} has no pretrained weights: give --checkpoint (a '
                           'run\'s model_best.pth.tar), otherwise random weights would be evaluated')
    try:
        with hub_errors_with_offline_hint(args.model) if args.model.startswith('hf-hub:') else contextlib.nullcontext():
            model = timm.create_model(args.model, pretrained=pretrained, **kwargs)
    except PretrainedDownloadError as exc:  # whole, with the command-line way out
        raise CliError(f'cannot create model {args.model!r}: {one_line(exc, None)}; on the command line: '
                       f'{exc.cli_way_out}') from None
    except (TypeError, RuntimeError, ValueError, OSError, AssertionError) as exc:
        raise CliError(f'cannot create model {args.model!r}: {one_line(exc, None)}') from None
    return model


def sharing_rate_columns(model: torch.nn.Module, model_name: str) -> Dict[str, float]:
    """``--sharing-rates``: ``encoder_sharing_rate`` (models with one encoder per member) and
    ``classifier_sharing_rate`` of :func:`timm_mimo.analysis.sharing_rates`, in [0, 1]."""
    if not is_mimo(model):
        raise CliError(f'--sharing-rates: {model_name!r} is not a MIMO model (no members whose features could be '
                       'shared); drop --sharing-rates or pick a timm_mimo model')
    try:
        return sharing_rates(model)
    except ValueError as exc:
        raise CliError(f'--sharing-rates on {model_name!r}: {one_line(exc)}') from None


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


def logged_batches(loader: DataLoader, log_freq: int) -> Iterator[Any]:
    """The loader's batches, printing ``Test: [i/N]`` every ``log_freq`` batches (timm's --log-freq)."""
    start = time.perf_counter()
    for index, batch in enumerate(loader):
        if index % log_freq == 0 or index + 1 == len(loader):
            print(f'Test: [{index + 1:>4d}/{len(loader)}]  {time.perf_counter() - start:.1f}s', flush=True)
        yield batch


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


def shared_images(first: Any, second: Any) -> Optional[int]:
    """How many images two opened splits have in common: folder readers compare their files, torchvision data sets
    their ``train`` flag and root; ``None`` when the readers cannot tell."""
    def files(dataset: Any) -> Optional[set]:
        samples = getattr(getattr(dataset, 'reader', None), 'samples', None)
        return {os.path.realpath(str(sample[0])) for sample in samples} if samples else None

    first_files, second_files = files(first), files(second)
    if first_files is not None and second_files is not None:
        return len(first_files & second_files)
    if type(first) is type(second) and isinstance(getattr(first, 'train', None), bool):
        same = first.train == second.train and os.path.realpath(str(getattr(first, 'root', ''))) == \
            os.path.realpath(str(getattr(second, 'root', '')))
        return len(first) if same else 0
    return None


def open_calibration_split(args: argparse.Namespace, dataset: Any, transform: Any) -> Any:
    """``--fit-temperature SPLIT``, opened like ``--split``; refused when it shares any image with ``--split``."""
    calibration_set = open_dataset(args.dataset, args.data_dir, args.fit_temperature, False, args.dataset_download,
                                   transform, args.class_map, **reader_kwargs(args))
    strict_images(calibration_set)
    # labelled through the run's classes, as the reported split is (a held-out split may lack a class)
    apply_class_names(calibration_set, dataset_class_names(dataset),
                      f'--fit-temperature split {args.fit_temperature!r}')
    common = shared_images(calibration_set, dataset)
    if common:
        raise CliError(f'--fit-temperature {args.fit_temperature!r} shares {common} images with --split '
                       f'{args.split!r}: the temperature must be fitted on held-out images (name a split with none of '
                       'the reported images)')
    return calibration_set


def fit_temperature_columns(args: argparse.Namespace, eval_model: torch.nn.Module, model: torch.nn.Module,
                            calibration_set: Any, data_config: Dict[str, Any], member_logits: torch.Tensor,
                            targets: torch.Tensor, device: torch.device,
                            autocast_dtype: Optional[torch.dtype]) -> Dict[str, Any]:
    """The temperature fitted on the held-out ``calibration_set`` (loaded as the reported split is;
    :func:`timm_mimo.calibration.fit_temperature`, not applied: the later evaluations use the model as given) and the
    reported split's NLL / ECE after it. A fit that ends at its search bound is reported on stderr."""
    loader = device_batches(DataLoader(calibration_set, batch_size=args.batch_size, shuffle=False,
                                       num_workers=args.workers, pin_memory=pin_memory(args, device),
                                       worker_init_fn=quiet_worker_signals),
                            args, data_config, device)
    print(f'Fitting the temperature on split {args.fit_temperature!r} ({len(calibration_set)} images)', flush=True)
    if not temperature_heads(model):
        raise CliError(f'--fit-temperature: {args.model!r} has no timm_mimo member heads to hold a temperature (a '
                       'plain timm model); temperature scaling is deployable on timm_mimo MIMO models')
    _, fit = fit_temperature(eval_model, logged_batches(loader, args.log_freq), device, autocast_dtype,
                             args.channels_last, apply=False)
    if fit['temperature_at_bound']:
        print(f"warning: the temperature fit on split {args.fit_temperature!r} ended at its search bound (T = "
              f"{fit['temperature']:.6g}): its NLL kept falling, which calibrated logits do not do; check the split's "
              'labels and the model (temperature_at_bound is true in the results)', file=sys.stderr, flush=True)
    columns = columns_after(fit, member_logits, targets)
    provenance = provenance_columns(args.checkpoint, fit['temperature_at_bound'], len(calibration_set))
    if provenance['temperature_flag']:
        print(f"warning: the temperature {columns['temperature']:g} is {provenance['temperature_flag']}; export "
              'refuses it', file=sys.stderr, flush=True)
    return OrderedDict(temperature=columns['temperature'], temperature_at_bound=columns['temperature_at_bound'],
                       temperature_split=args.fit_temperature, temperature_images=len(calibration_set),
                       loss_ts=columns['loss_ts'], ece_ts=columns['ece_ts'], **provenance)


def temperature_of(model: torch.nn.Module) -> Dict[str, Any]:
    """The ``temperature`` column of every row (the one the model applies: 1.0 for an uncalibrated or plain model, an
    ensemble of checkpoints included) and ``temperature_at_bound`` (an exported temperature that sits at the fit's
    search bound); ``--fit-temperature`` replaces both with its fit."""
    try:
        temperature = get_temperature(model) if temperature_heads(model) else 1.0
    except ValueError:  # networks of a deep ensemble holding different temperatures: each applies its own
        return OrderedDict(temperature='', temperature_at_bound=False)
    return OrderedDict(temperature=temperature, temperature_at_bound=at_search_bound(temperature))


def create_ensemble(paths: Sequence[str], use_ema: bool
                    ) -> Tuple[CheckpointEnsemble, Optional[List[str]], List[Tuple[int, int]]]:
    """The deep ensemble of ``--ensemble-checkpoints``: each network rebuilt from its run (see
    :func:`timm_mimo.evaluation.model_from_checkpoint`); ``use_ema`` takes every checkpoint's EMA weights.

    Returns the ensemble, the class names of its outputs (every run must have been trained on the same list) and the
    input size each network was trained at (its run's ``--img-size`` / ``--input-size``, else its model's)."""
    networks, names, sizes = [], [], []
    for path in paths:
        state = read_checkpoint(path, '--ensemble-checkpoints')
        try:
            with quiet_warnings():
                network = model_from_checkpoint(path)
        except ValueError as exc:
            raise CliError(f'--ensemble-checkpoints: {one_line(exc)}') from None
        except Exception as exc:  # a file that is not a checkpoint: name it
            raise CliError(f'--ensemble-checkpoints {path!r} cannot be read as a checkpoint ({type(exc).__name__}: '
                           f'{one_line(exc, 200)})') from None
        if use_ema:  # an error, not the plain weights, when it has no EMA
            load_weights(network, path, use_ema=True, state=state, flag='--ensemble-checkpoints')
        config = run_train_args(path, state)  # the args.yaml beside it, else the arguments it stores
        run_names = checkpoint_class_names(state) or config.get('class_names')
        if config.get('input_size'):
            size = config['input_size'][1:]
        elif config.get('img_size'):
            size = [config['img_size']] * 2
        else:
            size = network.pretrained_cfg['input_size'][1:]
        names.append([str(name) for name in run_names] if run_names else None)
        sizes.append(tuple(int(v) for v in size))
        networks.append(network)
    if len(set(sizes)) > 1:
        listed = ', '.join(f'{path!r}: {h}x{w} px' for path, (h, w) in zip(paths, sizes))
        raise CliError(f'--ensemble-checkpoints: the networks were trained at different input sizes ({listed}), and '
                       'one evaluation feeds them one size; ensemble networks trained at the same size')
    class_names = check_ensemble_names(names, paths)  # one class list, or none at all
    try:
        ensemble = CheckpointEnsemble(networks)
    except ValueError as exc:
        raise CliError(f'--ensemble-checkpoints: {one_line(exc)}') from None
    return ensemble, class_names, sizes


def check_ensemble_size(size: Tuple[int, int], input_size: Sequence[int]) -> None:
    """The networks of an ensemble (all trained at ``size``, :func:`create_ensemble`) are evaluated at that size."""
    height, width = size
    if (height, width) != tuple(input_size[1:]):
        raise CliError(f'--ensemble-checkpoints: the networks were trained at {height}x{width} px but the data config '
                       f'gives {input_size[1]}x{input_size[2]}: set --img-size {height} (or --config with a run\'s '
                       'args.yaml)')


def check_ensemble_input(ensemble: CheckpointEnsemble, in_chans: int) -> None:
    """The networks must take the data's channel count (the data flags come from the command line or --config)."""
    channels = sorted({network.in_chans for network in ensemble.networks if hasattr(network, 'in_chans')})
    if len(channels) > 1:
        raise CliError(f'--ensemble-checkpoints: the networks take different input channels {channels}')
    if channels and channels[0] != in_chans:
        raise CliError(f'--ensemble-checkpoints: the networks take {channels[0]} input channels but the data config '
                       f'gives {in_chans}: set --in-chans {channels[0]} (or --config with a run\'s args.yaml)')


def check_cifar_c_order(root: str, release: CorruptionRelease, names: Optional[List[Optional[str]]]) -> None:
    """CIFAR-*-C labels (``labels.npy``) are torchvision's CIFAR class indices, whose class names are sorted: the
    run's class list must be in that order (torchvision's names, an image folder of the class names, or of the
    indices '0'..'K-1'), else its labels would silently be other classes."""
    if release.layout != 'cifar' or not names:
        return
    known = [str(name) for name in names if name is not None]
    if known == sorted(known) or known == [str(index) for index in range(len(known))]:
        return
    raise ValueError(f'{root!r} is labelled by torchvision\'s CIFAR class indices (sorted class names), but the run\'s '
                     f'classes are in another order ({", ".join(known[:4])}, ...): evaluate a model trained on '
                     'torch/cifar10 / torch/cifar100, or on an image folder whose folders are the class names')


def open_release(root: str, dataset: Any, num_classes: int) -> CorruptionRelease:
    """The release of ``--corruption-dir``, its class folders (Tiny-ImageNet-C's wnids) mapped to the indices the clean
    split is evaluated with (the run's class names when it recorded them); its labels must fit the model."""
    names = dataset_class_names(dataset)
    class_to_idx = {name: index for index, name in enumerate(names) if name is not None} if names else None
    release = CorruptionRelease(root, class_to_idx=class_to_idx)
    check_cifar_c_order(root, release, names)
    if release.layout == 'cifar':  # labels.npy indexes its data set's classes: scored by name, like the wnids
        labels = release.labels()
        where = f'--corruption-dir {os.path.join(root, "labels.npy")!r}'
        release.relabel(release_label_map(labels, release_class_names(int(labels.max(initial=0)) + 1, names), names,
                                          num_classes, where))
    largest = release.max_label()
    if largest >= num_classes:
        raise ValueError(f'{root!r} has class index {largest} but the model has {num_classes} outputs (a '
                         f'{release.name} of another data set?)')
    return release


def check_corruptible(dataset: Any) -> None:
    """Refuse, before the evaluation, a split whose images the corruptions cannot take (too small, not PIL)."""
    image = dataset[0][0]
    size = getattr(image, 'size', None)
    found = f'{size[0]}x{size[1]} px' if isinstance(size, tuple) else f'a {type(image).__name__}, not a PIL image'
    if not isinstance(size, tuple) or min(size) < MIN_CORRUPTION_SIZE:
        raise CliError(f'--corruptions needs images of at least {MIN_CORRUPTION_SIZE} px per side; the split\'s first '
                       f'image is {found} (use a data set of larger images)')


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


def _print_results(results: Dict[str, Any]) -> None:
    for key, value in results.items():
        print(f'{key:>14s}: {value}')


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point: prints the metrics, then timm's ``--result`` block (the results as JSON) on stdout; bad input ends
    with one line on stderr and exit status 2, SIGINT / SIGTERM with one line and status 130 / 143 (no results file
    written). Bulk mode (:func:`bulk_models`, a ``--checkpoint`` folder: :func:`checkpoint_runs`) validates every
    model, one row each, sorted by top1; a failing model is reported and skipped, the others written, and the exit
    status is 1."""
    argv, debug = split_debug(argv)
    failed: List[Tuple[str, str]] = []
    with SignalGuard():
        try:
            args = parse_args(argv)
            if args.dry_run:
                return validate_dry_run(args, sys.modules[__name__])
            runs = [(name, '') for name in bulk_models(args)] or [(args.model, path) for path in checkpoint_runs(args)]
            if not runs:
                results: Any = rounded_results(validate(args))
                _print_results(results)
            else:
                results, failed = validate_each(args, runs)
                for row in results:
                    print(f"{row['model']:>40s}  {os.path.basename(row['checkpoint'] or '')}  top1 {row['top1']}  "
                          f"top5 {row['top5']}  loss {row['loss']}  ece {row['ece']}  T {row['temperature']}")
                if failed:
                    print(f"error: {len(failed)} of {len(runs)} failed: {', '.join(label for label, _ in failed)}"
                          + ('; the others are in ' + args.results_file if args.results_file and results else ''),
                          file=sys.stderr)
            if args.results_file and (results or not failed):
                try:
                    write_results(args.results_file, results, args.results_format)
                except OSError as exc:
                    raise CliError(write_error(args.results_file, exc)) from None
            print(f'--result\n{json.dumps(results, indent=4)}', flush=True)  # timm's block for runner scripts
        except (CliError, DataError) as exc:
            print(f'error: {exc}', file=sys.stderr)
            return 2
        except (KeyboardInterrupt, Interrupted) as exc:
            name = exc.name if isinstance(exc, Interrupted) else 'SIGINT'
            print(f'error: interrupted ({name}); no results file was written', file=sys.stderr)
            return exc.exit_code if isinstance(exc, Interrupted) else 130
        except Exception as exc:  # noqa: BLE001 - the one line of anything else (timm_mimo.cli.errors)
            return report_unexpected(exc, debug)
        finally:
            release_run_folders()
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
