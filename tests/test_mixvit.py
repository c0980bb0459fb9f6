"""MixViT (SPEC §1.10): every registered name, source attribution arithmetic, mixing, inference modes, pretrained."""
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
    else:  # timm ConViT: embed_dim is per head
        sizes.update(depth=4, local_up_to_layer=2, embed_dim=8, num_heads=4)
    return timm.create_model('mixvit', backbone=backbone, num_classes=5, **{**sizes, **kwargs}).eval()


BACKBONES = ['cait_xxs24_224', 'convit_tiny', 'convit_gpsa5_ca2']


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
                'mixvit_cait_s24', 'mixvit_cait_m24', 'mixvit_convit_gpsa5_ca2'}
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
        assert features.shape == (2, m, 1 + model.patch_embed.num_patches, model.num_features)
        assert model.member_pre_logits(features).shape == (2, m, model.num_features)
        torch.testing.assert_close(model.forward_head(features, pre_logits=True),
                                   model.member_pre_logits(features).mean(dim=1))  # mean of the member tokens
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
            torch.testing.assert_close(model(x), features[:, :, 0].mean(dim=1))
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
    # t + M_0 (t W_0^T + b_0) + M_1 (t W_1^T + b_1), SPEC §1.10 eq. 4.5
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
        tokens = (token_masks.unsqueeze(-1) * embedded).sum(dim=1)  # SPEC §1.10 step 2
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


def test_sum_alternating_single_inference():
    model = _tiny('convit_gpsa5_ca2', source='encoding')
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
    with pytest.raises(ValueError, match='neither a CaiT-like nor a ConViT-like'):
        MixViT(backbone='vit_tiny_patch16_224', img_size=32, depth=1)
