"""Loader family: the multi-input loader (batch repetition + pairing) vs timm's plain loader, images per second.

``python benchmark.py loader [--data-dir data] [-b 128] [--batch-repeat 2] [--workers 2]``. Both loaders read the same
data set (Fashion-MNIST from ``--data-dir`` when present, else sklearn digits) with the same CIFAR-style transform;
they are timed in alternating rounds in one process. The multi-input side does everything train.py does before the
forward: :class:`~timm_mimo.data.BatchRepeatSampler` (b copies, each augmented on its own) and
:func:`~timm_mimo.data.pair_inputs` into ``(B, M, C, H, W)``; the plain side reads its batch once (a copy), as any
consumer must. Target: ratio >= 0.95.
"""
import argparse
import os
import tempfile
from typing import Callable, Tuple

import torch
from timm.data import create_loader
from torch.utils.data import DataLoader, Dataset

from benchmarks.common import interleaved_throughput, print_table
from timm_mimo.data import BatchRepeatSampler, cifar_transform, open_dataset, pair_inputs

TARGET_RATIO = 0.95


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of the loader family."""
    parser.add_argument('--data-dir', default='data', help='root holding FashionMNIST/raw (else sklearn digits)')
    parser.add_argument('-b', '--batch-size', type=int, default=128)
    parser.add_argument('--batch-repeat', type=int, default=2)
    parser.add_argument('--num-members', type=int, default=2)
    parser.add_argument('--workers', type=int, default=2)
    parser.add_argument('--rounds', type=int, default=5)
    parser.add_argument('--min-seconds', type=float, default=2.0)
    parser.add_argument('--partners', action='store_true',
                        help='also load B pixel-MSDA partners per batch (what --mimo-cutmix / --mimo-mixup do)')


def _datasets(data_dir: str) -> Tuple[str, Callable[[], Dataset], int]:
    """Name, dataset factory and image size: Fashion-MNIST if unpacked under ``data_dir``, else sklearn digits."""
    if os.path.isfile(os.path.join(data_dir, 'FashionMNIST', 'raw', 'train-images-idx3-ubyte')):
        return 'Fashion-MNIST', lambda: open_dataset('torch/fashion_mnist', data_dir, 'train', True), 32
    from PIL import Image
    from sklearn.datasets import load_digits
    root = tempfile.mkdtemp(prefix='digits-')
    digits = load_digits()
    for i, (image, label) in enumerate(zip(digits.images, digits.target)):
        folder = os.path.join(root, 'train', str(label))
        os.makedirs(folder, exist_ok=True)
        Image.fromarray((image * 16).clip(0, 255).astype('uint8'), mode='L').save(os.path.join(folder, f'{i}.png'))
    return 'sklearn digits', lambda: open_dataset('', root, 'train', True), 8


def _endless(loader_factory: Callable[[], object], step: Callable[[object], None]) -> Callable[[], None]:
    """A zero-argument callable consuming one batch per call, restarting the loader at the end of an epoch."""
    state = {'iter': iter(loader_factory())}

    def call() -> None:
        try:
            batch = next(state['iter'])
        except StopIteration:
            state['iter'] = iter(loader_factory())
            batch = next(state['iter'])
        step(batch)
    return call


def run(args: argparse.Namespace) -> None:
    """Measure both loaders side by side and print the table."""
    name, make_dataset, img_size = _datasets(args.data_dir)
    transform = cifar_transform((1, img_size, img_size), mean=(0.5,), std=(0.5,), crop_pad=4)
    plain_set, mimo_set = make_dataset(), make_dataset()
    plain = create_loader(plain_set, input_size=(1, img_size, img_size), batch_size=args.batch_size, is_training=True,
                          use_prefetcher=False, num_workers=args.workers, persistent_workers=args.workers > 0)
    plain_set.transform = transform  # the same per-image work on both sides
    num_partners = args.batch_size if args.partners else 0
    sampler = BatchRepeatSampler(len(mimo_set), args.batch_size, args.batch_repeat, seed=0, num_partners=num_partners)
    mimo_set.transform = transform
    mimo = DataLoader(mimo_set, batch_sampler=sampler, num_workers=args.workers, persistent_workers=args.workers > 0)
    generator = torch.Generator().manual_seed(0)
    epochs = {'n': 0}

    def mimo_loader() -> DataLoader:
        sampler.set_epoch(epochs['n'])
        epochs['n'] += 1
        return mimo

    def read_batch(batch: Tuple[torch.Tensor, torch.Tensor]) -> None:
        # a consumer reads the pixels once (the first read of a worker's shared-memory batch pays its page faults)
        batch[0].clone()

    def pair(batch: Tuple[torch.Tensor, torch.Tensor]) -> None:
        images, targets = batch[0][:args.batch_size], batch[1][:args.batch_size]  # partners follow the batch
        pair_inputs(images, targets, args.num_members, 0.0, generator)

    rates = interleaved_throughput(
        {'timm create_loader': _endless(lambda: plain, read_batch),
         f'multi-input (b={args.batch_repeat}, M={args.num_members}{", + B partners" if num_partners else ""})':
            _endless(mimo_loader, pair)},
        items_per_call=args.batch_size, rounds=args.rounds, min_seconds=args.min_seconds)
    base = rates['timm create_loader']
    rows = [dict(loader=k, images_per_s=v, ratio=v / base) for k, v in rates.items()]
    print(f'Loader throughput on {name} ({img_size} px, batch {args.batch_size}, {args.workers} workers, '
          f'best of {args.rounds} alternating rounds)')
    print_table(rows, ['loader', 'images_per_s', 'ratio'])
    ratio = rows[-1]['ratio']
    if num_partners:
        print(f'multi-input with partners / plain = {ratio:.3f} (reads 2B images per batch of B: no target)')
        return
    verdict = 'PASS' if ratio >= TARGET_RATIO else 'FAIL'
    print(f'multi-input / plain = {ratio:.3f} (target >= {TARGET_RATIO}): {verdict}')
