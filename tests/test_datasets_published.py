"""The recipes' datasets in their published layouts (timm_mimo.datasets), and the class checks before the first step.

Every layout is a faithful miniature written here (tests/published_miniatures.py): the release's folder and file
names and annotation formats, tiny one-colour images whose colour says their class.
"""
import json
import os

import pytest
import torch
import torchvision
import yaml
from PIL import Image
from published_miniatures import (
    CIFAR10_NAMES,
    IMAGENET_WNIDS,
    IMAGENET_WORDS,
    class_colour,
    tiny_val_labels,
    write_cifar_folder,
    write_cifar_python,
    write_devkit,
    write_imagenet,
    write_jpeg,
    write_tiny_imagenet,
)

from timm_mimo import hub
from timm_mimo.cli import train, validate
from timm_mimo.data import DataError, dataset_class_descriptions, dataset_class_names, open_dataset
from timm_mimo.datasets import CLASS_SUBSETS, IMAGENET100_WNIDS

TINY3 = ['n03444034', 'n01443537', 'n02124075']  # wnids.txt order (not sorted): labels 0, 1, 2


def _colour_label(image: Image.Image, num_classes: int) -> int:
    """The class whose colour an image is painted in (JPEG: nearest colour)."""
    pixel = image.convert('RGB').getpixel((image.width // 2, image.height // 2))
    return min(range(num_classes), key=lambda k: sum((a - b) ** 2 for a, b in zip(pixel, class_colour(k))))


@pytest.fixture(scope='session')
def tiny3(tmp_path_factory):
    """Tiny ImageNet as released with three colour-coded classes, 12 training images each."""
    return write_tiny_imagenet(str(tmp_path_factory.mktemp('tiny3')), TINY3, train_per_class=12)


@pytest.fixture(scope='session')
def imagenet_small(tmp_path_factory):
    """ImageNet as released with the 100 ImageNet-100 classes and three others; flat val/ + LOC_val_solution.csv."""
    extra = [wnid for wnid in IMAGENET_WNIDS if wnid not in set(IMAGENET100_WNIDS)][:3]
    return write_imagenet(str(tmp_path_factory.mktemp('imagenet')), sorted(list(IMAGENET100_WNIDS) + extra),
                          train_per_class=1)


# --- Tiny ImageNet -------------------------------------------------------------------------------------------------

def test_tiny_imagenet_val_files_get_the_labels_of_val_annotations_in_wnids_order(tiny3):
    dataset = open_dataset('tinyimagenet', tiny3, 'val')
    assert dataset_class_names(dataset) == TINY3  # wnids.txt order, not sorted
    expected = tiny_val_labels(TINY3)
    assert len(dataset) == len(expected)
    for index in range(len(dataset)):
        image, label = dataset[index]
        file = os.path.basename(dataset.reader.samples[index][0])
        number = int(file[len('val_'):-len('.JPEG')])
        assert label == expected[number] == _colour_label(image, 3), file


def test_tiny_imagenet_train_reads_wnid_images_folders_and_words(tiny3):
    dataset = open_dataset('tinyimagenet', tiny3, 'train')
    assert len(dataset) == 36 and dataset_class_names(dataset) == TINY3
    assert all(_colour_label(dataset[i][0], 3) == dataset[i][1] for i in range(0, 36, 5))
    assert dataset_class_descriptions(dataset) == {wnid: IMAGENET_WORDS[wnid] for wnid in TINY3}
    assert 'train/<wnid>/images/' in dataset.reader.layout


def test_tiny_imagenet_is_detected_in_an_image_folder(tiny3):
    """The issue's case: --dataset '' on tiny-imagenet-200 read one class named 'images'."""
    for split in ('train', 'val'):
        named, detected = open_dataset('tinyimagenet', tiny3, split), open_dataset('', tiny3, split)
        assert dataset_class_names(detected) == TINY3
        assert detected.reader.samples == named.reader.samples


def test_tiny_imagenet_test_split_is_refused_as_unlabelled(tiny3):
    with pytest.raises(DataError, match=r"split 'test' of Tiny ImageNet .* is unlabelled .* evaluate on 'val'"):
        open_dataset('tinyimagenet', tiny3, 'test')


def test_tiny_imagenet_val_image_without_annotation_is_refused(tmp_path):
    top = write_tiny_imagenet(str(tmp_path), TINY3[:2])
    write_jpeg(os.path.join(top, 'val', 'images', 'val_99.JPEG'), (0, 0, 0))
    with pytest.raises(DataError, match=r"1 images of .* have no line in .*val_annotations.txt.*'val_99.JPEG'"):
        open_dataset('tinyimagenet', top, 'val')


def test_tiny_imagenet_trains_with_its_wnids_and_records_them(tiny3, tmp_path, capsys):
    """A few steps on the colour-coded classes; no --num-classes: the head takes the 3 classes, args.yaml and the
    checkpoint record them in wnids.txt order with their words.txt names."""
    out = tmp_path / 'out'
    argv = ['--model', 'test_resnet', '--dataset', 'tinyimagenet', '--data-dir', tiny3, '--train-split', 'train',
            '--val-split', 'val', '--img-size', '16', '-b', '6', '--epochs', '1', '--workers', '0', '--device', 'cpu',
            '--sched', 'none', '--lr', '0.05', '--crop-pad', '2', '--output', str(out), '--experiment', 'run']
    assert train.main(argv) == 0
    recorded = yaml.safe_load(open(out / 'run' / 'args.yaml'))
    assert recorded['num_classes'] == 3 and recorded['class_names'] == TINY3
    assert recorded['class_descriptions'] == {wnid: IMAGENET_WORDS[wnid] for wnid in TINY3}
    state = torch.load(out / 'run' / 'last.pth.tar', weights_only=True)
    assert state['class_names'] == TINY3
    assert state['state_dict']['fc.weight'].shape[0] == 3
    # the evaluation's dry run reads the run's classes; test/ (unlabelled) is one error line
    base = ['--config', str(out / 'run' / 'args.yaml'), '--checkpoint', str(out / 'run' / 'last.pth.tar'),
            '--device', 'cpu', '--dry-run']
    assert validate.main([*base, '--split', 'val']) == 0
    printed = capsys.readouterr().out
    assert f"3: {TINY3[0]} ({IMAGENET_WORDS[TINY3[0]]})" in printed and 'labelled by val_annotations.txt' in printed
    assert validate.main([*base, '--split', 'test']) == 2
    assert "split 'test' of Tiny ImageNet" in _error(capsys)
    # the exported model's config.json and card carry the readable names
    folder = hub.export_checkpoint(out / 'run' / 'last.pth.tar', None, tmp_path / 'export')
    config = json.loads((folder / 'config.json').read_text())
    assert config['label_names'] == TINY3
    assert config['label_descriptions'] == {wnid: IMAGENET_WORDS[wnid] for wnid in TINY3}
    assert f'{TINY3[0]} ({IMAGENET_WORDS[TINY3[0]]})' in (folder / 'README.md').read_text()


# --- ImageNet / ImageNet-100 ---------------------------------------------------------------------------------------

def test_imagenet_flat_val_is_labelled_by_loc_val_solution(imagenet_small):
    wnids = sorted(os.listdir(os.path.join(imagenet_small, 'train')))
    dataset = open_dataset('imagenet', imagenet_small, 'validation')  # the recipes' name of val/
    names = dataset_class_names(dataset)
    assert 'LOC_val_solution.csv' in dataset.reader.layout
    for path, label in dataset.reader.samples:
        number = int(os.path.basename(path)[len('ILSVRC2012_val_'):-len('.JPEG')])
        assert names[label] == wnids[(number * 7) % len(wnids)]
    # detected in an image folder too (no class folders in val/, the release's label file found)
    assert open_dataset('', imagenet_small, 'val').reader.samples == dataset.reader.samples


def test_imagenet_class_folder_val_reads_as_class_folders(tmp_path):
    wnids = IMAGENET_WNIDS[:3]
    top = write_imagenet(str(tmp_path), wnids, train_per_class=1, val='folders')
    dataset = open_dataset('imagenet', top, 'val')
    assert dataset_class_names(dataset) == wnids and dataset.reader.layout == 'ImageNet: val/<wnid>/*.JPEG'
    assert all(_colour_label(dataset[i][0], 3) == dataset[i][1] for i in range(len(dataset)))


def test_imagenet_devkit_ids_are_mapped_through_meta_mat(tmp_path):
    """The devkit labels by ILSVRC2012 ID, whose order is not the sorted wnids: meta.mat maps them."""
    wnids = IMAGENET_WNIDS[:4]
    top = write_imagenet(str(tmp_path), wnids, train_per_class=1, val='folders')
    os.rename(os.path.join(top, 'val'), os.path.join(top, 'val_folders'))
    ilsvrc_order = [wnids[2], wnids[0], wnids[3], wnids[1]]
    val_wnids = [wnids[1], wnids[3], wnids[0], wnids[2], wnids[2]]
    write_devkit(top, wnids, ilsvrc_order, val_wnids)
    dataset = open_dataset('imagenet', top, 'val')
    assert 'ILSVRC2012_validation_ground_truth.txt' in dataset.reader.layout
    names = dataset_class_names(dataset)
    assert [names[label] for _, label in dataset.reader.samples] == val_wnids
    assert all(_colour_label(dataset[i][0], 4) == wnids.index(val_wnids[i]) for i in range(5))
    os.remove(os.path.join(top, 'ILSVRC2012_devkit_t12', 'data', 'meta.mat'))
    with pytest.raises(DataError, match=r'labels the validation images by ILSVRC2012 ID.*meta\.mat'):
        open_dataset('imagenet', top, 'val')


def test_imagenet_flat_val_without_a_label_file_is_refused(tmp_path):
    top = write_imagenet(str(tmp_path), IMAGENET_WNIDS[:2], train_per_class=1)
    os.remove(os.path.join(top, 'LOC_val_solution.csv'))
    with pytest.raises(DataError, match=r'holds its images flat .* LOC_val_solution\.csv or the devkit'):
        open_dataset('imagenet', top, 'val')


def test_imagenet100_applies_the_cmc_list_on_the_fly(imagenet_small):
    assert len(set(IMAGENET100_WNIDS)) == 100 and CLASS_SUBSETS['imagenet100'] == tuple(sorted(IMAGENET100_WNIDS))
    train_set = open_dataset('imagenet100', imagenet_small, 'train')
    val_set = open_dataset('imagenet100', imagenet_small, 'val')
    subset = sorted(IMAGENET100_WNIDS)
    assert dataset_class_names(train_set) == subset == dataset_class_names(val_set)
    assert len(train_set) == 100  # one image of each subset class; the three other classes left out
    for dataset in (train_set, val_set):
        names = dataset_class_names(dataset)
        assert all(os.path.basename(os.path.dirname(path)) == names[label] or 'val' in path
                   for path, label in dataset.reader.samples)
    assert {dataset_class_names(val_set)[label] for _, label in val_set.reader.samples} <= set(subset)
    assert all(path.startswith(imagenet_small) for path, _ in train_set.reader.samples)  # no copy


def test_imagenet100_on_a_folder_missing_a_subset_class_is_refused(tmp_path):
    top = write_imagenet(str(tmp_path), sorted(IMAGENET100_WNIDS)[1:], train_per_class=1, val='folders')
    with pytest.raises(DataError, match=r'lacks 1 of the 100 ImageNet-100 \(CMC list\) classes'):
        open_dataset('imagenet100', top, 'train')


# --- CIFAR ---------------------------------------------------------------------------------------------------------

def test_cifar_image_folder_and_torchvision_files_give_the_same_class_names(tmp_path, monkeypatch):
    """The same data as torchvision's files or as an image folder of class names: the same labels (and so the same
    CIFAR-10-C labels, which follow torchvision's class order)."""
    monkeypatch.setattr(torchvision.datasets.CIFAR10, '_check_integrity', lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, 'check_integrity', lambda *args, **kwargs: True)
    files = write_cifar_python(str(tmp_path / 'files'), 10)
    folder = write_cifar_folder(str(tmp_path / 'folder'), CIFAR10_NAMES)
    torch_set = open_dataset('torch/cifar10', files, 'train')
    folder_set = open_dataset('', folder, 'train')
    assert dataset_class_names(torch_set) == dataset_class_names(folder_set) == CIFAR10_NAMES
    assert all(folder_set[i][1] == _colour_label(folder_set[i][0], 10) for i in range(0, 20, 3))


# --- class counts before the first step ----------------------------------------------------------------------------

def _error(capsys):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith('error: '), err
    return err


def _run(data, out, *extra):
    return ['--model', 'test_resnet', '--data-dir', str(data), '--val-split', 'val', '--img-size', '16', '-b', '6',
            '--epochs', '1', '--workers', '0', '--device', 'cpu', '--sched', 'none', '--lr', '0.05',
            '--crop-pad', '2', '--output', str(out), *extra]


def test_a_training_split_of_one_class_is_refused(tmp_path, capsys):
    """A folder whose split holds one folder (Tiny ImageNet's train/<wnid>/images/ read one level too high)."""
    for split in ('train', 'val'):
        for i in range(6):
            write_jpeg(str(tmp_path / 'data' / split / 'images' / f'{i}.JPEG'), (i * 40, 0, 0))
    assert train.main(_run(tmp_path / 'data', tmp_path / 'out')) == 2
    err = _error(capsys)
    assert "has 1 class ('images'): a classifier needs at least two" in err and '--dataset tinyimagenet' in err
    assert not (tmp_path / 'out').exists()


def test_a_head_of_another_size_than_the_classes_is_refused(tiny3, tmp_path, capsys):
    assert train.main(_run(tiny3, tmp_path / 'out', '--dataset', 'tinyimagenet', '--num-classes', '10')) == 2
    err = _error(capsys)
    assert 'the model has 10 outputs (--num-classes 10' in err and 'has 3 classes' in err
    assert 'set --num-classes 3' in err and '--class-map' in err
    assert not (tmp_path / 'out').exists()


def test_a_recipe_num_classes_other_than_the_data_is_refused(tiny3, tmp_path, capsys):
    argv = ['--config', 'mixmo_t3_5_vanilla_preact_resnet18_tinyimagenet', '--data-dir', tiny3,
            '--workers', '0', '--device', 'cpu', '--output', str(tmp_path / 'out')]
    assert train.main(argv) == 2
    err = _error(capsys)
    assert 'the model has 200 outputs (--num-classes 200' in err and 'has 3 classes' in err
    assert not (tmp_path / 'out').exists()


def test_cifar_c_labels_follow_the_run_class_names_in_torchvision_order(tmp_path):
    """CIFAR-10-C's labels.npy holds torchvision's indices: a run whose class list is in another order is refused."""
    import numpy as np

    from timm_mimo.cli.eval_splits import check_cifar_c_order
    from timm_mimo.evaluation import CorruptionRelease
    np.save(tmp_path / 'labels.npy', np.arange(5) % 10)
    np.save(tmp_path / 'gaussian_noise.npy', np.zeros((5, 32, 32, 3), dtype=np.uint8))
    release = CorruptionRelease(str(tmp_path))
    for names in (CIFAR10_NAMES, [str(i) for i in range(10)], None):
        check_cifar_c_order(str(tmp_path), release, names)
    with pytest.raises(ValueError, match=r"torchvision's CIFAR class indices .* another order \(truck, ship"):
        check_cifar_c_order(str(tmp_path), release, list(reversed(CIFAR10_NAMES)))
