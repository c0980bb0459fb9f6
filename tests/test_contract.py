"""The timm side of the MIMO model contract: member counts, the single-input training warning, ``pre_logits`` for M
members, ``num_classes=0`` / ``reset_classifier(0, '')``, and the supported export path (trace / export)."""
import warnings

import pytest
import timm
import torch
from model_checks import timm_mimo_module, timm_mimo_names

from timm_mimo.models._contract import check_num_members

TINY_CNN = dict(backbone='wrn28_2', depth=10, widen_factor=1, num_classes=5)
TINY_MIXVIT = dict(embed_dim=48, num_heads=3, depth=2, depth_token_only=1, num_classes=5)


@pytest.mark.parametrize('bad', [True, False, 2.5, 0, -1, '2'])  # (None is timm's "not set": the default)
@pytest.mark.parametrize('name, kwargs', [('cut_mixmo', TINY_CNN), ('mixvit_convit_gpsa5_ca2', TINY_MIXVIT),
                                          ('mixmo_vit_convit_gpsa5_ca2', TINY_MIXVIT)])
def test_bad_member_count_is_one_value_error(name, kwargs, bad):
    with pytest.raises(ValueError, match=r'num_members \(M\) must be a positive integer, got ') as info:
        timm.create_model(name, num_members=bad, **kwargs)
    assert repr(bad) in str(info.value) and len(str(info.value).splitlines()) == 1


def test_member_count_accepts_integral_types():
    assert check_num_members(3) == 3 and check_num_members(torch.tensor(2).item()) == 2
    import numpy as np
    assert check_num_members(np.int64(4)) == 4


@pytest.mark.parametrize('name, kwargs', [('cut_mixmo_wrn28_2', dict(depth=10, widen_factor=1)),
                                          ('mixvit_convit_gpsa5_ca2', TINY_MIXVIT)])
def test_plain_batch_in_train_mode_warns_once_per_model(name, kwargs):
    model = timm.create_model(name, **kwargs).train()
    x = torch.randn(2, 3, 32, 32)
    with pytest.warns(UserWarning, match='not MIMO training') as record:
        model(x)
    message = str(record[0].message)
    assert f'timm-mimo-train --model {name}' in message and 'model(xs, plan)' in message
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        model(x)  # the same instance: silent
        model.eval()(x)  # eval mode: never warns
    with pytest.warns(UserWarning, match='not MIMO training'):
        timm.create_model(name, **kwargs).train()(x)  # another instance says it again


def test_cnn_pre_logits_are_the_mean_of_member_features():
    torch.manual_seed(0)
    model = timm.create_model('cut_mixmo', num_members=3, **TINY_CNN).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        for inference in ('sum', 'separate'):
            model.inference = inference
            pre = model.forward_head(model.forward_features(x), pre_logits=True)
            assert pre.shape == (2, model.head_hidden_size) == (2, model.num_features)
        # separate: the M passes' pooled features, averaged (member m sees M * c_m(x) only)
        passes = model.backbone.forward_head(model.forward_features(x), pre_logits=True).view(2, 3, -1)
        torch.testing.assert_close(pre, passes.mean(dim=1))
        model.reset_classifier(0)
        torch.testing.assert_close(model(x), pre)


def test_mixvit_pre_logits_are_the_mean_of_member_class_tokens():
    torch.manual_seed(0)
    model = timm.create_model('mixvit_convit_gpsa5_ca2', num_members=3, **TINY_MIXVIT).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = model.forward_features(x)
        tokens = features[:, :, 0]  # (B, M, D): class token m read by head m
        pre = model.forward_head(features, pre_logits=True)
        torch.testing.assert_close(pre, tokens.mean(dim=1))
        assert pre.shape == (2, model.head_hidden_size)
        model.reset_classifier(0)
        torch.testing.assert_close(model(x), pre)


def test_cnn_without_classifier_and_pooling_returns_the_feature_map():
    model = timm.create_model('cut_mixmo_wrn28_2', depth=10, widen_factor=1, num_classes=0, global_pool='').eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert model(x).shape == (1, model.num_features, 8, 8)
        assert not list(model.heads.parameters())  # like timm's nn.Identity classifier
        model.reset_classifier(4, 'avg')
        assert model(x).shape == (1, 4) and model.forward_members(x).shape == (1, 2, 4)


@pytest.mark.parametrize('name, kwargs', [('cut_mixmo_wrn28_2', dict(depth=10, widen_factor=1)),
                                          ('mixvit_convit_gpsa5_ca2', TINY_MIXVIT),
                                          ('mixmo_vit_convit_gpsa5_ca2', TINY_MIXVIT)])
def test_trace_and_export_are_the_supported_compile_paths(name, kwargs):
    """Decision: MIMO models are not TorchScript-scriptable; ``torch.jit.trace`` and ``torch.export`` are supported
    and give the eager logits at another batch size."""
    torch.manual_seed(0)
    model = timm.create_model(name, **kwargs).eval()
    x, y = torch.randn(2, 3, 32, 32), torch.randn(3, 3, 32, 32)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter('ignore')  # TracerWarnings from the shape checks
        traced = torch.jit.trace(model, x, check_trace=False)
        torch.testing.assert_close(traced(y), model(y), rtol=1e-5, atol=1e-5)
        exported = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim('batch', max=64)},))
        torch.testing.assert_close(exported.module()(y), model(y), rtol=1e-5, atol=1e-5)


MIMO_MODULES = ('mimo_cnn', 'mixshare', 'mixvit', 'mimo_vit')


@pytest.mark.parametrize('name', [n for n in timm_mimo_names() if timm_mimo_module(n) in MIMO_MODULES])
def test_features_only_is_refused_with_the_way_out(name):
    # timm's FeatureListNet would call the modules of one single-input network in order; refused before building
    with pytest.raises(RuntimeError, match=rf'^{name}: features_only is not supported by MIMO models \(.+\); use '
                                           r'forward_features'):
        timm.create_model(name, features_only=True)
