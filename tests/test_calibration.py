"""Deployable temperature scaling: the heads' temperature, its fit on a held-out split (``timm-mimo-validate
--fit-temperature``), the export that applies it, config.json / card records and the ``local-dir:`` round trip."""
import json
import math
import warnings

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from conftest import DIGITS_VAL_EVERY
from huggingface_hub import ModelCard

from timm_mimo import hub
from timm_mimo.calibration import get_temperature, set_temperature, temperature_columns
from timm_mimo.cli import validate
from timm_mimo.metrics import expected_calibration_error, fit_temperature, nll

DIGITS = ['--num-classes', '10', '--in-chans', '1', '--img-size', '8', '--mean', '0.5', '--std', '0.5']
WRN = dict(backbone='wrn28_2', depth=10, widen_factor=1)
MODEL = ['--model', 'cut_mixmo', '--model-kwargs', 'backbone=wrn28_2', 'depth=10', 'widen_factor=1']


def test_heads_divide_member_and_ensemble_logits_by_the_temperature():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 16, 16)
    for model in (timm.create_model('cut_mixmo', num_classes=5, **WRN),
                  timm.create_model('cut_mixmo', num_classes=5, tied_heads=True, **WRN),
                  timm.create_model('mixvit_cait_xxs24', img_size=16, patch_size=4, embed_dim=48, depth=2,
                                    num_heads=3, num_classes=5)):
        model.eval()
        assert get_temperature(model) == 1.0
        with torch.no_grad():
            raw_members, raw = model.forward_members(x), model(x)
            set_temperature(model, 2.5)
            torch.testing.assert_close(model.forward_members(x), raw_members / 2.5, rtol=0, atol=0)
            torch.testing.assert_close(model(x), raw / 2.5)
        assert get_temperature(model) == 2.5
        with torch.no_grad():  # training reads the raw logits: the temperature is fitted after training
            scaled_model_in_train_mode = model.train().forward_members(x)
            set_temperature(model, 1.0)
            torch.testing.assert_close(model.forward_members(x), scaled_model_in_train_mode, rtol=0, atol=0)


def test_temperature_is_in_the_state_dict_and_older_state_dicts_still_load():
    model = timm.create_model('cut_mixmo', num_classes=5, **WRN)
    set_temperature(model, 1.5)
    state = model.state_dict()
    assert float(state['backbone.fc.temperature']) == 1.5
    other = timm.create_model('cut_mixmo', num_classes=5, **WRN)
    other.load_state_dict(state)  # strict
    assert get_temperature(other) == 1.5
    older = {k: v for k, v in state.items() if not k.endswith('temperature')}  # written before the buffer existed
    fresh = timm.create_model('cut_mixmo', num_classes=5, **WRN)
    assert fresh.load_state_dict(older).missing_keys == [] and get_temperature(fresh) == 1.0


@pytest.mark.parametrize('value', [0, -1.0, float('nan'), float('inf'), True, '1.5'])
def test_a_bad_temperature_is_refused(value):
    with pytest.raises(ValueError, match='finite number > 0'):
        set_temperature(timm.create_model('cut_mixmo', num_classes=5, **WRN), value)


def test_a_plain_timm_model_has_no_temperature_to_hold():
    with pytest.raises(ValueError, match='no timm_mimo member heads'):
        set_temperature(timm.create_model('wrn28_2', depth=10, widen_factor=1), 2.0)


def test_the_fit_recovers_the_overconfidence_factor_and_never_sees_the_reported_split():
    """Labels drawn from softmax(l), logits 4·l: the NLL-optimal temperature is about 4, found on the held-out half
    only (the reported half's targets are shuffled: a fit that used them would not find 4)."""
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(8000, 1, 10, generator=generator, dtype=torch.float64) * 2
    labels = torch.multinomial(base[:, 0].softmax(-1), 1, generator=generator).squeeze(1)
    logits = 4 * base.expand(-1, 2, -1) + 0.01 * torch.randn(8000, 2, 10, generator=generator, dtype=torch.float64)
    held_out, reported = slice(0, 4000), slice(4000, 8000)
    shuffled = labels[reported][torch.randperm(4000, generator=generator)]
    columns = temperature_columns(logits[held_out], labels[held_out], logits[reported], shuffled,
                                  current_temperature=1.5)
    factor = fit_temperature(logits[held_out].mean(1), labels[held_out])
    assert abs(factor - 4.0) < 0.3 and columns['temperature'] == pytest.approx(1.5 * factor, rel=1e-12)
    scaled = logits[reported].mean(1) / factor
    assert columns['loss_ts'] == pytest.approx(nll(scaled, shuffled), rel=1e-12)
    assert columns['ece_ts'] == pytest.approx(expected_calibration_error(scaled.softmax(-1), shuffled), rel=1e-12)


@pytest.fixture(scope='module')
def overconfident_checkpoint(tmp_path_factory):
    """A Cut-MixMo WRN-10-1 fitted for 25 steps to the training digits (plain batches; about 95 % on the validation
    split), its heads then scaled ×10: overconfident."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    x = torch.tensor(np.clip(digits.images * 16, 0, 255) / 255.0, dtype=torch.float32)[:, None].sub(0.5).div(0.5)
    y = torch.tensor(digits.target)
    train = torch.nonzero(torch.arange(len(y)) % DIGITS_VAL_EVERY != 0).squeeze(1)  # conftest's training split
    torch.manual_seed(0)
    model = timm.create_model('cut_mixmo', num_classes=10, in_chans=1, **WRN).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # the single-input training warning
        for _ in range(25):
            index = train[torch.randint(0, len(train), (128,))]
            loss = F.cross_entropy(model(x[index]), y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        model.heads.weight.mul_(10)
        model.heads.bias.mul_(10)
    path = tmp_path_factory.mktemp('overconfident') / 'last.pth.tar'
    torch.save(dict(state_dict=model.state_dict(), epoch=0, arch='cut_mixmo'), path)
    return path


def test_validate_fits_the_temperature_on_a_held_out_split(overconfident_checkpoint, digits_dir, tmp_path, capsys):
    results = tmp_path / 'val.json'
    code = validate.main([*MODEL, *DIGITS, '--checkpoint', str(overconfident_checkpoint), '--data-dir', str(digits_dir),
                          '--split', 'validation', '--fit-temperature', 'train', '--workers', '0',
                          '--results-file', str(results)])
    assert code == 0, capsys.readouterr().err
    out = json.loads(results.read_text())
    assert out['temperature_split'] == 'train' and out['temperature_images'] == 1497 and out['num_images'] == 300
    assert out['temperature'] > 2 and out['top1'] > 80  # accurate, and overconfident (the ×10 heads)
    assert out['loss_ts'] < out['loss'] and out['ece_ts'] < out['ece']  # before / after, on the reported split
    assert set(out) >= {'loss', 'ece', 'loss_ts', 'ece_ts', 'temperature'} and out['temperature_at_bound'] is False


@pytest.mark.parametrize('split, match', [('validation', 'never on the reported --split'),
                                          ('val', "shares 300 images with --split 'validation'")])
def test_fitting_on_the_reported_images_is_refused(overconfident_checkpoint, digits_dir, tmp_path, capsys, split,
                                                   match):
    code = validate.main([*MODEL, *DIGITS, '--checkpoint', str(overconfident_checkpoint), '--data-dir', str(digits_dir),
                          '--split', 'validation', '--fit-temperature', split, '--workers', '0',
                          '--results-file', str(tmp_path / 'val.json')])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and match in err
    assert not (tmp_path / 'val.json').exists()


def test_a_calibrated_export_round_trips_with_its_temperature(overconfident_checkpoint, digits_dir, tmp_path,
                                                               capsys):
    run_dir = tmp_path / 'run'
    run_dir.mkdir()
    checkpoint = run_dir / 'last.pth.tar'
    checkpoint.write_bytes(overconfident_checkpoint.read_bytes())
    (run_dir / 'args.yaml').write_text('model: cut_mixmo\nmodel_kwargs: {backbone: wrn28_2, depth: 10, widen_factor: 1}'
                                       '\nnum_classes: 10\nin_chans: 1\nimg_size: 8\nmean: [0.5]\nstd: [0.5]\n'
                                       'dataset: ""\n')
    results = tmp_path / 'val.json'
    assert validate.main(['--config', str(run_dir / 'args.yaml'), '--checkpoint', str(checkpoint),
                          '--data-dir', str(digits_dir), '--split', 'validation', '--fit-temperature', 'train',
                          '--workers', '0', '--results-file', str(results)]) == 0
    fitted = json.loads(results.read_text())
    out = tmp_path / 'export'
    assert hub.main(['export', '--checkpoint', str(checkpoint), '--results', str(results),
                     '--out', str(out)]) == 0
    loaded = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    assert get_temperature(loaded) == pytest.approx(fitted['temperature'], rel=1e-6)
    raw = timm.create_model('cut_mixmo', num_classes=10, in_chans=1, **WRN).eval()
    raw.load_state_dict(torch.load(checkpoint, weights_only=True)['state_dict'])
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded.forward_members(x), raw.forward_members(x) / get_temperature(loaded),
                                   rtol=0, atol=0)
        torch.testing.assert_close(loaded(x), raw(x) / get_temperature(loaded))
    config = json.loads((out / 'config.json').read_text())
    assert config['calibration']['temperature'] == round(get_temperature(loaded), 6)
    assert config['calibration']['temperature_split'] == 'train' and config['calibration']['split'] == 'validation'
    card = (out / 'README.md').read_text()
    assert f'T = {get_temperature(loaded):.4g}' in card and "on split `train`" in card
    assert f'NLL {fitted["loss"]:.4f} -> {fitted["loss_ts"]:.4f} nats' in card
    assert '| loss_ts |' in card and ModelCard.load(out / 'README.md').data.library_name == 'timm'
    assert '| loss | negative log-likelihood (NLL), ensemble (before the temperature) |' in card
    # the loaded model, validated again, reports the calibrated NLL of the fit (up to the 4-decimal temperature)
    again = tmp_path / 'again.json'
    assert validate.main(['--model', f'local-dir:{out}', '--data-dir', str(digits_dir), '--split', 'validation',
                          '--workers', '0', '--results-file', str(again)]) == 0, capsys.readouterr().err
    assert json.loads(again.read_text())['loss'] == pytest.approx(fitted['loss_ts'], abs=2e-3)
    assert math.isclose(json.loads(again.read_text())['top1'], fitted['top1'])


def test_export_of_a_temperature_onto_a_plain_model_is_one_line(tmp_path, capsys):
    model = timm.create_model('wrn28_2', depth=10, widen_factor=1, num_classes=3)
    torch.save(dict(state_dict=model.state_dict()), tmp_path / 'last.pth.tar')
    (tmp_path / 'args.yaml').write_text('model: wrn28_2\nmodel_kwargs: {depth: 10, widen_factor: 1}\nnum_classes: 3\n')
    (tmp_path / 'val.json').write_text(json.dumps(dict(top1=50.0, temperature=1.7)))
    assert hub.main(['export', '--checkpoint', str(tmp_path / 'last.pth.tar'), '--results', str(tmp_path / 'val.json'),
                     '--out', str(tmp_path / 'out')]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'temperature 1.7' in err and 'no timm_mimo member heads' in err
    assert not (tmp_path / 'out').exists()


def test_one_call_fits_and_sets_the_temperature_with_before_and_after_metrics():
    """fit_temperature(model, loader): an MIMO model whose heads are scaled ×3 is overconfident by 3 on labels drawn
    from its own softmax; the fit finds about 3, sets it, and the loader's NLL falls."""
    from timm_mimo.calibration import fit_temperature as fit_model_temperature
    torch.manual_seed(0)
    model = timm.create_model('cut_mixmo', num_classes=4, **WRN).eval()
    x = torch.randn(600, 3, 8, 8)
    with torch.no_grad():
        probs = model(x).softmax(-1)
        model.backbone.fc.weight.mul_(3)
        model.backbone.fc.bias.mul_(3)
    y = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(1)).squeeze(1)
    loader = [(x[i:i + 200], y[i:i + 200]) for i in range(0, 600, 200)]
    returned, fit = fit_model_temperature(model, loader)
    assert returned is model and get_temperature(model) == pytest.approx(fit['temperature'], rel=1e-6)
    assert fit['temperature'] == pytest.approx(3.0, rel=0.15) and not fit['temperature_at_bound']
    assert fit['loss_ts'] < fit['loss'] and fit['temperature_images'] == 600 and fit['previous_temperature'] == 1.0
    with torch.no_grad():  # the set temperature gives the "after" NLL
        assert nll(model(x).double(), y) == pytest.approx(fit['loss_ts'], rel=1e-4)
    _, again = fit_model_temperature(model, loader, apply=False)  # re-fit relative to the set one: factor ~ 1
    assert again['temperature'] == pytest.approx(fit['temperature'], rel=1e-3)
    assert get_temperature(model) == pytest.approx(fit['temperature'], rel=1e-6)  # apply=False: unchanged


def test_a_fit_that_ends_at_its_search_bound_is_flagged():
    """Logits ranking every image wrongly with a margin: the NLL keeps falling as T grows, up to the bound."""
    from timm_mimo.calibration import SEARCH_BOUNDS, at_search_bound, fit_logits
    logits = torch.tensor([[[5.0, 0.0]], [[0.0, 5.0]]]).expand(-1, 2, -1)
    fit = fit_logits(logits, torch.tensor([1, 0]))
    assert fit['temperature'] == pytest.approx(SEARCH_BOUNDS[1], rel=1e-3) and fit['temperature_at_bound']
    correct = fit_logits(logits, torch.tensor([0, 1]))  # every image right: the NLL falls as T -> 0
    assert correct['temperature'] == pytest.approx(SEARCH_BOUNDS[0], rel=1e-3) and correct['temperature_at_bound']
    mixed = fit_logits(logits[[0, 0, 1]], torch.tensor([0, 0, 0]))  # two right, one wrong: a finite optimum
    assert not mixed['temperature_at_bound'] and 1 < mixed['temperature'] < 100
    assert at_search_bound(999.9997) and at_search_bound(0.0010001) and not at_search_bound(2.5)


def test_validate_rows_carry_the_models_temperature(overconfident_checkpoint, digits_dir, tmp_path):
    results = tmp_path / 'val.json'
    assert validate.main([*MODEL, *DIGITS, '--checkpoint', str(overconfident_checkpoint), '--data-dir',
                          str(digits_dir), '--split', 'validation', '--workers', '0', '--results-file',
                          str(results)]) == 0
    out = json.loads(results.read_text())
    assert out['temperature'] == 1.0 and out['temperature_at_bound'] is False
