"""Corruption robustness, OOD detection, checkpoint ensembles and reliability diagrams on real images (sklearn digits
upscaled to 32 px RGB; two networks trained by train.py for the ensemble)."""
import importlib.util
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
from PIL import Image
from timm.data import ImageDataset
from torch.utils.data import DataLoader
from torchvision import transforms

import timm_mimo  # noqa: F401
from timm_mimo.evaluation import (
    CheckpointEnsemble,
    CorruptedDataset,
    checkpoint_ensemble_logits,
    checkpoint_ensemble_metrics,
    common_corruptions,
    corruption_metrics,
    model_from_checkpoint,
    ood_folder_metrics,
    open_ood_folder,
    reliability_bins,
    save_reliability_diagram,
)
from timm_mimo.metrics import (
    collect_member_logits,
    ensemble_metrics,
    expected_calibration_error,
    is_mimo,
    ood_metrics,
    topk_accuracy,
)

needs_corruptions = pytest.mark.skipif(importlib.util.find_spec('imagecorruptions') is None,
                                       reason='imagecorruptions not installed (pip install imagecorruptions-imaug)')
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU = torch.device('cpu')
TO_TENSOR = transforms.ToTensor()


def _write_folder(root, images, labels, invert=False):
    for i, (image, label) in enumerate(zip(images, labels)):
        pixels = 255 - image if invert else image
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels, mode='L').convert('RGB').resize((32, 32), Image.BILINEAR).save(folder / f'{i}.png')


@pytest.fixture(scope='module')
def digit_folders(tmp_path_factory):
    """12 real digits as 32 px RGB PNGs (dark background) and 10 others inverted (bright background) as OOD."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    images = np.clip(digits.images * 16, 0, 255).astype(np.uint8)
    root = tmp_path_factory.mktemp('digits32')
    _write_folder(root / 'test', images[:12], digits.target[:12])
    _write_folder(root / 'ood' / 'nested', images[100:110], digits.target[100:110], invert=True)
    return root


class BrightnessModel(nn.Module):
    """A scripted 2-member, 10-class model: on dark images both members lean to class 0; on bright images the ensemble
    is split between classes 0 and 1 and the members contradict each other (one sure of class 0, one of class 1)."""
    num_members = 2

    def forward_members(self, x: torch.Tensor) -> torch.Tensor:
        brightness = x.mean(dim=(1, 2, 3))
        dark, bright = 20 * (0.5 - brightness).clamp_min(0), 20 * (brightness - 0.5).clamp_min(0)
        zeros = [torch.zeros_like(dark)] * 8
        members = [torch.stack([dark + bright, torch.zeros_like(dark), *zeros], -1),
                   torch.stack([dark, bright, *zeros], -1)]
        return torch.stack(members, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_members(x).mean(dim=1)


def tiny_wrn(num_members=None):
    kwargs = dict(backbone='wrn28_2', depth=10, widen_factor=1, num_classes=10)
    torch.manual_seed(0)
    if num_members is None:
        return timm.create_model('wrn28_2', depth=10, widen_factor=1, num_classes=10).eval()
    return timm.create_model('cut_mixmo', num_members=num_members, **kwargs).eval()


@needs_corruptions
def test_corrupted_images_are_deterministic_and_grow_with_severity(digit_folders):
    dataset = ImageDataset(str(digit_folders / 'test'))
    clean = np.asarray(dataset[0][0], dtype=np.float64)
    distortion = []
    for severity in (1, 5):
        corrupted = CorruptedDataset(dataset, 'gaussian_noise', severity)
        image, target = corrupted[0]
        assert image.size == (32, 32) and image.mode == 'RGB' and target == dataset[0][1]
        assert np.array_equal(np.asarray(image), np.asarray(corrupted[0][0]))  # same draws every time
        distortion.append(np.abs(np.asarray(image, dtype=np.float64) - clean).mean())
    assert 0 < distortion[0] < distortion[1]
    assert not np.array_equal(np.asarray(CorruptedDataset(dataset, 'gaussian_noise', 1)[1][0]),
                              np.asarray(CorruptedDataset(dataset, 'gaussian_noise', 1, seed=1)[1][0]))


@needs_corruptions
def test_every_common_corruption_is_reproducible_on_32px_gray_and_rgb(digit_folders):
    dataset = ImageDataset(str(digit_folders / 'test'))
    names = common_corruptions()
    assert len(names) == 15 and names[0] == 'gaussian_noise' and names[-1] == 'jpeg_compression'
    gray = dataset[3][0].convert('L')
    for name in names:
        corrupted = CorruptedDataset(dataset, name, 3)
        assert corrupted.corrupt(gray, 3).mode == 'L'
        image = np.asarray(corrupted.corrupt(dataset[3][0], 3))
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8
        assert np.array_equal(image, np.asarray(corrupted.corrupt(dataset[3][0], 3))), name  # reproducible
        assert not np.array_equal(image, np.asarray(dataset[3][0])), name


@needs_corruptions
def test_corrupted_dataset_bad_input(digit_folders):
    dataset = ImageDataset(str(digit_folders / 'test'))
    with pytest.raises(ValueError, match="unknown corruption 'rain'"):
        CorruptedDataset(dataset, 'rain', 1)
    with pytest.raises(ValueError, match='severity must be one of'):
        CorruptedDataset(dataset, 'fog', 6)
    with pytest.raises(ValueError, match='at least 32 px'):
        CorruptedDataset(dataset, 'fog', 1).corrupt(Image.new('RGB', (28, 28)), 0)
    with pytest.raises(TypeError, match='without a transform'):
        CorruptedDataset(ImageDataset(str(digit_folders / 'test'), transform=TO_TENSOR), 'fog', 1)[0]


@needs_corruptions
def test_corruption_metrics_match_a_direct_evaluation(digit_folders):
    model = tiny_wrn(num_members=2)
    dataset = ImageDataset(str(digit_folders / 'test'))
    out = corruption_metrics(model, dataset, TO_TENSOR, CPU, corruptions=['contrast', 'motion_blur'],
                             severities=[1, 4], batch_size=5)
    expected_keys = ['c_num_images'] + [f'c_{g}_{m}' for g in ('contrast', 'motion_blur', 's1', 's4', 'mean')
                                        for m in ('top1', 'top5', 'nll', 'ece')]
    assert list(out) == expected_keys and out['c_num_images'] == 12
    per_set, top5 = {}, {}
    for name in ('contrast', 'motion_blur'):
        for severity in (1, 4):
            loader = DataLoader(CorruptedDataset(dataset, name, severity, TO_TENSOR), batch_size=12)
            logits, targets = collect_member_logits(model, loader, CPU)
            per_set[name, severity] = topk_accuracy(logits.double().mean(1), targets)
            top5[name, severity] = topk_accuracy(logits.double().mean(1), targets, 5)
    assert out['c_contrast_top1'] == pytest.approx((per_set['contrast', 1] + per_set['contrast', 4]) / 2)
    # thesis Table 3.2 reports Top-5 under corruption too: per corruption, per severity and the mean
    assert out['c_motion_blur_top5'] == pytest.approx((top5['motion_blur', 1] + top5['motion_blur', 4]) / 2)
    assert out['c_s1_top5'] == pytest.approx((top5['contrast', 1] + top5['motion_blur', 1]) / 2)
    assert out['c_mean_top5'] == pytest.approx(sum(top5.values()) / 4)
    assert all(out[f'c_{g}_top5'] >= out[f'c_{g}_top1'] for g in ('contrast', 'motion_blur', 's1', 's4', 'mean'))
    assert out['c_s4_top1'] == pytest.approx((per_set['contrast', 4] + per_set['motion_blur', 4]) / 2)
    assert out['c_mean_top1'] == pytest.approx(sum(per_set.values()) / 4)
    assert all(np.isfinite(v) for v in out.values())


@needs_corruptions
def test_corruption_metrics_all_common_corruptions_on_a_subset(digit_folders):
    dataset = ImageDataset(str(digit_folders / 'test'))
    out = corruption_metrics(BrightnessModel(), dataset, TO_TENSOR, CPU, num_images=3, batch_size=3)
    assert out['c_num_images'] == 3
    assert len(out) == 1 + 4 * (15 + 5 + 1)  # top1, top5, nll, ece
    assert 'c_elastic_transform_ece' in out and 'c_s5_nll' in out
    with pytest.raises(ValueError, match='num_images must be positive'):
        corruption_metrics(BrightnessModel(), dataset, TO_TENSOR, CPU, num_images=0)


def test_ood_folder_metrics_separate_bright_from_dark_digits(digit_folders):
    model = BrightnessModel()
    in_loader = DataLoader(ImageDataset(str(digit_folders / 'test'), transform=TO_TENSOR), batch_size=5)
    in_logits, _ = collect_member_logits(model, in_loader, CPU)
    ood_set = open_ood_folder(str(digit_folders / 'ood'), (3, 32, 32), TO_TENSOR)
    assert len(ood_set) == 10  # found in a nested folder
    out = ood_folder_metrics(model, in_logits, ood_set, CPU, batch_size=4)
    assert out['ood_num_images'] == 10
    for score in ('msp', 'entropy', 'mutual_info'):
        assert out[f'ood_{score}_auroc'] == pytest.approx(100.0), score
        assert out[f'ood_{score}_fpr95'] == pytest.approx(0.0), score
    out_logits, _ = collect_member_logits(model, DataLoader(ood_set, batch_size=10), CPU)
    assert {k: v for k, v in out.items() if k != 'ood_num_images'} == ood_metrics(in_logits, out_logits)


def test_ood_folder_resizes_any_resolution_and_rejects_bad_folders(digit_folders, tmp_path):
    Image.new('RGB', (64, 48), (200, 10, 10)).save(tmp_path / 'big.png')
    image, _ = open_ood_folder(str(tmp_path), (3, 32, 32), transforms.Compose([transforms.CenterCrop(32),
                                                                             TO_TENSOR]))[0]
    assert image.shape == (3, 32, 32)
    with pytest.raises(ValueError, match='does not exist'):
        open_ood_folder(str(tmp_path / 'missing'), (3, 32, 32), TO_TENSOR)
    (tmp_path / 'nothing').mkdir()
    with pytest.raises(ValueError, match='holds no images'):
        open_ood_folder(str(tmp_path / 'nothing'), (3, 32, 32), TO_TENSOR)


def test_reliability_bins_reproduce_torchmetrics_ece_and_diagram_png(tmp_path):
    generator = torch.Generator().manual_seed(0)
    probs = (2 * torch.randn(400, 5, generator=generator, dtype=torch.float64)).softmax(-1)
    targets = torch.randint(0, 5, (400,), generator=generator)
    confidence, accuracy, counts = reliability_bins(probs, targets)
    assert counts.sum() == 400
    assert 100 * ((accuracy - confidence).abs() * counts).sum().item() / 400 == pytest.approx(
        expected_calibration_error(probs, targets), abs=1e-4)
    hand = reliability_bins(torch.tensor([[0.95, 0.05], [0.55, 0.45], [0.58, 0.42]]), torch.tensor([0, 1, 0]), 10)
    assert hand[2].tolist() == [0, 0, 0, 0, 0, 2, 0, 0, 0, 1]
    assert hand[1][5].item() == pytest.approx(0.5) and hand[0][5].item() == pytest.approx(0.565)
    path = save_reliability_diagram(probs, targets, str(tmp_path / 'plots' / 'reliability.png'), title='test')
    with open(path, 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    assert os.path.getsize(path) > 5000


MODEL_FLAGS = ['--num-classes', '10', '--in-chans', '1', '--img-size', '8', '--mean', '0.5', '--std', '0.5',
               '--workers', '0', '--sched', 'multistep', '--decay-milestones', '5', '--epochs', '1', '-b', '64',
               '--lr', '0.05', '--warmup-epochs', '0', '--crop-pad', '1', '--log-interval', '1000']


@pytest.fixture(scope='module')
def trained_runs(digits_dir, tmp_path_factory):
    """Two real train.py runs of one epoch on 8 px digits: a plain WRN-10-1 and a Cut-MixMo WRN-10-1 (M = 2)."""
    output = tmp_path_factory.mktemp('runs')
    runs = {'single': ['--model', 'wrn28_2', '--model-kwargs', 'depth=10', 'widen_factor=1'],
            'mixmo': ['--model', 'cut_mixmo', '--model-kwargs', 'backbone=wrn28_2', 'depth=10', 'widen_factor=1']}
    for name, model in runs.items():
        proc = subprocess.run([sys.executable, 'train.py', *model, *MODEL_FLAGS, '--data-dir', str(digits_dir),
                               '--output', str(output), '--experiment', name, '--seed', '1'],
                              cwd=REPO, capture_output=True, text=True, timeout=600,
                              env=dict(os.environ, OMP_NUM_THREADS='1'))
        assert proc.returncode == 0, proc.stderr[-2000:]
    return output


def _digits_val_loader(digits_dir):
    transform = transforms.Compose([transforms.Grayscale(), TO_TENSOR, transforms.Normalize([0.5], [0.5])])
    return DataLoader(ImageDataset(str(digits_dir / 'validation'), transform=transform), batch_size=100)


def test_model_from_checkpoint_rebuilds_the_run(trained_runs, tmp_path):
    checkpoint = trained_runs / 'mixmo' / 'last.pth.tar'
    model = model_from_checkpoint(str(checkpoint))
    assert model.num_members == 2 and model.in_chans == 1
    saved = torch.load(checkpoint, map_location='cpu', weights_only=True)['state_dict']
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    # without args.yaml: the run arguments stored in the checkpoint (train.py stores them), the caller's kwargs on top
    shutil.copy(trained_runs / 'single' / 'last.pth.tar', tmp_path / 'single.pth.tar')
    plain = model_from_checkpoint(str(tmp_path / 'single.pth.tar'))
    assert plain.num_classes == 10 and plain.in_chans == 1
    with pytest.raises(ValueError, match='does not fit model'):
        model_from_checkpoint(str(tmp_path / 'single.pth.tar'), depth=16)  # WRN-16-1, not 10-1
    with pytest.raises(ValueError, match='does not exist'):
        model_from_checkpoint(str(tmp_path / 'none.pth.tar'))
    with pytest.raises(ValueError, match='no EMA weights'):  # never a silent fall-back to the plain weights
        model_from_checkpoint(str(checkpoint), use_ema=True)


def test_checkpoint_ensemble_of_a_single_and_a_mimo_network(trained_runs, digits_dir):
    models = [model_from_checkpoint(str(trained_runs / run / 'last.pth.tar')) for run in ('single', 'mixmo')]
    loader = _digits_val_loader(digits_dir)
    network_logits, member_logits, targets = checkpoint_ensemble_logits(models, loader, CPU)
    assert network_logits.shape == (300, 2, 10) and [m.shape[1] for m in member_logits] == [1, 2]
    single, _ = collect_member_logits(models[0], loader, CPU)
    mixmo, _ = collect_member_logits(models[1], loader, CPU)
    out = checkpoint_ensemble_metrics(models, loader, CPU)
    ensemble = (single[:, 0].double() + mixmo.double().mean(1)) / 2
    assert out['num_networks'] == 2
    assert out['top1'] == pytest.approx(topk_accuracy(ensemble, targets))
    assert out['top1_m0'] == pytest.approx(topk_accuracy(single[:, 0], targets))
    assert out['top1_m1'] == pytest.approx(topk_accuracy(mixmo.mean(1), targets))
    subnets = [topk_accuracy(single[:, 0], targets)] + [topk_accuracy(mixmo[:, i], targets) for i in range(2)]
    assert out['subnet_top1'] == pytest.approx(sum(subnets) / 3)
    assert out['top1'] > 30.0  # one epoch on 10 classes: well above chance
    for key in ('nll_c', 'ece', 'brier', 'aurc', 'd_re', 'disagreement'):
        assert np.isfinite(out[key]), key
    with pytest.raises(ValueError, match='at least one model'):
        checkpoint_ensemble_metrics([], loader, CPU)


def test_checkpoint_ensemble_module_is_evaluated_like_a_mimo_model(trained_runs, digits_dir):
    networks = [model_from_checkpoint(str(trained_runs / run / 'last.pth.tar')) for run in ('single', 'mixmo')]
    ensemble = CheckpointEnsemble(networks)
    assert is_mimo(ensemble) and ensemble.num_members == 2 and ensemble.num_classes == 10
    loader = _digits_val_loader(digits_dir)
    member_logits, targets = collect_member_logits(ensemble, loader, CPU)
    assert ensemble_metrics(member_logits, targets) == pytest.approx(
        {k: v for k, v in checkpoint_ensemble_metrics(networks, loader, CPU).items()
         if k not in ('num_networks', 'subnet_top1')}, abs=1e-5)
    with pytest.raises(ValueError, match='disagree on the class count'):
        CheckpointEnsemble([networks[0], timm.create_model('wrn28_2', depth=10, widen_factor=1, num_classes=3)])


def _run_validate(argv, capsys):
    from timm_mimo.cli import validate
    code = validate.main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured


def test_validate_cli_ensemble_checkpoints_match_the_library(trained_runs, digits_dir, tmp_path, capsys):
    """--ensemble-checkpoints with a run's args.yaml as --config (its data flags; its model flags unused)."""
    paths = [trained_runs / run / 'last.pth.tar' for run in ('single', 'mixmo')]
    results = tmp_path / 'ensemble.json'
    _run_validate(['--config', trained_runs / 'single' / 'args.yaml', '--ensemble-checkpoints', *paths,
                   '--workers', '0', '-b', '100', '--results-file', results], capsys)
    import json
    out = json.load(open(results))
    networks = [model_from_checkpoint(str(path)) for path in paths]
    expected = checkpoint_ensemble_metrics(networks, _digits_val_loader(digits_dir), CPU)
    assert out['model'] == 'ensemble' and out['checkpoint'] == ' '.join(map(str, paths))
    assert out['num_images'] == 300 and out['num_members'] == 2
    for key in ('top1', 'top5', 'loss', 'nll_c', 'ece', 'brier', 'aurc', 'top1_m0', 'top1_m1', 'd_re'):
        assert out[key] == pytest.approx(expected[key], abs=1e-4), key


@needs_corruptions
def test_validate_cli_ood_corruptions_and_reliability_diagram(trained_runs, digit_folders, tmp_path, capsys):
    """One validate run on 32 px digits: OOD against inverted digits, 2 corruptions x 1 severity on 4 images, PNG."""
    from timm.data import resolve_data_config

    from timm_mimo.data import create_image_transform
    checkpoint = trained_runs / 'mixmo' / 'last.pth.tar'
    png, results = tmp_path / 'plots' / 'reliability.png', tmp_path / 'val.json'
    data_flags = ['--img-size', '8', '--in-chans', '1', '--mean', '0.5', '--std', '0.5']
    _run_validate(['--model', 'cut_mixmo', '--model-kwargs', 'backbone=wrn28_2', 'depth=10', 'widen_factor=1',
                   '--num-classes', '10', *data_flags, '--checkpoint', checkpoint, '--data-dir', digit_folders,
                   '--split', 'test', '--workers', '0', '-b', '5', '--ood-dir', digit_folders / 'ood',
                   '--corruptions', 'contrast', 'motion_blur', '--corruption-severities', '3',
                   '--corruption-images', '4', '--reliability-diagram', png, '--results-file', results], capsys)
    import json
    out = json.load(open(results))
    # the same evaluation through the library, with the CLI's transform
    model = model_from_checkpoint(str(checkpoint)).eval()
    transform = create_image_transform(resolve_data_config(dict(img_size=8, in_chans=1, mean=[0.5], std=[0.5]),
                                                           model=model), False)
    in_set = ImageDataset(str(digit_folders / 'test'), transform=transform)
    in_logits, targets = collect_member_logits(model, DataLoader(in_set, batch_size=12), CPU)
    assert out['num_images'] == 12  # the results file rounds as timm does (4 decimals)
    assert out['top1'] == pytest.approx(ensemble_metrics(in_logits, targets)['top1'], abs=5e-5)
    ood = ood_folder_metrics(model, in_logits, open_ood_folder(str(digit_folders / 'ood'), (1, 8, 8), transform), CPU)
    assert out['ood_num_images'] == 10
    assert {k: out[k] for k in ood} == pytest.approx(ood, abs=1e-4)
    corrupted = corruption_metrics(model, ImageDataset(str(digit_folders / 'test')), transform, CPU,
                                   corruptions=['contrast', 'motion_blur'], severities=[3], num_images=4)
    assert out['c_num_images'] == 4
    assert {k: out[k] for k in corrupted} == pytest.approx(corrupted, abs=1e-4)
    assert out['c_mean_top1'] == pytest.approx((out['c_contrast_top1'] + out['c_motion_blur_top1']) / 2)
    with open(png, 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def test_lower_is_better_columns_are_the_decreasing_metrics():
    """train.py picks model_best with DECREASING_METRICS: a sharper, right predictor must win on every column."""
    from timm_mimo.cli.evaluate import DECREASING_METRICS, metric_columns
    generator = torch.Generator().manual_seed(0)
    targets = torch.arange(40) % 10
    noise = torch.randn(40, 2, 10, generator=generator, dtype=torch.float64)
    right = torch.nn.functional.one_hot(targets, 10).double()[:, None]
    good = metric_columns(noise + 6 * right, targets)  # right on almost every image
    bad = metric_columns(noise + 1 * right, targets)
    compared = ('top1', 'loss', 'nll_c', 'ece', 'brier', 'aurc', 'top1_prob', 'nll_prob', 'member_top1')
    assert {'brier', 'aurc'} <= set(DECREASING_METRICS) <= set(good)
    for key in compared:
        assert good[key] != bad[key], key
        assert (good[key] < bad[key]) == (key in DECREASING_METRICS), (key, good[key], bad[key])
