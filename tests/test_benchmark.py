"""benchmark.py: pairing a MIMO model with its backbone, the tensor-memory tracker, the CSV, flags and bad input."""
import csv
import os
import sys

import pytest
import timm
import torch
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import benchmark  # noqa: E402
from benchmarks.models import (  # noqa: E402
    LiveTensorBytes,
    add_arguments,
    cost_targets,
    create_pair,
    explain_train_forward,
    peak_memory_mb,
)

TINY = ['--model-kwargs', 'backbone=wrn28_2', 'depth=10', 'widen_factor=1']
LOOP_DATA = [*TINY, '--num-classes', '10', '--in-chans', '1', '--img-size', '8', '--mean', '0.5', '--std', '0.5',
             '--crop-pad', '1', '--val-split', '']
FAST = ['-b', '4', '--rounds', '1', '--min-seconds', '0.02', '--num-warm-iter', '1', '--num-classes', '10']


def parse(*argv):
    import argparse
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_live_tensor_bytes_counts_the_peak_of_live_storages():
    def toy():
        a = torch.zeros(1000, 1000)  # 4,000,000 bytes
        b = a + 1  # 8,000,000 live
        del a
        return (b * 2).sum()  # b and b * 2 live: 8,000,000 again (+ 4 bytes for the sum)

    tracker = LiveTensorBytes()
    with tracker:
        toy()
    assert tracker.peak == 8_000_000 + 4 or tracker.peak == 8_000_000
    held = torch.zeros(250_000)  # 1,000,000 bytes counted from the start
    tracker = LiveTensorBytes()
    tracker.track([held, held[:10], 'not a tensor'])  # a view shares its storage: counted once
    assert tracker.current == 1_000_000
    with tracker:
        toy()
    assert 9_000_000 <= tracker.peak <= 9_000_004


def test_peak_memory_matches_torch_mem_tracker_on_a_train_step():
    from torch.distributed._tools.mem_tracker import MemTracker
    torch.manual_seed(0)
    model = timm.create_model('wrn28_2', depth=10, widen_factor=1, num_classes=10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))

    def step():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    ours = peak_memory_mb(step, model, optimizer)
    tracker = MemTracker()
    tracker.track_external(model, optimizer)
    with tracker:
        step()
    reference = tracker.get_tracker_snapshot('peak')[torch.device('cpu')]['Total'] / 2 ** 20
    assert ours == pytest.approx(reference, rel=1e-6)
    params_mb = sum(p.numel() for p in model.parameters()) * 4 / 2 ** 20
    assert ours > 2 * params_mb  # weights + momentum + activations


def test_create_pair_gives_the_backbone_the_architecture_kwargs():
    model, backbone = create_pair('cut_mixmo', parse('--num-members', '3', '--num-classes', '7', *TINY))
    assert model.num_members == 3 and backbone.num_classes == 7
    assert backbone.pretrained_cfg['architecture'] == 'wrn28_2' and len(backbone.stages) == len(model.backbone.stages)
    assert sum(p.numel() for p in backbone.parameters()) < 100_000  # WRN-10-1, not WRN-28-2
    plain, none = create_pair('resnet18', parse('--num-classes', '5'))
    assert none is None and plain.num_classes == 5
    mixvit, convit = create_pair('mixvit_convit_gpsa5_ca2', parse('--model-kwargs', 'depth=3'))
    assert type(convit).__name__ != type(mixvit).__name__ and convit.num_classes == mixvit.num_classes
    _, alone = create_pair('cut_mixmo', parse('--no-backbone', *TINY))
    assert alone is None


def test_cost_targets_by_model_kind():
    cnn = timm.create_model('cut_mixmo', backbone='wrn28_2', depth=10, widen_factor=1)
    assert cost_targets(cnn) == {'ratio_infer_samples_per_sec': ('>=', 0.97), 'ratio_infer_gmacs': ('<=', 1.01),
                                 'ratio_train_samples_per_sec': ('>=', 0.95), 'ratio_train_peak_mem_mb': ('<=', 1.05)}
    convit = timm.create_model('mixvit_convit_gpsa5_ca2', depth=3)
    assert cost_targets(convit)['ratio_infer_gmacs'] == ('<=', 1.10)
    assert 'ratio_infer_samples_per_sec' not in cost_targets(convit)
    cait = timm.create_model('mixvit_cait_xxs24', depth=2, img_size=32, patch_size=8)
    assert cost_targets(cait)['ratio_infer_gmacs'] == ('<=', 1.04)


def test_benchmark_writes_timm_columns_ratios_and_targets(tmp_path, capsys):
    results = tmp_path / 'bench.csv'
    code = benchmark.main(['--model', 'cut_mixmo', *TINY, *FAST, '--threads', '1', '--explain',
                           '--results-file', str(results)])
    assert code == 0
    rows = list(csv.DictReader(open(results)))
    assert [row['model'] for row in rows] == ['wrn28_2', 'cut_mixmo']
    for column in ('param_count', 'infer_samples_per_sec', 'infer_step_time', 'infer_batch_size', 'infer_img_size',
                   'infer_gmacs', 'train_samples_per_sec', 'train_step_time', 'train_batch_size', 'train_img_size',
                   'infer_peak_mem_mb', 'train_peak_mem_mb'):
        assert float(rows[0][column]) > 0 and float(rows[1][column]) > 0, column
    mimo = rows[1]
    assert mimo['backbone'] == 'wrn28_2' and mimo['num_members'] == '2'
    assert float(mimo['ratio_infer_gmacs']) == pytest.approx(float(mimo['infer_gmacs']) / float(rows[0]['infer_gmacs']),
                                                             rel=1e-3)
    assert 1.0 <= float(mimo['ratio_param_count']) < 1.1
    assert mimo['targets'].count('OK') + mimo['targets'].count('MISS') == 4
    assert mimo['train_graph_breaks'] == '0'  # the MIMO CNN training forward compiles as one graph
    assert 'cost targets of cut_mixmo vs wrn28_2' in capsys.readouterr().out


def test_inference_only_model_list_and_compile_flags(tmp_path):
    names = tmp_path / 'models.txt'
    names.write_text('# CIFAR models\nresnet18  # a plain timm model: measured alone\n\n')
    results = tmp_path / 'bench.csv'
    code = benchmark.main(['--model-list', str(names), '--bench', 'inference', '--img-size', '32', *FAST,
                           '--no-memory', '--channels-last', '--amp', '--torchcompile', 'eager',
                           '--results-file', str(results)])
    assert code == 0
    rows = list(csv.DictReader(open(results)))
    assert len(rows) == 1 and rows[0]['model'] == 'resnet18' and rows[0]['infer_img_size'] == '32'
    assert 'train_samples_per_sec' not in rows[0] and 'infer_peak_mem_mb' not in rows[0]


def test_mixvit_training_forward_compiles_as_one_graph():
    # the eager-only masks check no longer splits the graph (it did three times)
    model = timm.create_model('mixvit_convit_gpsa5_ca2', depth=3, num_classes=10)
    explanation = explain_train_forward(model)
    assert (explanation['graph_count'], explanation['graph_break_count']) == (1, 0), explanation['break_reasons']


@pytest.mark.parametrize('argv, message', [
    (['--model', 'no_such_model'], 'unknown model(s) no_such_model'),
    ([], 'no model given'),
    (['--model-list', 'missing.txt'], "--model-list file 'missing.txt' does not exist"),
    (['--model', 'resnet18', '--amp-dtype', 'float16'], '--amp-dtype needs --amp'),
    (['--model', 'resnet18', '--torchcompile-mode', 'reduce-overhead'], 'add --torchcompile (inductor)'),
    (['--model', 'resnet18', '--torchcompile', 'inductor', '--torchcompile-mode', 'bogus'],
     "--torchcompile-mode 'bogus': not an inductor mode; use one of"),
    (['--model', 'resnet18', '--torchcompile', 'aot_eager', '--torchcompile-mode', 'max-autotune'],
     "--torchcompile 'aot_eager' would ignore it"),
    (['--model', 'resnet18', '--torchcompile', 'bogus'], "--torchcompile 'bogus': not a torch.compile backend"),
    (['loop', '--model', 'cut_mixmo', '--', '--data-dir', 'no/such/dir'], "data dir 'no/such/dir' does not exist"),
    (['loop', '--model', 'cut_mixmo', '--', '--torchcompile-mode', 'reduce-overhead'], 'add --torchcompile'),
    (['loop', '--model', 'cut_mixmo', '--steps', '15', '--', '--workers', '2'],
     '--steps 15 with --workers 2: the batches the workers have in progress when a round starts could hide up to 13 %'),
])
def test_bad_input_is_one_line(argv, message, capsys):
    assert benchmark.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count('\n') == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the CPU-only refusal')
def test_cuda_device_refused_on_cpu(capsys):
    assert benchmark.main(['--model', 'resnet18', '--device', 'cuda']) == 2
    assert 'CUDA is not available' in capsys.readouterr().err


@pytest.mark.parametrize('argv', [['--steps', '0'], ['--rounds', '0'], ['--batch-repeat', '0'],
                                  ['--warmup-steps', '-1'], ['--loader-share', '0'], ['--loader-share', '1.5'],
                                  ['--data-delay-ms', '-1'], ['--data-delay-ms', 'slow'],
                                  ['--data-delay-ms', '5', '--loader-share', '0.4']])
def test_loop_mode_counts_are_checked_by_the_parser(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        benchmark.main(['loop', '--model', 'cut_mixmo', *argv])
    assert exit_info.value.code == 2
    assert f'argument {argv[-2]}: ' in capsys.readouterr().err


@pytest.mark.parametrize('family', ['cnn', 'mixvit', 'loader', 'loop'])
def test_family_subcommands_still_parse(family, capsys):
    with pytest.raises(SystemExit) as exit_info:
        benchmark.main([family, '--help'])
    assert exit_info.value.code == 0
    assert f'benchmark.py {family}' in capsys.readouterr().out


def test_loop_mode_measures_the_real_loop_of_both_sides(small_digits_dir, tmp_path, capsys):
    """benchmark.py loop: the MIMO model and its backbone (architecture kwargs only) through the training command's
    loader, workers and prefetcher, the isolated step beside it, and the ratios."""
    results = tmp_path / 'loop.csv'
    assert benchmark.main(['loop', '--model', 'cut_mixmo', '--batch-repeat', '2', '--steps', '10', '--warmup-steps',
                           '1', '--rounds', '1', '--results-file', str(results), '--', *LOOP_DATA,
                           '--data-dir', str(small_digits_dir), '-b', '8', '--workers', '1']) == 0
    out = capsys.readouterr().out
    assert 'ratio_loop_to_step' in out and 'best of 1 alternating rounds' in out
    assert 'after pulling the 5 batches the loader can hold queued' in out  # prefetch 4 x 1 worker + the prefetcher's
    with open(results) as f:
        rows = list(csv.DictReader(f))
    assert [row['model'] for row in rows] == ['wrn28_2', 'cut_mixmo']
    assert rows[0]['mimo'] == 'False' and rows[1]['mimo'] == 'True' and rows[1]['batch_repeat'] == '2'
    for row in rows:
        assert row['drained_batches'] == '5' and row['timed_steps'] == '10' and float(row['data_delay_ms']) == 0
        for column in ('loop_samples_per_sec', 'step_samples_per_sec', 'loader_samples_per_sec',
                       'loader_batches_per_sec', 'ratio_loader_to_step'):
            assert float(row[column]) > 0, column
        # one batch a step: the loader's samples per second are its batches per second times B
        assert float(row['loader_samples_per_sec']) == pytest.approx(8 * float(row['loader_batches_per_sec']),
                                                                       rel=1e-3)
    assert float(rows[1]['ratio_epoch_to_backbone']) > 0



def test_loop_mode_reads_device_data_drawn_an_epoch_ahead(small_digits_dir, tmp_path, capsys):
    """benchmark.py loop with --device-data: the batches are cut from draws made an epoch ahead, so nothing is queued
    per batch (no drain) and a loop round crosses an epoch's end as training does (11 steps per epoch here, 3 x 12
    timed); a per-batch data delay has no batch to slow there and is refused with the way out."""
    results = tmp_path / 'device.csv'
    flags = ['loop', '--model', 'cut_mixmo', '--batch-repeat', '2', '--steps', '12', '--warmup-steps', '1',
             '--rounds', '3', '--no-backbone', '--results-file', str(results)]
    shared = ['--', *LOOP_DATA, '--data-dir', str(small_digits_dir), '-b', '16', '--workers', '1', '--device-data']
    assert benchmark.main([*flags, *shared]) == 0
    with open(results) as f:
        row = next(csv.DictReader(f))
    assert row['drained_batches'] == '0' and int(row['steps_per_epoch']) < 12 * 3
    assert float(row['ratio_loop_to_step']) > 0 and float(row['loader_samples_per_sec']) > 0
    capsys.readouterr()
    assert benchmark.main([*flags, '--data-delay-ms', '5', *shared]) == 2
    err = capsys.readouterr().err
    assert 'with --device-data the batches are cut on the device' in err and 'drop --device-data' in err

def test_loop_mode_is_not_fooled_by_the_loader_queue(small_digits_dir, tmp_path):
    """--data-delay-ms 150 with 2 workers: the sleeps alone allow one batch per 75 ms at best, and the loop and the
    loader alone are timed at or above that floor. Timed on the queue the loader holds (4 x 2 batches + 1 in the
    prefetcher, produced during the step round), 20 steps would read about 11 / 20 of it (0.72 measured so)."""
    results = tmp_path / 'delay.csv'
    assert benchmark.main(['loop', '--model', 'cut_mixmo', '--batch-repeat', '2', '--steps', '20', '--warmup-steps',
                           '2', '--rounds', '2', '--no-backbone', '--data-delay-ms', '150', '--results-file',
                           str(results), '--', *LOOP_DATA, '--data-dir', str(small_digits_dir), '-b', '4',
                           '--workers', '2']) == 0
    with open(results) as f:
        row = next(csv.DictReader(f))
    assert float(row['data_delay_ms']) == 150 and row['drained_batches'] == '9'
    assert float(row['loop_step_time']) >= 0.9 * 75 and float(row['loader_step_time']) >= 0.9 * 75
    assert float(row['ratio_loop_to_delay_floor']) >= 0.9 and float(row['ratio_loader_to_delay_floor']) >= 0.9
    assert float(row['ratio_loop_to_step']) < 1


def test_loop_mode_sees_a_slow_data_path(small_digits_dir, tmp_path):
    """A loader delivering 0.4x the step rate (--loader-share 0.4: a delay slept in the workers, set from each
    round's step time) is seen: loop / step <= 0.45, and the loop is no faster than its loader measured alone. A round
    timed on the loader's full queue (2 workers x 4 + 1 batches, as the earlier benchmark did) would get 9 of its 40
    batches for free and read about 0.4 x 40 / 31 = 0.52."""
    results = tmp_path / 'slow.csv'
    assert benchmark.main(['loop', '--model', 'cut_mixmo', '--batch-repeat', '2', '--steps', '40', '--warmup-steps',
                           '2', '--rounds', '2', '--no-backbone', '--loader-share', '0.4', '--results-file',
                           str(results), '--', *LOOP_DATA, '--data-dir', str(small_digits_dir), '-b', '8',
                           '--workers', '2']) == 0
    with open(results) as f:
        row = next(csv.DictReader(f))
    loop, loader = float(row['ratio_loop_to_step']), float(row['ratio_loader_to_step'])
    assert row['drained_batches'] == '9' and float(row['data_delay_ms']) > 0
    assert 0.3 <= loader <= 0.5, loader  # the delay took effect (the undelayed digits loader outruns the step)
    assert loop <= 0.45 and loop <= 1.12 * loader, (loop, loader)


def test_ops_mode_counts_what_the_mimo_step_adds_and_no_host_reads(capsys):
    """benchmark.py ops: the GPU encoder path adds no conv (one grouped conv), the CPU path one conv and its backward;
    no host read in either step."""
    from benchmarks import ops
    parser = __import__('argparse').ArgumentParser()
    ops.add_arguments(parser)
    rows = ops.run(parser.parse_args(['--model', 'cut_mixmo', '-b', '2', '--img-size', '8', *TINY]))
    by_side = {row['side']: row for row in rows}
    assert by_side['backbone']['host_reads'] == 0
    gpu, cpu = by_side['GPU path (grouped conv)'], by_side['CPU path (M convs)']
    assert gpu['host_reads'] == 0 and cpu['host_reads'] == 0
    assert 'convolution' not in gpu['extra'] and 'convolutionx1' in cpu['extra']
    assert 0 < gpu['extra_compute_ops'] < cpu['extra_compute_ops'] <= 24  # whatever the backbone's depth
    assert 'index_selectx2' in gpu['extra']  # the pairing gather of images and targets


def test_model_table_is_set_up_as_training_runs():
    """The train step of the table: timm-mimo-train's optimizer construction (its defaults: SGD Nesterov, momentum 0.9,
    weight decay 2e-5 off biases and norms), a GradScaler under float16, the training's AMP rule (--amp alone:
    bfloat16 on the CPU), cudnn.benchmark and TF32 on CUDA only (checked here by forcing the CUDA branch)."""
    from benchmarks.models import _Setup, _train_step
    from timm_mimo.cli import optim_factory, run_loop, train
    setup = _Setup(parse('--amp', '--device', 'cpu'))
    assert setup.amp_dtype == torch.bfloat16 and not setup.grad_scaler and setup.create_scaler() is None
    setup = _Setup(parse('--amp', '--amp-dtype', 'float16', '--device', 'cpu', '--lr', '0.1'))
    assert setup.amp_dtype == torch.float16 and setup.grad_scaler  # run as asked, said in the rows: not bfloat16
    model = timm.create_model('wrn28_2', depth=10, widen_factor=1, num_classes=10)
    optimizer = setup.create_optimizer(model)
    reference = optim_factory.create_optimizer(train.parse_args(['--lr', '0.1']), model)
    assert type(optimizer) is type(reference) and len(optimizer.param_groups) == len(reference.param_groups) == 2
    for ours, theirs in zip(optimizer.param_groups, reference.param_groups):
        assert {k: v for k, v in ours.items() if k != 'params'} == {k: v for k, v in theirs.items() if k != 'params'}
    assert optimizer.param_groups[0]['nesterov'] and [g['weight_decay'] for g in optimizer.param_groups] == [0, 2e-5]
    x, y = torch.randn(2, 3, 16, 16), torch.tensor([1, 2])
    step = _train_step(model, x, y, parse('--lr', '0.1'), setup)
    before = model.fc.weight.detach().clone()
    step()  # float16 autocast on the CPU, scaled backward, the scaler's step
    assert torch.isfinite(model.fc.weight).all() and not torch.equal(before, model.fc.weight)
    assert setup.in_effect(step.optimizer)['optimizer'] == 'SGD (default)'
    effect = setup.in_effect()
    assert (effect['amp'], effect['grad_scaler'], effect['cudnn_benchmark'], effect['tf32']) == (
        'float16', True, 'n/a (cpu)', 'n/a (cpu)')
    # the CUDA branch is training's own (run_loop.set_cuda_backends): cudnn.benchmark and TF32 for float32 work
    saved = torch.backends.cudnn.benchmark, torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cudnn.benchmark = False
        torch.set_float32_matmul_precision('highest')
        run_loop.set_cuda_backends(torch.device('cpu'))
        assert not torch.backends.cudnn.benchmark and torch.get_float32_matmul_precision() == 'highest'
        run_loop.set_cuda_backends(torch.device('cuda'))
        assert torch.backends.cudnn.benchmark and torch.get_float32_matmul_precision() == 'high'
        assert torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cudnn.benchmark = saved[0]
        torch.set_float32_matmul_precision(saved[1])
        torch.backends.cudnn.allow_tf32 = saved[2]
    assert not _Setup(parse('--amp', '--device', 'cpu')).tf32


def test_model_table_rows_say_what_was_in_effect(tmp_path, capsys):
    results = tmp_path / 'bench.csv'
    assert benchmark.main(['--model', 'cut_mixmo', *TINY, *FAST, '--bench', 'train', '--no-memory', '--amp',
                           '--device', 'cpu', '--results-file', str(results)]) == 0
    rows = list(csv.DictReader(open(results)))
    for row in rows:
        assert (row['amp'], row['grad_scaler'], row['optimizer'], row['cudnn_benchmark'], row['torchcompile']) == (
            'bfloat16', 'False', 'SGD (default)', 'n/a (cpu)', 'off')
    out = capsys.readouterr().out
    assert 'in effect: amp=bfloat16, grad_scaler=False, optimizer=SGD (default)' in out
