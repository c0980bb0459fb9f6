"""Mixing plans for MIMO training: masks, mixing ratios and their schedules.

Randomness lives here, outside the models (DESIGN.md): a :class:`Mixer` samples a :class:`MixPlan` from the batch size,
the number of members M, the model's mixing grid and the training progress in [0, 1]. The model is deterministic given
``(xs, plan)``, so tests build plans by hand (``MixPlan.from_masks``) and check the arithmetic exactly.
"""
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

__all__ = ['MixPlan', 'Mixer', 'MASK_KINDS']

MASK_KINDS = ('linear', 'cutmix', 'hconcat', 'vconcat', 'patchup', 'fmix', 'cowmask', 'cutmix_majority')


@dataclass
class MixPlan:
    """How the M inputs of one batch are mixed.

    Attributes:
        masks: ``(B, M, H, W)`` float masks on the model's mixing grid; they sum to 1 over members at every position.
            Linear mixing (MIMO summing, Linear-MixMo) is a constant mask per sample, cut-like kinds are 0/1.
        kappas: ``(B, M)`` mixing ratios: each member's mask mean (re-measured from the masks), summing to 1.
        binary: True when every mask value is 0 or 1 (cut-like batch), False for a linear batch.
    """
    masks: torch.Tensor
    kappas: torch.Tensor
    binary: bool

    @classmethod
    def from_masks(cls, masks: torch.Tensor) -> 'MixPlan':
        """Build a plan from ``(B, M, H, W)`` masks; κ is the mask mean, ``binary`` is read off the values."""
        if masks.ndim != 4:
            raise ValueError(f'expected masks of shape (B, M, H, W), got {tuple(masks.shape)}')
        masks = masks.float()
        binary = bool(((masks == 0) | (masks == 1)).all())
        return cls(masks=masks, kappas=masks.mean(dim=(2, 3)), binary=binary)

    @classmethod
    def linear(cls, kappas: torch.Tensor, grid: Tuple[int, int]) -> 'MixPlan':
        """A linear plan: member m of sample b weighs ``kappas[b, m]`` everywhere on ``grid``."""
        if kappas.ndim != 2:
            raise ValueError(f'expected kappas of shape (B, M), got {tuple(kappas.shape)}')
        kappas = kappas.float()
        masks = kappas[:, :, None, None].expand(-1, -1, *grid)
        return cls(masks=masks, kappas=kappas, binary=bool(((kappas == 0) | (kappas == 1)).all()))

    @property
    def batch_size(self) -> int:
        return self.masks.shape[0]

    @property
    def num_members(self) -> int:
        return self.masks.shape[1]

    @property
    def grid(self) -> Tuple[int, int]:
        return tuple(self.masks.shape[2:])

    def to(self, device: torch.device) -> 'MixPlan':
        return MixPlan(masks=self.masks.to(device), kappas=self.kappas.to(device), binary=self.binary)

    def check(self, batch_size: int, num_members: int, grid: Tuple[int, int]) -> None:
        """Raise ``ValueError`` naming the expected shape unless this plan fits the batch and the model's grid."""
        expected = (batch_size, num_members, *grid)
        if tuple(self.masks.shape) != expected:
            raise ValueError(
                f'MixPlan masks have shape {tuple(self.masks.shape)}, expected (B, M, H, W) = {expected} '
                f'for a batch of {batch_size} with {num_members} members on a {grid[0]}x{grid[1]} mixing grid')
        if tuple(self.kappas.shape) != (batch_size, num_members):
            raise ValueError(f'MixPlan kappas have shape {tuple(self.kappas.shape)}, expected (B, M) = '
                             f'{(batch_size, num_members)}')

    def upsample(self, size: Tuple[int, int]) -> torch.Tensor:
        """The masks resized to ``size`` by nearest neighbour (``(B, M, *size)``), e.g. to pixel resolution."""
        if tuple(size) == self.grid:
            return self.masks
        return torch.nn.functional.interpolate(self.masks, size=tuple(size), mode='nearest')


class Mixer:
    """Samples a :class:`MixPlan` per training batch (SPEC §1.2–1.6, §1.10).

    Args:
        num_members: M.
        kind: Mask kind for binary batches, one of ``MASK_KINDS``; ``'linear'`` never cuts.
        alpha: κ ~ Beta(α, α) for M = 2, Dirichlet_M(α) for M > 2. ``None`` fixes κ = 1/M (MIMO summing).
        prob: p, the probability that a batch uses the binary ``kind`` instead of linear mixing (MixMo: 0.5,
            MixShare / MixViT: 1.0).
        prob_decay: Linear descent of p to 0 over the last twelfth of training (SPEC §1.3).
        outside_swap: Batch-level random role permutation of the members (for M = 2 the "outside" flip
            ``1_M <- 1 - 1_M``, SPEC §1.3).
        pair_only: M > 2 MixViT scheme: cut-mix two of the M inputs, the others get κ = 0 (SPEC §1.10).
        single_source_end: MixViT end-of-training schedule: with a probability growing 0 -> 1 over the last twelfth,
            a batch takes all tokens from one random input (SPEC §1.10).
        patch_size: Pixels per grid cell for ``'cutmix_majority'`` (majority vote inside each patch).
        generator: Optional ``torch.Generator`` for reproducible plans.
    """

    def __init__(
            self,
            num_members: int = 2,
            kind: str = 'cutmix',
            alpha: Optional[float] = 2.0,
            prob: float = 0.5,
            prob_decay: bool = True,
            outside_swap: bool = True,
            pair_only: bool = False,
            single_source_end: bool = False,
            patch_size: Optional[Tuple[int, int]] = None,
            generator: Optional[torch.Generator] = None,
    ):
        raise NotImplementedError  # filled in below

    def __call__(self, batch_size: int, grid: Tuple[int, int], progress: float = 0.0,
                 device: Optional[torch.device] = None) -> MixPlan:
        """Sample the plan of one batch.

        Args:
            batch_size: B.
            grid: The model's mixing grid (``model.mix_grid(img_size)``).
            progress: Fraction of training done, in [0, 1] (fractional epoch / total epochs).
            device: Where the plan's tensors go.
        """
        raise NotImplementedError
