"""Deployable temperature scaling of MIMO ensembles (Guo et al., "On calibration of modern neural networks", ICML 2017).

One temperature T is fitted on held-out data by minimising the NLL of the ENSEMBLE's softmax ``softmax(mean_m z_m / T)``
(:func:`timm_mimo.metrics.fit_temperature`), and lives in the model: in eval mode every member head divides its logits
by it (the ``temperature`` buffer of :class:`~timm_mimo.models.MemberHeads`; train mode reads the raw logits), so member
logits become ``z_m / T`` and the ensemble ``mean_m z_m / T``, the distribution the fit calibrated. It travels with
the weights (state dict, safetensors, ``local-dir:`` / ``hf-hub:``) and :func:`timm_mimo.hub.save_pretrained` records
it in ``config.json`` and the card.

    timm-mimo-validate --config run/args.yaml --checkpoint run/last.pth.tar --split test \\
        --fit-temperature validation --results-file results.json      # temperature, loss / ece before and after
    python -m timm_mimo export --checkpoint run/last.pth.tar --results results.json --out folder   # applies it
"""
import math
from typing import Dict, List

import torch
import torch.nn as nn

from timm_mimo.metrics import expected_calibration_error, fit_temperature, nll

__all__ = ['temperature_heads', 'get_temperature', 'set_temperature', 'temperature_columns']


def temperature_heads(model: nn.Module) -> List[nn.Module]:
    """The modules of ``model`` that hold a temperature (its :class:`~timm_mimo.models.MemberHeads`)."""
    from timm_mimo.models import MemberHeads
    return [module for module in model.modules()
            if isinstance(module, MemberHeads) and isinstance(getattr(module, 'temperature', None), torch.Tensor)]


def _heads_or_error(model: nn.Module) -> List[nn.Module]:
    heads = temperature_heads(model)
    if not heads:
        raise ValueError(f'{type(model).__name__} has no timm_mimo member heads to hold a temperature (a plain timm '
                         'model, or num_classes=0); temperature scaling is deployable on timm_mimo MIMO models')
    return heads


def get_temperature(model: nn.Module) -> float:
    """The temperature the model's heads divide their logits by (1.0: uncalibrated)."""
    values = {float(head.temperature) for head in _heads_or_error(model)}
    if len(values) != 1:
        raise ValueError(f'the heads of {type(model).__name__} hold different temperatures {sorted(values)}; '
                         'set one with timm_mimo.calibration.set_temperature')
    return values.pop()


def set_temperature(model: nn.Module, temperature: float) -> nn.Module:
    """Make every head of ``model`` divide its logits by ``temperature`` (a finite number > 0); returns ``model``."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature) \
            or temperature <= 0:
        raise ValueError(f'a temperature must be a finite number > 0, got {temperature!r}')
    with torch.no_grad():
        for head in _heads_or_error(model):
            head.temperature.fill_(float(temperature))
    return model


def temperature_columns(calibration_logits: torch.Tensor, calibration_targets: torch.Tensor,
                        member_logits: torch.Tensor, targets: torch.Tensor,
                        current_temperature: float = 1.0) -> Dict[str, float]:
    """Fit a temperature on held-out logits and report the evaluated split before / after it.

    Args:
        calibration_logits: ``(N_cal, M, K)`` member logits of the held-out (calibration) split.
        calibration_targets: ``(N_cal,)``.
        member_logits: ``(N, M, K)`` member logits of the reported split (never used for the fit).
        targets: ``(N,)``.
        current_temperature: The temperature the model already applied to these logits (a calibrated model is
            re-fitted relative to it).

    Returns:
        ``temperature`` (the model's new temperature: ``current_temperature`` times the fitted factor),
        ``loss_ts`` / ``ece_ts`` (NLL and ECE % of the ensemble on the reported split after scaling; the
        ``loss`` / ``ece`` columns are before).
    """
    factor = fit_temperature(calibration_logits.double().mean(dim=1), calibration_targets.long())
    logits = member_logits.double().mean(dim=1) / factor
    return dict(temperature=current_temperature * factor, loss_ts=nll(logits, targets.long()),
                ece_ts=expected_calibration_error(logits.softmax(dim=-1), targets.long()))
