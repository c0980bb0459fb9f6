"""train.py / validate.py end to end on real data (sklearn digits): learning, validation, DDP, resume, bad input."""
import csv
import glob
import os
import socket
import subprocess
import sys

import pytest
import timm
import torch
import yaml

from timm_mimo.cli import checkpoint_saver, resume, run_loop, train, train_model, validate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PYTHON = sys.executable
TORCHRUN = os.path.join(os.path.dirname(sys.executable), 'torchrun')
# a WRN-10-1 Cut-MixMo (78k parameters) on 8x8 gray digits
MODEL = ['--model', 'cut_mixmo', '--model-kwargs', 'backbone=wrn28_2', 'depth=10', 'widen_factor=1',
         '--num-classes', '10', '--in-chans', '1', '--img-size', '8', '--mean', '0.5', '--std', '0.5']
COMMON = ['--workers', '0', '--sched', 'multistep', '--warmup-epochs', '0', '--weight-decay', '3e-4', '--log-interval',
          '1000', '--seed', '7']


def run_args(data_dir, output, name, *extra):
    return [*MODEL, *COMMON, '--data-dir', str(data_dir), '--output', str(output), '--experiment', name, *extra]


def read_summary(run_dir):
    with open(os.path.join(run_dir, 'summary.csv')) as f:
        return list(csv.DictReader(f))


def state_dict(path):
    return torch.load(path, map_location='cpu', weights_only=True)['state_dict']


def test_mimo_training_learns_and_validate_reproduces_it(digits_dir, tmp_path):
    args = run_args(digits_dir, tmp_path, 'e2e', '-b', '32', '--batch-repeat', '2', '--crop-pad', '1', '--hflip', '0',
                    '--lr', '0.05', '--epochs', '2', '--decay-milestones', '1')
    proc = subprocess.run([PYTHON, 'train.py', *args], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert proc.returncode == 0, proc.stderr
    assert '*** Final' in proc.stdout and 'd_re' in proc.stdout
    run_dir = tmp_path / 'e2e'
    rows = read_summary(run_dir)
    assert len(rows) == 2
    logged = {k: float(rows[-1][f'eval_{k}']) for k in ('top1', 'loss', 'nll_c', 'top1_m0', 'd_re')}
    assert logged['top1'] > 70.0  # 10 classes: chance is 10 %
    saved = yaml.safe_load(open(run_dir / 'args.yaml'))
    assert saved['batch_repeat'] == 2 and saved['model'] == 'cut_mixmo'
    results_file = tmp_path / 'val.json'
    code = validate.main(['--config', str(run_dir / 'args.yaml'), '--checkpoint', str(run_dir / 'last.pth.tar'),
                          '--workers', '0', '-b', '100', '--results-file', str(results_file)])
    assert code == 0
    results = yaml.safe_load(open(results_file))
    for key, value in logged.items():  # the results file rounds as timm does (4 decimals)
        assert results[key] == pytest.approx(value, abs=5e-5 + 1e-6), key
    assert results['num_members'] == 2 and 'top1_m1' in results and 'disagreement' in results


def free_port() -> int:
    """A TCP port on localhost that nothing listens on right now (for torchrun's rendezvous)."""
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def test_ddp_two_processes_match_one_process_on_the_same_global_batch(digits_dir, tmp_path):
    # one global batch of 64 = 2 ranks x 32 = 1 process x 2 micro-batches of 32 (same shards, pairs, plans, pixel
    # CutMix partners from the whole dataset and random crops / flips: all seeded per shard, in the loader workers)
    args = ['-b', '32', '--batch-repeat', '2', '--crop-pad', '1', '--lr', '0.05', '--epochs', '1',
            '--decay-milestones', '5', '--val-split', '', '--mimo-cutmix', '1.0', '--workers', '1']
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.run([TORCHRUN, '--nproc_per_node', '2', '--master_port', str(free_port()), 'train.py',
                           *run_args(digits_dir, tmp_path, 'ddp', *args)],
                          cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert '2 process(es), global batch 64' in proc.stdout
    assert train.main(run_args(digits_dir, tmp_path, 'single', *args, '--grad-accum-steps', '2')) == 0
    ddp, single = state_dict(tmp_path / 'ddp' / 'last.pth.tar'), state_dict(tmp_path / 'single' / 'last.pth.tar')
    params = dict(timm.create_model('cut_mixmo', backbone='wrn28_2', depth=10, widen_factor=1, num_classes=10,
                                          in_chans=1).named_parameters())
    assert ddp.keys() == single.keys() and set(params) <= set(single)
    # Parameters only: BatchNorm running statistics are buffers that DDP broadcasts from rank 0 (its shard only), not
    # trained state. Tolerance: all-reduce and accumulation add the two shard gradients in different float32 orders
    # (~1e-7 relative per step), carried over 46 SGD steps.
    max_diff = max((ddp[key].double() - single[key].double()).abs().max().item() for key in params)
    assert max_diff < 1e-4
    moved = max((single[key].double() - params[key].detach().double()).abs().max().item() for key in params)
    assert moved > 1e-2  # the weights did train: the comparison is not between two copies of the initialisation


def test_killed_run_resumes_to_the_same_weights(digits_dir, tmp_path):
    args = ['-b', '64', '--batch-repeat', '2', '--crop-pad', '1', '--lr', '0.05', '--epochs', '2',
            '--decay-milestones', '1', '--mimo-cutmix', '1.0', '--input-repeat', '0.1']
    assert train.main(run_args(digits_dir, tmp_path, 'whole', *args)) == 0
    # the interrupted run loads with 2 persistent workers, the whole one in-process: shards do not depend on who
    # loads them
    killed = subprocess.run([PYTHON, 'train.py', *run_args(digits_dir, tmp_path, 'cut', *args, '--workers', '2',
                                                            '--kill-after-steps', '60')],
                            cwd=REPO, capture_output=True, text=True, timeout=600,
                            # same thread count as this process: bitwise equality needs the same reduction order
                            env=dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads())))
    assert killed.returncode == -9  # SIGKILL in epoch 1 (46 steps per epoch)
    run_dir = tmp_path / 'cut'
    assert len(read_summary(run_dir)) == 1
    assert glob.glob(str(run_dir / '*.tmp')) == []
    assert torch.load(run_dir / 'last.pth.tar', weights_only=True)['epoch'] == 0
    assert train.main(run_args(digits_dir, tmp_path, 'cut', *args, '--workers', '2',
                               '--resume', str(run_dir / 'last.pth.tar'))) == 0
    resumed, whole = state_dict(run_dir / 'last.pth.tar'), state_dict(tmp_path / 'whole' / 'last.pth.tar')
    for key in whole:
        assert torch.equal(resumed[key], whole[key]), key
    assert read_summary(run_dir)[-1]['eval_top1'] == read_summary(tmp_path / 'whole')[-1]['eval_top1']


def test_checkpoint_is_never_half_written(tmp_path, monkeypatch):
    path = tmp_path / 'last.pth.tar'
    checkpoint_saver.save_checkpoint(str(path), {'epoch': 1, 'state_dict': {'w': torch.ones(3)}})

    def dying_save(obj, f, *args, **kwargs):
        with open(f, 'wb') as handle:
            handle.write(b'partial')
        raise OSError('disk full')

    monkeypatch.setattr(torch, 'save', dying_save)
    with pytest.raises(OSError):
        checkpoint_saver.save_checkpoint(str(path), {'epoch': 2, 'state_dict': {'w': torch.zeros(3)}})
    assert torch.load(path, weights_only=True)['epoch'] == 1  # the previous checkpoint is intact


def _one_line_error(capsys, code):
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith('error: '), captured.err
    return lines[0]


PLAIN = ['--model', 'test_resnet', '--num-classes', '10', '--in-chans', '1', '--img-size', '8']


@pytest.mark.parametrize('model, extra, message', [
    (MODEL, ['--data-dir', '/nonexistent/data'], 'does not exist'),
    (['--model', 'no_such_model'], [], 'is unknown'),
    (PLAIN, ['--mix', 'cutmix'], 'not a MIMO model'),
    (PLAIN, ['--num-members', '3'], 'not a MIMO model'),
    (MODEL, ['--mixup', '0.2'], '--mimo-mixup'),
    (MODEL, ['--mix', 'stars'], 'unknown mask kind'),
])
def test_train_bad_input_is_one_line_and_writes_nothing(digits_dir, tmp_path, capsys, model, extra, message):
    argv = [*model, *COMMON, '--data-dir', str(digits_dir), '--output', str(tmp_path), '--experiment', 'bad',
            '-b', '32', '--epochs', '1', *extra]
    line = _one_line_error(capsys, train.main(argv))
    assert message in line
    assert not (tmp_path / 'bad').exists()


def test_train_empty_data_dir(tmp_path, capsys):
    (tmp_path / 'empty').mkdir()
    line = _one_line_error(capsys, train.main(run_args(tmp_path / 'empty', tmp_path, 'bad', '--epochs', '1')))
    assert 'is empty' in line and not (tmp_path / 'bad').exists()


def test_validate_refuses_a_checkpoint_of_another_architecture(digits_dir, tmp_path, capsys):
    other = tmp_path / 'other.pth.tar'
    model = timm.create_model('test_resnet', num_classes=10, in_chans=1)
    torch.save({'state_dict': model.state_dict()}, other)
    results = tmp_path / 'val.csv'
    code = validate.main([*MODEL, '--data-dir', str(digits_dir), '--checkpoint', str(other), '--workers', '0',
                          '--results-file', str(results)])
    assert 'does not fit model' in _one_line_error(capsys, code)
    assert not results.exists()


def test_plain_timm_model_trains_with_timm_mixup(digits_dir, tmp_path):
    argv = ['--model', 'test_resnet', '--num-classes', '10', '--in-chans', '1', '--img-size', '8', '--mean', '0.5',
            '--std', '0.5', *COMMON, '--data-dir', str(digits_dir), '--output', str(tmp_path), '--experiment', 'plain',
            '-b', '128', '--epochs', '1', '--lr', '0.05', '--crop-pad', '1', '--mixup', '0.2', '--cutmix', '1.0']
    assert train.main(argv) == 0
    row = read_summary(tmp_path / 'plain')[0]
    assert 'eval_top1' in row and 'eval_d_re' not in row and 'train_binary_batches' not in row


def test_every_config_is_accepted_by_the_parser():
    from timm_mimo.recipes import list_configs
    configs = list_configs()
    assert len(configs) >= 150
    for name in configs:
        args = train.parse_args(['--config', name, '--data-dir', '/data'])
        assert timm.is_model(args.model), name
        assert (args.lr if args.lr is not None else args.lr_base) > 0 and args.epochs > 0


RESUME_CASES = [pytest.param(['--sched', sched, '--decay-epochs', '2', '--lr-stable-timescale', '1'], id=sched)
                for sched in ('cosine', 'tanh', 'step', 'multistep', 'poly', 'wsd', 'rsqrt', 'constant', 'none')]
RESUME_CASES += [
    # plateau: a tiny lr keeps top1 flat, so the patience counter decides when the lr drops (state beyond timm's)
    pytest.param(['--sched', 'plateau', '--patience-epochs', '1', '--decay-rate', '0.5', '--lr', '1e-6'],
                 id='plateau'),
    pytest.param(['--sched', 'cosine', '--amp'], id='amp-cpu-bfloat16'),
    pytest.param(['--sched', 'cosine', '--model-ema', '--model-ema-decay', '0.9'], id='ema'),
    pytest.param(['--sched', 'step', '--decay-epochs', '1', '--sched-on-updates', '--warmup-epochs', '1'],
                 id='step-on-updates-warmup'),
    pytest.param(['--sched', 'cosine', '--device-data'], id='device-data'),
    pytest.param(['--sched', 'cosine', '--no-prefetcher', '--reprob', '0.25'], id='no-prefetcher-random-erasing'),
    pytest.param(['--sched', 'cosine', '--reprob', '0.25'], id='prefetcher-random-erasing'),
]


@pytest.mark.parametrize('extra', RESUME_CASES)
def test_interrupted_run_resumes_exactly_for_every_schedule(small_digits_dir, tmp_path, monkeypatch, extra):
    """A run stopped after epoch 1 and resumed ends bit-identical to the uninterrupted run (weights, EMA, lr, rows)."""
    argv = [*MODEL, '--workers', '0', '--log-interval', '1000', '--seed', '3', '-b', '32', '--batch-repeat', '2',
            '--crop-pad', '1', '--lr', '0.05', '--warmup-epochs', '0', '--epochs', '4', '--mimo-cutmix', '1.0',
            '--data-dir', str(small_digits_dir), '--output', str(tmp_path), *extra]
    assert train.main([*argv, '--experiment', 'whole']) == 0
    real_write_summary = checkpoint_saver.write_summary

    def stop_after_epoch_1(path, epoch, row):
        real_write_summary(path, epoch, row)
        if epoch == 1:
            raise KeyboardInterrupt  # as a user's Ctrl-C after the epoch-1 checkpoint

    monkeypatch.setattr(run_loop, 'write_summary', stop_after_epoch_1)
    assert train.main([*argv, '--experiment', 'cut']) == 130
    monkeypatch.setattr(run_loop, 'write_summary', real_write_summary)
    cut = tmp_path / 'cut'
    assert torch.load(cut / 'last.pth.tar', weights_only=True)['epoch'] == 1
    assert train.main([*argv, '--experiment', 'cut', '--resume', str(cut / 'last.pth.tar')]) == 0
    whole = torch.load(tmp_path / 'whole' / 'last.pth.tar', weights_only=True)
    resumed = torch.load(cut / 'last.pth.tar', weights_only=True)
    for key in ('state_dict', 'state_dict_ema'):
        assert (key in whole) == (key in resumed)
        for name, value in whole.get(key, {}).items():
            assert torch.equal(resumed[key][name], value), (key, name)
    assert resumed['optimizer']['param_groups'][0]['lr'] == whole['optimizer']['param_groups'][0]['lr']
    assert resumed['scheduler'] == whole['scheduler']  # the whole schedule state, counters included
    assert read_summary(cut) == read_summary(tmp_path / 'whole')
    if 'plateau' in extra:  # the lr did drop during the run: the patience state was exercised
        assert whole['optimizer']['param_groups'][0]['lr'] < 1e-6


def test_plateau_state_keeps_the_patience_counter():
    # timm's PlateauLRScheduler.state_dict() keeps only best / last_epoch: a resume in the middle of a patience
    # window would restart the count and drop the lr one epoch late
    from timm.scheduler import create_scheduler_v2

    def plateau():
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        return create_scheduler_v2(optimizer, sched='plateau', num_epochs=10, patience_epochs=1, decay_rate=0.5,
                                   warmup_epochs=0, plateau_mode='max')[0], optimizer

    whole, whole_opt = plateau()
    for epoch, metric in enumerate([0.5, 0.5, 0.5], start=1):
        whole.step(epoch, metric)
    assert whole_opt.param_groups[0]['lr'] == 0.5  # two epochs without improvement > patience 1
    first, first_opt = plateau()
    first.step(1, 0.5)
    first.step(2, 0.5)
    state = resume.scheduler_state(first)
    resumed, resumed_opt = plateau()
    resumed_opt.load_state_dict(first_opt.state_dict())
    resume.load_scheduler_state(resumed, state)
    resumed.step(3, 0.5)
    assert resumed_opt.param_groups[0]['lr'] == 0.5


def test_pretrained_path_loads_a_backbone_file_into_the_mimo_model(tmp_path):
    """``--pretrained-path FILE`` (timm's flag, implying ``--pretrained``): the backbone's body and stem from the file
    (the stem split over the M encoders), the classifier left fresh as in timm."""
    from safetensors.torch import save_file
    torch.manual_seed(0)
    backbone = timm.create_model('wrn28_2', depth=10, widen_factor=1, num_classes=10)
    save_file(backbone.state_dict(), str(tmp_path / 'wrn.safetensors'))
    args = train.parse_args(['--model', 'cut_mixmo', '--model-kwargs', 'backbone=wrn28_2', 'depth=10', 'widen_factor=1',
                             '--num-classes', '10', '--pretrained-path', str(tmp_path / 'wrn.safetensors'),
                             '--data-dir', str(tmp_path)])
    model = train_model.create_train_model(args)
    state = model.state_dict()
    body = {k: v for k, v in backbone.state_dict().items() if not k.startswith(('conv_stem.', 'fc.'))}
    assert all(torch.equal(state[f'backbone.{k}'], v) for k, v in body.items())
    torch.testing.assert_close(model.encoders.member_weight.sum(dim=0), backbone.conv_stem.weight)
