"""The papers' ConViT (5 GPSA + 2 class-attention blocks, thesis Sec. 4.4) as a single-input timm model."""
import pytest
import timm
import torch
from model_checks import parameters_without_gradient
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed
from timm.models.cait import LayerScaleBlockClassAttn
from timm.models.convit import GPSA

import timm_mimo  # noqa: F401  (registration)
from timm_mimo.models.convit_ca import ConVitCA

NAMES = timm.list_models(module='convit_ca')
PATCH = {'convit_gpsa5_ca2': 4, 'convit_gpsa5_ca2_64': 8, 'convit_gpsa5_ca2_224': 16}


def test_every_name_is_tested():
    assert set(NAMES) == set(PATCH)


@pytest.fixture(scope='module')
def models():
    torch.manual_seed(0)
    return {name: timm.create_model(name) for name in NAMES}


@pytest.mark.parametrize('name', NAMES)
def test_papers_configuration(models, name):
    model = models[name]
    cfg = model.pretrained_cfg
    assert model.patch_embed.patch_size == (PATCH[name],) * 2
    assert tuple(model.patch_embed.img_size) == cfg['input_size'][1:]
    assert model.embed_dim == model.num_features == 384
    assert len(model.blocks) == 5 and all(blk.use_gpsa and blk.attn.num_heads == 12 for blk in model.blocks)
    assert len(model.blocks_token_only) == 2
    assert all(isinstance(blk, LayerScaleBlockClassAttn) for blk in model.blocks_token_only)
    assert model.get_submodule(cfg['first_conv']) is model.patch_embed.proj
    assert model.get_submodule(cfg['classifier']) is model.head
    assert model.head.out_features == cfg['num_classes']
    assert 12e6 < sum(p.numel() for p in model.parameters()) < 13e6  # "12M" (thesis Table 4.5)


@pytest.mark.parametrize('name', NAMES)
def test_forward_backward_every_parameter(models, name):
    model = models[name].train()
    model.zero_grad()
    size = model.pretrained_cfg['input_size']
    out = model(torch.randn(1, *size))
    assert out.shape == (1, model.pretrained_cfg['num_classes'])
    out.square().sum().backward()
    missing = parameters_without_gradient(model)
    assert missing == []


def test_class_token_joins_after_the_gpsa_blocks(models):
    model = models['convit_gpsa5_ca2'].eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = model.patch_embed(x) + model.pos_embed
        for blk in model.blocks:
            tokens = blk(tokens)
        cls_token = model.cls_token.expand(2, -1, -1)
        for blk in model.blocks_token_only:
            cls_token = blk(tokens, cls_token)
        expected = model.head(model.norm(cls_token[:, 0]))
        features = model.forward_features(x)
        assert features.shape == (2, 1 + 64, 384)
        torch.testing.assert_close(features[:, 1:], model.norm(tokens))
        torch.testing.assert_close(model(x), expected)


def test_reset_classifier_and_features():
    model = timm.create_model('convit_gpsa5_ca2', depth=1, img_size=16).eval()
    x = torch.randn(2, 3, 16, 16)
    model.reset_classifier(7)
    assert model(x).shape == (2, 7)
    model.reset_classifier(0)
    features = model.forward_features(x)
    assert features.shape == (2, 1 + 16, model.num_features)
    torch.testing.assert_close(model(x), features[:, 0])
    model.reset_classifier(0, global_pool='avg')
    torch.testing.assert_close(model(x), features[:, 1:].mean(dim=1))


def test_size_overrides_and_square_grid():
    model = timm.create_model('convit_gpsa5_ca2', img_size=64, patch_size=8, num_classes=10, depth=1)
    assert model.patch_embed.grid_size == (8, 8) and model.pos_embed.shape == (1, 64, 384)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    assert isinstance(model.blocks[0].attn, GPSA)
    with pytest.raises(ValueError, match='square token grid'):
        timm.create_model('convit_gpsa5_ca2', img_size=(32, 16), depth=1)
    with pytest.raises(ValueError, match="global_pool must be"):
        ConVitCA(global_pool='max', depth=1)


def test_pretrained_file_resamples_pos_embed(tmp_path):
    torch.manual_seed(1)
    source = timm.create_model('convit_gpsa5_ca2', depth=1, img_size=16)
    path = tmp_path / 'small.safetensors'
    save_file(source.state_dict(), str(path))
    model = timm.create_model('convit_gpsa5_ca2', pretrained=True, depth=1, img_size=32,
                              pretrained_cfg_overlay=dict(file=str(path)))
    expected = resample_abs_pos_embed(source.pos_embed.detach(), new_size=(8, 8), num_prefix_tokens=0)
    assert model.pos_embed.shape == (1, 64, 384)
    torch.testing.assert_close(model.pos_embed.detach(), expected)
    torch.testing.assert_close(model.head.weight, source.head.weight)
    same = timm.create_model('convit_gpsa5_ca2', pretrained=True, depth=1, img_size=16,
                             pretrained_cfg_overlay=dict(file=str(path))).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(same(x), source.eval()(x))
