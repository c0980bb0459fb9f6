"""The training and evaluation data path, built for the GPU: work in loader workers, copies off the critical path.

* :class:`ShardDataset` wraps a map-style dataset for the batch-repetition sampler: in the loader worker it loads one
  :class:`~timm_mimo.data.ShardRequest` (images as uint8 tensors, augmentations seeded by (seed, epoch, step, shard))
  and draws the shard's MIMO plan (:class:`~timm_mimo.shard_plan.PlanSampler`), so a :class:`MimoBatch` arrives with
  everything its step needs, pinned when the loader pins.
* :class:`Prefetcher` iterates a loader one batch ahead: host-to-device copies without blocking on a side CUDA stream,
  uint8 -> float and normalisation on the device (and timm's random erasing there), channels-last (timm's
  ``PrefetchLoader`` habits). On a CPU device it does the same work inline.
* :class:`DeviceImages` keeps a small data set (CIFAR, Tiny ImageNet, any folder of same-sized images) decoded once as
  uint8 on the device and applies the CIFAR recipe's augmentations there (pad-crop, flip, normalisation) as one gather;
  :class:`DeviceDrawBatches` draws an epoch's indices, crops, flips and plans ahead in the loader workers, packed in a
  few blocks that reach the device in one copy each, and cuts every step's batch from them with views: no loader
  hand-off, no host-to-device copy and no sampler work inside a step.

Random draws stay pure functions of (seed, epoch, step, shard), whichever path is taken: DDP over N processes equals
gradient accumulation over N shards, and a resumed run repeats the interrupted one exactly.
"""
import copy
import itertools
import math
import os
import random
import signal
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, fields, is_dataclass, replace
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from timm_mimo.data import ShardRequest, shard_seed
from timm_mimo.shard_plan import PlanSampler, ShardPlan

__all__ = ['MimoBatch', 'DeviceDraws', 'ShardDataset', 'DeviceShardDataset', 'DeviceImages', 'Prefetcher',
           'keep_batch', 'PackedBatch', 'pack_batch', 'quiet_worker_signals', 'AUGMENT_SEED_OFFSET',
           'augmentation_seed', 'DrawBlock', 'DeviceDrawBlocks', 'DeviceDrawBatches', 'augment_draws']

AUGMENT_SEED_OFFSET = 104_729  # augmentation draws use their own seed stream, apart from plans and partners


def augmentation_seed(seed: int, epoch: int, step: int, shard: int) -> int:
    """Seed of one shard's augmentations (image transforms, device crops and flips)."""
    return shard_seed(seed + AUGMENT_SEED_OFFSET, epoch, step, shard) % (2 ** 32)


def _exit_now(signum: int, frame: Any) -> None:
    os._exit(0)


def quiet_worker_signals(worker_id: int) -> None:
    """``worker_init_fn`` of every loader: SIGINT and SIGTERM end a worker at once and quietly; the main process
    reports them.

    Ctrl-C, ``timeout`` and ``kill -- -PGID`` signal the whole process group, workers included. A forked worker
    inherits the main process's handlers (the command's :class:`~timm_mimo.cli.run_folder.SignalGuard`), and a worker
    killed by SIGTERM makes the main process's loader raise "worker killed by signal" while it shuts down; a worker
    that exits the orderly way would wait to flush its result queue into a pipe nobody reads any more. Here the worker
    leaves at once with status 0, and the main process ends with its one ``error:`` line.
    """
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _exit_now)


@contextmanager
def seeded_global_rngs(seed: int) -> Iterator[None]:
    """Seed torch's CPU generator, Python's ``random`` and numpy for the block, then restore their states.

    timm's and torchvision's transforms draw from these global generators; seeding them per shard makes the images a
    function of the shard, not of the worker that loads it or of what that worker loaded before (persistent workers),
    and restoring keeps the process's own streams (dropout without workers) untouched.
    """
    # the global numpy RNG is the one timm's augmentations draw from
    numpy_state = np.random.get_state()  # noqa: NPY002
    torch_state, python_state = torch.random.get_rng_state(), random.getstate()
    torch.random.default_generator.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002
    try:
        yield
    finally:
        torch.random.set_rng_state(torch_state)
        random.setstate(python_state)
        np.random.set_state(numpy_state)  # noqa: NPY002


@dataclass
class DeviceDraws:
    """What a :class:`DeviceImages` batch is made of: dataset indices, crop offsets and flips (shard + partners)."""
    indices: torch.Tensor  # (N,) long: the shard's B images, then its P partners
    offsets: torch.Tensor  # (N, 2) long: top-left corner of the crop in the padded image
    flips: torch.Tensor  # (N,) bool
    num_partners: int = 0

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> 'DeviceDraws':
        return DeviceDraws(fn(self.indices), fn(self.offsets), fn(self.flips), self.num_partners)


@dataclass
class MimoBatch:
    """One shard of one training step as the loader delivers it.

    Attributes:
        images: ``(B, C, H, W)``: uint8 (the :class:`Prefetcher` normalises them on the device) or float.
        targets: ``(B,)`` class indices.
        partner_images: ``(P, C, H, W)`` pixel-mixing partners from the whole dataset, or ``None``.
        partner_targets: ``(P,)`` their labels, or ``None``.
        plan: The shard's MIMO plan (``None`` for a plain model).
        draws: Device-resident data only: indices, crops and flips instead of images.
    """
    images: Optional[torch.Tensor]
    targets: Optional[torch.Tensor]
    partner_images: Optional[torch.Tensor] = None
    partner_targets: Optional[torch.Tensor] = None
    plan: Optional[ShardPlan] = None
    draws: Optional[DeviceDraws] = None

    def _map(self, fn: Callable[[Any], Any]) -> 'MimoBatch':
        values = {}
        for field in fields(self):
            value = getattr(self, field.name)
            values[field.name] = None if value is None else fn(value)
        return MimoBatch(**values)

    def pin_memory(self) -> 'MimoBatch':
        """Page-locked copies (``DataLoader(pin_memory=True)`` calls this in its pinning thread)."""
        return self._map(_pin)

    def to(self, device: torch.device, non_blocking: bool = False) -> 'MimoBatch':
        """Every tensor on ``device``."""
        return self._map(lambda value: _to(value, device, non_blocking))


def _pin(value: Any) -> Any:
    if isinstance(value, DeviceDraws):
        return value.map(torch.Tensor.pin_memory)
    return value.pin_memory()


def _to(value: Any, device: torch.device, non_blocking: bool) -> Any:
    if isinstance(value, DeviceDraws):
        return value.map(lambda tensor: tensor.to(device, non_blocking=non_blocking))
    return value.to(device, non_blocking=non_blocking)


def keep_batch(batch: Any) -> Any:
    """The loader's ``collate_fn`` for datasets whose ``__getitems__`` already returns the batch."""
    return batch


PACK_ALIGN = 16  # byte alignment of every tensor in a PackedBatch's buffer (any dtype can view its slice)


@dataclass(frozen=True)
class _Slot:
    """Where one tensor of a :class:`PackedBatch` lies in its buffer."""
    offset: int
    dtype: torch.dtype
    shape: Tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty((), dtype=self.dtype).element_size()

    def view(self, buffer: torch.Tensor) -> torch.Tensor:
        return buffer[self.offset:self.offset + self.nbytes].view(self.dtype).view(self.shape)


def _replace_tensors(value: Any, fn: Callable[[Any], Any]) -> Any:
    """``value`` with every tensor (or :class:`_Slot`) inside dataclasses, lists and tuples replaced by ``fn(it)``."""
    if isinstance(value, (torch.Tensor, _Slot)):
        return fn(value)
    if is_dataclass(value) and not isinstance(value, type):
        return replace(value, **{f.name: _replace_tensors(getattr(value, f.name), fn) for f in fields(value)
                                 if f.init})
    if isinstance(value, (list, tuple)) and not hasattr(value, '_fields'):
        return type(value)(_replace_tensors(item, fn) for item in value)
    return value


@dataclass
class PackedBatch:
    """A batch with all its tensors in one contiguous byte buffer: one transfer from a loader worker, one pinned copy,
    one host-to-device copy.

    Each tensor a worker hands the main process through shared memory costs a file-descriptor exchange there (about
    0.5 ms on two CPU cores), and each host-to-device copy its own launch. A shard's batch holds up to ten small
    tensors (targets, pairs, masks, κ, crops, flips...): packed, the main process pays for one. (The buffer stays in
    shared memory rather than inside the pickle: bytes in the result pipe can fill it, and a worker whose main process
    died would then wait forever to flush them.)

    Attributes:
        buffer: ``(N,)`` uint8, every tensor's bytes at a :data:`PACK_ALIGN`-aligned offset.
        skeleton: The batch with each tensor replaced by its :class:`_Slot`.
    """
    buffer: torch.Tensor
    skeleton: Any

    def pin_memory(self) -> 'PackedBatch':
        """The buffer page-locked (``DataLoader(pin_memory=True)`` calls this in its pinning thread)."""
        return PackedBatch(self.buffer.pin_memory(), self.skeleton)

    def to(self, device: torch.device, non_blocking: bool = False) -> 'PackedBatch':
        """The buffer on ``device``: one copy for the whole batch."""
        return PackedBatch(self.buffer.to(device, non_blocking=non_blocking), self.skeleton)

    def unpack(self) -> Any:
        """The batch, its tensors views of the buffer (no copy), on the buffer's device."""
        return _replace_tensors(self.skeleton, lambda slot: slot.view(self.buffer))


def pack_batch(batch: Any) -> PackedBatch:
    """The loader's ``collate_fn`` for :class:`ShardDataset` s: the batch that ``__getitems__`` returns, packed (runs
    in the worker)."""
    tensors: List[torch.Tensor] = []
    slots: List[_Slot] = []
    offset = 0

    def slot(tensor: torch.Tensor) -> _Slot:
        nonlocal offset
        tensors.append(tensor)
        slots.append(_Slot(offset, tensor.dtype, tuple(tensor.shape)))
        offset += -(-slots[-1].nbytes // PACK_ALIGN) * PACK_ALIGN
        return slots[-1]

    skeleton = _replace_tensors(batch, slot)
    buffer = torch.empty(offset, dtype=torch.uint8)
    for tensor, place in zip(tensors, slots):
        place.view(buffer).copy_(tensor)
    return PackedBatch(buffer, skeleton)


def _image_tensor(image: Any) -> torch.Tensor:
    """A transform's output as a tensor: torchvision tensors as they are, timm's ``ToNumpy`` arrays converted."""
    if isinstance(image, torch.Tensor):
        return image
    if isinstance(image, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(image))
    raise TypeError(f'the dataset transform returned {type(image).__name__}; expected a tensor or a numpy array')


class ShardDataset(Dataset):
    """A map-style dataset read one :class:`~timm_mimo.data.ShardRequest` at a time, in the loader workers.

    ``__getitems__`` (which torch's loader calls with the batch sampler's request) loads the shard and its partners
    under :func:`seeded_global_rngs` of the shard's augmentation seed, stacks them, and draws the shard's plan.

    Args:
        dataset: Map-style dataset of ``(image, target)`` whose transform returns tensors / numpy arrays.
        plan_sampler: Draws the MIMO plans (``None``: a plain model, no plan).
        steps_per_epoch: Optimizer steps per epoch (the schedules' clock).
        num_epochs: Epochs of the run.
        seed: The run's seed.
    """

    def __init__(self, dataset: Dataset, plan_sampler: Optional[PlanSampler], steps_per_epoch: int, num_epochs: int,
                 seed: int):
        self.dataset = dataset
        self.plan_sampler = plan_sampler
        self.steps_per_epoch = steps_per_epoch
        self.num_epochs = num_epochs
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[index]

    def _plan(self, request: ShardRequest) -> Optional[ShardPlan]:
        if self.plan_sampler is None:
            return None
        return self.plan_sampler.sample(request.batch_size, request.epoch, request.step, self.steps_per_epoch,
                                        self.num_epochs, request.shard, request.num_partners)

    def __getitems__(self, request: ShardRequest) -> MimoBatch:
        if not isinstance(request, ShardRequest):
            raise TypeError(f'{type(self).__name__} loads ShardRequest batches (timm_mimo.data.BatchRepeatSampler), '
                            f'got {type(request).__name__}')
        with seeded_global_rngs(augmentation_seed(self.seed, request.epoch, request.step, request.shard)):
            samples = [self.dataset[index] for index in request]
        images = torch.stack([_image_tensor(image) for image, _ in samples])
        targets = torch.tensor([int(target) for _, target in samples], dtype=torch.long)
        cut = request.batch_size
        partners = (images[cut:], targets[cut:]) if request.num_partners else (None, None)
        return MimoBatch(images[:cut], targets[:cut], *partners, plan=self._plan(request))


class DeviceShardDataset(ShardDataset):
    """The :class:`ShardDataset` of :class:`DeviceImages`: draws indices, crops, flips and the plan, loads nothing.

    Args:
        num_samples: Images in the data set.
        pad: Padding of the random crop (the crop offset is uniform in ``[0, 2·pad]`` per axis).
        hflip: Probability of a horizontal flip.
        plan_sampler, steps_per_epoch, num_epochs, seed: As :class:`ShardDataset`.
        random_crop: ``False``: the centred crop (offset ``pad``), as with ``--no-aug``.
    """

    def __init__(self, num_samples: int, pad: int, hflip: float, plan_sampler: Optional[PlanSampler],
                 steps_per_epoch: int, num_epochs: int, seed: int, random_crop: bool = True):
        super().__init__(range(num_samples), plan_sampler, steps_per_epoch, num_epochs, seed)
        self.pad = pad
        self.hflip = hflip
        self.random_crop = random_crop

    def __getitems__(self, request: ShardRequest) -> MimoBatch:
        if not isinstance(request, ShardRequest):
            raise TypeError(f'{type(self).__name__} loads ShardRequest batches, got {type(request).__name__}')
        generator = torch.Generator().manual_seed(
            augmentation_seed(self.seed, request.epoch, request.step, request.shard))
        count = len(request)
        if self.random_crop:
            offsets = torch.randint(0, 2 * self.pad + 1, (count, 2), generator=generator)  # every copy its own crop
        else:
            offsets = torch.full((count, 2), self.pad, dtype=torch.long)
        flips = torch.rand(count, generator=generator) < self.hflip
        draws = DeviceDraws(torch.tensor(list(request), dtype=torch.long), offsets, flips, request.num_partners)
        return MimoBatch(None, None, plan=self._plan(request), draws=draws)


class DeviceImages:
    """A data set decoded once into uint8 tensors on the device, augmented there (the CIFAR recipe).

    Pad-crop and flip are one gather from the zero-padded images (``offsets`` and ``flips`` per image, drawn in the
    loader workers), normalisation one fused multiply-add; a batch costs a few kernels and no host work.

    Args:
        images: ``(N, C, H, W)`` uint8.
        targets: ``(N,)`` labels.
        pad: Zero padding of the random crop (papers: 4).
        mean: Per-channel mean in [0, 1].
        std: Per-channel std in [0, 1].
        device: Where the images live.
    """

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, pad: int, mean: Sequence[float],
                 std: Sequence[float], device: Union[str, torch.device]):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f'expected (N, C, H, W) uint8 images, got {tuple(images.shape)} {images.dtype}')
        self.device = torch.device(device)
        self.pad = pad
        self.size = tuple(images.shape[-2:])
        self.padded = torch.nn.functional.pad(images, (pad, pad, pad, pad)).to(self.device)
        self.targets = targets.long().to(self.device)
        channels = images.shape[1]
        self.scale = (1.0 / (255.0 * torch.tensor(std, dtype=torch.float32))).view(1, channels, 1, 1).to(self.device)
        self.shift = (-torch.tensor(mean, dtype=torch.float32) / torch.tensor(std, dtype=torch.float32)).view(
            1, channels, 1, 1).to(self.device)

    def __len__(self) -> int:
        return self.padded.shape[0]

    def compile(self, backend: Union[str, Callable] = 'inductor', mode: Optional[str] = None) -> None:
        """Compile :meth:`augment` (one graph for the gather, flip and normalisation instead of a dozen kernels)."""
        self.augment = torch.compile(self._augment, backend=backend, mode=mode)

    def augment(self, draws: DeviceDraws) -> Tuple[torch.Tensor, torch.Tensor]:
        """Normalised float images ``(N, C, H, W)`` and labels of the drawn indices, crops and flips."""
        return self._augment(draws)

    def _augment(self, draws: DeviceDraws) -> Tuple[torch.Tensor, torch.Tensor]:
        height, width = self.size
        rows = draws.offsets[:, 0, None] + torch.arange(height, device=self.device)  # (N, H)
        cols = torch.arange(width, device=self.device)
        cols = torch.where(draws.flips[:, None], width - 1 - cols, cols) + draws.offsets[:, 1, None]  # (N, W)
        channels = torch.arange(self.padded.shape[1], device=self.device)
        crops = self.padded[draws.indices[:, None, None, None], channels[None, :, None, None], rows[:, None, :, None],
                            cols[:, None, None, :]]
        return torch.addcmul(self.shift, crops.float(), self.scale), self.targets[draws.indices]

    def batches(self, batch_size: int, indices: Optional[Sequence[int]] = None
                ) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """Normalised centre crops (no augmentation) and labels, ``batch_size`` at a time, in ``indices`` order."""
        order = torch.arange(len(self), device=self.device) if indices is None else torch.as_tensor(
            list(indices), dtype=torch.long).to(self.device)
        height, width, pad = *self.size, self.pad
        for start in range(0, order.numel(), batch_size):
            chunk = order[start:start + batch_size]
            crops = self.padded[chunk, :, pad:pad + height, pad:pad + width]
            yield torch.addcmul(self.shift, crops.float(), self.scale), self.targets[chunk]


def augment_draws(batch: MimoBatch, device_images: DeviceImages, channels_last: bool = False) -> MimoBatch:
    """A batch of device draws (on the device) as images and labels: the shard's, then its partners'."""
    images, targets = device_images.augment(batch.draws)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    cut = images.shape[0] - batch.draws.num_partners
    partners = (images[cut:], targets[cut:]) if batch.draws.num_partners else (None, None)
    return replace(batch, images=images[:cut], targets=targets[:cut], partner_images=partners[0],
                   partner_targets=partners[1], draws=None)


@dataclass
class DrawBlock:
    """The packed draws of consecutive shards of one epoch (:class:`DeviceDrawBlocks`' item).

    Attributes:
        epoch: The epoch.
        block: Which block of the epoch (from 0).
        buffer: ``(S, W)`` uint8: row s holds shard s's :class:`PackedBatch` buffer (zero-padded to the widest).
        skeletons: Each shard's batch with its tensors replaced by their slots in its row.
    """
    epoch: int
    block: int
    buffer: torch.Tensor
    skeletons: List[Any]

    def pin_memory(self) -> 'DrawBlock':
        """The buffer page-locked (``DataLoader(pin_memory=True)`` calls this in its pinning thread)."""
        return replace(self, buffer=self.buffer.pin_memory())

    def to(self, device: torch.device, non_blocking: bool = False) -> 'DrawBlock':
        """The buffer on ``device``: one copy for the whole block."""
        return replace(self, buffer=self.buffer.to(device, non_blocking=non_blocking))

    def batches(self) -> Iterator[Any]:
        """Every shard's batch, its tensors views of the buffer (no copy, no kernel): shards that share a layout
        (all of them, normally) are cut from per-slot views of the whole block made once."""
        views: Dict[_Slot, torch.Tensor] = {}
        rows = self.buffer.shape[0]

        def column(slot: _Slot) -> torch.Tensor:
            if slot not in views:  # (S, *shape) view of every row's bytes at this slot
                block = self.buffer[:, slot.offset:slot.offset + slot.nbytes]
                views[slot] = block.view(slot.dtype).view(rows, *slot.shape)
            return views[slot]

        for row, skeleton in enumerate(self.skeletons):
            yield _replace_tensors(skeleton, lambda slot, row=row: column(slot)[row])


class DeviceDrawBlocks(Dataset):
    """The draws of a :class:`DeviceShardDataset`, a block of consecutive optimizer steps at a time (for one loader
    worker): item ``(epoch, block)`` is a :class:`DrawBlock` of the shards ``sampler`` yields for this process in
    steps ``[block · steps_per_block, (block + 1) · steps_per_block)`` of ``epoch``.

    Every shard is drawn by :meth:`DeviceShardDataset.__getitems__` from its own (seed, epoch, step, shard) generators,
    as the per-step loader draws it: the same batches, so DDP still equals gradient accumulation and a resumed run
    repeats the interrupted one.

    Args:
        shards: Draws one shard (indices, crops, flips, plan).
        sampler: The batch-repetition sampler (``timm_mimo.data.BatchRepeatSampler``); copied, not changed.
        steps_per_block: Optimizer steps per block.
    """

    def __init__(self, shards: DeviceShardDataset, sampler: Any, steps_per_block: int):
        self.shards = shards
        self.sampler = copy.copy(sampler)
        self.steps_per_block = steps_per_block

    def __len__(self) -> int:
        return -(-self.sampler.steps_per_epoch // self.steps_per_block)

    def __getitem__(self, key: Tuple[int, int]) -> DrawBlock:
        epoch, block = key
        self.sampler.set_epoch(epoch)
        per_step = self.sampler.grad_accum_steps
        first = block * self.steps_per_block * per_step
        last = min((block + 1) * self.steps_per_block, self.sampler.steps_per_epoch) * per_step
        packed = [pack_batch(self.shards.__getitems__(request))
                  for request in itertools.islice(iter(self.sampler), first, last)]
        buffer = torch.zeros(len(packed), max(p.buffer.numel() for p in packed), dtype=torch.uint8)
        for row, batch in enumerate(packed):
            buffer[row, :batch.buffer.numel()] = batch.buffer
        return DrawBlock(epoch, block, buffer, [batch.skeleton for batch in packed])


class _BlockOrder:
    """``(epoch, block)`` from ``(first_epoch, 0)`` on, without end (a loader's sampler)."""

    def __init__(self, first_epoch: int, blocks_per_epoch: int):
        self.first_epoch = first_epoch
        self.blocks_per_epoch = blocks_per_epoch

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        for epoch in itertools.count(self.first_epoch):
            for block in range(self.blocks_per_epoch):
                yield epoch, block


class DeviceDrawBatches:
    """``--device-data`` training batches: an epoch's draws made ahead in blocks, one copy each, views per step.

    The loader workers draw the next epoch (indices, crops, flips and MIMO plans of every shard,
    :class:`DeviceDrawBlocks`) while the current one trains, each worker a block of consecutive steps (an epoch split
    among the workers, in blocks of at most ``max_block_bytes``); a block arrives pinned, is copied to the device in one
    transfer, and each step's shards are views of it augmented on the device (:func:`augment_draws`). A step thus does
    no loader hand-off, no host-to-device copy and no sampler work; the batches are those of the per-step loader over
    :class:`DeviceShardDataset`, in the same order. Iterate once per epoch after ``sampler.set_epoch(epoch)``, as a
    DataLoader.

    Args:
        shards: Draws one shard.
        sampler: The batch-repetition sampler (its ``epoch`` says which epoch an iteration yields).
        device_images: The images the draws index.
        channels_last: Hand over channels-last images.
        num_workers: 0: blocks are drawn in the main process when needed; otherwise the workers draw one block each
            ahead (``prefetch_factor`` 1: about an epoch ahead).
        pin_memory: Page-lock the blocks (asynchronous copies to a GPU).
        max_block_bytes: Largest block buffer (blocks hold whole steps).
    """

    def __init__(self, shards: DeviceShardDataset, sampler: Any, device_images: DeviceImages,
                 channels_last: bool = False, num_workers: int = 1, pin_memory: bool = False,
                 max_block_bytes: int = 512 * 2 ** 20):
        self.sampler = sampler
        self.device_images = device_images
        self.channels_last = channels_last
        first = copy.copy(sampler)
        first.set_epoch(0)
        shard_bytes = pack_batch(shards.__getitems__(next(iter(first)))).buffer.numel()
        step_bytes = shard_bytes * sampler.grad_accum_steps
        steps = sampler.steps_per_epoch
        # an epoch split among the workers (they draw its blocks side by side), within the size cap
        self.steps_per_block = max(1, min(-(-steps // max(num_workers, 1)), max_block_bytes // step_bytes))
        self.blocks = DeviceDrawBlocks(shards, sampler, self.steps_per_block)
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.collate_fn: Callable[[Any], Any] = keep_batch  # applied to each block in the worker
        self.loader: Optional[DataLoader] = None
        self._stream: Optional[Iterator[DrawBlock]] = None
        self._next_block: Optional[Tuple[int, int]] = None

    def __len__(self) -> int:
        return len(self.sampler)

    def _restart(self, epoch: int) -> None:
        """A new loader whose workers draw blocks from ``(epoch, 0)`` on."""
        self._stream = None  # the old loader's workers end with its iterator
        self.loader = DataLoader(self.blocks, batch_size=None, sampler=_BlockOrder(epoch, len(self.blocks)),
                                 num_workers=self.num_workers, collate_fn=self.collate_fn, pin_memory=self.pin_memory,
                                 prefetch_factor=1 if self.num_workers else None,
                                 worker_init_fn=quiet_worker_signals)
        self._stream = iter(self.loader)
        self._next_block = (epoch, 0)

    def __iter__(self) -> Iterator[MimoBatch]:
        epoch = self.sampler.epoch
        if self._next_block != (epoch, 0):  # first epoch, a jump (resume, benchmark) or an epoch left half-way
            self._restart(epoch)
        device = self.device_images.device
        for index in range(len(self.blocks)):
            block = next(self._stream)
            if (block.epoch, block.block) != (epoch, index):
                raise RuntimeError(f'device draws out of order: got block {block.block} of epoch {block.epoch}, '
                                   f'expected {index} of {epoch}')
            self._next_block = (epoch, index + 1) if index + 1 < len(self.blocks) else (epoch + 1, 0)
            for batch in block.to(device, non_blocking=True).batches():
                yield augment_draws(batch, self.device_images, self.channels_last)


class Prefetcher:
    """Iterates a loader one batch ahead with the next batch's copies and normalisation already issued.

    On CUDA the copies (from pinned memory, ``non_blocking``) and the uint8 -> float normalisation run on a side
    stream; the consumer's stream waits for them only when the batch is handed over. On a CPU device the same
    preparation runs inline. Batches are :class:`MimoBatch` es or ``(images, targets)`` pairs.

    Args:
        loader: The data loader.
        device: Where the step runs.
        mean: Per-channel mean in [0, 1] (uint8 images are normalised with it; ``None``: images are used as they are).
        std: Per-channel std in [0, 1].
        channels_last: Hand over channels-last images.
        random_erasing: Optional callable on the normalised ``(B, C, H, W)`` images (timm's ``RandomErasing``).
        device_images: The :class:`DeviceImages` that ``draws`` batches are cut from.
    """

    def __init__(self, loader: Any, device: torch.device, mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None, channels_last: bool = False,
                 random_erasing: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                 device_images: Optional[DeviceImages] = None):
        self.loader = loader
        self.device = torch.device(device)
        self.channels_last = channels_last
        self.random_erasing = random_erasing
        self.device_images = device_images
        self.scale = self.shift = None
        if mean is not None:
            std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
            self.scale = (1.0 / (255.0 * std_t)).to(self.device)
            self.shift = (-torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) / std_t).to(self.device)

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def sampler(self) -> Any:
        return getattr(self.loader, 'batch_sampler', None) or getattr(self.loader, 'sampler', None)

    def _images(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True)
        if images.dtype == torch.uint8 and self.scale is not None:
            images = torch.addcmul(self.shift, images.float(), self.scale)
        if self.random_erasing is not None:
            images = self.random_erasing(images)
        if self.channels_last and images.ndim == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def prepare(self, batch: Any) -> Any:
        """One batch on the device, normalised (on the current stream)."""
        if isinstance(batch, PackedBatch):
            batch = batch.to(self.device, non_blocking=True).unpack()
        if isinstance(batch, MimoBatch):
            moved = batch.to(self.device, non_blocking=True)
            if moved.draws is not None:
                if self.device_images is None:
                    raise ValueError('a batch of device draws needs the DeviceImages it indexes')
                return augment_draws(moved, self.device_images, self.channels_last)
            partners = None if moved.partner_images is None else self._images(moved.partner_images)
            return replace(moved, images=self._images(moved.images), partner_images=partners)
        images, targets = batch[0], batch[1]
        return (self._images(images), targets.to(self.device, non_blocking=True), *batch[2:])

    def __iter__(self) -> '_Prefetching':
        """An iterator that has already started the loader and issued the first batch's copies."""
        return _Prefetching(self)


class _Prefetching:
    """One pass of a :class:`Prefetcher`: batch k is handed over while batch k + 1's copies are in flight."""

    def __init__(self, prefetcher: Prefetcher):
        self.prefetcher = prefetcher
        self.stream = torch.cuda.Stream(prefetcher.device) if prefetcher.device.type == 'cuda' else None
        self.batches = iter(prefetcher.loader)
        self.ready = self._issue()

    def _issue(self) -> Optional[Any]:
        """Start the next batch's copies and normalisation (on the side stream); ``None`` at the end."""
        batch = next(self.batches, None)
        if batch is None:
            return None
        with torch.cuda.stream(self.stream) if self.stream is not None else nullcontext():
            return self.prefetcher.prepare(batch)

    def __iter__(self) -> '_Prefetching':
        return self

    def __next__(self) -> Any:
        if self.ready is None:
            raise StopIteration
        batch = self._hand_over(self.ready)
        self.ready = self._issue()
        return batch

    def _hand_over(self, batch: Any) -> Any:
        """Make the consumer's stream wait for the side stream, and keep the batch's memory from being reused early."""
        if self.stream is None:
            return batch
        current = torch.cuda.current_stream(self.prefetcher.device)
        current.wait_stream(self.stream)
        for tensor in _tensors(batch):
            tensor.record_stream(current)
        return batch


def _tensors(value: Any) -> List[torch.Tensor]:
    """Every tensor inside a batch (dataclasses, tuples, lists)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _tensors(item)]
    if hasattr(value, '__dataclass_fields__'):
        return [t for field in fields(value) for t in _tensors(getattr(value, field.name))]
    return []
