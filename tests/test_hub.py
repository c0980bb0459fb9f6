"""Hub round trips through local folders (``local-dir:``), ``torch.hub`` via hubconf.py, and the offline hint."""
import importlib.util
import json
from pathlib import Path

import pytest
import timm
import torch

import timm_mimo
from timm_mimo import hub

REPO = Path(__file__).resolve().parents[1]
TINY = dict(backbone='wrn28_2', depth=10, widen_factor=1, num_classes=5, in_chans=1)


@pytest.fixture(scope='module')
def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model('cut_mixmo', num_members=3, **TINY).eval()


def test_save_pretrained_then_local_dir_rebuilds_identical_model(tmp_path, tiny_model):
    folder = hub.save_pretrained(tiny_model, tmp_path / 'export')
    assert (folder / 'model.safetensors').is_file()
    config = json.loads((folder / 'config.json').read_text())
    assert config['architecture'] == 'cut_mixmo'
    assert config['model_args']['backbone'] == 'wrn28_2' and config['model_args']['num_members'] == 3

    loaded = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
    assert loaded.num_members == 3
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded.forward_members(x), tiny_model.forward_members(x), rtol=0, atol=0)
    again = hub.load_pretrained(folder).eval()  # a bare folder path works too
    with torch.no_grad():
        torch.testing.assert_close(again(x), tiny_model(x), rtol=0, atol=0)


def test_load_pretrained_refuses_folder_without_config(tmp_path):
    with pytest.raises(FileNotFoundError, match='config.json'):
        hub.load_pretrained(tmp_path)


def test_offline_hub_download_says_how_to_load_from_a_file(monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    import huggingface_hub.constants as hf_constants
    monkeypatch.setattr(hf_constants, 'HF_HUB_OFFLINE', True)
    with pytest.raises(RuntimeError, match=r'pretrained_cfg_overlay=dict\(file='):
        hub.load_pretrained('hf-hub:timm_mimo/does-not-exist-offline')


def test_offline_hint_names_both_offline_routes():
    hint = hub.offline_hint('cut_mixmo_wrn28_10')
    assert "pretrained_cfg_overlay=dict(file='/path/to/model.safetensors')" in hint
    assert 'local-dir:' in hint


def test_hubconf_exposes_every_registered_model_through_torch_hub():
    spec = importlib.util.spec_from_file_location('hubconf', REPO / 'hubconf.py')
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    names = [name for name in dir(hubconf) if callable(getattr(hubconf, name)) and not name.startswith('_')]
    for module in ('mimo_cnn', 'mixvit', 'cifar_resnet'):
        registered = timm.list_models(module=module)
        assert registered and set(registered) <= set(names)
    model = torch.hub.load(str(REPO), 'cut_mixmo_wrn28_2', source='local', num_classes=7)
    assert isinstance(model, timm_mimo.MimoContract)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 7)
