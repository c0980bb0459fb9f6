"""The one contract every MIMO model obeys.

``model(x)`` with ``x: (B, C, H, W)`` returns the ``(B, K)`` ensemble logits (mean over members, the MixMo protocol,
arXiv:2103.06132 Sec. 3), ``model.forward_members(x)`` returns ``(B, M, K)``, and ``model(xs, plan)`` with
``xs: (B, M, C, H, W)`` and a :class:`~timm_mimo.mixing.MixPlan` returns ``(B, M, K)``. A model class mixes in
:class:`MimoContract` and implements ``forward_members`` and ``forward_mixed``; the checks on shapes live here, once.
"""
import numbers
import warnings
from typing import Any, Optional, Tuple

import torch

from timm_mimo.mixing import MixPlan

__all__ = ['MimoContract', 'check_image_batch', 'check_multi_input', 'check_num_members', 'refuse_features_only']


def check_num_members(num_members: Any) -> int:
    """The member count M as an int; anything but a positive integer (``True``, ``2.5``, ``0``) is a ValueError."""
    if isinstance(num_members, bool) or not isinstance(num_members, numbers.Integral) or num_members < 1:
        raise ValueError(f'num_members (M) must be a positive integer, got {num_members!r} '
                         f'({type(num_members).__name__}); e.g. num_members=2')
    return int(num_members)


def refuse_features_only(variant: str, kwargs: dict, features: str, use: str) -> None:
    """timm's ``features_only=True`` wraps a single-input network; a MIMO model refuses it with the way out.

    Args:
        variant: The model name being built.
        kwargs: Its ``create_model`` kwargs.
        features: What the model's features are, for the message.
        use: The API that gives them instead.
    """
    if kwargs.get('features_only', False):
        raise RuntimeError(f'{variant}: features_only is not supported by MIMO models ({features}); use {use}')


def check_image_batch(x: torch.Tensor) -> None:
    """Refuse anything but a ``(B, C, H, W)`` image batch."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(
            f'expected an image batch of shape (B, C, H, W), got {shape}; '
            'multi-input batches of shape (B, M, C, H, W) need a MixPlan: model(xs, plan)')


def check_multi_input(xs: torch.Tensor, plan: MixPlan, num_members: int, grid: Tuple[int, int]) -> None:
    """Refuse a multi-input batch or plan that does not match the model.

    Args:
        xs: Inputs, expected ``(B, M, C, H, W)``.
        plan: The mixing plan for this batch.
        num_members: The model's M.
        grid: The spatial grid the model mixes on for this input size (``model.mix_grid``).
    """
    if not isinstance(plan, MixPlan):
        raise ValueError(f'expected a MixPlan as second argument, got {type(plan).__name__}')
    if not isinstance(xs, torch.Tensor) or xs.ndim != 5:
        shape = tuple(xs.shape) if isinstance(xs, torch.Tensor) else type(xs).__name__
        raise ValueError(f'expected multi-input batch of shape (B, M={num_members}, C, H, W), got {shape}')
    if xs.shape[1] != num_members:
        raise ValueError(
            f'expected multi-input batch of shape (B, M={num_members}, C, H, W), got {tuple(xs.shape)} '
            f'({xs.shape[1]} members for a {num_members}-member model)')
    plan.check(batch_size=xs.shape[0], num_members=num_members, grid=grid)


def single_input_training_message(model_name: str) -> str:
    """What a plain image batch in train mode does, and the command that does MIMO training instead."""
    return (f'{model_name}: a plain (B, C, H, W) batch in train mode feeds the same image to every member, which '
            'fine-tunes the ensemble as one single-input network; it is not MIMO training. For MIMO training '
            '((B, M, C, H, W) inputs mixed by a timm_mimo.Mixer plan, model(xs, plan)) run timm_mimo\'s trainer: '
            f'timm-mimo-train --model {model_name} ...')


class MimoContract:
    """Mixin giving a MIMO model the call contract above and its input checks.

    Subclasses set ``num_members`` / ``num_classes`` and implement ``mix_grid``, ``forward_features``,
    ``forward_head``, ``forward_members`` and ``forward_mixed``.
    """
    num_members: int
    num_classes: int

    def mix_grid(self, img_size: Tuple[int, int]) -> Tuple[int, int]:
        """The spatial grid (H, W) on which mixing masks live for inputs of ``img_size``."""
        raise NotImplementedError

    def forward_members(self, x: torch.Tensor) -> torch.Tensor:
        """Every member's logits on the same image batch: ``(B, C, H, W)`` -> ``(B, M, K)``."""
        raise NotImplementedError

    def forward_mixed(self, xs: torch.Tensor, plan: MixPlan) -> torch.Tensor:
        """Training forward on checked inputs: ``(B, M, C, H, W)`` mixed as ``plan`` says -> ``(B, M, K)``."""
        raise NotImplementedError

    def _warn_single_input_training(self) -> None:
        """Warn once per model instance that a plain batch in train mode is not MIMO training.

        Decision: once per instance (not per process), so each model a script trains this way says it once.
        """
        if self.__dict__.get('_warned_single_input', False) or torch.jit.is_tracing() or torch.jit.is_scripting():
            return
        self.__dict__['_warned_single_input'] = True
        name = (getattr(self, 'pretrained_cfg', None) or {}).get('architecture') or type(self).__name__
        # stacklevel: this method, forward, nn.Module._call_impl, _wrapped_call_impl -> the caller's model(x) line
        warnings.warn(single_input_training_message(name), UserWarning, stacklevel=5)

    def forward(self, x: torch.Tensor, plan: Optional[MixPlan] = None) -> torch.Tensor:
        """``model(x)`` -> ``(B, K)`` ensemble logits; ``model(xs, plan)`` -> ``(B, M, K)`` member logits.

        With ``num_classes=0`` (timm's ``reset_classifier(0)``), ``model(x)`` is ``forward_head(..., pre_logits=True)``.
        """
        if plan is None:
            check_image_batch(x)
            if getattr(self, 'training', False):
                self._warn_single_input_training()
            if self.num_classes == 0:
                return self.forward_head(self.forward_features(x), pre_logits=True)
            return self.forward_members(x).mean(dim=1)
        check_multi_input(x, plan, self.num_members, self.mix_grid(tuple(x.shape[-2:])))
        return self.forward_mixed(x, plan)
