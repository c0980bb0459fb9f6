"""MixViT: every registered name, source attribution arithmetic, mixing, inference modes, pretrained, ViT backbones."""
import json
from typing import Dict, List

import pytest
import timm
import torch
import torch.nn.functional as F
from model_checks import parameters_without_gradient
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed

import timm_mimo  # noqa: F401  (registration)
from timm_mimo.loss import MimoLoss
from timm_mimo.mixing import Mixer, MixPlan
from timm_mimo.models.mixvit import MixViT, SourceAttribution

NAMES = timm.list_models(module='mixvit')
IMG = 32


def _tiny_kwargs(name: str) -> Dict:
    """Every registered name at 32 px: patch 8 for the papers' ConViT (4x4 tokens), patch 16 for the others (2x2)."""
    return dict(img_size=IMG, patch_size=8 if 'gpsa' in name or name == 'mixvit' else 16)


@pytest.fixture(scope='module')
def models() -> Dict[str, MixViT]:
    torch.manual_seed(0)
    return {name: timm.create_model(name, **_tiny_kwargs(name)) for name in NAMES}


def _tiny(backbone: str = 'cait_xxs24_224', **kwargs) -> MixViT:
    """A small MixViT of a given backbone family (2 shared + 2 member blocks, d = 32, 16 px, 4 tokens)."""
    sizes = dict(img_size=16, patch_size=8)
    if backbone.startswith('cait'):
        sizes.update(depth=2, embed_dim=32, num_heads=2)
    elif backbone.startswith('convit_gpsa5'):
        sizes.update(depth=2, embed_dim=32, num_heads=4)
    elif backbone.startswith(('deit', 'vit')):  # VisionTransformer: 2 shared + the last 2 (member_blocks) blocks
        sizes.update(depth=4, embed_dim=32, num_heads=2)
    else:  # timm ConViT: embed_dim is per head
        sizes.update(depth=4, local_up_to_layer=2, embed_dim=8, num_heads=4)
    return timm.create_model('mixvit', backbone=backbone, num_classes=5, **{**sizes, **kwargs}).eval()


BACKBONES = ['cait_xxs24_224', 'convit_tiny', 'convit_gpsa5_ca2', 'deit_tiny_patch16_224']


def _member_part(model: MixViT) -> List[torch.nn.Module]:
    if model.blocks_token_only is not None:
        return list(model.blocks_token_only)
    return list(model.blocks[model.num_shared_blocks:])


def _plan_one_member(batch: int, num_members: int, member: int, grid) -> MixPlan:
    masks = torch.zeros(batch, num_members, *grid)
    masks[:, member] = 1
    return MixPlan.from_masks(masks)


# ---- every registered name -------------------------------------------------------------------------------------------
def test_registered_names():
    expected = {'mixvit', 'mixvit_convit_tiny', 'mixvit_convit_small', 'mixvit_cait_xxs24', 'mixvit_cait_xs24',
                'mixvit_cait_s24', 'mixvit_cait_m24', 'mixvit_convit_gpsa5_ca2', 'mixvit_deit_tiny_patch16_224',
                'mixvit_deit_small_patch16_224', 'mixvit_deit3_small_patch16_224', 'mixvit_vit_base_patch16_224',
                'mixvit_vit_medium_patch16_reg4_gap_256'}
    assert expected <= set(NAMES)
    for name in NAMES:
        cfg = timm.models.get_pretrained_cfg(name)
        assert cfg.first_conv == 'patch_embed.proj' and cfg.classifier == 'head' and cfg.license


@pytest.mark.parametrize('name', NAMES)
def test_contract_forward_shapes(models, name):
    model = models[name].eval()
    k, m = model.num_classes, model.num_members
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        members = model.forward_members(x)
        out = model(x)
        assert members.shape == (2, m, k) and out.shape == (2, k)
        torch.testing.assert_close(out, members.mean(dim=1), rtol=0, atol=0)
        features = model.forward_features(x)
        assert features.shape == (2, m, model.num_prefix_tokens + model.patch_embed.num_patches, model.num_features)
        assert model.member_pre_logits(features).shape == (2, m, model.num_features)
        torch.testing.assert_close(model.forward_head(features, pre_logits=True),
                                   model.member_pre_logits(features).mean(dim=1))  # mean of the member features
        torch.testing.assert_close(model.forward_head(features), out)
        mixed = model(torch.randn(2, m, 3, IMG, IMG), _plan_one_member(2, m, 1, model.mix_grid((IMG, IMG))))
        assert mixed.shape == (2, m, k)


@pytest.mark.parametrize('name', NAMES)
def test_backward_every_parameter(models, name):
    """A plain train-mode call runs parallel inference: every parameter, every member's source vector included,
    gets a gradient."""
    model = models[name].train()
    model.zero_grad()
    model(torch.randn(2, 3, IMG, IMG)).square().sum().backward()
    missing = parameters_without_gradient(model)
    assert missing == []
    model.eval()


@pytest.mark.parametrize('name', NAMES)
def test_reset_classifier(models, name):
    model = models[name].eval()
    num_classes = model.num_classes
    x = torch.randn(2, 3, IMG, IMG)
    try:
        model.reset_classifier(7)
        assert model(x).shape == (2, 7) and model.forward_members(x).shape == (2, model.num_members, 7)
        assert model.get_classifier() is model.head and model.head.weight.shape[:2] == (model.num_members, 7)
        model.reset_classifier(0)
        with torch.no_grad():
            features = model.forward_features(x)
            assert features.shape[-1] == model.num_features
            torch.testing.assert_close(model(x), model._pooled(features).mean(dim=1))
    finally:
        model.reset_classifier(num_classes)


# ---- source attribution arithmetic -----------------------------------------------------------------------------------
def test_source_embedding_arithmetic():
    source = SourceAttribution(dim=2, num_members=2, encoding=False)
    with torch.no_grad():
        source.bias.copy_(torch.tensor([[1., 2.], [10., 20.]]))
    tokens = torch.tensor([[[0., 0.], [1., 1.], [2., -2.]]])
    masks = torch.tensor([[[1., 0., 0.5], [0., 1., 0.5]]])  # token 0 <- member 0, token 1 <- member 1, token 2 half
    expected = torch.tensor([[[1., 2.], [11., 21.], [7.5, 9.]]])
    torch.testing.assert_close(source(tokens, masks), expected, rtol=0, atol=0)
    tiled = source.tiled(tokens)
    assert tiled.shape == (1, 2, 3, 2)
    torch.testing.assert_close(tiled[0, 0], tokens[0] + torch.tensor([1., 2.]), rtol=0, atol=0)
    torch.testing.assert_close(tiled[0, 1], tokens[0] + torch.tensor([10., 20.]), rtol=0, atol=0)


def test_source_encoding_arithmetic():
    source = SourceAttribution(dim=2, num_members=2, encoding=True)
    with torch.no_grad():
        source.weight.copy_(torch.tensor([[[1., 0.], [0., 2.]], [[0., 1.], [1., 0.]]]))  # W_0 = diag(1, 2), W_1 swap
        source.bias.copy_(torch.tensor([[1., 1.], [-1., 0.]]))
    tokens = torch.tensor([[[1., 2.], [3., 4.]]])
    masks = torch.tensor([[[1., 0.], [0., 1.]]])
    # t + M_0 (t W_0^T + b_0) + M_1 (t W_1^T + b_1), thesis eq. 4.5
    expected = torch.tensor([[[1. + 1. + 1., 2. + 4. + 1.], [3. + 4. - 1., 4. + 3. + 0.]]])
    torch.testing.assert_close(source(tokens, masks), expected, rtol=0, atol=0)
    tiled = source.tiled(tokens)
    for member in range(2):
        one_hot = torch.zeros(1, 2, 2)
        one_hot[:, member] = 1
        torch.testing.assert_close(tiled[:, member], source(tokens, one_hot), rtol=0, atol=0)
        torch.testing.assert_close(source.per_member(tokens.unsqueeze(1).expand(-1, 2, -1, -1))[:, member],
                                   tiled[:, member], rtol=0, atol=0)


def test_source_init_options():
    assert torch.count_nonzero(SourceAttribution(8, 2, init='zeros').bias) == 0
    trunc = SourceAttribution(64, 2)
    assert torch.count_nonzero(trunc.bias) == 128 and 0.01 < trunc.bias.std() < 0.03  # timm's trunc_normal_(std=.02)
    encoder = SourceAttribution(64, 2, encoding=True)
    assert torch.count_nonzero(encoder.bias) == 0 and 0.01 < encoder.weight.std() < 0.03
    with pytest.raises(ValueError, match='source_init'):
        SourceAttribution(8, 2, init='ones')


# ---- work per block ----------------------------------------------------------------------------------------------
def _count_batches(model: MixViT, fn) -> Dict[str, List[int]]:
    seen = {'shared': [], 'member': []}
    handles = []
    for blk in model.blocks[:model.num_shared_blocks]:
        handles.append(blk.register_forward_hook(lambda mod, inp, out: seen['shared'].append(inp[0].shape[0])))
    for blk in _member_part(model):
        handles.append(blk.register_forward_hook(lambda mod, inp, out: seen['member'].append(inp[0].shape[0])))
    try:
        with torch.no_grad():
            fn()
    finally:
        for h in handles:
            h.remove()
    return seen


@pytest.mark.parametrize('backbone', BACKBONES)
def test_work_per_block(backbone):
    model = _tiny(backbone, num_members=3)
    batch, m = 2, 3
    x = torch.randn(batch, 3, 16, 16)
    seen = _count_batches(model, lambda: model(x))
    assert seen == {'shared': [batch] * model.num_shared_blocks, 'member': [m * batch] * 2}
    xs = torch.randn(batch, m, 3, 16, 16)
    seen = _count_batches(model, lambda: model(xs, _plan_one_member(batch, m, 0, (2, 2))))
    assert seen == {'shared': [batch] * model.num_shared_blocks, 'member': [batch] * 2}  # training: ×1
    for mode in ('sum', 'alternating', 'single'):
        model.inference = mode
        assert _count_batches(model, lambda: model(x))['member'] == [batch] * 2
    early = _tiny(backbone, num_members=3, source='early_embedding')
    assert _count_batches(early, lambda: early(x)) == {'shared': [m * batch] * early.num_shared_blocks,
                                                       'member': [m * batch] * 2}  # M full passes
    none = _tiny(backbone, num_members=3, source='none')
    assert _count_batches(none, lambda: none(x))['member'] == [batch] * 2  # identical sets: run once


# ---- mixing --------------------------------------------------------------------------------------------------------
def test_binary_plan_mixes_the_intended_patches():
    model = _tiny('convit_gpsa5_ca2')
    xs = torch.randn(1, 2, 3, 16, 16)
    masks = torch.tensor([[[[1., 0.], [0., 1.]], [[0., 1.], [1., 0.]]]])  # input 0: patches (0,0), (1,1)
    seen = []
    handle = model.patch_embed.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].clone()))
    with torch.no_grad():
        model(xs, MixPlan.from_masks(masks))
    handle.remove()
    mixed = seen[0][0]
    expected = xs[0, 1].clone()
    expected[:, :8, :8] = xs[0, 0, :, :8, :8]
    expected[:, 8:, 8:] = xs[0, 0, :, 8:, 8:]
    assert torch.equal(mixed, expected)


@pytest.mark.parametrize('source', ['embedding', 'encoding', 'early_encoding', 'none'])
def test_training_forward_by_hand(source):
    """Alg. A.8 written out with the backbone's modules, on a non-binary plan (token-level mixing of e(x_m))."""
    torch.manual_seed(2)
    model = _tiny('cait_xxs24_224', source=source)
    xs = torch.randn(2, 2, 3, 16, 16)
    masks = torch.rand(2, 1, 2, 2)
    masks = torch.cat((masks, 1 - masks), dim=1)
    plan = MixPlan.from_masks(masks)
    token_masks = masks.flatten(2)
    with torch.no_grad():
        embedded = torch.stack([model.patch_embed(xs[:, i]) for i in range(2)], dim=1)  # (B, M, N, D)
        tokens = (token_masks.unsqueeze(-1) * embedded).sum(dim=1)  # thesis Alg. A.8, mixing step
        if source == 'early_encoding':
            tokens = model.source_attribution(tokens, token_masks)
        tokens = model.blocks(tokens + model.pos_embed)
        if source in ('embedding', 'encoding'):
            tokens = model.source_attribution(tokens, token_masks)
        cls_token = model.cls_token.expand(2, -1, -1)
        for blk in model.blocks_token_only:
            cls_token = blk(tokens, cls_token)
        cls_token = model.norm(cls_token[:, 0])
        expected = torch.einsum('bd,mkd->bmk', cls_token, model.head.weight) + model.head.bias
        torch.testing.assert_close(model(xs, plan), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('backbone', BACKBONES)
@pytest.mark.parametrize('source', ['embedding', 'encoding', 'early_embedding'])
def test_parallel_inference_is_training_with_one_source(backbone, source):
    """Member m of parallel inference (Alg. A.9) = training (Alg. A.8) on the image with every token from input m."""
    model = _tiny(backbone, source=source)
    x = torch.randn(2, 3, 16, 16)
    xs = x.unsqueeze(1).expand(-1, 2, -1, -1, -1)
    with torch.no_grad():
        members = model.forward_members(x)
        for m in range(2):
            torch.testing.assert_close(members[:, m], model(xs, _plan_one_member(2, 2, m, (2, 2)))[:, m])


@pytest.mark.parametrize('backbone', ['convit_gpsa5_ca2', 'deit_tiny_patch16_224'])
def test_sum_alternating_single_inference(backbone):
    model = _tiny(backbone, source='encoding')
    x = torch.randn(2, 3, 16, 16)
    xs = x.unsqueeze(1).expand(-1, 2, -1, -1, -1)
    with torch.no_grad():
        # sum: mean of the attributed versions = the training formula with uniform 1/M masks
        model.inference = 'sum'
        uniform = MixPlan.linear(torch.full((2, 2), 0.5), (2, 2))
        torch.testing.assert_close(model.forward_members(x), model(xs, uniform))
        # alternating: a seeded random token attribution, the same at every call
        model.inference = 'alternating'
        owner = torch.randint(2, (2, 4), generator=torch.Generator().manual_seed(model.alternating_seed))
        plan = MixPlan.from_masks(F.one_hot(owner, 2).permute(0, 2, 1).reshape(2, 2, 2, 2).float())
        torch.testing.assert_close(model.forward_members(x), model(xs, plan))
        torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)
        # single: member 1's attribution and head fill every slot
        model.inference, model.single_member = 'single', 1
        single = model.forward_members(x)
        torch.testing.assert_close(single[:, 0], single[:, 1], rtol=0, atol=0)
        torch.testing.assert_close(single[:, 1], model(xs, _plan_one_member(2, 2, 1, (2, 2)))[:, 1])
    with pytest.raises(ValueError, match='inference must be one of'):
        model.inference = 'separate'


@pytest.mark.parametrize('backbone', ['cait_xxs24_224', 'convit_gpsa5_ca2'])
def test_all_tokens(backbone):
    """All M·N tokens through the backbone. The image fed as both inputs: the shared blocks' output is the plain
    model's, twice (attention over duplicated tokens, GPSA positions tiled over the inputs, is attention over the
    tokens once)."""
    torch.manual_seed(3)
    plain = _tiny(backbone, source='none')
    all_tokens = _tiny(backbone, source='none', mixing='all_tokens')
    all_tokens.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        features = all_tokens.forward_features(x)
        assert features.shape == (2, 1, 1 + 2 * 4, 32)
        expected = plain.forward_features(x)[:, 0, 1:].repeat(1, 2, 1)
        torch.testing.assert_close(features[:, 0, 1:], expected, rtol=1e-4, atol=1e-5)
    model = _tiny(backbone, source='embedding', mixing='all_tokens').train()
    assert model.mix_cfg['kind'] == 'linear' and model.mix_cfg['alpha'] is None
    out = model(torch.randn(2, 2, 3, 16, 16), MixPlan.linear(torch.full((2, 2), 0.5), (2, 2)))
    out.sum().backward()
    assert model.source_attribution.bias.grad.abs().min() > 0  # both members' vectors used on their tokens
    with pytest.raises(ValueError, match="all_tokens"):
        model.inference = 'sum'


def test_mixer_and_loss_from_model_cfg():
    model = _tiny('cait_xxs24_224', num_members=3).train()
    assert model.mix_cfg == dict(kind='cutmix_majority', alpha=0.5, prob=1.0, prob_decay=False,
                                 single_source_end=True, patch_size=(8, 8), outside_swap=True, pair_only=True)
    assert model.loss_cfg == dict(root=1.0, weight_sum=1.0)
    mixer = Mixer(num_members=3, generator=torch.Generator().manual_seed(0), **model.mix_cfg)
    plan = mixer(4, model.mix_grid((16, 16)), progress=0.5)
    logits = model(torch.randn(4, 3, 3, 16, 16), plan)
    loss = MimoLoss(**model.loss_cfg)(logits, torch.randint(5, (4, 3)), plan.kappas)
    loss.backward()
    assert torch.isfinite(loss) and model.patch_embed.proj.weight.grad is not None


# ---- pretrained ----------------------------------------------------------------------------------------------------
PRETRAINED = [
    ('mixvit_cait_xxs24', 'cait_xxs24_224', dict(depth=2)),
    ('mixvit_convit_tiny', 'convit_tiny', dict(depth=3, local_up_to_layer=2)),
]


@pytest.mark.parametrize('name,backbone,kwargs', PRETRAINED)
@pytest.mark.parametrize('source', ['embedding', 'encoding'])
def test_pretrained_reproduces_backbone_logits(tmp_path, name, backbone, kwargs, source):
    torch.manual_seed(4)
    net = timm.create_model(backbone, img_size=32, **kwargs).eval()
    path = tmp_path / 'backbone.safetensors'
    save_file(net.state_dict(), str(path))
    model = timm.create_model(name, pretrained=True, source=source, img_size=32, num_members=3,
                              pretrained_cfg_overlay=dict(file=str(path)), **kwargs).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = net(x)
        members = model.forward_members(x)
        for m in range(3):
            torch.testing.assert_close(members[:, m], expected, rtol=1e-5, atol=1e-5)
    assert all(torch.count_nonzero(p) == 0 for p in model.source_attribution.parameters())


def test_pretrained_generic_entry_and_pos_embed_resampling(tmp_path):
    torch.manual_seed(5)
    net = timm.create_model('convit_gpsa5_ca2', img_size=16, patch_size=8, depth=1).eval()
    path = tmp_path / 'convit.safetensors'
    save_file(net.state_dict(), str(path))
    model = timm.create_model('mixvit', backbone='convit_gpsa5_ca2', pretrained=True, img_size=32, patch_size=8,
                              depth=1, pretrained_cfg_overlay=dict(file=str(path)))
    assert model.pos_embed.shape == (1, 16, 384)
    expected = resample_abs_pos_embed(net.pos_embed.detach(), new_size=(4, 4), num_prefix_tokens=0)
    torch.testing.assert_close(model.pos_embed.detach(), expected)
    torch.testing.assert_close(model.head.weight[1], net.head.weight)
    torch.testing.assert_close(model.blocks_token_only[1].gamma_2, net.blocks_token_only[1].gamma_2)


def test_offline_hub_failure_says_how_to_load_a_file(monkeypatch):
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
    with pytest.raises(RuntimeError, match='pretrained_cfg_overlay=dict\\(file='):
        timm.create_model('mixvit_cait_xxs24', pretrained=True, img_size=32, depth=1)


# ---- bad input -----------------------------------------------------------------------------------------------------
def test_bad_input_is_refused():
    model = _tiny('cait_xxs24_224')
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(ValueError, match=r'\(B, C, H, W\)'):
        model(x[0])
    with pytest.raises(ValueError, match=r'\(C, H, W\) = \(3, 16, 16\)'):
        model(torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match=r'\(B, M=2, C, H, W\)'):
        model(torch.randn(2, 3, 3, 16, 16), _plan_one_member(2, 3, 0, (2, 2)))
    with pytest.raises(ValueError, match=r'\(B, M, H, W\) = \(2, 2, 2, 2\)'):
        model(torch.randn(2, 2, 3, 16, 16), _plan_one_member(4, 2, 0, (2, 2)))  # plan for another batch size
    with pytest.raises(ValueError, match=r'\(B, M, H, W\) = \(2, 2, 2, 2\)'):
        model(torch.randn(2, 2, 3, 16, 16), _plan_one_member(2, 2, 0, (4, 4)))  # plan for another token grid
    with pytest.raises(ValueError, match='sum to 1'):
        model(torch.randn(2, 2, 3, 16, 16), MixPlan.from_masks(torch.ones(2, 2, 2, 2)))
    with pytest.raises(ValueError, match='source must be one of'):
        _tiny('cait_xxs24_224', source='late')
    with pytest.raises(ValueError, match="backbone 'vit_relpos_small_patch16_224' is not supported"):
        MixViT(backbone='vit_relpos_small_patch16_224', img_size=32, depth=1)
    with pytest.raises(ValueError, match="backbone 'wrn28_2' is not supported"):  # refused before building it
        timm.create_model('mixvit_convit_gpsa5_ca2', backbone='wrn28_2')


# ---- timm VisionTransformer backbones ------------------------------------------------------------------------------
VIT_VARIANTS = {  # backbone, kwargs: every way a VisionTransformer arranges its prefix tokens, positions and pooling
    'deit': ('deit_tiny_patch16_224', {}),
    'deit_distilled': ('deit_tiny_distilled_patch16_224', {}),
    'deit3': ('deit3_small_patch16_224', {}),  # positions on patch tokens only, LayerScale
    'reg_gap': ('vit_medium_patch16_reg4_gap_256', {}),  # 4 registers, no class token, avg pool, fc_norm
    'reg_cls': ('vit_base_patch16_224', dict(reg_tokens=2)),  # class token + 2 registers, positions cover the cls
    'map': ('vit_base_patch16_224', dict(global_pool='map')),  # attention pooling
    'no_prefix': ('vit_base_patch16_224', dict(class_token=False, global_pool='avg')),
    'pre_norm_no_pos': ('vit_base_patch16_224', dict(pre_norm=True, pos_embed='none')),
}
_VIT_SIZE = dict(img_size=32, depth=3, embed_dim=32, num_heads=2)


def _vit_backbone_and_file(tmp_path, backbone: str, kwargs: Dict, **size) -> str:
    net = timm.create_model(backbone, num_classes=5, **{**_VIT_SIZE, **size, **kwargs}).eval()
    with torch.no_grad():  # LayerScale / zero-initialised heads would hide a misplaced term
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = tmp_path / 'backbone.safetensors'
    save_file(net.state_dict(), str(path))
    return net, str(path)


@pytest.mark.parametrize('variant', list(VIT_VARIANTS))
@pytest.mark.parametrize('source', ['embedding', 'encoding'])
def test_vit_pretrained_reproduces_backbone_logits(tmp_path, variant, source):
    """A file-loaded ViT / DeiT checkpoint: at init (source parameters zero) every member computes the backbone's
    logits, in every inference mode."""
    torch.manual_seed(6)
    backbone, kwargs = VIT_VARIANTS[variant]
    net, path = _vit_backbone_and_file(tmp_path, backbone, kwargs)
    name = f'mixvit_{backbone}'
    entry = dict(backbone=backbone) if name not in NAMES else {}
    model = timm.create_model(entry and 'mixvit' or name, pretrained=True, source=source, num_members=3,
                              num_classes=5, pretrained_cfg_overlay=dict(file=path, num_classes=5), **entry,
                              **{**_VIT_SIZE, **kwargs}).eval()
    assert all(torch.count_nonzero(p) == 0 for p in model.source_attribution.parameters())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = net(x)
        for mode in ('parallel', 'sum', 'alternating', 'single'):
            model.inference = mode
            members = model.forward_members(x)
            for m in range(3):
                torch.testing.assert_close(members[:, m], expected, rtol=1e-5, atol=1e-5)


def test_named_vit_entries_load_backbone_checkpoints(tmp_path):
    """The named entries' tags map the backbone's timm checkpoints; their files load into the MixViT (positional
    embedding with its class-token entry resampled to another token grid, head copied into every member)."""
    cfg = timm.models.get_pretrained_cfg('mixvit_deit_small_patch16_224')
    assert cfg.tag == 'backbone_fb_in1k' and cfg.hf_hub_id == 'timm/deit_small_patch16_224.fb_in1k'
    cfg = timm.models.get_pretrained_cfg('mixvit_vit_base_patch16_224')
    assert cfg.hf_hub_id == 'timm/vit_base_patch16_224.augreg2_in21k_ft_in1k' and cfg.mean == (0.5, 0.5, 0.5)
    tags = timm.list_pretrained('mixvit_vit_base_patch16_224.*')
    assert all(t.split('.')[1].startswith('backbone_') for t in tags) and len(tags) == 5  # the 1000-class ones
    torch.manual_seed(7)
    net, path = _vit_backbone_and_file(tmp_path, 'deit_tiny_patch16_224', {})
    model = timm.create_model('mixvit_deit_tiny_patch16_224', pretrained=True, num_classes=5,
                              pretrained_cfg_overlay=dict(file=path, num_classes=5), **{**_VIT_SIZE, 'img_size': 48})
    expected = resample_abs_pos_embed(net.pos_embed.detach(), new_size=(3, 3), num_prefix_tokens=1)
    torch.testing.assert_close(model.pos_embed.detach(), expected)
    torch.testing.assert_close(model.head.weight[1], net.head.weight)


def _hooked(module: torch.nn.Module, fn, take) -> torch.Tensor:
    """What ``take(inputs, output)`` reads from ``module``'s first call while ``fn()`` runs (no grad)."""
    seen = []
    handle = module.register_forward_hook(lambda mod, inp, out: seen.append(take(inp, out)))
    try:
        with torch.no_grad():
            fn()
    finally:
        handle.remove()
    return seen[0]


def _member_block_input(model: MixViT, fn) -> torch.Tensor:
    return _hooked(model.blocks[model.num_shared_blocks], fn, lambda inp, out: inp[0])


def _shared_output(model: MixViT, fn) -> torch.Tensor:
    return _hooked(model.blocks[model.num_shared_blocks - 1], fn, lambda inp, out: out)


def test_vit_prefix_tokens_shared_patch_tokens_attributed():
    """Class and register tokens leave the shared blocks unchanged into every member's set; patch token n gets
    s_m of its member: all of member m in parallel inference, the plan's owner in training (hand-built plan)."""
    torch.manual_seed(8)
    model = _tiny('vit_base_patch16_224', reg_tokens=2, num_members=3)  # P = 3 prefix tokens, N = 4 patch tokens
    bias = model.source_attribution.bias.detach()
    x = torch.randn(2, 3, 16, 16)
    shared = _shared_output(model, lambda: model(x))
    sets = _member_block_input(model, lambda: model(x)).unflatten(0, (2, 3))  # (B, M, P + N, D)
    for m in range(3):
        torch.testing.assert_close(sets[:, m, :3], shared[:, :3], rtol=0, atol=0)
        torch.testing.assert_close(sets[:, m, 3:], shared[:, 3:] + bias[m], rtol=0, atol=0)
    owner = torch.tensor([[[0, 2], [1, 1]], [[2, 2], [0, 1]]])  # (B, H, W) token grid
    plan = MixPlan.from_masks(F.one_hot(owner, 3).permute(0, 3, 1, 2).float())
    xs = torch.randn(2, 3, 3, 16, 16)
    shared = _shared_output(model, lambda: model(xs, plan))
    mixed = _member_block_input(model, lambda: model(xs, plan))
    torch.testing.assert_close(mixed[:, :3], shared[:, :3], rtol=0, atol=0)
    torch.testing.assert_close(mixed[:, 3:], shared[:, 3:] + bias[owner.flatten(1)], rtol=0, atol=0)


@pytest.mark.parametrize('source', ['embedding', 'encoding', 'early_encoding', 'none'])
def test_vit_training_forward_by_hand(source):
    """Thesis Alg. A.8 on a DeiT written out with timm's modules: a non-binary plan mixes the embedded patches, the
    class token and positions join, L - n shared blocks, source attribution on the patch tokens (late: eq. 4.5 / 4.6
    written out; early: on the embedded patches), n blocks, norm, every head on the one class token."""
    torch.manual_seed(9)
    model = _tiny('deit_tiny_patch16_224', source=source, depth=5, member_blocks=3)
    assert model.num_shared_blocks == 2 and model.num_member_blocks == 3
    xs = torch.randn(2, 2, 3, 16, 16)
    masks = torch.rand(2, 1, 2, 2)
    masks = torch.cat((masks, 1 - masks), dim=1)
    token_masks = masks.flatten(2)
    source_attribution = model.source_attribution
    with torch.no_grad():
        if source != 'none':
            source_attribution.bias.normal_()  # encoders start with zero biases
        embedded = torch.stack([model.patch_embed(xs[:, i]) for i in range(2)], dim=1)
        tokens = (token_masks.unsqueeze(-1) * embedded).sum(dim=1)
        if source == 'early_encoding':
            tokens = source_attribution(tokens, token_masks)
        tokens = torch.cat((model.cls_token.expand(2, -1, -1), tokens), dim=1) + model.pos_embed
        for blk in model.blocks[:2]:
            tokens = blk(tokens)
        if source in ('embedding', 'encoding'):
            patches = tokens[:, 1:]
            for m in range(2):  # t + Σ_m M_m ⊙ (t W_m^T + b_m), thesis eq. 4.5 (W_m = 0: eq. 4.6)
                weight = source_attribution.weight[m] if source == 'encoding' else torch.zeros(32, 32)
                term = tokens[:, 1:] @ weight.T + source_attribution.bias[m]
                patches = patches + token_masks[:, m, :, None] * term
            tokens = torch.cat((tokens[:, :1], patches), dim=1)
        for blk in model.blocks[2:]:
            tokens = blk(tokens)
        cls_token = model.norm(tokens)[:, 0]
        expected = torch.einsum('bd,mkd->bmk', cls_token, model.head.weight) + model.head.bias
        torch.testing.assert_close(model(xs, MixPlan.from_masks(masks)), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('member_blocks', [1, 3, 4])
def test_vit_member_blocks(member_blocks):
    """``member_blocks = n``: the first L - n blocks see the B images once, the last n the M·B member sets."""
    model = _tiny('deit_tiny_patch16_224', member_blocks=member_blocks, num_members=2)
    assert model.num_shared_blocks == 4 - member_blocks and model.num_member_blocks == member_blocks
    seen = _count_batches(model, lambda: model(torch.randn(3, 3, 16, 16)))
    assert seen == {'shared': [3] * (4 - member_blocks), 'member': [6] * member_blocks}
    assert _tiny('deit_tiny_patch16_224').num_member_blocks == 2  # default: the papers' 2 late blocks


def test_vit_distilled_heads():
    """A distilled DeiT keeps a class-token head and a distillation-token head per member, averaged."""
    torch.manual_seed(10)
    model = _tiny('deit_tiny_distilled_patch16_224')
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        features = model.forward_features(x)
        cls_logits = torch.einsum('bmd,mkd->bmk', features[:, :, 0], model.head.weight) + model.head.bias
        dist_logits = torch.einsum('bmd,mkd->bmk', features[:, :, 1], model.head_dist.weight) + model.head_dist.bias
        expected = (cls_logits + dist_logits) / 2
        torch.testing.assert_close(model.forward_members(x), expected)
        torch.testing.assert_close(model.member_pre_logits(features), (features[:, :, 0] + features[:, :, 1]) / 2)
        torch.testing.assert_close(model.forward_head(features, pre_logits=True),
                                   ((features[:, :, 0] + features[:, :, 1]) / 2).mean(dim=1))
    assert model.get_classifier() == (model.head, model.head_dist)
    model.reset_classifier(7)
    assert model.head.weight.shape == model.head_dist.weight.shape == (2, 7, 32)
    assert timm.models.get_pretrained_cfg('deit_tiny_distilled_patch16_224') is not None


def test_vit_all_tokens():
    """All M·N patch tokens after the prefix tokens. Without a class token (average pooling) the image fed as both
    inputs gives the plain model's patch features, twice."""
    torch.manual_seed(11)
    kwargs = dict(class_token=False, global_pool='avg', source='none')
    plain = _tiny('vit_base_patch16_224', **kwargs)
    all_tokens = _tiny('vit_base_patch16_224', mixing='all_tokens', **kwargs)
    all_tokens.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        features = all_tokens.forward_features(x)
        assert features.shape == (2, 1, 2 * 4, 32)
        torch.testing.assert_close(features[:, 0], plain.forward_features(x)[:, 0].repeat(1, 2, 1), rtol=1e-4,
                                   atol=1e-5)
        torch.testing.assert_close(all_tokens(x), plain(x), rtol=1e-4, atol=1e-5)
    model = _tiny('deit_tiny_patch16_224', mixing='all_tokens', source='encoding').train()
    assert model.forward_features(x).shape == (2, 1, 1 + 2 * 4, 32)
    model(torch.randn(2, 2, 3, 16, 16), MixPlan.linear(torch.full((2, 2), 0.5), (2, 2))).sum().backward()
    assert model.source_attribution.weight.grad.abs().flatten(1).sum(1).min() > 0  # both encoders used


def test_vit_inference_flops_within_bound():
    """Inference FLOPs of the real DeiT-Ti MixViT (224 px, L = 12 blocks, n = 2 per member) against the backbone's:
    source embedding <= (L - n + n·M) / L; source encoding adds its M d x d products per patch token (thesis
    Sec. 4.3.3.2 counts them too), at most M / 12 of a block's 12 d x d products per token: + M / (12 L)."""
    from torch.utils.flop_counter import FlopCounterMode

    def flops(model: torch.nn.Module) -> int:
        with FlopCounterMode(display=False) as counter:
            model(torch.randn(1, 3, 224, 224))
        return counter.get_total_flops()

    backbone = timm.create_model('deit_tiny_patch16_224').eval()
    base = flops(backbone)
    for m in (2, 3):
        bound = (12 - 2 + 2 * m) / 12
        embedding = flops(timm.create_model('mixvit_deit_tiny_patch16_224', num_members=m).eval()) / base
        assert 1.0 < embedding <= bound, (m, embedding, bound)
        encoding = flops(timm.create_model('mixvit_deit_tiny_patch16_224', num_members=m, source='encoding').eval())
        assert embedding < encoding / base <= bound + m / (12 * 12), (m, encoding / base, bound)


def test_vit_bad_settings_are_refused():
    with pytest.raises(ValueError, match='patch_drop_rate > 0 is not supported'):
        _tiny('deit_tiny_patch16_224', patch_drop_rate=0.1)
    with pytest.raises(ValueError, match='dynamic_img_size=True is not supported'):
        _tiny('deit_tiny_patch16_224', dynamic_img_size=True)
    with pytest.raises(ValueError, match='HybridEmbed'):
        MixViT(backbone='vit_tiny_r_s16_p8_224', img_size=32, depth=1)
    with pytest.raises(ValueError, match="global_pool='' is not supported"):
        _tiny('deit_tiny_patch16_224', global_pool='')
    with pytest.raises(ValueError, match='member_blocks=5 exceeds the 4 blocks'):
        _tiny('deit_tiny_patch16_224', member_blocks=5)
    for bad in (0, True, 1.5):
        with pytest.raises(ValueError, match='member_blocks must be a positive int'):
            _tiny('deit_tiny_patch16_224', member_blocks=bad)
    with pytest.raises(ValueError, match="member_blocks=3 does not apply to 'cait_xxs24_224'.*depth_token_only"):
        _tiny('cait_xxs24_224', member_blocks=3)
    assert _tiny('cait_xxs24_224', member_blocks=2).num_member_blocks == 2


def test_factory_device_dtype_reach_every_parameter():
    """timm's ``device=`` / ``dtype=`` factory arguments place MixViT's own parameters (source attribution, member
    heads) with the backbone's; ``reset_classifier`` keeps the model's device, dtype and train / eval mode."""
    model = _tiny('deit_tiny_distilled_patch16_224', source='encoding', dtype=torch.float64)
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    assert model(torch.randn(2, 3, 16, 16, dtype=torch.float64)).dtype == torch.float64
    model.eval().reset_classifier(3)
    assert {p.dtype for p in model.parameters()} == {torch.float64} and not model.head.training
    meta = _tiny('cait_xxs24_224', device='meta')
    assert {p.device.type for p in meta.parameters()} == {'meta'}


def test_vit_save_pretrained_round_trip(tmp_path):
    """member_blocks, the backbone's pooling and the source mode survive timm_mimo.hub.save_pretrained."""
    from timm_mimo import hub
    torch.manual_seed(12)
    model = _tiny('vit_medium_patch16_reg4_gap_256', member_blocks=3, num_members=3, source='encoding')
    with torch.no_grad():
        model.source_attribution.bias.normal_()
    folder = hub.save_pretrained(model, tmp_path / 'export')
    config = json.loads((folder / 'config.json').read_text())
    assert config['architecture'] == 'mixvit' and config['model_args']['backbone'] == 'vit_medium_patch16_reg4_gap_256'
    loaded = hub.load_pretrained(folder).eval()
    assert (loaded.num_member_blocks, loaded.global_pool, loaded.num_prefix_tokens) == (3, 'avg', 4)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded.forward_members(x), model.forward_members(x), rtol=0, atol=0)


def test_vit_mixvit_learns_digits():
    """End to end on real images (sklearn's 8x8 digits at 16 px, patch 4): a small MixViT on a DeiT trained with its
    own Mixer and MimoLoss; both members and their ensemble (parallel inference) learn the held-out split."""
    from sklearn.datasets import load_digits
    torch.manual_seed(0)
    digits = load_digits()
    images = F.interpolate(torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16, size=16) * 2.5 - 0.75
    labels = torch.tensor(digits.target)
    held_out = torch.arange(len(labels)) % 6 == 0
    model = timm.create_model('mixvit', backbone='deit_tiny_patch16_224', img_size=16, patch_size=4, in_chans=1,
                              depth=3, embed_dim=48, num_heads=3, num_classes=10)
    assert (model.num_shared_blocks, model.num_member_blocks) == (1, 2)
    mixer = Mixer(num_members=2, generator=torch.Generator().manual_seed(0), **model.mix_cfg)
    loss_fn = MimoLoss(**model.loss_cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    train_images, train_labels = images[~held_out], labels[~held_out]
    steps = 250
    for step in range(steps):
        idx = torch.randint(len(train_labels), (64, 2))
        plan = mixer(64, model.mix_grid((16, 16)), progress=step / steps)
        loss = loss_fn(model(train_images[idx], plan), train_labels[idx], plan.kappas)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        members = model.forward_members(images[held_out])
    accuracy = (members.argmax(-1) == labels[held_out, None]).float().mean(0)
    ensemble = (members.mean(1).argmax(-1) == labels[held_out]).float().mean()
    assert accuracy.min() > 0.6 and ensemble > 0.6, (accuracy, ensemble)  # chance: 0.1
