"""The data an evaluation opens beside ``--split``: the held-out split of ``--fit-temperature`` (and the columns
of the fit) and the released corruption files of ``--corruption-dir``, each checked before any evaluation runs.
"""
import argparse
import os
import sys
import time
from collections import OrderedDict
from typing import Any, Dict, Iterator, List, Optional

import torch
from torch.utils.data import DataLoader

from timm_mimo.calibration import columns_after, fit_temperature, temperature_heads
from timm_mimo.cli.args import CliError, reader_kwargs
from timm_mimo.cli.data_path import device_batches, pin_memory
from timm_mimo.data import apply_class_names, dataset_class_names, open_dataset
from timm_mimo.evaluation import MIN_CORRUPTION_SIZE, CorruptionRelease
from timm_mimo.labels import release_class_names, release_label_map
from timm_mimo.loader import quiet_worker_signals
from timm_mimo.strict_images import strict_images
from timm_mimo.temperature_provenance import provenance_columns

__all__ = ['logged_batches', 'shared_images', 'open_calibration_split', 'fit_temperature_columns',
           'check_cifar_c_order', 'open_release', 'check_corruptible']


def logged_batches(loader: DataLoader, log_freq: int) -> Iterator[Any]:
    """The loader's batches, printing ``Test: [i/N]`` every ``log_freq`` batches (timm's --log-freq)."""
    start = time.perf_counter()
    for index, batch in enumerate(loader):
        if index % log_freq == 0 or index + 1 == len(loader):
            print(f'Test: [{index + 1:>4d}/{len(loader)}]  {time.perf_counter() - start:.1f}s', flush=True)
        yield batch


def shared_images(first: Any, second: Any) -> Optional[int]:
    """How many images two opened splits have in common: folder readers compare their files, torchvision data sets
    their ``train`` flag and root; ``None`` when the readers cannot tell."""
    def files(dataset: Any) -> Optional[set]:
        samples = getattr(getattr(dataset, 'reader', None), 'samples', None)
        return {os.path.realpath(str(sample[0])) for sample in samples} if samples else None

    first_files, second_files = files(first), files(second)
    if first_files is not None and second_files is not None:
        return len(first_files & second_files)
    if type(first) is type(second) and isinstance(getattr(first, 'train', None), bool):
        same = first.train == second.train and os.path.realpath(str(getattr(first, 'root', ''))) == \
            os.path.realpath(str(getattr(second, 'root', '')))
        return len(first) if same else 0
    return None


def open_calibration_split(args: argparse.Namespace, dataset: Any, transform: Any) -> Any:
    """``--fit-temperature SPLIT``, opened like ``--split``; refused when it shares any image with ``--split``."""
    calibration_set = open_dataset(args.dataset, args.data_dir, args.fit_temperature, False, args.dataset_download,
                                   transform, args.class_map, **reader_kwargs(args))
    strict_images(calibration_set)
    # labelled through the run's classes, as the reported split is (a held-out split may lack a class)
    apply_class_names(calibration_set, dataset_class_names(dataset),
                      f'--fit-temperature split {args.fit_temperature!r}')
    common = shared_images(calibration_set, dataset)
    if common:
        raise CliError(f'--fit-temperature {args.fit_temperature!r} shares {common} images with --split '
                       f'{args.split!r}: the temperature must be fitted on held-out images (name a split with none of '
                       'the reported images)')
    return calibration_set


def fit_temperature_columns(args: argparse.Namespace, eval_model: torch.nn.Module, model: torch.nn.Module,
                            calibration_set: Any, data_config: Dict[str, Any], member_logits: torch.Tensor,
                            targets: torch.Tensor, device: torch.device,
                            autocast_dtype: Optional[torch.dtype]) -> Dict[str, Any]:
    """The temperature fitted on the held-out ``calibration_set`` (loaded as the reported split is;
    :func:`timm_mimo.calibration.fit_temperature`, not applied: the later evaluations use the model as given) and the
    reported split's NLL / ECE after it. A fit that ends at its search bound is reported on stderr."""
    loader = device_batches(DataLoader(calibration_set, batch_size=args.batch_size, shuffle=False,
                                       num_workers=args.workers, pin_memory=pin_memory(args, device),
                                       worker_init_fn=quiet_worker_signals),
                            args, data_config, device)
    print(f'Fitting the temperature on split {args.fit_temperature!r} ({len(calibration_set)} images)', flush=True)
    if not temperature_heads(model):
        raise CliError(f'--fit-temperature: {args.model!r} has no timm_mimo member heads to hold a temperature (a '
                       'plain timm model); temperature scaling is deployable on timm_mimo MIMO models')
    _, fit = fit_temperature(eval_model, logged_batches(loader, args.log_freq), device, autocast_dtype,
                             args.channels_last, apply=False)
    if fit['temperature_at_bound']:
        print(f"warning: the temperature fit on split {args.fit_temperature!r} ended at its search bound (T = "
              f"{fit['temperature']:.6g}): its NLL kept falling, which calibrated logits do not do; check the split's "
              'labels and the model (temperature_at_bound is true in the results)', file=sys.stderr, flush=True)
    columns = columns_after(fit, member_logits, targets)
    provenance = provenance_columns(args.checkpoint, fit['temperature_at_bound'], len(calibration_set))
    if provenance['temperature_flag']:
        print(f"warning: the temperature {columns['temperature']:g} is {provenance['temperature_flag']}; export "
              'refuses it', file=sys.stderr, flush=True)
    return OrderedDict(temperature=columns['temperature'], temperature_at_bound=columns['temperature_at_bound'],
                       temperature_split=args.fit_temperature, temperature_images=len(calibration_set),
                       loss_ts=columns['loss_ts'], ece_ts=columns['ece_ts'], **provenance)


def check_cifar_c_order(root: str, release: CorruptionRelease, names: Optional[List[Optional[str]]]) -> None:
    """CIFAR-*-C labels (``labels.npy``) are torchvision's CIFAR class indices, whose class names are sorted: the
    run's class list must be in that order (torchvision's names, an image folder of the class names, or of the
    indices '0'..'K-1'), else its labels would silently be other classes."""
    if release.layout != 'cifar' or not names:
        return
    known = [str(name) for name in names if name is not None]
    if known == sorted(known) or known == [str(index) for index in range(len(known))]:
        return
    raise ValueError(f'{root!r} is labelled by torchvision\'s CIFAR class indices (sorted class names), but the run\'s '
                     f'classes are in another order ({", ".join(known[:4])}, ...): evaluate a model trained on '
                     'torch/cifar10 / torch/cifar100, or on an image folder whose folders are the class names')


def open_release(root: str, dataset: Any, num_classes: int) -> CorruptionRelease:
    """The release of ``--corruption-dir``, its class folders (Tiny-ImageNet-C's wnids) mapped to the indices the clean
    split is evaluated with (the run's class names when it recorded them); its labels must fit the model."""
    names = dataset_class_names(dataset)
    class_to_idx = {name: index for index, name in enumerate(names) if name is not None} if names else None
    release = CorruptionRelease(root, class_to_idx=class_to_idx)
    check_cifar_c_order(root, release, names)
    if release.layout == 'cifar':  # labels.npy indexes its data set's classes: scored by name, like the wnids
        labels = release.labels()
        where = f'--corruption-dir {os.path.join(root, "labels.npy")!r}'
        release.relabel(release_label_map(labels, release_class_names(int(labels.max(initial=0)) + 1, names), names,
                                          num_classes, where))
    largest = release.max_label()
    if largest >= num_classes:
        raise ValueError(f'{root!r} has class index {largest} but the model has {num_classes} outputs (a '
                         f'{release.name} of another data set?)')
    return release


def check_corruptible(dataset: Any) -> None:
    """Refuse, before the evaluation, a split whose images the corruptions cannot take (too small, not PIL)."""
    image = dataset[0][0]
    size = getattr(image, 'size', None)
    found = f'{size[0]}x{size[1]} px' if isinstance(size, tuple) else f'a {type(image).__name__}, not a PIL image'
    if not isinstance(size, tuple) or min(size) < MIN_CORRUPTION_SIZE:
        raise CliError(f'--corruptions needs images of at least {MIN_CORRUPTION_SIZE} px per side; the split\'s first '
                       f'image is {found} (use a data set of larger images)')
