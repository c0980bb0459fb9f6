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
import importlib
import importlib.util
import json
import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

from timm.data.readers.img_extensions import get_img_extensions

import timm_mimo  # noqa: F401  (registers the MIMO models)
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
    existing_file,
    one_line,
    parse_with_config,
)
from timm_mimo.cli.bulk import bulk_models, checkpoint_runs, validate_each
from timm_mimo.cli.checkpoint import read_weights_file
from timm_mimo.cli.dry_run import validate_dry_run
from timm_mimo.cli.errors import report_unexpected, split_debug
from timm_mimo.cli.run_folder import Interrupted, SignalGuard, check_outputs_are_not_inputs, write_error
from timm_mimo.cli.validation import rounded_results, validate, write_results
from timm_mimo.data import DataError
from timm_mimo.evaluation import SEVERITIES, CorruptionRelease, known_corruptions
from timm_mimo.labels import check_unique_names
from timm_mimo.outputs import release_run_folders
from timm_mimo.recipes import config_path

__all__ = ['build_parser', 'parse_args', 'validate', 'main']


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
                return validate_dry_run(args)
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
