"""Hub round trips (``save_pretrained`` -> ``local-dir:``) for every family and constructor argument, model cards, the
train.py checkpoint export, honest pretrained tags, the one offline message, config.json errors and torch.hub."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import yaml
from model_checks import timm_mimo_names

import timm_mimo
from timm_mimo import hub
from timm_mimo.models.mixvit import BACKBONE_TAG_PREFIX

REPO = Path(__file__).resolve().parents[1]
TINY_WRN = dict(depth=10, widen_factor=1, num_classes=5)
TINY_CAIT = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=5)
TINY_CONVIT = dict(img_size=16, patch_size=4, embed_dim=8, num_heads=4, depth=2, local_up_to_layer=1, num_classes=6)
TINY_PAPER_CONVIT = dict(img_size=16, embed_dim=48, num_heads=3, depth=2, depth_token_only=1, num_classes=5)


def our_names(pretrained: bool = False):
    """Every timm_mimo name (with its tags when ``pretrained``)."""
    return timm_mimo_names(include_tags=True, pretrained=pretrained)


def assert_round_trip(model: torch.nn.Module, folder: Path, x: torch.Tensor) -> dict:
    """Save, rebuild through ``local-dir:``, compare member logits bit for bit; returns config.json."""
    model.eval()
    hub.save_pretrained(model, folder)
    loaded = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
    assert type(loaded) is type(model) and loaded.num_members == model.num_members
    with torch.no_grad():
        torch.testing.assert_close(loaded.forward_members(x), model.forward_members(x), rtol=0, atol=0)
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    return json.loads((folder / 'config.json').read_text())


# ---- round trips ---------------------------------------------------------------------------------------------------

def test_round_trip_generic_cnn_any_backbone_three_members(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model('cut_mixmo', backbone='wrn28_2', num_members=3, in_chans=1, **TINY_WRN)
    config = assert_round_trip(model, tmp_path / 'cnn', torch.randn(2, 1, 16, 16))
    assert config['architecture'] == 'cut_mixmo'
    assert config['model_args']['backbone'] == 'wrn28_2' and config['model_args']['num_members'] == 3
    again = hub.load_pretrained(tmp_path / 'cnn').eval()  # a bare folder path works too
    assert again.num_members == 3


def test_round_trip_generic_cnn_default_backbone_and_separate_inference(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model('linear_mixmo', num_classes=4)  # default backbone: resnet18
    model.inference = 'separate'
    config = assert_round_trip(model, tmp_path / 'default', torch.randn(1, 3, 32, 32))
    assert config['model_args']['backbone'] == 'resnet18' and config['model_args']['inference'] == 'separate'


def test_round_trip_paper_cnn_name(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model('mimo_preact_resnet18', widen_factor=1, num_classes=3, num_members=2)
    config = assert_round_trip(model, tmp_path / 'paper', torch.randn(1, 3, 32, 32))
    assert config['architecture'] == 'mimo_preact_resnet18'


def test_round_trip_generic_mixvit_non_default_source_and_sum_inference(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model('mixvit', backbone='cait_xxs24_224', source='encoding', num_members=3, **TINY_CAIT)
    with torch.no_grad():  # random source parameters, so a lost `source` or member count changes the logits
        model.source_attribution.weight.normal_(0, 0.5)
    model.inference = 'sum'
    config = assert_round_trip(model, tmp_path / 'mixvit', torch.randn(2, 3, 32, 32))
    assert config['architecture'] == 'mixvit'
    args = config['model_args']
    assert args['backbone'] == 'cait_xxs24_224' and args['source'] == 'encoding' and args['inference'] == 'sum'


def test_round_trip_generic_mixvit_default_backbone(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model('mixvit', depth=1, depth_token_only=1, embed_dim=48, num_heads=3, num_classes=5)
    model.inference = 'single'
    model.single_member = 1
    config = assert_round_trip(model, tmp_path / 'mixvit_default', torch.randn(2, 3, 32, 32))
    assert config['architecture'] == 'mixvit' and config['model_args']['backbone'] == 'convit_gpsa5_ca2'
    assert config['model_args']['single_member'] == 1


@pytest.mark.parametrize('name, kwargs', [
    ('mixvit_convit_gpsa5_ca2', dict(TINY_PAPER_CONVIT, num_members=3)),
    ('mixvit_cait_xxs24', TINY_CAIT),
])
def test_round_trip_mixvit_paper_names(tmp_path, name, kwargs):
    torch.manual_seed(0)
    model = timm.create_model(name, **kwargs)
    model.inference = 'alternating'
    config = assert_round_trip(model, tmp_path / name, torch.randn(1, 3, kwargs['img_size'], kwargs['img_size']))
    assert config['architecture'] == name and config['model_args']['inference'] == 'alternating'


@pytest.mark.parametrize('name, kwargs', [
    ('mimo_vit', dict(TINY_CONVIT, backbone='convit_tiny')),
    ('cutmix_only_mixmo_vit', dict(TINY_CONVIT, backbone='convit_tiny')),
    ('mixmo_vit_convit_gpsa5_ca2', TINY_PAPER_CONVIT),
])
def test_round_trip_naive_vits_keep_the_inference_mode(tmp_path, name, kwargs):
    torch.manual_seed(0)
    model = timm.create_model(name, **kwargs)
    model.inference = 'sum' if model.inference == 'separate' else 'separate'
    config = assert_round_trip(model, tmp_path / name, torch.randn(2, 3, 16, 16))
    assert config['architecture'] == name and config['model_args']['inference'] == model.inference


# ---- model cards and export ----------------------------------------------------------------------------------------

def test_save_pretrained_writes_a_model_card(tmp_path):
    model = timm.create_model('cut_mixmo', backbone='wrn28_2', **TINY_WRN)
    hub.save_pretrained(model, tmp_path / 'card', model_card_kwargs=dict(
        repo_id='someone/cut-mixmo-wrn', train_args=dict(model='cut_mixmo', dataset='torch/cifar100', lr=0.1,
                                                          batch_repeat=1),
        results=dict(top1=81.5, member_top1=79.9, loss=0.71, ece=0.021)))
    card = (tmp_path / 'card' / 'README.md').read_text()
    from huggingface_hub import ModelCard
    data = ModelCard.load(tmp_path / 'card' / 'README.md').data
    assert data.library_name == 'timm'
    assert {'timm_mimo', 'mimo', 'cut_mixmo', 'arxiv:2103.06132'} <= set(data.tags)
    assert data.datasets == ['cifar100']  # the data set's name, not timm's reader prefix or a path
    assert 'import timm_mimo' in card and hub.INSTALL_LINE in card
    assert "timm.create_model('hf-hub:someone/cut-mixmo-wrn', pretrained=True)" in card
    assert 'backbone: `wrn28_2`' in card and '| lr | `0.1` |' in card
    assert '| member_top1 | top-1 accuracy, mean of the members | 79.9 | % |' in card
    assert '| loss | negative log-likelihood (NLL), ensemble | 0.71 | nats |' in card


def test_model_card_names_the_mixvit_paper(tmp_path):
    model = timm.create_model('mixvit_cait_xxs24', **TINY_CAIT)
    card = str(hub.model_card(model))
    assert 'mixvit' in card and 'openreview.net/forum?id=pOq1HuMI8Dz' in card and 'import timm_mimo' in card


def _train_run(tmp_path: Path, ema: bool) -> tuple:
    """A train.py-style run folder: args.yaml and a checkpoint dict (state_dict, optionally state_dict_ema)."""
    torch.manual_seed(0)
    args = dict(model='cut_mixmo', model_kwargs=dict(backbone='wrn28_2', depth=10, widen_factor=1),
                num_classes=5, num_members=2, in_chans=None, dataset='', data_dir='/data/digits', epochs=3, lr=0.05,
                batch_repeat=1, mimo_mix_prob=0.5)
    (tmp_path / 'args.yaml').write_text(yaml.safe_dump(args))
    model = hub.model_from_train_args(args)
    ema_model = hub.model_from_train_args(args)
    state = dict(epoch=2, arch='cut_mixmo', state_dict={f'module.{k}': v for k, v in model.state_dict().items()})
    if ema:
        state['state_dict_ema'] = ema_model.state_dict()
    torch.save(state, tmp_path / 'model_best.pth.tar')
    (tmp_path / 'results.json').write_text(json.dumps(dict(top1=91.0, member_top1=88.5, nll_c=0.3)))
    return model.eval(), ema_model.eval()


def test_export_command_writes_a_loadable_folder_with_card(tmp_path):
    model, ema_model = _train_run(tmp_path, ema=True)
    x = torch.randn(2, 3, 16, 16)
    for use_ema, expected in ((False, model), (True, ema_model)):
        out = tmp_path / f'export_{use_ema}'
        argv = ['export', '--checkpoint', str(tmp_path / 'model_best.pth.tar'), '--args', str(tmp_path / 'args.yaml'),
                '--out', str(out), '--results', str(tmp_path / 'results.json')] + (['--use-ema'] if use_ema else [])
        assert hub.main(argv) == 0
        loaded = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
        with torch.no_grad():
            torch.testing.assert_close(loaded.forward_members(x), expected.forward_members(x), rtol=0, atol=0)
        card = (out / 'README.md').read_text()
        assert '| member_top1 | top-1 accuracy, mean of the members | 88.5 | % |' in card and '| epochs | `3` |' in card
        assert '/data/digits' not in card  # a local path is not the data set's name


def test_export_use_ema_without_ema_weights_is_one_line_error(tmp_path, capsys):
    _train_run(tmp_path, ema=False)
    argv = ['export', '--checkpoint', str(tmp_path / 'model_best.pth.tar'), '--args', str(tmp_path / 'args.yaml'),
            '--out', str(tmp_path / 'out'), '--use-ema']
    assert hub.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "has no 'state_dict_ema'" in err and 'without --use-ema' in err
    assert not (tmp_path / 'out').exists()


def test_export_runs_as_a_module_command(tmp_path):
    _train_run(tmp_path, ema=False)
    proc = subprocess.run([sys.executable, '-m', 'timm_mimo', 'export', '--checkpoint', str(tmp_path / 'nope.tar'),
                           '--args', str(tmp_path / 'args.yaml'), '--out', str(tmp_path / 'out')],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2 and 'Traceback' not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: checkpoint '{tmp_path / 'nope.tar'}' does not exist"]


# ---- honest pretrained tags ----------------------------------------------------------------------------------------

def test_every_pretrained_tag_is_a_timm_backbone_checkpoint():
    """A listed tag is ``backbone_<timm tag>`` and its source is that timm checkpoint's Hub repository."""
    tagged = our_names(pretrained=True)
    assert tagged, 'the MixViT backbone tags should be listed'
    for name in tagged:
        arch, tag = name.split('.', 1)
        cfg = timm.models.get_pretrained_cfg(name)
        assert tag.startswith(BACKBONE_TAG_PREFIX) and cfg.hf_hub_id and not cfg.url, name
        owner, timm_name = cfg.hf_hub_id.split('/', 1)
        assert owner == 'timm' and timm_name.endswith('.' + tag.removeprefix(BACKBONE_TAG_PREFIX)), name
        timm_cfg = timm.models.get_pretrained_cfg(timm_name)
        assert timm_cfg is not None and timm_cfg.hf_hub_id == cfg.hf_hub_id, name  # a checkpoint timm publishes


def test_names_without_published_weights_have_no_source():
    listed = set(our_names(pretrained=True))
    for name in our_names():
        if name not in listed:
            assert not hub.has_pretrained_source(timm.models.get_pretrained_cfg(name)), name
    assert not timm.list_pretrained('*mixmo*') and not timm.list_pretrained('mimo*')


@pytest.mark.parametrize('name', ['cut_mixmo_wrn28_10', 'mixvit_cait_m24', 'mixmo_vit_convit_gpsa5_ca2',
                                  'mixvit_convit_gpsa5_ca2'])
def test_pretrained_true_without_weights_is_a_clear_error(name):
    with pytest.raises(ValueError, match=f"no pretrained weights exist for '{name}'.*"
                                         r"pretrained_cfg_overlay=dict\(file="):
        timm.create_model(name, pretrained=True)


# ---- the one offline message ---------------------------------------------------------------------------------------

@pytest.fixture
def offline(monkeypatch):
    import huggingface_hub.constants
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)


def test_offline_message_for_a_vit_name_names_repository_file_and_both_ways_out(offline):
    with pytest.raises(RuntimeError) as info:
        timm.create_model('mixvit_cait_xs24', pretrained=True, img_size=32, depth=1)
    message = str(info.value)
    assert 'timm/cait_xs24_384.fb_dist_in1k' in message and 'model.safetensors' in message
    assert "timm.create_model('mixvit_cait_xs24', pretrained=True, pretrained_cfg_overlay=dict(file=" in message
    assert hub.download_command('timm/cait_xs24_384.fb_dist_in1k', 'model.safetensors') in message
    assert len(message.splitlines()) == 1


def test_offline_message_for_a_cnn_name_names_the_backbone_checkpoint(offline):
    with pytest.raises(RuntimeError) as info:
        timm.create_model('cut_mixmo', backbone='resnet18', pretrained=True)
    message = str(info.value)
    assert "backbone='resnet18'" in message and 'pretrained_cfg_overlay=dict(file=' in message
    repo = timm.models.get_pretrained_cfg('resnet18').hf_hub_id
    assert repo in message and hub.download_command(repo, 'model.safetensors') in message


def test_offline_hf_hub_name_says_how_to_fetch_the_repository(offline):
    with pytest.raises(RuntimeError) as info:
        hub.load_pretrained('hf-hub:someone/does-not-exist-offline')
    assert hub.download_command('someone/does-not-exist-offline') in str(info.value)
    assert "local-dir:<folder>" in str(info.value)


def test_download_command_uses_the_installed_hub_client():
    command = hub.download_command('timm/resnet18.a1_in1k', 'model.safetensors', local_dir='weights')
    assert command.split()[0] in ('hf', 'huggingface-cli')
    assert command.endswith('download timm/resnet18.a1_in1k model.safetensors --local-dir weights')


# ---- config.json errors, package surface, torch.hub ----------------------------------------------------------------

def test_load_pretrained_refuses_folder_without_config(tmp_path):
    with pytest.raises(FileNotFoundError, match='config.json'):
        hub.load_pretrained(tmp_path)


@pytest.mark.parametrize('text, match', [
    ('{"architecture": "cut_mixmo",', 'is not valid JSON'),
    ('{"num_classes": 5}', 'has no "architecture"'),
    ('{"architecture": "not_a_model"}', "'not_a_model', which is not a registered timm model"),
])
def test_bad_config_json_is_an_error_naming_the_file(tmp_path, text, match):
    (tmp_path / 'config.json').write_text(text)
    for name in (tmp_path, f'local-dir:{tmp_path}'):
        with pytest.raises(ValueError, match=match) as info:
            hub.load_pretrained(name)
        assert str(tmp_path / 'config.json') in str(info.value)


def test_hub_is_reachable_after_import_timm_mimo():
    assert timm_mimo.hub.save_pretrained is hub.save_pretrained
    code = 'import timm_mimo; print(timm_mimo.hub.save_pretrained.__name__, timm_mimo.hub.push_to_hub.__name__)'
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0 and proc.stdout.split() == ['save_pretrained', 'push_to_hub']


def test_hubconf_exposes_every_registered_model_through_torch_hub():
    spec = importlib.util.spec_from_file_location('hubconf', REPO / 'hubconf.py')
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    names = [name for name in dir(hubconf) if callable(getattr(hubconf, name)) and not name.startswith('_')]
    assert set(n.split('.')[0] for n in our_names()) <= set(names)
    model = torch.hub.load(str(REPO), 'cut_mixmo_wrn28_2', source='local', num_classes=7)
    assert isinstance(model, timm_mimo.MimoContract)
    assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 7)


def test_push_to_hub_uploads_weights_config_and_our_card(monkeypatch):
    """The upload itself is huggingface_hub's; checked here: what folder it is given (no network needed)."""
    import huggingface_hub
    uploaded = {}

    class FakeApi:
        def __init__(self, token=None, library_name=None):
            assert library_name == 'timm'

        def create_repo(self, repo_id, private=False, exist_ok=False):
            return type('RepoUrl', (), dict(repo_id=f'user/{repo_id}'))()

        def upload_folder(self, repo_id, folder_path, commit_message):
            uploaded.update(repo_id=repo_id, files={p.name: p.read_bytes() for p in Path(folder_path).iterdir()})
            return 'commit-url'

    monkeypatch.setattr(huggingface_hub, 'HfApi', FakeApi)
    model = timm.create_model('mixvit_cait_xxs24', **TINY_CAIT)
    assert hub.push_to_hub(model, 'mixvit-tiny') == 'commit-url'
    assert uploaded['repo_id'] == 'user/mixvit-tiny'
    assert set(uploaded['files']) == {'model.safetensors', 'config.json', 'README.md'}
    card = uploaded['files']['README.md'].decode()
    assert "timm.create_model('hf-hub:user/mixvit-tiny', pretrained=True)" in card and 'import timm_mimo' in card
    assert json.loads(uploaded['files']['config.json'])['architecture'] == 'mixvit_cait_xxs24'


# ---- cards that describe the run -----------------------------------------------------------------------------------

CLASSES = ['ant', 'bee', 'cat', 'dog', 'eel']


def _card_snippet(card: str) -> str:
    """The card's Python usage block."""
    return card.split('```python\n', 1)[1].split('```', 1)[0]


def test_the_exported_cards_usage_snippet_runs_as_written(tmp_path, monkeypatch, capsys):
    torch.manual_seed(0)
    args = dict(model='cut_mixmo', model_kwargs=dict(backbone='wrn28_2', depth=10, widen_factor=1), num_classes=5,
                num_members=2, img_size=16, dataset='', epochs=1, lr=0.05, batch_repeat=1, mimo_mix_prob=0.5,
                class_names=CLASSES)
    (tmp_path / 'args.yaml').write_text(yaml.safe_dump(args))
    model = hub.model_from_train_args(args)
    torch.save(dict(epoch=0, arch='cut_mixmo', state_dict=model.state_dict()), tmp_path / 'last.pth.tar')
    assert hub.main(['export', '--checkpoint', str(tmp_path / 'last.pth.tar'), '--out', str(tmp_path / 'out')]) == 0
    card = (tmp_path / 'out' / 'README.md').read_text()
    snippet = _card_snippet(card)
    assert "Image.open('image.jpg')" in snippet and 'softmax' in snippet and 'topk' in snippet
    from PIL import Image
    monkeypatch.chdir(tmp_path)
    Image.new('RGB', (40, 30), (200, 30, 90)).save('image.jpg')
    capsys.readouterr()
    exec(snippet.replace('/path/to/this/folder', str(tmp_path / 'out')), {})  # as written, but for the two paths
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 5 and {line.split(':')[0] for line in printed} == set(CLASSES)
    assert sum(float(line.split(': ')[1].removesuffix(' %')) for line in printed) == pytest.approx(100, abs=0.3)


def test_a_timm_train_checkpoints_card_says_single_input_and_tags_no_mimo_paper(tmp_path):
    import argparse
    torch.manual_seed(0)
    timm_args = argparse.Namespace(model='cut_mixmo', model_kwargs=dict(backbone='wrn28_2', depth=10, widen_factor=1),
                                   num_classes=5, pretrained=False, initial_checkpoint='', img_size=16, dataset='',
                                   epochs=2, lr=0.05, opt='sgd', momentum=0.9, mixup=0.0, model_ema=False,
                                   model_ema_decay=0.9998)
    model = hub.model_from_train_args(vars(timm_args))
    torch.save(dict(epoch=1, arch='cut_mixmo', state_dict=model.state_dict(), args=timm_args), tmp_path / 'c.pth.tar')
    out = tmp_path / 'out'
    assert hub.main(['export', '--checkpoint', str(tmp_path / 'c.pth.tar'), '--out', str(out)]) == 0
    card = (out / 'README.md').read_text()
    from huggingface_hub import ModelCard
    tags = set(ModelCard.load(out / 'README.md').data.tags)
    assert 'single-input network' in card and "script: timm's train.py" in card
    assert 'multi-input multi-output (MIMO) ensemble' not in card
    assert 'arxiv:2103.06132' not in tags and 'mimo' not in tags and 'cut_mixmo' in tags
    assert '- initialised from scratch' in card and '| model_ema_decay |' not in card  # EMA was off
    assert '## MIMO training' not in card and '| mixing |' not in card


def test_card_of_a_pretrained_path_run_names_the_backbone_the_mixing_in_effect_and_the_costs(tmp_path):
    model = timm.create_model('cut_mixmo', backbone='resnet18', num_classes=10)
    args = dict(model='cut_mixmo', model_kwargs=dict(backbone='resnet18'), num_classes=10, pretrained=False,
                pretrained_path='/somewhere/model.safetensors', batch_repeat=1, mimo_mix_prob=0.5, mimo_cutmix=None,
                model_ema=False, model_ema_decay=0.9998, epochs=3, img_size=32)
    results = dict(top1=55.0, top5=90.0, loss=1.25, ece=3.5, split='test', dataset='torch/cifar10')
    text = str(hub.model_card(model, train_args=args, results=results))
    from huggingface_hub import ModelCard
    data = ModelCard(text).data
    assert data.base_model == 'timm/resnet18.a1_in1k'
    assert '`model.safetensors` (`--pretrained-path`, in place of the published `timm/resnet18.a1_in1k`)' in text
    # the mixing in effect comes from the model's defaults (Cut-MixMo: CutMix, α 2, p 0.5 decaying, r 3)
    assert '| mixing | `cutmix` masks |' in text and '| κ | ~ Beta(α, α), α = 2 |' in text
    assert '| p (mixed batch probability) | 0.5, descending to 0' in text and '| r (loss-weight root) | 3 |' in text
    assert '| mimo_mix_prob |' not in text and '| model_ema_decay |' not in text and '| pretrained |' not in text
    metrics = {result.metric_type: result.metric_value for result in data.eval_results}
    assert metrics == {'accuracy': 55.0, 'top_5_accuracy': 90.0, 'nll': 1.25, 'ece': 3.5}
    assert data.eval_results[0].dataset_split == 'test' and data.eval_results[0].dataset_type == 'cifar10'
    params, gmacs = hub.model_complexity(model, (3, 32, 32))
    assert params == sum(p.numel() for p in model.parameters())
    # ResNet-18's convolutions and fc at 32 px: about 1.82 GMACs at 224 px scale by (32/224)^2, plus M heads
    assert 0.03 < gmacs < 0.05
    assert f'- GMACs: {gmacs:.3g} (one 32x32 image)' in text and '@misc{rw2019timm' in text


def test_exported_files_are_readable_by_others_as_the_umask_allows(tmp_path):
    import os
    import stat
    _train_run(tmp_path, ema=False)
    old = os.umask(0o022)
    try:
        assert hub.main(['export', '--checkpoint', str(tmp_path / 'model_best.pth.tar'), '--out',
                         str(tmp_path / 'out')]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / 'out').stat().st_mode) == 0o755
    assert {stat.S_IMODE(item.stat().st_mode) for item in (tmp_path / 'out').iterdir()} == {0o644}
