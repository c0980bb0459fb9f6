"""timm's own scripts on timm_mimo models (``python -m timm_mimo run SCRIPT``) and checkpoints laid out as timm's
train.py writes them (``epoch``, ``arch``, ``state_dict``, an ``argparse.Namespace`` under ``args``) in every
timm_mimo command: validate, export, analysis, deep ensembles, ``--initial-checkpoint``.

timm's train.py / validate.py live in timm's GitHub repository, not in its package: the scripts here are written by
the tests and behave like them where it matters (they look models up in timm's registry; the train script saves with
timm's own ``CheckpointSaver`` and writes ``args.yaml`` as timm's train.py does).
"""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import timm
import torch
import yaml

from timm_mimo import hub
from timm_mimo.cli import train_model, validate
from timm_mimo.evaluation import model_from_checkpoint

REPO = Path(__file__).resolve().parents[1]
DIGITS = ['--num-classes', '10', '--in-chans', '1', '--img-size', '8', '--mean', '0.5', '--std', '0.5']
MIMO = ['--model', 'cut_mixmo', '--model-kwargs', 'backbone=wrn28_2', 'depth=10', 'widen_factor=1']

FAKE_VALIDATE = '''
import argparse, json, sys
import timm, torch
parser = argparse.ArgumentParser()
parser.add_argument('--model', required=True)
parser.add_argument('--num-classes', type=int, default=None)
parser.add_argument('--exit-code', type=int, default=0)
args = parser.parse_args()
model = timm.create_model(args.model, num_classes=args.num_classes).eval()  # timm's registry, as validate.py
with torch.no_grad():
    logits = model(torch.randn(2, 3, 32, 32))
print(json.dumps(dict(model=args.model, shape=list(logits.shape), name=__name__, argv=sys.argv[1:])))
sys.exit(args.exit_code)
'''

FAKE_TRAIN = '''
import argparse, os
import timm, torch, yaml
from timm.data import ImageDataset
from timm.utils import CheckpointSaver, ParseKwargs
from torchvision import transforms
parser = argparse.ArgumentParser()
parser.add_argument('--data-dir', required=True)
parser.add_argument('--model', required=True)
parser.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs)
parser.add_argument('--num-classes', type=int, default=None)
parser.add_argument('--in-chans', type=int, default=None)
parser.add_argument('--img-size', type=int, default=None)
parser.add_argument('--mean', type=float, nargs='+', default=None)
parser.add_argument('--std', type=float, nargs='+', default=None)
parser.add_argument('--lr', type=float, default=0.05)
parser.add_argument('--output', required=True)
args = parser.parse_args()
torch.manual_seed(0)
model = timm.create_model(args.model, num_classes=args.num_classes, in_chans=args.in_chans, **args.model_kwargs)
data = ImageDataset(os.path.join(args.data_dir, 'train'), transform=transforms.Compose([
    transforms.Grayscale(), transforms.ToTensor(), transforms.Normalize(args.mean, args.std)]))
loader = torch.utils.data.DataLoader(data, batch_size=64, shuffle=True)
optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
model.train()
for step, (images, targets) in zip(range(3), loader):  # plain batches: every member sees the same image
    loss = torch.nn.functional.cross_entropy(model(images), targets)
    optimizer.zero_grad(); loss.backward(); optimizer.step()
os.makedirs(args.output, exist_ok=True)
with open(os.path.join(args.output, 'args.yaml'), 'w') as f:  # as timm's train.py writes it
    f.write(yaml.safe_dump(args.__dict__, default_flow_style=False))
saver = CheckpointSaver(model=model, optimizer=optimizer, args=args, checkpoint_dir=args.output,
                        recovery_dir=args.output, decreasing=False, max_history=1)
saver.save_checkpoint(epoch=0, metric=float(-loss))
print('trained', args.model)
'''


def write_script(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def run(*args, cwd=REPO, timeout=300):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env=dict(os.environ, OMP_NUM_THREADS='1'))


# ---- python -m timm_mimo run SCRIPT ---------------------------------------------------------------------------------

def test_a_timm_script_finds_timm_mimo_models_only_through_the_run_command(tmp_path):
    script = write_script(tmp_path, 'validate.py', FAKE_VALIDATE)
    alone = run(script, '--model', 'cut_mixmo_wrn28_2', cwd=tmp_path)
    assert alone.returncode != 0 and 'Unknown model' in alone.stderr  # what a timm script does on its own
    proc = run('-m', 'timm_mimo', 'run', script, '--model', 'cut_mixmo_wrn28_2', '--num-classes', '7')
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == dict(model='cut_mixmo_wrn28_2', shape=[2, 7], name='__main__',
                       argv=['--model', 'cut_mixmo_wrn28_2', '--num-classes', '7'])
    argv = sys.argv[:]
    assert hub.main(['run', str(script), '--model', 'resnet18', '--exit-code', '3']) == 3  # the script's status
    assert sys.argv == argv  # restored after the script


def test_run_command_errors_are_one_line(tmp_path, capsys):
    assert hub.main(['run', str(tmp_path / 'nope.py'), '--model', 'x']) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: run: script '{tmp_path / 'nope.py'}' does not exist (give the path of a timm script, e.g. "
        "validate.py from a checkout of timm's repository)"]
    assert hub.main(['run']) == 2
    assert capsys.readouterr().err.startswith('error: usage: python -m timm_mimo run SCRIPT')


# ---- checkpoints written by timm's train.py ----------------------------------------------------------------------

@pytest.fixture(scope='module')
def timm_run(tmp_path_factory, small_digits_dir):
    """A MIMO model trained 3 steps by a timm-style train.py through ``python -m timm_mimo run``."""
    folder = tmp_path_factory.mktemp('timm_run')
    script = write_script(folder, 'train.py', FAKE_TRAIN)
    proc = run('-m', 'timm_mimo', 'run', script, '--data-dir', small_digits_dir, *MIMO, *DIGITS,
               '--output', folder / 'run')
    assert proc.returncode == 0, proc.stderr
    assert 'timm-mimo-train --model cut_mixmo' in proc.stderr  # the single-input warning names our trainer
    return folder / 'run'


def test_timm_train_checkpoint_has_timms_layout(timm_run):
    import argparse

    from timm_mimo.checkpoint import load_checkpoint_file
    with pytest.raises(Exception, match='Weights only load failed'):  # what weights_only alone does with it
        torch.load(timm_run / 'last.pth.tar', weights_only=True)
    state = load_checkpoint_file(str(timm_run / 'last.pth.tar'))
    assert {'epoch', 'arch', 'state_dict', 'optimizer', 'args', 'metric'} <= set(state)
    assert isinstance(state['args'], argparse.Namespace) and state['arch'] == 'cut_mixmo'


def test_timm_train_checkpoint_validates(timm_run, small_digits_dir, tmp_path, capsys):
    results = tmp_path / 'val.json'
    code = validate.main([*MIMO, *DIGITS, '--checkpoint', str(timm_run / 'last.pth.tar'), '--data-dir',
                          str(small_digits_dir), '--workers', '0', '--results-file', str(results)])
    assert code == 0, capsys.readouterr().err
    out = json.loads(results.read_text())
    # the same checkpoint through the library (architecture from the args.yaml that timm's train.py wrote)
    from timm.data import ImageDataset, resolve_data_config

    from timm_mimo.data import create_image_transform
    from timm_mimo.metrics import collect_member_logits, ensemble_metrics
    model = model_from_checkpoint(str(timm_run / 'last.pth.tar')).eval()
    transform = create_image_transform(resolve_data_config(dict(img_size=8, in_chans=1, mean=[0.5], std=[0.5]),
                                                           model=model), False)
    dataset = ImageDataset(str(small_digits_dir / 'validation'), transform=transform)
    logits, targets = collect_member_logits(model, torch.utils.data.DataLoader(dataset, batch_size=16),
                                            torch.device('cpu'))
    assert out['top1'] == round(ensemble_metrics(logits, targets)['top1'], 4) and out['num_images'] == 60
    # --config with timm's args.yaml: its model, data and normalisation flags
    results2 = tmp_path / 'val2.json'
    assert validate.main(['--config', str(timm_run / 'args.yaml'), '--checkpoint', str(timm_run / 'last.pth.tar'),
                          '--workers', '0', '--results-file', str(results2)]) == 0
    assert json.loads(results2.read_text())['top1'] == out['top1']


def test_timm_train_checkpoint_exports_from_its_namespace_alone(timm_run, tmp_path):
    run_dir = tmp_path / 'run'  # the checkpoint without the args.yaml beside it: the Namespace is all there is
    run_dir.mkdir()
    (run_dir / 'last.pth.tar').write_bytes((timm_run / 'last.pth.tar').read_bytes())
    assert hub.main(['export', '--checkpoint', str(run_dir / 'last.pth.tar'), '--out', str(tmp_path / 'out')]) == 0
    loaded = timm.create_model(f'local-dir:{tmp_path / "out"}', pretrained=True).eval()
    reference = model_from_checkpoint(str(timm_run / 'last.pth.tar')).eval()
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded.forward_members(x), reference.forward_members(x), rtol=0, atol=0)
    config = json.loads((tmp_path / 'out' / 'config.json').read_text())
    assert config['architecture'] == 'cut_mixmo' and config['model_args']['depth'] == 10
    assert config['pretrained_cfg']['input_size'] == [1, 8, 8]  # the run's input size, not the backbone's 32 px


def test_timm_train_checkpoint_in_the_other_commands(timm_run, tmp_path, small_digits_dir):
    from timm_mimo import analysis
    from timm_mimo.evaluation import CheckpointEnsemble
    path = str(timm_run / 'last.pth.tar')
    ensemble = CheckpointEnsemble([model_from_checkpoint(path), model_from_checkpoint(path)])
    assert ensemble.num_members == 2
    fresh = timm.create_model('cut_mixmo', backbone='wrn28_2', depth=10, widen_factor=1, num_classes=10, in_chans=1)
    train_model.load_initial_checkpoint(fresh, path)  # --initial-checkpoint
    torch.testing.assert_close(fresh.state_dict()['backbone.fc.weight'],
                               model_from_checkpoint(path).state_dict()['backbone.fc.weight'], rtol=0, atol=0)
    # the analysis command's --model form: the model kwargs come from the run (args.yaml, else the Namespace)
    (tmp_path / 'bare').mkdir()
    (tmp_path / 'bare' / 'last.pth.tar').write_bytes((timm_run / 'last.pth.tar').read_bytes())
    for checkpoint in (path, str(tmp_path / 'bare' / 'last.pth.tar')):
        out = tmp_path / f'analysis{len(os.listdir(tmp_path))}'
        assert analysis.main(['--model', 'cut_mixmo', '--checkpoint', checkpoint, '--out', str(out),
                              '--no-plots']) == 0
        assert 0.0 <= json.loads((out / 'analysis.json').read_text())['classifier_sharing_rate'] <= 1.0


def test_analysis_with_a_checkpoint_of_another_model_says_the_way_out(timm_run, tmp_path, capsys):
    from timm_mimo import analysis
    code = analysis.main(['--model', 'cut_mixmo', '--model-kwargs', 'depth=16', '--checkpoint',
                          str(timm_run / 'last.pth.tar'), '--out', str(tmp_path / 'a'), '--no-plots'])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1  # the kwargs recorded in timm's Namespace are checked
    assert 'was trained with --model-kwargs depth=10, not depth=16' in err and "--config with the run's" in err


def test_weights_only_still_refuses_other_objects(tmp_path, capsys):
    """The allow-list is the Namespace only: any other pickled object is still refused, with torch's reason whole."""
    import datetime
    torch.save(dict(state_dict={}, args=datetime.date(2020, 1, 1)), tmp_path / 'bad.pth.tar')
    (tmp_path / 'args.yaml').write_text(yaml.safe_dump(dict(model='cut_mixmo')))
    assert hub.main(['export', '--checkpoint', str(tmp_path / 'bad.pth.tar'), '--out', str(tmp_path / 'out')]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'torch.load(weights_only=True) refused to unpickle it' in err
    assert 'datetime.date' in err and err.endswith('.)') and not (tmp_path / 'out').exists()


def test_timm_train_checkpoint_resume_says_what_it_is(timm_run, small_digits_dir, tmp_path, capsys):
    """A run of timm's train.py is not a timm-mimo-train run (no batch-repetition sampler, plan or step state to
    continue): ``--resume`` refuses it with the two ways out, before any folder is made."""
    from timm_mimo.cli import train
    code = train.main([*MIMO, *DIGITS, '--data-dir', str(small_digits_dir), '--workers', '0', '--epochs', '2',
                       '--warmup-epochs', '0', '--output', str(tmp_path / 'out'), '--resume',
                       str(timm_run / 'last.pth.tar')])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "written by timm's train.py" in err and f'--initial-checkpoint {timm_run / "last.pth.tar"}' in err
    assert not (tmp_path / 'out').exists()
