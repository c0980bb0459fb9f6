"""How far two CIFAR-10 image folders of the same layout are apart, pixel by pixel (e.g. the lossless PNG folder of
``scripts/cifar10_image_folder.py`` against a JPEG copy).

    python results/cifar10_compare_copies.py --reference data/cifar10 --other cifar10-jpeg --split test

Pairs ``<split>/<class>/NNNN.*`` files by class and number (any extension), and prints the number of pairs, the mean
absolute pixel error (in 0..255 units, over all pixels and channels), the PSNR range and the share of identical
images. Exit status 2 when the folders share no image.
"""
import argparse
import math
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image


def numbered_images(folder: str) -> Dict[Tuple[str, str], str]:
    """``(class, number) -> path`` of every image under ``folder/<class>/``."""
    out = {}
    for label in sorted(os.listdir(folder)):
        if os.path.isdir(os.path.join(folder, label)):
            for name in os.listdir(os.path.join(folder, label)):
                out[label, os.path.splitext(name)[0]] = os.path.join(folder, label, name)
    return out


def psnr(reference: np.ndarray, other: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 images (``inf`` when identical)."""
    mse = float(np.mean((reference.astype(np.float64) - other.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def compare(reference: str, other: str) -> Optional[Dict[str, float]]:
    """Pixel statistics of the images the two folders share (``None`` when they share none)."""
    first, second = numbered_images(reference), numbered_images(other)
    keys = sorted(set(first) & set(second))
    if not keys:
        return None
    errors: List[float] = []
    ratios: List[float] = []
    for key in keys:
        a = np.asarray(Image.open(first[key]).convert('RGB'))
        b = np.asarray(Image.open(second[key]).convert('RGB'))
        errors.append(float(np.mean(np.abs(a.astype(np.int16) - b.astype(np.int16)))))
        ratios.append(psnr(a, b))
    finite = [r for r in ratios if math.isfinite(r)]
    return dict(images=len(keys), mean_abs_error=sum(errors) / len(errors),
                psnr_min=min(finite) if finite else math.inf, psnr_max=max(finite) if finite else math.inf,
                identical=sum(1 for r in ratios if not math.isfinite(r)) / len(ratios))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--reference', required=True, help='image folder with <split>/<class>/NNNN.* (e.g. PNG)')
    parser.add_argument('--other', required=True, help='the folder compared with it (e.g. a JPEG copy)')
    parser.add_argument('--split', default='test')
    args = parser.parse_args(argv)
    folders = [os.path.join(args.reference, args.split), os.path.join(args.other, args.split)]
    for folder in folders:
        if not os.path.isdir(folder):
            print(f'error: {folder!r} is not a folder', file=sys.stderr)
            return 2
    stats = compare(*folders)
    if stats is None:
        print(f'error: {folders[0]!r} and {folders[1]!r} share no <class>/<number> image', file=sys.stderr)
        return 2
    print(f"{stats['images']} images: mean absolute pixel error {stats['mean_abs_error']:.2f} / 255, PSNR "
          f"{stats['psnr_min']:.1f}-{stats['psnr_max']:.1f} dB, identical {100 * stats['identical']:.0f} %")
    return 0


if __name__ == '__main__':
    sys.exit(main())
