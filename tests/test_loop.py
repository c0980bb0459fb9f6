"""The GPU-first data path and loop: plans drawn ahead, the prefetcher, device-resident data, no host reads per step.

A GPU is not needed to check what would stall one: a host read of a device value (``.item()``, ``bool(t)``,
``torch.equal``, ...) dispatches ``aten._local_scalar_dense`` (or ``aten.equal``) on any device, so counting those
ops while the training loop runs on the CPU finds every read that would synchronise a GPU step.
"""
import random
import traceback
from collections import Counter

import numpy as np
import pytest
import timm
import torch
from test_train import MODEL, run_args  # noqa: E402  (tests/ is on sys.path under pytest)
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import DataLoader, Dataset

import timm_mimo  # noqa: F401
from timm_mimo.cli import optim_factory, run_loop, train, train_model
from timm_mimo.data import BatchRepeatSampler, PixelMix, ShardRequest
from timm_mimo.loader import (
    DeviceDraws,
    DeviceImages,
    DeviceShardDataset,
    MimoBatch,
    PackedBatch,
    Prefetcher,
    ShardDataset,
    keep_batch,
    pack_batch,
    seeded_global_rngs,
)
from timm_mimo.task import MimoTask

HOST_READS = ('aten._local_scalar_dense', 'aten.equal', 'aten.is_nonzero')


class HostReads(TorchDispatchMode):
    """Counts the ATen ops that read a tensor's value back to the host (each one a GPU sync).

    Reads made by torch's DataLoader itself (its iterator draws a base seed from a CPU generator once per epoch) are
    not counted: they never touch a GPU tensor.
    """

    def __init__(self):
        super().__init__()
        self.counts = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        if name in HOST_READS and not any('torch/utils/data/' in frame.filename
                                          for frame in traceback.extract_stack()):
            self.counts[name] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def tiny_mimo(**kwargs):
    return timm.create_model('cut_mixmo', backbone='wrn28_2', depth=10, widen_factor=1, num_classes=3, in_chans=1,
                             **kwargs)


@pytest.mark.parametrize('extra', [
    pytest.param(['--mimo-cutmix', '1.0', '--input-repeat', '0.2'], id='cut_mixmo-pixel-mix'),
    pytest.param(['--model-kwargs', 'backbone=wrn28_2', 'depth=10', 'widen_factor=1', 'unmixing=fadeout',
                  'fadeout_epochs=1', '--model', 'mixshare'], id='mixshare-fadeout'),
    pytest.param(['--device-data', '--grad-accum-steps', '2'], id='device-data-accumulation'),
])
def test_training_steps_read_nothing_back_to_the_host(small_digits_dir, tmp_path, monkeypatch, extra):
    """Zero host reads inside every optimizer step; exactly one per logged step (the loss); the plans come from the
    loader's worker, so none of their sampling runs in the training process."""
    step_reads, epoch_reads, steps = Counter(), Counter(), []
    real_step, real_epoch = run_loop.Run.train_step, run_loop.Run.train_one_epoch

    def counted_step(self, batches, epoch, step):
        with HostReads() as reads:
            out = real_step(self, batches, epoch, step)
        step_reads.update(reads.counts)
        steps.append(step)
        return out

    def counted_epoch(self, epoch, loader):
        with HostReads() as reads:
            out = real_epoch(self, epoch, loader)
        epoch_reads.update(reads.counts)
        return out

    monkeypatch.setattr(run_loop.Run, 'train_step', counted_step)
    monkeypatch.setattr(run_loop.Run, 'train_one_epoch', counted_epoch)
    argv = run_args(small_digits_dir, tmp_path, 'reads', '-b', '16', '--batch-repeat', '2', '--crop-pad', '1',
                    '--lr', '0.05', '--epochs', '2', '--val-split', '', '--workers', '1', '--log-interval', '3',
                    '--model-ema', *extra)
    assert train.main(argv) == 0
    assert steps, 'no training step ran'
    assert sum(step_reads.values()) == 0, step_reads
    per_epoch = max(steps) + 1
    logged = sum(1 for step in range(per_epoch) if step % 3 == 0 or step + 1 == per_epoch)
    assert sum(epoch_reads.values()) == 2 * logged, epoch_reads  # the loss, at the log interval only


def test_diverged_run_still_stops_before_a_checkpoint(small_digits_dir, tmp_path, capsys):
    """The non-finite check happens at the log interval and at the epoch's end: no checkpoint holds the NaNs."""
    argv = run_args(small_digits_dir, tmp_path, 'nan', '-b', '16', '--crop-pad', '1', '--lr', '1e30', '--epochs', '1',
                    '--val-split', '', '--log-interval', '1000')
    assert train.main(argv) == 2
    err = capsys.readouterr().err
    assert 'diverged' in err and 'not finite' in err or 'is not finite' in err, err
    assert not (tmp_path / 'nan' / 'last.pth.tar').exists()


def test_worker_plans_are_the_tasks_plans():
    """The loader's PlanSampler draws, for a shard, exactly what the task draws after set_step (pairs, masks, κ, pixel
    picks and keep masks): the same function of (seed, epoch, step, shard)."""
    task = MimoTask.from_model(tiny_mimo(), seed=11, mimo_cutmix=1.0, input_repeat=0.25, verbose=False)
    sampler = task.plan_sampler((8, 8))
    for epoch, step, shard in ((0, 0, 0), (2, 5, 1), (7, 3, 3)):
        task.set_step(epoch, step, 10, 8, shard)
        own = task.sample_plan(6, (8, 8), num_partners=6)
        drawn = sampler.sample(6, epoch, step, 10, 8, shard, num_partners=6)
        for a, b in ((own.pair_index, drawn.pair_index), (own.mix.masks, drawn.mix.masks),
                     (own.mix.kappas, drawn.mix.kappas), (own.pixel_pick, drawn.pixel_pick),
                     (own.pixel_keep, drawn.pixel_keep)):
            assert torch.equal(a, b)
        assert own.mix.binary == drawn.mix.binary


def test_step_with_a_drawn_plan_equals_the_step_that_draws_it():
    model = tiny_mimo()
    task = MimoTask.from_model(model, seed=4, mimo_cutmix=1.0, verbose=False)
    images, targets = torch.randn(6, 1, 8, 8), torch.randint(0, 3, (6,))
    partners, partner_targets = torch.randn(5, 1, 8, 8), torch.randint(0, 3, (5,))
    task.set_step(1, 2, 10, 4, shard=1)
    drawn_now = task(images, targets, partners, partner_targets)
    plan = task.plan_sampler((8, 8)).sample(6, 1, 2, 10, 4, 1, num_partners=5)
    drawn_ahead = task(images, targets, partners, partner_targets, plan=plan)
    assert torch.equal(drawn_now['loss'], drawn_ahead['loss'])
    assert torch.equal(drawn_now['output'], drawn_ahead['output'])


class _Noisy(Dataset):
    """Images built from the global RNGs, as timm's / torchvision's random transforms draw them."""

    def __len__(self):
        return 40

    def __getitem__(self, index):
        value = torch.rand(()).item() + random.random() + float(np.random.rand())  # noqa: NPY002
        return torch.full((1, 2, 2), value), index % 3


def _shards(workers):
    sampler = BatchRepeatSampler(40, batch_size=4, batch_repeat=2, seed=3, num_partners=2)
    task = MimoTask.from_model(tiny_mimo(), seed=3, mimo_cutmix=1.0, verbose=False)
    dataset = ShardDataset(_Noisy(), task.plan_sampler((2, 2)), sampler.steps_per_epoch, 2, seed=3)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=keep_batch, num_workers=workers,
                        persistent_workers=workers > 0)
    epochs = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        epochs.append(list(loader))
    return epochs


def test_shards_do_not_depend_on_the_worker_that_loads_them():
    """Augmentations and plans are seeded per shard: 0 or 2 persistent workers load identical epochs."""
    torch.manual_seed(0)
    inline, workers = _shards(0), _shards(2)
    for epoch_a, epoch_b in zip(inline, workers):
        assert len(epoch_a) == len(epoch_b) > 0
        for a, b in zip(epoch_a, epoch_b):
            assert isinstance(a, MimoBatch)
            for name in ('images', 'targets', 'partner_images', 'partner_targets'):
                assert torch.equal(getattr(a, name), getattr(b, name)), name
            assert torch.equal(a.plan.mix.masks, b.plan.mix.masks) and torch.equal(a.plan.pair_index,
                                                                                   b.plan.pair_index)
    assert not torch.equal(inline[0][0].images, inline[1][0].images)  # epochs differ


def _packable_batch():
    """A MimoBatch with every kind of tensor a shard holds: uint8 images, long targets and pairs, float masks (linear
    masks are expanded views), a bool flip per copy, a 0-d tensor and an empty one."""
    from timm_mimo.mixing import MixPlan
    from timm_mimo.shard_plan import ShardPlan
    kappas = torch.tensor([[0.25, 0.75], [0.5, 0.5], [1.0, 0.0]])
    plan = ShardPlan(torch.tensor([[0, 1], [2, 0], [1, 2]]), MixPlan.linear(kappas, (2, 2)),
                     pixel_pick=torch.zeros(0, dtype=torch.long), pixel_keep=torch.tensor(0.5))
    draws = DeviceDraws(torch.tensor([7, 8, 9]), torch.tensor([[0, 1], [2, 3], [4, 5]]),
                        torch.tensor([True, False, True]), num_partners=1)
    images = torch.randint(0, 256, (3, 3, 5, 5), dtype=torch.uint8)
    return MimoBatch(images, torch.tensor([4, 5, 6]), plan=plan, draws=draws)


def _same_batch(a, b):
    assert type(a) is type(b)
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    elif hasattr(a, '__dataclass_fields__'):
        for name in a.__dataclass_fields__:
            _same_batch(getattr(a, name), getattr(b, name))
    else:
        assert a == b


def test_packed_batch_unpacks_to_the_same_batch_as_views_of_one_buffer():
    batch = _packable_batch()
    packed = pack_batch(batch)
    assert isinstance(packed, PackedBatch) and packed.buffer.dtype == torch.uint8 and packed.buffer.ndim == 1
    unpacked = packed.unpack()
    _same_batch(unpacked, batch)
    assert unpacked.plan.mix.binary is batch.plan.mix.binary  # host values stay host values
    for tensor in (unpacked.images, unpacked.plan.mix.masks, unpacked.draws.flips):
        assert tensor.untyped_storage().data_ptr() == packed.buffer.untyped_storage().data_ptr()
    # through the Prefetcher: one buffer moved, then the batch as before
    from dataclasses import replace
    batch = replace(batch, draws=None)
    moved, = list(Prefetcher([pack_batch(batch)], torch.device('cpu'), (0.5,) * 3, (0.25,) * 3))
    direct, = list(Prefetcher([batch], torch.device('cpu'), (0.5,) * 3, (0.25,) * 3))
    _same_batch(moved, direct)


def test_training_loader_delivers_one_packed_buffer_per_shard(small_digits_dir, tmp_path):
    """The training loader's workers pack: one tensor per batch crosses to the main process; the step gets the
    MimoBatch it always got."""
    from timm.utils import init_distributed_device

    from timm_mimo.cli.data_path import create_train_loader, open_train_data
    args = train.parse_args(run_args(small_digits_dir, tmp_path, 'packed', '--workers', '1'))
    init_distributed_device(args)
    optim_factory.resolve_lr(args)
    model = train_model.create_train_model(args)
    args.num_classes_resolved = model.num_classes
    task = train_model.build_task(args, model, torch.device('cpu'))
    from timm.data import resolve_data_config
    data_config = resolve_data_config(vars(args), model=model, verbose=False)
    data = open_train_data(args, data_config, 0)
    loader = create_train_loader(args, data, task, 2, torch.device('cpu'), data_config)
    data.sampler.set_epoch(0)
    raw = next(iter(loader.loader))
    assert isinstance(raw, PackedBatch)
    batch = next(iter(loader))
    assert isinstance(batch, MimoBatch) and batch.images.dtype == torch.float32 and batch.plan is not None


def test_seeded_global_rngs_restore_the_process_streams():
    torch.manual_seed(5)
    random.seed(5)
    np.random.seed(5)  # noqa: NPY002
    expected = (torch.rand(3), random.random(), np.random.rand())  # noqa: NPY002
    torch.manual_seed(5)
    random.seed(5)
    np.random.seed(5)  # noqa: NPY002
    with seeded_global_rngs(123):
        first = torch.rand(2)
    with seeded_global_rngs(123):
        assert torch.equal(torch.rand(2), first)
    got = (torch.rand(3), random.random(), np.random.rand())  # noqa: NPY002
    assert torch.equal(got[0], expected[0]) and got[1:] == expected[1:]


def test_prefetcher_normalises_uint8_on_the_device_like_the_workers():
    images = torch.randint(0, 256, (3, 3, 4, 4), dtype=torch.uint8)
    mean, std = (0.2, 0.4, 0.6), (0.5, 0.25, 0.125)
    plain = (images.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    prefetcher = Prefetcher([(images, torch.arange(3))], torch.device('cpu'), mean, std, channels_last=True)
    (got, targets), = list(prefetcher)
    assert torch.allclose(got, plain, atol=1e-5) and got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(targets, torch.arange(3))
    batch = MimoBatch(images, torch.arange(3), images[:1], torch.arange(1))
    moved, = list(Prefetcher([batch], torch.device('cpu'), mean, std))
    assert torch.allclose(moved.images, plain, atol=1e-5) and torch.allclose(moved.partner_images, plain[:1],
                                                                             atol=1e-5)


def test_prefetcher_yields_every_batch_once_in_order():
    batches = [(torch.full((1, 1, 1, 1), i, dtype=torch.uint8), torch.tensor([i])) for i in range(5)]
    got = [int(t) for _, t in Prefetcher(batches, torch.device('cpu'), (0.0,), (1.0,))]
    assert got == [0, 1, 2, 3, 4]
    assert list(Prefetcher([], torch.device('cpu'))) == []


def test_device_images_crop_and_flip_by_hand():
    """One gather does pad-crop-flip: compared with slicing the zero-padded image by hand."""
    images = torch.arange(2 * 1 * 3 * 3, dtype=torch.uint8).view(2, 1, 3, 3) + 1
    data = DeviceImages(images, torch.tensor([4, 7]), pad=1, mean=(0.0,), std=(1.0 / 255,), device='cpu')
    draws = DeviceDraws(torch.tensor([1, 0, 1]), torch.tensor([[0, 0], [1, 1], [2, 1]]),
                        torch.tensor([False, True, True]))
    crops, labels = data.augment(draws)  # std 1/255: the normalised value is the pixel value
    padded = torch.nn.functional.pad(images, (1, 1, 1, 1)).float()
    assert torch.equal(crops[0], padded[1, :, 0:3, 0:3])
    assert torch.equal(crops[1], padded[0, :, 1:4, 1:4].flip(-1))  # the centred crop, flipped: image 0 mirrored
    assert torch.equal(crops[1], images[0].float().flip(-1))
    assert torch.equal(crops[2], padded[1, :, 2:5, 1:4].flip(-1))
    assert labels.tolist() == [7, 4, 7]
    centre, centre_labels = next(data.batches(8))
    assert torch.equal(centre, images.float()) and centre_labels.tolist() == [4, 7]


def test_device_shard_draws_are_per_copy_and_per_shard():
    """Batch-repeated copies draw their crops independently; a shard's draws depend only on (seed, epoch, step,
    shard); --no-aug gives the centred crop without flips."""
    request = ShardRequest([3, 3, 3, 3, 5, 5, 5, 5], epoch=1, step=2, shard=0)
    dataset = DeviceShardDataset(10, pad=4, hflip=0.5, plan_sampler=None, steps_per_epoch=5, num_epochs=3, seed=0)
    first, again = dataset.__getitems__(request), dataset.__getitems__(request)
    assert torch.equal(first.draws.offsets, again.draws.offsets) and torch.equal(first.draws.flips, again.draws.flips)
    assert len({tuple(o) for o in first.draws.offsets[:4].tolist()}) > 1  # copies of image 3, different crops
    other = dataset.__getitems__(ShardRequest(list(request), epoch=1, step=2, shard=1))
    assert not torch.equal(first.draws.offsets, other.draws.offsets)
    fixed = DeviceShardDataset(10, pad=4, hflip=0.5, plan_sampler=None, steps_per_epoch=5, num_epochs=3, seed=0,
                               random_crop=False).__getitems__(request)
    assert (fixed.draws.offsets == 4).all()


def test_device_data_run_learns(small_digits_dir, tmp_path):
    """--device-data trains the MIMO model on the device copy of the split (loss falls, above chance)."""
    argv = run_args(small_digits_dir, tmp_path, 'device', '-b', '32', '--batch-repeat', '2', '--crop-pad', '1',
                    '--lr', '0.05', '--epochs', '4', '--device-data', '--mimo-cutmix', '1.0')
    assert train.main(argv) == 0
    rows = train_rows(tmp_path / 'device')
    assert float(rows[-1]['train_loss']) < float(rows[0]['train_loss'])
    assert float(rows[-1]['eval_top1']) > 30.0  # 10 classes


def train_rows(run_dir):
    import csv
    with open(run_dir / 'summary.csv') as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize('argv, message', [
    (['--device-data'], '--device-data runs the CIFAR recipe on the device'),
    (['--device-data', '--crop-pad', '4', '--aa', 'cifar10'], "--aa 'cifar10' is an image-level augmentation"),
    (['--device-data', '--crop-pad', '4', '--reprob', '0.25'], '--reprob 0.25 is an image-level augmentation'),
])
def test_device_data_refuses_what_it_cannot_do(argv, message, tmp_path, capsys):
    assert train.main([*MODEL, '--data-dir', str(tmp_path), '--output', str(tmp_path / 'out'), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / 'out').exists()


def test_pixel_mix_sample_then_apply_is_the_call():
    generator = torch.Generator().manual_seed(2)
    xs, ys = torch.rand(3, 2, 1, 4, 4), torch.softmax(torch.randn(3, 2, 5), -1)
    partners, partner_y = torch.rand(4, 1, 4, 4), torch.softmax(torch.randn(4, 5), -1)
    from timm_mimo.mixing import MixPlan
    plan = MixPlan.from_masks(torch.stack([torch.ones(3, 2, 2), torch.zeros(3, 2, 2)], dim=1))
    mix = PixelMix(cutmix_alpha=1.0, prob=1.0)
    called = mix(xs, ys, plan, partners, partner_y, generator)
    pick, keep = mix.sample(3, 2, (4, 4), 4, torch.Generator().manual_seed(2))
    applied = mix.apply(xs, ys, plan, partners, partner_y, pick, keep)
    assert torch.equal(called[0], applied[0]) and torch.equal(called[1], applied[1])


COMPILE_FAMILIES = [
    pytest.param('cut_mixmo', dict(backbone='wrn28_2', depth=10, widen_factor=1), 8, id='cut_mixmo-wrn'),
    pytest.param('linear_mixmo', dict(backbone='resnet18'), 16, id='linear_mixmo-resnet18'),
    pytest.param('mixshare', dict(backbone='wrn28_2', depth=10, widen_factor=1), 8, id='mixshare-fadeout'),
    pytest.param('mixvit_convit_gpsa5_ca2', dict(img_size=16, patch_size=4, embed_dim=48, num_heads=4), 16,
                 id='mixvit-convit'),
    pytest.param('mixvit_deit_tiny_patch16_224', dict(img_size=16, patch_size=4, depth=3), 16, id='mixvit-deit'),
    pytest.param('mixmo_vit', dict(img_size=16, patch_size=4, embed_dim=48, num_heads=4, depth=3), 16,
                 id='naive-mixmo-vit'),
    pytest.param('wrn28_2', dict(depth=10, widen_factor=1), 8, id='plain-wrn'),
]


@pytest.mark.parametrize('name, kwargs, size', COMPILE_FAMILIES)
def test_whole_training_step_compiles_as_one_graph(name, kwargs, size):
    """--torchcompile compiles the step given its plan (pairing gather, pixel mixing, mixed forward, member loss) as
    ONE graph per plan kind (binary / linear), with no graph break, for every family; MixShare's fadeout strength,
    which changes every step, does not recompile it."""
    from torch._dynamo.utils import counters
    model = timm.create_model(name, num_classes=5, **kwargs).train()
    task = MimoTask.from_model(model, seed=0, verbose=False)
    images, targets = torch.randn(4, 3, size, size), torch.randint(0, 5, (4,))
    plans = [None] * 6
    if task.mimo:
        task = MimoTask.from_model(model, seed=0, verbose=False, mimo_cutmix=1.0)
        sampler = task.plan_sampler((size, size))
        plans = [sampler.sample(4, step // 3, step % 3, 3, 4, num_partners=4) for step in range(6)]
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(task._step)(images, targets, images if task.mimo else None,
                                                    targets if task.mimo else None, plans[0])
    assert explanation.graph_break_count == 0, [str(r.reason)[:200] for r in explanation.break_reasons]
    assert explanation.graph_count == 1
    torch._dynamo.reset()
    counters.clear()
    task.compile(backend='eager')  # dynamo's graphs without inductor code generation: what is traced and guarded
    for plan in plans:
        if task.mimo:
            task(images, targets, images, targets, plan=plan)['loss'].backward()
        else:
            task(images, targets)['loss'].backward()
    kinds = {plan.mix.binary for plan in plans} if task.mimo else {None}
    assert counters['stats']['unique_graphs'] <= len(kinds) + 1
    torch._dynamo.reset()


def test_float16_amp_on_cuda_takes_a_fused_optimizer(tmp_path):
    """GradScaler reads the inf / NaN flag back to the host every step unless the optimizer is fused: float16 AMP on
    CUDA picks torch's fused SGD / Adam / AdamW (same update); bfloat16, the CPU, other optimizers or an explicit
    --opt-kwargs keep timm's optimizer as it is."""
    model = torch.nn.Linear(3, 2)
    cuda, cpu = torch.device('cuda'), torch.device('cpu')

    def fused(*argv, device=cuda):
        args = train.parse_args(['--model', 'resnet18', *argv])
        return optim_factory.fused_for_amp(args, device)

    assert fused('--amp', '--amp-dtype', 'float16')
    assert fused('--amp', '--amp-dtype', 'float16', '--opt', 'adamw')
    assert not fused('--amp', '--amp-dtype', 'bfloat16')
    assert not fused('--amp', '--amp-dtype', 'float16', device=cpu)
    assert not fused('--amp', '--amp-dtype', 'float16', '--opt', 'lamb')
    assert not fused('--amp', '--amp-dtype', 'float16', '--opt-kwargs', 'foreach=True')
    assert not fused()
    args = train.parse_args(['--model', 'resnet18', '--amp', '--amp-dtype', 'float16', '--lr', '0.1'])
    # the parameters stay on the CPU: fused SGD runs there too
    optimizer = optim_factory.create_optimizer(args, model, cuda)
    assert optimizer.defaults['fused'] is True and optimizer.defaults['nesterov'] is True
    assert not optim_factory.create_optimizer(args, model, cpu).defaults.get('fused')


def _device_draw_epochs(kind, epochs, workers=0, max_block_bytes=None, rank=0, world_size=1, accum=2):
    """The --device-data training batches of ``epochs`` as the per-step loader (``'steps'``) or the epoch-ahead draws
    (``'blocks'``) deliver them: Cut-MixMo plans with pixel-mixing partners, batch repetition, accumulation."""
    from timm_mimo.loader import DeviceDrawBatches
    torch.manual_seed(0)
    images = torch.randint(0, 256, (24, 1, 6, 6), dtype=torch.uint8)
    device_images = DeviceImages(images, torch.arange(24) % 3, pad=2, mean=(0.5,), std=(0.25,), device='cpu')
    sampler = BatchRepeatSampler(24, batch_size=4, batch_repeat=2, world_size=world_size, rank=rank,
                                 grad_accum_steps=accum, seed=5, num_partners=4)
    task = MimoTask.from_model(tiny_mimo(), seed=5, mimo_cutmix=1.0, input_repeat=0.25, verbose=False)
    draws = DeviceShardDataset(24, pad=2, hflip=0.5, plan_sampler=task.plan_sampler((6, 6)),
                               steps_per_epoch=sampler.steps_per_epoch, num_epochs=3, seed=5)
    if kind == 'steps':
        loader = Prefetcher(DataLoader(draws, batch_sampler=sampler, collate_fn=pack_batch), torch.device('cpu'),
                            channels_last=True, device_images=device_images)
    else:
        extra = {} if max_block_bytes is None else dict(max_block_bytes=max_block_bytes)
        loader = DeviceDrawBatches(draws, sampler, device_images, channels_last=True, num_workers=workers, **extra)
    got = []
    for epoch in epochs:
        sampler.set_epoch(epoch)
        got.append(list(loader))
    return got, loader


@pytest.mark.parametrize('workers, max_block_bytes', [(0, None), (1, 1), (1, 22_000), (2, None)])
def test_epoch_ahead_device_draws_are_the_per_step_loaders_batches(workers, max_block_bytes):
    """--device-data draws an epoch ahead in blocks of whole steps (the epoch split among the workers, blocks capped in
    bytes, the last one shorter) and cuts each step's shards from a block's buffer: the same batches as the per-step
    loader, epoch after epoch and from a resumed epoch, in the layout the model expects, with each shard's host-side
    plan flag kept."""
    reference, _ = _device_draw_epochs('steps', [0, 1, 2])
    got, loader = _device_draw_epochs('blocks', [0, 1, 2], workers, max_block_bytes)
    assert len(reference[0]) == 2 * 6 and all(len(e) == len(r) for e, r in zip(got, reference))
    if max_block_bytes is None:  # the whole epoch in one block, or split between the workers
        assert loader.steps_per_block == 6 // max(workers, 1) and len(loader.blocks) == max(workers, 1)
    elif max_block_bytes == 1:
        assert loader.steps_per_block == 1 and len(loader.blocks) == 6
    else:
        assert 1 < loader.steps_per_block < 6 and 6 % loader.steps_per_block  # a shorter last block
    for epoch_got, epoch_ref in zip(got, reference):
        for a, b in zip(epoch_got, epoch_ref):
            _same_batch(a, b)
            assert a.images.is_contiguous(memory_format=torch.channels_last)
            assert a.plan.mix.binary is b.plan.mix.binary
    assert {a.plan.mix.binary for epoch in got for a in epoch} == {True, False}  # both plan kinds were cut
    resumed, _ = _device_draw_epochs('blocks', [1, 2], workers, max_block_bytes)
    for epoch_got, epoch_ref in zip(resumed, reference[1:]):
        for a, b in zip(epoch_got, epoch_ref):
            _same_batch(a, b)


def test_epoch_ahead_device_draws_of_two_ranks_are_the_accumulated_shards():
    """DDP over 2 ranks, each its block of draws, gives the shards of one process accumulating over 2."""
    accumulated, _ = _device_draw_epochs('blocks', [0, 1], accum=2)
    ranks = [_device_draw_epochs('blocks', [0, 1], rank=rank, world_size=2, accum=1)[0] for rank in (0, 1)]
    for epoch, epoch_batches in enumerate(accumulated):
        for step in range(len(epoch_batches) // 2):
            for shard in (0, 1):
                _same_batch(ranks[shard][epoch][step], epoch_batches[2 * step + shard])


def test_epoch_ahead_device_draws_restart_after_an_epoch_left_half_way():
    """An epoch left before its end (a benchmark, an interrupted pass) does not shift the next one's draws."""
    reference, _ = _device_draw_epochs('steps', [0, 1])
    _, loader = _device_draw_epochs('blocks', [], max_block_bytes=1)
    loader.sampler.set_epoch(0)
    batches = iter(loader)
    next(batches), next(batches), next(batches)  # into the second block of epoch 0
    loader.sampler.set_epoch(1)
    for a, b in zip(list(loader), reference[1]):
        _same_batch(a, b)
