"""The GPU branches of the training step, forced and checked on the CPU.

* Layout: channels-last images stay channels-last through the pair gather, pixel mixing, the grouped encoder conv
  (``grouped_conv = True``, the GPU path) and the mask mix, into the backbone's first block; the grouped conv equals
  the M per-member convs under channels-last, bfloat16 autocast and timm's ``Conv2dSame`` stems.
* Graph inputs: every per-step value that changes (MixShare's fadeout strength) reaches the compiled step as a tensor
  carried with the plan, so the step compiles once over steps whose fadeout / progress differ.
"""
from collections import Counter

import pytest
import timm
import torch
from timm.layers import Conv2dSame

import timm_mimo  # noqa: F401
from timm_mimo.data import gather_pairs, pair_inputs
from timm_mimo.mixing import MixPlan, members_channels_last
from timm_mimo.models.mimo_cnn import MemberEncoders
from timm_mimo.task import MimoTask

CL = torch.channels_last


def tiny_cnn(name='cut_mixmo', **kwargs):
    kwargs = dict(dict(depth=10, widen_factor=1), **kwargs)
    return timm.create_model(name, backbone='wrn28_2', num_classes=3, **kwargs).train()


def test_pair_gather_keeps_channels_last_and_packs_to_a_channels_last_view():
    """Hand-built 2-member pairs: the gather reads the right images; channels-last images give a batch whose packed
    (B, M·C, H, W) view is channels-last, contiguous ones a contiguous batch; values are the same."""
    images = torch.arange(4 * 3 * 2 * 2, dtype=torch.float32).view(4, 3, 2, 2)
    targets = torch.tensor([10, 11, 12, 13])
    index = torch.tensor([[0, 3], [2, 2], [1, 0]])
    xs, ys = gather_pairs(images, targets, index)
    xs_cl, ys_cl = gather_pairs(images.contiguous(memory_format=CL), targets, index)
    assert xs.is_contiguous() and not members_channels_last(xs)
    assert members_channels_last(xs_cl)
    assert xs_cl.flatten(1, 2).is_contiguous(memory_format=CL) and not xs_cl.flatten(1, 2).is_contiguous()
    assert torch.equal(xs_cl, xs) and torch.equal(ys_cl, ys)
    assert torch.equal(xs[0, 1], images[3]) and torch.equal(xs[1, 0], images[2]) and torch.equal(ys[2], torch.tensor(
        [11, 10]))


def _first_block_inputs(model):
    """Records the input of the backbone's first stage and the encoders' output."""
    seen = {}
    model.backbone.stages[0].register_forward_pre_hook(lambda module, args: seen.__setitem__('block', args[0]))
    model.encoders.register_forward_hook(lambda module, args, out: seen.__setitem__('encoders', out))
    return seen


@pytest.mark.parametrize('grouped', [True, False], ids=['gpu-grouped-conv', 'cpu-member-convs'])
@pytest.mark.parametrize('pixel_mix', [False, True], ids=['no-pixel-mix', 'pixel-mix'])
def test_backbone_first_block_receives_channels_last(grouped, pixel_mix):
    """The whole MIMO step (pair gather, pixel mixing, encoders, mask mix) on channels-last images and a
    channels-last model hands the backbone's first block a channels-last tensor, and computes what the NCHW step
    computes."""
    torch.manual_seed(0)
    model = tiny_cnn()
    model.encoders.grouped_conv = grouped
    seen = _first_block_inputs(model)
    task = MimoTask.from_model(model, seed=0, verbose=False, mimo_cutmix=1.0 if pixel_mix else None)
    images, targets = torch.randn(4, 3, 8, 8), torch.randint(0, 3, (4,))
    plan = task.plan_sampler((8, 8)).sample(4, 0, 0, 4, 4, num_partners=4 if pixel_mix else 0)
    partners = (images.flip(0), targets.flip(0)) if pixel_mix else (None, None)
    reference = task(images, targets, *partners, plan=plan)['loss']
    assert not seen['block'].is_contiguous(memory_format=CL)  # the NCHW run really is NCHW
    model.to(memory_format=CL)
    partners_cl = (partners[0].contiguous(memory_format=CL), partners[1]) if pixel_mix else partners
    loss = task(images.contiguous(memory_format=CL), targets, *partners_cl, plan=plan)['loss']
    assert seen['encoders'].is_contiguous(memory_format=CL) and not seen['encoders'].is_contiguous()
    assert seen['block'].is_contiguous(memory_format=CL) and not seen['block'].is_contiguous()
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-6)


def _encoders(conv, members=2, seed=0):
    torch.manual_seed(seed)
    return MemberEncoders(conv, members)


@pytest.mark.parametrize('conv', [
    pytest.param(lambda: torch.nn.Conv2d(3, 8, 3, padding=1), id='conv3x3'),
    pytest.param(lambda: torch.nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), id='conv-stride2-nobias'),
    pytest.param(lambda: Conv2dSame(3, 8, 3, stride=2), id='conv2dsame'),
])
@pytest.mark.parametrize('autocast', [False, True], ids=['fp32', 'bf16-autocast'])
def test_grouped_conv_equals_member_convs_under_channels_last(conv, autocast):
    """Mixed and per-member encodings: the grouped conv (GPU path) equals the M plain convs (CPU path) on a
    channels-last packed batch, in float32 and under bfloat16 autocast, with timm's dynamic-padding Conv2dSame too;
    both keep the channels-last layout."""
    encoders = _encoders(conv())
    encoders.to(memory_format=CL)
    torch.manual_seed(1)
    xs = torch.randn(3, 2, 3, 9, 9)
    index = torch.tensor([[0, 1], [2, 3], [4, 5]])
    flat = xs.flatten(0, 1)
    packed = gather_pairs(flat.contiguous(memory_format=CL), torch.zeros(6), index)[0].flatten(1, 2)
    assert packed.is_contiguous(memory_format=CL) and torch.equal(packed, xs.flatten(1, 2))
    grid = encoders.output_size((9, 9))
    masks = MixPlan.from_masks(torch.stack([torch.ones(3, *grid), torch.zeros(3, *grid)], 1).roll(1, dims=2)).masks
    masks[:, :, : grid[0] // 2] = masks[:, :, : grid[0] // 2].flip(1)  # two owners per sample
    outs = {}
    for grouped in (True, False):
        encoders.grouped_conv = grouped
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
            mixed = encoders.forward_mixed(packed, masks)
            members = encoders.forward_members(packed)
        assert mixed.is_contiguous(memory_format=CL) and not mixed.is_contiguous(), grouped
        outs[grouped] = (mixed.float(), members.float())
    tol = dict(rtol=2e-2, atol=2e-2) if autocast else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outs[True][0], outs[False][0], **tol)
    torch.testing.assert_close(outs[True][1], outs[False][1], **tol)
    # and the NCHW run of the same encoders gives the same numbers
    encoders.grouped_conv = True
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
        nchw = encoders.forward_mixed(xs.flatten(1, 2).contiguous(), masks).float()
    torch.testing.assert_close(nchw, outs[True][0], **tol)


def test_mixvit_token_path_is_unaffected_by_channels_last():
    """MixViT mixes in pixel space and embeds once: a channels-last batch gives the NCHW step's loss."""
    torch.manual_seed(0)
    model = timm.create_model('mixvit_convit_gpsa5_ca2', img_size=16, patch_size=4, embed_dim=48, num_heads=4,
                              num_classes=3).train()
    task = MimoTask.from_model(model, seed=0, verbose=False)
    images, targets = torch.randn(4, 3, 16, 16), torch.randint(0, 3, (4,))
    plan = task.plan_sampler((16, 16)).sample(4, 0, 0, 4, 4)
    xs, _ = pair_inputs(images.contiguous(memory_format=CL), targets, 2)
    assert members_channels_last(xs)
    reference = task(images, targets, plan=plan)['loss']
    loss = task(images.contiguous(memory_format=CL), targets, plan=plan)['loss']
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------- graph inputs of the step

STEP_FAMILIES = [
    pytest.param('mimo', dict(backbone='wrn28_2', depth=10, widen_factor=1), 8, id='mimo-cnn'),
    pytest.param('cut_mixmo', dict(backbone='wrn28_2', depth=10, widen_factor=1), 8, id='cut_mixmo'),
    pytest.param('mixshare', dict(backbone='wrn28_2', depth=10, widen_factor=1, unmixing='fadeout',
                                  fadeout_epochs=1), 8, id='mixshare-fadeout'),
    pytest.param('mixvit_convit_gpsa5_ca2', dict(img_size=16, patch_size=4, embed_dim=48, num_heads=4), 16,
                 id='mixvit-convit'),
    pytest.param('mixmo_vit', dict(img_size=16, patch_size=4, embed_dim=48, num_heads=4, depth=2), 16,
                 id='naive-mimo-vit'),
]


class GraphRecorder:
    """A ``torch.compile`` backend that records every graph it is handed (dynamo's graphs, run eagerly)."""

    def __init__(self):
        self.inputs = []

    def __call__(self, gm, example_inputs):
        self.inputs.append(list(example_inputs))
        return gm.forward


@pytest.mark.parametrize('name, kwargs, size', STEP_FAMILIES)
def test_compiled_step_takes_no_cpu_tensor_and_compiles_once(name, kwargs, size):
    """The compiled step of every family, its model and batch on a non-CPU device (``meta``: shapes only, as on a
    GPU): over six steps whose progress and MixShare fadeout strength all differ (0 -> 1 within the run), dynamo
    builds ONE graph, and its inputs are tensors on the model's device only (no Python scalar turned input, no 0-d
    CPU tensor: what keeps inductor's CUDA graphs off and recompiles the step)."""
    torch._dynamo.reset()
    model = timm.create_model(name, num_classes=5, **kwargs).train()
    task = MimoTask.from_model(model, seed=0, verbose=False)
    sampler = task.plan_sampler((size, size))
    plans = [sampler.sample(4, step // 3, step % 3, 3, 2) for step in range(6)]  # progress 0 .. 5/6
    relaxes = [float(plan.mix.unmix_relax) for plan in plans]
    if name == 'mixshare':
        assert relaxes == pytest.approx([0, 1 / 3, 2 / 3, 1, 1, 1])
        assert all(isinstance(plan.mix.unmix_relax, torch.Tensor) for plan in plans)
    device = torch.device('meta')
    model.to(device)
    images, targets = torch.randn(4, 3, size, size, device=device), torch.randint(0, 5, (4,), device=device)
    recorder = GraphRecorder()
    task.compile(backend=recorder)
    for plan in plans:
        out = task(images, targets, plan=plan.to(device))
        assert out['loss'].device == device
    assert len(recorder.inputs) == 1, f'{len(recorder.inputs)} graphs for 6 steps'
    inputs = recorder.inputs[0]
    assert all(isinstance(value, torch.Tensor) for value in inputs), [type(v).__name__ for v in inputs]
    assert [tuple(v.shape) for v in inputs if v.device != device] == []
    torch._dynamo.reset()


def test_plan_scalars_are_tensors_that_travel_with_the_plan():
    """The fadeout strength is a float32 0-d tensor drawn with the plan: pinned, moved and packed with it; the host
    flag ``unmixes`` says whether it still does anything; a hand-set float is held as a tensor and checked."""
    from timm_mimo.loader import pack_batch
    from timm_mimo.mixing import Mixer
    plan = Mixer(fadeout_epochs=4.0, generator=torch.Generator().manual_seed(0))(2, (4, 4), 0.5, epoch=1.0)
    assert plan.unmix_relax.dtype == torch.float32 and plan.unmix_relax.ndim == 0 and plan.unmixes
    assert float(plan.unmix_relax) == 0.25
    moved = plan.to(torch.device('meta'))
    assert moved.unmix_relax.device.type == 'meta' and moved.unmixes
    unpacked = pack_batch(plan).unpack()
    assert torch.equal(unpacked.unmix_relax, plan.unmix_relax) and unpacked.unmix_relax.ndim == 0
    done = plan.with_relax(1.0)
    assert not done.unmixes and float(done.unmix_relax) == 1.0 and plan.unmixes
    with pytest.raises(ValueError, match='unmix_relax'):
        plan.with_relax(1.5)


def test_training_sampler_drops_the_last_partial_batch():
    """Every training shard is full (timm's drop_last): 10 images, global batch 4 (2 shards of 2, b = 1) -> 2 steps
    of 2 full shards, the last 2 images of the permutation skipped; with b = 2 the unique images per step halve."""
    from timm_mimo.data import BatchRepeatSampler
    sampler = BatchRepeatSampler(10, 2, grad_accum_steps=2, seed=3)
    shards = list(sampler)
    assert sampler.steps_per_epoch == 2 and len(sampler) == len(shards) == 4
    assert [len(shard) for shard in shards] == [2, 2, 2, 2]
    assert len({i for shard in shards for i in shard}) == 8
    repeated = BatchRepeatSampler(10, 2, batch_repeat=2, grad_accum_steps=2, seed=3)
    assert repeated.steps_per_epoch == 5 and {len(shard) for shard in repeated} == {2}


# ---------------------------------------------------------------------------------------------------- DDP + compile

@pytest.mark.parametrize('bucket_cap_mb, widen, accumulate', [(25, 1, False), (1, 2, True)],
                         ids=['one-bucket', 'buckets-accum'])
def test_ddp_compiled_step_has_no_graph_break(tmp_path, bucket_cap_mb, widen, accumulate):
    """--torchcompile under DDP (gloo, one process): DDP wraps the compiled step module, so its hooks run outside the
    compiled region and dynamo breaks nothing. With one gradient bucket the step is ONE graph; with small buckets
    DDP's optimizer splits it into one graph per bucket (by design: each bucket's all-reduce starts when its part of
    the backward is done), still without a break. Accumulation (``no_sync``) keeps the same graphs, and the gradients
    are those of the plain step."""
    import torch.distributed as dist
    from torch._dynamo.utils import counters
    dist.init_process_group('gloo', init_method=f'file://{tmp_path / "store"}', rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = tiny_cnn(depth=16, widen_factor=widen)  # widen 2: 2.8 MB of parameters, 3 buckets of 1 MB
        reference = tiny_cnn(depth=16, widen_factor=widen)
        reference.load_state_dict(model.state_dict())
        task = MimoTask.from_model(model, seed=0, verbose=False)
        plain = MimoTask.from_model(reference, seed=0, verbose=False)
        sampler = task.plan_sampler((8, 8))
        plans = [sampler.sample(4, 0, step, 4, 2) for step in range(4)]
        images, targets = torch.randn(4, 3, 8, 8), torch.randint(0, 3, (4,))
        recorder = GraphRecorder()
        torch._dynamo.reset()
        counters.clear()
        task.compile(backend=recorder)
        task.prepare_distributed(static_graph=not accumulate, bucket_cap_mb=bucket_cap_mb)
        assert task._ddp_step.gradient_as_bucket_view and task._ddp_step.static_graph == (not accumulate)
        for step, plan in enumerate(plans):
            sync = task.no_sync() if accumulate and step % 2 == 0 else torch.enable_grad()
            with sync:
                task(images, targets, plan=plan)['loss'].backward()
            plain(images, targets, plan=plan)['loss'].backward()
        assert sum(counters['graph_break'].values()) == 0, list(counters['graph_break'])
        if bucket_cap_mb > 1:
            assert len(recorder.inputs) == 1
        else:
            assert len(recorder.inputs) > 1  # DDP's optimizer split the one frame at bucket boundaries
        assert counters['stats']['unique_graphs'] == 1  # one dynamo frame, compiled once
        for param, ref in zip(model.parameters(), reference.parameters()):
            torch.testing.assert_close(param.grad, ref.grad, rtol=1e-5, atol=1e-6)
    finally:
        torch._dynamo.reset()
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------- host work of a device step

COMPILED_REGIONS = ('Torch-Compiled Region', 'CompiledFunction')  # dynamo frames; AOT forward and backward
# ops that make views or read metadata: no kernel on any device
NO_KERNEL = frozenset({'aten::view', 'aten::slice', 'aten::empty', 'aten::to', 'aten::detach', 'aten::set_',
                       'aten::resolve_conj', 'aten::resolve_neg', 'aten::alias', 'aten::select', 'aten::unsqueeze',
                       'aten::reshape', 'aten::_unsafe_view', 'aten::as_strided', 'aten::lift_fresh'})


def ops_outside_compiled_regions(events):
    """The ATen ops the host dispatched itself (not from inside another op or a compiled region), by name."""
    counts = Counter()
    for event in events:
        if not event.name.startswith('aten::'):
            continue
        parent = event.cpu_parent
        while parent is not None and not parent.name.startswith(COMPILED_REGIONS + ('aten::',)):
            parent = parent.cpu_parent
        if parent is None:
            counts[event.name] += 1
    return counts


def test_device_data_compiled_step_launches_a_handful_of_ops_from_the_host(small_digits_dir, tmp_path, monkeypatch):
    """--device-data --torchcompile: the device augmentation, the step (gather, mixing, forward, loss, backward) and
    the optimizer update (clipping included) run as compiled graphs, and the draws of the whole epoch were copied to
    the device before it began; what the host still dispatches per step, counted with the CPU profiler over three
    steady steps, is the shard's views of that block, the backward's seed gradient and the loss weighting: no model,
    augmentation or optimizer op (the eager step dispatches over 500), no sampler work (shuffles), no loader hand-off
    (a buffer received from a worker) and no copy. (With draws handed over per step: 73 ops, 5 of them kernels.)"""
    from test_train import run_args
    from torch.profiler import ProfilerActivity, profile

    from timm_mimo.cli import run_loop, train
    per_step = []
    train_step = run_loop.Run.train_step

    def profiled(self, batches, epoch, step):
        if not 3 <= step < 6:
            return train_step(self, batches, epoch, step)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            out = train_step(self, batches, epoch, step)
        per_step.append(ops_outside_compiled_regions(prof.events()))
        return out

    monkeypatch.setattr(run_loop.Run, 'train_step', profiled)
    argv = run_args(small_digits_dir, tmp_path, 'host', '-b', '16', '--crop-pad', '1', '--epochs', '1',
                    '--device-data', '--val-split', '', '--workers', '1', '--clip-grad', '1.0',
                    '--torchcompile', 'aot_eager')
    assert train.main(argv) == 0
    assert len(per_step) == 3
    for counts in per_step:
        kernels = {name: count for name, count in counts.items() if name not in NO_KERNEL}
        assert not {'aten::convolution', 'aten::convolution_backward', 'aten::native_batch_norm_backward',
                    'aten::_foreach_add_', 'aten::add_', 'aten::addcmul', 'aten::clamp_'} & set(kernels), kernels
        print('HOSTOPS', dict(counts), 'KERNELS', kernels)
        assert sum(kernels.values()) <= 10, kernels
        assert sum(counts.values()) <= 80, counts


def test_compiled_device_data_run_resumes_exactly(small_digits_dir, tmp_path, monkeypatch):
    """--device-data --torchcompile (compiled augmentation, step and optimizer update, clipping on) keeps the exact
    resume: a run stopped after epoch 1 and resumed ends bit-identical to the uninterrupted one. Placed right after
    another compiled run in the same process: with automatic dynamic shapes the optimizer update's second compilation
    diverged inside dynamo (SpeculationLogDivergence); it is compiled with ``dynamic=False``."""
    from test_train import test_interrupted_run_resumes_exactly_for_every_schedule as resumes_exactly
    resumes_exactly(small_digits_dir, tmp_path, monkeypatch,
                    ['--sched', 'cosine', '--device-data', '--torchcompile', 'aot_eager', '--clip-grad', '1.0'])


@pytest.mark.parametrize('opt', ['sgd', 'adamw'])
def test_compiled_optimizer_update_is_the_eager_update_in_one_graph(opt):
    """Clipping + the update of torch's SGD (Nesterov, weight decay) / AdamW as one compiled graph: the weights follow
    the eager update over five steps whose learning rate changes each step, the groups hold the scheduler's floats
    again after every call, and the steady steps replay one graph (the first step also builds the optimizer state)."""
    import copy

    from timm.utils import dispatch_clip_grad

    from timm_mimo.compiled_optim import CompiledOptimizerStep
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    ref = copy.deepcopy(net)

    def make(params):
        if opt == 'sgd':
            return torch.optim.SGD(params, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
        return torch.optim.AdamW(params, lr=0.1, weight_decay=0.05)

    optimizer, ref_optimizer = make(net.parameters()), make(ref.parameters())
    calls = []

    def backend(gm, example_inputs):
        calls.append(0)
        index = len(calls) - 1

        def run(*args):
            calls[index] += 1
            return gm.forward(*args)
        return run

    torch._dynamo.reset()
    update = CompiledOptimizerStep(optimizer, clip_grad=0.5, backend=backend)
    x = torch.randn(8, 5)
    for step in range(5):
        lr = 0.1 * (1 - step / 5)
        for group in optimizer.param_groups + ref_optimizer.param_groups:
            group['lr'] = lr
        net(x).square().sum().backward()
        ref(x).square().sum().backward()
        update()
        dispatch_clip_grad(list(ref.parameters()), value=0.5, mode='norm')
        ref_optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ref_optimizer.zero_grad(set_to_none=True)
        assert optimizer.param_groups[0]['lr'] == lr and isinstance(optimizer.param_groups[0]['lr'], float)
    # float32 rounding: the tensor learning rate is float32, the eager float is double until the kernel
    tol = dict(rtol=1e-6, atol=1e-6) if opt == 'sgd' else dict(rtol=1e-4, atol=1e-5)
    for param, ref_param in zip(net.parameters(), ref.parameters()):
        torch.testing.assert_close(param, ref_param, **tol)
    # at most one graph for the first step (which builds the optimizer state), then one graph per update
    assert len(calls) <= 2 and calls[-1] >= 4, calls
    torch._dynamo.reset()
