"""The evaluation columns of timm-mimo-train and timm-mimo-validate, in one place.

Both scripts collect member logits ``(N, M, K)`` once and pass them through :data:`METRIC_GROUPS`; a new group of
columns is one function appended there (``fn(member_logits, targets) -> {column: value}``).
"""
from collections import OrderedDict
from typing import Callable, Dict, List

import torch

from timm_mimo.metrics import ensemble_metrics

__all__ = ['METRIC_GROUPS', 'metric_columns', 'format_metrics', 'DECREASING_METRICS']

MetricGroup = Callable[[torch.Tensor, torch.Tensor], Dict[str, float]]

# timm's top1 / top5 / loss, calibrated NLL, ECE, member accuracies and diversity
METRIC_GROUPS: List[MetricGroup] = [ensemble_metrics]

# columns where lower is better (--eval-metric picks model_best with it)
DECREASING_METRICS = ('loss', 'nll_c', 'ece', 'nll_prob', 'brier', 'aurc')


def metric_columns(member_logits: torch.Tensor, targets: torch.Tensor,
                   groups: List[MetricGroup] = METRIC_GROUPS) -> Dict[str, float]:
    """Every group's columns on the same member logits and targets."""
    columns: Dict[str, float] = OrderedDict()
    for group in groups:
        columns.update(group(member_logits, targets))
    return columns


def format_metrics(metrics: Dict[str, float]) -> str:
    """One human line: ensemble and member accuracy, NLL, NLL_c, ECE and diversity where present."""
    parts = [f"top1 {metrics['top1']:.2f}", f"top5 {metrics['top5']:.2f}"]
    if 'member_top1' in metrics:
        members = ' / '.join(f'{v:.2f}' for k, v in metrics.items() if k.startswith('top1_m'))
        parts.append(f'members {members}')
    parts += [f"NLL {metrics['loss']:.4f}", f"NLL_c {metrics['nll_c']:.4f}", f"ECE {metrics['ece']:.2f}%"]
    if 'd_re' in metrics:
        parts += [f"d_re {metrics['d_re']:.3f}", f"disagreement {metrics['disagreement']:.3f}"]
    return '  '.join(parts)
