"""The command lines' data path: datasets, transforms, loaders and the device prefetcher (see :mod:`timm_mimo.loader`).

Training reads a :class:`~timm_mimo.data.BatchRepeatSampler` through a :class:`~timm_mimo.loader.ShardDataset`
(persistent workers load the images and draw each shard's MIMO plan), or with ``--device-data`` a
:class:`~timm_mimo.loader.DeviceImages` copy of the whole split kept on the device, cut into batches by draws made an
epoch ahead (:class:`~timm_mimo.loader.DeviceDrawBatches`); evaluation reads its share of the validation split in
order. Loaded images go through a :class:`~timm_mimo.loader.Prefetcher` unless ``--no-prefetcher``: uint8 images
from pinned memory, copied without blocking on a side stream and normalised on the device, as timm's
``PrefetchLoader`` does.
"""
import argparse
import logging
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch
from timm.data.random_erasing import RandomErasing
from torch.utils.data import DataLoader, Dataset, Subset

from timm_mimo.cli.args import CliError, one_line, reader_kwargs
from timm_mimo.data import (
    BatchRepeatSampler,
    DataError,
    apply_class_names,
    channel_stats,
    create_image_transform,
    dataset_class_names,
    dataset_num_classes,
    eval_transform,
    open_dataset,
)
from timm_mimo.loader import (
    DeviceDrawBatches,
    DeviceImages,
    DeviceShardDataset,
    Prefetcher,
    ShardDataset,
    pack_batch,
    quiet_worker_signals,
)
from timm_mimo.task import MimoTask

__all__ = ['TrainData', 'open_train_split', 'open_train_data', 'open_eval_split', 'create_train_loader',
           'create_eval_loader', 'device_batches', 'pin_memory',
           'load_device_images', 'DEVICE_DATA_REFUSED']

_logger = logging.getLogger('train')

# training options that the device-resident data path cannot apply (it does the CIFAR recipe: pad-crop, flip)
DEVICE_DATA_REFUSED = (('aa', None, '--aa'), ('reprob', 0.0, '--reprob'))


def pin_memory(args: argparse.Namespace, device: torch.device) -> bool:
    """``--pin-mem``: on by default on CUDA (non-blocking copies need page-locked memory), ``--no-pin-mem`` off."""
    return device.type == 'cuda' if args.pin_mem is None else bool(args.pin_mem)


def _normalized_on_device(args: argparse.Namespace) -> bool:
    """uint8 images from the workers, normalised by the prefetcher (timm's ``use_prefetcher``)."""
    return not args.no_prefetcher


@dataclass
class TrainData:
    """The opened training split, its batch sampler and the run's class names (``None``: the split names none)."""
    dataset: Dataset
    sampler: BatchRepeatSampler
    num_classes: Optional[int]
    class_names: Optional[List[Optional[str]]] = None


def open_train_split(args: argparse.Namespace) -> Dataset:
    """The training split labelled by the run's classes (``--class-names``), without its transform yet: opened before
    the model, whose head it sizes when ``--num-classes`` is unset (:func:`open_train_data` sets the transform)."""
    dataset = open_dataset(args.dataset, args.data_dir, args.train_split, True, args.dataset_download, None,
                           args.class_map, args.class_map_partial, **reader_kwargs(args))
    names = apply_class_names(dataset, args.class_names,
                              f'the training split {args.train_split!r} (against --class-names)')
    if names is not None:
        dataset.class_names = names
    return dataset


def open_train_data(args: argparse.Namespace, data_config: Dict[str, Any], num_partners: int,
                    dataset: Optional[Dataset] = None) -> TrainData:
    """The training split (with its augmentation; ``dataset``: the one :func:`open_train_split` opened) and the
    batch-repetition sampler (steps per epoch)."""
    timm_kwargs = dict(auto_augment=args.aa, re_prob=args.reprob, re_mode=args.remode, re_count=args.recount)
    train_config = dict(data_config)
    if args.crop_pad is None:
        timm_kwargs.update(train_crop_mode=args.train_crop_mode, scale=args.scale, ratio=args.ratio, vflip=args.vflip,
                           color_jitter=args.color_jitter, color_jitter_prob=args.color_jitter_prob,
                           grayscale_prob=args.grayscale_prob or 0., gaussian_blur_prob=args.gaussian_blur_prob or 0.)
        if args.train_interpolation and not args.no_aug:
            train_config['interpolation'] = args.train_interpolation
    try:
        if args.device_data:  # decoded once, unaugmented: the device applies the recipe
            transform = eval_transform(data_config['input_size'], data_config['mean'], data_config['std'],
                                       normalize=False)
        else:
            transform = create_image_transform(train_config, True, args.crop_pad, args.hflip, args.no_aug,
                                               normalize=not _normalized_on_device(args), **timm_kwargs)
    except (ValueError, TypeError, AssertionError) as exc:
        raise CliError(f'cannot build the image transforms: {one_line(exc)}') from None
    if dataset is None:
        dataset = open_train_split(args)
    dataset.transform = transform
    class_names = dataset_class_names(dataset)
    try:
        sampler = BatchRepeatSampler(len(dataset), args.batch_size, args.batch_repeat, args.world_size, args.rank,
                                     args.grad_accum_steps, args.seed, num_partners)
    except ValueError as exc:
        raise CliError(f'-b {args.batch_size} / --batch-repeat {args.batch_repeat} / --grad-accum-steps '
                       f'{args.grad_accum_steps}: {one_line(exc)}') from None
    return TrainData(dataset, sampler, dataset_num_classes(dataset), class_names)


def _random_erasing(args: argparse.Namespace, device: torch.device) -> Optional[RandomErasing]:
    """timm's random erasing on the normalised device batch (the prefetcher's place for it, as in timm)."""
    if args.reprob <= 0 or args.no_aug:
        return None
    return RandomErasing(args.reprob, mode=args.remode, max_count=args.recount, device=device)


def _loader_kwargs(args: argparse.Namespace, device: torch.device) -> Dict[str, Any]:
    workers = args.workers
    return dict(num_workers=workers, pin_memory=pin_memory(args, device), persistent_workers=workers > 0,
                prefetch_factor=4 if workers > 0 else None, worker_init_fn=quiet_worker_signals)


def load_device_images(dataset: Dataset, args: argparse.Namespace, data_config: Dict[str, Any],
                       device: torch.device) -> DeviceImages:
    """Decode a whole split once (the loader's workers) into uint8 ``(N, C, H, W)`` and keep it on ``device``."""
    loader = DataLoader(dataset, batch_size=512, shuffle=False, num_workers=args.workers,
                        worker_init_fn=quiet_worker_signals)
    images, targets = [], []
    try:
        for batch_images, batch_targets in loader:
            images.append(batch_images)
            targets.append(batch_targets)
    except RuntimeError as exc:  # default_collate: images of different sizes cannot be stacked
        raise CliError(f'--device-data: cannot stack the split into one uint8 tensor ({one_line(exc, 200)}); it '
                       'needs images of one size (CIFAR, Tiny ImageNet)') from None
    pad = args.crop_pad or 0
    in_chans = data_config['input_size'][0]
    return DeviceImages(torch.cat(images), torch.cat(targets), pad, channel_stats(data_config['mean'], in_chans),
                        channel_stats(data_config['std'], in_chans), device)


def create_train_loader(args: argparse.Namespace, data: TrainData, task: MimoTask, num_epochs: int,
                        device: torch.device, data_config: Dict[str, Any]) -> Iterable[Any]:
    """The training batches: :class:`~timm_mimo.loader.MimoBatch` es on ``device``, plans drawn in the workers (with
    ``--device-data`` an epoch ahead, in blocks)."""
    image_size = tuple(data_config['input_size'][-2:])
    plan_sampler = task.plan_sampler(image_size) if task.mimo else None
    steps = data.sampler.steps_per_epoch
    in_chans = data_config['input_size'][0]
    mean, std = channel_stats(data_config['mean'], in_chans), channel_stats(data_config['std'], in_chans)
    if args.device_data:
        device_images = load_device_images(data.dataset, args, data_config, device)
        if args.torchcompile:
            device_images.compile(args.torchcompile, args.torchcompile_mode)
        hflip = 0.0 if args.no_aug else args.hflip
        draws = DeviceShardDataset(len(data.dataset), device_images.pad, hflip, plan_sampler, steps, num_epochs,
                                   args.seed, random_crop=not args.no_aug)
        if args.no_prefetcher and args.rank == 0:
            _logger.info('--device-data: the training batches are cut on the device from draws made an epoch ahead; '
                         '--no-prefetcher has no copy to leave unprefetched there')
        return DeviceDrawBatches(draws, data.sampler, device_images, args.channels_last, args.workers,
                                 pin_memory(args, device))
    shards = ShardDataset(data.dataset, plan_sampler, steps, num_epochs, args.seed)
    loader = DataLoader(shards, batch_sampler=data.sampler, collate_fn=pack_batch, **_loader_kwargs(args, device))
    if args.no_prefetcher:
        return _MovedBatches(loader, device, args.channels_last)
    return Prefetcher(loader, device, mean, std, args.channels_last, _random_erasing(args, device))


def open_eval_split(args: argparse.Namespace, transform: Any,
                    class_names: Optional[List[Optional[str]]] = None) -> Dataset:
    """The validation split (``--val-split``) labelled by ``class_names`` (the run's); its classes must be some of
    them."""
    try:
        dataset = open_dataset(args.dataset, args.data_dir, args.val_split, False, args.dataset_download, transform,
                               args.class_map, args.class_map_partial, **reader_kwargs(args))
    except DataError as exc:
        raise DataError(f"{exc} (--val-split '' trains without evaluation)") from None
    apply_class_names(dataset, class_names, f'the validation split {args.val_split!r} in {args.data_dir!r}')
    return dataset


def create_eval_loader(args: argparse.Namespace, data_config: Dict[str, Any], device: torch.device,
                       class_names: Optional[List[Optional[str]]] = None) -> Tuple[Optional[Iterable[Any]], int]:
    """This rank's share of the validation split (indices ``rank::world``) in order, and the split's size; the split
    is labelled by ``class_names`` (the run's, :func:`timm_mimo.data.apply_class_names`)."""
    if not args.val_split:
        return None, 0
    normalize = not _normalized_on_device(args) and not args.device_data
    try:
        transform = create_image_transform(data_config, False, args.crop_pad, normalize=normalize)
    except (ValueError, TypeError, AssertionError) as exc:
        raise CliError(f'cannot build the image transforms: {one_line(exc)}') from None
    dataset = open_eval_split(args, transform, class_names)
    num_eval = len(dataset)
    rank_indices = list(range(args.rank, num_eval, args.world_size))
    batch_size = args.validation_batch_size or args.batch_size
    if args.device_data:
        images = load_device_images(dataset, args, data_config, device)
        return _DeviceEvalBatches(images, batch_size, rank_indices, args.channels_last), num_eval
    shard = Subset(dataset, rank_indices)
    loader = DataLoader(shard, batch_size=batch_size, shuffle=False, **_loader_kwargs(args, device))
    return device_batches(loader, args, data_config, device), num_eval


def device_batches(loader: DataLoader, args: argparse.Namespace, data_config: Dict[str, Any],
                   device: torch.device) -> Iterable[Any]:
    """An evaluation loader's ``(images, targets)`` on ``device``: prefetched and normalised there (uint8 images from
    the workers), or with ``--no-prefetcher`` moved as they come (images normalised by the workers)."""
    if args.no_prefetcher:
        return _MovedBatches(loader, device, args.channels_last)
    in_chans = data_config['input_size'][0]
    return Prefetcher(loader, device, channel_stats(data_config['mean'], in_chans),
                      channel_stats(data_config['std'], in_chans), args.channels_last)


class _MovedBatches:
    """``--no-prefetcher``: the loader's normalised batches moved to the device as they come (no side stream)."""

    def __init__(self, loader: DataLoader, device: torch.device, channels_last: bool):
        self.loader = loader
        self.prefetcher = Prefetcher(loader, device, channels_last=channels_last)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            yield self.prefetcher.prepare(batch)


class _DeviceEvalBatches:
    """``--device-data`` evaluation: centre crops of the validation split kept on the device."""

    def __init__(self, images: DeviceImages, batch_size: int, indices: Any, channels_last: bool):
        self.images = images
        self.batch_size = batch_size
        self.indices = indices
        self.channels_last = channels_last

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch_size)

    def __iter__(self):
        for images, targets in self.images.batches(self.batch_size, self.indices):
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            yield images, targets
