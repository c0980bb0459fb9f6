"""Every recipe in timm_mimo/configs/ builds and runs one step, and its hyper-parameters are the papers'.

The expected values are written here from the papers, not read from the configs: MixMo arXiv:2103.06132 and the
thesis (R. Sun, HAL tel-03952815) App. A.1.3.1 (MixMo recipes: Tables 3.1, 3.3, 3.4, 3.5, A.16, A.17), App. A.1.5 /
MixViT openreview.net/forum?id=pOq1HuMI8Dz App. H (MixViT recipes: Tables 4.1-4.6, A.18, A.19; the MixViT paper's
Table 3 and Fig. 7), MixShare arXiv:2205.10139 App. A (MixShare recipes, Table 1 = thesis Table 3.6).
"""
import math
import re

import pytest
import timm
import torch
import torch.nn as nn
import yaml
from timm.data import resolve_data_config
from timm.utils import init_distributed_device

from timm_mimo.cli import data_path, optim_factory, run_loop, train, train_model
from timm_mimo.metrics import is_mimo
from timm_mimo.recipes import config_path, list_configs, recipes_by_table
from timm_mimo.task import MimoTask

NAMES = list_configs()
MIXSHARE_ROWS = ('mixmo', 'unmix', 'unmix_same_init', 'partial', 'fadeout')  # MixShare Table 1, top to bottom
WRN_WIDTHS = (2, 3, 4, 5, 7, 10, 14)  # thesis Tables A.16 / A.17
T33_BLOCKS = ('hconcat', 'vconcat', 'patchup', 'fmix', 'cowmask')  # thesis Table 3.3 between MixUp and CutMix
T34_ROWS = {  # thesis Table 3.4: (# encoders, # classifiers) -> model kwargs
    'enc1_clf1': dict(tied_encoder=True, tied_heads=True), 'enc2_clf1': dict(tied_heads=True),
    'enc1_clf2_random': dict(tied_encoder=True),
    'enc1_clf2_predominant': dict(tied_encoder=True, head_assignment='predominant')}
T46_ROWS = {'none': dict(source='none'), 'early_embedding': dict(source='early_embedding'),  # thesis Table 4.6
            'early_encoding': dict(source='early_encoding'), 'sum': dict(inference='sum'),
            'alternating': dict(inference='alternating'), 'single': dict(inference='single'),
            'all_tokens': dict(mixing='all_tokens')}


def _preact(w):
    return 'preact_resnet18' if w == 1 else f'preact_resnet18_{w}'


def _t35(w):
    """thesis Table 3.5 at width w: Vanilla, Mixup, CutMix, Linear-/Cut-MixMo at b = 2 and 4 (DE rows: --seed runs)."""
    rows = [f'mixmo_t3_5_{row}_{_preact(w)}_tinyimagenet' for row in ('vanilla', 'mixup', 'cutmix')]
    for b in (2, 4):
        rows += [f'mixmo_t3_5_{m}_{_preact(w)}_tinyimagenet_b{b}' for m in ('linear_mixmo', 'cut_mixmo')]
    return ['cut_mixmo_preact_resnet18_tinyimagenet_b2' if r == 'mixmo_t3_5_cut_mixmo_preact_resnet18_tinyimagenet_b2'
            else r for r in rows]


def _a17(w):
    """thesis Table A.17 at width w (2-Nets / 2-Cut-MixMos: two --seed runs of the 1-Net / Cut-MixMo recipes)."""
    rows = [f'mixmo_ta17_vanilla_wrn28_{w}_cifar100', f'mixmo_ta17_cutmix_wrn28_{w}_cifar100']
    for method in ('linear_mixmo', 'linear_mixmo_cutmix', 'cut_mixmo', 'cut_mixmo_cutmix'):
        rows.append(f'{method}_wrn28_10_cifar100_b4' if w == 10 else f'mixmo_ta17_{method}_wrn28_{w}_cifar100_b4')
    return rows


def _t42(data, backbone):
    names = [f'mixvit_t4_2_{kind}_{backbone}_{data}' for kind in ('single', 'embedding', 'encoding')]
    return [{'mixvit_t4_2_embedding_convit_cifar100': 'mixvit_convit_cifar100',
             'mixvit_t4_2_embedding_cait_xxs24_tinyimagenet': 'mixvit_cait_xxs24_tinyimagenet'}.get(n, n)
            for n in names]


# Every row of the papers' tables -> the recipes that reproduce it (shared rows appear under every table they fill)
T31_BASELINES = ['mixmo_ta17_vanilla_wrn28_10_cifar100', 'mixmo_t3_1_vanilla_wrn28_10_cifar10',  # Vanilla, DE
                 'mixmo_t3_1_mixup_wrn28_10_cifar100', 'mixmo_t3_1_mixup_wrn28_10_cifar10',  # Mixup
                 'mixmo_ta17_cutmix_wrn28_10_cifar100', 'mixmo_t3_1_cutmix_wrn28_10_cifar10']  # CutMix, DE + CutMix
T32_AUGMIX = ['mixmo_t3_2_augmix_wrn28_10_cifar100', 'mixmo_t3_2_linear_mixmo_augmix_wrn28_10_cifar100_b4',
              'mixmo_t3_2_cut_mixmo_augmix_wrn28_10_cifar100_b4']  # 1 Net (and DE), Linear-MixMo, Cut-MixMo
PAPER_TABLES = {
    'thesis Table 3.1': T31_BASELINES + [f'{method}_wrn28_10_{dataset}_b{b}' for dataset in ('cifar10', 'cifar100')
                                         for b in (2, 4) for method in ('mimo', 'linear_mixmo', 'cut_mixmo',
                                                                        'linear_mixmo_cutmix', 'cut_mixmo_cutmix')],
    'thesis Table 3.2': T32_AUGMIX + ['mixmo_ta17_vanilla_wrn28_10_cifar100', 'mixmo_ta17_cutmix_wrn28_10_cifar100']
    + [f'{method}_wrn28_10_cifar100_b4' for method in ('mimo', 'linear_mixmo', 'cut_mixmo')],
    'thesis Table 3.3': ['linear_mixmo_wrn28_10_cifar100_b2', *[f'mixmo_t3_3_{k}_wrn28_10_cifar100_b2'
                                                                for k in T33_BLOCKS], 'cut_mixmo_wrn28_10_cifar100_b2'],
    'thesis Table 3.4': [f'mixmo_t3_4_{row}_wrn28_10_cifar100_b2' for row in T34_ROWS]
    + ['cut_mixmo_wrn28_10_cifar100_b2'],
    'thesis Table 3.5': [name for w in (1, 2, 3) for name in _t35(w)],
    'thesis Table 3.6': [f'mixshare_{row}_wrn28_{w}_cifar100_b2' for row in MIXSHARE_ROWS for w in (2, 5)],
    'thesis Table A.16': [f'mixmo_ta17_{m}_wrn28_{w}_cifar100' for w in WRN_WIDTHS for m in ('vanilla', 'cutmix')]
    + [f'mixmo_ta17_cut_mixmo_wrn28_{w}_cifar100_b4' if w != 10 else 'cut_mixmo_wrn28_10_cifar100_b4'
       for w in WRN_WIDTHS],
    'thesis Table A.17': [name for w in WRN_WIDTHS for name in _a17(w)],
    'thesis Table 4.1': ['mixvit_t4_2_single_convit_cifar100'] + [
        f'mixvit_t4_1_{row}_convit_cifar100' for row in ('mimo', 'mixmo_sum', 'mixmo_separate', 'cutmix_only_mixmo')],
    'thesis Table A.18': ['mixvit_t4_2_single_convit_cifar100', 'mixvit_t4_1_mixmo_sum_convit_cifar100',
                          'mixvit_t4_1_mixmo_separate_convit_cifar100', 'mixvit_ta18_mixmo_same_init_convit_cifar100'],
    'thesis Table 4.2': [name for data, backbones in (('tinyimagenet', ('convit', 'cait_xxs24', 'cait_xs24')),
                                                      ('imagenet100', ('convit', 'cait_xxs24', 'cait_xs24')),
                                                      ('cifar100', ('convit',)), ('cifar10', ('convit',)))
                         for backbone in backbones for name in _t42(data, backbone)],
    'thesis Table 4.3': ['mixmo_t3_5_cutmix_preact_resnet18_tinyimagenet',
                         'mixmo_t3_5_cut_mixmo_preact_resnet18_tinyimagenet_b4',
                         'mixmo_t3_5_cutmix_preact_resnet18_3_tinyimagenet',
                         'mixmo_t3_5_cut_mixmo_preact_resnet18_3_tinyimagenet_b4', *_t42('tinyimagenet', 'cait_xs24')],
    'thesis Table 4.4': [f'mixvit_t4_4_{model}_{row}_convit_cifar100' if row != 'full' else full
                         for model, full in (('single', 'mixvit_t4_2_single_convit_cifar100'),
                                             ('embedding', 'mixvit_convit_cifar100'),
                                             ('encoding', 'mixvit_t4_2_encoding_convit_cifar100'))
                         for row in ('plain', 'msda', 'ba', 'full')],
    'thesis Table 4.5': [*_t42('cifar100', 'convit')[1:], *_t42('cifar10', 'convit')[1:],
                         *_t42('tinyimagenet', 'cait_xs24')[1:], *_t42('imagenet100', 'cait_xs24')[1:]],
    'thesis Table 4.6': ['mixvit_convit_cifar100', 'mixvit_t4_2_encoding_convit_cifar100']
    + [f'mixvit_t4_6_{row}_convit_cifar100' for row in T46_ROWS],
    'thesis Table A.19': ['mixmo_ta17_cutmix_wrn28_5_cifar100', 'mixmo_ta17_cut_mixmo_cutmix_wrn28_5_cifar100_b4',
                          *_t42('cifar100', 'convit')] + [f'mixvit_ta19_{kind}_convit_cifar100_300ep'
                                                          for kind in ('single', 'embedding', 'encoding')],
    'MixViT paper Table 3': [f'mixvit_paper_t3_{kind}_{backbone}_imagenet1k' for backbone in ('cait_s24', 'cait_m24')
                             for kind in ('single', 'mixvit')],
    'MixViT paper Fig. 7': ['mixmo_ta17_vanilla_wrn28_5_cifar100', 'mixvit_t4_2_single_convit_cifar100',
                            'mixvit_convit_cifar100', 'mixvit_paper_fig7_m3_convit_cifar100',
                            'mixvit_paper_fig7_m4_convit_cifar100']
    + [f'mixvit_paper_fig7_mixmo_m{m}_wrn28_5_cifar100_b2' for m in (2, 3, 4)],
}


def _config(name):
    with open(config_path(name)) as f:
        return yaml.safe_load(f)


def _args(name, *extra):
    return train.parse_args(['--config', name, '--data-dir', '/data', *extra])


def _lr(args):
    """The optimizer's rate: ``--lr`` or timm's ``--lr-base`` rule on one process."""
    init_distributed_device(args)
    optim_factory.resolve_lr(args)
    return args.lr


def test_the_table_map_names_the_recipes_of_every_table():
    """timm_mimo/paper_tables.yaml (the coverage map, tests/test_paper_tables.py) against the tables written here from
    the papers' row structure: the same recipes for every table, and every shipped recipe in some table."""
    by_table = recipes_by_table()
    assert set(by_table) - set(PAPER_TABLES) == {'thesis App. A.5.6'}  # no recipe: no hyper-parameters given
    for table, names in PAPER_TABLES.items():
        assert len(set(names)) == len(names), table
        assert sorted(by_table[table]) == sorted(names), table
    assert sorted({name for names in PAPER_TABLES.values() for name in names}) == NAMES
    counts = {table: len(names) for table, names in PAPER_TABLES.items()}
    assert counts['thesis Table A.17'] == 7 * 6 and counts['thesis Table 3.5'] == 3 * 7
    assert counts['thesis Table 4.2'] == 8 * 3 and counts['thesis Table 4.6'] == 9
    assert counts['thesis Table 3.1'] == 26 and counts['thesis Table 3.2'] == 8


# --- MixMo on CIFAR: thesis App. A.1.3.1 -----------------------------------------------------------------------

CIFAR_MIXMO_TABLES = ('thesis Table 3.1', 'thesis Table 3.2', 'thesis Table 3.3', 'thesis Table 3.4',
                      'thesis Table A.17')
CIFAR_MIXMO_RECIPES = sorted({n for t in CIFAR_MIXMO_TABLES for n in PAPER_TABLES[t]}
                             | {f'mixvit_paper_fig7_mixmo_m{m}_wrn28_5_cifar100_b2' for m in (2, 3, 4)})


def _batch_repeat(name):
    found = re.search(r'_b(\d)$', name)
    return int(found.group(1)) if found else 1


@pytest.mark.parametrize('name', CIFAR_MIXMO_RECIPES)
def test_cifar_mixmo_configs_match_thesis_appendix_a131(name):
    b = _batch_repeat(name)
    args = _args(name)
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
    # thesis App. A.1.3.1, Table 3.2: AugMix ("severity 3, width 3, depth 4", docs/decisions.md) after them
    assert args.crop_pad == 4 and args.hflip == 0.5 and args.reprob == 0
    assert args.aa == ('augmix' if name in T32_AUGMIX else None)
    assert args.smoothing == 0.0
    dataset = 'cifar100' if 'cifar100' in name else 'cifar10'
    assert args.dataset == f'torch/{dataset}' and args.num_classes == (100 if dataset == 'cifar100' else 10)
    # "+ CutMix" (thesis Sec. 3.3.4.1): λ ~ Beta(1, 1); MixMo models on the pixels of every input (partners from the
    # whole dataset), the 1-Net baselines through timm's Mixup, each input / batch with probability 0.5
    plain = not args.model.startswith(('mimo', 'linear_mixmo', 'cut_mixmo'))
    with_cutmix, with_mixup = '_cutmix_' in name, '_mixup_' in name  # Mixup: the 1-Net rows of Table 3.1
    assert (args.mimo_cutmix, args.mimo_mixup) == ((1.0, None) if with_cutmix and not plain else (None, None))
    assert (args.cutmix, args.mixup) == ((1.0 if with_cutmix and plain else 0.0), (1.0 if with_mixup else 0.0))
    if plain:
        assert b == 1 and args.mixup_prob == (0.5 if with_cutmix or with_mixup else 1.0)
        return
    # thesis Sec. 3.3.4.1: M = 2, r = 3, alpha = 2, p = 0.5 (MIMO: kappa = 0.5); from the model
    kwargs = dict(_config(name).get('model_kwargs', {}))
    model = timm.create_model(args.model, depth=10, widen_factor=1, num_classes=args.num_classes, **kwargs)
    task = MimoTask.from_model(model, mix=args.mix, verbose=False)
    method = args.model.rsplit('_wrn', 1)[0]
    expected_kind = dict(mimo='linear', linear_mixmo='linear', cut_mixmo='cutmix')[method]
    if name.startswith('mixmo_t3_3_'):  # thesis Table 3.3: Cut-MixMo with another mixing block
        expected_kind = name.split('_')[3]
        assert expected_kind in T33_BLOCKS and method == 'cut_mixmo'
    assert (task.mixer.kind, task.mixer.alpha) == (expected_kind, None if method == 'mimo' else 2.0)
    if method == 'cut_mixmo':
        assert task.mixer.prob == 0.5 and task.mixer.prob_decay
    root = 1.0 if kwargs.get('tied_heads') else 3.0  # one head: interpolated labels (docs/decisions.md)
    members = int(name[len('mixvit_paper_fig7_mixmo_m')]) if 'fig7' in name else 2
    # Decision (docs/decisions.md): two of M > 2 inputs mixed, their weights sum to 2 (the M = 2 scale)
    assert task.criterion.root == root and task.criterion.weight_sum == (2.0 if members > 2 else None)
    assert model.num_members == members and task.mixer.pair_only == (members > 2)


def test_table_3_4_recipes_are_the_encoder_and_classifier_ablations():
    # thesis Table 3.4: 1 encoder / 1 classifier, 2 / 1, 1 / 2 ⊖ (random association), 1 / 2 ⊗ (predominant input)
    for row, kwargs in T34_ROWS.items():
        model = timm.create_model('cut_mixmo_wrn28_10', depth=10, widen_factor=1,
                                  **_config(f'mixmo_t3_4_{row}_wrn28_10_cifar100_b2')['model_kwargs'])
        assert model.encoders.tied == kwargs.get('tied_encoder', False), row
        assert (model.heads.weight.shape[0] == 1) == kwargs.get('tied_heads', False), row
        assert model.head_assignment == kwargs.get('head_assignment', 'input'), row


@pytest.mark.parametrize('width', WRN_WIDTHS)
def test_width_sweep_recipes_cover_table_a17(width):
    # thesis Table A.17: WRN-28-w, b = 4 for MixMo; the 1-Net baselines at b = 1 (lr 0.1 · 64 / 128)
    for name in _a17(width):
        args = _args(name)
        assert args.model.endswith(f'wrn28_{width}')
        assert args.batch_repeat == (1 if 'vanilla' in name or name.startswith('mixmo_ta17_cutmix') else 4)


# --- MixMo on Tiny ImageNet: thesis App. A.1.3.1 -----------------------------------------------------------------

@pytest.mark.parametrize('name', PAPER_TABLES['thesis Table 3.5'])
def test_tiny_imagenet_mixmo_configs_match_thesis_appendix_a131(name):
    args = _args(name)
    b = _batch_repeat(name)
    # thesis App. A.1.3.1: "SGD with learning rate of 0.2 / b, batch size 100, decay rate 0.1 at steps {600, 900},
    # 1200 epochs maximum, weight decay 1e-4" (Puzzle-Mix: torch SGD weight decay on every parameter)
    assert args.opt == 'sgd' and args.batch_size == 100 and args.batch_repeat == b
    assert args.lr == pytest.approx(0.2 / b)
    assert args.decay_milestones == [600, 900] and args.decay_rate == 0.1 and args.epochs == 1200
    assert 2 * args.l2 == pytest.approx(1e-4) and args.weight_decay == 0.0
    assert args.num_classes == 200 and args.img_size == 64 and args.val_split == 'val'
    # Decision (docs/decisions.md): one epoch of linear warm-up, as the CIFAR recipe and the official code
    assert args.warmup_epochs == 1 and args.sched_on_updates
    width = int(args.model[-1]) if args.model[-2] == '_' else 1
    assert args.model.endswith(_preact(width))
    mixup = name.startswith('mixmo_t3_5_mixup')
    cutmix = name.startswith('mixmo_t3_5_cutmix')
    assert (args.mixup, args.cutmix) == (1.0 if mixup else 0.0, 1.0 if cutmix else 0.0)
    assert args.mixup_prob == (0.5 if mixup or cutmix else 1.0)


# --- MixViT: thesis App. A.1.5 / MixViT App. H --------------------------------------------------------------------

MIXVIT_RECIPES = sorted({n for t in ('thesis Table 4.1', 'thesis Table A.18', 'thesis Table 4.2', 'thesis Table 4.4',
                                     'thesis Table 4.6', 'thesis Table A.19', 'MixViT paper Table 3')
                         for n in PAPER_TABLES[t] if n.startswith('mixvit_')}
                        | {'mixvit_paper_fig7_m3_convit_cifar100', 'mixvit_paper_fig7_m4_convit_cifar100'})


@pytest.mark.parametrize('name', MIXVIT_RECIPES)
def test_mixvit_configs_match_thesis_appendix_a15(name):
    args = _args(name)
    data = re.search(r'(cifar100|cifar10|tinyimagenet|imagenet100|imagenet1k)', name).group(1)
    single = not args.model.startswith(('mixvit', 'mimo_vit', 'mixmo_vit', 'cutmix_only_mixmo_vit'))
    cait = 'cait' in name
    imagenet1k = data == 'imagenet1k'
    long_run = name.startswith('mixvit_ta19_')
    # thesis App. A.1.5: "150 epochs using the AdamW optimizer with a learning rate of 0.001, weight decay of 0.05 and
    # linear warmup over 10% of training ... step decay schedule with decay rate 0.1 at steps {125, 140}"; MixViT
    # App. H: ImageNet-1k "133 epochs (CaiT-S-24, decay at steps {75, 90}) and 100 epochs (CaiT-M-24, decay at steps
    # {100, 120})"; Table A.19: 300 epochs, 4 batch augmentations, a reduced rate (Decision: 0.0005, {250, 280}, 30)
    epochs, milestones = 150, [125, 140]
    if imagenet1k:
        # Decision (docs/decisions.md): App. H's decay sets read swapped, both at 75 % and 90 % of the run
        epochs, milestones = (133, [100, 120]) if 'cait_s24' in name else (100, [75, 90])
    if long_run:
        epochs, milestones = 300, [250, 280]
    assert args.opt == 'adamw' and args.l2 is None and args.lr is None
    assert args.epochs == epochs and args.decay_milestones == milestones and args.decay_rate == 0.1
    assert args.warmup_epochs == round(epochs / 10) and args.sched_on_updates and args.sched == 'multistep'
    # "we used a base batch size B of 128 on CIFAR and TinyImageNet and 1048 on ImageNet ... the learning rate was
    # scaled accordingly with a ratio √(b / B)"
    base = 1048 if data.startswith('imagenet') else 128
    assert (args.lr_base, args.lr_base_size, args.lr_base_scale) == (5e-4 if long_run else 1e-3, base, 'sqrt')
    # weight decay 0.05, 0.05 stochastic depth for CaiT, both doubled on TinyImageNet and ImageNet-100
    doubled = data in ('tinyimagenet', 'imagenet100')
    assert args.weight_decay == (0.1 if doubled else 0.05)
    assert args.drop_path == ((0.1 if doubled else 0.05) if cait else None)
    # "0.1 label smoothing, 3 Batch augmentations"; "CIFAR configuration of AutoAugment for CIFAR and TinyImageNet,
    # and the ImageNet configuration for ImageNet-100"; RandErase as DeiT
    ba = 1 if name.endswith(('_plain_convit_cifar100', '_msda_convit_cifar100')) else 4 if long_run else 3
    assert args.smoothing == 0.1 and args.batch_repeat == ba and args.batch_size == 128 * ba
    assert args.aa == ('original' if data.startswith('imagenet') else 'cifar10') and args.reprob == 0.25
    assert args.crop_pad == {'cifar10': 4, 'cifar100': 4, 'tinyimagenet': 8}.get(data)
    # CutMix alpha 1.0 and MixUp alpha 0.8 simultaneously (Table 4.4: without MSDA in its "-" rows)
    msda = not name.endswith(('_plain_convit_cifar100', '_ba_convit_cifar100'))
    if single:
        assert not is_mimo(timm.create_model(args.model, **_tiny_kwargs(args.model)))
        expected = (1.0, 0.8, 'simultaneous') if msda else (0.0, 0.0, 'batch')
        assert (args.cutmix, args.mixup, args.mixup_mode) == expected
        assert args.mimo_cutmix is None and args.mimo_mixup is None
        return
    assert (args.mimo_cutmix, args.mimo_mixup) == ((1.0, 0.8) if msda else (None, None)) and args.cutmix == 0.0
    assert args.mimo_mix_prob == 1.0 or not msda
    model = timm.create_model(args.model, **{**_config(name).get('model_kwargs', {}), **_tiny_kwargs(args.model)})
    task = MimoTask.from_model(model, verbose=False)
    if name.startswith('mixvit_t4_1_') or name.startswith('mixvit_ta18_'):  # naive ViTs: MixMo's model, r = 1
        assert args.loss_root == 1.0  # Decision (docs/decisions.md): "discarded early on" (thesis App. A.1.5)
        return
    # "alpha = 0.5", "r = 1" (thesis App. A.1.5) and the end-of-training single-source schedule: from the model
    if getattr(model, 'mixing', 'tokens') == 'tokens':
        assert task.mixer.kind == 'cutmix_majority' and task.mixer.alpha == 0.5 and task.mixer.single_source_end
    assert task.mixer.prob == 1.0 and task.criterion.root == 1.0 and task.criterion.weight_sum == 1.0


def test_mixvit_ablation_and_source_recipes_set_the_rows_settings():
    # thesis Table 4.6: source attribution, inference scheme and mixing scheme rows; Table 4.2: the encoding rows
    for row, expected in T46_ROWS.items():
        model = timm.create_model('mixvit_convit_gpsa5_ca2', **_tiny_kwargs('mixvit_convit'),
                                  **_config(f'mixvit_t4_6_{row}_convit_cifar100')['model_kwargs'])
        assert {key: getattr(model, key) for key in expected} == expected, row
    for name in PAPER_TABLES['thesis Table 4.2']:
        if 'single' not in name:
            source = _config(name).get('model_kwargs', {}).get('source', 'embedding')
            assert source == ('encoding' if '_encoding_' in name else 'embedding'), name
    # thesis Table 4.1 / A.18: naive MIMO / MixMo ViTs, sum or separate inference, same-init embeddings
    naive = {'mimo': ('mimo_vit', 'sum'), 'mixmo_sum': ('mixmo_vit', 'sum'),
             'mixmo_separate': ('mixmo_vit', 'separate'), 'cutmix_only_mixmo': ('cutmix_only_mixmo_vit', 'separate')}
    for row, (method, inference) in naive.items():
        config = _config(f'mixvit_t4_1_{row}_convit_cifar100')
        model = timm.create_model(config['model'], **config.get('model_kwargs', {}), **_tiny_kwargs('convit'))
        assert (model.method, model.inference) == (method, inference), row
    config = _config('mixvit_ta18_mixmo_same_init_convit_cifar100')
    model = timm.create_model(config['model'], **config['model_kwargs'], **_tiny_kwargs('convit'))
    assert model.encoder_init == 'same' and torch.equal(*model.encoders.member_weight.unbind(0))
    # MixViT paper Fig. 7: M = 3, 4 (two of the M inputs cut-mixed per sample)
    for m in (3, 4):
        config = _config(f'mixvit_paper_fig7_m{m}_convit_cifar100')
        model = timm.create_model(config['model'], **config['model_kwargs'], **_tiny_kwargs('convit'))
        assert model.num_members == m and MimoTask.from_model(model, verbose=False).mixer.pair_only


def test_learning_rate_scales_with_the_unique_images_per_step():
    """Decision: the MixViT recipes give lr 0.001 at base batch B and √(b / B) below it (thesis App. A.1.5), counting
    unique images per step (the 3 batch-augmentation copies are not a larger batch: "we keep the 0.001 learning
    rate"); MixMo's (0.1 / b) · (bs / 128) is the linear rule on the same count."""
    assert _lr(_args('mixvit_convit_cifar100')) == pytest.approx(1e-3)  # 128 unique x 3 copies
    assert _lr(_args('mixvit_convit_cifar100', '-b', '192')) == pytest.approx(1e-3 * math.sqrt(64 / 128))
    assert _lr(_args('mixvit_t4_4_embedding_plain_convit_cifar100')) == pytest.approx(1e-3)  # 128, no copies
    assert _lr(_args('mixvit_convit_cifar100', '--grad-accum-steps', '2')) == pytest.approx(1e-3 * math.sqrt(2))
    assert _lr(_args('mixvit_t4_2_embedding_convit_imagenet100')) == pytest.approx(1e-3 * math.sqrt(128 / 1048))
    assert _lr(_args('mixvit_convit_cifar100', '--lr', '2e-3')) == 2e-3  # --lr is used as given
    mixmo = _args('cut_mixmo_wrn28_10_cifar10_b4', '--lr-base', '0.1', '--lr-base-size', '128',
                  '--lr-base-scale', 'linear')
    mixmo.lr = None
    assert _lr(mixmo) == pytest.approx(0.1 / 4 * 64 / 128)  # thesis App. A.1.3.1 with b = 4


def test_simultaneous_mixup_mode_needs_both_alphas():
    with pytest.raises(train.CliError, match='--mixup-mode simultaneous .* needs --mixup and --cutmix'):
        train.parse_args(['--model', 'test_resnet', '--cutmix', '1.0', '--mixup-mode', 'simultaneous'])
    with pytest.raises(train.CliError, match="--mixup-mode 'both': expected one of"):
        train.parse_args(['--model', 'test_resnet', '--mixup-mode', 'both'])


# --- MixShare: MixShare App. A ----------------------------------------------------------------------------------

@pytest.mark.parametrize('name', PAPER_TABLES['thesis Table 3.6'])
def test_mixshare_configs_match_mixshare_appendix_a(name):
    args = _args(name)
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
    width = re.search(r'_wrn28_([25])_cifar100_b2$', name).group(1)  # WRN-28-2 (focus) and WRN-28-5
    assert args.model.endswith(f'_wrn28_{width}')


# --- every recipe runs ----------------------------------------------------------------------------------------------

def _tiny_kwargs(model_name):
    """Small versions of a recipe's network: same family and code path, a fraction of the cost."""
    if re.search(r'wrn28_\d+', model_name):
        return dict(depth=10, widen_factor=1)
    if 'preact_resnet18' in model_name:
        return dict(widen_factor=1)
    if 'convit' in model_name:
        return dict(depth=1, embed_dim=48, num_heads=2, img_size=32, patch_size=8)
    if 'cait' in model_name:
        return dict(depth=2, embed_dim=48, num_heads=2, img_size=32, patch_size=8)
    raise KeyError(model_name)


@pytest.mark.parametrize('name', NAMES)
def test_every_config_builds_and_runs_one_step(name, digits_dir):
    """Model (tiny), optimizer, scheduler and loader from the config, then one training step on real images.

    The step runs at 32 px (the recipes' own 64 / 224 px only scale the cost): the recipe's model family, kwargs,
    sampler, transforms, mixing and loss are what runs.
    """
    config = _config(name)
    tiny = _tiny_kwargs(config['model'])
    batch = 12  # a multiple of every config's b
    model_kwargs = {**config.get('model_kwargs', {}), **tiny}
    args = train.parse_args(['--config', name, '--data-dir', str(digits_dir), '--dataset', '', '--train-split', 'train',
                             '--val-split', 'validation', '--num-classes', '10', '-b', str(batch), '--workers', '0',
                             '--img-size', '32', '--model-kwargs', *[f'{k}={v}' for k, v in model_kwargs.items()]])
    init_distributed_device(args)
    optim_factory.resolve_lr(args)
    model = train_model.create_train_model(args)
    args.num_classes_resolved = model.num_classes
    task = train_model.build_task(args, model, torch.device('cpu'))
    args.data_config = resolve_data_config(vars(args), model=model)
    num_partners = batch if task.pixel_mix is not None else 0
    data = data_path.open_train_data(args, args.data_config, num_partners)
    sampler = data.sampler
    optimizer = optim_factory.create_optimizer(args, model)
    scheduler, num_epochs = optim_factory.create_scheduler(args, optimizer, sampler.steps_per_epoch)
    loader = data_path.create_train_loader(args, data, task, num_epochs, torch.device('cpu'), args.data_config)
    eval_loader, _ = data_path.create_eval_loader(args, args.data_config, torch.device('cpu'))
    assert num_epochs == args.epochs and eval_loader is not None
    if args.l2 is not None:  # the papers' L2 covers every parameter, BatchNorm and biases included
        assert all(group['weight_decay'] == 2 * args.l2 for group in optimizer.param_groups)
        assert sum(len(g['params']) for g in optimizer.param_groups) == len(list(model.parameters()))
    run = run_loop.Run(args, task, optimizer, scheduler, num_epochs, sampler.steps_per_epoch, torch.device('cpu'))
    assert (run.mixup_fn is not None) == (args.mixup > 0 or args.cutmix > 0)
    before = [p.detach().clone() for p in model.parameters()]
    sampler.set_epoch(0)
    run_loop.seed_epoch(args, 0)
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
    optimizer = optim_factory.create_optimizer(args, model)
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
