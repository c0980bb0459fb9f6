"""``scripts/cifar10_image_folder.py``: CIFAR-10 as an image folder written from torchvision's CIFAR-10, the same
pixels as timm's ``--dataset torch/cifar10``. The data set cannot be downloaded here, so the tests write a small fake
CIFAR-10 in torchvision's on-disk format (``cifar-10-batches-py``: pickled batches of ``(N, 3072)`` uint8 rows,
channel planes R, G, B); only torchvision's MD5 check of the real files is bypassed."""
import importlib.util
import pickle
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torchvision.datasets.cifar as tv_cifar
from PIL import Image

from timm_mimo.data import open_dataset

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


writer = _load(ROOT / 'scripts' / 'cifar10_image_folder.py', 'cifar10_image_folder')


@pytest.fixture
def fake_cifar10(tmp_path, monkeypatch):
    """3 training images a class over the 5 training batches and 2 test images a class, random pixels; returns the
    root and the (images (N, 32, 32, 3), labels) of each split in torchvision's order."""
    monkeypatch.setattr(tv_cifar, 'check_integrity', lambda *args, **kwargs: True)  # the fake has other MD5s
    rng = np.random.default_rng(0)
    folder = tmp_path / 'root' / 'cifar-10-batches-py'
    folder.mkdir(parents=True)
    splits = {}
    layout = (('train', 3, [f'data_batch_{i}' for i in range(1, 6)]), ('test', 2, ['test_batch']))
    for split, per_class, files in layout:
        labels = rng.permutation(np.repeat(np.arange(10), per_class))
        images = rng.integers(0, 256, (len(labels), 32, 32, 3), dtype=np.uint8)
        rows = images.transpose(0, 3, 1, 2).reshape(len(labels), 3072)  # R plane, G plane, B plane
        for part, name in zip(np.array_split(np.arange(len(labels)), len(files)), files):
            with open(folder / name, 'wb') as f:
                pickle.dump({'data': rows[part], 'labels': labels[part].tolist()}, f)
        splits[split] = (images, labels)
    with open(folder / 'batches.meta', 'wb') as f:
        pickle.dump({'label_names': CLASSES}, f)
    return tmp_path / 'root', splits


def test_folder_holds_torchvisions_pixels_numbered_in_class_order(fake_cifar10, tmp_path, capsys):
    root, splits = fake_cifar10
    out = tmp_path / 'cifar10'
    assert writer.main(['--root', str(root), '--out', str(out)]) == 0
    for split, (images, labels) in splits.items():
        for label in range(10):
            expected = images[labels == label]  # the class's images in the data set's order
            files = sorted((out / split / CLASSES[label]).glob('*.png'))
            assert [f.name for f in files] == [f'{i:04d}.png' for i in range(len(expected))]
            for path, image in zip(files, expected):
                np.testing.assert_array_equal(np.asarray(Image.open(path).convert('RGB')), image)  # lossless
    assert 'train: 30 images, 10 classes' in capsys.readouterr().out


def test_folder_and_timms_torch_cifar10_are_the_same_images(fake_cifar10, tmp_path):
    root, _ = fake_cifar10
    out = tmp_path / 'cifar10'
    assert writer.main(['--root', str(root), '--out', str(out)]) == 0
    for split, timm_split in (('train', 'train'), ('test', 'test')):
        torch_set = open_dataset('torch/cifar10', str(root), timm_split)
        folder_set = open_dataset('', str(out), split)
        assert len(torch_set) == len(folder_set)
        by_class = {}
        for image, label in torch_set:
            by_class.setdefault(label, []).append(np.asarray(image))
        for index, (image, label) in enumerate(folder_set):  # folder order: class by class, by file name
            position = sum(1 for _, other in folder_set.reader.samples[:index] if other == label)
            np.testing.assert_array_equal(np.asarray(image.convert('RGB')), by_class[label][position])


def test_first_images_per_class_and_the_study_subset(fake_cifar10, tmp_path):
    root, splits = fake_cifar10
    out = tmp_path / 'cifar10'
    assert writer.main(['--root', str(root), '--out', str(out), '--train-per-class', '2']) == 0
    assert sorted(p.name for p in (out / 'train' / 'cat').iterdir()) == ['0000.png', '0001.png']
    prepare = _load(ROOT / 'results' / 'cifar10_study_prepare.py', 'cifar10_study_prepare')
    counts = prepare.copy_cifar10(str(out), str(tmp_path / 'study'), {'train': 1, 'test': 2})
    assert set(counts.values()) == {1, 2} and sum(counts.values()) == 30
    assert (tmp_path / 'study' / 'train' / 'cat' / '0000.png').read_bytes() == \
        (out / 'train' / 'cat' / '0000.png').read_bytes()


def test_bad_input_is_one_line_and_writes_nothing(fake_cifar10, tmp_path, capsys, monkeypatch):
    root, _ = fake_cifar10
    (tmp_path / 'full').mkdir()
    (tmp_path / 'full' / 'keep.txt').write_text('mine')
    assert writer.main(['--root', str(root), '--out', str(tmp_path / 'full')]) == 2
    assert 'is not an empty folder' in capsys.readouterr().err
    assert (tmp_path / 'full' / 'keep.txt').read_text() == 'mine'
    (tmp_path / 'empty').mkdir()
    from torchvision.datasets.utils import check_integrity
    monkeypatch.setattr(tv_cifar, 'check_integrity', check_integrity)  # torchvision's own check: nothing there
    assert writer.main(['--root', str(tmp_path / 'empty'), '--out', str(tmp_path / 'out')]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'no CIFAR-10 under' in err and 'add --download' in err

    def offline(*args, **kwargs):
        raise urllib.error.URLError('no network')

    monkeypatch.setattr(tv_cifar, 'download_and_extract_archive', offline)
    assert writer.main(['--root', str(tmp_path / 'empty'), '--out', str(tmp_path / 'out'), '--download']) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'cannot download CIFAR-10' in err and writer.HOME_PAGE in err
    assert not (tmp_path / 'out').exists() and not list(tmp_path.glob('.out.*'))


def test_compare_copies_measures_a_jpeg_reencoding(fake_cifar10, tmp_path, capsys):
    root, _ = fake_cifar10
    assert writer.main(['--root', str(root), '--out', str(tmp_path / 'png')]) == 0
    capsys.readouterr()
    for path in (tmp_path / 'png' / 'test').rglob('*.png'):  # a JPEG copy in the same layout
        target = tmp_path / 'jpeg' / 'test' / path.parent.name / f'{path.stem}.jpg'
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.open(path).save(target, quality=75)
    compare = _load(ROOT / 'results' / 'cifar10_compare_copies.py', 'cifar10_compare_copies')
    same = compare.compare(str(tmp_path / 'png' / 'test'), str(tmp_path / 'png' / 'test'))
    assert same['images'] == 20 and same['mean_abs_error'] == 0 and same['identical'] == 1
    jpeg = compare.compare(str(tmp_path / 'png' / 'test'), str(tmp_path / 'jpeg' / 'test'))
    assert jpeg['images'] == 20 and jpeg['mean_abs_error'] > 1 and jpeg['identical'] == 0 and jpeg['psnr_max'] < 40
    assert compare.main(['--reference', str(tmp_path / 'png'), '--other', str(tmp_path / 'jpeg')]) == 0
    assert capsys.readouterr().out.startswith('20 images: mean absolute pixel error')
