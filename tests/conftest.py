"""Shared fixtures: one torch thread for in-process tests; sklearn digits (real 8x8 images) as a timm image folder."""
import numpy as np
import pytest
import torch
from PIL import Image


@pytest.fixture(autouse=True, scope='session')
def one_torch_thread():
    """The in-process tests run batch-2 tensors at 8-32 px: on a 2-core machine a second OpenMP thread only adds
    contention (measured 5x slower with other work on the machine). Subprocess runs (train.py) are unaffected."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


DIGITS_VAL_EVERY = 6  # every 6th image goes to the validation split (300 of 1,797)


def write_digits_folder(root) -> None:
    """``root/{train,validation}/<class>/<i>.png``: sklearn's 1,797 digits as 8x8 gray PNGs (0..16 -> 0..255)."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    images = np.clip(digits.images * 16, 0, 255).astype(np.uint8)
    for i, (image, label) in enumerate(zip(images, digits.target)):
        split = 'validation' if i % DIGITS_VAL_EVERY == 0 else 'train'
        folder = root / split / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, mode='L').save(folder / f'{i}.png')


@pytest.fixture(scope='session')
def digits_dir(tmp_path_factory):
    """A session-wide digits image folder (1,497 train / 300 validation images)."""
    root = tmp_path_factory.mktemp('digits')
    write_digits_folder(root)
    return root


@pytest.fixture(scope='session')
def small_digits_dir(tmp_path_factory, digits_dir):
    """256 training and 60 validation digits (symlinks into ``digits_dir``): epochs of a few steps."""
    root = tmp_path_factory.mktemp('small_digits')
    for split, count in (('train', 256), ('validation', 60)):
        files = sorted((digits_dir / split).glob('*/*.png'), key=lambda p: int(p.stem))[:count]
        for path in files:
            folder = root / split / path.parent.name
            folder.mkdir(parents=True, exist_ok=True)
            (folder / path.name).symlink_to(path)
    return root
