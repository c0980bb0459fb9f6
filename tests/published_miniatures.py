"""Faithful miniatures of the recipes' datasets as their publishers release them, written by the tests.

Same folder and file names, same annotation formats, the full class lists (200 Tiny ImageNet wnids, the 1,000
ImageNet wnids, CIFAR's 10 / 100 names), a few tiny images each. Class ``k`` of a miniature is painted in
:func:`class_colour` ``(k)``, so a label can be checked from the pixels.
"""
import functools
import io
import os
import pickle
from typing import List, Sequence

import numpy as np
from PIL import Image
from timm.data import ImageNetInfo

IMAGENET_WNIDS: List[str] = list(ImageNetInfo('imagenet-1k').label_names())
IMAGENET_WORDS = ImageNetInfo('imagenet-1k').label_descriptions(as_dict=True)
TINY_WNIDS = IMAGENET_WNIDS[::5][:200]  # 200 real wnids; listed in wnids.txt in reverse (not sorted) order
CIFAR10_NAMES = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']
CIFAR100_NAMES = [f'class_{i:03d}' for i in range(100)]  # sorted, as CIFAR-100's own names are


def class_colour(index: int) -> tuple:
    """A distinct RGB colour per class index (class 0 red, 1 green, 2 blue, then mixtures)."""
    base = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    if index < 3:
        return base[index]
    return ((index * 67) % 256, (index * 139) % 256, (index * 211) % 256)


@functools.cache
def _jpeg_bytes(colour: tuple, size: tuple) -> bytes:
    buffer = io.BytesIO()
    Image.new('RGB', size, colour).save(buffer, format='JPEG', quality=95)
    return buffer.getvalue()


def write_jpeg(path: str, colour: tuple, size=(16, 16)) -> None:
    """A one-colour JPEG (encoded once per colour and size)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'wb') as f:
        f.write(_jpeg_bytes(tuple(colour), tuple(size)))


def write_tiny_imagenet(root: str, wnids: Sequence[str] = TINY_WNIDS, train_per_class: int = 1,
                        size=(16, 16)) -> str:
    """``root/tiny-imagenet-200`` as released: wnids.txt, words.txt, train/<wnid>/images/<wnid>_<i>.JPEG (+
    <wnid>_boxes.txt), val/images/val_<i>.JPEG + val/val_annotations.txt, test/images/test_<i>.JPEG.

    ``wnids.txt`` lists ``wnids`` in the given order; the label of ``wnids[k]`` is k, painted ``class_colour(k)``.
    Validation image i belongs to class ``(i * 7) % len(wnids)`` (not in class order)."""
    top = os.path.join(root, 'tiny-imagenet-200')
    os.makedirs(top, exist_ok=True)
    with open(os.path.join(top, 'wnids.txt'), 'w') as f:
        f.write(''.join(f'{wnid}\n' for wnid in wnids))
    with open(os.path.join(top, 'words.txt'), 'w') as f:  # all of WordNet in the release: more lines than classes
        f.write('n00001740\tentity\n')
        f.write(''.join(f'{wnid}\t{IMAGENET_WORDS.get(wnid, wnid)}\n' for wnid in sorted(wnids)))
    for k, wnid in enumerate(wnids):
        boxes = []
        for i in range(train_per_class):
            name = f'{wnid}_{i}.JPEG'
            write_jpeg(os.path.join(top, 'train', wnid, 'images', name), class_colour(k), size)
            boxes.append(f'{name}\t0\t0\t{size[0] - 1}\t{size[1] - 1}\n')
        with open(os.path.join(top, 'train', wnid, f'{wnid}_boxes.txt'), 'w') as f:
            f.write(''.join(boxes))
    lines = []
    for i in range(len(wnids)):
        k = (i * 7) % len(wnids)
        write_jpeg(os.path.join(top, 'val', 'images', f'val_{i}.JPEG'), class_colour(k), size)
        lines.append(f'val_{i}.JPEG\t{wnids[k]}\t0\t0\t{size[0] - 1}\t{size[1] - 1}\n')
    with open(os.path.join(top, 'val', 'val_annotations.txt'), 'w') as f:
        f.write(''.join(lines))
    for i in range(3):
        write_jpeg(os.path.join(top, 'test', 'images', f'test_{i}.JPEG'), (128, 128, 128), size)
    return top


def tiny_val_labels(wnids: Sequence[str] = TINY_WNIDS) -> List[int]:
    """The label of ``val_<i>.JPEG`` in :func:`write_tiny_imagenet`'s miniature (wnids.txt order)."""
    return [(i * 7) % len(wnids) for i in range(len(wnids))]


def write_imagenet(root: str, wnids: Sequence[str] = IMAGENET_WNIDS, train_per_class: int = 2,
                   val: str = 'kaggle') -> str:
    """``root/imagenet``: train/<wnid>/<wnid>_<i>.JPEG and the validation images flat as released
    (``val/ILSVRC2012_val_<8 digits>.JPEG``), labelled by Kaggle's ``LOC_val_solution.csv`` (``val='kaggle'``), or
    in class folders (``val='folders'``). Validation image n (1-based) belongs to ``wnids[(n * 7) % len(wnids)]``."""
    top = os.path.join(root, 'imagenet')
    for k, wnid in enumerate(wnids):
        for i in range(train_per_class):
            write_jpeg(os.path.join(top, 'train', wnid, f'{wnid}_{i}.JPEG'), class_colour(k))
    rows = []
    for n in range(1, len(wnids) + 1):
        k = (n * 7) % len(wnids)
        name = f'ILSVRC2012_val_{n:08d}'
        folder = os.path.join(top, 'val') if val == 'kaggle' else os.path.join(top, 'val', wnids[k])
        write_jpeg(os.path.join(folder, f'{name}.JPEG'), class_colour(k))
        rows.append(f'{name},{wnids[k]} 1 2 13 14 {wnids[k]} 0 0 8 8\n')
    if val == 'kaggle':
        with open(os.path.join(top, 'LOC_val_solution.csv'), 'w') as f:
            f.write('ImageId,PredictionString\n' + ''.join(reversed(rows)))  # not in file order, as released
    return top


def write_devkit(top: str, wnids: Sequence[str], ilsvrc_order: Sequence[str], val_wnids: Sequence[str]) -> None:
    """The devkit beside a flat val/: ``ILSVRC2012_devkit_t12/data/meta.mat`` (synsets with ILSVRC2012_ID, WNID,
    words, num_children; ID order ``ilsvrc_order``, plus one non-leaf synset) and
    ``ILSVRC2012_validation_ground_truth.txt`` (the ILSVRC2012 ID of validation image n on line n)."""
    from scipy.io import savemat
    data = os.path.join(top, 'ILSVRC2012_devkit_t12', 'data')
    os.makedirs(data, exist_ok=True)
    dtype = [('ILSVRC2012_ID', 'O'), ('WNID', 'O'), ('words', 'O'), ('gloss', 'O'), ('num_children', 'O')]
    synsets = np.zeros((len(ilsvrc_order) + 1, 1), dtype=dtype)
    for i, wnid in enumerate(ilsvrc_order):
        synsets[i, 0] = (i + 1, wnid, IMAGENET_WORDS.get(wnid, wnid), '', 0)
    synsets[len(ilsvrc_order), 0] = (len(ilsvrc_order) + 1, 'n00001740', 'entity', '', 3)  # not a class
    savemat(os.path.join(data, 'meta.mat'), {'synsets': synsets})
    ids = {wnid: i + 1 for i, wnid in enumerate(ilsvrc_order)}
    with open(os.path.join(data, 'ILSVRC2012_validation_ground_truth.txt'), 'w') as f:
        f.write(''.join(f'{ids[wnid]}\n' for wnid in val_wnids))
    for n, wnid in enumerate(val_wnids, 1):
        write_jpeg(os.path.join(top, 'val', f'ILSVRC2012_val_{n:08d}.JPEG'), class_colour(list(wnids).index(wnid)))


def write_cifar_python(root: str, num_classes: int, train_images: int = 150, test_images: int = 20) -> str:
    """torchvision's CIFAR files (``cifar-10-batches-py/`` or ``cifar-100-python/``): the pickled dicts of the
    release (uint8 rows of 3072 pixels, labels, the meta names), with fewer images. Image i is class ``i % K``."""
    rng = np.random.default_rng(0)

    def batch(count: int, key: str) -> dict:
        labels = [i % num_classes for i in range(count)]
        return {'batch_label': 'miniature', key: labels, 'data': rng.integers(0, 256, (count, 3072), dtype=np.uint8),
                'filenames': [f'{i}.png' for i in range(count)]}

    def dump(path: str, value: dict) -> None:
        with open(path, 'wb') as f:
            pickle.dump(value, f)

    if num_classes == 10:
        top = os.path.join(root, 'cifar-10-batches-py')
        os.makedirs(top, exist_ok=True)
        for i in range(1, 6):
            dump(os.path.join(top, f'data_batch_{i}'), batch(train_images // 5, 'labels'))
        dump(os.path.join(top, 'test_batch'), batch(test_images, 'labels'))
        dump(os.path.join(top, 'batches.meta'), {'label_names': CIFAR10_NAMES, 'num_cases_per_batch': 10000})
    else:
        top = os.path.join(root, 'cifar-100-python')
        os.makedirs(top, exist_ok=True)
        dump(os.path.join(top, 'train'), batch(train_images, 'fine_labels'))
        dump(os.path.join(top, 'test'), batch(test_images, 'fine_labels'))
        dump(os.path.join(top, 'meta'), {'fine_label_names': CIFAR100_NAMES,
                                         'coarse_label_names': [f'super_{i}' for i in range(20)]})
    return root


def write_cifar_folder(root: str, names: Sequence[str], per_class: int = 2, test_per_class: int = 1) -> str:
    """CIFAR as an image folder: ``train/<class>/<i>.png`` and ``test/<class>/<i>.png`` (32x32 PNGs)."""
    for split, count in (('train', per_class), ('test', test_per_class)):
        for k, name in enumerate(names):
            folder = os.path.join(root, split, name)
            os.makedirs(folder, exist_ok=True)
            for i in range(count):
                Image.new('RGB', (32, 32), class_colour(k)).save(os.path.join(folder, f'{k * count + i}.png'))
    return root
