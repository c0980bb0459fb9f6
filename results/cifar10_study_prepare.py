"""Data of the CIFAR-10 study: a CIFAR-10 image folder (a per-class subset of the JPEG copy) and an OOD folder.

    python results/cifar10_study_prepare.py --tar cifar10-jpeg.tar.gz --out data/cifar10_study \
        --train-per-class 1000 --test-per-class 1000 --ood-fashion-mnist data --ood-images 2000

Writes ``<out>/train/<class>/`` and ``<out>/test/<class>/`` (the first N images of each class, in the archive's
order) and ``<out>/ood/`` (the first K Fashion-MNIST test images as PNG, read with torchvision from the raw files
that ``scripts/quickstart.sh`` unpacks under ``data/FashionMNIST/raw``).
"""
import argparse
import os
import sys
import tarfile
from collections import defaultdict


def extract_cifar10(tar_path: str, out: str, per_split: dict) -> dict:
    """The first ``per_split[split]`` images of every class of each split; returns the counts written."""
    counts = defaultdict(int)
    with tarfile.open(tar_path) as archive:
        members = sorted((m for m in archive.getmembers() if m.isfile() and m.name.endswith('.jpg')),
                         key=lambda m: m.name)
        for member in members:
            parts = member.name.split('/')  # cifar10/<split>/<class>/<NNNN>.jpg
            if len(parts) != 4 or parts[1] not in per_split:
                continue
            split, label = parts[1], parts[2]
            if counts[split, label] >= per_split[split]:
                continue
            folder = os.path.join(out, split, label)
            os.makedirs(folder, exist_ok=True)
            with archive.extractfile(member) as src, open(os.path.join(folder, parts[3]), 'wb') as dst:
                dst.write(src.read())
            counts[split, label] += 1
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
    parser.add_argument('--tar', required=True, help='cifar10-jpeg.tar.gz (cifar10/{train,test}/<class>/NNNN.jpg)')
    parser.add_argument('--out', required=True)
    parser.add_argument('--train-per-class', type=int, default=5000)
    parser.add_argument('--test-per-class', type=int, default=1000)
    parser.add_argument('--ood-fashion-mnist', default='data', help='root holding FashionMNIST/raw')
    parser.add_argument('--ood-images', type=int, default=2000)
    args = parser.parse_args()
    if not os.path.isfile(args.tar):
        print(f'error: CIFAR-10 archive {args.tar!r} does not exist', file=sys.stderr)
        return 2
    if not os.path.isfile(os.path.join(args.ood_fashion_mnist, 'FashionMNIST', 'raw', 't10k-images-idx3-ubyte')):
        print(f'error: no Fashion-MNIST under {args.ood_fashion_mnist!r}/FashionMNIST/raw (run scripts/quickstart.sh '
              'or pass --ood-fashion-mnist)', file=sys.stderr)
        return 2
    counts = extract_cifar10(args.tar, args.out, {'train': args.train_per_class, 'test': args.test_per_class})
    for split in ('train', 'test'):
        print(f'{split}: {sum(n for (s, _), n in counts.items() if s == split)} images')
    num_ood = write_fashion_mnist_ood(args.ood_fashion_mnist, os.path.join(args.out, 'ood'), args.ood_images)
    print(f'ood: {num_ood} Fashion-MNIST test images')
    return 0


if __name__ == '__main__':
    sys.exit(main())
