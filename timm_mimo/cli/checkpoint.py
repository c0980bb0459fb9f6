"""Reading a checkpoint in every console script: tensors only, one-line errors, and what the checkpoint says it is.

A ``train.py`` checkpoint records the model it holds (``arch`` and, under ``args``, the run's flags: ``model_kwargs``,
``num_members`` ...) and the run's ``class_names``. Evaluating or resuming it as another kind of model (a Cut-MixMo
checkpoint as ``linear_mixmo``: same tensors, another method) is refused here rather than loaded without a word.
"""
import pickle
from typing import Any, Dict, List, Optional

import torch

from timm_mimo.checkpoint import checkpoint_train_args, load_checkpoint_file, unpickling_reason
from timm_mimo.cli.args import CliError, existing_file, one_line, quiet_warnings

__all__ = ['read_checkpoint', 'read_weights_file', 'checkpoint_weights', 'checkpoint_class_names',
           'check_checkpoint_model', 'EVALUATION_KWARGS']

# constructor arguments that only choose how a trained model is evaluated (not what it is)
EVALUATION_KWARGS = ('inference', 'single_member', 'alternating_seed')


def read_checkpoint(path: str, flag: str = '--checkpoint') -> Any:
    """The checkpoint at ``path`` loaded with ``weights_only=True``; a missing, empty, unreadable or pickled-object
    file is a one-line :class:`CliError` naming ``flag`` and the file."""
    existing_file(path, flag)
    try:
        with quiet_warnings():
            return load_checkpoint_file(path)  # timm's train.py checkpoints: their argparse.Namespace is allowed
    except pickle.UnpicklingError as exc:
        raise CliError(f'{flag} {path!r} holds objects other than tensors and plain values '
                       f'(torch.load(weights_only=True) refused to unpickle it: {unpickling_reason(exc)})') from None
    except Exception as exc:  # any failure to read the file is the file's fault: say which file
        raise CliError(f'{flag} {path!r} cannot be read as a checkpoint ({type(exc).__name__}: '
                       f'{one_line(exc, 200)})') from None


def read_weights_file(path: str, flag: str = '--pretrained-path') -> Dict[str, Any]:
    """The state dict of a weights file as timm reads ``pretrained_cfg['file']`` (torch or safetensors,
    ``weights_only``), read before timm is handed the file: a text file, a truncated or pickled-object file is a
    one-line :class:`CliError` naming ``flag`` (timm's own reader would raise a bare ``KeyError`` / unpickling error
    from deep inside the model's constructor)."""
    import timm
    existing_file(path, flag)
    try:
        with quiet_warnings():
            return timm.models.load_state_dict(path, weights_only=True)
    except Exception as exc:  # any failure to read the file is the file's fault: say which file
        raise CliError(f'{flag} {path!r} cannot be read as a weights file (torch or safetensors; '
                       f'{type(exc).__name__}: {one_line(exc, 200)}); give a checkpoint of the model\'s weights') \
            from None


def checkpoint_weights(state: Any, path: str, use_ema: bool = False, flag: str = '--checkpoint'
                       ) -> Dict[str, torch.Tensor]:
    """The state dict to load: ``state_dict`` (or ``model``, or a bare state dict), or with ``use_ema`` the EMA
    weights, refused (never replaced by the plain weights) when the file has none."""
    if isinstance(state, dict) and use_ema:
        weights = state.get('state_dict_ema', state.get('model_ema'))
        if weights is None:
            raise CliError(f'--use-ema: {flag} {path!r} has no EMA weights (no state_dict_ema); drop --use-ema to use '
                           'its plain weights')
    elif isinstance(state, dict):
        weights = state.get('state_dict', state.get('model', state))
    elif use_ema:
        raise CliError(f'--use-ema: {flag} {path!r} is a bare state dict without EMA weights; drop --use-ema')
    else:
        weights = state
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise CliError(f'{flag} {path!r} holds no state dict of tensors')
    return {key.removeprefix('module.'): value for key, value in weights.items()}


def checkpoint_class_names(state: Any) -> Optional[List[str]]:
    """The class names a ``train.py`` checkpoint recorded (``class_names``), ``None`` for older files."""
    names = state.get('class_names') if isinstance(state, dict) else None
    return [str(name) for name in names] if isinstance(names, (list, tuple)) else None


def _base_name(name: str) -> str:
    """A registered model name without its pretrained tag (``resnet50.a1_in1k`` -> ``resnet50``)."""
    return name.split('.')[0]


def check_checkpoint_model(state: Any, path: str, model_name: Optional[str], model_kwargs: Dict[str, Any],
                           flag: str = '--checkpoint') -> None:
    """Refuse to use a checkpoint as another kind of model than the one it records.

    The checkpoint's ``arch`` must be ``model_name``, and the constructor arguments its run recorded
    (``args.model_kwargs``) must not be contradicted by ``model_kwargs``, except those that only choose the
    evaluation (:data:`EVALUATION_KWARGS`). Checkpoints that record nothing pass.
    """
    if not isinstance(state, dict):
        return
    arch = state.get('arch')
    if isinstance(arch, str) and arch and model_name and ':' not in model_name and \
            _base_name(arch) != _base_name(model_name):  # (a hf-hub: / local-dir: name says nothing to compare)
        raise CliError(f'{flag} {path!r} holds a {arch!r} model (its arch), not --model {model_name!r}: loading it '
                       f'would use its weights as another kind of model; give --model {arch} (or --config with the '
                       f"run's args.yaml)")
    recorded_kwargs = checkpoint_train_args(state).get('model_kwargs')  # timm_mimo's dict or timm's Namespace
    if not isinstance(recorded_kwargs, dict):
        return
    for key, value in (model_kwargs or {}).items():
        if key in recorded_kwargs and key not in EVALUATION_KWARGS and recorded_kwargs[key] != value:
            raise CliError(f'{flag} {path!r} was trained with --model-kwargs {key}={recorded_kwargs[key]!r}, not '
                           f"{key}={value!r}: give the run's value (or --config with the run's args.yaml)")
