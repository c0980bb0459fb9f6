"""Data of the CIFAR-10 study: a per-class subset of a CIFAR-10 image folder, and an OOD folder.

    python results/cifar10_study_prepare.py --cifar10 data/cifar10 --out data/cifar10_study \
        --train-per-class 1000 --test-per-class 1000 --ood-fashion-mnist data --ood-images 2000

``--cifar10`` is an image folder ``<folder>/{train,test}/<class>/NNNN.<ext>`` with NNNN the images' order within their
class: what ``scripts/cifar10_image_folder.py`` writes from torchvision's CIFAR-10 (PNG), or a JPEG copy in the same
layout. Writes ``<out>/train/<class>/`` and ``<out>/test/<class>/`` (the first N images of each class, by name) and
``<out>/ood/`` (the first K Fashion-MNIST test images as PNG, read with torchvision from the raw files that
``scripts/quickstart.sh`` unpacks under ``data/FashionMNIST/raw``).
"""
import argparse
import os
import shutil
import sys
from collections import defaultdict


def copy_cifar10(folder: str, out: str, per_split: dict) -> dict:
    """The first ``per_split[split]`` images (by name) of every class of each split; returns the counts copied."""
    counts = defaultdict(int)
    for split, per_class in per_split.items():
        for label in sorted(os.listdir(os.path.join(folder, split))):
            names = sorted(os.listdir(os.path.join(folder, split, label)))[:per_class]
            os.makedirs(os.path.join(out, split, label), exist_ok=True)
            for name in names:
                shutil.copyfile(os.path.join(folder, split, label, name), os.path.join(out, split, label, name))
            counts[split, label] = len(names)
    return counts


def write_fashion_mnist_ood(data_dir: str, out: str, num_images: int) -> int:
    """The first ``num_images`` Fashion-MNIST test images as PNG files under ``out``."""
    from torchvision.datasets import FashionMNIST
    dataset = FashionMNIST(data_dir, train=False, download=False)
    os.makedirs(out, exist_ok=True)
    for i in range(min(num_images, len(dataset))):
        dataset[i][0].save(os.path.join(out, f'{i:05d}.png'))
    return min(num_images, len(dataset))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--cifar10', required=True,
                        help='CIFAR-10 image folder with train/<class>/ and test/<class>/ (written by '
                             'scripts/cifar10_image_folder.py)')
    parser.add_argument('--out', required=True)
    parser.add_argument('--train-per-class', type=int, default=5000)
    parser.add_argument('--test-per-class', type=int, default=1000)
    parser.add_argument('--ood-fashion-mnist', default='data', help='root holding FashionMNIST/raw')
    parser.add_argument('--ood-images', type=int, default=2000)
    args = parser.parse_args()
    if not all(os.path.isdir(os.path.join(args.cifar10, split)) for split in ('train', 'test')):
        print(f'error: --cifar10 {args.cifar10!r} has no train/ and test/ folders (write it with '
              'scripts/cifar10_image_folder.py)', file=sys.stderr)
        return 2
    if not os.path.isfile(os.path.join(args.ood_fashion_mnist, 'FashionMNIST', 'raw', 't10k-images-idx3-ubyte')):
        print(f'error: no Fashion-MNIST under {args.ood_fashion_mnist!r}/FashionMNIST/raw (run scripts/quickstart.sh '
              'or pass --ood-fashion-mnist)', file=sys.stderr)
        return 2
    counts = copy_cifar10(args.cifar10, args.out, {'train': args.train_per_class, 'test': args.test_per_class})
    for split in ('train', 'test'):
        print(f'{split}: {sum(n for (s, _), n in counts.items() if s == split)} images')
    num_ood = write_fashion_mnist_ood(args.ood_fashion_mnist, os.path.join(args.out, 'ood'), args.ood_images)
    print(f'ood: {num_ood} Fashion-MNIST test images')
    return 0


if __name__ == '__main__':
    sys.exit(main())
