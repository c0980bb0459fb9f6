"""What users outside the repository read: results files with timm's columns and rounding, timm's bulk mode
(``--model-list``, wildcards), model cards a Hub user can trust, and whole offline / file errors with the CLI way
out."""
import csv
import json

import pytest
import timm
import torch
from huggingface_hub import ModelCard
from safetensors.torch import save_file

from timm_mimo import hub
from timm_mimo.cli import bulk, eval_models, train, validate

DIGITS = ['--num-classes', '10', '--in-chans', '1', '--img-size', '8', '--mean', '0.5', '--std', '0.5']
WRN = dict(backbone='wrn28_2', depth=10, widen_factor=1)
TIMM_COLUMNS = ['model', 'top1', 'top1_err', 'top5', 'top5_err', 'param_count', 'img_size', 'crop_pct',
                'interpolation']  # timm validate.py's results, in its order


def _decimals(value: str) -> int:
    return len(value.split('.')[1]) if '.' in value and 'e' not in value else 0


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = timm.create_model('cut_mixmo', num_classes=10, in_chans=1, **WRN)
    path = tmp_path_factory.mktemp('ckpt') / 'm.pth.tar'
    torch.save(dict(state_dict=model.state_dict()), path)
    return path


def test_results_csv_header_starts_with_timms_columns_and_values_are_rounded_as_timm(checkpoint, small_digits_dir,
                                                                                      tmp_path):
    out = tmp_path / 'val.csv'
    assert validate.main(['--model', 'cut_mixmo', '--model-kwargs', 'backbone=wrn28_2', 'depth=10', 'widen_factor=1',
                          *DIGITS, '--checkpoint', str(checkpoint), '--data-dir', str(small_digits_dir),
                          '--workers', '0', '--results-file', str(out)]) == 0
    with open(out) as f:
        rows = list(csv.reader(f))
    header, row = rows[0], dict(zip(rows[0], rows[1]))
    assert header[:len(TIMM_COLUMNS)] == TIMM_COLUMNS
    assert header[len(TIMM_COLUMNS):len(TIMM_COLUMNS) + 7] == ['checkpoint', 'dataset', 'split', 'num_images',
                                                              'num_members', 'loss', 'nll_c']
    assert {'top1_m0', 'd_re', 'ece', 'brier'} <= set(header)
    assert float(row['top1']) + float(row['top1_err']) == pytest.approx(100.0, abs=1e-4)
    params = sum(p.numel() for p in timm.create_model('cut_mixmo', num_classes=10, in_chans=1, **WRN).parameters())
    assert row['param_count'] == str(round(params / 1e6, 2)) and row['img_size'] == '8'
    assert row['split'] == 'validation' and row['num_images'] == '60'
    floats = {k: v for k, v in row.items() if '.' in v and k not in ('checkpoint', 'model')}
    assert floats and all(_decimals(v) <= (2 if k == 'param_count' else 4) for k, v in floats.items()), floats


@pytest.fixture(scope='module')
def exports(tmp_path_factory):
    """Two exported models: a Cut-MixMo and a plain WRN (different accuracies on the digits)."""
    root = tmp_path_factory.mktemp('exports')
    torch.manual_seed(1)
    data_config = dict(input_size=(1, 8, 8), mean=(0.5,), std=(0.5,))  # recorded: no data flags needed later
    hub.save_pretrained(timm.create_model('cut_mixmo', num_classes=10, in_chans=1, **WRN), root / 'mimo',
                        data_config=data_config)
    hub.save_pretrained(timm.create_model('wrn28_2', depth=10, widen_factor=1, num_classes=10, in_chans=1),
                        root / 'single', data_config=data_config)
    return root


def _bulk(args, small_digits_dir, out):
    code = validate.main([*args, '--data-dir', str(small_digits_dir), '--workers', '0', '--results-file', str(out)])
    assert code == 0
    return out


def test_bulk_mode_model_list_wildcard_and_file_give_one_row_per_model(exports, small_digits_dir, tmp_path):
    listing = tmp_path / 'models.txt'
    listing.write_text(f'# exported runs\nlocal-dir:{exports / "mimo"}\n\nlocal-dir:{exports / "single"}  # plain\n')
    by_list = json.loads(_bulk(['--model-list', str(listing)], small_digits_dir, tmp_path / 'a.json').read_text())
    assert isinstance(by_list, list) and len(by_list) == 2
    assert {row['model'] for row in by_list} == {f'local-dir:{exports / "mimo"}', f'local-dir:{exports / "single"}'}
    assert [row['top1'] for row in by_list] == sorted((row['top1'] for row in by_list), reverse=True)  # timm's order
    assert {row['num_members'] for row in by_list} == {1, 2}
    by_glob = json.loads(_bulk(['--model', f'local-dir:{exports}/*'], small_digits_dir, tmp_path / 'b.json')
                         .read_text())
    assert by_glob == by_list
    by_file = _bulk(['--model', str(listing)], small_digits_dir, tmp_path / 'c.csv')  # timm's --model FILE form
    with open(by_file) as f:
        rows = list(csv.DictReader(f))
    assert [r['model'] for r in rows] == [r['model'] for r in by_list] and list(rows[0])[:9] == TIMM_COLUMNS
    assert rows[[r['num_members'] for r in rows].index('1')]['top1_m0'] == ''  # a plain model: no member columns


def test_a_wildcard_expands_to_the_registered_names_with_weights():
    args = validate.parse_args(['--model', 'mixvit_cait_*'])
    assert bulk.bulk_models(args) == timm.list_models('mixvit_cait_*', pretrained=True) != []


@pytest.mark.parametrize('argv, match', [
    (['--model', 'cut_mixmo_wrn28_*'], "matches no model with pretrained weights"),
    (['--model', 'mixvit_cait_*', '--checkpoint', 'x.pth.tar'], '--checkpoint applies to one model'),
    (['--model-list', 'MISSING'], "--model-list 'MISSING' does not exist"),
])
def test_bulk_mode_bad_input_is_one_line(argv, match, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert validate.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err


def test_bulk_mode_names_an_unknown_model_before_running_anything(tmp_path, capsys):
    listing = tmp_path / 'models.txt'
    listing.write_text('resnet18\nnot_a_model\n')
    assert validate.main(['--model-list', str(listing), '--results-file', str(tmp_path / 'r.csv')]) == 2
    assert "model 'not_a_model' is unknown" in capsys.readouterr().err and not (tmp_path / 'r.csv').exists()


# ---- model cards ---------------------------------------------------------------------------------------------------

TRAIN_ARGS = dict(model='mixvit_convit_gpsa5_ca2', dataset='torch/cifar100', data_dir='/home/someone/data/c100',
                  train_split='train', img_size=64, lr=0.001, epochs=300, batch_size=128, batch_repeat=3, opt='adamw',
                  output='/home/someone/runs', workers=8, device='cuda', log_interval=50, pin_mem=True,
                  checkpoint_hist=10, amp=False, model_kwargs=dict(embed_dim=48, num_heads=3, depth=2,
                                                                    depth_token_only=1))
RESULTS = dict(model='mixvit_convit_gpsa5_ca2', top1=71.25, top1_err=28.75, dataset='torch/cifar100', split='test',
               num_images=10000, loss=1.1234, nll_c=1.05, temperature_a=1000.0, temperature_b=0.001, ece=4.2,
               member_top1=69.9)


def test_card_of_a_model_built_at_64_px_says_64_and_carries_what_a_hub_user_needs():
    model = timm.create_model('mixvit_convit_gpsa5_ca2', img_size=64, num_classes=100, embed_dim=48, num_heads=3,
                              depth=2, depth_token_only=1)
    card = str(hub.model_card(model, train_args=TRAIN_ARGS, results=RESULTS))
    assert '- input size (C, H, W): (3, 64, 64)' in card and '224' not in card
    data = ModelCard(card).data
    assert data.datasets == ['cifar100'] and '/home/someone' not in card
    for logistics in ('output', 'workers', 'device', 'log_interval', 'pin_mem', 'checkpoint_hist', 'data_dir'):
        assert f'| {logistics} |' not in card, logistics
    assert '| lr | `0.001` |' in card and '| batch_repeat | `3` |' in card and '| amp |' not in card
    assert 'on **cifar100**, split `test` (10000 images)' in card
    assert '| top1 | top-1 accuracy, ensemble | 71.25 | % |' in card
    assert '| loss | negative log-likelihood (NLL), ensemble | 1.123 | nats |' in card
    assert 'temperature_a' not in card and 'temperature_b' not in card and '| 1000 |' not in card
    assert '```bibtex' in card and '@misc{mixvit' in card and 'HAL tel-03952815' in card
    assert 'pip install' in card and 'import timm_mimo  # registers the models' in card


def test_card_cites_the_methods_paper_and_an_image_folder_has_no_dataset_name():
    model = timm.create_model('cut_mixmo', num_classes=10, **WRN)
    card = str(hub.model_card(model, train_args=dict(model='cut_mixmo', dataset='', data_dir='/data/x', img_size=28,
                                                     in_chans=1)))
    assert '@inproceedings{rame2021mixmo' in card and 'eprint    = {2103.06132}' in card
    assert ModelCard(card).data.datasets is None and 'an image folder (no data set name recorded)' in card
    assert '- input size (C, H, W): (1, 28, 28)' in card and '/data/x' not in card
    mimo = str(hub.model_card(timm.create_model('mimo', num_classes=10, **WRN)))
    assert '@inproceedings{havasi2021mimo' in mimo
    mixshare = str(hub.model_card(timm.create_model('mixshare', num_classes=10, **WRN)))
    assert '@inproceedings{sun2022mixshare' in mixshare
    named = str(hub.model_card(model, train_args=dict(model='cut_mixmo'), dataset='my-digits'))
    assert ModelCard(named).data.datasets == ['my-digits']


@pytest.mark.parametrize('dataset, name', [('torch/cifar10', 'cifar10'), ('hfds/uoft-cs/cifar10', 'uoft-cs/cifar10'),
                                           ('tfds/imagenet2012', 'imagenet2012'), ('', None), ('folder', None)])
def test_dataset_name(dataset, name):
    assert hub.dataset_name(dataset) == name


# ---- offline and file errors, whole, with the command-line way out -------------------------------------------------

@pytest.fixture
def offline(monkeypatch):
    import huggingface_hub.constants
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)


def test_offline_validate_error_is_whole_with_the_command_line_way_out(offline, small_digits_dir, capsys):
    code = validate.main(['--model', 'mixvit_cait_xs24', '--model-kwargs', 'img_size=32', 'depth=1',
                          '--data-dir', str(small_digits_dir)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and len(err) > 300
    assert "pretrained_cfg_overlay=dict(file='<folder>/model.safetensors'))" in err  # not cut
    assert hub.download_command('timm/cait_xs24_384.fb_dist_in1k', 'model.safetensors') in err
    assert err.endswith('on the command line: --pretrained-path <folder>/model.safetensors')


def test_offline_train_error_is_whole_with_the_command_line_way_out(offline, small_digits_dir, tmp_path, capsys):
    code = train.main(['--model', 'cut_mixmo', '--model-kwargs', 'backbone=resnet18', '--pretrained', '--data-dir',
                       str(small_digits_dir), '--output', str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "backbone='resnet18'" in err
    assert err.endswith('on the command line: --pretrained-path <folder>/model.safetensors')
    assert not list(tmp_path.iterdir())


def test_offline_hf_hub_name_points_the_command_line_to_local_dir(offline, small_digits_dir, capsys):
    assert validate.main(['--model', 'hf-hub:someone/nothing-here', '--data-dir', str(small_digits_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert hub.download_command('someone/nothing-here') in err and err.endswith('--model local-dir:<folder>')


def test_a_wrong_local_weights_file_is_named(tmp_path):
    missing = tmp_path / 'nope.safetensors'
    for name, kwargs in (('mixvit_cait_xxs24', dict(img_size=32, depth=1)), ('cut_mixmo', dict(backbone='resnet18'))):
        with pytest.raises(FileNotFoundError, match=f"file '{missing}' given for") as info:
            timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(missing)), **kwargs)
        assert 'pretrained_cfg_overlay' in str(info.value)


def test_validate_pretrained_path_loads_a_local_copy_of_the_published_weights(tmp_path, capsys):
    """--pretrained-path: the backbone checkpoint mapped into the MIMO model as a download would be."""
    kwargs = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3)
    torch.manual_seed(0)
    backbone = timm.create_model('cait_xxs24_224', **kwargs).eval()
    save_file(backbone.state_dict(), str(tmp_path / 'model.safetensors'))
    args = validate.parse_args(['--model', 'mixvit_cait_xxs24', '--model-kwargs', *[f'{k}={v}' for k, v in
                                                                                     kwargs.items()],
                                '--pretrained-path', str(tmp_path / 'model.safetensors')])
    model = eval_models.create_eval_model(args).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), backbone(x), rtol=1e-5, atol=1e-5)
    assert validate.main(['--model', 'resnet18', '--pretrained-path', str(tmp_path / 'missing.safetensors')]) == 2
    assert "--pretrained-path '" in capsys.readouterr().err


# ---- bulk mode as timm's: a failing model is skipped, --result on stdout, --checkpoint DIR ---------------------------

def _result_block(out: str):
    """The JSON timm's validate.py prints after its ``--result`` line."""
    return json.loads(out.split('--result\n', 1)[1])


def test_bulk_mode_skips_a_failing_model_writes_the_others_and_exits_non_zero(exports, small_digits_dir, tmp_path,
                                                                              capsys):
    bad = tmp_path / 'bad'  # a folder with a config.json whose weights file is missing: fails when loaded
    bad.mkdir()
    (bad / 'config.json').write_text((exports / 'mimo' / 'config.json').read_text())
    listing = tmp_path / 'models.txt'
    listing.write_text(f'local-dir:{exports / "mimo"}\nlocal-dir:{bad}\nlocal-dir:{exports / "single"}\n')
    out = tmp_path / 'rows.csv'
    code = validate.main(['--model-list', str(listing), '--data-dir', str(small_digits_dir), '--workers', '0',
                          '--results-file', str(out)])
    captured = capsys.readouterr()
    assert code == 1
    assert f'error: local-dir:{bad}: ' in captured.err and '(skipped; the others go on)' in captured.err
    assert f'error: 1 of 3 failed: local-dir:{bad}' in captured.err
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert {r['model'] for r in rows} == {f'local-dir:{exports / "mimo"}', f'local-dir:{exports / "single"}'}
    block = _result_block(captured.out)
    assert [row['model'] for row in block] == [r['model'] for r in rows]
    assert all(row['temperature'] == 1.0 and row['temperature_at_bound'] is False for row in block)


def test_the_result_block_of_one_model_is_json_with_the_row(checkpoint, small_digits_dir, capsys):
    assert validate.main(['--model', 'cut_mixmo', '--model-kwargs', 'backbone=wrn28_2', 'depth=10', 'widen_factor=1',
                          *DIGITS, '--checkpoint', str(checkpoint), '--data-dir', str(small_digits_dir),
                          '--workers', '0']) == 0
    block = _result_block(capsys.readouterr().out)
    assert block['model'] == 'cut_mixmo' and list(block)[:len(TIMM_COLUMNS)] == TIMM_COLUMNS
    assert block['top1'] + block['top1_err'] == pytest.approx(100) and block['temperature'] == 1.0


def test_a_checkpoint_folder_gives_one_row_per_checkpoint(checkpoint, small_digits_dir, tmp_path, capsys):
    folder = tmp_path / 'run'
    folder.mkdir()
    torch.manual_seed(3)
    other = timm.create_model('cut_mixmo', num_classes=10, in_chans=1, **WRN)
    torch.save(dict(state_dict=other.state_dict()), folder / 'checkpoint-10.pth.tar')
    (folder / 'checkpoint-2.pth.tar').write_bytes(checkpoint.read_bytes())
    (folder / 'notes.txt').write_text('not a checkpoint')
    out = tmp_path / 'rows.json'
    assert validate.main(['--model', 'cut_mixmo', '--model-kwargs', 'backbone=wrn28_2', 'depth=10', 'widen_factor=1',
                          *DIGITS, '--checkpoint', str(folder), '--data-dir', str(small_digits_dir), '--workers', '0',
                          '--results-file', str(out)]) == 0
    rows = json.loads(out.read_text())
    assert sorted(row['checkpoint'] for row in rows) == sorted(str(p) for p in folder.glob('*.pth.tar'))
    assert [row['top1'] for row in rows] == sorted((row['top1'] for row in rows), reverse=True)
    assert _result_block(capsys.readouterr().out) == rows
    empty = tmp_path / 'empty'
    empty.mkdir()
    assert validate.main(['--model', 'cut_mixmo', '--checkpoint', str(empty)]) == 2
    assert 'holding no checkpoint' in capsys.readouterr().err


def test_a_head_size_mismatch_names_both_sizes_and_the_num_classes_way_out(checkpoint, small_digits_dir, capsys):
    assert validate.main(['--model', 'cut_mixmo', '--model-kwargs', 'backbone=wrn28_2', 'depth=10', 'widen_factor=1',
                          '--num-classes', '12', '--in-chans', '1', '--img-size', '8', '--mean', '0.5', '--std',
                          '0.5', '--checkpoint', str(checkpoint), '--data-dir', str(small_digits_dir),
                          '--workers', '0']) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert 'its classifier head has 10 outputs (backbone.fc.bias (2, 10)) and the model 12 ((2, 12))' in err
    assert err.endswith("set --num-classes 10 (or --config with the run's args.yaml)")
