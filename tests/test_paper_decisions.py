"""The decisions on what the papers leave open for their last rows (docs/decisions.md, "The papers' last rows").

MixMo with M > 2 inputs (MixViT openreview.net/forum?id=pOq1HuMI8Dz Fig. 7), the naive MIMO / MixMo ViT loss root
(thesis, HAL tel-03952815, App. A.1.5), and the warning when pixel mixing takes its partners from the batch.
"""
import math
import warnings

import pytest
import timm
import torch

import timm_mimo  # noqa: F401
from timm_mimo.loss import MimoLoss, mixing_loss_weights
from timm_mimo.recipes import config_path
from timm_mimo.task import BATCH_PARTNERS_WARNING, MimoTask

FIG7_MIXMO = {m: f'mixvit_paper_fig7_mixmo_m{m}_wrn28_5_cifar100_b2' for m in (2, 3, 4)}


def _recipe_task(name, **tiny):
    import yaml
    with open(config_path(name)) as f:
        config = yaml.safe_load(f)
    model = timm.create_model(config['model'], **{**config.get('model_kwargs', {}), **tiny})
    return MimoTask.from_model(model, loss_root=config.get('loss_root'), verbose=False), config


def test_pair_only_weights_keep_the_two_input_loss_scale():
    """Decision: with two of M inputs mixed per sample (the others κ = 0), the weights sum to 2, as at M = 2.

    eq. A.1 (thesis App. A.5.2), ``w_r(κ_i) = M κ_i^{1/r} / Σ_j κ_j^{1/r}``, gives every mixed input a mean weight of
    1 when all M inputs are mixed; read literally with two active inputs it puts M on the two (an M / 2 larger data
    term against the same L2 3e-4).
    """
    kappas = torch.tensor([[0.25, 0.0, 0.75], [0.5, 0.5, 0.0]])
    # r = 1: w = 2 κ on the two mixed inputs (the literal reading: 3 κ)
    assert mixing_loss_weights(kappas, root=1.0, weight_sum=2.0).tolist() == [[0.5, 0.0, 1.5], [1.0, 1.0, 0.0]]
    assert mixing_loss_weights(kappas, root=1.0).tolist() == [[0.75, 0.0, 2.25], [1.5, 1.5, 0.0]]
    # r = 3 at κ = (1/2, 1/2, 0): 1 and 1, as M = 2's w_3(1/2) = 1 (literal: 3/2 each)
    assert mixing_loss_weights(kappas[1:], root=3.0, weight_sum=2.0).tolist() == [[1.0, 1.0, 0.0]]
    assert mixing_loss_weights(torch.tensor([[0.5, 0.5]]), root=3.0).tolist() == [[1.0, 1.0]]
    # the loss at uniform logits over K classes: 2 ln K for every M (the literal reading: M ln K)
    num_classes = 4
    logits, targets = torch.zeros(2, 3, num_classes), torch.zeros(2, 3, dtype=torch.long)
    kept = MimoLoss(root=3.0, weight_sum=2.0)(logits, targets, kappas)
    literal = MimoLoss(root=3.0)(logits, targets, kappas)
    assert kept.item() == pytest.approx(2 * math.log(num_classes), abs=1e-6)
    assert literal.item() == pytest.approx(3 * math.log(num_classes), abs=1e-6)


@pytest.mark.parametrize('members', [2, 3, 4])
def test_fig7_mixmo_recipes_weigh_every_sample_by_two(members):
    """The MixViT paper's Fig. 7 MixMo recipes (WRN-28-5, M = 2, 3, 4): r = 3 and per-sample weights summing to 2."""
    task, _ = _recipe_task(FIG7_MIXMO[members], depth=10, widen_factor=1, num_classes=5)
    assert task.criterion.root == 3.0
    assert task.criterion.weight_sum == (None if members == 2 else 2.0)
    assert task.mixer.pair_only == (members > 2)
    task.set_step(0, 0, 10, 300)
    plan = task.sample_plan(16, (32, 32))
    kappas = plan.mix.kappas
    weights = mixing_loss_weights(kappas, task.criterion.root, task.criterion.weight_sum)
    torch.testing.assert_close(weights.sum(dim=1), torch.full((16,), 2.0))
    assert int((kappas > 0).sum(dim=1).max()) == 2


@pytest.mark.parametrize('row', ['mimo', 'mixmo_sum', 'mixmo_separate', 'cutmix_only_mixmo'])
def test_naive_vit_recipes_drop_the_loss_root(row):
    """Decision: the naive MIMO / MixMo ViTs (thesis Table 4.1, A.18) train with r = 1, like every transformer of the
    papers ("we did not tune the root ... discarded it early on in our preliminary experiments", thesis App. A.1.5)."""
    name = f'mixvit_t4_1_{row}_convit_cifar100'
    tiny = dict(depth=1, embed_dim=48, num_heads=2, img_size=32, patch_size=8)
    task, config = _recipe_task(name, **tiny)
    assert config['loss_root'] == 1.0 and task.criterion.root == 1.0
    same_init, _ = _recipe_task('mixvit_ta18_mixmo_same_init_convit_cifar100', **tiny)
    assert same_init.criterion.root == 1.0


def _tiny_cutmix_task():
    model = timm.create_model('cut_mixmo', backbone='wrn28_2', depth=10, widen_factor=1, num_classes=3, in_chans=1)
    return MimoTask.from_model(model, mimo_cutmix=1.0, mimo_mix_prob=1.0, seed=0, verbose=False)


def test_batch_partners_warn_once_per_task():
    """Pixel mixing without dataset partners takes them from the batch: said once per task (run), never when the
    partners are given, never by a task without pixel mixing."""
    images, targets = torch.randn(8, 1, 8, 8), torch.arange(8) % 3
    task = _tiny_cutmix_task()
    task.set_step(0, 0, 2, 1)
    with pytest.warns(UserWarning) as caught:
        task(images, targets)
    assert [str(w.message) for w in caught] == [BATCH_PARTNERS_WARNING]
    assert 'copy of the same image' in BATCH_PARTNERS_WARNING and 'whole dataset' in BATCH_PARTNERS_WARNING
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        task.set_step(0, 1, 2, 1)
        task(images, targets)  # the same task: silent
        task.mix_inputs(images, targets)
        given = _tiny_cutmix_task()
        given.set_step(0, 0, 1, 1)
        given(images, targets, torch.randn(8, 1, 8, 8), torch.zeros(8, dtype=torch.long))
        plain = MimoTask.from_model(timm.create_model('cut_mixmo', backbone='wrn28_2', depth=10, widen_factor=1,
                                                      num_classes=3, in_chans=1), verbose=False)
        plain.set_step(0, 0, 1, 1)
        plain(images, targets)
    with pytest.warns(UserWarning, match='partners are taken from the batch itself'):
        given.mix_inputs(images, targets)  # another task (run): its own warning
