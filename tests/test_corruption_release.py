"""Released corruption benchmarks read from disk: CIFAR-10-C / CIFAR-100-C (``<corruption>.npy`` of 5 severities x n
images + ``labels.npy``) and Tiny-ImageNet-C (``<corruption>/<severity>/<wnid>/*.JPEG``), written small by the tests.

The model is a scripted 2-member classifier whose prediction is the image's brightness level (class k for a mean
pixel value k / 9), so every expected accuracy is known from the files the test writes.
"""
import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image
from torchvision import transforms

from timm_mimo.evaluation import (
    BENCHMARK_CORRUPTIONS,
    CorruptionRelease,
    common_corruptions,
    released_corruption_metrics,
)

CPU = torch.device('cpu')
TO_TENSOR = transforms.ToTensor()
PER_SEVERITY = 4  # n images per severity


class LevelModel(nn.Module):
    """Predicts class ``round(9 · mean pixel)`` (both members alike): a 10-class brightness reader."""
    num_members = 2
    num_classes = 10

    def forward_members(self, x: torch.Tensor) -> torch.Tensor:
        level = x.mean(dim=(1, 2, 3)) * 9
        logits = -10 * (level[:, None] - torch.arange(10, dtype=x.dtype)).abs()
        return torch.stack([logits, logits], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_members(x).mean(dim=1)


def level_image(level: int, size: int = 32) -> np.ndarray:
    return np.full((size, size, 3), round(255 * level / 9), dtype=np.uint8)


def correct_at(severity: int) -> int:
    """How many of the n images of a severity the files make right: 4, 3, 2, 1, 0 for severities 1..5."""
    return PER_SEVERITY - (severity - 1)


def write_cifar_c(root, corruptions, all_wrong=(), repeat_labels=True):
    """A CIFAR-*-C release: image i of severity s shows level i; its label is i while i < correct_at(s), else i + 5
    (wrong); a corruption in ``all_wrong`` shows level 9 (no label's) everywhere. ``labels.npy`` holds 5·n labels or
    only n."""
    root.mkdir(parents=True, exist_ok=True)
    labels = []
    for severity in range(1, 6):
        labels += [i if i < correct_at(severity) else i + 5 for i in range(PER_SEVERITY)]
    for name in corruptions:
        images = np.stack([level_image(9 if name in all_wrong else i) for _ in range(1, 6)
                           for i in range(PER_SEVERITY)])
        np.save(root / f'{name}.npy', images)
    np.save(root / 'labels.npy', np.array(labels if repeat_labels else list(range(PER_SEVERITY)), dtype=np.int64))
    return root


def write_tiny_c(root, corruptions, wnids=('n01443537', 'n01629819')):
    """A Tiny-ImageNet-C release: class folder k holds two 64 px JPEGs of level k + severity - 1 (right only at
    severity 1)."""
    for name in corruptions:
        for severity in range(1, 6):
            for k, wnid in enumerate(wnids):
                folder = root / name / str(severity) / wnid
                folder.mkdir(parents=True, exist_ok=True)
                for j in range(2):
                    Image.fromarray(level_image(k + severity - 1, 64)).save(folder / f'val_{k}{j}.JPEG', quality=95)
    return root


def test_benchmark_corruptions_are_imagecorruptions_common_ones():
    pytest.importorskip('imagecorruptions')
    assert BENCHMARK_CORRUPTIONS == common_corruptions()


def test_cifar_c_release_columns_per_corruption_severity_and_mean(tmp_path):
    release = CorruptionRelease(str(write_cifar_c(tmp_path / 'CIFAR-10-C', BENCHMARK_CORRUPTIONS + ('saturate',),
                                                  all_wrong=('fog',))))
    assert release.layout == 'cifar' and set(release.corruptions) == set(BENCHMARK_CORRUPTIONS) | {'saturate'}
    image, label = release.dataset('contrast', 3)[1]
    assert image.size == (32, 32) and label == 1
    assert len(release.dataset('contrast', 5)) == PER_SEVERITY
    out = released_corruption_metrics(LevelModel(), release, TO_TENSOR, CPU, batch_size=3)
    # the on-the-fly evaluation's columns, in its order: c_num_images, per corruption, per severity, mean
    groups = [*BENCHMARK_CORRUPTIONS, *(f's{s}' for s in range(1, 6)), 'mean']
    assert list(out) == ['c_num_images'] + [f'c_{g}_{m}' for g in groups for m in ('top1', 'top5', 'nll', 'ece')]
    assert out['c_num_images'] == PER_SEVERITY and 'c_saturate_top1' not in out  # the 15 of the benchmark only
    per_severity = [100.0 * correct_at(s) / PER_SEVERITY for s in range(1, 6)]  # 100, 75, 50, 25, 0
    assert out['c_contrast_top1'] == pytest.approx(sum(per_severity) / 5)
    assert out['c_fog_top1'] == 0.0
    for s in range(1, 6):
        assert out[f'c_s{s}_top1'] == pytest.approx(per_severity[s - 1] * 14 / 15)
    assert out['c_mean_top1'] == pytest.approx(50.0 * 14 / 15)
    assert out['c_s1_nll'] < out['c_s5_nll']
    subset = released_corruption_metrics(LevelModel(), release, TO_TENSOR, CPU, corruptions=['saturate'],
                                         severities=[2, 5], num_images=2)
    assert subset['c_num_images'] == 2 and list(subset)[1] == 'c_saturate_top1'


def test_cifar_c_labels_given_once_serve_every_severity(tmp_path):
    release = CorruptionRelease(str(write_cifar_c(tmp_path / 'c', ['snow'], repeat_labels=False)))
    out = released_corruption_metrics(LevelModel(), release, TO_TENSOR, CPU, corruptions=['snow'])
    assert out['c_snow_top1'] == 100.0  # labels 0..n-1 for every severity: the images' own levels


def test_tiny_imagenet_c_release_maps_class_folders_like_the_clean_split(tmp_path):
    root = write_tiny_c(tmp_path / 'Tiny-ImageNet-C', ['fog', 'pixelate'])
    release = CorruptionRelease(str(root))
    assert release.layout == 'tiny' and release.corruptions == ('fog', 'pixelate')
    image, label = release.dataset('fog', 1)[2]
    assert image.size == (64, 64) and image.mode == 'RGB' and label == 1
    out = released_corruption_metrics(LevelModel(), release, TO_TENSOR, CPU, corruptions=['fog', 'pixelate'])
    assert out['c_num_images'] == 4
    assert out['c_s1_top1'] == 100.0 and out['c_s2_top1'] == 0.0  # levels shift by severity - 1
    assert out['c_fog_top1'] == pytest.approx(20.0) and out['c_mean_top1'] == pytest.approx(20.0)
    # the clean split's classes decide the indices: swapped wnids make severity 1 wrong, severity 2 half right
    swapped = CorruptionRelease(str(root), class_to_idx={'n01443537': 1, 'n01629819': 0})
    out = released_corruption_metrics(LevelModel(), swapped, TO_TENSOR, CPU, corruptions=['fog'], severities=[1, 2])
    assert out['c_s1_top1'] == 0.0 and out['c_s2_top1'] == 50.0
    with pytest.raises(ValueError, match="'n01629819' of .* is not a class of the model's data"):
        CorruptionRelease(str(root), class_to_idx={'n01443537': 0}).dataset('fog', 1)


def test_release_bad_input(tmp_path):
    with pytest.raises(ValueError, match='does not exist'):
        CorruptionRelease(str(tmp_path / 'none'))
    (tmp_path / 'empty' / 'stuff').mkdir(parents=True)
    with pytest.raises(ValueError, match=r"not a released corruption benchmark \(found: stuff\).*labels.npy.*JPEG"):
        CorruptionRelease(str(tmp_path / 'empty'))
    partial = CorruptionRelease(str(write_cifar_c(tmp_path / 'partial', ['fog', 'snow'])))
    with pytest.raises(ValueError, match='lacks 13 of the 15 benchmark corruptions.*among: fog, snow'):
        released_corruption_metrics(LevelModel(), partial, TO_TENSOR, CPU)
    with pytest.raises(ValueError, match="'rain' is not in"):
        released_corruption_metrics(LevelModel(), partial, TO_TENSOR, CPU, corruptions=['rain'])
    np.save(tmp_path / 'partial' / 'frost.npy', np.zeros((7, 32, 32, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match=r'5·n uint8 images .* shape \(7, 32, 32, 3\)'):
        CorruptionRelease(str(tmp_path / 'partial')).dataset('frost', 1)
    np.save(tmp_path / 'partial' / 'labels.npy', np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match='holds 3 labels for 20 images'):
        CorruptionRelease(str(tmp_path / 'partial')).dataset('fog', 1)
    tiny = write_tiny_c(tmp_path / 'tiny', ['fog'])
    (tiny / 'fog' / '5' / 'n01443537').rename(tiny / 'fog' / '5' / 'elsewhere')
    for path in (tiny / 'fog' / '5').rglob('*.JPEG'):
        path.unlink()
    with pytest.raises(ValueError, match='holds no images'):
        CorruptionRelease(str(tiny)).dataset('fog', 5)


# --- timm-mimo-validate --corruption-dir ----------------------------------------------------------------------------

@pytest.fixture(scope='module')
def clean_digits(tmp_path_factory):
    """12 real digits as 32 px RGB PNGs in class folders (the clean test split)."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    root = tmp_path_factory.mktemp('clean')
    for i in range(12):
        folder = root / 'test' / str(digits.target[i])
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.clip(digits.images[i] * 16, 0, 255).astype(np.uint8)
        Image.fromarray(pixels, mode='L').convert('RGB').resize((32, 32)).save(folder / f'{i}.png')
    return root


MODEL = ['--model', 'cut_mixmo', '--model-kwargs', 'backbone=wrn28_2', 'depth=10', 'widen_factor=1',
         '--num-classes', '10', '--workers', '0', '-b', '8']


def test_validate_cli_corruption_dir_matches_the_library(clean_digits, tmp_path, capsys):
    """A CIFAR-10-C-shaped release of 2 corruptions: the CLI's c_* columns are the library's on the same files."""
    import timm
    from timm.data import resolve_data_config

    from timm_mimo.cli import validate
    from timm_mimo.data import create_image_transform
    torch.manual_seed(0)
    model = timm.create_model('cut_mixmo', backbone='wrn28_2', depth=10, widen_factor=1, num_classes=10).eval()
    checkpoint = tmp_path / 'model.pth'
    torch.save(model.state_dict(), checkpoint)
    release = write_cifar_c(tmp_path / 'CIFAR-10-C', ['contrast', 'fog'])
    results = tmp_path / 'val.json'
    argv = [*MODEL, '--checkpoint', checkpoint, '--data-dir', clean_digits, '--split', 'test',
            '--corruption-dir', release, '--corruptions', 'contrast', 'fog', '--corruption-severities', '1', '4',
            '--results-file', results]
    assert validate.main([str(a) for a in argv]) == 0, capsys.readouterr().err
    out = json.load(open(results))
    transform = create_image_transform(resolve_data_config({}, model=model), False)
    expected = released_corruption_metrics(model, CorruptionRelease(str(release)), transform, CPU,
                                           corruptions=['contrast', 'fog'], severities=[1, 4])
    assert list(expected) == [k for k in out if k.startswith('c_')]
    assert {k: out[k] for k in expected} == pytest.approx(expected, abs=1e-4)
    assert out['num_images'] == 12 and out['c_num_images'] == PER_SEVERITY


@pytest.mark.parametrize('extra, message', [
    (['--corruption-dir', '{missing}'], "--corruption-dir: corruption release folder '.*' does not exist"),
    (['--corruption-dir', '{partial}'], '--corruption-dir: .* lacks 14 of the 15 benchmark corruptions'),
    (['--corruption-dir', '{partial}', '--corruptions', 'rain'], "--corruption-dir: 'rain' is not in"),
    (['--corruption-dir', '{big}', '--corruptions', 'fog'], 'has class index 12 but the model has 10 outputs'),
    (['--corruption-severities', '2'], '--corruption-severities needs --corruptions .* or --corruption-dir'),
])
def test_validate_cli_corruption_dir_errors_are_one_line(clean_digits, tmp_path, capsys, extra, message):
    from timm_mimo.cli import validate
    paths = dict(missing=tmp_path / 'none', partial=write_cifar_c(tmp_path / 'partial', ['fog']),
                 big=tmp_path / 'big')
    write_cifar_c(paths['big'], ['fog'])
    np.save(paths['big'] / 'labels.npy', np.full(5 * PER_SEVERITY, 12, dtype=np.int64))
    checkpoint = tmp_path / 'model.pth'
    import timm
    torch.save(timm.create_model('cut_mixmo', backbone='wrn28_2', depth=10, widen_factor=1,
                                 num_classes=10).state_dict(), checkpoint)
    argv = [*MODEL, '--checkpoint', checkpoint, '--data-dir', clean_digits, '--split', 'test',
            *[a.format(**paths) for a in extra]]
    assert validate.main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('error: ')
    import re
    assert re.search(message, err[0]), err[0]


def test_validate_cli_tiny_imagenet_c_maps_wnids_through_the_clean_split(tmp_path, capsys):
    """Tiny-ImageNet-C class folders take the clean split's indices; a wnid the split lacks is a one-line error."""
    import timm
    from timm.data import resolve_data_config

    from timm_mimo.cli import validate
    from timm_mimo.data import create_image_transform
    wnids = ('n01443537', 'n01629819')
    for k, wnid in enumerate(wnids):  # the clean split: the same classes, as folders
        folder = tmp_path / 'clean' / 'val' / wnid
        folder.mkdir(parents=True)
        Image.fromarray(level_image(k, 64)).save(folder / f'{k}.JPEG')
    release = write_tiny_c(tmp_path / 'Tiny-ImageNet-C', ['fog'], wnids=wnids)
    torch.manual_seed(0)
    model = timm.create_model('cut_mixmo', backbone='wrn28_2', depth=10, widen_factor=1, num_classes=10).eval()
    checkpoint = tmp_path / 'model.pth'
    torch.save(model.state_dict(), checkpoint)
    results = tmp_path / 'val.json'
    argv = [*MODEL, '--img-size', '64', '--checkpoint', checkpoint, '--data-dir', tmp_path / 'clean', '--split', 'val',
            '--corruption-dir', release, '--corruptions', 'fog', '--corruption-severities', '1', '2',
            '--results-file', results]
    assert validate.main([str(a) for a in argv]) == 0, capsys.readouterr().err
    out = json.load(open(results))
    transform = create_image_transform(resolve_data_config({'img_size': 64}, model=model), False)
    expected = released_corruption_metrics(
        model, CorruptionRelease(str(release), class_to_idx={w: k for k, w in enumerate(wnids)}), transform, CPU,
        corruptions=['fog'], severities=[1, 2])
    assert {k: out[k] for k in expected} == pytest.approx(expected, abs=1e-4) and out['c_num_images'] == 4
    (release / 'fog' / '1' / 'n09999999').mkdir()
    (release / 'fog' / '1' / wnids[0] / f'val_{0}{0}.JPEG').rename(release / 'fog' / '1' / 'n09999999' / 'x.JPEG')
    assert validate.main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--corruption-dir: class folder 'n09999999'" in err[0]
