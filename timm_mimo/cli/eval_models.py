"""The model an evaluation scores: built with its pretrained or checkpoint weights (shapes and classes checked), a
deep ensemble of training runs (``--ensemble-checkpoints``), and the columns the model itself gives (the temperature
it applies, ``--sharing-rates``).
"""
import argparse
import contextlib
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Tuple

import timm
import torch
from timm.models import clean_state_dict

import timm_mimo  # noqa: F401  (registers the MIMO models)
from timm_mimo.analysis import sharing_rates
from timm_mimo.calibration import at_search_bound, get_temperature, temperature_heads
from timm_mimo.checkpoint import run_train_args
from timm_mimo.cli.args import CliError, one_line, quiet_warnings
from timm_mimo.cli.checkpoint import checkpoint_class_names, checkpoint_weights, read_checkpoint
from timm_mimo.evaluation import CheckpointEnsemble, model_from_checkpoint
from timm_mimo.labels import check_ensemble_names, label_names_list
from timm_mimo.metrics import is_mimo
from timm_mimo.pretrained import PretrainedDownloadError, hub_errors_with_offline_hint

__all__ = ['load_weights', 'shape_mismatch', 'eval_class_names', 'create_eval_model', 'sharing_rate_columns',
           'temperature_of', 'create_ensemble', 'check_ensemble_size', 'check_ensemble_input']


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
