"""Every recipe in timm_mimo/configs/ builds and runs one step, and its hyper-parameters are the papers'.

The expected values are written here from the papers, not read from the configs: MixMo arXiv:2103.06132 and the
thesis (R. Sun, HAL tel-03952815) App. A.1.3.1 (MixMo recipes, Table 3.1 / Table 3.5 rows), App. A.1.5 / MixViT
openreview.net/forum?id=pOq1HuMI8Dz App. H (MixViT recipes, Tables 4.2 / 4.3), MixShare arXiv:2205.10139 App. A
(MixShare recipes, Table 1 = thesis Table 3.6).
"""
import glob
import math
import os
import re

import pytest
import timm
import torch
import torch.nn as nn
import yaml
from timm.data import resolve_data_config
from timm.utils import init_distributed_device

from timm_mimo.cli import train
from timm_mimo.task import MimoTask

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(REPO, 'timm_mimo', 'configs', '*.yaml')))
CIFAR_MIXMO = [path for path in CONFIGS if re.search(r'(mimo|mixmo)(_cutmix)?_wrn28_10_cifar(10|100)_b\d', path)]
MIXSHARE = [path for path in CONFIGS if os.path.basename(path).startswith('mixshare_')]
MIXSHARE_ROWS = ('mixmo', 'unmix', 'unmix_same_init', 'partial', 'fadeout')  # MixShare Table 1, top to bottom
# small versions of every config's network, same family and code path
TINY_KWARGS = {
    'wrn28_10': ['depth=10', 'widen_factor=1'],
    'wrn28_2': ['depth=10', 'widen_factor=1'],  # MixShare's WRN-28-2 / -5 and the Cut-MixMo rows beside them
    'wrn28_5': ['depth=10', 'widen_factor=1'],
    'preact_resnet18': [],  # fixed 2-2-2-2 blocks; w = 1 is already the smallest
    'mixvit_convit': ['depth=1', 'embed_dim=48', 'num_heads=2'],
    'mixvit_cait': ['img_size=64', 'patch_size=16', 'depth=2', 'embed_dim=48', 'num_heads=2'],
}


def _name(path):
    return os.path.basename(path)[:-len('.yaml')]


def test_the_papers_recipes_are_all_there():
    names = {_name(path) for path in CONFIGS}
    for dataset in ('cifar10', 'cifar100'):  # thesis Table 3.1: every MixMo row, both b, both datasets
        for b in (2, 4):
            for method in ('mimo', 'linear_mixmo', 'cut_mixmo', 'linear_mixmo_cutmix', 'cut_mixmo_cutmix'):
                assert f'{method}_wrn28_10_{dataset}_b{b}' in names
    assert {'cut_mixmo_preact_resnet18_tinyimagenet_b2', 'mixvit_convit_cifar100',
            'mixvit_cait_xxs24_tinyimagenet'} <= names
    # MixShare Table 1 (thesis Table 3.6): every row, WRN-28-2 and WRN-28-5, CIFAR-100, b = 2
    assert {f'mixshare_{row}_wrn28_{w}_cifar100_b2' for row in MIXSHARE_ROWS for w in (2, 5)} <= names


def _config(path):
    with open(path) as f:
        return yaml.safe_load(f)


@pytest.mark.parametrize('path', CIFAR_MIXMO, ids=_name)
def test_cifar_mixmo_configs_match_thesis_appendix_a131(path):
    config = _config(path)
    name = _name(path)
    b = int(name[-1])
    args = train.parse_args(['--config', path, '--data-dir', '/data'])
    # thesis App. A.1.3.1: "SGD with learning rate of (0.1 / b) x (batch-size / 128), batch size 64, linear warmup over
    # 1 epoch, decay rate 0.1 at steps {100, 200, 225}, l2 regularization 3e-4 ... maximum number of epochs to 300"
    assert args.opt == 'sgd' and args.momentum == 0.9
    assert args.batch_size == 64 and args.batch_repeat == b
    assert args.lr == pytest.approx(0.1 / b * 64 / 128)
    assert args.warmup_epochs == 1 and args.sched_on_updates
    assert args.sched == 'multistep' and args.decay_milestones == [100, 200, 225] and args.decay_rate == 0.1
    assert args.epochs == 300
    assert args.l2 == 3e-4 and args.weight_decay == 0.0  # the papers' L2, not timm's (halved, filtered) decay
    # thesis App. A.1.3.1: "4 pixels padding, random cropping and horizontal flipping"
    assert args.crop_pad == 4 and args.hflip == 0.5 and args.aa is None and args.reprob == 0
    assert args.smoothing == 0.0
    dataset = 'cifar100' if 'cifar100' in name else 'cifar10'
    assert args.dataset == f'torch/{dataset}' and args.num_classes == (100 if dataset == 'cifar100' else 10)
    # thesis Sec. 3.3.4.1: M = 2, r = 3, alpha = 2, p = 0.5 (MIMO: kappa = 0.5); from the model
    model = timm.create_model(config['model'], depth=10, widen_factor=1, num_classes=args.num_classes)
    task = MimoTask.from_model(model, verbose=False)
    assert model.num_members == 2 and task.criterion.root == 3.0
    method = config['model'].rsplit('_wrn', 1)[0]
    expected_mixer = dict(mimo=('linear', None, 0.5), linear_mixmo=('linear', 2.0, 0.5),
                          cut_mixmo=('cutmix', 2.0, 0.5))[method]
    assert (task.mixer.kind, task.mixer.alpha) == expected_mixer[:2]
    if method == 'cut_mixmo':
        assert task.mixer.prob == 0.5 and task.mixer.prob_decay
    # "+ CutMix" rows (thesis Sec. 3.3.4.1): pixel CutMix, lambda ~ Beta(1, 1), partners from the whole dataset
    if '_cutmix_' in name:
        assert args.mimo_cutmix == 1.0 and args.mimo_mixup is None
    else:
        assert args.mimo_cutmix is None and args.mimo_mixup is None


@pytest.mark.parametrize('path', MIXSHARE, ids=_name)
def test_mixshare_configs_match_mixshare_appendix_a(path):
    args = train.parse_args(['--config', path, '--data-dir', '/data'])
    # MixShare arXiv:2205.10139 App. A (thesis App. A.1.3.1 for MixShare): "SGD with learning rate of (0.1 / b) x
    # (batch-size / 128), batch size 64, linear warmup over 1 epoch, decay rate 0.1 at steps {75, 150, 225}, l2
    # regularization 3e-4 ... maximum number of epochs to 300"; b = 2 ("bar2")
    assert args.opt == 'sgd' and args.momentum == 0.9
    assert args.batch_size == 64 and args.batch_repeat == 2
    assert args.lr == pytest.approx(0.1 / 2 * 64 / 128)
    assert args.warmup_epochs == 1 and args.sched_on_updates
    assert args.sched == 'multistep' and args.decay_milestones == [75, 150, 225] and args.decay_rate == 0.1
    assert args.epochs == 300
    assert args.l2 == 3e-4 and args.weight_decay == 0.0  # the papers' L2, not timm's (halved, filtered) decay
    # "similar experimental settings on CIFAR 100 as MixMo": 4 pixels padding, random crop, horizontal flip
    assert args.crop_pad == 4 and args.hflip == 0.5 and args.aa is None and args.reprob == 0
    assert args.smoothing == 0.0 and args.mimo_cutmix is None and args.mimo_mixup is None
    assert args.dataset == 'torch/cifar100' and args.num_classes == 100 and args.val_split == 'test'
    width = re.search(r'_wrn28_([25])_cifar100_b2$', _name(path)).group(1)  # WRN-28-2 (focus) and WRN-28-5
    assert args.model.endswith(f'_wrn28_{width}')


def test_tiny_imagenet_mixmo_config_matches_thesis_appendix_a131():
    path = os.path.join(REPO, 'timm_mimo', 'configs', 'cut_mixmo_preact_resnet18_tinyimagenet_b2.yaml')
    args = train.parse_args(['--config', path, '--data-dir', '/data'])
    # thesis App. A.1.3.1: "SGD with learning rate of 0.2 / b, batch size 100, decay rate 0.1 at steps {600, 900},
    # 1200 epochs maximum, weight decay 1e-4" (Puzzle-Mix: torch SGD weight decay on every parameter)
    assert args.opt == 'sgd' and args.batch_size == 100 and args.batch_repeat == 2
    assert args.lr == pytest.approx(0.2 / 2)
    assert args.decay_milestones == [600, 900] and args.decay_rate == 0.1 and args.epochs == 1200
    assert 2 * args.l2 == pytest.approx(1e-4) and args.weight_decay == 0.0
    assert args.num_classes == 200 and args.img_size == 64


@pytest.mark.parametrize('name, weight_decay, drop_path', [('mixvit_convit_cifar100', 0.05, None),
                                                           ('mixvit_cait_xxs24_tinyimagenet', 0.1, 0.1)])
def test_mixvit_configs_match_thesis_appendix_a15(name, weight_decay, drop_path):
    args = train.parse_args(['--config', name, '--data-dir', '/data'])  # a shipped recipe, by name
    # thesis App. A.1.5: "150 epochs using the AdamW optimizer with a learning rate of 0.001, weight decay of 0.05 and
    # linear warmup over 10% of training ... step decay schedule with decay rate 0.1 at steps {125, 140}"; weight decay
    # and stochastic depth (0.05 on CaiT) doubled on Tiny ImageNet
    assert args.opt == 'adamw' and args.lr == 1e-3 and args.weight_decay == weight_decay and args.l2 is None
    assert args.epochs == 150 and args.warmup_epochs == 15 and args.sched_on_updates
    assert args.sched == 'multistep' and args.decay_milestones == [125, 140] and args.decay_rate == 0.1
    assert args.drop_path == drop_path
    # "0.1 label smoothing, 3 Batch augmentations", base batch 128; "CIFAR configuration of AutoAugment for CIFAR and
    # TinyImageNet"; RandErase as DeiT; CutMix alpha 1.0 and MixUp alpha 0.8 simultaneously
    assert args.smoothing == 0.1 and args.batch_repeat == 3 and args.batch_size // args.batch_repeat == 128
    assert args.aa == 'cifar10' and args.reprob == 0.25
    assert args.mimo_cutmix == 1.0 and args.mimo_mixup == 0.8
    # "alpha = 0.5", "r = 1" (thesis App. A.1.5) and the end-of-training single-source schedule: from the model
    model = timm.create_model(args.model, **args.model_kwargs, depth=1, embed_dim=48, num_heads=2)
    task = MimoTask.from_model(model, verbose=False)
    assert task.mixer.alpha == 0.5 and task.mixer.prob == 1.0 and task.criterion.root == 1.0
    assert task.mixer.single_source_end


def _model_family(model_name):
    for key, kwargs in TINY_KWARGS.items():
        if key in model_name or key.replace('mixvit_', '') in model_name:
            return kwargs
    raise KeyError(model_name)


@pytest.mark.parametrize('path', CONFIGS, ids=_name)
def test_every_config_builds_and_runs_one_step(path, digits_dir):
    """Model (tiny), optimizer, scheduler and loader from the config, then one training step on real images."""
    config = _config(path)
    tiny = _model_family(config['model'])
    batch = 12  # a multiple of every config's b
    args = train.parse_args(['--config', path, '--data-dir', str(digits_dir), '--dataset', '', '--train-split', 'train',
                             '--val-split', 'validation', '--num-classes', '10', '-b', str(batch), '--workers', '0',
                             '--model-kwargs', *[f'{k}={v}' for k, v in config.get('model_kwargs', {}).items()],
                             *tiny])
    init_distributed_device(args)
    train.resolve_lr(args)
    model = train.create_train_model(args)
    task = train.build_task(args, model, torch.device('cpu'))
    args.data_config = resolve_data_config(vars(args), model=model)
    num_partners = batch if task.pixel_mix is not None else 0
    data = train.open_train_data(args, args.data_config, num_partners)
    sampler = data.sampler
    optimizer = train.create_optimizer(args, model)
    scheduler, num_epochs = train.create_scheduler(args, optimizer, sampler.steps_per_epoch)
    loader = train.create_train_loader(args, data, task, num_epochs, torch.device('cpu'), args.data_config)
    eval_loader, _ = train.create_eval_loader(args, args.data_config, torch.device('cpu'))
    assert num_epochs == args.epochs and eval_loader is not None
    if args.l2 is not None:  # the papers' L2 covers every parameter, BatchNorm and biases included
        assert all(group['weight_decay'] == 2 * args.l2 for group in optimizer.param_groups)
        assert sum(len(g['params']) for g in optimizer.param_groups) == len(list(model.parameters()))
    run = train.Run(args, task, optimizer, scheduler, num_epochs, sampler.steps_per_epoch, torch.device('cpu'))
    before = [p.detach().clone() for p in model.parameters()]
    sampler.set_epoch(0)
    train.seed_epoch(args, 0)
    run.steps_per_epoch = 1
    metrics = run.train_one_epoch(0, loader)
    assert math.isfinite(metrics['loss'])
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_l2_flag_is_the_papers_loss_term_on_all_parameters():
    # thesis App. A.1.3.1 "l2 regularization 3e-4": loss + 3e-4 * sum(W^2) over all parameters
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    reference = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    reference.load_state_dict(model.state_dict())
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    args = train.parse_args(['--model', 'test_resnet', '--opt', 'sgd', '--lr', '0.1', '--l2', '3e-4',
                             '--weight-decay', '0'])
    optimizer = train.create_optimizer(args, model)
    ref_optimizer = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    for _ in range(3):
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(reference(x), y)
        loss = loss + 3e-4 * sum((p ** 2).sum() for p in reference.parameters())
        loss.backward()
        ref_optimizer.step()
        ref_optimizer.zero_grad()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        assert torch.allclose(p, q, atol=1e-7), name


def test_l2_is_refused_where_it_would_not_be_an_l2_term():
    with pytest.raises(train.CliError, match='--weight-decay 0'):
        train.parse_args(['--model', 'test_resnet', '--l2', '3e-4'])
    with pytest.raises(train.CliError, match='adamw'):
        train.parse_args(['--model', 'test_resnet', '--l2', '3e-4', '--weight-decay', '0', '--opt', 'adamw'])


def test_config_by_name_or_path_and_an_unknown_name_is_one_line(tmp_path):
    """``--config NAME`` finds the shipped recipe; a path is taken as given; anything else lists close names."""
    from timm_mimo.cli.args import CliError
    from timm_mimo.recipes import config_path, list_configs
    assert 'cut_mixmo_wrn28_10_cifar10_b4' in list_configs()
    by_name = train.parse_args(['--config', 'cut_mixmo_wrn28_10_cifar10_b4', '--data-dir', '/data'])
    by_path = train.parse_args(['--config', config_path('cut_mixmo_wrn28_10_cifar10_b4.yaml'), '--data-dir', '/data'])
    assert {**vars(by_name), 'config': ''} == {**vars(by_path), 'config': ''} and by_name.batch_repeat == 4
    own = tmp_path / 'cut_mixmo_wrn28_10_cifar10_b4.yaml'  # a user's file of the same name wins when it exists
    own.write_text('epochs: 3\nwarmup_epochs: 0\n')
    assert train.parse_args(['--config', str(own), '--data-dir', '/data']).epochs == 3
    with pytest.raises(CliError, match=r"'cut_mixmo_wrn28_10_cifar10_b9' is neither a file nor a shipped recipe.*"
                                       r'cut_mixmo_wrn28_10_cifar10_b4'):
        train.parse_args(['--config', 'cut_mixmo_wrn28_10_cifar10_b9'])
