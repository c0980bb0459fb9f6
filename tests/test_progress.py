"""Training progress as timm's: step / data time, image rates, ETAs of the epoch and the run, evaluation lines with a
running top-1, the AMP state in the header and args.yaml as it ran, Python logging to stdout and ``--log-file``,
summary.csv values rounded; and the pieces on hand-built inputs."""
import contextlib
import csv
import io
import re

import pytest
import torch
import yaml

from timm_mimo.cli import train
from timm_mimo.cli.progress import StepTimes, collect_logged, format_duration, rounded_summary

TINY = ['--model', 'cut_mixmo', '--model-kwargs', 'backbone=wrn28_2', 'depth=10', 'widen_factor=1']
DIGITS = ['--num-classes', '10', '--in-chans', '1', '--img-size', '8', '--mean', '0.5', '--std', '0.5']


@pytest.fixture(scope='module')
def run_log(small_digits_dir, tmp_path_factory):
    """A 2-epoch run (8 steps of 32 images per epoch, a log line every 4) with --amp on the CPU and --log-file."""
    out = tmp_path_factory.mktemp('progress')
    argv = [*TINY, *DIGITS, '--data-dir', str(small_digits_dir), '--output', str(out), '--experiment', 'run',
            '--workers', '0', '-b', '32', '--epochs', '2', '--log-interval', '4', '--amp', '--log-file', 'train.log',
            '--lr', '0.05', '--seed', '1', '--warmup-epochs', '0']
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert train.main(argv) == 0
    return buffer.getvalue(), out / 'run'


def test_the_training_log_has_step_and_data_time_rates_and_etas(run_log):
    printed, _ = run_log
    lines = [line for line in printed.splitlines() if line.startswith('Train: ')]
    assert len(lines) == 6  # steps 1, 5 and 8 of each epoch
    pattern = (r'Train: \d \[ +\d+/8 \( *\d+%\)\]  loss [\d.]+ \([\d.]+\)  lr [\d.e+-]+  '
               r'time [\d.]+s \([\d.]+s avg\)  data [\d.]+s \([\d.]+s avg\)  [\d,]+ img/s \([\d,]+ epoch\)  '
               r'ETA epoch \d+:\d\d:\d\d, run \d+:\d\d:\d\d$')
    assert all(re.match(pattern, line) for line in lines), lines
    assert lines[2].split('ETA epoch ')[1].startswith('0:00:00,')  # the last step: nothing left of the epoch
    assert lines[-1].endswith('ETA epoch 0:00:00, run 0:00:00')  # the last step of the run


def test_each_evaluation_logs_its_running_top1_and_the_header_the_amp_state(run_log):
    printed, folder = run_log
    evals = [line for line in printed.splitlines() if re.match(r'Eval: \d \[', line)]
    assert len(evals) == 2 * 1 and all(re.search(r'top-1 [\d.]+ % \(running, 60 images\)', line) for line in evals)
    assert 'AMP on, bfloat16 on cpu' in printed.splitlines()[0] or any(
        'AMP on, bfloat16 on cpu' in line for line in printed.splitlines() if line.startswith('Model cut_mixmo'))
    recorded = yaml.safe_load((folder / 'args.yaml').read_text())
    assert recorded['amp'] is True and recorded['amp_dtype'] == 'bfloat16'  # what ran, not the float16 default
    logged = (folder / 'train.log').read_text()
    assert 'timm_mimo.train: [    INFO] - Train: 1 [    8/8 (100%)]' in logged and 'ETA epoch' in logged


def test_summary_values_are_rounded_as_timm_rounds_results(run_log):
    _, folder = run_log
    with open(folder / 'summary.csv') as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for key, value in row.items():
            if key not in ('epoch', 'lr') and '.' in value:
                assert len(value.split('.')[1]) <= 4, (key, value)
    assert rounded_summary({'eval_top1': 55.00000000000001, 'lr': 1.2345678e-05, 'epoch': 3}) == \
        {'eval_top1': 55.0, 'lr': 1.23457e-05, 'epoch': 3}


def test_step_times_on_a_hand_driven_clock(monkeypatch):
    now = [100.0]
    monkeypatch.setattr('timm_mimo.cli.progress.time.perf_counter', lambda: now[0])
    times = StepTimes(steps_per_epoch=10, remaining_epochs=2, eval_seconds=5.0)

    def batches():
        for _ in range(10):
            now[0] += 0.25  # waiting for the batch
            yield 'batch'

    wrapped = times.wrap(batches())
    for _ in range(4):
        next(wrapped)
        now[0] += 0.75  # the step itself
        times.step_done(images=32)
    line = times.line(world_size=2)
    # 4 steps of 1 s each (0.25 s data): 6 steps left = 6 s; two more epochs of 10 s + 5 s evaluation each = 30 s
    assert line == ('time 1.000s (1.000s avg)  data 0.250s (0.250s avg)  64 img/s (64 epoch)  '
                    'ETA epoch 0:00:06, run 0:00:36')
    assert format_duration(90061) == '1 day, 1:01:01' and format_duration(float('nan')) == '?'


def test_collect_logged_gives_the_logits_and_a_running_top1():
    class Fixed(torch.nn.Module):
        """Predicts class 0 for every image: the running top-1 is the share of label 0 so far."""

        def forward(self, x):
            return torch.tensor([[1.0, 0.0]]).expand(x.shape[0], -1)

    loader = [(torch.zeros(2, 1), torch.tensor([0, 0])), (torch.zeros(2, 1), torch.tensor([1, 1])),
              (torch.zeros(1, 1), torch.tensor([0]))]
    lines = []
    logits, targets = collect_logged(Fixed(), loader, torch.device('cpu'), log_every=2, prefix='Eval: 0',
                                     log=lines.append)
    assert logits.shape == (5, 1, 2) and targets.tolist() == [0, 0, 1, 1, 0]
    assert [line.rsplit('  ', 1)[0] for line in lines] == ['Eval: 0 [   2/3]  top-1 50.00 % (running, 4 images)',
                                                           'Eval: 0 [   3/3]  top-1 60.00 % (running, 5 images)']
