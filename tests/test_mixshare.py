"""MixShare (arXiv:2205.10139; thesis Alg. A.7): unmixing, partial / fadeout unmixing, aligned encoders, registry."""
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from model_checks import check_mimo_contract, encoder_output

from timm_mimo import MimoLoss, Mixer, MixPlan
from timm_mimo.mixing import fadeout_relax
from timm_mimo.models.mixshare import MixShareCNN, unmix_channels, unmix_features

MIXSHARE_NAMES = timm.list_models(module='mixshare')


def tiny(unmixing: str = 'full', num_classes: int = 5, **kwargs) -> MixShareCNN:
    """A MixShare WRN-10-1."""
    torch.manual_seed(0)
    kwargs = dict(dict(backbone='wrn28_2', depth=10, widen_factor=1, num_classes=num_classes), **kwargs)
    return timm.create_model('mixshare', unmixing=unmixing, **kwargs)


def half_masks(batch_size: int, grid) -> torch.Tensor:
    """Member 0 owns the left half of the grid, member 1 the right half."""
    left = torch.zeros(batch_size, *grid)
    left[..., : grid[1] // 2] = 1
    return torch.stack([left, 1 - left], dim=1)


# --- the unmixing arithmetic on hand-built features ----------------------------------------------------------------

def test_unmix_features_hand_built():
    features = torch.arange(8.0).view(1, 2, 2, 2)  # channel 0: [[0, 1], [2, 3]], channel 1: [[4, 5], [6, 7]]
    masks = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [0.0, 1.0]]]])
    out = unmix_features(features, masks)
    assert out.shape == (1, 2, 2, 2, 2)
    assert torch.equal(out[0, 0, 0], torch.tensor([[0.0, 0.0], [2.0, 0.0]]))
    assert torch.equal(out[0, 1, 1], torch.tensor([[0.0, 5.0], [0.0, 7.0]]))
    # literal GAP: mean over the whole map (scale ∝ mask area); masked_mean: mean over the masked cells
    assert out[0, 0, 0].mean() == 0.5
    normalised = unmix_features(features, masks, pool='masked_mean')
    assert normalised[0, 0, 0].mean() == 1.0 and normalised[0, 1, 1].mean() == 6.0


def test_partial_unmixing_touches_exactly_the_chosen_channels():
    features = torch.randn(3, 8, 4, 4)
    masks = half_masks(3, (4, 4))
    out = unmix_features(features, masks, channels=2)
    for m in range(2):
        torch.testing.assert_close(out[:, m, :2], features[:, :2] * masks[:, m, None], rtol=0, atol=0)
        torch.testing.assert_close(out[:, m, 2:], features[:, 2:], rtol=0, atol=0)
    assert unmix_channels(8, 0.25) == 2 and unmix_channels(10, 0.25) == 3 and unmix_channels(640, 1.0) == 640


def test_fadeout_mask_is_mask_plus_r_times_complement():
    features = torch.ones(1, 1, 2, 2)
    masks = half_masks(1, (2, 2))
    out = unmix_features(features, masks, relax=0.25)
    assert torch.equal(out[0, 0, 0], torch.tensor([[1.0, 0.25], [1.0, 0.25]]))
    assert torch.equal(unmix_features(features, masks, relax=1.0)[0, 1, 0], torch.ones(2, 2))


def test_unmix_features_refuses_a_grid_mismatch():
    with pytest.raises(ValueError, match='grid'):
        unmix_features(torch.randn(1, 4, 8, 8), torch.ones(1, 2, 32, 32) / 2)


# --- fadeout schedule -------------------------------------------------------------------------------------------

def test_fadeout_relax_at_chosen_epochs():
    assert [fadeout_relax(e, 100) for e in (0, 25, 50.5, 100, 250)] == [0.0, 0.25, 0.505, 1.0, 1.0]
    mixer = Mixer(num_members=2, kind='cutmix', prob=1.0, prob_decay=False, fadeout_epochs=100,
                  generator=torch.Generator().manual_seed(0))
    assert mixer(2, (8, 8), progress=0.1, epoch=30.0).unmix_relax == 0.3
    assert mixer(2, (8, 8), progress=0.5, epoch=150.0).unmix_relax == 1.0
    with pytest.raises(ValueError, match='fractional epoch'):
        mixer(2, (8, 8), progress=0.1)
    plain = Mixer(num_members=2)
    assert plain(2, (8, 8), epoch=7.5).unmix_relax == 0.0
    with pytest.raises(ValueError, match='fadeout_epochs'):
        Mixer(num_members=2, fadeout_epochs=0)


# --- the model ----------------------------------------------------------------------------------------------------

def test_defaults_follow_the_paper():
    model = tiny('fadeout')
    assert model.mix_cfg == dict(kind='cutmix', alpha=2.0, prob=1.0, prob_decay=False, input_repeat=0.1,
                                 fadeout_epochs=100.0)
    assert model.loss_cfg == dict(root=1.0)
    assert tiny('partial').unmixed_channels == 16  # 25 % of WRN-10-1's 64 final channels
    assert tiny('fadeout', fadeout_epochs=20).mix_cfg['fadeout_epochs'] == 20.0
    assert timm.create_model('mixshare_wrn28_2', depth=10, widen_factor=1).unmixing == 'fadeout'


def test_mix_grid_is_the_final_feature_grid_and_encoders_get_the_upsampled_masks():
    model = tiny().eval()
    assert model.mix_grid(32) == (8, 8) and model.mix_grid((16, 24)) == (4, 6)
    masks = half_masks(2, (8, 8))
    masks[1, :, 0, 0] = masks[1, :, 0, 0].flip(0)  # one odd cell
    xs = torch.randn(2, 2, 3, 32, 32)
    encoded = encoder_output(model, xs, MixPlan.from_masks(masks))
    fine = masks.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)
    enc = model.encoders
    convs = [F.conv2d(xs[:, m], enc.member_weight[m], None, enc.stride, enc.padding) for m in range(2)]
    torch.testing.assert_close(encoded, 2 * (fine[:, :1] * convs[0] + fine[:, 1:] * convs[1]))


def test_measuring_the_grid_keeps_every_module_mode_and_bn_statistics():
    model = tiny().train()
    model.backbone.stages[0].eval()  # e.g. a frozen part
    stats = {k: v.clone() for k, v in model.state_dict().items() if 'running' in k or 'num_batches' in k}
    assert model.mix_grid(24) == (6, 6)
    assert model.training and not model.backbone.stages[0].training and model.backbone.stages[1].training
    assert all(torch.equal(model.state_dict()[k], v) for k, v in stats.items())


def test_unmixed_logits_by_hand():
    """Member m's logits are d_m(GAP(mask_m ⊙ f)); an empty mask leaves only the head's bias."""
    model = tiny().eval()
    xs = torch.randn(2, 2, 3, 32, 32)
    masks = half_masks(2, (8, 8))
    masks[1] = torch.stack([torch.ones(8, 8), torch.zeros(8, 8)])  # sample 1: all positions are input 0's
    plan = MixPlan.from_masks(masks)
    with torch.no_grad():
        logits = model(xs, plan)
        features = model._run(model._packed(xs), model._mixed_call(plan, xs), model.backbone.forward_features)
        heads = model.heads
        for m in range(2):
            pooled = (features * masks[:, m, None]).mean(dim=(2, 3))
            torch.testing.assert_close(logits[:, m], pooled @ heads.weight[m].T + heads.bias[m])
        torch.testing.assert_close(logits[1, 1], heads.bias[1], rtol=0, atol=0)


def test_fully_faded_unmixing_is_mixmo():
    model = tiny('fadeout').eval()
    xs = torch.randn(2, 2, 3, 32, 32)
    faded = MixPlan.from_masks(half_masks(2, (8, 8))).with_relax(1.0)
    assert isinstance(faded.unmix_relax, torch.Tensor) and not faded.unmixes
    with torch.no_grad():
        features = model._run(model._packed(xs), model._mixed_call(faded, xs), model.backbone.forward_features)
        expected = model.heads(model.backbone.forward_head(features, pre_logits=True))
        torch.testing.assert_close(model(xs, faded), expected)


def test_inference_is_mixmo_inference():
    """No mask at test time: the sum of the encodings, one pass, both heads on the plain pooled features."""
    model = tiny().eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        features = model.forward_features(x)
        pooled = features.mean(dim=(2, 3))
        members = torch.stack([pooled @ model.heads.weight[m].T + model.heads.bias[m] for m in range(2)], dim=1)
        torch.testing.assert_close(model.forward_members(x), members)
        torch.testing.assert_close(model(x), members.mean(dim=1))


def test_aligned_encoders_and_independent_heads_at_init():
    same = tiny()
    weights = same.encoders.member_weight.detach()
    assert torch.equal(weights[0], weights[1])
    assert not torch.equal(same.heads.weight[0], same.heads.weight[1])
    colinear = tiny(encoder_init='colinear').encoders.member_weight.detach()
    ratio = colinear[1] / colinear[0]
    torch.testing.assert_close(ratio, ratio.flatten()[0].expand_as(ratio))
    assert 0.5 <= ratio.flatten()[0] <= 2.0
    per_filter = tiny(encoder_init='colinear_filter').encoders.member_weight.detach()
    ratio = per_filter[1] / per_filter[0]
    torch.testing.assert_close(ratio, ratio[:, :1, :1, :1].expand_as(ratio))
    assert ratio[:, 0, 0, 0].unique().numel() == ratio.shape[0]


def test_three_members_cut_mix_pairs():
    model = tiny(num_members=3)
    assert model.mix_cfg['pair_only'] is True
    mixer = Mixer(num_members=3, **model.mix_cfg, generator=torch.Generator().manual_seed(0))
    plan = mixer(4, model.mix_grid(32), progress=0.1, epoch=0.0)
    assert plan.binary and ((plan.kappas == 0).sum(dim=1) == 1).all()
    logits = model(torch.randn(4, 3, 3, 32, 32), plan)
    absent = plan.kappas == 0  # an absent input's member pools an empty mask: its logits are its head's bias
    torch.testing.assert_close(logits[absent], model.heads.bias.expand(4, -1, -1)[absent])


def test_linear_plan_is_refused_while_unmixing():
    model = tiny()
    plan = MixPlan.linear(torch.full((2, 2), 0.5), (8, 8))
    with pytest.raises(ValueError, match='binary'):
        model(torch.randn(2, 2, 3, 32, 32), plan)
    tiny('none')(torch.randn(2, 2, 3, 32, 32), plan)  # no unmixing: any plan


@pytest.mark.parametrize('kwargs, match', [
    (dict(unmixing='half'), 'unmixing must be'),
    (dict(unmixing='full', unmix_share=0.5), 'unmix_share'),
    (dict(unmixing='partial', unmix_share=0.0), 'unmix_share'),
    (dict(unmixing='partial', fadeout_epochs=10), 'fadeout_epochs'),
    (dict(unmixing='fadeout', fadeout_epochs=-1), 'fadeout_epochs'),
    (dict(unmixing='full', unmix_pool='max'), 'unmix_pool'),
    (dict(unmixing='full', encoder_init='aligned'), 'encoder_init'),
])
def test_bad_arguments_name_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny(**kwargs)


def test_training_step_with_the_models_mixer():
    model = tiny('fadeout', fadeout_epochs=2)
    mixer = Mixer(num_members=2, **model.mix_cfg, generator=torch.Generator().manual_seed(0))
    assert mixer.input_repeat == 0.1
    plan = mixer(4, model.mix_grid(32), progress=0.1, epoch=0.5)
    assert plan.binary and plan.unmix_relax == 0.25
    logits = model(torch.randn(4, 2, 3, 32, 32), plan)
    MimoLoss(**model.loss_cfg)(logits, torch.randint(0, 5, (4, 2)), plan.kappas).backward()
    assert model.encoders.weight.grad.abs().sum() > 0


# --- registered names -----------------------------------------------------------------------------------------

def test_registered_names():
    assert set(MIXSHARE_NAMES) == {'mixshare', 'mixshare_wrn28_2', 'mixshare_wrn28_5'}
    assert not set(MIXSHARE_NAMES) & set(timm.list_pretrained())  # no published weights


@pytest.mark.parametrize('name', MIXSHARE_NAMES)
def test_model_api(name):
    torch.manual_seed(0)
    kwargs = dict(backbone='resnet10t', zero_init_last=False) if name == 'mixshare' else dict(depth=10, widen_factor=1)
    # the contract check samples a plan without an epoch: the partial variant needs none
    model = timm.create_model(name, unmixing='partial', num_classes=4, **kwargs)
    assert model.pretrained_cfg['architecture'] == name
    if name != 'mixshare':  # a generic instance takes its backbone's cfg
        assert model.pretrained_cfg['paper_ids'] == 'arXiv:2205.10139'
    check_mimo_contract(model, torch.randn(2, 3, 32, 32))


@pytest.mark.parametrize('name', ['mixshare_wrn28_2', 'mixshare_wrn28_5'])
def test_full_size_parameter_count(name):
    with torch.device('meta'):
        model = timm.create_model(name)
        backbone = timm.create_model(model.backbone_name)
    extra = backbone.conv_stem.weight.numel() + backbone.fc.weight.numel() + backbone.fc.bias.numel()
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in backbone.parameters()) + extra


# --- the papers' table as configs ---------------------------------------------------------------------------------

MIXSHARE_CONFIGS = sorted(Path(__file__).parents[1].glob('timm_mimo/configs/mixshare_*.yaml'))


def test_every_table_row_has_a_config_per_width():
    rows = {'mixmo', 'unmix', 'unmix_same_init', 'partial', 'fadeout'}
    assert {p.name for p in MIXSHARE_CONFIGS} == {f'mixshare_{row}_wrn28_{w}_cifar100_b2.yaml' for row in rows
                                                  for w in (2, 5)}


@pytest.mark.parametrize('path', MIXSHARE_CONFIGS, ids=lambda p: p.stem)
def test_config_builds_its_row(path):
    """The row's model, mixer and loss; the recipe (lr, batch, L2, schedule) is checked in tests/test_configs.py."""
    from timm_mimo.cli import train, train_model
    args = train.parse_args(['--config', str(path), '--data-dir', '/unused'])
    with torch.device('meta'):
        model = train_model.create_train_model(args)
    task = train_model.build_task(args, model, torch.device('cpu'))  # MimoTask.from_model with the config's MIMO flags
    mixer, loss = task.mixer_kwargs, task.loss_kwargs
    row = path.stem.split('_wrn')[0].removeprefix('mixshare_')
    expected = {
        'mixmo': (None, 'independent', 0.5, 0.0, 3.0),
        'unmix': ('full', 'independent', 1.0, 0.0, 3.0),
        'unmix_same_init': ('full', 'same', 1.0, 0.0, 3.0),
        'partial': ('partial', 'same', 1.0, 0.1, 1.0),
        'fadeout': ('fadeout', 'same', 1.0, 0.1, 1.0),
    }[row]
    assert getattr(model, 'unmixing', None) == expected[0]
    assert model.encoder_init == expected[1]
    assert (mixer['prob'], mixer.get('input_repeat', 0.0), loss['root']) == expected[2:]
    assert (task.mixer.prob, task.input_repeat, task.criterion.root) == expected[2:]
    assert mixer.get('fadeout_epochs') == (100.0 if row == 'fadeout' else None)
    if row == 'partial':
        assert model.unmix_share == 0.25
