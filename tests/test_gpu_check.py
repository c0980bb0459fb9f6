"""benchmarks/gpu_check.py: the GPU argument lists through the real parsers, the CPU mode's summary, the part runner
(process groups killed on a timeout), a missing torchrun, the 10-minute projection from real epochs, bad input."""
import csv
import json
import os
import subprocess
import sys
import time

import pytest
import torch
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks import gpu_check  # noqa: E402
from timm_mimo.cli import train_args  # noqa: E402
from timm_mimo.cli.args import CliError  # noqa: E402


def gpu_parts(tmp_path, torchrun='/opt/bin/torchrun', workers=8):
    return gpu_check.plan_parts(False, str(tmp_path / 'cifar10'), '', 'test', workers, str(tmp_path / 'out'),
                                str(tmp_path / 'work'), sys.executable, torchrun)


def by_name(parts, start):
    return next(part for part in parts if part.name.startswith(start))


def test_gpu_argument_lists_parse_with_the_commands_own_parsers(tmp_path):
    """Every GPU part's command line goes through the parser (and checks) of train.py / validate.py / benchmark.py:
    a wrong flag in the GPU check fails here, on the CPU."""
    parts = gpu_parts(tmp_path)
    # validate.py reads the float16 epoch's args.yaml: write it as train.py does (its recorded flag values)
    fp16 = by_name(parts, 'train.py epoch')
    fp16_args = gpu_check.parse_part_arguments(fp16.argv)
    run_dir = tmp_path / 'work' / 'epoch-fp16'
    run_dir.mkdir(parents=True)
    (run_dir / 'args.yaml').write_text(yaml.safe_dump(train_args.recorded_args(fp16_args)))
    parsed = {part.name: gpu_check.parse_part_arguments(part.argv) for part in parts}
    assert len(parsed) == 10
    # what each part is meant to run
    assert fp16.name == 'train.py epoch, --amp float16 + GradScaler'
    assert fp16_args.amp and fp16_args.amp_dtype == 'float16' and fp16_args.epochs == 1
    target = parsed[by_name(parts, '10-minute target').name]
    assert (target.model, target.batch_repeat, target.batch_size, target.device_data) == ('cut_mixmo_wrn28_2', 2, 64,
                                                                                         True)
    assert (target.torchcompile, target.torchcompile_mode, target.amp_dtype) == ('inductor', 'reduce-overhead',
                                                                                 'bfloat16')
    assert target.epochs == 3 and target.val_split == 'test'  # evaluation and checkpoints every epoch
    slow = parsed[by_name(parts, 'loop / step, slow data path').name]
    assert slow.loader_share == 0.4 and slow.steps >= 10 * slow.train.workers == 80
    reduce_overhead = parsed[by_name(parts, 'model table (--torchcompile inductor --torchcompile-mode').name]
    assert reduce_overhead.torchcompile_mode == 'reduce-overhead' and reduce_overhead.amp_dtype == 'bfloat16'
    torchrun = by_name(parts, 'torchrun')
    assert torchrun.argv[:4] == ['/opt/bin/torchrun', '--nproc_per_node', '1', '--standalone']
    # headline parts first: the eager model table, the real and the slow data path, the 10-minute target
    assert [part.headline for part in parts] == [True] * 4 + [False] * 6
    assert parts[0].name == 'model table (eager)' and parts[3].name.startswith('10-minute target')
    # a wrong flag is caught: in a train.py part, in a benchmark.py loop part's training flags, in the model table
    with pytest.raises((SystemExit, CliError)):
        gpu_check.parse_part_arguments([*fp16.argv, '--amp-dtype', 'fp16'])
    with pytest.raises((SystemExit, CliError)):
        gpu_check.parse_part_arguments([*slow_argv(parts), '--no-such-flag'])
    with pytest.raises((SystemExit, CliError)):
        gpu_check.parse_part_arguments([*parts[0].argv, '--torchcompile-mode', 'reduce-overhead'])


def slow_argv(parts):
    return by_name(parts, 'loop / step, slow data path').argv


def test_a_missing_torchrun_is_skipped_with_its_reason(tmp_path, monkeypatch):
    """No torchrun: the part is recorded as skipped with the reason, the others still run (here: all skipped by the
    spent budget, so nothing is started), and the JSON is written."""
    monkeypatch.setattr(gpu_check, 'find_torchrun', lambda python: None)
    monkeypatch.setattr(gpu_check.Check, 'MIN_PART_SECONDS', 10 ** 6)
    out = tmp_path / 'check'
    assert gpu_check.main(['--cpu', '--out', str(out), '--budget-minutes', '1']) == 1
    report = json.loads((out / 'gpu_check.json').read_text())
    statuses = {row['part']: row['status'] for row in report['parts']}
    assert len(statuses) == 10
    assert statuses['torchrun, 1 process (gloo)'] == 'skipped (no torchrun next to the interpreter or on PATH)'
    assert statuses['model table (--torchcompile inductor --torchcompile-mode reduce-overhead, train step)'] == \
        'n/a (reduce-overhead is CUDA graphs: GPU only)'
    assert sum(status.startswith('skipped (') and 'of the budget left' in status for status in statuses.values()) == 8
    assert report['summary'] == [] and report['machine']['torch'] == torch.__version__


def test_a_timeout_kills_the_whole_process_group(tmp_path):
    """A part that outlives its limit is ended with everything it started (a loader worker, torchrun's children)."""
    script = ('import subprocess, sys, time\n'
              'child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])\n'
              'print(child.pid, flush=True)\n'
              'time.sleep(120)\n')
    with open(tmp_path / 'log', 'w') as log:
        result = gpu_check.run_process([sys.executable, '-c', script], 3, dict(os.environ), log)
    assert result.status == 'timeout after 3s (process group killed)' and result.seconds < 3 + 2
    child = int(result.lines[0][1])
    for _ in range(50):  # the orphaned child is reaped by init once killed
        if not os.path.exists(f'/proc/{child}') or open(f'/proc/{child}/stat').read().split()[2] == 'Z':
            break
        time.sleep(0.1)
    else:
        pytest.fail(f'the part\'s child {child} is still running')


def test_a_command_that_cannot_start_is_recorded(tmp_path):
    with open(tmp_path / 'log', 'w') as log:
        result = gpu_check.run_process([str(tmp_path / 'no-such-command')], 5, dict(os.environ), log)
    assert result.status.startswith('not started (FileNotFoundError')


def test_the_target_is_projected_from_real_epochs(tmp_path):
    """Wall time from start-up to exit, plus the steady epoch time (median of the gaps between epoch ends, each with
    its evaluation and checkpoint) for the epochs not run."""
    start = 100.0
    lines = [(start + 4.0, 'Train: 0 [    1/1562 (  0%)]  loss 2.3\n'), (start + 9.0, 'Train: 0 [ 1562/1562]\n'),
             (start + 10.0, 'Eval: 0  top1 30.0\n'), (start + 12.0, 'Eval: 1  top1 40.0\n'),
             (start + 14.5, 'Eval: 2  top1 50.0\n'), (start + 14.6, '*** Final\n')]
    result = gpu_check.Result('ok', 15.0, lines, start, start + 15.0)
    assert gpu_check.epoch_times(result) == ([10.0, 12.0, 14.5], 15.0)
    (tmp_path / 'summary.csv').write_text('epoch,train_loss,eval_top1\n0,2.0,30.0\n1,1.5,40.0\n2,1.2,50.0\n')
    figures = {name: (value, op, bound) for name, value, op, bound, _ in
               gpu_check._target_figures(str(tmp_path), 3)(result)}
    assert figures['steady epoch s'] == (2.25, None, None)
    assert figures['projected 300 epochs min'] == (round((15.0 + 297 * 2.25) / 60, 2), '<=', 10.0)  # 11.39
    assert figures['start-up + first epoch s'][0] == 10.0 and figures['eval_top1 after these epochs'][0] == '50.0'
    with pytest.raises(ValueError, match='1 epoch'):
        gpu_check._target_figures(str(tmp_path), 3)(gpu_check.Result('ok', 11.0, lines[:3], start, start + 11.0))


@pytest.mark.parametrize('argv, message', [
    (['--cpu', '--out', '{file}'], "is a file: give a new or empty folder"),
    (['--cpu', '--out', '{full}'], 'already holds files'),
    (['--cpu', '--data-dir', '{missing}'], 'is not a folder'),
    (['--cpu', '--budget-minutes', '0'], '--budget-minutes 0: must be > 0'),
    (['--cpu', '--workers', '-1'], '--workers -1: must be >= 0'),
])
def test_bad_input_is_one_error_line_and_writes_nothing(argv, message, tmp_path, capsys):
    paths = dict(file=tmp_path / 'results.txt', full=tmp_path / 'full', missing=tmp_path / 'missing')
    paths['file'].write_text('keep me\n')
    paths['full'].mkdir()
    (paths['full'] / 'old.csv').write_text('keep me\n')
    before = sorted(p.name for p in tmp_path.rglob('*'))
    argv = [a.format(**paths) for a in argv]
    assert gpu_check.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and message in err and err.count('\n') == 1
    assert sorted(p.name for p in tmp_path.rglob('*')) == before and paths['file'].read_text() == 'keep me\n'


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the CPU-only refusal')
def test_gpu_sizes_without_cuda_are_refused(tmp_path, capsys):
    """The GPU sizes (B = 256 WRN-28-10) on a CPU would run for hours: refused before anything is written."""
    assert gpu_check.main(['--data-dir', str(tmp_path), '--out', str(tmp_path / 'check')]) == 2
    err = capsys.readouterr().err
    assert 'no CUDA device' in err and '--cpu' in err and err.count('\n') == 1
    assert not (tmp_path / 'check').exists()


def test_cpu_mode_runs_every_part_and_writes_the_summary(small_digits_dir, tmp_path, capsys):
    """benchmarks/gpu_check.py --cpu: the machine first, every part ok (reduce-overhead n/a on the CPU), the summary
    table on stdout and in gpu_check.json with each figure against its target; the CPU's float16 part says that it runs
    bfloat16."""
    out = tmp_path / 'check'
    assert gpu_check.main(['--cpu', '--data-dir', str(small_digits_dir), '--val-split', 'validation', '--out',
                           str(out)]) == 0
    stdout = capsys.readouterr().out
    assert stdout.startswith('machine: ') and '| part | figure | value | target | verdict |' in stdout
    machine = json.loads((out / 'machine.json').read_text())
    for key in ('torch', 'timm', 'cuda', 'cudnn', 'cpu', 'cpu_count', 'load_average', 'gpu', 'driver', 'commit'):
        assert key in machine, key
    report = json.loads((out / 'gpu_check.json').read_text())
    assert report['mode'] == 'cpu' and report['machine'] == machine
    statuses = [(row['part'], row['status']) for row in report['parts']]
    assert len(statuses) == 10 and all(status == 'ok' or status.startswith('n/a') for _, status in statuses), statuses
    assert statuses[0][0] == 'model table (eager)' and statuses[3][0].startswith('10-minute target: 2 real epochs')
    assert 'train.py epoch, --amp bfloat16 (CPU stand-in' in statuses[7][0]
    summary = {(row['part'], row['figure']): row for row in report['summary']}
    slow = summary[(statuses[2][0], 'cut_mixmo: loop / step, slow data path')]
    assert slow['target'] == '<= 0.45' and slow['verdict'] in ('OK', 'MISS')  # judged on the CPU too
    projected = summary[(statuses[3][0], 'projected 300 epochs min')]
    assert projected['target'] == '<= 10' and projected['verdict'] == 'n/a (cpu sizes)' and projected['value'] > 0
    step = summary[('model table (eager)', 'cut_mixmo: train step / backbone')]
    assert step['target'] == '>= 0.95' and float(step['value']) > 0
    assert ('validate.py', 'top1') in summary and (statuses[9][0], 'eval_top1') in summary
    with open(out / 'gpu_check.csv') as f:
        assert len(list(csv.DictReader(f))) == 10
    assert (out / 'gpu_check.log').read_text().count('$ ') == 10
    # the commands it ran wrote nothing outside --out and its temporary folder
    assert subprocess.run(['git', 'status', '--porcelain', '--', 'results/gpu_check'], cwd=REPO,
                          capture_output=True, text=True).stdout == ''


def test_machine_record_on_a_gpu(monkeypatch):
    """The CUDA branch of the machine record (GPU name, capability, memory, cuDNN, driver), with torch's CUDA queries
    and nvidia-smi stood in for."""
    from types import SimpleNamespace
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'get_device_properties', lambda i: SimpleNamespace(total_memory=80 * 2 ** 30))
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda i: 'NVIDIA H100 80GB HBM3')
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 1)
    monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda i: (9, 0))
    monkeypatch.setattr(torch.backends.cudnn, 'version', lambda: 91000)
    real = gpu_check._command_output
    monkeypatch.setattr(gpu_check, '_command_output',
                        lambda argv: '560.35.03\n' if argv[0] == 'nvidia-smi' else real(argv))
    record = gpu_check.machine_record()
    assert (record['gpu'], record['gpu_capability'], record['gpu_memory_gib'], record['cudnn'], record['driver']) == (
        'NVIDIA H100 80GB HBM3', '9.0', 80.0, 91000, '560.35.03')
    assert record['torch'] == torch.__version__ and record['cuda'] == torch.version.cuda


def test_a_terminated_check_ends_its_running_part_and_writes_its_answer(tmp_path):
    """SIGTERM to the check while a part runs: the part's whole process group ends too, and gpu_check.json holds the
    parts so far and the interruption."""
    import signal
    out = tmp_path / 'check'
    check = subprocess.Popen([sys.executable, os.path.join(REPO, 'benchmarks', 'gpu_check.py'), '--cpu', '--out',
                              str(out), '--data-dir', str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env=dict(os.environ, PYTHONPATH=REPO))
    for line in check.stdout:  # the first part has started
        if line.startswith('--- model table (eager)'):
            break
    time.sleep(1)
    part_pids = [int(pid) for pid in subprocess.run(['pgrep', '-f', str(out / 'models_eager.csv')],
                                                    capture_output=True, text=True).stdout.split()]
    assert part_pids
    check.send_signal(signal.SIGTERM)
    assert check.wait(timeout=60) == 130
    check.stdout.close()
    time.sleep(0.5)
    for pid in part_pids:
        assert not os.path.exists(f'/proc/{pid}') or open(f'/proc/{pid}/stat').read().split()[2] == 'Z', pid
    report = json.loads((out / 'gpu_check.json').read_text())
    assert report['parts'][-1]['status'] == 'interrupted'
