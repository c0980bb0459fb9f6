"""``--dry-run``: every recipe resolved on a faithful miniature of its dataset, and the errors it reports.

The miniatures (tests/published_miniatures.py) hold the full class lists of the releases, so a recipe's
``num_classes`` must match them as it must match the real data. Models are built on the ``meta`` device (shapes
only), as the dry run always does.
"""
import os

import pytest
import torchvision
import yaml
from published_miniatures import (
    TINY_WNIDS,
    write_cifar_python,
    write_imagenet,
    write_tiny_imagenet,
)

from timm_mimo.cli import train, validate
from timm_mimo.recipes import config_path, list_configs

NAMES = list_configs()


@pytest.fixture(scope='module')
def miniatures(tmp_path_factory):
    """One miniature per dataset of the recipes: its data dir by the recipe's ``dataset`` value."""
    root = str(tmp_path_factory.mktemp('published'))
    tiny = write_tiny_imagenet(root, list(reversed(TINY_WNIDS)))
    imagenet = write_imagenet(root)
    cifar10 = write_cifar_python(os.path.join(root, 'cifar10'), 10)
    cifar100 = write_cifar_python(os.path.join(root, 'cifar100'), 100)
    return {'tinyimagenet': tiny, 'imagenet': imagenet, 'imagenet100': imagenet, 'torch/cifar10': cifar10,
            'torch/cifar100': cifar100}


@pytest.fixture
def cifar_files_accepted(monkeypatch):
    """torchvision checks the md5 of the full release's files; the miniature's pickles are the same format, smaller."""
    monkeypatch.setattr(torchvision.datasets.CIFAR10, '_check_integrity', lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, 'check_integrity', lambda *args, **kwargs: True)


def _config(name):
    with open(config_path(name)) as f:
        return yaml.safe_load(f)


def test_every_recipe_names_a_dataset_with_a_miniature():
    datasets = {_config(name)['dataset'] for name in NAMES}
    assert datasets == {'tinyimagenet', 'imagenet', 'imagenet100', 'torch/cifar10', 'torch/cifar100'}


@pytest.mark.parametrize('name', NAMES)
def test_every_recipe_dry_runs_on_a_miniature_of_its_dataset(name, miniatures, cifar_files_accepted, tmp_path,
                                                             capsys):
    config = _config(name)
    output = tmp_path / 'runs'
    rc = train.main(['--config', name, '--data-dir', miniatures[config['dataset']], '--dry-run', '--device', 'cpu',
                     '--output', str(output)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert f'{config["num_classes"]} outputs' in out and f'  classes:      {config["num_classes"]}: ' in out
    assert 'steps:' in out and 'lr:' in out and 'image sizes:' in out
    assert not output.exists()  # nothing written
    if config['dataset'] == 'tinyimagenet':  # wnids.txt order, words.txt names
        first = TINY_WNIDS[-1]
        assert f'{first} (' in out and 'labelled by val_annotations.txt' in out
    if config['dataset'] == 'imagenet100':
        assert 'the 100 ImageNet-100 (CMC list) classes applied on the fly' in out


def test_dry_run_of_the_tiny_imagenet_recipe_prints_what_the_run_would_train_on(miniatures, tmp_path, capsys):
    rc = train.main(['--config', 'mixmo_t3_5_cut_mixmo_preact_resnet18_tinyimagenet_b4', '--data-dir',
                     miniatures['tinyimagenet'], '--dry-run', '--device', 'cpu', '--output', str(tmp_path / 'o')])
    out = capsys.readouterr().out
    assert rc == 0
    lines = dict(line.strip().split(':', 1) for line in out.splitlines() if line.startswith('  '))
    assert lines['train split'].strip().startswith("'train', 200 images; Tiny ImageNet: train/<wnid>/images/")
    assert lines['image sizes'].strip() == '16x16 in 8 sampled images'
    assert lines['input'].strip().startswith('3x64x64')
    # thesis App. A.1.3.1: batch 100 at b = 4 -> 25 unique images a step: 200 images give 8 steps; lr 0.2 / 4
    assert lines['batch'].strip().startswith('100 images a step (25 unique x b=4')
    assert lines['steps'].strip() == '8 per epoch x 1200 epochs'
    assert lines['lr'].strip().startswith('0.05 (--lr as given)')
    assert 'MIMO M=2' in lines['model']


def test_dry_run_reports_the_first_error_in_one_line(miniatures, tmp_path, capsys):
    """A recipe's num_classes against other data: the same error the run gives, nothing written."""
    output = tmp_path / 'runs'
    rc = train.main(['--config', 'mixmo_t3_5_vanilla_preact_resnet18_tinyimagenet', '--data-dir',
                     miniatures['imagenet'], '--dataset', 'imagenet', '--dry-run', '--device', 'cpu', '--output',
                     str(output)])
    out, err = capsys.readouterr()
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith('error: the model has 200 outputs (--num-classes 200') and 'has 1000 classes' in err
    assert '--num-classes 1000' in err and '--class-map' in err
    assert "'train', 2,000 images" in out  # what was resolved before the error is printed
    assert not output.exists()


def test_validate_dry_run_resolves_a_checkpoint_free_model_without_weights(miniatures, capsys):
    """No --checkpoint and a model with no pretrained weights: refused by the dry run as by the evaluation."""
    rc = validate.main(['--model', 'preact_resnet18', '--num-classes', '200', '--data-dir', miniatures['tinyimagenet'],
                        '--dataset', 'tinyimagenet', '--split', 'val', '--dry-run', '--device', 'cpu'])
    err = capsys.readouterr().err
    assert rc == 2 and 'has no pretrained weights' in err and len(err.strip().splitlines()) == 1


def test_docs_list_every_recipe_under_its_dataset():
    """docs/datasets.md: one section per dataset, naming every recipe that uses it (and the recipes point there)."""
    text = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'docs', 'datasets.md')).read()
    sections = {'tinyimagenet': '## Tiny ImageNet', 'imagenet': '## ImageNet-1k', 'imagenet100': '## ImageNet-100',
                'torch/cifar10': '## CIFAR-10', 'torch/cifar100': '## CIFAR-10'}
    for name in NAMES:
        dataset = _config(name)['dataset']
        section = text.split(sections[dataset], 1)[1].split('\n## ', 1)[0]
        assert f'`{name}`' in section, (name, dataset)
        if dataset in ('tinyimagenet', 'imagenet', 'imagenet100'):
            assert 'docs/datasets.md' in open(config_path(name)).read()
