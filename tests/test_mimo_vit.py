"""Naive MIMO / MixMo vision transformers (MixViT paper's baselines, thesis Table 4.1): M patch embeddings mixed on
tokens."""
import pytest
import timm
import torch
import torch.nn.functional as F
from model_checks import check_mimo_contract, encoder_output
from safetensors.torch import save_file

from timm_mimo import MixPlan
from timm_mimo.models.mimo_cnn import MemberEncoders
from timm_mimo.models.mimo_vit import VIT_METHODS, MimoViT
from timm_mimo.pretrained import has_pretrained_source

MIMO_VIT_NAMES = timm.list_models(module='mimo_vit')
GENERIC_NAMES = tuple(VIT_METHODS)
# small but structurally complete backbones: timm's ConViT (cls token joins at local_up_to_layer) and the papers' one
SMALL_CONVIT = dict(backbone='convit_tiny', img_size=16, patch_size=4, embed_dim=8, num_heads=4, depth=2,
                    local_up_to_layer=1, num_classes=6)
SMALL_PAPER = dict(img_size=16, embed_dim=48, num_heads=3, depth=2, depth_token_only=1)


def small(method: str = 'mixmo_vit', **kwargs) -> MimoViT:
    torch.manual_seed(0)
    return timm.create_model(method, **dict(SMALL_CONVIT, **kwargs))


def embed(model: MimoViT, x: torch.Tensor, member: int) -> torch.Tensor:
    """``e_m(x)``: member m's patch embedding computed by hand."""
    enc = model.encoders
    return F.conv2d(x, enc.member_weight[member], enc.member_bias[member], enc.stride)


def test_registered_names():
    expected = set(GENERIC_NAMES) | {f'{m}_convit_gpsa5_ca2' for m in GENERIC_NAMES}
    assert set(MIMO_VIT_NAMES) == expected


@pytest.mark.parametrize('name', [n for n in MIMO_VIT_NAMES if n not in GENERIC_NAMES])
def test_full_size_structure(name):
    model = timm.create_model(name)  # (ConVitCA cannot be built on the meta device)
    backbone = timm.create_model('convit_gpsa5_ca2')
    cfg = model.pretrained_cfg
    assert cfg['architecture'] == name and not has_pretrained_source(cfg)  # no published weights
    assert cfg['input_size'] == (3, 32, 32) and cfg['first_conv'] == 'backbone.patch_embed.proj'
    assert model.mix_grid(32) == (8, 8)  # 4x4 patches at 32 px (thesis App. A.1.5)
    proj, head = backbone.patch_embed.proj, backbone.head
    extra = proj.weight.numel() + proj.bias.numel() + head.weight.numel() + head.bias.numel()
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in backbone.parameters()) + extra


@pytest.mark.parametrize('name', MIMO_VIT_NAMES)
def test_model_api(name):
    torch.manual_seed(0)
    model = timm.create_model(name, **(SMALL_CONVIT if name in GENERIC_NAMES else SMALL_PAPER))
    cfg = model.pretrained_cfg
    method = name.split('_convit')[0]
    assert isinstance(model.get_submodule(cfg['first_conv']), MemberEncoders)
    assert model.get_classifier() is model.get_submodule(cfg['classifier'])
    assert model.inference == VIT_METHODS[method]['inference']
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert model.eval().forward_features(x).shape[-1] == model.num_features
    check_mimo_contract(model, x)


def test_method_configs():
    assert small('mimo_vit').mix_cfg == dict(kind='linear', alpha=None)
    # Decision (papers silent): MixMo's defaults carried over to the transformer
    assert small('mixmo_vit').mix_cfg == dict(kind='cutmix', alpha=2.0, prob=0.5, prob_decay=True)
    assert small('mixmo_vit').loss_cfg == dict(root=3.0)
    cutmix_only = small('cutmix_only_mixmo_vit')
    assert cutmix_only.mix_cfg['prob'] == 1.0 and not cutmix_only.mix_cfg['prob_decay']
    assert cutmix_only.inference == 'separate'
    assert small('mixmo_vit', inference='separate').inference == 'separate'
    same = small('mixmo_vit', encoder_init='same').encoders
    assert torch.equal(same.member_weight[0], same.member_weight[1])
    assert torch.equal(same.member_bias[0], same.member_bias[1])
    with pytest.raises(ValueError, match='method'):
        MimoViT('convit_tiny', method='cut_mixmo')


def test_sum_inference_is_one_pass_on_the_summed_embeddings():
    model = small('mimo_vit').eval()
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(encoder_output(model, x), embed(model, x, 0) + embed(model, x, 1))


def test_cut_plan_mixes_tokens_times_m():
    model = small('mixmo_vit', num_members=3).eval()
    xs = torch.randn(2, 3, 3, 16, 16)
    owner = torch.randint(0, 3, (2, 4, 4), generator=torch.Generator().manual_seed(0))
    masks = F.one_hot(owner, 3).permute(0, 3, 1, 2).float()  # each token from exactly one input
    expected = 3 * sum(masks[:, m, None] * embed(model, xs[:, m], m) for m in range(3))
    torch.testing.assert_close(encoder_output(model, xs, MixPlan.from_masks(masks)), expected)
    with pytest.raises(ValueError, match=r'\(2, 3, 4, 4\)'):  # masks must live on the token grid, not on pixels
        model(xs, MixPlan.from_masks(F.interpolate(masks, size=(16, 16))))


@pytest.mark.parametrize('num_members', [2, 3])
def test_separate_inference_runs_member_m_on_its_own_embedding_only(num_members):
    """Member m's logits = the single-input backbone whose patch embedding is M·e_m and whose head is d_m."""
    model = small('cutmix_only_mixmo_vit', num_members=num_members).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        members = model.forward_members(x)
        state = {k.removeprefix('backbone.'): v for k, v in model.state_dict().items()
                 if k != 'backbone.head.temperature'}  # the heads' temperature (1): a plain ConViT has none
        reference = timm.create_model('convit_tiny', **{k: v for k, v in SMALL_CONVIT.items() if k != 'backbone'})
        reference.eval()
        for m in range(num_members):
            state['patch_embed.proj.weight'] = num_members * model.encoders.member_weight[m]
            state['patch_embed.proj.bias'] = num_members * model.encoders.member_bias[m]
            state['head.weight'], state['head.bias'] = model.heads.weight[m], model.heads.bias[m]
            reference.load_state_dict(state)
            torch.testing.assert_close(members[:, m], reference(x))
        # member 0 does not see member 1's embedding at all
        others = model.encoders.weight[model.encoders.out_channels:]
        others.add_(torch.randn_like(others))
        after = model.forward_members(x)
    torch.testing.assert_close(after[:, 0], members[:, 0], rtol=0, atol=0)
    assert not torch.allclose(after[:, 1], members[:, 1])


@pytest.mark.parametrize('inference', ['sum', 'separate'])
def test_pretrained_backbone_reproduces_its_logits(tmp_path, inference):
    """At init every e_m = e / M: the sum gives e(x); separate gives M · e / M = e(x) to every member."""
    torch.manual_seed(0)
    backbone_kwargs = {k: v for k, v in SMALL_CONVIT.items() if k != 'backbone'}
    backbone = timm.create_model('convit_tiny', **backbone_kwargs).eval()
    path = tmp_path / 'convit.safetensors'
    save_file(backbone.state_dict(), str(path))
    model = timm.create_model('mixmo_vit', pretrained=True, inference=inference, **SMALL_CONVIT,
                              pretrained_cfg_overlay=dict(file=str(path), num_classes=6)).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = backbone(x)
        torch.testing.assert_close(model.forward_members(x), expected.unsqueeze(1).expand(-1, 2, -1))


def test_paper_model_checkpoint_round_trip(tmp_path):
    source = timm.create_model('cutmix_only_mixmo_vit_convit_gpsa5_ca2', **SMALL_PAPER).eval()
    path = tmp_path / 'mimo_vit.safetensors'
    save_file(source.state_dict(), str(path))
    loaded = timm.create_model('cutmix_only_mixmo_vit_convit_gpsa5_ca2', pretrained=True, **SMALL_PAPER,
                               pretrained_cfg_overlay=dict(file=str(path))).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded.forward_members(x), source.forward_members(x))


def test_generic_model_reloads_its_own_checkpoint_through_a_pretrained_cfg(tmp_path):
    source = small('cutmix_only_mixmo_vit').eval()
    path = tmp_path / 'mimo_vit.safetensors'
    save_file(source.state_dict(), str(path))
    loaded = timm.create_model('cutmix_only_mixmo_vit', pretrained=True, **SMALL_CONVIT,
                               pretrained_cfg=dict(source.pretrained_cfg, file=str(path))).eval()
    assert loaded.inference == 'separate'
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded.forward_members(x), source.forward_members(x))
