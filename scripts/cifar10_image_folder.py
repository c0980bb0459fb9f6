#!/usr/bin/env python3
"""CIFAR-10 as an image folder, written from torchvision's CIFAR-10 (the original pickled images, lossless PNG).

    python scripts/cifar10_image_folder.py --root data --out data/cifar10 --download

Reads torchvision's ``CIFAR10`` under ``--root`` (``<root>/cifar-10-batches-py``; ``--download`` fetches
``cifar-10-python.tar.gz`` from its home page when it is missing) and writes ``<out>/train/<class>/NNNN.png``
(5,000 per class) and ``<out>/test/<class>/NNNN.png`` (1,000 per class): NNNN numbers the images of each class in
the data set's order, the layout of the results' CIFAR-10 folders (``results/cifar10_study.sh``,
``results/cifar10_mixshare.sh``). ``--train-per-class`` / ``--test-per-class`` keep the first N of each class.

The same images are timm's ``--dataset torch/cifar10`` (``--dataset-download``): PNG keeps every pixel of the
original. ``<out>`` must not exist (or be empty); it is written in a temporary folder and renamed, so a failed run
leaves nothing behind.
"""
import argparse
import os
import shutil
import sys
import tempfile
from typing import Dict, Optional, Sequence

SPLITS = {'train': True, 'test': False}  # folder name -> torchvision's train flag
HOME_PAGE = 'https://www.cs.toronto.edu/~kriz/cifar.html'


def write_split(dataset, folder: str, per_class: Optional[int] = None) -> Dict[str, int]:
    """Every image of ``dataset`` (a torchvision ``CIFAR10``) as ``folder/<class>/NNNN.png``; the counts per class."""
    counts = {name: 0 for name in dataset.classes}
    for name in dataset.classes:
        os.makedirs(os.path.join(folder, name), exist_ok=True)
    for image, label in dataset:
        name = dataset.classes[label]
        if per_class is not None and counts[name] >= per_class:
            continue
        image.save(os.path.join(folder, name, f'{counts[name]:04d}.png'))
        counts[name] += 1
    return counts


def open_cifar10(root: str, train: bool, download: bool):
    """torchvision's CIFAR-10 split; a missing or failed download is a ``ValueError`` with the way out."""
    from torchvision.datasets import CIFAR10
    try:
        return CIFAR10(root, train=train, download=download)
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted"
        raise ValueError(f'no CIFAR-10 under {root!r} ({" ".join(str(exc).split())}): add --download, or put '
                         f"cifar-10-python.tar.gz ({HOME_PAGE}) unpacked in {root!r}") from None
    except OSError as exc:  # the download itself failed (no network)
        raise ValueError(f'cannot download CIFAR-10 into {root!r} ({type(exc).__name__}: '
                         f'{" ".join(str(exc).split())}): fetch cifar-10-python.tar.gz from {HOME_PAGE} elsewhere, '
                         f'unpack it in {root!r} and run again without --download') from None


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--root', required=True, help="torchvision's CIFAR-10 root (holds cifar-10-batches-py)")
    parser.add_argument('--out', required=True, help='image folder to write (new or empty)')
    parser.add_argument('--download', action='store_true', help="let torchvision fetch CIFAR-10 when it is missing")
    parser.add_argument('--train-per-class', type=int, default=None, help='keep the first N training images a class')
    parser.add_argument('--test-per-class', type=int, default=None, help='keep the first N test images a class')
    args = parser.parse_args(argv)
    for flag, value in (('--train-per-class', args.train_per_class), ('--test-per-class', args.test_per_class)):
        if value is not None and value < 1:
            print(f'error: {flag} {value}: must be an integer >= 1', file=sys.stderr)
            return 2
    if os.path.exists(args.out) and (not os.path.isdir(args.out) or os.listdir(args.out)):
        print(f'error: --out {args.out!r} exists and is not an empty folder; pick a new folder', file=sys.stderr)
        return 2
    try:
        datasets = {split: open_cifar10(args.root, train, args.download) for split, train in SPLITS.items()}
    except ValueError as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    parent = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f'.{os.path.basename(os.path.abspath(args.out))}.')
    try:
        for split, per_class in (('train', args.train_per_class), ('test', args.test_per_class)):
            counts = write_split(datasets[split], os.path.join(tmp, split), per_class)
            print(f'{split}: {sum(counts.values())} images, {len(counts)} classes')
        if os.path.isdir(args.out):
            os.rmdir(args.out)
        os.replace(tmp, args.out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
