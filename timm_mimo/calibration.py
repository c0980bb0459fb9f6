"""Deployable temperature scaling of MIMO ensembles (Guo et al., "On calibration of modern neural networks", ICML 2017).

One temperature T is fitted on held-out data by minimising the NLL of the ENSEMBLE's softmax ``softmax(mean_m z_m / T)``
(:func:`timm_mimo.metrics.fit_temperature`), and lives in the model: in eval mode every member head divides its logits
by it (the ``temperature`` buffer of :class:`~timm_mimo.models.MemberHeads`; train mode reads the raw logits), so member
logits become ``z_m / T`` and the ensemble ``mean_m z_m / T``, the distribution the fit calibrated. It travels with
the weights (state dict, safetensors, ``local-dir:`` / ``hf-hub:``) and :func:`timm_mimo.hub.save_pretrained` records
it in ``config.json`` and the card.

In Python, one call fits it on a held-out loader and sets it::

    model, fit = timm_mimo.calibration.fit_temperature(model, validation_loader)
    fit['temperature'], fit['loss'], fit['loss_ts']   # T, the loader's NLL before / after

On the command line::

    timm-mimo-validate --config run/args.yaml --checkpoint run/last.pth.tar --split test \\
        --fit-temperature validation --results-file results.json      # temperature, loss / ece before and after
    python -m timm_mimo export --checkpoint run/last.pth.tar --results results.json --out folder   # applies it
"""
import math
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn as nn

from timm_mimo.metrics import collect_member_logits, expected_calibration_error, nll
from timm_mimo.metrics import fit_temperature as fit_logit_temperature

__all__ = ['temperature_heads', 'get_temperature', 'set_temperature', 'temperature_columns', 'fit_temperature',
           'fit_logits', 'at_search_bound', 'SEARCH_BOUNDS']

# the interval :func:`timm_mimo.metrics.fit_temperature` searches T in; a fit ending at either end did not converge
SEARCH_BOUNDS = (1e-3, 1e3)


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


def at_search_bound(factor: float, rel_tol: float = 1e-3) -> bool:
    """True when a fitted factor sits at an end of :data:`SEARCH_BOUNDS` (e.g. 999.9997): the NLL kept falling
    there, so the "optimum" is the bound, not a calibration (logits that rank every image wrongly, or a broken
    model)."""
    return any(math.isclose(factor, bound, rel_tol=rel_tol) for bound in SEARCH_BOUNDS)


def fit_logits(member_logits: torch.Tensor, targets: torch.Tensor,
               current_temperature: float = 1.0) -> Dict[str, Any]:
    """Fit the ensemble's temperature on held-out member logits ``(N, M, K)`` (already divided by
    ``current_temperature``, as a calibrated model gives them).

    Returns:
        ``temperature`` (the model's new temperature, ``current_temperature`` times the fitted factor),
        ``previous_temperature`` (``current_temperature``), ``temperature_at_bound`` (:func:`at_search_bound` of
        the factor), and the held-out data's ``loss`` / ``ece`` before and ``loss_ts`` / ``ece_ts`` after.
    """
    targets = targets.long()
    logits = member_logits.double().mean(dim=1)
    factor = fit_logit_temperature(logits, targets)
    scaled = logits / factor
    return dict(temperature=current_temperature * factor, previous_temperature=current_temperature,
                temperature_at_bound=at_search_bound(factor), loss=nll(logits, targets), loss_ts=nll(scaled, targets),
                ece=expected_calibration_error(logits.softmax(dim=-1), targets),
                ece_ts=expected_calibration_error(scaled.softmax(dim=-1), targets))


def fit_temperature(model: nn.Module, loader: Iterable[Tuple[torch.Tensor, torch.Tensor]],
                    device: Optional[torch.device] = None, autocast_dtype: Optional[torch.dtype] = None,
                    channels_last: bool = False, apply: bool = True) -> Tuple[nn.Module, Dict[str, Any]]:
    """Fit the temperature of a timm_mimo model on a held-out loader and set it: one call.

    Args:
        model: A timm_mimo MIMO model (its member heads hold the temperature); may already be calibrated.
        loader: Held-out ``(images, targets)`` batches, preprocessed as for evaluation (never the reported split).
        device: Where to run (default: the model's device).
        autocast_dtype: Autocast dtype of the forward passes (``None``: full precision).
        channels_last: Feed channels_last inputs.
        apply: Set the fitted temperature on ``model`` (``False``: only report it).

    Returns:
        ``(model, fit)``: the model (with the temperature set when ``apply``) and :func:`fit_logits`'s dict plus
        ``temperature_images`` (the loader's image count).
    """
    heads = _heads_or_error(model)
    if device is None:
        device = heads[0].temperature.device
    current = get_temperature(model)
    logits, targets = collect_member_logits(model, loader, torch.device(device), autocast_dtype, channels_last)
    if not len(targets):
        raise ValueError('the loader gave no images to fit the temperature on')
    fit = fit_logits(logits, targets, current)
    fit['temperature_images'] = len(targets)
    if apply:
        set_temperature(model, fit['temperature'])
    return model, fit


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
    fit = fit_logits(calibration_logits, calibration_targets, current_temperature)
    return columns_after(fit, member_logits, targets)


def columns_after(fit: Dict[str, Any], member_logits: torch.Tensor, targets: torch.Tensor) -> Dict[str, Any]:
    """The reported split's NLL / ECE with a fit's temperature (``member_logits`` as the model gave them, divided by
    the temperature it held during the fit): ``temperature``, ``temperature_at_bound``, ``loss_ts``, ``ece_ts``."""
    factor = fit['temperature'] / fit['previous_temperature']
    logits = member_logits.double().mean(dim=1) / factor
    return dict(temperature=fit['temperature'], temperature_at_bound=fit['temperature_at_bound'],
                loss_ts=nll(logits, targets.long()),
                ece_ts=expected_calibration_error(logits.softmax(dim=-1), targets.long()))
