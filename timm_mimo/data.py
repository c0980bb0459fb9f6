"""The multi-input batch of MIMO training: sampling, pairing, pixel-level MSDA, transforms.

MixMo arXiv:2103.06132 Sec. 3-4 / thesis (HAL tel-03952815) Sec. 3.2-3.3 and App. A.1.3; MIMO arXiv:2010.06610.

Global-batch semantics (README "Distributed"):

- ``-b/--batch-size`` is the batch of ONE forward pass on one process (timm's meaning). The global batch of one
  optimizer step is ``G = batch_size × world_size × grad_accum_steps``.
- Batch repetition b (MIMO arXiv:2010.06610 Sec. 3.1, thesis Sec. 3.2.3) acts on the global batch: every step draws
  ``G / b`` unique indices, repeats each b times (every copy augmented on its own by the dataset transform), shuffles
  the G positions and cuts them into ``world_size × grad_accum_steps`` shards; shard
  ``rank · grad_accum_steps + micro_step`` is what a process sees. Steps per epoch = ``⌊|D| · b / G⌋``. A 2-process
  run with ``-b 32`` therefore sees the same shards as a 1-process run with ``-b 32 --grad-accum-steps 2``, and every
  shard is paired and mixed on its own (as BatchNorm normalises it on its own), from a generator seeded by
  (seed, epoch, step, shard): the same shard gets the same pairs, plan and pixel-MSDA partners whichever process
  computes it.
- The learning rate is NOT divided by b automatically: the papers' ``(0.1 / b) · (bs / 128)`` (thesis App. A.1.3.1)
  is written into the configs, so ``--lr`` always means the rate the optimizer uses.
"""
import os
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from timm.data import Mixup, auto_augment_transform, create_dataset, create_transform, rand_augment_transform
from timm.data.mixup import cutmix_bbox_and_lam
from timm.data.random_erasing import RandomErasing
from torch.utils.data import Dataset, Sampler
from torchvision import transforms

from timm_mimo.datasets import PublishedDataError, detect_published, is_published, open_published
from timm_mimo.mixing import (
    MixPlan,
    channels_last_members,
    members_elementwise,
    random_cutmix_masks,
    sample_mixing_ratios,
)

__all__ = [
    'BatchRepeatSampler', 'ShardRequest', 'shard_seed', 'pairing_index', 'gather_pairs', 'pair_inputs', 'PixelMix',
    'apply_pixel_mix', 'corrected_mix_ratio', 'soft_targets', 'SimultaneousMixup',
    'ConvertImageMode', 'PadToSize', 'channel_stats', 'CifarAugMix', 'pixel_policy', 'cifar_transform',
    'eval_transform', 'create_image_transform', 'open_dataset', 'check_split', 'dataset_num_classes',
    'DataError', 'dataset_class_names', 'check_class_names', 'apply_class_names', 'ClassIndexMap', 'dataset_layout',
    'dataset_class_descriptions',
]


PARTNER_SEED_OFFSET = 7919  # partner draws use their own seed stream, apart from pairing and plans


def shard_seed(seed: int, epoch: int, step: int, shard: int) -> int:
    """A 63-bit seed for one shard of one step: the same on every process that computes that shard."""
    value = (seed * 1_000_003 + epoch) * 1_000_033 + step
    return (value * 1_009 + shard) % (2 ** 63 - 1)


class ShardRequest(list):
    """The dataset indices of one shard of one optimizer step, and which shard it is.

    A ``list`` of indices (any map-style dataset can load it), followed by ``num_partners`` pixel-mixing partner
    indices, with ``epoch``, ``step`` and ``shard`` attached: what a loader worker needs to draw the shard's MIMO plan
    and seed its augmentations as pure functions of (seed, epoch, step, shard).
    """

    def __init__(self, indices: Sequence[int], epoch: int, step: int, shard: int, num_partners: int = 0):
        super().__init__(indices)
        self.epoch = epoch
        self.step = step
        self.shard = shard
        self.num_partners = num_partners

    @property
    def batch_size(self) -> int:
        """Images of the shard itself (the partners excluded)."""
        return len(self) - self.num_partners

    def __reduce__(self):  # pickled to loader workers with its attributes
        return type(self), (list(self), self.epoch, self.step, self.shard, self.num_partners)


class BatchRepeatSampler(Sampler[ShardRequest]):
    """Batch sampler with batch repetition b, DDP and gradient-accumulation aware (thesis Sec. 3.2.3).

    Yields this process's shards in order (``grad_accum_steps`` shards per optimizer step) as
    :class:`ShardRequest` lists of indices. Every process builds the same global batches from ``seed + epoch``; call
    :meth:`set_epoch` each epoch. With ``num_partners > 0`` every shard's list is followed by ``num_partners`` indices
    drawn uniformly (with replacement) from the whole dataset, from a generator seeded by (seed, epoch, step, shard):
    the pixel-MSDA partners of :class:`PixelMix`, the same for a shard whichever process loads it.

    Args:
        num_samples: |D|.
        batch_size: Per-process batch of one forward pass.
        batch_repeat: b, copies of every selected index in the global batch (1 = plain sampling without repetition).
        world_size: Number of processes.
        rank: This process's global rank.
        grad_accum_steps: Forward passes per optimizer step on every process.
        seed: Seed shared by all processes.
        num_partners: Partner indices appended to every shard (0: none).
    """

    def __init__(self, num_samples: int, batch_size: int, batch_repeat: int = 1, world_size: int = 1, rank: int = 0,
                 grad_accum_steps: int = 1, seed: int = 0, num_partners: int = 0):
        for name, value in (('batch size', batch_size), ('world size', world_size),
                            ('grad accum steps', grad_accum_steps)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f'{name} must be a positive integer, got {value!r}')
        if num_partners < 0:
            raise ValueError(f'num_partners must be >= 0, got {num_partners}')
        global_batch = batch_size * world_size * grad_accum_steps
        if batch_repeat < 1 or global_batch % batch_repeat:
            raise ValueError(f'global batch {global_batch} (batch size {batch_size} x world size {world_size} x '
                             f'grad accum {grad_accum_steps}) must be a multiple of batch repeat {batch_repeat}')
        if not 0 <= rank < world_size:
            raise ValueError(f'rank {rank} outside world size {world_size}')
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.batch_repeat = batch_repeat
        self.world_size = world_size
        self.rank = rank
        self.grad_accum_steps = grad_accum_steps
        self.seed = seed
        self.num_partners = num_partners
        self.epoch = 0
        self.unique_per_step = global_batch // batch_repeat
        if num_samples < self.unique_per_step:
            raise ValueError(f'{num_samples} samples cannot fill one global batch of {self.unique_per_step} unique '
                             f'images (global batch {global_batch} / batch repeat {batch_repeat})')

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch: ``⌊|D| · b / G⌋``."""
        return self.num_samples // self.unique_per_step

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_batches(self) -> Iterator[torch.Tensor]:
        """The epoch's global batches, ``(G,)`` indices each, identical on every process."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.num_samples, generator=generator)
        for step in range(self.steps_per_epoch):
            unique = order[step * self.unique_per_step:(step + 1) * self.unique_per_step]
            repeated = unique.repeat(self.batch_repeat)
            yield repeated[torch.randperm(repeated.numel(), generator=generator)]

    def partner_indices(self, step: int, shard: int) -> List[int]:
        """``num_partners`` indices drawn uniformly from the whole dataset for one shard of one step."""
        generator = torch.Generator().manual_seed(shard_seed(self.seed + PARTNER_SEED_OFFSET, self.epoch, step, shard))
        return torch.randint(self.num_samples, (self.num_partners,), generator=generator).tolist()

    def __iter__(self) -> Iterator[ShardRequest]:
        for step, batch in enumerate(self.global_batches()):
            for micro_step in range(self.grad_accum_steps):
                shard = self.rank * self.grad_accum_steps + micro_step
                indices = batch[shard * self.batch_size:(shard + 1) * self.batch_size].tolist()
                if self.num_partners:
                    indices += self.partner_indices(step, shard)
                yield ShardRequest(indices, self.epoch, step, shard, self.num_partners)

    def __len__(self) -> int:
        return self.steps_per_epoch * self.grad_accum_steps


def pairing_index(batch_size: int, num_members: int, input_repeat: float = 0.0,
                  generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """The ``(B, M)`` batch positions each member reads (MIMO arXiv:2010.06610 Sec. 3.1; MixMo arXiv:2103.06132 Sec. 3).

    Member m reads the batch through its own permutation ``π_m`` (column m); the first ``⌊B·ρ⌋`` positions of all
    permutations agree (input repetition ρ: all M inputs are the same image there), the rest are shuffled per member.
    Every item appears exactly once in every member slot. Drawn on the CPU from ``generator``.
    """
    if not 0.0 <= input_repeat <= 1.0:
        raise ValueError(f'input repetition must be in [0, 1], got {input_repeat}')
    num_repeated = int(batch_size * input_repeat)
    base = torch.randperm(batch_size, generator=generator)
    perms = [base]
    for _ in range(1, num_members):
        tail = base[num_repeated:]
        perms.append(torch.cat([base[:num_repeated], tail[torch.randperm(tail.numel(), generator=generator)]]))
    return torch.stack(perms, dim=1)


def gather_pairs(images: torch.Tensor, targets: torch.Tensor, index: torch.Tensor
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(B, M, C, H, W)`` member inputs and ``(B, M[, K])`` targets read through a ``(B, M)`` pairing index.

    One gather per tensor on the tensors' device (the index is moved there if needed). ``xs.flatten(1, 2)`` is a view
    (the packed ``(B, M·C, H, W)`` batch) in the images' layout: contiguous images give a contiguous ``(B, M, C, H, W)``
    batch, channels-last images one stored ``(B, H, W, M, C)``, whose packed view is channels-last
    (:func:`~timm_mimo.mixing.channels_last_members`), so the MIMO encoders' grouped conv reads it as it is.
    """
    batch_size, num_members = index.shape
    index = index.to(images.device, non_blocking=True)
    if images.ndim == 4 and not images.is_contiguous() and images.is_contiguous(memory_format=torch.channels_last):
        xs = channels_last_members(images, index)
    else:
        xs = images.index_select(0, index.flatten()).view(batch_size, num_members, *images.shape[1:])
    return xs, targets.index_select(0, index.flatten().to(targets.device)).view(batch_size, num_members,
                                                                              *targets.shape[1:])


def pair_inputs(images: torch.Tensor, targets: torch.Tensor, num_members: int, input_repeat: float = 0.0,
                generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pair a batch into M inputs by permutation: :func:`pairing_index` then :func:`gather_pairs`.

    Args:
        images: ``(B, C, H, W)``.
        targets: ``(B,)`` class indices or ``(B, K)`` soft targets.
        num_members: M.
        input_repeat: ρ in [0, 1].
        generator: Source of the permutations.

    Returns:
        ``(B, M, C, H, W)`` inputs and ``(B, M)`` (or ``(B, M, K)``) targets.
    """
    return gather_pairs(images, targets, pairing_index(images.shape[0], num_members, input_repeat, generator))


def soft_targets(targets: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """One-hot ``(..., K)`` targets from class indices, with label smoothing ``(1-s)·onehot + s/K``.

    Built by comparison with ``arange(K)``, not ``F.one_hot``, which reads the indices back to the host to check their
    range (a GPU sync in every step).
    """
    classes = torch.arange(num_classes, device=targets.device)
    onehot = (targets.long().unsqueeze(-1) == classes).float()
    return onehot * (1.0 - smoothing) + smoothing / num_classes


def corrected_mix_ratio(keep: torch.Tensor, member_masks: torch.Tensor) -> torch.Tensor:
    """The visible share of the original image inside the MixMo region (thesis App. A.1.3.1).

    ``λ' = Σ(1_m ⊙ 1_M) / Σ 1_M``; where a member's MixMo mask is empty (κ = 0) the plain ``mean(1_m)`` is used.

    Args:
        keep: ``(B, M, H, W)`` pixel MSDA masks ``1_m`` (1 where the original image stays, values in [0, 1]).
        member_masks: ``(B, M, H, W)`` MixMo masks ``1_M`` at pixel resolution.

    Returns:
        ``(B, M)`` ratios λ'.
    """
    region = member_masks.sum(dim=(2, 3))
    visible = (keep * member_masks).sum(dim=(2, 3))
    plain = keep.mean(dim=(2, 3))
    return torch.where(region > 0, visible / region.clamp_min(1e-12), plain)


class PixelMix:
    """Pixel-level CutMix / Mixup on every member input, on top of MIMO mixing.

    MixMo arXiv:2103.06132 Sec. 4.1 / thesis (HAL tel-03952815) Sec. 3.3 and App. A.1.3.1: each member input is mixed
    with a partner drawn from the whole dataset, λ ~ Beta(α, α) (α = 1 for CutMix); the label weight is the corrected
    ``λ' = Σ(1_m ⊙ 1_M)/Σ 1_M`` measured inside the member's MixMo region, and when λ' < 0.5 the original and the
    partner swap roles so that the batch-repeated image stays predominant.

    Decision: every member input is mixed independently with probability ``prob`` (default 0.5, the official MixMo
    code's value; papers silent; thesis App. A.1.3.1 mixes only the first input, Sec. 3.3 both).
    Decision: the partners are a batch-sized independent draw from the whole dataset (uniform, with replacement; the
    training loader loads them, seeded per shard, see :class:`BatchRepeatSampler`), and each member input picks one of
    them uniformly (papers silent on how partners are drawn beyond "from the whole dataset").
    Decision: with both CutMix and Mixup enabled they are applied SIMULTANEOUSLY as MixViT does (thesis App. A.1.5 /
    MixViT openreview.net/forum?id=pOq1HuMI8Dz App. H): a CutMix box of area ``1 - λ_cut`` (λ_cut ~ Beta(α_cut, α_cut))
    inside which the original keeps the continuous Mixup weight λ_mix ~ Beta(α_mix, α_mix); outside the box it keeps 1.

    Decision: MixViT keeps the λ' correction and the swap (``mixmo_correction=True`` for every model): the MixViT code
    base "built upon the public official implementation of MixMo" (thesis App. A.1.5), whose pixel MSDA applies both,
    and the MixViT papers describe the pixel mixing only as CutMix and MixUp "applied simultaneously".
    ``mixmo_correction=False`` gives the plain DeiT-style label instead: λ = the original image's share of the whole
    picture, no swap.

    Args:
        cutmix_alpha: α of the CutMix box ratio; 0 disables CutMix.
        mixup_alpha: α of the Mixup ratio; 0 disables Mixup.
        prob: Probability that one member input is mixed.
        mixmo_correction: λ' measured inside the member's MixMo region and the λ' < 0.5 swap (thesis App. A.1.3.1);
            ``False``: λ = mean of the keep mask over the whole image, never swapped.
    """

    def __init__(self, cutmix_alpha: float = 0.0, mixup_alpha: float = 0.0, prob: float = 0.5,
                 mixmo_correction: bool = True):
        if cutmix_alpha < 0 or mixup_alpha < 0 or (cutmix_alpha <= 0 and mixup_alpha <= 0):
            raise ValueError(f'PixelMix needs cutmix_alpha > 0 or mixup_alpha > 0 (none negative), got '
                             f'{cutmix_alpha} and {mixup_alpha}')
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f'pixel mix probability must be in [0, 1], got {prob}')
        self.cutmix_alpha = cutmix_alpha
        self.mixup_alpha = mixup_alpha
        self.prob = prob
        self.mixmo_correction = mixmo_correction

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(cutmix_alpha={self.cutmix_alpha}, mixup_alpha={self.mixup_alpha}, '
                f'prob={self.prob}, mixmo_correction={self.mixmo_correction})')

    def sample_keep_masks(self, shape: Tuple[int, int], size: Tuple[int, int],
                          generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``(B, M, H, W)`` masks ``1_m``: 1 everywhere for unmixed inputs, else the CutMix / Mixup keep mask."""
        count = shape[0] * shape[1]
        mixed = torch.rand(count, generator=generator) < self.prob
        keep = torch.ones(count, *size)
        if self.cutmix_alpha > 0:
            lam_cut = sample_mixing_ratios(count, 2, self.cutmix_alpha, generator)[:, 0]
            box = random_cutmix_masks(1.0 - lam_cut, size, generator)  # the partner's box has area 1 - λ
        else:
            box = torch.ones(count, *size)  # Mixup alone: the "box" is the whole image
        if self.mixup_alpha > 0:
            lam_mix = sample_mixing_ratios(count, 2, self.mixup_alpha, generator)[:, 0]
            inside = lam_mix[:, None, None].expand(-1, *size)
        else:
            inside = torch.zeros(count, *size)
        keep = torch.where(box > 0, inside, keep)
        keep = torch.where(mixed[:, None, None], keep, torch.ones_like(keep))
        return keep.view(*shape, *size)

    def sample(self, batch_size: int, num_members: int, size: Tuple[int, int], num_partners: int,
               generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """The random part of pixel mixing, drawn on the CPU: which partner each member input takes ``(B·M,)`` and
        the keep masks ``1_m`` ``(B, M, H, W)``."""
        if num_partners < 1:
            raise ValueError(f'pixel mixing needs at least one partner image, got {num_partners}')
        pick = torch.randint(0, num_partners, (batch_size * num_members,), generator=generator)
        return pick, self.sample_keep_masks((batch_size, num_members), size, generator)

    def apply(self, xs: torch.Tensor, targets: torch.Tensor, plan: MixPlan, partner_x: torch.Tensor,
              partner_y: torch.Tensor, pick: torch.Tensor, keep: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Mix every member input with its picked partner (:func:`apply_pixel_mix`, with this mixer's
        ``mixmo_correction``), on the inputs' device.

        Args:
            xs: ``(B, M, C, H, W)`` paired inputs.
            targets: ``(B, M, K)`` soft targets.
            plan: The batch's MixMo plan (its masks are upsampled to pixels for the λ correction).
            partner_x: ``(P, C, H, W)`` partner images (drawn from the whole dataset).
            partner_y: ``(P, K)`` their soft targets.
            pick: ``(B·M,)`` partner index of every member input.
            keep: ``(B, M, H, W)`` keep masks.
        """
        if partner_x.ndim != xs.ndim - 1 or partner_x.shape[0] < 1 or partner_y.shape[0] != partner_x.shape[0]:
            raise ValueError(f'expected (P, C, H, W) partners with (P, K) targets, got {tuple(partner_x.shape)} and '
                             f'{tuple(partner_y.shape)}')
        pick = pick.to(xs.device, non_blocking=True)
        picked_x, picked_y = gather_pairs(partner_x, partner_y, pick.view(xs.shape[:2]))  # in the layout of xs
        keep = keep.to(xs.device, non_blocking=True)
        member_masks = plan.upsample(tuple(xs.shape[-2:])).to(xs.device, non_blocking=True)
        return apply_pixel_mix(xs, targets, picked_x, picked_y, keep, member_masks, correction=self.mixmo_correction)

    def __call__(self, xs: torch.Tensor, targets: torch.Tensor, plan: MixPlan, partner_x: torch.Tensor,
                 partner_y: torch.Tensor, generator: Optional[torch.Generator] = None
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Mix every member input with a partner picked among ``partner_x``: :meth:`sample` then :meth:`apply`.

        Args:
            xs: ``(B, M, C, H, W)`` paired inputs.
            targets: ``(B, M, K)`` soft targets.
            plan: The batch's MixMo plan.
            partner_x: ``(P, C, H, W)`` partner images (drawn from the whole dataset).
            partner_y: ``(P, K)`` their soft targets.
            generator: Source of the boxes, ratios and partner picks (CPU).

        Returns:
            Mixed inputs and ``(B, M, K)`` soft targets.
        """
        if partner_x.ndim != xs.ndim - 1 or partner_x.shape[0] < 1 or partner_y.shape[0] != partner_x.shape[0]:
            raise ValueError(f'expected (P, C, H, W) partners with (P, K) targets, got {tuple(partner_x.shape)} and '
                             f'{tuple(partner_y.shape)}')
        pick, keep = self.sample(xs.shape[0], xs.shape[1], tuple(xs.shape[-2:]), partner_x.shape[0], generator)
        return self.apply(xs, targets, plan, partner_x, partner_y, pick, keep)


def apply_pixel_mix(xs: torch.Tensor, targets: torch.Tensor, partner_x: torch.Tensor, partner_y: torch.Tensor,
                    keep: torch.Tensor, member_masks: torch.Tensor,
                    correction: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mix member inputs with partners under the λ correction and swap of thesis App. A.1.3.1.

    Args:
        xs, partner_x: ``(B, M, C, H, W)`` member inputs and their partners.
        targets, partner_y: ``(B, M, K)`` soft targets.
        keep: ``(B, M, H, W)`` pixel masks ``1_m`` (1 where the member's own image stays).
        member_masks: ``(B, M, H, W)`` MixMo masks ``1_M`` at pixel resolution (``plan.upsample``).
        correction: ``False``: no correction and no swap, λ = ``mean(1_m)`` over the whole image (DeiT's label).

    Returns:
        ``(B, M, C, H, W)`` mixed inputs and ``(B, M, K)`` targets ``λ' y + (1 - λ') y_partner`` (λ' >= 0.5 with
        the correction).
    """
    if correction:
        lam = corrected_mix_ratio(keep, member_masks)  # thesis App. A.1.3.1: λ' = Σ(1_m ⊙ 1_M) / Σ 1_M
        swap = lam < 0.5  # thesis App. A.1.3.1: swap so that the batch-repeated image stays predominant
        keep = torch.where(swap[:, :, None, None], 1.0 - keep, keep)
        lam = torch.where(swap, 1.0 - lam, lam)
    else:
        lam = keep.mean(dim=(2, 3))
    keep = keep.unsqueeze(2).to(xs.dtype)
    mixed_x = members_elementwise(lambda x, partner, k: k * x + (1.0 - k) * partner, xs, partner_x, keep)
    mixed_y = lam.unsqueeze(-1) * targets + (1.0 - lam.unsqueeze(-1)) * partner_y
    return mixed_x, mixed_y


class SimultaneousMixup(Mixup):
    """timm's ``Mixup`` (batch mode) with CutMix and Mixup applied AT ONCE, for single-input models.

    MixViT's pixel MSDA (thesis, HAL tel-03952815, App. A.1.5; MixViT openreview.net/forum?id=pOq1HuMI8Dz App. H):
    "we draw CutMix mask with α = 1.0 but instead of the mask having binary values (0 or 1), it has continuous values
    like a α = 0.8 MixUp scheme", i.e. :class:`PixelMix`'s keep mask for the papers' single-input baselines: inside a
    CutMix box of area ``1 - λ_cut`` (λ_cut ~ Beta(α_cut, α_cut), clipped and re-measured as timm does) the image keeps
    the Mixup weight λ_mix ~ Beta(α_mix, α_mix) against its partner (the batch flipped, timm's pairing); the label
    weight is the kept share ``1 - (1 - λ_cut)(1 - λ_mix)``. One draw per batch, applied with probability ``prob``.
    """

    def __init__(self, mixup_alpha: float, cutmix_alpha: float, prob: float = 1.0, label_smoothing: float = 0.1,
                 num_classes: int = 1000):
        if not (mixup_alpha > 0 and cutmix_alpha > 0):
            raise ValueError(f'simultaneous CutMix + Mixup needs both alphas > 0, got mixup_alpha={mixup_alpha} '
                             f'and cutmix_alpha={cutmix_alpha}')
        super().__init__(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, prob=prob, switch_prob=0.0,
                         mode='batch', correct_lam=True, label_smoothing=label_smoothing, num_classes=num_classes)

    def _mix_batch(self, x: torch.Tensor) -> float:
        if not self.mixup_enabled or np.random.rand() >= self.mix_prob:  # noqa: NPY002  (timm's Mixup draws here)
            return 1.0
        lam_cut = float(np.random.beta(self.cutmix_alpha, self.cutmix_alpha))  # noqa: NPY002
        (yl, yh, xl, xh), lam_cut = cutmix_bbox_and_lam(x.shape, lam_cut, correct_lam=True)
        lam_mix = float(np.random.beta(self.mixup_alpha, self.mixup_alpha))  # noqa: NPY002
        partner = x.flip(0)[:, :, yl:yh, xl:xh]
        x[:, :, yl:yh, xl:xh] = lam_mix * x[:, :, yl:yh, xl:xh] + (1.0 - lam_mix) * partner
        return 1.0 - (1.0 - lam_cut) * (1.0 - lam_mix)


class ConvertImageMode:
    """Convert a PIL image to ``mode`` ('L' for 1-channel models, 'RGB' for 3: gray Fashion-MNIST -> 3 channels)."""

    def __init__(self, mode: str):
        self.mode = mode

    def __call__(self, img: Image.Image) -> Image.Image:
        return img if img.mode == self.mode else img.convert(self.mode)

    def __repr__(self) -> str:
        return f'{type(self).__name__}(mode={self.mode!r})'


class PadToSize:
    """Zero-pad a PIL image, centred, up to ``size`` (Fashion-MNIST 28 px -> 32 px CIFAR-shaped models)."""

    def __init__(self, size: Tuple[int, int]):
        self.size = tuple(size)

    def __call__(self, img: Image.Image) -> Image.Image:
        width, height = img.size
        pad_w, pad_h = max(0, self.size[1] - width), max(0, self.size[0] - height)
        if not pad_w and not pad_h:
            return img
        left, top = pad_w // 2, pad_h // 2
        return transforms.functional.pad(img, [left, top, pad_w - left, pad_h - top])

    def __repr__(self) -> str:
        return f'{type(self).__name__}(size={self.size})'


def channel_stats(values: Sequence[float], in_chans: int) -> Tuple[float, ...]:
    """Per-channel mean or std for ``in_chans``: a 3-value RGB statistic becomes its average for 1-channel input."""
    values = tuple(values)
    if len(values) == in_chans:
        return values
    return (sum(values) / len(values),) * in_chans


def _image_mode(in_chans: int) -> str:
    if in_chans not in (1, 3):
        raise ValueError(f'image transforms support 1 or 3 input channels, got {in_chans}')
    return 'L' if in_chans == 1 else 'RGB'


class _ChainDepth:
    """A chain depth drawn anew each time an AugMix chain reads it: uniform in ``1..maximum``.

    torchvision's AugMix draws a random depth only in 1..3 (``chain_depth=-1``). It reads ``chain_depth`` once per
    chain (a ``> 0`` test, then ``range(depth)``), so a value whose index is drawn on each read gives every chain its
    own depth in ``1..maximum``, from torch's global generator as the library's own draw.
    """

    def __init__(self, maximum: int):
        if maximum < 1:
            raise ValueError(f'the maximum AugMix chain depth must be >= 1, got {maximum}')
        self.maximum = maximum

    def __gt__(self, other: int) -> bool:
        return self.maximum > other  # "a fixed depth": torchvision then takes the value as the chain's depth

    def __index__(self) -> int:
        return int(torch.randint(1, self.maximum + 1, (1,)).item())

    def __repr__(self) -> str:
        return f'U{{1..{self.maximum}}}'


class CifarAugMix(transforms.AugMix):
    """torchvision's AugMix with MixMo's CIFAR-100-c settings (thesis App. A.1.3.1 / MixMo arXiv:2103.06132 App.).

    Severity 3, width 3, and a chain depth drawn per chain uniformly in 1..4 (Decision, docs/decisions.md: the thesis'
    "default parameters ... the mixture's depth to 4" read as AugMix's default random depth with 4 as its maximum);
    the operations that overlap with CIFAR-100-c corruptions are excluded, so [equalize, posterize, rotate, solarize,
    shear_x, shear_y, translate_x, translate_y] remain (torchvision's default set minus autocontrast). No
    Jensen-Shannon consistency loss (the thesis disables it).
    """

    KEPT_OPS = ('Equalize', 'Posterize', 'Rotate', 'Solarize', 'ShearX', 'ShearY', 'TranslateX', 'TranslateY')
    MAX_DEPTH = 4

    def __init__(self, fill: Optional[Any] = None):
        super().__init__(severity=3, mixture_width=3, chain_depth=self.MAX_DEPTH, all_ops=False, fill=fill)
        self.chain_depth = _ChainDepth(self.MAX_DEPTH)

    def _augmentation_space(self, num_bins: int, image_size: Tuple[int, int]) -> Dict[str, Tuple[torch.Tensor, bool]]:
        space = super()._augmentation_space(num_bins, image_size)
        return {name: value for name, value in space.items() if name in self.KEPT_OPS}


def pixel_policy(name: str, hparams: Dict[str, Any], fill: Any) -> Callable:
    """The PIL-level augmentation policy ``name``: torchvision's ``'cifar10'`` AutoAugment, ``'augmix'``
    (:class:`CifarAugMix`), or a timm AutoAugment / RandAugment string."""
    if name == 'cifar10':
        return transforms.AutoAugment(transforms.AutoAugmentPolicy.CIFAR10, fill=fill)
    if name == 'augmix':
        return CifarAugMix(fill=fill)
    policy = rand_augment_transform if name.startswith('rand') else auto_augment_transform
    return policy(name, hparams)


def _to_tensor_steps(mean: Sequence[float], std: Sequence[float], in_chans: int, normalize: bool) -> List[Callable]:
    """PIL -> float tensor normalised with ``mean`` / ``std``, or (``normalize=False``) -> uint8 tensor (the
    :class:`~timm_mimo.loader.Prefetcher` normalises on the device)."""
    if not normalize:
        return [transforms.PILToTensor()]
    return [transforms.ToTensor(), transforms.Normalize(channel_stats(mean, in_chans), channel_stats(std, in_chans))]


def cifar_transform(input_size: Tuple[int, int, int], mean: Sequence[float], std: Sequence[float],
                    crop_pad: int = 4, hflip: float = 0.5, auto_augment: Optional[str] = None,
                    re_prob: float = 0.0, re_mode: str = 'pixel', re_count: int = 1,
                    normalize: bool = True) -> transforms.Compose:
    """CIFAR-style training transform (thesis App. A.1.3.1 "vanilla pixels data augmentation"): pad, crop, h-flip.

    Images smaller than ``input_size`` are first zero-padded (centred) to it; the mode follows the channel count.
    Optional ``auto_augment`` after the flip: ``'cifar10'`` is torchvision's CIFAR-10 AutoAugment policy (MixViT
    recipes, thesis App. A.1.5), ``'augmix'`` torchvision's AugMix without the ops that overlap CIFAR-100-c
    (:class:`CifarAugMix`, thesis App. A.1.3.1), anything else a timm policy (``'original'``, ``'rand-m9-mstd0.5'``);
    timm's random erasing (``re_prob``) after normalisation (MixViT, thesis App. A.1.5). ``normalize=False`` ends with
    uint8 tensors (normalisation and random erasing then happen on the device, :class:`~timm_mimo.loader.Prefetcher`).
    """
    in_chans, height, width = input_size
    steps = [ConvertImageMode(_image_mode(in_chans)), PadToSize((height, width)),
             transforms.RandomCrop((height, width), padding=crop_pad)]
    if hflip > 0:
        steps.append(transforms.RandomHorizontalFlip(hflip))
    if auto_augment:
        fill = tuple(round(255 * m) for m in channel_stats(mean, in_chans))
        hparams = dict(translate_const=int(min(height, width) * 0.45), img_mean=fill if in_chans == 3 else fill[0])
        steps.append(pixel_policy(auto_augment, hparams, fill if in_chans == 3 else fill[0]))
    steps += _to_tensor_steps(mean, std, in_chans, normalize)
    if re_prob > 0 and normalize:
        steps.append(RandomErasing(re_prob, mode=re_mode, max_count=re_count, device='cpu'))
    return transforms.Compose(steps)


def eval_transform(input_size: Tuple[int, int, int], mean: Sequence[float], std: Sequence[float],
                   normalize: bool = True) -> transforms.Compose:
    """Evaluation transform for CIFAR-shaped data: mode, centred pad (or centre crop) to ``input_size``, normalise
    (or, ``normalize=False``, uint8 tensors normalised later on the device)."""
    in_chans, height, width = input_size
    return transforms.Compose([
        ConvertImageMode(_image_mode(in_chans)), PadToSize((height, width)), transforms.CenterCrop((height, width)),
        *_to_tensor_steps(mean, std, in_chans, normalize)])



class DataError(ValueError):
    """A data set that cannot be used (missing or empty folder, unknown split); the message is one line."""


def create_image_transform(data_config: Dict[str, Any], is_training: bool, crop_pad: Optional[int] = None,
                           hflip: float = 0.5, no_aug: bool = False, normalize: bool = True,
                           **timm_kwargs: Any) -> Callable:
    """The dataset transform: CIFAR-style when ``crop_pad`` is set, else timm's ``create_transform``.

    Args:
        data_config: timm's ``resolve_data_config`` output (``input_size``, ``mean``, ``std``, ...).
        is_training: Training (augmented) or evaluation transform.
        crop_pad: Padding of the CIFAR-style random crop (papers: 4); ``None`` uses timm's transforms.
        hflip: Horizontal-flip probability.
        no_aug: Training transform without augmentation.
        normalize: End with normalised float tensors; ``False``: uint8 images for a loader with a
            :class:`~timm_mimo.loader.Prefetcher`, which normalises (and random-erases) them on the device (timm's
            ``use_prefetcher``).
        **timm_kwargs: Passed to ``timm.data.create_transform`` (``auto_augment``, ``re_prob``, ...).
    """
    input_size, mean, std = data_config['input_size'], data_config['mean'], data_config['std']
    if crop_pad is not None:
        if is_training and not no_aug:
            return cifar_transform(input_size, mean, std, crop_pad=crop_pad, hflip=hflip,
                                   auto_augment=timm_kwargs.get('auto_augment'),
                                   re_prob=timm_kwargs.get('re_prob', 0.0), re_mode=timm_kwargs.get('re_mode', 'pixel'),
                                   re_count=timm_kwargs.get('re_count', 1), normalize=normalize)
        return eval_transform(input_size, mean, std, normalize=normalize)
    in_chans = input_size[0]
    transform = create_transform(
        input_size, is_training=is_training, no_aug=no_aug, hflip=hflip, mean=channel_stats(mean, in_chans),
        std=channel_stats(std, in_chans), interpolation=data_config.get('interpolation', 'bilinear'),
        crop_pct=data_config.get('crop_pct'), use_prefetcher=not normalize, **(timm_kwargs if is_training else {}))
    return transforms.Compose([ConvertImageMode(_image_mode(in_chans)), transform])


TRAIN_SPLITS = ('train', 'training')  # timm's split synonyms (timm.data.dataset_factory)
EVAL_SPLITS = ('val', 'valid', 'validation', 'eval', 'evaluation')
TORCH_BASIC_DATASETS = ('cifar10', 'cifar100', 'mnist', 'kmnist', 'fashion_mnist', 'qmnist')


def check_split(name: str, root: Optional[str], split: str) -> None:
    """Refuse a split that timm would silently replace.

    timm's ``create_dataset`` falls back to the whole data dir when an image folder has no sub-folder for the split
    (training on train + validation images, or "evaluating" on training images), and maps any unknown split of a
    torchvision dataset to its test set. Here that is a :class:`DataError` listing what exists; ``'.'`` names the
    data dir itself for a folder without split sub-folders.
    """
    prefix, sep, rest = name.partition('/')
    prefix = prefix.lower() if sep else ''
    base = split.split('[')[0]
    if prefix == 'torch' and rest.lower() in TORCH_BASIC_DATASETS:
        known = TRAIN_SPLITS + EVAL_SPLITS + ('test',)
        if base not in known:
            raise DataError(f'split {split!r} of {name!r} is not one of {", ".join(known)}')
        return
    if prefix not in ('', 'folder') and not (prefix == 'torch' and rest.lower() in ('folder', 'image_folder')):
        return  # other readers (hfds/, tfds/, wds/, ...) check their own split names
    if not root or not os.path.isdir(root) or base == '.':
        return
    synonyms = TRAIN_SPLITS if base in TRAIN_SPLITS else EVAL_SPLITS if base in EVAL_SPLITS else ()
    if not any(os.path.exists(os.path.join(root, candidate)) for candidate in (base, *synonyms)):
        found = sorted(entry for entry in os.listdir(root) if os.path.isdir(os.path.join(root, entry)))
        listed = ', '.join(found[:12]) + (f', ... ({len(found)} in all)' if len(found) > 12 else '')
        raise DataError(f'split {split!r} not found in {root!r} (folders there: {listed or "none"}); '
                        "name one of them, or '.' for the data dir itself")


def dataset_num_classes(dataset: Dataset) -> Optional[int]:
    """The number of classes a dataset declares (folder readers, torchvision datasets), ``None`` when unknown."""
    reader = getattr(dataset, 'reader', None)
    for source in (reader, dataset):
        class_to_idx = getattr(source, 'class_to_idx', None)
        if class_to_idx:
            return max(class_to_idx.values()) + 1
        classes = getattr(source, 'classes', None)
        if classes:
            return len(classes)
    return None


def dataset_class_names(dataset: Dataset) -> Optional[List[Optional[str]]]:
    """The class name of every label index of a dataset, in index order; ``None`` when the dataset names none.

    The names come from :func:`apply_class_names` when it relabelled the dataset, else from the folder / tar reader's
    ``class_to_idx`` or a torchvision dataset's ``class_to_idx`` / ``classes``. An index that no class maps to (a
    class map with gaps) is ``None``.
    """
    names = getattr(dataset, 'class_names', None)
    if names is not None:
        return list(names)
    reader = getattr(dataset, 'reader', None)
    for source in (reader, dataset):
        class_to_idx = getattr(source, 'class_to_idx', None)
        if class_to_idx:
            by_index: List[Optional[str]] = [None] * (max(class_to_idx.values()) + 1)
            for name, index in class_to_idx.items():
                by_index[index] = str(name)
            return by_index
        classes = getattr(source, 'classes', None)
        if classes:
            return [str(name) for name in classes]
    return None


def _listed(names: Sequence[Any], limit: int = 8) -> str:
    shown = ', '.join(repr(name) for name in list(names)[:limit])
    return shown + (f', ... ({len(names)} in all)' if len(names) > limit else '')


def check_class_names(split_names: Sequence[Optional[str]], class_names: Sequence[Optional[str]], where: str) -> None:
    """Refuse a split holding classes that ``class_names`` (the run's list) does not name, naming both sides.

    A split may lack some of the run's classes (a validation split without one class); every class it has must be
    one of the run's, found by name.
    """
    known = set(class_names) - {None}
    extra = [name for name in split_names if name is not None and name not in known]
    if extra:
        present = set(split_names)
        missing = [name for name in class_names if name is not None and name not in present]
        absent = f"; the run's classes not found there: {_listed(missing)}" if missing else ''
        raise DataError(f'{where} holds classes the model was not trained on: {_listed(extra)}{absent}. Labels are '
                        'matched by class name: rename the folders to the run\'s class names (args.yaml '
                        'class_names), or evaluate a model trained on these classes')


class ClassIndexMap:
    """Target transform: a split's label index -> the index of the same class name in the run's class list."""

    def __init__(self, mapping: Sequence[int], before: Optional[Callable] = None):
        self.mapping = list(mapping)
        self.before = before

    def __call__(self, target: int) -> int:
        if self.before is not None:
            target = self.before(target)
        return self.mapping[int(target)]

    def __repr__(self) -> str:
        return f'{type(self).__name__}({self.mapping})'


def apply_class_names(dataset: Dataset, class_names: Optional[Sequence[Optional[str]]], where: str
                      ) -> Optional[List[Optional[str]]]:
    """Label ``dataset`` by name through ``class_names``; returns the class list now in force.

    With ``class_names`` ``None`` the dataset keeps its own labels (its own list is returned). Otherwise the split's
    classes must be a subset of ``class_names`` (:func:`check_class_names`) and every target becomes the index of its
    class name there, so a split that lacks a class, or lists its classes in another order, is labelled as the run
    was trained. A dataset without class names is taken as labelled by ``class_names`` already.
    """
    split_names = dataset_class_names(dataset)
    if class_names is None:
        return split_names
    class_names = list(class_names)
    if split_names is None:
        return class_names
    check_class_names(split_names, class_names, where)
    mapping = [class_names.index(name) if name is not None else index for index, name in enumerate(split_names)]
    if mapping != list(range(len(split_names))):
        dataset.target_transform = ClassIndexMap(mapping, getattr(dataset, 'target_transform', None))
    dataset.class_names = class_names
    return class_names


def _folder_reader(name: str) -> bool:
    """True for the image folder / tar readers whose class names are folder names (the default of ``--dataset``)."""
    prefix, sep, _ = name.partition('/')
    return not sep or prefix.lower() == 'folder'


def _class_map_names(class_map: str, root: Optional[str]) -> List[Optional[str]]:
    """The class names of a timm class map file (``.txt``: one per line; ``.pkl``: a dict), by label index."""
    from timm.data.readers.class_map import load_class_map
    try:
        class_to_idx = load_class_map(class_map, root or '')
    except (OSError, ValueError, AssertionError, UnicodeDecodeError) as exc:
        message = ' '.join(str(exc).split()) or type(exc).__name__
        raise DataError(f'--class-map {class_map!r} cannot be read ({message})') from None
    names: List[Optional[str]] = [None] * (max(class_to_idx.values()) + 1)
    for name, index in class_to_idx.items():
        names[index] = str(name)
    return names


def _published_kind(name: str, root: Optional[str], split: str) -> Optional[str]:
    """The published layout ``name`` reads (:mod:`timm_mimo.datasets`): named, or detected in an image folder."""
    if is_published(name):
        return name.lower()
    if (name or '').lower() in ('', 'folder'):
        return detect_published(root, split.split('[')[0])
    return None


def open_dataset(name: str, root: Optional[str], split: str, is_training: bool = False, download: bool = False,
                 transform: Optional[Callable] = None, class_map: str = '', partial_class_map: bool = False,
                 **reader_kwargs: Any) -> Dataset:
    """timm's ``create_dataset`` with a readable one-line :class:`DataError` for a missing, empty or unknown split.

    ``tinyimagenet``, ``imagenet`` and ``imagenet100`` read those data sets in their published layouts
    (:mod:`timm_mimo.datasets`), and so does an image folder (``''``) holding one of these releases (detected from
    the release's own files). A ``class_map`` of an image folder / tar must name every class of the split (timm
    would skip the images of the classes it leaves out, silently) unless ``partial_class_map``; it then orders the
    labels by name (:func:`apply_class_names`). ``reader_kwargs`` go to ``create_dataset`` (``input_key``,
    ``target_key``, ``trust_remote_code``; ``None`` values are dropped there)."""
    if not download or is_published(name):
        if not root or not os.path.isdir(root):
            raise DataError(f'data dir {root!r} does not exist (--data-dir)')
        if not any(files for _, _, files in os.walk(root, followlinks=True)):
            raise DataError(f'data dir {root!r} is empty (--data-dir)')
    published = _published_kind(name, root, split)
    if published is None:
        check_split(name, root, split)
    by_name = bool(class_map) and (published is not None or not partial_class_map and _folder_reader(name))
    map_names = _class_map_names(class_map, root) if by_name else None
    if published is not None:
        try:
            dataset = open_published(published, root, split.split('[')[0])
        except PublishedDataError as exc:
            raise DataError(str(exc)) from None
        if map_names is not None and partial_class_map:  # the mapped classes only
            reader, kept = dataset.reader, set(map_names)
            index_to_name = {index: class_name for class_name, index in reader.class_to_idx.items()}
            reader.samples = [sample for sample in reader.samples if index_to_name[sample[1]] in kept]
            reader.class_to_idx = {n: i for n, i in reader.class_to_idx.items() if n in kept}
    else:
        try:
            dataset = create_dataset(name, root=root, split='' if split == '.' else split, is_training=is_training,
                                     download=download, class_map='' if by_name else class_map, **reader_kwargs)
        except (RuntimeError, OSError, ValueError, AssertionError, KeyError) as exc:
            message = ' '.join(str(exc).split()) or type(exc).__name__
            raise DataError(f'cannot open dataset {name or "(image folder)"!r} split {split!r} in {root!r}: '
                            f'{message}') from None
    if len(dataset) == 0:
        raise DataError(f'dataset {name or "(image folder)"!r} split {split!r} in {root!r} has no images')
    if map_names is not None:
        split_names = dataset_class_names(dataset) or []
        left_out = [folder for folder in split_names if folder not in set(map_names)]
        if left_out:
            raise DataError(f'--class-map {class_map!r} leaves out the classes {_listed(left_out)} of split {split!r} '
                            f'in {root!r}: their images would be skipped. Add them to the map, or pass '
                            '--class-map-partial to use the mapped classes only')
        apply_class_names(dataset, map_names, f'split {split!r} in {root!r}')
    dataset.transform = transform
    return dataset


def dataset_layout(dataset: Dataset, name: str) -> str:
    """What an opened split is, in words: the published layout detected, a torchvision data set or an image folder."""
    reader = getattr(dataset, 'reader', None)
    layout = getattr(reader, 'layout', None)
    if layout:
        return layout
    if (name or '').lower().startswith('torch/'):
        return f'torchvision {type(dataset).__name__} in {getattr(dataset, "root", "?")!r}'
    root = getattr(reader, 'root', None)
    if root is not None and type(reader).__name__ == 'ReaderImageFolder':
        return f'image folder {os.path.basename(os.path.normpath(str(root)))}/<class>/<image>'
    return f'{type(reader or dataset).__name__} ({name or "image folder"})'


def dataset_class_descriptions(dataset: Dataset) -> Optional[Dict[str, str]]:
    """class name -> readable name where the release gives them (Tiny ImageNet's ``words.txt``, ImageNet's lemmas)."""
    descriptions = getattr(getattr(dataset, 'reader', None), 'class_descriptions', None)
    return dict(descriptions) if descriptions else None
