"""Everything random in one shard's MIMO training step, drawn ahead of the step as a pure function of its position.

A :class:`ShardPlan` holds the pairing index (which batch image every member input reads, with input repetition),
the :class:`~timm_mimo.mixing.MixPlan` (masks, κ, binary flag, MixShare's fadeout strength) and, with pixel mixing,
the partner picks and keep masks. :class:`PlanSampler` draws it on the CPU from a generator seeded by
(seed, epoch, step, shard) (:func:`timm_mimo.data.shard_seed`): the same shard gets the same plan on whichever
process, worker or device computes it, so DDP equals gradient accumulation and a resumed run repeats the plans.

The training loader draws plans in its workers, next to the images (:mod:`timm_mimo.loader`): they arrive pinned, are
copied without blocking and the step does no host work for them. The draws and their order are those of
:meth:`timm_mimo.task.MimoTask.mix_inputs` (pairs, then the Mixer's plan, then the pixel-mixing picks and masks).
"""
import copy
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from timm_mimo.data import PixelMix, pairing_index, shard_seed
from timm_mimo.mixing import Mixer, MixPlan, progress

__all__ = ['ShardPlan', 'PlanSampler']


@dataclass
class ShardPlan:
    """The random decisions of one shard's MIMO step.

    Attributes:
        pair_index: ``(B, M)`` batch position read by member m of sample b (:func:`timm_mimo.data.pairing_index`).
        mix: The mixing plan of the batch.
        pixel_pick: ``(B·M,)`` partner of every member input (pixel mixing only).
        pixel_keep: ``(B, M, H, W)`` pixel keep masks ``1_m`` (pixel mixing only).
    """
    pair_index: torch.Tensor
    mix: MixPlan
    pixel_pick: Optional[torch.Tensor] = None
    pixel_keep: Optional[torch.Tensor] = None

    def to(self, device: torch.device, non_blocking: bool = False) -> 'ShardPlan':
        """The plan on ``device`` (host-to-device copies issued without waiting with ``non_blocking``)."""
        def move(tensor: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
            return None if tensor is None else tensor.to(device, non_blocking=non_blocking)
        return ShardPlan(move(self.pair_index), self.mix.to(device, non_blocking=non_blocking),
                         move(self.pixel_pick), move(self.pixel_keep))

    def pin_memory(self) -> 'ShardPlan':
        """Page-locked copies (what ``DataLoader(pin_memory=True)`` calls), for asynchronous copies to a GPU."""
        def pin(tensor: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
            return None if tensor is None else tensor.contiguous().pin_memory()
        return ShardPlan(pin(self.pair_index), self.mix.pin_memory(), pin(self.pixel_pick), pin(self.pixel_keep))


class PlanSampler:
    """Draws :class:`ShardPlan` s without the model: picklable, for loader workers.

    Args:
        num_members: M.
        mixer: The task's Mixer (copied; its generator is replaced at every draw).
        input_repeat: ρ.
        pixel_mix: Optional pixel mixing of every member input.
        grid: The model's mixing grid for ``image_size`` (``model.mix_grid(image_size)``).
        image_size: ``(H, W)`` of the training images.
        seed: Seed of the per-shard generators.
    """

    def __init__(self, num_members: int, mixer: Mixer, input_repeat: float, pixel_mix: Optional[PixelMix],
                 grid: Tuple[int, int], image_size: Tuple[int, int], seed: int):
        self.num_members = num_members
        self.mixer = copy.copy(mixer)
        self.mixer.generator = None
        self.input_repeat = input_repeat
        self.pixel_mix = pixel_mix
        self.grid = tuple(int(g) for g in grid)
        self.image_size = tuple(int(s) for s in image_size)
        self.seed = seed

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(num_members={self.num_members}, grid={self.grid}, '
                f'image_size={self.image_size}, input_repeat={self.input_repeat}, seed={self.seed})')

    def sample(self, batch_size: int, epoch: int, step: int, steps_per_epoch: int, num_epochs: int, shard: int = 0,
               num_partners: int = 0) -> ShardPlan:
        """The plan of one shard of one optimizer step: a pure function of (seed, epoch, step, shard).

        Args:
            batch_size: Images of the shard (B).
            epoch: Epoch, from 0.
            step: Optimizer step inside the epoch, from 0.
            steps_per_epoch: Optimizer steps per epoch (for the schedules' progress).
            num_epochs: Epochs of the run (the schedules' horizon).
            shard: ``rank · grad_accum_steps + micro_step``.
            num_partners: Pixel-mixing partner images loaded with the shard.
        """
        generator = torch.Generator().manual_seed(shard_seed(self.seed, epoch, step, shard))
        return self.sample_with(generator, batch_size, progress(epoch, step, steps_per_epoch, num_epochs),
                                epoch + step / steps_per_epoch, num_partners)

    def sample_with(self, generator: torch.Generator, batch_size: int, train_progress: float, epoch_float: float,
                    num_partners: int = 0) -> ShardPlan:
        """The plan drawn from ``generator`` at this training progress (fraction done) and fractional epoch."""
        index = pairing_index(batch_size, self.num_members, self.input_repeat, generator)
        self.mixer.generator = generator
        try:
            mix = self.mixer(batch_size, self.grid, train_progress, epoch=epoch_float)
        finally:
            self.mixer.generator = None
        if self.pixel_mix is None:
            if num_partners:
                raise ValueError(f'{num_partners} partner images given but this task does no pixel mixing '
                                 '(mimo_cutmix / mimo_mixup)')
            return ShardPlan(index, mix)
        pick, keep = self.pixel_mix.sample(batch_size, self.num_members, self.image_size, num_partners, generator)
        return ShardPlan(index, mix, pick, keep)
