"""timm_mimo.analysis: influence, sharing rates, active filters, feature variance, plots and the command line."""
import configparser
import json
from pathlib import Path

import pytest
import timm
import torch

from timm_mimo import analysis
from timm_mimo.cli import validate


def tiny(name: str = 'cut_mixmo', **kwargs):
    torch.manual_seed(0)
    kwargs = dict(dict(backbone='wrn28_2', depth=10, widen_factor=1, num_classes=5), **kwargs)
    return timm.create_model(name, **kwargs).eval()


# --- sharing rate on hand-built histograms -------------------------------------------------------------------------

def test_sharing_rate_disjoint_identical_and_partial():
    assert analysis.sharing_rate(torch.tensor([[1.0, 2.0, 0.0, 0.0], [0.0, 0.0, 3.0, 1.0]])) == 0.0
    assert analysis.sharing_rate(torch.tensor([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0]])) == 1.0  # same shape, any scale
    assert analysis.sharing_rate(torch.tensor([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0]]), normalize='none') == 0.5
    # normalised h0 = (.5, .5, 0), h1 = (0, .5, .5): Σ min = .5, Σ max = 1.5
    assert analysis.sharing_rate(torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])) == pytest.approx(1 / 3)
    # max-normalised (MixViT Fig. 5): h0 = (1, .5), h1 = (.25, 1): Σ min = .75, Σ max = 2
    assert analysis.sharing_rate(torch.tensor([[2.0, 1.0], [1.0, 4.0]]), normalize='max') == pytest.approx(0.375)


def test_sharing_rate_for_three_members_is_the_common_share():
    influence = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    # min over members = (0, .5, 0), max = (.5, .5, .5)
    assert analysis.sharing_rate(influence) == pytest.approx(1 / 3)


@pytest.mark.parametrize('influence, match', [
    (torch.ones(1, 4), 'M >= 2'), (-torch.ones(2, 3), 'non-negative'), (torch.zeros(2, 3), 'zero'),
])
def test_sharing_rate_refuses_bad_input(influence, match):
    with pytest.raises(ValueError, match=match):
        analysis.sharing_rate(influence)
    with pytest.raises(ValueError, match='normalize'):
        analysis.sharing_rate(torch.ones(2, 3), normalize='l2')


# --- influence read off the weights ------------------------------------------------------------------------------

def test_influence_is_the_l1_of_kernels_and_columns():
    model = tiny()
    with torch.no_grad():
        model.heads.weight.zero_()
        model.heads.weight[0, :, :3] = torch.tensor([1.0, -2.0, 0.5])  # columns 0..2 used by head 0 only
        model.heads.weight[1, 0, 3] = -4.0
    influence = analysis.classifier_influence(model)
    assert influence.shape == (2, 64)
    assert influence[0, :3].tolist() == [5.0, 10.0, 2.5] and influence[1, 3] == 4.0
    assert analysis.classifier_sharing_rate(model) == 0.0
    encoders = analysis.encoder_influence(model)
    expected = model.encoders.member_weight.detach().abs().sum(dim=(2, 3, 4))
    torch.testing.assert_close(encoders, expected)


def test_identical_and_tied_members_share_everything():
    same = tiny(encoder_init='same')
    assert analysis.encoder_sharing_rate(same) == 1.0
    assert analysis.sharing_rates(tiny(tied_encoder=True, tied_heads=True)) == dict(
        encoder_sharing_rate=1.0, classifier_sharing_rate=1.0)


def test_mixvit_has_a_classifier_rate_only():
    model = timm.create_model('mixvit', backbone='cait_xxs24_224', num_classes=5, img_size=16, patch_size=8, depth=2,
                              embed_dim=32, num_heads=2)
    rates = analysis.sharing_rates(model)
    assert set(rates) == {'classifier_sharing_rate'} and 0.0 <= rates['classifier_sharing_rate'] <= 1.0
    assert analysis.classifier_influence(model).shape == (2, 32)
    with pytest.raises(ValueError, match='per-member encoders'):
        analysis.encoder_sharing_rate(model)


def test_plain_timm_model_is_refused():
    with pytest.raises(ValueError, match='member heads'):
        analysis.sharing_rates(timm.create_model('resnet10t', num_classes=3))


# --- active filters ----------------------------------------------------------------------------------------------

def test_active_filters_threshold():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 1, bias=False), torch.nn.Conv2d(4, 2, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([1.0, 0.5, 0.39, 0.0]).view(4, 1, 1, 1))
        model[1].weight.copy_(torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.2, 0.0, 0.0, 0.0]]).view(2, 4, 1, 1))
    # layer 0: 1 and 0.5 reach 0.4 · 1 (2 of 4); layer 1: 2 ≥ 0.8, 0.2 < 0.8 (1 of 2) -> 3 of 6
    assert analysis.active_filters(model) == 50.0
    assert analysis.active_filters(model, threshold=0.2) == pytest.approx(100 * 4 / 6)
    assert analysis.active_filters(tiny()) > 0
    with pytest.raises(ValueError, match='threshold'):
        analysis.active_filters(model, threshold=2)


def test_active_filters_leave_out_the_stem_of_plain_and_mimo_models_alike():
    """Thesis Table A.16 counts the core network: a plain WRN's stem conv (its input encoder) is not counted, as the
    MIMO model's member encoders are not, so a plain WRN and its Cut-MixMo with the same core give the same share."""
    plain = timm.create_model('wrn28_2', depth=10, widen_factor=1, num_classes=5).eval()
    mimo = tiny()
    mimo.backbone.load_state_dict({k: v for k, v in plain.state_dict().items()
                                   if not k.startswith(('conv_stem', 'fc'))}, strict=False)
    with torch.no_grad():  # a stem with one large and 15 tiny filters: 1 of 16 active if it were counted
        plain.conv_stem.weight.fill_(1e-3)
        plain.conv_stem.weight[0].fill_(1.0)
    core = [m for name, m in plain.named_modules() if isinstance(m, torch.nn.Conv2d) and name != 'conv_stem']
    active = sum(int((c.weight.abs().flatten(1).sum(1) >= 0.4 * c.weight.abs().flatten(1).sum(1).max()).sum())
                 for c in core)
    expected = 100.0 * active / sum(c.out_channels for c in core)
    assert analysis.active_filters(plain) == pytest.approx(expected)
    assert analysis.active_filters(mimo) == pytest.approx(expected)


# --- feature variance ---------------------------------------------------------------------------------------------

def test_feature_variance_separates_members_with_separate_encoders():
    """Zeroing member 1's encoder makes every feature independent of input 1: its variance is exactly 0."""
    model = tiny()
    with torch.no_grad():
        model.encoders.member_weight[1].zero_()
    images = torch.randn(6, 3, 16, 16)
    variance = analysis.feature_variance(model, images, torch.zeros(3, 16, 16), batch_size=4)
    assert list(variance) == ['backbone.stages.0', 'backbone.stages.1', 'backbone.stages.2']
    assert variance['backbone.stages.2'].shape == (2, 64)
    assert (variance['backbone.stages.0'][0] > 0).all() and (variance['backbone.stages.0'][1] == 0).all()
    # the importance is the unbiased variance over the images, averaged over positions
    captured = []
    layer = model.get_submodule('backbone.stages.1')
    handle = layer.register_forward_hook(lambda mod, inp, out: captured.append(out))
    with torch.no_grad():
        model.forward_features_multi(torch.stack([images, torch.zeros_like(images)], dim=1))
    handle.remove()
    expected = captured[0].double().var(dim=0).mean(dim=(1, 2)).float()
    torch.testing.assert_close(variance['backbone.stages.1'][0], expected)


# --- plots and command line ---------------------------------------------------------------------------------------

def test_command_line_writes_json_and_plots(tmp_path, capsys):
    model = tiny('mixshare', unmixing='partial')
    checkpoint = tmp_path / 'model.pth'
    torch.save(model.state_dict(), checkpoint)
    out = tmp_path / 'analysis'
    code = analysis.main(['--model', 'mixshare', '--model-kwargs', 'backbone=wrn28_2', 'depth=10', 'widen_factor=1',
                          'unmixing=partial', '--num-classes', '5', '--checkpoint', str(checkpoint), '--out', str(out)])
    assert code == 0
    results = json.loads((out / 'analysis.json').read_text())
    assert results['classifier_sharing_rate'] == pytest.approx(analysis.classifier_sharing_rate(model))
    assert results['encoder_sharing_rate'] == 1.0  # MixShare's identical encoders at init
    for name in ('encoder_influence.png', 'classifier_influence.png', 'classifier_scatter.png'):
        assert (out / name).read_bytes()[:4] == b'\x89PNG'
    assert 'classifier_sharing_rate' in capsys.readouterr().out


def test_command_line_feature_variance_on_an_image_folder(tmp_path, digits_dir):
    out = tmp_path / 'analysis'
    code = analysis.main(['--model', 'cut_mixmo', '--model-kwargs', 'backbone=wrn28_2', 'depth=10', 'widen_factor=1',
                          'in_chans=1', '--num-classes', '10', '--out', str(out), '--data-dir', str(digits_dir),
                          '--split', 'validation', '--num-images', '8', '--no-plots'])
    assert code == 0
    results = json.loads((out / 'analysis.json').read_text())
    assert set(results['feature_variance_sharing_rate']) == {'backbone.stages.0', 'backbone.stages.1',
                                                             'backbone.stages.2'}
    assert not (out / 'feature_variance.png').exists()


def test_command_line_on_a_plain_cnn_gives_its_active_filters(tmp_path):
    out = tmp_path / 'analysis'
    assert analysis.main(['--model', 'resnet10t', '--num-classes', '3', '--out', str(out)]) == 0
    results = json.loads((out / 'analysis.json').read_text())
    assert set(results) == {'active_filters', 'active_threshold', 'influence'} and results['influence'] == {}
    assert not list(out.glob('*.png'))


@pytest.mark.parametrize('argv, match', [
    (['--model', 'no_such_model'], 'unknown model'),
    (['--model', 'cut_mixmo', '--model-kwargs', 'backbone'], 'key=value'),
    (['--model', 'mixshare_wrn28_2', '--checkpoint', '/nonexistent.pth'], 'does not exist'),
])
def test_command_line_bad_input_is_one_line(tmp_path, capsys, argv, match):
    assert analysis.main(argv + ['--out', str(tmp_path / 'x')]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('error:') and match in err and '\n' not in err


# --- validate --sharing-rates ---------------------------------------------------------------------------------------

DIGITS_MODEL = ['--num-classes', '10', '--in-chans', '1', '--img-size', '8', '--mean', '0.5', '--std', '0.5']


def test_validate_sharing_rates_are_the_checkpoints(tmp_path, small_digits_dir):
    model = tiny(num_classes=10, in_chans=1)
    with torch.no_grad():  # members that differ from a fresh model's, so a random re-init would not pass
        model.heads.weight[0, :, :8] *= 5.0
    torch.save({'state_dict': model.state_dict()}, tmp_path / 'mimo.pth.tar')
    argv = ['--model', 'cut_mixmo', '--model-kwargs', 'backbone=wrn28_2', 'depth=10', 'widen_factor=1', *DIGITS_MODEL,
            '--data-dir', str(small_digits_dir), '--checkpoint', str(tmp_path / 'mimo.pth.tar'), '--workers', '0']
    assert validate.main([*argv, '--sharing-rates', '--results-file', str(tmp_path / 'rates.json')]) == 0
    results = json.loads((tmp_path / 'rates.json').read_text())
    assert results['encoder_sharing_rate'] == round(analysis.encoder_sharing_rate(model), 4)  # timm's rounding
    assert results['classifier_sharing_rate'] == round(analysis.classifier_sharing_rate(model), 4)
    assert 0.0 < results['classifier_sharing_rate'] < 1.0 and results['num_images'] == 60 and 'top1' in results
    assert validate.main([*argv, '--results-file', str(tmp_path / 'plain.json')]) == 0  # off by default
    assert 'classifier_sharing_rate' not in json.loads((tmp_path / 'plain.json').read_text())


def test_validate_sharing_rates_refuse_a_plain_model(tmp_path, small_digits_dir, capsys):
    plain = timm.create_model('test_resnet', num_classes=10, in_chans=1)
    torch.save({'state_dict': plain.state_dict()}, tmp_path / 'plain.pth.tar')
    code = validate.main(['--model', 'test_resnet', *DIGITS_MODEL, '--data-dir', str(small_digits_dir), '--checkpoint',
                          str(tmp_path / 'plain.pth.tar'), '--workers', '0', '--sharing-rates', '--results-file',
                          str(tmp_path / 'plain.json')])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "--sharing-rates: 'test_resnet' is not a MIMO model" in err and 'drop --sharing-rates' in err
    assert not (tmp_path / 'plain.json').exists()


def test_console_script_is_the_command_line():
    setup = configparser.ConfigParser()
    setup.read(Path(__file__).parents[1] / 'setup.cfg')
    lines = setup['options.entry_points']['console_scripts'].strip().splitlines()
    scripts = dict(line.replace(' ', '').split('=') for line in lines)
    assert scripts['timm-mimo-analysis'] == 'timm_mimo.analysis:main'
