"""timm-style model benchmark: every MIMO model side by side with its single-input backbone, in one process.

For each model: parameters, forward FLOPs, inference and train-step throughput, peak memory, with timm's
``benchmark.py`` column names (``infer_samples_per_sec``, ``infer_step_time``, ``infer_gmacs``,
``train_samples_per_sec``, ``train_step_time``, ``param_count``, ...), and for a MIMO model the ``ratio_*`` columns
against its backbone and the cost targets. What is measured:

* inference: ``model(x)`` on a ``(B, C, H, W)`` batch, eval mode, ``no_grad``;
* train step: the real MIMO step of :class:`timm_mimo.task.MimoTask` as the training loop runs it: the plan (pairs,
  the model's Mixer masks and κ) drawn ahead and already on the device (the loader's workers draw it), the pairs
  gathered into ``(B, M, C, H, W)``, forward, the model's MIMO loss, backward, optimizer step; the backbone: the same
  ``(B, C, H, W)`` batch, cross-entropy, backward, the same optimizer; same B on both sides; ``--torchcompile``
  compiles the whole step of both (``MimoTask.compile``, ``--torchcompile-mode reduce-overhead``: CUDA graphs);
* set up as training runs (``timm-mimo-train``): its optimizer construction (``create_optimizer``: the flags'
  defaults, fused under float16 AMP on CUDA), timm's ``NativeScaler`` (GradScaler) under float16 AMP, the AMP dtype of
  the run (``--amp`` alone: float16 on CUDA, bfloat16 on the CPU, as training), ``cudnn.benchmark`` on CUDA, and TF32
  matmuls / convolutions for float32 steps on CUDA. An ``--amp-dtype`` given is run as given on any device (the CPU
  autocasts float16 too, with a CPU GradScaler); every row and the closing line say what was in effect;
* throughput: alternating timed rounds of the two models (``interleaved_throughput``), best round of each;
* plan sampling (MIMO): median CPU time to draw one shard's plan (``plan_sample_ms``), the work a loader worker does
  per step, and its share of the train step (``ratio_plan_to_step``);
* FLOPs: ``torch.utils.flop_counter`` on one image (``infer_gmacs`` = FLOPs / 2, timm's MAC convention);
* peak memory: the peak bytes of live tensors (parameters, buffers, gradients, optimizer state, activations,
  temporaries) during one warm inference call / train step of the eager model (also under ``--torchcompile``),
  tracked op by op in a ``TorchDispatchMode`` (:class:`LiveTensorBytes`; the same accounting on CPU and GPU;
  allocator caching and fragmentation are not counted).
"""
import argparse
import inspect
import os
from collections import OrderedDict
from contextlib import nullcontext
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import timm
import torch
import torch.nn as nn
from timm.utils import ParseKwargs
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import timm_mimo  # noqa: F401  (registration)
from benchmarks.common import count_flops, count_params, device_synchronizer, interleaved_throughput
from timm_mimo.cli.args import check_compile
from timm_mimo.metrics import is_mimo
from timm_mimo.models import mixvit as mixvit_module
from timm_mimo.models.mimo_cnn import MimoCNN
from timm_mimo.models.mimo_vit import MimoViT
from timm_mimo.models.mixvit import MixViT
from timm_mimo.outputs import write_csv
from timm_mimo.task import MimoTask

__all__ = ['add_arguments', 'create_pair', 'backbone_model_kwargs', 'cost_targets', 'benchmark_model',
           'explain_train_forward', 'run']

MIB = 2 ** 20
COMPILED_TRAIN_WARMUP = 10  # seed-0 Mixer plans: both kinds and both orders of them within 10 steps


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """timm's benchmark flags (the ones that apply here) plus the MIMO ones."""
    parser.add_argument('--model', '-m', nargs='+', default=[], metavar='NAME',
                        help='model name(s); a MIMO model is measured next to its backbone')
    parser.add_argument('--model-list', default='', metavar='FILE', help='text file with one model name per line')
    parser.add_argument('--bench', default='both', choices=['both', 'inference', 'train'], help='what to time')
    parser.add_argument('-b', '--batch-size', type=int, default=64, help='B: images per inference call / train step')
    parser.add_argument('--img-size', type=int, default=None, help='input size (default: the model\'s)')
    parser.add_argument('--num-classes', type=int, default=None, help='classes (default: the model\'s)')
    parser.add_argument('--num-members', type=int, default=None, help='M of the MIMO models (default: theirs)')
    parser.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs,
                        help='extra timm.create_model kwargs; the backbone gets those that are not MIMO options')
    parser.add_argument('--opt', default='sgd', help='optimizer of the train step (timm-mimo-train\'s --opt)')
    parser.add_argument('--lr', type=float, default=1e-3, help='learning rate of the train step')
    parser.add_argument('--num-warm-iter', type=int, default=2, help='untimed calls of each side first')
    parser.add_argument('--rounds', type=int, default=5, help='alternating timed rounds (the best one is kept)')
    parser.add_argument('--min-seconds', type=float, default=1.0, help='minimum duration of one timed round')
    parser.add_argument('--no-backbone', action='store_true', help='measure the MIMO models alone')
    parser.add_argument('--no-memory', action='store_true', help='skip the peak-memory measurement')
    parser.add_argument('--explain', action='store_true',
                        help='report torch._dynamo.explain graph breaks of the MIMO training forward')
    parser.add_argument('--amp', action='store_true',
                        help='autocast as training does (float16 + GradScaler on CUDA, bfloat16 on the CPU)')
    parser.add_argument('--amp-dtype', default=None, choices=['float16', 'bfloat16'],
                        help='autocast dtype, run as given on any device (float16 adds a GradScaler)')
    parser.add_argument('--channels-last', action='store_true', help='channels-last models and inputs')
    parser.add_argument('--torchcompile', nargs='?', const='inductor', default=None, metavar='BACKEND',
                        help='torch.compile both sides (default backend: inductor)')
    parser.add_argument('--torchcompile-mode', default=None, metavar='MODE',
                        help='inductor mode of --torchcompile, e.g. reduce-overhead (CUDA graphs) or max-autotune')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--threads', type=int, default=None, help='torch.set_num_threads')
    parser.add_argument('--results-file', default='', metavar='FILE', help='write the rows as CSV')


def model_names(args: argparse.Namespace) -> List[str]:
    """``--model`` names, then those of ``--model-list`` (blank lines and ``#`` comments skipped)."""
    names = list(args.model)
    if args.model_list:
        if not os.path.isfile(args.model_list):
            raise ValueError(f'--model-list file {args.model_list!r} does not exist')
        with open(args.model_list) as f:
            names += [line.split('#')[0].strip() for line in f if line.split('#')[0].strip()]
    if not names:
        raise ValueError('no model given: use --model NAME [NAME ...] or --model-list FILE')
    unknown = [name for name in names if not timm.is_model(name)]
    if unknown:
        raise ValueError(f'unknown model(s) {", ".join(unknown)} (see timm.list_models())')
    return names


def _create_kwargs(args: argparse.Namespace) -> Dict[str, Any]:
    kwargs = dict(args.model_kwargs)
    if args.num_classes is not None:
        kwargs['num_classes'] = args.num_classes
    return kwargs


def create_pair(name: str, args: argparse.Namespace) -> Tuple[nn.Module, Optional[nn.Module]]:
    """The model and, for a MIMO model, its single-input backbone with the same classes, channels and input size.

    The backbone gets the model kwargs that are not options of the MIMO class (``backbone``, ``num_members``,
    ``method``, ``source``, ...), i.e. the architecture's own (``depth``, ``widen_factor``, ``img_size``, ...).
    """
    kwargs = _create_kwargs(args)
    torch.manual_seed(0)
    probe = timm.create_model(name, **kwargs)
    if not is_mimo(probe):
        return probe, None
    if args.num_members is not None:
        kwargs['num_members'] = args.num_members
        probe = timm.create_model(name, **kwargs)
    if args.no_backbone:
        return probe, None
    backbone_kwargs = backbone_model_kwargs(probe, args.model_kwargs)
    backbone_kwargs.update(num_classes=probe.num_classes, in_chans=probe.in_chans)
    if isinstance(probe, MixViT):
        backbone = mixvit_module.create_backbone(probe.backbone_name, **backbone_kwargs)
    else:
        backbone = timm.create_model(probe.backbone_name, **backbone_kwargs)
    return probe, backbone


def backbone_model_kwargs(model: nn.Module, model_kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """The model kwargs that are the architecture's own (``depth``, ``widen_factor``, ``img_size``...): those that are
    not options of the MIMO class (``backbone``, ``num_members``, ``method``, ``source``, ...)."""
    mimo_options = {p for p in inspect.signature(type(model).__init__).parameters
                    if p not in ('self', 'num_classes', 'global_pool')}
    mimo_options |= {'backbone_kwargs', 'pretrained_cfg', 'pretrained_cfg_overlay', 'cache_dir'}
    return {k: v for k, v in model_kwargs.items() if k not in mimo_options}


def cost_targets(model: nn.Module) -> Dict[str, Tuple[str, float]]:
    """Ratio column -> (comparison, bound) that a MIMO model must meet against its backbone.

    MixMo CNNs (one pass on the summed encodings): inference throughput >= 0.97x and FLOPs <= 1.01x. MixViT: FLOPs
    <= 1.10x on the papers' ConViT and <= 1.04x on the CaiT-24 models (bounds in line with the papers' estimate
    ``(L + n·M) / (L + n)`` for L shared and n member blocks, thesis HAL tel-03952815 Ch. 4). Every MIMO model: train
    step >= 0.95x and peak training memory <= 1.05x.
    """
    targets: Dict[str, Tuple[str, float]] = OrderedDict()
    if isinstance(model, MimoCNN) and not isinstance(model, MimoViT):
        targets['ratio_infer_samples_per_sec'] = ('>=', 0.97)
        targets['ratio_infer_gmacs'] = ('<=', 1.01)
    elif isinstance(model, MixViT):
        if model.backbone_name.startswith('convit_gpsa5_ca2'):
            targets['ratio_infer_gmacs'] = ('<=', 1.10)
        elif model.backbone_name.startswith('cait_') and model.backbone_name.endswith('24'):
            targets['ratio_infer_gmacs'] = ('<=', 1.04)
    targets['ratio_train_samples_per_sec'] = ('>=', 0.95)
    targets['ratio_train_peak_mem_mb'] = ('<=', 1.05)
    return targets


class _Setup:
    """Device, autocast, GradScaler, optimizer, backend and compile settings shared by every callable of one run, as
    the training command sets them up."""

    def __init__(self, args: argparse.Namespace):
        if args.device.startswith('cuda') and not torch.cuda.is_available():
            raise ValueError(f'--device {args.device} requested but CUDA is not available; use --device cpu')
        self.device = torch.device(args.device)
        self.amp_dtype = None
        if args.amp:
            default = torch.float16 if self.device.type == 'cuda' else torch.bfloat16  # timm-mimo-train's rule
            self.amp_dtype = getattr(torch, args.amp_dtype) if args.amp_dtype else default
        elif args.amp_dtype:
            raise ValueError('--amp-dtype needs --amp')
        self.grad_scaler = self.amp_dtype == torch.float16
        self.channels_last = args.channels_last
        check_compile(args)
        self.compile_backend, self.compile_mode = args.torchcompile, args.torchcompile_mode
        self.cuda = self.device.type == 'cuda'
        self.tf32 = self.cuda  # TF32 allowed for float32 work, as training sets it (run_loop.set_cuda_backends)
        amp_flags = ['--amp', '--amp-dtype', str(self.amp_dtype).replace('torch.', '')] if self.amp_dtype else []
        # the training command's own optimizer flags (defaults: momentum, weight decay, ...) for create_optimizer
        from timm_mimo.cli import train
        self.train_args = train.parse_args(['--model', 'benchmark', '--opt', args.opt, '--lr', str(args.lr),
                                            '--device', str(self.device), *amp_flags])

    def apply_backend_flags(self) -> None:
        """The training command's CUDA settings (``cudnn.benchmark``, TF32 for float32 work); nothing on a CPU."""
        from timm_mimo.cli import run_loop
        run_loop.set_cuda_backends(self.device)

    def create_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """The training command's optimizer (``timm_mimo.cli.train.create_optimizer``: fused under float16 AMP on
        CUDA)."""
        from timm_mimo.cli import optim_factory
        return optim_factory.create_optimizer(self.train_args, model, self.device)

    def create_scaler(self) -> Optional[Any]:
        """timm's ``NativeScaler`` (a GradScaler) under float16 AMP, as training; ``None`` otherwise."""
        from timm.utils import NativeScaler
        return NativeScaler(device=self.device.type) if self.grad_scaler else None

    def in_effect(self, optimizer: Optional[torch.optim.Optimizer] = None) -> Dict[str, Any]:
        """What the measurement ran with: the columns every row carries."""
        effect = OrderedDict(device=str(self.device),
                             amp=str(self.amp_dtype).replace('torch.', '') if self.amp_dtype else 'off',
                             grad_scaler=self.grad_scaler, channels_last=self.channels_last,
                             cudnn_benchmark=torch.backends.cudnn.benchmark if self.cuda else 'n/a (cpu)',
                             tf32=self.tf32 if self.cuda else 'n/a (cpu)',
                             torchcompile=self.compile_backend or 'off', torchcompile_mode=self.compile_mode or '')
        if optimizer is not None:
            defaults = optimizer.defaults
            kind = 'fused' if defaults.get('fused') else 'foreach' if defaults.get('foreach') else 'default'
            effect['optimizer'] = f'{type(optimizer).__name__} ({kind})'
        return effect

    def autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def prepare(self, model: nn.Module) -> Tuple[nn.Module, Callable]:
        """Move the model; return it and the callable to run it (compiled with ``--torchcompile``)."""
        model.to(self.device, memory_format=torch.channels_last if self.channels_last else torch.preserve_format)
        if not self.compile_backend:
            return model, model
        return model, torch.compile(model, backend=self.compile_backend, mode=self.compile_mode)

    def images(self, *shape: int) -> torch.Tensor:
        x = torch.randn(*shape, device=self.device)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def _inference_call(forward: Callable, x: torch.Tensor, setup: _Setup) -> Callable[[], None]:
    def call() -> None:
        with torch.no_grad(), setup.autocast():
            forward(x)
    return call


TRAIN_PLANS = 8  # plans drawn ahead and cycled: both plan kinds (binary / linear) among them for seed 0


def _train_step(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, args: argparse.Namespace,
                setup: _Setup, compile_step: bool = False) -> Callable[[], None]:
    """One optimizer step of :class:`timm_mimo.task.MimoTask`, as the training loop runs it (its optimizer, and its
    GradScaler under float16 AMP).

    MIMO models: the plans (pairs, masks, κ) are drawn ahead on the CPU and already on the device, as the loader's
    workers deliver them; the step gathers the pairs, runs the mixed forward and the model's MIMO loss, backward and
    the optimizer. The backbone: the same ``(B, C, H, W)`` batch, cross-entropy. Same B and optimizer on both sides;
    ``compile_step`` compiles the whole step (``MimoTask.compile``), as ``--torchcompile`` in training does.
    """
    optimizer = setup.create_optimizer(model)
    scaler = setup.create_scaler()
    model.train()
    if is_mimo(model):
        task = MimoTask.from_model(model, seed=0, verbose=False)
        sampler = task.plan_sampler(tuple(images.shape[-2:]))
        # half-way through a 300-epoch schedule, as the loader would deliver them
        plans = [sampler.sample(images.shape[0], 150, step, TRAIN_PLANS, 300).to(images.device)
                 for step in range(TRAIN_PLANS)]
    else:
        task = MimoTask.from_model(model, smoothing=0.0, verbose=False)
        plans = [None]
    if compile_step:
        task.compile(backend=setup.compile_backend, mode=setup.compile_mode)
    turn = [0]

    def step() -> None:
        plan = plans[turn[0] % len(plans)]
        turn[0] += 1
        optimizer.zero_grad(set_to_none=True)
        with setup.autocast():
            loss = task(images, targets, plan=plan)['loss'] if plan is not None else task(images, targets)['loss']
        if scaler is not None:  # float16: scaled backward, the step skipped on inf / NaN, as training
            scaler(loss, optimizer)
        else:
            loss.backward()
            optimizer.step()
    step.optimizer = optimizer
    return step


class LiveTensorBytes(TorchDispatchMode):
    """Bytes of live tensor storages, and their peak, over the ATen ops run inside the mode (backward included).

    A storage counts from the op that creates it until it is freed (checked after every op); tensors passed to
    :meth:`track` (parameters, buffers, gradients, optimizer state) count from the start.
    """

    def __init__(self):
        super().__init__()
        self._live: Dict[int, Tuple[StorageWeakRef, int]] = {}
        self.current = self.peak = 0

    def track(self, tensors: Iterable[Any]) -> None:
        """Count these tensors (non-tensors are skipped) as live."""
        for tensor in tensors:
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                ref = StorageWeakRef(storage)
                if ref.cdata not in self._live:
                    self._live[ref.cdata] = (ref, storage.nbytes())
                    self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)

    def _sweep(self) -> None:
        for key, (ref, nbytes) in list(self._live.items()):
            if ref.expired():
                del self._live[key]
                self.current -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self._sweep()
        self.track(tree_flatten(out)[0])
        return out


def _state_tensors(model: nn.Module, optimizer: Optional[torch.optim.Optimizer]) -> List[torch.Tensor]:
    tensors = [*model.parameters(), *model.buffers()]
    tensors += [p.grad for p in model.parameters() if p.grad is not None]
    if optimizer is not None:
        tensors += [value for state in optimizer.state.values() for value in state.values()
                    if isinstance(value, torch.Tensor)]
    return tensors


def peak_memory_mb(fn: Callable[[], None], model: nn.Module,
                   optimizer: Optional[torch.optim.Optimizer] = None) -> float:
    """Peak MiB of live tensors during one call of ``fn`` after a warm call: the model's parameters, buffers and
    gradients and the optimizer state, plus everything the call allocates (:class:`LiveTensorBytes`)."""
    fn()
    tracker = LiveTensorBytes()
    tracker.track(_state_tensors(model, optimizer))
    with tracker:
        fn()
    return tracker.peak / MIB


def _inference_peak_memory_mb(model: nn.Module, x: torch.Tensor, setup: _Setup) -> float:
    return peak_memory_mb(_inference_call(model, x, setup), model)


def plan_sample_ms(model: nn.Module, batch_size: int, image_size: Sequence[int], samples: int = 20) -> float:
    """Median CPU milliseconds to draw one shard's plan (pairs, masks, κ): the work a loader worker does per step."""
    import statistics
    import time
    sampler = MimoTask.from_model(model, seed=0, verbose=False).plan_sampler(tuple(image_size))
    times = []
    for step in range(samples):
        start = time.perf_counter()
        sampler.sample(batch_size, 150, step, samples, 300)
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def explain_train_forward(model: nn.Module, batch_size: int = 2) -> Dict[str, Any]:
    """Graphs and graph breaks of the whole MIMO training step given its plan (pairing gather, mixed forward, member
    loss: what ``--torchcompile`` compiles, ``MimoTask._step``) under ``torch._dynamo.explain``.

    Returns:
        ``graph_count``, ``graph_break_count`` and ``break_reasons`` (``reason @ file:line`` strings).
    """
    size = model.pretrained_cfg['input_size']
    task = MimoTask.from_model(model, seed=0, verbose=False)
    plan = task.plan_sampler(size[-2:]).sample(batch_size, 150, 0, 1, 300)  # as the timed train step
    images, targets = torch.randn(batch_size, *size), torch.zeros(batch_size, dtype=torch.long)
    model.train()
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(task._step)(images, targets, None, None, plan)
    reasons = []
    for reason in explanation.break_reasons:
        frame = reason.user_stack[-1] if reason.user_stack else None
        where = f' @ {os.path.relpath(frame.filename)}:{frame.lineno}' if frame is not None else ''
        reasons.append(f'{reason.reason.splitlines()[0][:160]}{where}')
    torch._dynamo.reset()
    return dict(graph_count=explanation.graph_count, graph_break_count=explanation.graph_break_count,
                break_reasons=reasons)


def benchmark_model(name: str, args: argparse.Namespace) -> List[Dict[str, Any]]:
    """Rows of one model (and its backbone before it): timm's columns, ratios and target verdicts."""
    setup = _Setup(args)
    setup.apply_backend_flags()
    model, backbone = create_pair(name, args)
    size = tuple(model.pretrained_cfg['input_size'])
    if args.img_size is not None:
        size = (size[0], args.img_size, args.img_size)
    sides = OrderedDict()
    if backbone is not None:
        sides['backbone'] = backbone
    sides['model'] = model
    names = dict(model=name, backbone=getattr(model, 'backbone_name', ''))
    batch = args.batch_size
    x = setup.images(batch, *size)
    targets = torch.randint(0, model.num_classes, (batch,), device=setup.device)
    rows = {key: OrderedDict(model=names[key], param_count=round(count_params(m) / 1e6, 4))
            for key, m in sides.items()}
    forwards = {}
    for key, module in sides.items():
        module.eval()
        flops = count_flops(lambda m=module: m(x[:1].cpu()))  # before moving: counted on CPU, device-independent
        rows[key]['infer_gmacs'] = round(flops / 2e9, 4)
        _, forwards[key] = setup.prepare(module)
    if args.bench in ('both', 'inference'):
        for module in sides.values():
            module.eval()
        calls = {key: _inference_call(forwards[key], x, setup) for key in sides}
        speeds = interleaved_throughput(calls, batch, warmup=args.num_warm_iter, rounds=args.rounds,
                                        min_seconds=args.min_seconds, synchronize=device_synchronizer(setup.device))
        for key in sides:
            rows[key].update(infer_samples_per_sec=round(speeds[key], 2),
                             infer_step_time=round(1000 * batch / speeds[key], 3), infer_batch_size=batch,
                             infer_img_size=size[-1])
            if not args.no_memory:
                rows[key]['infer_peak_mem_mb'] = round(_inference_peak_memory_mb(sides[key], x, setup), 3)
    optimizer = None
    if args.bench in ('both', 'train'):
        steps = {key: _train_step(m, x, targets, args, setup, compile_step=bool(setup.compile_backend))
                 for key, m in sides.items()}
        optimizer = steps['model'].optimizer
        # compiled MIMO steps meet cut-like and linear plans (different graphs): warm up until both are compiled
        warmup = max(args.num_warm_iter, COMPILED_TRAIN_WARMUP) if setup.compile_backend else args.num_warm_iter
        speeds = interleaved_throughput(steps, batch, warmup=warmup, rounds=args.rounds, min_seconds=args.min_seconds,
                                        synchronize=device_synchronizer(setup.device))
        for key in sides:
            rows[key].update(train_samples_per_sec=round(speeds[key], 2),
                             train_step_time=round(1000 * batch / speeds[key], 3), train_batch_size=batch,
                             train_img_size=size[-1])
            if not args.no_memory:
                eager = _train_step(sides[key], x, targets, args, setup)
                rows[key]['train_peak_mem_mb'] = round(peak_memory_mb(eager, sides[key], eager.optimizer), 3)
    if is_mimo(model):
        rows['model']['num_members'] = model.num_members
        rows['model']['backbone'] = names['backbone']
        if args.bench in ('both', 'train'):
            plan_ms = plan_sample_ms(model, batch, size[-2:])
            rows['model']['plan_sample_ms'] = round(plan_ms, 3)
            rows['model']['ratio_plan_to_step'] = round(plan_ms / rows['model']['train_step_time'], 4)
    if backbone is not None:
        _add_ratios(rows['model'], rows['backbone'], cost_targets(model))
    if args.explain and is_mimo(model):
        explanation = explain_train_forward(model.cpu())
        rows['model']['train_graph_breaks'] = explanation['graph_break_count']
        rows['model']['train_break_reasons'] = ' | '.join(explanation['break_reasons'])
    for row in rows.values():
        row.update(setup.in_effect(optimizer))
    return list(rows.values())


def _add_ratios(row: Dict[str, Any], base: Dict[str, Any], targets: Dict[str, Tuple[str, float]]) -> None:
    for key in ('param_count', 'infer_gmacs', 'infer_samples_per_sec', 'infer_peak_mem_mb', 'train_samples_per_sec',
                'train_peak_mem_mb'):
        if key in row and key in base and base[key]:
            row[f'ratio_{key}'] = round(row[key] / base[key], 4)
    verdicts = []
    for column, (op, bound) in targets.items():
        if column in row:
            ok = row[column] >= bound if op == '>=' else row[column] <= bound
            verdicts.append(f"{column[len('ratio_'):]} {row[column]:.3f} {op} {bound}: {'OK' if ok else 'MISS'}")
    row['targets'] = '; '.join(verdicts)


def write_results(path: str, rows: Sequence[Dict[str, Any]]) -> None:
    """CSV with the union of the rows' columns, in first-seen order."""
    columns: List[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    write_csv(path, [{key: row.get(key, '') for key in columns} for row in rows])  # atomically


def run(args: argparse.Namespace) -> List[Dict[str, Any]]:
    """Benchmark every model; print one block per model and the target verdicts; write ``--results-file``."""
    if args.threads:
        torch.set_num_threads(args.threads)
    names = model_names(args)
    _Setup(args)  # refuse bad device / AMP flags before any work
    rows: List[Dict[str, Any]] = []
    for name in names:
        model_rows = benchmark_model(name, args)
        rows += model_rows
        for row in model_rows:
            print(', '.join(f'{k}={v}' for k, v in row.items()), flush=True)
        verdict = model_rows[-1].get('targets')
        if verdict:
            print(f'  cost targets of {name} vs {model_rows[-1]["backbone"]}: {verdict}', flush=True)
    effect = rows[-1] if rows else {}
    settings = ', '.join(f'{key}={effect[key]}' for key in ('amp', 'grad_scaler', 'optimizer', 'channels_last',
                                                             'cudnn_benchmark', 'tf32', 'torchcompile',
                                                             'torchcompile_mode') if key in effect)
    print(f'device {args.device}, threads {torch.get_num_threads()}, batch {args.batch_size}, best of {args.rounds} '
          f'alternating rounds of >= {args.min_seconds}s; in effect: {settings}')
    if args.results_file:
        write_results(args.results_file, rows)
    return rows
