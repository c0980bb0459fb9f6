"""The MIMO training loss: member cross-entropies weighted by the mixing ratios (thesis (HAL tel-03952815)
Sec. 3.3.2.2; MixViT eq. 4.4)."""
import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['mixing_loss_weights', 'MimoLoss']


def mixing_loss_weights(kappas: torch.Tensor, root: float = 3.0, weight_sum: Optional[float] = None,
                        check: bool = True) -> torch.Tensor:
    """The loss weight of every member from its mixing ratio (thesis eq. 3.3 and A.1).

    ``w_r(κ_m) = M · κ_m^{1/r} / Σ_j κ_j^{1/r}``; for M = 2 this is ``2 κ^{1/r} / (κ^{1/r} + (1-κ)^{1/r})``.
    ``root=1`` gives ``M κ`` (linear label weighting), ``root=inf`` gives 1 for every member (no reweighting).

    Args:
        kappas: ``(B, M)`` mixing ratios, non-negative, summing to 1 over members.
        root: r (MixMo: 3, MixShare / MixViT: 1).
        weight_sum: What the weights of one sample add up to; ``None`` means M (MixMo). MixViT's eq. 4.4
            (``λ CE_0 + (1 - λ) CE_1``) is ``root=1, weight_sum=1``. MixMo with M > 2 inputs of which two are mixed
            per sample (MixViT paper Fig. 7) uses 2, the M = 2 scale (Decision, docs/decisions.md: read literally,
            the two mixed inputs would share M, an M / 2 larger data term against the same L2).
        check: Check the values (non-negative, a positive ratio per sample): reads the tensor back to the host.
            :class:`MimoLoss` does not: its ratios come from a :class:`~timm_mimo.mixing.MixPlan`, checked where the
            plan was made, so the training step never waits for the device.

    Returns:
        ``(B, M)`` weights.
    """
    if kappas.ndim != 2:
        raise ValueError(f'expected kappas of shape (B, M), got {tuple(kappas.shape)}')
    if check and (kappas < 0).any():
        raise ValueError('mixing ratios must be non-negative')
    num_members = kappas.shape[1]
    total = float(num_members) if weight_sum is None else float(weight_sum)
    if math.isinf(root):
        # r -> inf: κ^{1/r} -> 1 for κ > 0, so every present member weighs the same (thesis Sec. 3.3.2.2)
        powered = (kappas > 0).to(kappas.dtype)
    else:
        powered = kappas.clamp_min(0).pow(1.0 / root)
    powered_sum = powered.sum(dim=1, keepdim=True)
    if check and (powered_sum == 0).any():
        raise ValueError('every sample needs a member with a positive mixing ratio; got a row of zeros')
    return total * powered / powered_sum


class MimoLoss(nn.Module):
    """``mean_b Σ_m w_r(κ_bm) · CE(y_bm, logits_bm)`` (thesis eq. 3.1, eq. A.2).

    Args:
        root: r of :func:`mixing_loss_weights` (3 for MixMo; 1 for MixShare and MixViT; ``inf`` for none).
        weight_sum: Sum of one sample's member weights; ``None`` = M (MixMo), 1 for MixViT's eq. 4.4, 2 for MixMo
            with two of M > 2 inputs mixed per sample.
        label_smoothing: Applied to hard targets, as ``nn.CrossEntropyLoss`` does.
    """

    def __init__(self, root: float = 3.0, weight_sum: Optional[float] = None, label_smoothing: float = 0.0):
        super().__init__()
        if root <= 0:
            raise ValueError(f'loss root r must be > 0 (or inf), got {root}')
        self.root = root
        self.weight_sum = weight_sum
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, kappas: torch.Tensor) -> torch.Tensor:
        """Weighted member loss.

        Args:
            logits: ``(B, M, K)`` member logits.
            targets: ``(B, M)`` class indices or ``(B, M, K)`` soft targets (rows summing to 1).
            kappas: ``(B, M)`` mixing ratios of the plan (checked where the plan was made, not here).
        """
        if logits.ndim != 3:
            raise ValueError(f'expected member logits of shape (B, M, K), got {tuple(logits.shape)}')
        batch_size, num_members, num_classes = logits.shape
        if tuple(kappas.shape) != (batch_size, num_members):
            raise ValueError(f'expected kappas of shape (B, M) = {(batch_size, num_members)}, got '
                             f'{tuple(kappas.shape)}')
        if targets.shape[:2] != logits.shape[:2] or targets.ndim not in (2, 3) or (
                targets.ndim == 3 and targets.shape[2] != num_classes):
            raise ValueError(f'expected targets of shape (B, M) = {(batch_size, num_members)} or (B, M, K) = '
                             f'{tuple(logits.shape)}, got {tuple(targets.shape)}')
        if targets.ndim == 2 and targets.is_floating_point():
            raise ValueError('hard targets of shape (B, M) must hold class indices (an integer dtype); soft targets '
                             f'need shape (B, M, K) = {tuple(logits.shape)}')
        flat_logits = logits.reshape(batch_size * num_members, num_classes).float()
        if targets.ndim == 2:
            member_ce = F.cross_entropy(
                flat_logits, targets.reshape(-1), reduction='none', label_smoothing=self.label_smoothing)
        else:
            member_ce = -(targets.reshape(-1, num_classes).float() * F.log_softmax(flat_logits, dim=-1)).sum(-1)
        weights = mixing_loss_weights(kappas.float(), self.root, self.weight_sum, check=False)
        return (weights * member_ce.view(batch_size, num_members)).sum(dim=1).mean()
