"""MimoCNN: MIMO / Linear-MixMo / Cut-MixMo on timm CNNs (arXiv:2103.06132) and the one MIMO call contract."""
import copy

import huggingface_hub.constants
import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from model_checks import check_mimo_contract, encoder_output
from safetensors.torch import save_file

from timm_mimo import MimoLoss, Mixer, MixPlan
from timm_mimo.models import mimo_cnn
from timm_mimo.models.mimo_cnn import MemberEncoders, MimoCNN
from timm_mimo.pretrained import has_pretrained_source

MIMO_CNN_NAMES = timm.list_models(module='mimo_cnn')
GENERIC_NAMES = ('mimo', 'linear_mixmo', 'cut_mixmo')


def tiny(method: str = 'cut_mixmo', num_members: int = 2, **kwargs) -> MimoCNN:
    """A WRN-10-1 MIMO model, 5 classes."""
    torch.manual_seed(0)
    kwargs = dict(dict(backbone='wrn28_2', depth=10, widen_factor=1, num_classes=5), **kwargs)
    return timm.create_model(method, num_members=num_members, **kwargs)


def member_convs(model: MimoCNN, xs) -> list:
    """``c_m(x_m)`` for every member, computed by hand from the encoders' weights."""
    enc = model.encoders
    return [F.conv2d(x, enc.member_weight[m], None, enc.stride, enc.padding) for m, x in enumerate(xs)]


# --- every registered name ------------------------------------------------------------------------------------------

def test_registered_names():
    widths = ('wrn28_2', 'wrn28_3', 'wrn28_4', 'wrn28_5', 'wrn28_7', 'wrn28_10', 'wrn28_14',
              'preact_resnet18', 'preact_resnet18_2', 'preact_resnet18_3')
    expected = {f'{m}_{w}' for m in GENERIC_NAMES for w in widths} | set(GENERIC_NAMES)
    assert set(MIMO_CNN_NAMES) == expected


def small_kwargs(name: str) -> dict:
    """Shrink a registered name for the real forward / backward (its full size is checked on the meta device).

    Generic names wrap timm's resnet10t (deep stem: ``first_conv`` is ``conv1.0``; its zero-init of the last BN of each
    block is switched off so that every parameter gets a gradient). Paper names keep their backbone's architecture at
    the smallest size: WRN-10-1 for WRN-28-w, width 1 for PreActResNet-18-w (the full sizes run in
    test_cifar_resnet.py).
    """
    if name in GENERIC_NAMES:
        return dict(backbone='resnet10t', zero_init_last=False)
    return dict(depth=10, widen_factor=1) if 'wrn' in name else dict(widen_factor=1)


@pytest.mark.parametrize('name', [n for n in MIMO_CNN_NAMES if n not in GENERIC_NAMES])
def test_full_size_structure(name):
    """The registered size: M-1 extra stem convs and heads on top of the backbone's parameters."""
    with torch.device('meta'):
        model = timm.create_model(name)
        backbone = timm.create_model(model.backbone_name)
    cfg = model.pretrained_cfg
    assert cfg['architecture'] == name and not has_pretrained_source(cfg)  # no published MIMO weights
    assert cfg['input_size'] == backbone.pretrained_cfg['input_size']
    assert cfg['num_classes'] == model.num_classes == backbone.num_classes
    assert cfg['mean'] == backbone.pretrained_cfg['mean'] and cfg['crop_pct'] == 1.0
    stem, fc = backbone.conv_stem, backbone.fc
    extra = stem.weight.numel() + fc.weight.numel() + fc.bias.numel()
    count = sum(p.numel() for p in model.parameters())
    assert count == sum(p.numel() for p in backbone.parameters()) + (model.num_members - 1) * extra
    assert model.mix_cfg == mimo_cnn.METHOD_MIX_CFGS[name.split('_wrn')[0].split('_preact')[0]]


@pytest.mark.parametrize('name', MIMO_CNN_NAMES)
def test_model_api(name):
    torch.manual_seed(0)
    model = timm.create_model(name, **small_kwargs(name))
    size = 32 if name in GENERIC_NAMES else 16
    cfg = model.pretrained_cfg
    assert model.num_members == 2
    assert isinstance(model.get_submodule(cfg['first_conv']), MemberEncoders)
    assert model.get_classifier() is model.get_submodule(cfg['classifier'])
    assert model.num_classes == cfg['num_classes']

    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        features = model.eval().forward_features(x)
        assert features.shape[1] == model.num_features
        assert model.forward_head(features, pre_logits=True).shape == (2, model.num_features)
    check_mimo_contract(model, x)


def test_mix_and_loss_cfgs():
    assert tiny('mimo').mix_cfg == dict(kind='linear', alpha=None)
    assert tiny('linear_mixmo').mix_cfg == dict(kind='linear', alpha=2.0)
    assert tiny('cut_mixmo').mix_cfg == dict(kind='cutmix', alpha=2.0, prob=0.5, prob_decay=True)
    assert tiny('cut_mixmo').loss_cfg == dict(root=3.0)
    assert tiny('cut_mixmo', mix_cfg=dict(prob=0.6)).mix_cfg['prob'] == 0.6


def test_training_engineer_case():
    """in_chans=1, 10 classes, M=3: a Mixer plan, MimoLoss and a backward step."""
    model = tiny('cut_mixmo', num_members=3, num_classes=10, in_chans=1)
    xs = torch.randn(4, 3, 1, 16, 16)
    plan = Mixer(num_members=3, **model.mix_cfg, generator=torch.Generator().manual_seed(0))(4, model.mix_grid(16))
    logits = model(xs, plan)
    assert logits.shape == (4, 3, 10)
    loss = MimoLoss(**model.loss_cfg)(logits, torch.randint(0, 10, (4, 3)), plan.kappas)
    loss.backward()
    assert model.encoders.weight.grad.shape == (3 * 16, 1, 3, 3)


# --- exact arithmetic -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize('num_members', [2, 3])
def test_eval_features_are_the_sum_of_the_encoders(num_members):
    model = tiny(num_members=num_members).eval()
    x = torch.randn(2, 3, 16, 16)
    expected = sum(member_convs(model, [x] * num_members))
    torch.testing.assert_close(encoder_output(model, x), expected)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.forward_members(x).mean(dim=1), rtol=0, atol=0)


def test_encoder_weights_are_distinct_draws_or_same():
    independent = tiny(num_members=3).encoders.member_weight.detach()
    for m in (1, 2):
        assert not torch.equal(independent[m], independent[0])
        assert torch.equal(independent[m].flatten().sort().values, independent[0].flatten().sort().values)
    same = tiny(num_members=3, encoder_init='same').encoders.member_weight.detach()
    assert torch.equal(same[1], same[0]) and torch.equal(same[2], same[0])
    heads = tiny(num_members=2).heads.weight.detach()
    assert not torch.equal(heads[1], heads[0])


def test_binary_plan_mixes_encodings_times_m():
    model = tiny(num_members=2).eval()
    xs = torch.randn(2, 2, 3, 16, 16)
    box = torch.zeros(2, 16, 16)
    box[0, 2:9, 3:12] = 1
    box[1, :, :5] = 1
    masks = torch.stack([box, 1 - box], dim=1)
    plan = MixPlan.from_masks(masks)
    assert plan.binary
    c0, c1 = member_convs(model, [xs[:, 0], xs[:, 1]])
    expected = 2 * (box[:, None] * c0 + (1 - box[:, None]) * c1)  # thesis eq. 3.2
    torch.testing.assert_close(encoder_output(model, xs, plan), expected)


def test_linear_plan_mixes_encodings_times_m():
    model = tiny(num_members=3).eval()
    xs = torch.randn(2, 3, 3, 16, 16)
    kappas = torch.tensor([[0.2, 0.3, 0.5], [0.6, 0.1, 0.3]])
    plan = MixPlan.linear(kappas, (16, 16))
    convs = member_convs(model, [xs[:, m] for m in range(3)])
    expected = 3 * sum(kappas[:, m, None, None, None] * convs[m] for m in range(3))  # thesis eq. A.3
    torch.testing.assert_close(encoder_output(model, xs, plan), expected)


@pytest.mark.parametrize('num_members', [2, 3])
def test_mimo_identity(num_members):
    """Identical inputs with κ = 1/M give exactly the plain (inference) forward."""
    model = tiny('mimo', num_members=num_members).eval()
    x = torch.randn(2, 3, 16, 16)
    xs = x.unsqueeze(1).expand(-1, num_members, -1, -1, -1).contiguous()
    plan = MixPlan.linear(torch.full((2, num_members), 1.0 / num_members), (16, 16))
    with torch.no_grad():
        torch.testing.assert_close(model(xs, plan), model.forward_members(x))


# --- bad input ------------------------------------------------------------------------------------------------------

def test_bad_input_raises_value_error_naming_the_shape():
    model = tiny(num_members=2).eval()
    plan = MixPlan.linear(torch.full((2, 2), 0.5), (16, 16))
    with pytest.raises(ValueError, match=r'\(B, C, H, W\)'):
        model(torch.randn(3, 16, 16))
    with pytest.raises(ValueError, match=r'\(B, C, H, W\)'):
        model(torch.randn(2, 2, 3, 16, 16))
    with pytest.raises(ValueError, match=r'\(B, M=2, C, H, W\)'):
        model(torch.randn(2, 3, 3, 16, 16), MixPlan.linear(torch.full((2, 3), 1 / 3), (16, 16)))
    with pytest.raises(ValueError, match=r'\(B, M=2, C, H, W\)'):
        model(torch.randn(2, 3, 16, 16), plan)
    with pytest.raises(ValueError, match=r'\(2, 2, 16, 16\)'):
        model(torch.randn(2, 2, 3, 16, 16), MixPlan.linear(torch.full((4, 2), 0.5), (16, 16)))
    with pytest.raises(ValueError, match=r'\(2, 2, 16, 16\)'):
        model(torch.randn(2, 2, 3, 16, 16), MixPlan.linear(torch.full((2, 2), 0.5), (8, 8)))
    with pytest.raises(ValueError, match=r'\(B, 3, H, W\)'):
        model(torch.randn(2, 1, 16, 16))
    with pytest.raises(ValueError, match='no pretrained weights exist'):
        timm.create_model('cut_mixmo_wrn28_2', pretrained=True)


def test_backbone_without_conv_stem_or_linear_classifier():
    with pytest.raises(ValueError, match="'classifier'.*Conv2d.*Linear"):
        MimoCNN(_conv_classifier_backbone())
    backbone = timm.create_model('resnet18', num_classes=3)
    backbone.pretrained_cfg = dict(backbone.pretrained_cfg, first_conv='nope')
    with pytest.raises(ValueError, match="'first_conv'.*'nope'"):
        MimoCNN(backbone)


def _conv_classifier_backbone() -> nn.Module:
    backbone = timm.create_model('resnet18', num_classes=3)
    backbone.fc = nn.Conv2d(512, 3, 1)
    return backbone


# --- the hand-over of the plan: exceptions, re-entrancy, bypass -----------------------------------------------------

def test_exception_inside_backbone_leaves_no_pending_plan():
    model = tiny().eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        reference = model(x)

    def boom(*_):
        raise KeyError('boom')
    handle = model.backbone.stages[1].register_forward_pre_hook(boom)
    with pytest.raises(KeyError):
        model(torch.randn(2, 2, 3, 16, 16), MixPlan.linear(torch.full((2, 2), 0.5), (16, 16)))
    handle.remove()
    assert not getattr(mimo_cnn._CALLS, 'stacks', {})
    with torch.no_grad():
        assert torch.equal(model(x), reference)


def test_reentrant_plain_call_inside_a_mixed_call():
    """A hook that calls the model on a plain batch while a mixed call is pending gets the plain result."""
    model = tiny().eval()
    x = torch.randn(2, 3, 16, 16)
    xs = torch.randn(2, 2, 3, 16, 16)
    plan = MixPlan.linear(torch.tensor([[0.3, 0.7], [0.9, 0.1]]), (16, 16))
    with torch.no_grad():
        plain, mixed = model.forward_members(x), model(xs, plan)
    inner = []

    def nested(module, args):
        if not inner:
            inner.append(None)  # the nested call runs this hook again
            inner[0] = model.forward_members(x)
    handle = model.encoders.register_forward_pre_hook(nested)
    with torch.no_grad():
        outer = model(xs, plan)
    handle.remove()
    torch.testing.assert_close(inner[0], plain, rtol=0, atol=0)
    torch.testing.assert_close(outer, mixed, rtol=0, atol=0)


def test_backbone_that_bypasses_its_stem_is_refused():
    """A mixed call whose backbone never runs the encoders must not silently train unmixed."""
    model = tiny().eval()
    backbone, bypass = model.backbone, nn.Conv2d(6, 16, 3, padding=1)
    backbone.forward_features = lambda x: backbone.act(backbone.norm(backbone.stages(bypass(x))))
    with pytest.raises(RuntimeError, match='bypassed'):
        model(torch.randn(2, 2, 3, 16, 16), MixPlan.linear(torch.full((2, 2), 0.5), (16, 16)))
    assert not getattr(mimo_cnn._CALLS, 'stacks', {})


def test_mix_grid_follows_the_conv_geometry():
    """A deep ResNet stem (3x3/2 first conv), and timm's TF-"SAME" Conv2dSame stem (ceil(H / s))."""
    for backbone, size in (('resnet10t', (30, 33)), ('tf_mobilenetv3_small_minimal_100', (31, 32))):
        model = timm.create_model('cut_mixmo', backbone=backbone, num_classes=3).eval()
        out = encoder_output(model, torch.randn(1, 3, *size))
        assert model.mix_grid(size) == tuple(out.shape[-2:])
        grid = model.mix_grid(size)
        masks = torch.zeros(1, 2, *grid)
        masks[:, 0, : grid[0] // 2] = 1
        masks[:, 1] = 1 - masks[:, 0]
        assert model(torch.randn(1, 2, 3, *size), MixPlan.from_masks(masks)).shape == (1, 2, 3)


# --- pretrained -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('name,num_members', [('resnet18', 2), ('resnet10t', 3)])
def test_pretrained_backbone_reproduces_its_logits(tmp_path, name, num_members):
    torch.manual_seed(0)
    backbone = timm.create_model(name, num_classes=10).eval()
    path = tmp_path / f'{name}.safetensors'
    save_file(backbone.state_dict(), str(path))
    model = timm.create_model('cut_mixmo', backbone=name, num_members=num_members, pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(path), num_classes=10)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = backbone(x)
        torch.testing.assert_close(model(x), expected)
        torch.testing.assert_close(model.forward_members(x), expected.unsqueeze(1).expand(-1, num_members, -1))
    stem = backbone.get_submodule(backbone.pretrained_cfg['first_conv'])
    torch.testing.assert_close(model.encoders.member_weight[1] * num_members, stem.weight)


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)


def test_offline_hub_failure_says_how_to_load_a_file(offline):
    with pytest.raises(RuntimeError, match=r"pretrained_cfg_overlay=dict\(file="):
        timm.create_model('cut_mixmo', backbone='resnet18', pretrained=True)
    with pytest.raises(ValueError, match=r"no pretrained weights exist.*pretrained_cfg_overlay=dict\(file="):
        timm.create_model('cut_mixmo_wrn28_2', pretrained=True, depth=10, widen_factor=1)


def test_paper_model_checkpoint_round_trip(tmp_path, offline):
    small = dict(depth=10, widen_factor=1)
    source = timm.create_model('cut_mixmo_wrn28_2', **small).eval()
    path = tmp_path / 'mimo.safetensors'
    save_file(source.state_dict(), str(path))
    loaded = timm.create_model('cut_mixmo_wrn28_2', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                               **small).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded.forward_members(x), source.forward_members(x))

    # a single-input backbone checkpoint is converted: stem / M into every encoder, classifier into every head
    backbone = timm.create_model('wrn28_2', **small).eval()
    save_file(backbone.state_dict(), str(tmp_path / 'backbone.safetensors'))
    converted = timm.create_model('cut_mixmo_wrn28_2', pretrained=True, **small,
                                  pretrained_cfg_overlay=dict(file=str(tmp_path / 'backbone.safetensors'))).eval()
    with torch.no_grad():
        torch.testing.assert_close(converted(x), backbone(x))

    # another architecture is refused with the keys that do not fit
    with pytest.raises(ValueError, match='does not fit cut_mixmo_wrn28_2'):
        timm.create_model('cut_mixmo_wrn28_2', pretrained=True, depth=16, widen_factor=1,
                          pretrained_cfg_overlay=dict(file=str(path)))
    with pytest.raises(ValueError, match='shape mismatches'):
        timm.create_model('cut_mixmo_wrn28_2', pretrained=True, depth=10, widen_factor=2,
                          pretrained_cfg_overlay=dict(file=str(path)))


def test_issue_example_resnet50_three_members():
    with torch.device('meta'):
        model = timm.create_model('cut_mixmo', backbone='resnet50', num_members=3)
        backbone = timm.create_model('resnet50')
    assert model.encoders.weight.shape == (3 * 64, 3, 7, 7) and model.heads.weight.shape == (3, 1000, 2048)
    extra = backbone.conv1.weight.numel() + backbone.fc.weight.numel() + backbone.fc.bias.numel()
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in backbone.parameters()) + 2 * extra
    assert model.mix_grid(224) == (112, 112) and model.pretrained_cfg['first_conv'] == 'backbone.conv1'


def test_deepcopy_keeps_mixing():
    """EMA copies (timm's ModelEmaV3 deep-copies the model) mix exactly like the original."""
    model = tiny().eval()
    clone = copy.deepcopy(model)
    xs = torch.randn(2, 2, 3, 16, 16)
    masks = torch.zeros(2, 2, 16, 16)
    masks[:, 0, :, :7] = 1
    masks[:, 1] = 1 - masks[:, 0]
    plan = MixPlan.from_masks(masks)
    with torch.no_grad():
        torch.testing.assert_close(clone(xs, plan), model(xs, plan), rtol=0, atol=0)


def test_generic_model_reloads_its_own_checkpoint_through_a_pretrained_cfg(tmp_path):
    """What timm does for ``hf-hub:`` / ``local-dir:`` sources: a pretrained_cfg pointing at the MIMO weights."""
    source = tiny(num_members=3).eval()
    path = tmp_path / 'mimo.safetensors'
    save_file(source.state_dict(), str(path))
    loaded = timm.create_model('cut_mixmo', num_members=3, backbone='wrn28_2', depth=10, widen_factor=1,
                               num_classes=5, pretrained=True,
                               pretrained_cfg=dict(source.pretrained_cfg, file=str(path))).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded.forward_members(x), source.forward_members(x))


def test_grad_checkpointing_and_param_groups():
    """timm's training helpers: grad checkpointing gives the same gradients; group_matcher covers every parameter."""
    model = tiny().train()
    xs = torch.randn(2, 2, 3, 16, 16)
    plan = MixPlan.linear(torch.tensor([[0.25, 0.75], [0.5, 0.5]]), (16, 16))
    grads = []
    for enable in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(enable)
        model(xs, plan).square().sum().backward()
        grads.append(model.encoders.weight.grad.clone())
    torch.testing.assert_close(grads[1], grads[0])
    groups = timm.models.group_parameters(model, model.group_matcher(coarse=False))
    grouped = sorted(name for names in groups.values() for name in names)
    assert grouped == sorted(name for name, _ in model.named_parameters())
    assert any('backbone.conv_stem.weight' in names for names in groups.values())


def test_reset_classifier_with_global_pool():
    model = tiny(num_members=3).eval()
    model.reset_classifier(4, global_pool='avgmax')
    assert model.backbone.global_pool.pool_type == 'avgmax'
    assert isinstance(model.get_classifier(), mimo_cnn.MemberHeads) and model.heads.weight.shape == (3, 4, 64)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        features = model.forward_head(model.forward_features(x), pre_logits=True)
        expected = torch.einsum('bf,mkf->bmk', features, model.heads.weight) + model.heads.bias
        torch.testing.assert_close(model.forward_members(x), expected)


# --- encoder init and the encoder / classifier ablations (thesis Table 3.4) --------------------------------------

@pytest.mark.parametrize('encoder_init', ['independent', 'same', 'colinear', 'colinear_filter'])
def test_heads_are_independent_whatever_the_encoder_init(encoder_init):
    """Thesis Alg. A.7: only the encoders are aligned, the dense layers are initialised randomly."""
    heads = tiny(num_members=3, encoder_init=encoder_init).heads
    for m in (1, 2):
        assert not torch.equal(heads.weight[m], heads.weight[0])  # (the WRN initialises biases to 0)


def test_tied_encoder_is_one_weight_for_every_input():
    model = tiny(tied_encoder=True).eval()
    assert model.encoders.weight.shape == (16, 3, 3, 3)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in tiny().parameters()) - 16 * 27
    x = torch.randn(2, 3, 16, 16)
    single = F.conv2d(x, model.encoders.weight, None, 1, 1)
    torch.testing.assert_close(encoder_output(model, x), 2 * single)  # Σ_m c(x) = M c(x)
    xs = torch.randn(2, 2, 3, 16, 16)
    masks = torch.zeros(2, 2, 16, 16)
    masks[:, 0, :, :8] = 1
    masks[:, 1] = 1 - masks[:, 0]
    convs = [F.conv2d(xs[:, m], model.encoders.weight, None, 1, 1) for m in range(2)]
    expected = 2 * (masks[:, :1] * convs[0] + masks[:, 1:] * convs[1])
    torch.testing.assert_close(encoder_output(model, xs, MixPlan.from_masks(masks)), expected)
    with pytest.raises(ValueError, match='tied'):
        tiny(tied_encoder=True, encoder_init='same')


def test_shared_head_fills_every_member_slot_and_trains_on_interpolated_labels():
    model = tiny(tied_heads=True)
    assert model.heads.weight.shape == (1, 5, 64) and model.loss_cfg == dict(root=1.0)
    xs = torch.randn(3, 2, 3, 16, 16)
    plan = Mixer(num_members=2, **model.mix_cfg, generator=torch.Generator().manual_seed(0))(3, model.mix_grid(16))
    logits = model(xs, plan)
    torch.testing.assert_close(logits[:, 0], logits[:, 1], rtol=0, atol=0)
    targets = torch.tensor([[0, 1], [2, 2], [4, 3]])
    # root 1: Σ_m 2 κ_m CE(y_m, ŷ) = 2 CE(Σ_m κ_m y_m, ŷ), the cross-entropy on interpolated labels
    soft = (plan.kappas[:, :, None] * F.one_hot(targets, 5).float()).sum(dim=1)
    interpolated = -(soft * F.log_softmax(logits[:, 0], dim=-1)).sum(dim=-1).mean() * 2
    torch.testing.assert_close(MimoLoss(**model.loss_cfg)(logits, targets, plan.kappas), interpolated)
    with pytest.raises(ValueError, match='head_assignment'):
        tiny(tied_heads=True, head_assignment='predominant')


def test_predominant_head_assignment():
    """Table 3.4 ⊗: head 0 reads the input with the larger κ, head 1 the other one."""
    model = tiny(tied_encoder=True, head_assignment='predominant').eval()
    xs = torch.randn(2, 2, 3, 16, 16)
    masks = torch.zeros(2, 2, 16, 16)
    masks[0, 0, :, :12] = 1  # sample 0: input 0 predominant (κ = 0.75)
    masks[1, 0, :, :4] = 1  # sample 1: input 1 predominant
    masks[:, 1] = 1 - masks[:, 0]
    plan = MixPlan.from_masks(masks)
    assert model.head_index(plan).tolist() == [[0, 1], [1, 0]]
    with torch.no_grad():
        logits = model(xs, plan)
        features = model._run(model._packed(xs), model._mixed_call(plan, xs), model.backbone.forward_features)
        every_head = model.heads(model.backbone.forward_head(features, pre_logits=True))  # (B, heads, K)
    torch.testing.assert_close(logits[0], every_head[0])
    torch.testing.assert_close(logits[1], every_head[1].flip(0))
    with pytest.raises(ValueError, match='head_assignment'):
        tiny(head_assignment='random')


def test_forward_features_multi_is_the_sum_of_the_encodings():
    model = tiny().eval()
    xs = torch.randn(2, 2, 3, 16, 16)
    c0, c1 = member_convs(model, [xs[:, 0], xs[:, 1]])
    captured = []
    handle = model.encoders.register_forward_hook(lambda mod, inp, out: captured.append(out))
    with torch.no_grad():
        model.forward_features_multi(xs)
    handle.remove()
    torch.testing.assert_close(captured[0], c0 + c1)


def test_tied_encoder_makes_the_inputs_exchangeable():
    """Table 3.4 ⊖: with one encoder, swapping the inputs and their masks leaves every head's output unchanged, so
    which input head m answers for is only the plan's random role; head_assignment='input' is the random association."""
    model = tiny(tied_encoder=True).eval()
    xs = torch.randn(2, 2, 3, 16, 16)
    masks = torch.zeros(2, 2, 16, 16)
    masks[:, 0, 4:12, 2:9] = 1
    masks[:, 1] = 1 - masks[:, 0]
    with torch.no_grad():
        out = model(xs, MixPlan.from_masks(masks))
        swapped = model(xs.flip(1), MixPlan.from_masks(masks.flip(1)))
    torch.testing.assert_close(out, swapped)


@pytest.mark.parametrize('kwargs', [dict(), dict(tied_encoder=True), dict(num_members=3)],
                         ids=['independent', 'tied', 'three-members'])
def test_grouped_conv_encoders_equal_member_convs(kwargs):
    """The GPU path (one grouped conv for the M encoders) computes what the CPU path (M convs) does: forward and the
    gradients of every parameter."""
    model = timm.create_model('cut_mixmo', backbone='wrn28_2', depth=10, widen_factor=1, num_classes=3, **kwargs)
    num_members = model.num_members
    xs = torch.randn(4, num_members, 3, 8, 8)
    plan = Mixer(num_members, generator=torch.Generator().manual_seed(0), prob=1.0)(4, model.mix_grid(8))
    outputs, grads = [], []
    for grouped in (False, True):
        model.encoders.grouped_conv = grouped
        model.zero_grad()
        out = model(xs, plan)
        out.square().sum().backward()
        outputs.append(out)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert torch.allclose(outputs[0], outputs[1], atol=1e-5)
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-4), name
    packed = xs.flatten(1, 2)
    model.encoders.grouped_conv = True
    grouped = model.encoders.forward_members(packed)
    model.encoders.grouped_conv = False
    assert torch.allclose(grouped, model.encoders.forward_members(packed), atol=1e-5)
