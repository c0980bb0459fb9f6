"""Evaluation groups beyond the test split: common corruptions, out-of-distribution detection, checkpoint ensembles,
reliability diagrams.

Every ``*_metrics`` function takes a model (or several), the data and a device and returns a flat ordered dict of
result columns, so ``validate.py`` adds a group with one flag and one call. Member logits come from
:func:`timm_mimo.metrics.collect_member_logits`, the metrics from :mod:`timm_mimo.metrics`.

Corruptions are the 15 common corruptions x 5 severities of Hendrycks & Dietterich (ICLR 2019, "Benchmarking neural
network robustness to common corruptions and perturbations"; ImageNet-C / CIFAR-10-C), either generated on the fly by
the ``imagecorruptions`` package (PyPI ``imagecorruptions-imaug``, the maintained fork of Michaelis et al.'s
``imagecorruptions``: its single parameter set, the ImageNet-C one, on images of any size >= 32 px), or read from the
released benchmark files, whose per-dataset parameters are the ones the papers' tables report:

* CIFAR-10-C / CIFAR-100-C: ``<corruption>.npy``, ``(5·n, H, W, 3)`` uint8 images, severities 1..5 one after the
  other (n = 10,000), and ``labels.npy`` (``5·n`` or ``n`` class indices);
* Tiny-ImageNet-C: ``<corruption>/<severity>/<wnid>/*.JPEG``.
"""
import inspect
import os
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import timm
import torch
import torch.nn as nn
from PIL import Image
from timm.data import ImageDataset
from timm.utils.misc import natural_key
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import transforms

from timm_mimo.checkpoint import allow_train_args, load_checkpoint_file, run_train_args
from timm_mimo.hub import train_model_kwargs
from timm_mimo.loader import quiet_worker_signals
from timm_mimo.metrics import (
    ECE_BINS,
    collect_member_logits,
    ensemble_metrics,
    expected_calibration_error,
    nll,
    ood_metrics,
    topk_accuracy,
)

__all__ = [
    'SEVERITIES', 'CORRUPTION_METRICS', 'common_corruptions', 'known_corruptions', 'CorruptedDataset',
    'corruption_metrics',
    'BENCHMARK_CORRUPTIONS', 'CorruptionRelease', 'released_corruption_metrics',
    'open_ood_folder', 'ood_folder_metrics', 'model_from_checkpoint', 'checkpoint_ensemble_logits',
    'checkpoint_ensemble_metrics', 'reliability_bins', 'save_reliability_diagram',
]

SEVERITIES = (1, 2, 3, 4, 5)
CORRUPTION_METRICS = ('top1', 'top5', 'nll', 'ece')  # thesis Table 3.2 (CIFAR-100-c): Top-1, Top-5, NLL; and ECE
MIN_CORRUPTION_SIZE = 32  # imagecorruptions refuses smaller images
# The 15 corruptions of the benchmark (Hendrycks & Dietterich, ICLR 2019), in its order; the releases add 4 more
BENCHMARK_CORRUPTIONS = (
    'gaussian_noise', 'shot_noise', 'impulse_noise', 'defocus_blur', 'glass_blur', 'motion_blur', 'zoom_blur', 'snow',
    'frost', 'fog', 'brightness', 'contrast', 'elastic_transform', 'pixelate', 'jpeg_compression')
EXTRA_CORRUPTIONS = ('speckle_noise', 'gaussian_blur', 'spatter', 'saturate')


def _imagecorruptions():
    try:
        import imagecorruptions
    except ImportError:
        raise ImportError('corruption robustness needs the imagecorruptions package: '
                          'pip install imagecorruptions-imaug (or, in a timm_mimo checkout, '
                          'pip install ".[robustness]")') from None
    return imagecorruptions


def common_corruptions() -> Tuple[str, ...]:
    """The 15 common corruptions of ImageNet-C / CIFAR-10-C, in the benchmark's order (noise, blur, weather,
    digital)."""
    return tuple(_imagecorruptions().get_corruption_names('common'))


def known_corruptions() -> Tuple[str, ...]:
    """Every corruption :class:`CorruptedDataset` accepts: the 15 common ones and the library's 4 validation ones."""
    return tuple(_imagecorruptions().get_corruption_names('all'))


class CorruptedDataset(Dataset):
    """``dataset`` with one corruption at one severity applied to every stored image, before ``transform``.

    Decision: the image is corrupted as stored (32 px for CIFAR, as CIFAR-10-C was made), before the evaluation
    transform; the random draws of image ``i`` come from ``numpy`` seeded with ``(seed, i)``, so the corrupted set is
    the same in every run, for every loader order and worker count. Gray images are corrupted as RGB (the library
    works on RGB) and converted back to gray.

    Args:
        dataset: Returns ``(PIL image, target)`` (its own ``transform`` unset).
        corruption: One of :func:`common_corruptions` (or the library's four validation corruptions).
        severity: 1 to 5.
        transform: Applied to the corrupted PIL image (the model's evaluation transform).
        seed: Base seed of the random corruptions.
    """

    def __init__(self, dataset: Dataset, corruption: str, severity: int, transform: Optional[Callable] = None,
                 seed: int = 0):
        library = _imagecorruptions()
        names = known_corruptions()
        if corruption not in names:
            raise ValueError(f'unknown corruption {corruption!r}; choose from {", ".join(names)}')
        if severity not in SEVERITIES:
            raise ValueError(f'corruption severity must be one of {SEVERITIES}, got {severity!r}')
        self.dataset, self.corruption, self.severity = dataset, corruption, severity
        self.transform, self.seed, self._corrupt = transform, seed, library.corrupt
        # impulse_noise and glass_blur draw from a generator of their own, seeded by their `seed` argument
        self._takes_seed = 'seed' in inspect.signature(library.corruption_dict[corruption]).parameters

    def __len__(self) -> int:
        return len(self.dataset)

    def corrupt(self, image: Image.Image, index: int) -> Image.Image:
        """The corrupted copy of ``image`` (the ``index``-th of the data set: it picks the random draws)."""
        if not isinstance(image, Image.Image):
            raise TypeError(f'corruptions need PIL images from the data set, got {type(image).__name__}; open the '
                            'data set without a transform')
        if min(image.size) < MIN_CORRUPTION_SIZE:
            raise ValueError(f'image {index} is {image.size[0]}x{image.size[1]} px; the corruptions need at least '
                             f'{MIN_CORRUPTION_SIZE} px per side (resize the data set first)')
        mode = image.mode
        state = np.random.get_state()  # noqa: NPY002
        np.random.seed([self.seed, index])  # noqa: NPY002  (the library draws from numpy's global generator)
        try:
            kwargs = dict(seed=int(np.random.randint(2 ** 31 - 1))) if self._takes_seed else {}  # noqa: NPY002
            corrupted = self._corrupt(np.asarray(image.convert('RGB')), corruption_name=self.corruption,
                                      severity=self.severity, **kwargs)
        finally:
            np.random.set_state(state)  # noqa: NPY002
        corrupted = Image.fromarray(np.uint8(corrupted))
        return corrupted.convert(mode) if mode != 'RGB' else corrupted

    def __getitem__(self, index: int) -> Tuple[Any, Any]:
        image, target = self.dataset[index]
        image = self.corrupt(image, index)
        return (self.transform(image) if self.transform is not None else image), target


def _subset(dataset: Dataset, num_images: Optional[int], seed: int) -> Dataset:
    """The first ``num_images`` of a fixed-seed permutation (folder data sets are sorted by class)."""
    if num_images is None or num_images >= len(dataset):
        return dataset
    if num_images <= 0:
        raise ValueError(f'num_images must be positive, got {num_images}')
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:num_images]
    return Subset(dataset, sorted(order.tolist()))


def corruption_metrics(model: nn.Module, dataset: Dataset, transform: Callable, device: torch.device,
                       corruptions: Optional[Sequence[str]] = None, severities: Sequence[int] = SEVERITIES,
                       num_images: Optional[int] = None, batch_size: int = 256, workers: int = 0, seed: int = 0,
                       autocast_dtype: Optional[torch.dtype] = None,
                       channels_last: bool = False) -> Dict[str, float]:
    """Top-1, Top-5, NLL and ECE of the ensemble under every corruption and severity.

    Each (corruption, severity) pair is one test set. Columns: ``c_<corruption>_{top1,top5,nll,ece}`` (mean over
    severities), ``c_s<k>_{top1,top5,nll,ece}`` (mean over corruptions at severity k) and
    ``c_mean_{top1,top5,nll,ece}`` (mean over all pairs, the CIFAR-10-C convention; thesis Table 3.2 reports Top-1,
    Top-5 and NLL on CIFAR-100-c), plus ``c_num_images``. Top-5 is Top-1 when the model has fewer than 5 classes. NLL
    is without temperature scaling
    (temperatures fitted in-domain do not transfer to shifted data; MixMo's thesis, HAL tel-03952815, reports
    CIFAR-100-c NLL the same way).

    Args:
        model: timm or MIMO model.
        dataset: The clean test set returning ``(PIL image, target)`` (no transform).
        transform: The model's evaluation transform.
        device: Where the model runs.
        corruptions: Names (default: the 15 common ones).
        severities: Subset of 1..5.
        num_images: Evaluate on this many images of the test set (a fixed-seed random subset); ``None`` = all.
        batch_size: Loader batch size.
        workers: Loader workers.
        seed: Seed of the subset and of the random corruptions.
        autocast_dtype: Mixed precision dtype, ``None`` for full precision.
        channels_last: Feed channels-last batches.
    """
    corruptions = tuple(corruptions) if corruptions is not None else common_corruptions()
    if not corruptions or not severities:
        raise ValueError('corruption_metrics needs at least one corruption and one severity')
    dataset = _subset(dataset, num_images, seed)
    return _corruption_columns(
        lambda corruption, severity: CorruptedDataset(dataset, corruption, severity, transform, seed),
        corruptions, severities, model, device, batch_size, workers, autocast_dtype, channels_last)


def _corruption_columns(corrupted_set: Callable[[str, int], Dataset], corruptions: Sequence[str],
                        severities: Sequence[int], model: nn.Module, device: torch.device, batch_size: int,
                        workers: int, autocast_dtype: Optional[torch.dtype], channels_last: bool) -> Dict[str, float]:
    """The ``c_*`` columns from the test set of every (corruption, severity) pair (``corrupted_set(c, s)``)."""
    per_pair: Dict[Tuple[str, int], Tuple[float, float, float, float]] = {}
    num_images = None
    for corruption in corruptions:
        for severity in severities:
            corrupted = corrupted_set(corruption, severity)
            if num_images is not None and len(corrupted) != num_images:
                raise ValueError(f'{corruption} severity {severity} holds {len(corrupted)} images, the pairs before '
                                 f'it {num_images}: every corrupted test set must hold the same images')
            num_images = len(corrupted)
            loader = DataLoader(corrupted, batch_size=batch_size, shuffle=False, num_workers=workers,
                                worker_init_fn=quiet_worker_signals)
            member_logits, targets = collect_member_logits(model, loader, device, autocast_dtype, channels_last)
            logits = member_logits.double().mean(dim=1)
            top5 = min(5, logits.shape[-1])
            per_pair[corruption, severity] = (topk_accuracy(logits, targets, 1), topk_accuracy(logits, targets, top5),
                                              nll(logits, targets),
                                              expected_calibration_error(logits.softmax(dim=-1), targets, ECE_BINS))

    def mean(keys: List[Tuple[str, int]], i: int) -> float:
        return sum(per_pair[key][i] for key in keys) / len(keys)

    out: Dict[str, float] = OrderedDict(c_num_images=num_images)
    groups = [(f'c_{c}', [(c, s) for s in severities]) for c in corruptions]
    groups += [(f'c_s{s}', [(c, s) for c in corruptions]) for s in severities]
    groups.append(('c_mean', list(per_pair)))
    for prefix, keys in groups:
        for i, metric in enumerate(CORRUPTION_METRICS):
            out[f'{prefix}_{metric}'] = mean(keys, i)
    return out


class _ImageList(Dataset):
    """``(PIL image, target)`` from a list of ``(path, target)`` (the release's JPEG files)."""

    def __init__(self, samples: Sequence[Tuple[str, int]], transform: Optional[Callable] = None):
        self.samples, self.transform = list(samples), transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Tuple[Any, int]:
        path, target = self.samples[index]
        with Image.open(path) as image:
            image = image.convert('RGB')
        return (self.transform(image) if self.transform is not None else image), target


class _ArrayImages(Dataset):
    """``(PIL image, target)`` from rows of a uint8 image array (a memory-mapped ``.npy``)."""

    def __init__(self, images: np.ndarray, targets: np.ndarray, transform: Optional[Callable] = None):
        self.images, self.targets, self.transform = images, targets, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Tuple[Any, int]:
        image = Image.fromarray(np.ascontiguousarray(self.images[index]))
        return (self.transform(image) if self.transform is not None else image), int(self.targets[index])


class CorruptionRelease:
    """A released corruption benchmark on disk: CIFAR-10-C / CIFAR-100-C or Tiny-ImageNet-C (module docstring).

    Args:
        root: The release folder (``CIFAR-10-C/``, ``CIFAR-100-C/`` or ``Tiny-ImageNet-C/``).
        class_to_idx: Tiny-ImageNet-C: class folder (wnid) -> index of the model's training set (timm's folder reader
            gives it for the clean split); ``None``: the wnids of the release in timm's (natural) sort order.

    Raises:
        ValueError: ``root`` is in neither layout; the message says what was found and what is expected.
    """

    def __init__(self, root: str, class_to_idx: Optional[Dict[str, int]] = None):
        if not os.path.isdir(root):
            raise ValueError(f'corruption release folder {root!r} does not exist')
        self.root, self.class_to_idx = root, class_to_idx
        entries = sorted(os.listdir(root))
        if 'labels.npy' in entries:
            self.layout = 'cifar'
            self.corruptions = tuple(name[:-4] for name in entries if name.endswith('.npy') and name != 'labels.npy')
        else:
            self.layout = 'tiny'
            self.corruptions = tuple(name for name in entries if os.path.isdir(os.path.join(root, name)) and any(
                os.path.isdir(os.path.join(root, name, str(s))) for s in SEVERITIES))
        if not self.corruptions:
            shown = ', '.join(entries[:8]) + (', ...' if len(entries) > 8 else '')
            raise ValueError(
                f'{root!r} is not a released corruption benchmark (found: {shown or "nothing"}); expected '
                'CIFAR-10-C / CIFAR-100-C (<corruption>.npy files and labels.npy) or Tiny-ImageNet-C '
                '(<corruption>/<severity>/<class>/*.JPEG)')
        self._labels: Optional[np.ndarray] = None

    @property
    def name(self) -> str:
        return 'CIFAR-*-C' if self.layout == 'cifar' else 'Tiny-ImageNet-C'

    def default_corruptions(self) -> Tuple[str, ...]:
        """The benchmark's 15 corruptions (its mean is over them), which must all be in the release."""
        missing = [name for name in BENCHMARK_CORRUPTIONS if name not in self.corruptions]
        if missing:
            raise ValueError(f'{self.root!r} lacks {len(missing)} of the 15 benchmark corruptions ({", ".join(missing)}'
                             f'); name the ones to evaluate, among: {", ".join(self.corruptions)}')
        return BENCHMARK_CORRUPTIONS

    def check(self, corruptions: Sequence[str], severities: Sequence[int]) -> None:
        """Raise ``ValueError`` for a corruption or severity the release does not hold."""
        for corruption in corruptions:
            if corruption not in self.corruptions:
                raise ValueError(f'{corruption!r} is not in {self.root!r}; it holds: {", ".join(self.corruptions)}')
            if self.layout == 'tiny':
                for severity in severities:
                    if not os.path.isdir(os.path.join(self.root, corruption, str(severity))):
                        raise ValueError(f'{self.root!r} has no severity {severity} of {corruption!r} '
                                         f'(no folder {corruption}/{severity})')

    def labels(self) -> np.ndarray:
        """CIFAR-*-C: the ``labels.npy`` class indices (``5·n`` or ``n`` of them)."""
        if self._labels is None:
            labels = np.load(os.path.join(self.root, 'labels.npy'), allow_pickle=False)
            if labels.ndim != 1 or labels.dtype.kind not in 'iu':
                raise ValueError(f'{os.path.join(self.root, "labels.npy")!r} must hold one integer class index per '
                                 f'image, got shape {labels.shape} of {labels.dtype}')
            self._labels = labels
        return self._labels

    def max_label(self) -> int:
        """The largest class index of the release (CIFAR-*-C: ``labels.npy``; Tiny-ImageNet-C: its class map)."""
        if self.layout == 'cifar':
            return int(self.labels().max())
        return max(self._class_map().values())

    def _class_map(self) -> Dict[str, int]:
        if self.class_to_idx is not None:
            return dict(self.class_to_idx)
        wnids = {name for corruption in self.corruptions for severity in SEVERITIES
                 for folder in [os.path.join(self.root, corruption, str(severity))] if os.path.isdir(folder)
                 for name in os.listdir(folder) if os.path.isdir(os.path.join(folder, name))}
        return {wnid: index for index, wnid in enumerate(sorted(wnids, key=natural_key))}

    def dataset(self, corruption: str, severity: int, transform: Optional[Callable] = None) -> Dataset:
        """The test set of one (corruption, severity): ``(PIL image, target)`` through ``transform``."""
        self.check([corruption], [severity])
        if self.layout == 'cifar':
            path = os.path.join(self.root, f'{corruption}.npy')
            images = np.load(path, mmap_mode='r', allow_pickle=False)
            if images.ndim not in (3, 4) or images.dtype != np.uint8 or len(images) % len(SEVERITIES) or (
                    images.ndim == 4 and images.shape[-1] != 3):
                raise ValueError(f'{path!r} must hold 5·n uint8 images (5·n, H, W, 3), severities 1..5 in order; got '
                                 f'shape {images.shape} of {images.dtype}')
            per_severity = len(images) // len(SEVERITIES)
            labels = self.labels()
            if len(labels) not in (len(images), per_severity):
                raise ValueError(f'{os.path.join(self.root, "labels.npy")!r} holds {len(labels)} labels for '
                                 f'{len(images)} images of {corruption!r} (expected {len(images)} or {per_severity})')
            rows = slice((severity - 1) * per_severity, severity * per_severity)
            targets = labels[rows] if len(labels) == len(images) else labels
            return _ArrayImages(images[rows], targets, transform)
        folder = os.path.join(self.root, corruption, str(severity))
        class_map = self._class_map()
        extensions = {'.jpeg', '.jpg', '.png'}
        samples = []
        for wnid in sorted(os.listdir(folder), key=natural_key):
            class_folder = os.path.join(folder, wnid)
            if not os.path.isdir(class_folder):
                continue
            if wnid not in class_map:
                raise ValueError(f'class folder {wnid!r} of {folder!r} is not a class of the model\'s data (its '
                                 f'{len(class_map)} classes: {", ".join(sorted(class_map)[:4])}, ...)')
            samples += [(os.path.join(class_folder, name), class_map[wnid])
                        for name in sorted(os.listdir(class_folder), key=natural_key)
                        if os.path.splitext(name)[1].lower() in extensions]
        if not samples:
            raise ValueError(f'{folder!r} holds no images (<class>/*.JPEG)')
        return _ImageList(samples, transform)


def released_corruption_metrics(model: nn.Module, release: CorruptionRelease, transform: Callable,
                                device: torch.device, corruptions: Optional[Sequence[str]] = None,
                                severities: Sequence[int] = SEVERITIES, num_images: Optional[int] = None,
                                batch_size: int = 256, workers: int = 0, seed: int = 0,
                                autocast_dtype: Optional[torch.dtype] = None,
                                channels_last: bool = False) -> Dict[str, float]:
    """The columns of :func:`corruption_metrics`, on a released benchmark (CIFAR-10-C / -100-C, Tiny-ImageNet-C).

    Args:
        model: timm or MIMO model.
        release: The benchmark files (:class:`CorruptionRelease`).
        transform: The model's evaluation transform (the released images are stored at the data set's size).
        device: Where the model runs.
        corruptions: Names (default: the benchmark's 15, all of which must be in the release).
        severities: Subset of 1..5.
        num_images: Evaluate this many images of every (corruption, severity) test set, the same fixed-seed subset
            for each (the releases store the same images in the same order at every severity); ``None`` = all.
        batch_size: Loader batch size.
        workers: Loader workers.
        seed: Seed of the subset.
        autocast_dtype: Mixed precision dtype, ``None`` for full precision.
        channels_last: Feed channels-last batches.
    """
    corruptions = tuple(corruptions) if corruptions else release.default_corruptions()
    if not severities:
        raise ValueError('released_corruption_metrics needs at least one severity')
    release.check(corruptions, severities)
    return _corruption_columns(
        lambda corruption, severity: _subset(release.dataset(corruption, severity, transform), num_images, seed),
        corruptions, severities, model, device, batch_size, workers, autocast_dtype, channels_last)


def open_ood_folder(root: str, input_size: Tuple[int, int, int], transform: Callable) -> Dataset:
    """Every image under ``root`` (any folder layout; labels ignored) for out-of-distribution detection.

    Decision: images are first resized (shorter side to the model's input size) so that a folder of any resolution
    works with the model's evaluation transform, which then pads / centre-crops as it does on the test set.
    """
    if not os.path.isdir(root):
        raise ValueError(f'OOD image folder {root!r} does not exist')
    try:
        dataset = ImageDataset(root, transform=transforms.Compose([transforms.Resize(min(input_size[1:])), transform]))
    except (RuntimeError, AssertionError):
        dataset = None
    if dataset is None or len(dataset) == 0:
        raise ValueError(f'OOD image folder {root!r} holds no images (.png, .jpg, .jpeg in any subfolder)')
    return dataset


def ood_folder_metrics(model: nn.Module, in_member_logits: torch.Tensor, ood_dataset: Dataset, device: torch.device,
                       batch_size: int = 256, workers: int = 0, autocast_dtype: Optional[torch.dtype] = None,
                       channels_last: bool = False) -> Dict[str, float]:
    """OOD detection of the test set against ``ood_dataset``: ``ood_num_images`` and
    ``ood_{msp,entropy,mutual_info}_{auroc,aupr,fpr95}`` (:func:`timm_mimo.metrics.ood_metrics`).

    Args:
        model: The model that produced ``in_member_logits``.
        in_member_logits: ``(N, M, K)`` member logits on the in-distribution test set.
        ood_dataset: Out-of-distribution images (e.g. :func:`open_ood_folder`).
        device: Where the model runs.
    """
    loader = DataLoader(ood_dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        worker_init_fn=quiet_worker_signals)
    out_member_logits, _ = collect_member_logits(model, loader, device, autocast_dtype, channels_last)
    out: Dict[str, float] = OrderedDict(ood_num_images=out_member_logits.shape[0])
    out.update(ood_metrics(in_member_logits, out_member_logits))
    return out


def model_from_checkpoint(checkpoint: str, model_name: Optional[str] = None, use_ema: bool = False,
                          **model_kwargs: Any) -> nn.Module:
    """The model of a ``train.py`` checkpoint (timm_mimo's or timm's), with its weights (``weights_only`` load).

    The architecture comes from ``model_name`` or the run's arguments (:func:`timm_mimo.checkpoint.run_train_args`:
    the ``args.yaml`` beside the checkpoint, else the arguments stored in it: its ``model``, ``model_kwargs``,
    ``num_classes``, ``in_chans`` / ``input_size`` and ``num_members``) or else the checkpoint's ``arch``;
    ``model_kwargs`` override the run's.
    """
    if not os.path.isfile(checkpoint):
        raise ValueError(f'checkpoint {checkpoint!r} does not exist')
    beside = os.path.join(os.path.dirname(os.path.abspath(checkpoint)), 'args.yaml')
    state = None if os.path.isfile(beside) and not use_ema else load_checkpoint_file(checkpoint)
    config = run_train_args(checkpoint, state)
    kwargs = dict(train_model_kwargs(config), **model_kwargs)
    name = model_name or config.get('model')
    if not name and state is None:
        state = load_checkpoint_file(checkpoint)
    if not name:
        name = state.get('arch') if isinstance(state, dict) else None
    if use_ema and not (isinstance(state, dict) and 'state_dict_ema' in state):
        raise ValueError(f'checkpoint {checkpoint!r} holds no EMA weights (state_dict_ema): drop use_ema / --use-ema '
                         'or train with --model-ema')
    if not name:
        raise ValueError(f'checkpoint {checkpoint!r} names no architecture and has no args.yaml beside it; '
                         'pass the model name')
    model = timm.create_model(name, **kwargs)
    try:
        with allow_train_args():
            timm.models.load_checkpoint(model, checkpoint, use_ema=use_ema, weights_only=True)
    except (RuntimeError, KeyError) as exc:
        raise ValueError(f'checkpoint {checkpoint!r} does not fit model {name!r}: '
                         f'{" ".join(str(exc).split())[:240]}') from None
    return model


class CheckpointEnsemble(nn.Module):
    """A deep ensemble of networks (plain or MIMO) behind the MIMO call contract: its members are the networks.

    ``forward_members(x)`` is ``(B, E, K)``: each network's own logits (a MIMO network averages its members' logits
    first); ``model(x)`` averages them. So every evaluation of a MIMO model (metrics, corruptions, OOD, reliability
    diagram) evaluates the ensemble as it is, e.g. the papers' "2 Nets" and "2 MixMos" rows.
    """

    def __init__(self, networks: Sequence[nn.Module]):
        super().__init__()
        if not networks:
            raise ValueError('a checkpoint ensemble needs at least one network')
        classes = {network.num_classes for network in networks}
        if len(classes) != 1:
            raise ValueError(f'the networks disagree on the class count: {sorted(classes)}')
        self.networks = nn.ModuleList(networks)
        self.num_members = len(networks)
        self.num_classes = classes.pop()
        self.pretrained_cfg = networks[0].pretrained_cfg  # the data config (input size, mean, std) of the first

    def forward_members(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, E, K)``: every network's (member-averaged) logits."""
        return torch.stack([network(x) for network in self.networks], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_members(x).mean(dim=1)


def checkpoint_ensemble_logits(models: Sequence[nn.Module], loader: DataLoader, device: torch.device,
                               autocast_dtype: Optional[torch.dtype] = None,
                               channels_last: bool = False) -> Tuple[torch.Tensor, List[torch.Tensor], torch.Tensor]:
    """Logits of a deep ensemble of networks (each a plain or a MIMO model) on one loader.

    Returns:
        ``(network_logits, member_logits, targets)``: ``(N, E, K)`` with each network's own (member-averaged)
        logits, the list of every network's ``(N, M_e, K)`` member logits, and ``(N,)`` targets.
    """
    if not models:
        raise ValueError('a checkpoint ensemble needs at least one model')
    member_logits, targets = [], None
    for model in models:
        logits, model_targets = collect_member_logits(model.to(device), loader, device, autocast_dtype,
                                                      channels_last)
        if targets is not None and not torch.equal(targets, model_targets):
            raise ValueError('the loader returned other targets for another network: use a loader without '
                             'shuffling')
        if member_logits and logits.shape[-1] != member_logits[0].shape[-1]:
            raise ValueError(f'networks disagree on the class count: {member_logits[0].shape[-1]} vs '
                             f'{logits.shape[-1]}')
        member_logits.append(logits)
        targets = model_targets
    return torch.stack([logits.mean(dim=1) for logits in member_logits], dim=1), member_logits, targets


def checkpoint_ensemble_metrics(models: Sequence[nn.Module], loader: DataLoader, device: torch.device,
                                autocast_dtype: Optional[torch.dtype] = None,
                                channels_last: bool = False) -> Dict[str, float]:
    """The metrics of :func:`timm_mimo.metrics.ensemble_metrics` for a deep ensemble of networks.

    Decision: the networks are the ensemble's members: it averages the networks' logits (each network its members'
    logits first), ``member_top1`` / ``top1_m<i>`` / ``d_re`` are per network, as for the papers' "2 Nets" /
    "2 MixMos" rows. ``subnet_top1`` is the mean top-1 of every subnetwork of every network. Adds ``num_networks``.
    """
    network_logits, member_logits, targets = checkpoint_ensemble_logits(models, loader, device, autocast_dtype,
                                                                        channels_last)
    out: Dict[str, float] = OrderedDict(num_networks=len(models))
    out.update(ensemble_metrics(network_logits, targets))
    subnets = torch.cat(member_logits, dim=1)
    out['subnet_top1'] = sum(topk_accuracy(subnets[:, i], targets, 1) for i in range(subnets.shape[1])) / \
        subnets.shape[1]
    return out


def reliability_bins(probs: torch.Tensor, targets: torch.Tensor,
                     num_bins: int = ECE_BINS) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-bin mean confidence, accuracy and sample count over equal-width confidence bins.

    Bins are ``[i/n, (i+1)/n)`` with confidence 1 in the last bin, as torchmetrics' ECE bins them, so that
    ``Σ count · |accuracy − confidence| / N`` is :func:`~timm_mimo.metrics.expected_calibration_error`. Empty bins
    have confidence and accuracy 0.
    """
    confidence, prediction = probs.double().max(dim=-1)
    correct = (prediction == targets).double()
    bins = (confidence * num_bins).floor().long().clamp(0, num_bins - 1)
    counts = torch.zeros(num_bins, dtype=torch.float64).index_add_(0, bins, torch.ones_like(confidence))
    conf_sum = torch.zeros(num_bins, dtype=torch.float64).index_add_(0, bins, confidence)
    acc_sum = torch.zeros(num_bins, dtype=torch.float64).index_add_(0, bins, correct)
    safe = counts.clamp_min(1)
    return conf_sum / safe, acc_sum / safe, counts


def save_reliability_diagram(probs: torch.Tensor, targets: torch.Tensor, path: str, title: str = '',
                             num_bins: int = ECE_BINS) -> str:
    """Write a reliability diagram (accuracy per confidence bin against the diagonal, Guo et al. 2017) as PNG.

    Returns:
        ``path``.
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    confidence, accuracy, counts = reliability_bins(probs, targets, num_bins)
    edges = torch.linspace(0, 1, num_bins + 1)
    centers = ((edges[:-1] + edges[1:]) / 2).numpy()
    width = 1.0 / num_bins
    ece = expected_calibration_error(probs, targets, num_bins)
    fig, (ax, ax_hist) = plt.subplots(2, 1, figsize=(4.5, 5.5), sharex=True, gridspec_kw=dict(height_ratios=[3, 1]))
    filled = counts.numpy() > 0
    ax.bar(centers[filled], accuracy.numpy()[filled], width=width, edgecolor='black', label='accuracy')
    ax.bar(centers[filled], (confidence - accuracy).numpy()[filled], bottom=accuracy.numpy()[filled], width=width,
           color='tab:red', alpha=0.3, edgecolor='tab:red', label='gap to confidence')
    ax.plot([0, 1], [0, 1], 'k--', linewidth=1)
    ax.set_ylabel('accuracy')
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(f'{title} (ECE {ece:.2f} %)'.strip())
    ax.legend(loc='upper left')
    ax_hist.bar(centers, (counts / counts.sum()).numpy(), width=width, edgecolor='black')
    ax_hist.set_xlabel('confidence')
    ax_hist.set_ylabel('share')
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
