"""Reading training checkpoints safely: timm_mimo's own and those written by timm's ``train.py``.

timm's ``train.py`` (its ``CheckpointSaver``) stores the run's ``argparse.Namespace`` under ``args`` next to ``epoch``,
``arch``, ``state_dict`` (and ``state_dict_ema``, ``optimizer``, ``metric``, ``saver``). ``torch.load(...,
weights_only=True)`` refuses that one class, so every timm_mimo command reads checkpoints inside
:func:`allow_train_args`, which allow-lists exactly ``argparse.Namespace`` (a plain attribute container: unpickling
it sets attributes and runs no code) and nothing else.
"""
import argparse
import contextlib
import os
from typing import Any, Dict, Iterator, Optional

import torch
import yaml

__all__ = ['SAFE_CHECKPOINT_GLOBALS', 'allow_train_args', 'load_checkpoint_file', 'checkpoint_train_args',
           'run_train_args', 'unpickling_reason']

SAFE_CHECKPOINT_GLOBALS = (argparse.Namespace,)  # what a timm train.py checkpoint holds besides tensors and builtins


@contextlib.contextmanager
def allow_train_args() -> Iterator[None]:
    """``torch.load(..., weights_only=True)`` (also inside ``timm.models.load_checkpoint``) accepts the
    ``argparse.Namespace`` of timm's train.py checkpoints while this context is open."""
    with torch.serialization.safe_globals(list(SAFE_CHECKPOINT_GLOBALS)):
        yield


def load_checkpoint_file(path: str) -> Any:
    """``torch.load(path, map_location='cpu', weights_only=True)`` that also reads timm train.py checkpoints."""
    with allow_train_args():
        return torch.load(path, map_location='cpu', weights_only=True)


def unpickling_reason(exc: BaseException) -> str:
    """The sentence of torch's ``weights_only`` refusal that names what was refused (its message is many lines)."""
    text = ' '.join(str(exc).replace('\x1b[1m', '').replace('\x1b[0m', '').split())
    marker = 'WeightsUnpickler error:'
    if marker in text:
        text = text.split(marker, 1)[1].strip()
    end = text.find('. ')
    return text if end < 0 else text[:end + 1]


def checkpoint_train_args(state: Any) -> Dict[str, Any]:
    """The run arguments stored in a loaded checkpoint as a dict (timm's ``Namespace`` or timm_mimo's dict); ``{}``
    when there are none."""
    args = state.get('args') if isinstance(state, dict) else None
    if isinstance(args, argparse.Namespace):
        return dict(vars(args))
    return dict(args) if isinstance(args, dict) else {}


def run_train_args(checkpoint: str, state: Optional[Any] = None) -> Dict[str, Any]:
    """The training arguments of a checkpoint's run: the ``args.yaml`` beside it (timm's and timm_mimo's train.py
    both write one), else the arguments stored in the checkpoint (``state``, loaded when not given)."""
    path = os.path.join(os.path.dirname(os.path.abspath(checkpoint)), 'args.yaml')
    if os.path.isfile(path):
        try:
            with open(path) as f:
                config = yaml.safe_load(f)
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise ValueError(f'the run arguments {path!r} beside checkpoint {checkpoint!r} cannot be read: '
                             f'{" ".join(str(exc).split())}') from None
        if isinstance(config, dict):
            return config
    if state is None:
        state = load_checkpoint_file(checkpoint)
    return checkpoint_train_args(state)
