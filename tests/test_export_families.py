"""An export reproduces its run for every model family: ``validate.py --model local-dir:<export>`` gives the metrics
that ``validate.py --checkpoint`` gives on the same split (preprocessing, class names and the members travel)."""
import json
import os

import pytest
from test_fuzz import write_colour_folder

from timm_mimo import hub
from timm_mimo.cli import train, validate, validation

FAMILIES = {
    'single': ['--model', 'wrn28_2', '--model-kwargs', 'depth=10', 'widen_factor=1'],
    'cut_mixmo': ['--model', 'cut_mixmo', '--model-kwargs', 'backbone=wrn28_2', 'depth=10', 'widen_factor=1'],
    'mixshare': ['--model', 'mixshare', '--model-kwargs', 'backbone=wrn28_2', 'depth=10', 'widen_factor=1',
                 'unmixing=fadeout', 'fadeout_epochs=1'],
    'mixvit': ['--model', 'mixvit_convit_gpsa5_ca2', '--model-kwargs', 'embed_dim=32', 'num_heads=2', 'depth=2',
               'depth_token_only=1', 'img_size=16', '--opt', 'adamw', '--lr', '1e-3'],
    'naive_mimo_vit': ['--model', 'mimo_vit_convit_gpsa5_ca2', '--model-kwargs', 'embed_dim=32', 'num_heads=2',
                       'depth=2', 'depth_token_only=1', 'img_size=16', '--opt', 'adamw', '--lr', '1e-3'],
}
COLUMNS = ('top1', 'loss', 'ece')


@pytest.fixture(scope='module')
def colour_data(tmp_path_factory):
    return write_colour_folder(str(tmp_path_factory.mktemp('colours')))


@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_local_dir_export_scores_as_the_checkpoint(family, colour_data, tmp_path):
    argv = [*FAMILIES[family], '--num-classes', '4', '--img-size', '16', '--crop-pad', '2', '--workers', '0', '-b',
            '8', '--epochs', '1', '--warmup-epochs', '0', '--sched', 'cosine', '--log-interval', '1000', '--seed', '1',
            '--data-dir', colour_data, '--output', str(tmp_path), '--experiment', 'run']
    assert train.main(argv) == 0
    checkpoint = str(tmp_path / 'run' / 'last.pth.tar')
    out = tmp_path / 'export'
    assert hub.main(['export', '--checkpoint', checkpoint, '--out', str(out)]) == 0
    config = json.loads((out / 'config.json').read_text())
    assert config['label_names'] == ['blue', 'green', 'red', 'yellow']
    common = ['--data-dir', colour_data, '--workers', '0', '-b', '8']
    from_checkpoint = validation.validate(validate.parse_args(
        ['--config', str(tmp_path / 'run' / 'args.yaml'), '--checkpoint', checkpoint, *common]))
    from_export = validation.validate(validate.parse_args(['--model', f'local-dir:{out}', *common]))
    assert os.path.isfile(out / 'model.safetensors')
    assert from_export['num_members'] == from_checkpoint['num_members']
    assert [round(from_export[key], 4) for key in COLUMNS] == [round(from_checkpoint[key], 4) for key in COLUMNS]


def test_hub_export_preprocessing_is_read_from_the_hub_config(tmp_path, monkeypatch):
    """``hf-hub:<repo>[@revision]`` reads the export's eval transform from its config.json as ``local-dir:`` does."""
    import huggingface_hub

    from timm_mimo.export_preprocessing import KEY, exported_crop_pad
    config = tmp_path / 'config.json'
    config.write_text(json.dumps({'architecture': 'cut_mixmo', KEY: {'crop_pad': 4}}))
    asked = []
    monkeypatch.setattr(huggingface_hub, 'hf_hub_download',
                        lambda repo_id, filename, revision=None: asked.append((repo_id, filename, revision)) or
                        str(config))
    assert exported_crop_pad('hf-hub:user/model@v1', None) == 4 and asked == [('user/model', 'config.json', 'v1')]
    assert exported_crop_pad('hf-hub:user/model', 2) == 2  # the flag wins
    assert exported_crop_pad('local-dir:' + str(tmp_path), None) == 4
    assert exported_crop_pad('cut_mixmo', None) is None

    def offline(*args, **kwargs):
        raise OSError('offline')
    monkeypatch.setattr(huggingface_hub, 'hf_hub_download', offline)
    assert exported_crop_pad('hf-hub:user/model', None) is None
