"""A training run: :func:`train` (checks, model, task, data, loop, checkpoints, summary) and the :class:`Run` loop
(timm's train.py shape: ``task(input, target)`` -> loss, backward, step, EMA, scheduler). Usable from Python without
the command line, with flags from :func:`timm_mimo.cli.train_args.parse_args`::

    from timm_mimo.cli.run_loop import train
    from timm_mimo.cli.train_args import parse_args
    metrics = train(parse_args(['--config', 'cut_mixmo_wrn28_10_cifar100_b4', '--data-dir', '/data/cifar100']))

The loader is a plain ``DataLoader`` with :class:`~timm_mimo.data.BatchRepeatSampler` (timm's ``create_loader`` takes
no batch sampler, and the batch-repetition / DDP / gradient-accumulation shard equality needs one).
"""
import argparse
import contextlib
import importlib
import importlib.util
import logging
import math
import os
import random
import signal
import time
from collections import OrderedDict
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import timm
import torch
import torch.distributed as dist
import torch.nn as nn
import yaml
from timm.data import Mixup, resolve_data_config
from timm.layers import set_fast_norm
from timm.utils import NativeScaler, dispatch_clip_grad, distribute_bn, init_distributed_device

from timm_mimo.cli.args import CliError, check_model_input, one_line
from timm_mimo.cli.checkpoint import checkpoint_class_names
from timm_mimo.cli.checkpoint_saver import prune_epoch_checkpoints, restore_summary, save_epoch, write_summary
from timm_mimo.cli.data_path import create_eval_loader, create_train_loader, open_train_data, open_train_split
from timm_mimo.cli.evaluate import DECREASING_METRICS, format_metrics, metric_columns
from timm_mimo.cli.optim_factory import (
    compiled_optimizer_step,
    create_optimizer,
    create_scheduler,
    fused_for_amp,
    resolve_lr,
)
from timm_mimo.cli.progress import StepTimes, add_log_file, collect_logged, rounded_summary
from timm_mimo.cli.resume import create_segment_scheduler, load_resume, read_resume, scheduler_state
from timm_mimo.cli.run_folder import (
    CHECKPOINT_LAST,
    SignalGuard,
    plan_run_folder,
    prepare_output,
    write_atomically,
    write_error,
)
from timm_mimo.cli.train_args import recorded_args
from timm_mimo.cli.train_model import (
    build_task,
    check_binary_plans,
    check_eval_metric,
    check_labels,
    create_train_model,
    load_initial_checkpoint,
    take_data_classes,
)
from timm_mimo.data import SimultaneousMixup, dataset_class_names, dataset_num_classes
from timm_mimo.outputs import check_start_epoch, lock_run_folder, remove_empty_run_folder
from timm_mimo.task import MimoTask

__all__ = ['train', 'Run', 'set_cuda_backends', 'gather_eval', 'non_finite_tensor', 'epoch_seed', 'seed_epoch']


_logger = logging.getLogger('timm_mimo.train')


def set_cuda_backends(device: torch.device) -> None:
    """On CUDA, as timm's train.py: ``cudnn.benchmark`` (fixed input sizes: cuDNN picks the fastest kernels once) and
    TF32 matrix products for float32 work (cuDNN convolutions already allow TF32 by default). Nothing on other
    devices."""
    if device.type != 'cuda':
        return
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def gather_eval(member_logits: torch.Tensor, targets: torch.Tensor, args: argparse.Namespace,
                num_eval: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Every rank's evaluation shard (indices ``rank::world``) back in dataset order, on every rank."""
    if not args.distributed:
        return member_logits, targets
    parts: List[Any] = [None] * args.world_size
    dist.all_gather_object(parts, (member_logits, targets))
    full_logits = torch.empty(num_eval, *member_logits.shape[1:])
    full_targets = torch.empty(num_eval, dtype=targets.dtype)
    for rank, (logits, labels) in enumerate(parts):
        full_logits[rank::args.world_size] = logits
        full_targets[rank::args.world_size] = labels
    return full_logits, full_targets


def non_finite_tensor(model: nn.Module) -> Optional[str]:
    """The name of the first parameter or buffer holding NaN or inf, ``None`` if all are finite.

    One host read for the whole model (a flag per tensor, stacked on the device), once per epoch.
    """
    named = [(name, tensor) for name, tensor in list(model.named_parameters()) + list(model.named_buffers())
             if tensor.is_floating_point() and tensor.numel()]
    if not named:
        return None
    finite = torch.stack([torch.isfinite(tensor).all() for _, tensor in named]).cpu()
    bad = (~finite).nonzero()
    return named[int(bad[0])][0] if bad.numel() else None


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """Seed of the process RNGs (augmentation without workers, dropout) for one epoch: resumable per epoch."""
    return (seed * 7919 + epoch * 104729 + rank) % (2 ** 31)


def seed_epoch(args: argparse.Namespace, epoch: int) -> None:
    """Seed the process's random sources for one epoch: torch (dropout, stochastic depth), Python's ``random`` and
    numpy (timm's Mixup, random erasing on the device). The loader's image augmentations and plans are seeded per
    shard in the workers (:mod:`timm_mimo.loader`)."""
    seed = epoch_seed(args.seed, epoch, args.rank)
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002  (the global numpy RNG is the one timm's Mixup draws from)


class Run:
    """One training run's objects: the task, optimizer, scheduler, AMP and the timm Mixup of plain models."""

    def __init__(self, args: argparse.Namespace, task: MimoTask, optimizer: torch.optim.Optimizer, scheduler: Any,
                 num_epochs: int, steps_per_epoch: int, device: torch.device):
        self.args = args
        self.task = task
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.num_epochs = num_epochs
        self.steps_per_epoch = steps_per_epoch
        self.device = device
        self.autocast_dtype = None
        if args.amp:
            self.autocast_dtype = torch.float16 if args.amp_dtype == 'float16' and device.type == 'cuda' \
                else torch.bfloat16
        self.loss_scaler = NativeScaler(device=device.type) if self.autocast_dtype == torch.float16 else None
        self.optimizer_step = compiled_optimizer_step(args, optimizer, task, self.loss_scaler)
        self.eval_seconds = 0.0  # the last evaluation's duration, for the run's ETA
        self.mixup_fn = None
        if not task.mimo and (args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None):
            smoothing = 0.1 if args.smoothing is None else args.smoothing
            if args.mixup_mode == 'simultaneous':
                self.mixup_fn = SimultaneousMixup(args.mixup, args.cutmix, prob=args.mixup_prob,
                                                  label_smoothing=smoothing, num_classes=args.num_classes_resolved)
            else:
                self.mixup_fn = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix,
                                      cutmix_minmax=args.cutmix_minmax, prob=args.mixup_prob,
                                      switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                                      label_smoothing=smoothing, num_classes=args.num_classes_resolved)

    def forward_shard(self, batch: Any, epoch: int, step: int, shard: int) -> Dict[str, Any]:
        """The task's forward on one shard already on the device (a :class:`~timm_mimo.loader.MimoBatch`)."""
        self.task.set_step(epoch, step, self.steps_per_epoch, self.num_epochs, shard)
        images, targets = batch.images, batch.targets
        if self.mixup_fn is not None:
            images, targets = self.mixup_fn(images, targets)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            if self.task.mimo:
                return self.task(images, targets, batch.partner_images, batch.partner_targets, plan=batch.plan)
            return self.task(images, targets)

    def train_step(self, batches: Iterator[Any], epoch: int, step: int) -> Tuple[torch.Tensor, int, int]:
        """One optimizer step over ``grad_accum_steps`` shards; no host read of any device value.

        Returns:
            The sum of the shards' losses times their image counts (a device tensor), the images and binary batches.
        """
        args, task, accum = self.args, self.task, self.args.grad_accum_steps
        loss_sum, images, binary = None, 0, 0
        for micro_step in range(accum):
            batch = next(batches)
            update = micro_step == accum - 1
            sync = contextlib.nullcontext() if update or not args.distributed else task.no_sync()
            with sync:
                result = self.forward_shard(batch, epoch, step, args.rank * accum + micro_step)
                self.backward(result['loss'] / accum if accum > 1 else result['loss'], update)
            count = batch.images.shape[0]
            weighted = result['loss'].detach().float() * count
            loss_sum = weighted if loss_sum is None else loss_sum + weighted
            images += count
            binary += int(task.mimo and batch.plan.mix.binary)  # a host bool drawn with the plan: no device read
        num_updates = epoch * self.steps_per_epoch + step + 1
        task.update_ema(step=num_updates)
        if self.scheduler is not None:
            self.scheduler.step_update(num_updates=num_updates)
        return loss_sum, images, binary

    def train_one_epoch(self, epoch: int, loader: Any) -> Dict[str, float]:
        """One epoch of optimizer steps; logs progress on rank 0.

        The loss stays on the device: it is summed there and read back (one host read) only every ``--log-interval``
        steps and at the end of the epoch, where a non-finite value stops the run before any checkpoint is written.
        """
        args, task = self.args, self.task
        task.train()
        if self.mixup_fn is not None and args.mixup_off_epoch and epoch >= args.mixup_off_epoch:
            self.mixup_fn.mixup_enabled = False
        epoch_loss, epoch_images, binary_batches = 0.0, 0, 0
        window_loss: Optional[torch.Tensor] = None
        window_images = 0
        times = StepTimes(self.steps_per_epoch, self.num_epochs - epoch - 1, self.eval_seconds)
        batches = times.wrap(loader)  # data time: the wait for each batch
        for step in range(self.steps_per_epoch):
            loss_sum, images, binary = self.train_step(batches, epoch, step)
            times.step_done(images)
            window_loss = loss_sum if window_loss is None else window_loss + loss_sum
            window_images += images
            binary_batches += binary
            if args.synchronize_step and self.device.type == 'cuda':
                torch.cuda.synchronize()
            num_updates = epoch * self.steps_per_epoch + step + 1
            if args.kill_after_steps is not None and num_updates >= args.kill_after_steps:
                os.kill(os.getpid(), signal.SIGKILL)  # test hook: die like a killed job, without any cleanup
            last = step + 1 == self.steps_per_epoch
            if step % args.log_interval == 0 or last:
                window_value = window_loss.item()  # the host read of the loss: at the log interval only
                if not math.isfinite(window_value):
                    raise CliError(f'the loss is not finite ({window_value}) in epoch {epoch} by step {step}: the '
                                   f'run diverged; lower --lr (now {args.lr:g}) or add --clip-grad (no checkpoint '
                                   'written for this epoch)')
                epoch_loss += window_value
                epoch_images += window_images
                if args.rank == 0:
                    lr = self.optimizer.param_groups[0]['lr']
                    done = 100 * (step + 1) / self.steps_per_epoch
                    _logger.info(f'Train: {epoch} [{step + 1:>5d}/{self.steps_per_epoch} ({done:3.0f}%)]'
                                 f'  loss {window_value / window_images:.4f} ({epoch_loss / epoch_images:.4f})'
                                 f'  lr {lr:.3e}  {times.line(args.world_size)}')
                window_loss, window_images = None, 0
        metrics = OrderedDict(loss=epoch_loss / epoch_images)
        if task.mimo:
            metrics['binary_batches'] = binary_batches / (self.steps_per_epoch * args.grad_accum_steps)
        return metrics

    def backward(self, loss: torch.Tensor, update: bool) -> None:
        """Backward (scaled for float16 AMP), optional gradient clipping, optimizer step when ``update``."""
        args = self.args
        params = self.task.get_clip_parameters()
        if self.loss_scaler is not None:
            self.loss_scaler(loss, self.optimizer, clip_grad=args.clip_grad, clip_mode=args.clip_mode,
                             parameters=params, need_update=update)
        else:
            loss.backward()
            if update and self.optimizer_step is not None:
                self.optimizer_step()  # clipping and the update: one compiled graph
            elif update:
                if args.clip_grad is not None:
                    dispatch_clip_grad(params, value=args.clip_grad, mode=args.clip_mode)
                self.optimizer.step()
        if update:
            self.optimizer.zero_grad(set_to_none=True)

    def evaluate(self, model: nn.Module, loader: Any, num_eval: int, label: str = 'Eval:') -> Dict[str, float]:
        """The evaluation columns of ``model`` on the whole validation split (shards gathered across ranks); logs
        ``label`` lines with the running top-1 every ``--log-interval`` batches (rank 0)."""
        start = time.perf_counter()
        log = _logger.info if self.args.rank == 0 else (lambda line: None)
        member_logits, targets = collect_logged(timm.utils.unwrap_model(model), loader, self.device,
                                                self.autocast_dtype, self.args.channels_last,
                                                self.args.log_interval, label, log)
        self.eval_seconds = time.perf_counter() - start
        member_logits, targets = gather_eval(member_logits, targets, self.args, num_eval)
        return metric_columns(member_logits, targets)

    def state(self, epoch: int, metrics: Dict[str, float], best_metric: Optional[float]) -> Dict[str, Any]:
        """Everything a resumed run needs, as tensors and plain values (``torch.load(weights_only=True)``)."""
        state = dict(epoch=epoch, arch=self.args.model, optimizer=self.optimizer.state_dict(),
                     scheduler=scheduler_state(self.scheduler), metric=metrics.get(self.args.eval_metric),
                     best_metric=best_metric, version=2, args=recorded_args(self.args))
        state.update(self.task.get_checkpoint_state())
        if self.task.has_ema():
            state['state_dict_ema'] = timm.utils.get_state_dict(self.task.get_trainable_module(ema=True))
        if self.loss_scaler is not None:
            state['scaler'] = self.loss_scaler.state_dict()
        return state


def train(args: argparse.Namespace, guard: Optional[SignalGuard] = None) -> Dict[str, float]:
    """The whole run: checks, model, task, data, loop, checkpoints, summary; returns the last evaluation metrics.

    Every check runs before the run folder is claimed; ``guard`` (:class:`SignalGuard`) raises, after the epoch's
    files are written, a signal that arrived where it could not (a data loader shutting its workers down)."""
    guard = guard or SignalGuard()
    for module in args.device_modules or []:
        importlib.import_module(module)
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        raise CliError(f'--device {args.device} requested but CUDA is not available; use --device cpu')
    if args.log_wandb and importlib.util.find_spec('wandb') is None:
        raise CliError('--log-wandb needs the wandb package: pip install wandb')
    device = init_distributed_device(args)
    if args.fast_norm:
        set_fast_norm()
    resolve_lr(args)
    args.schedule_segment, args.schedule_segment_new = None, False
    resume_state = read_resume(args) if args.resume else None
    plan = plan_run_folder(args, resume_state)
    check_start_epoch(args.start_epoch, plan[2], args.resume)
    if plan[2] == 'continue' and args.rank == 0:  # before anything is built: a second resume of it is refused now
        lock_run_folder(os.path.join(plan[0], plan[1]))
    train_split = open_train_split(args)  # before the model: with --num-classes unset its classes size the head
    take_data_classes(args, train_split)
    torch.manual_seed(args.seed)
    model = create_train_model(args)
    args.num_classes_resolved = model.num_classes
    if args.initial_checkpoint:
        load_initial_checkpoint(model, args.initial_checkpoint)
    split_names = dataset_class_names(train_split)
    check_labels(len(split_names) if split_names else dataset_num_classes(train_split), model.num_classes, args,
                 split_names)
    if args.sync_bn and args.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    try:
        task = build_task(args, model, device)
    except ValueError as exc:
        raise CliError(f'bad MIMO flags: {one_line(exc)}') from None
    check_binary_plans(task, model)
    args.data_config = resolve_data_config(vars(args), model=model, verbose=False)
    check_model_input(model, args, args.data_config['input_size'])
    num_partners = args.batch_size if task.pixel_mix is not None else 0
    train_data = open_train_data(args, args.data_config, num_partners, train_split)
    sampler = train_data.sampler
    class_names = args.class_names = train_data.class_names
    if resume_state is not None and checkpoint_class_names(resume_state) not in (None, class_names):
        raise CliError(f'--resume {args.resume!r} was trained on the classes '
                       f'{checkpoint_class_names(resume_state)}, the data gives {class_names}: resume on its data')
    optimizer = create_optimizer(args, model, device)
    segment = args.schedule_segment
    if segment is not None:
        scheduler, num_epochs = create_segment_scheduler(args, optimizer, sampler.steps_per_epoch, segment)
    else:
        scheduler, num_epochs = create_scheduler(args, optimizer, sampler.steps_per_epoch)
    if args.model_ema:
        task.setup_ema(decay=args.model_ema_decay, use_warmup=args.model_ema_warmup)
    if args.val_split:
        check_eval_metric(args, task)
    train_loader = create_train_loader(args, train_data, task, num_epochs, device, args.data_config)
    eval_loader, num_eval = create_eval_loader(args, args.data_config, device, class_names)
    run = Run(args, task, optimizer, scheduler, num_epochs, sampler.steps_per_epoch, device)
    if run.autocast_dtype is not None:  # args.yaml records the dtype that runs (the CPU's autocast is bfloat16)
        args.amp_dtype = str(run.autocast_dtype).removeprefix('torch.')
    start_epoch, best_metric = 0, None
    if resume_state is not None:
        start_epoch, best_metric = load_resume(args.resume, resume_state, task,
                                               None if args.no_resume_opt else optimizer,
                                               None if args.schedule_segment_new else scheduler, run.loss_scaler)
    if args.start_epoch is not None:
        start_epoch = args.start_epoch
    if start_epoch >= num_epochs:
        raise CliError(f'--resume {args.resume!r} ends at epoch {start_epoch - 1}, the last of --epochs {num_epochs}: '
                       'nothing to train; to train longer give a larger --epochs with --extend-lr LR (a fresh '
                       'schedule for the added epochs)')
    if args.torchcompile:
        task.compile(backend=args.torchcompile, mode=args.torchcompile_mode)
    if args.distributed:
        # static_graph: every step uses the same parameters in the same graph; DDP refuses it when the first step
        # starts under no_sync (accumulation), so it is on without accumulation only
        task.prepare_distributed(device_ids=[device] if device.type == 'cuda' else None,
                                 broadcast_buffers=not args.no_ddp_bb, static_graph=args.grad_accum_steps == 1)
    if start_epoch > 0 and scheduler is not None:
        scheduler.step(start_epoch)

    output_dir = ''
    if args.rank == 0:
        output_dir = prepare_output(args, args.data_config, plan)
        args.output_dir = output_dir
        args_path = os.path.join(output_dir, 'args.yaml')
        try:
            write_atomically(args_path, lambda tmp_path: _dump_yaml(recorded_args(args), tmp_path))
            if resume_state is not None:
                restore_summary(output_dir, resume_state, os.path.dirname(os.path.abspath(args.resume)))
        except Exception as exc:  # noqa: BLE001 - a full disk is not always an OSError (torch.save, yaml)
            if plan[2] != 'continue':
                with contextlib.suppress(OSError):
                    remove_empty_run_folder(output_dir)  # claimed for nothing (the write left no file)
            raise CliError(write_error(args_path, exc, 'free space or pick a writable --output')) from None
        global_batch = args.batch_size * args.world_size * args.grad_accum_steps
        lr_text = f'lr {args.lr:g}' if segment is None else \
            f'lr {args.lr:g}, from epoch {segment["start"]} a fresh {args.sched} schedule from {segment["lr"]:g}'
        if args.log_file:
            try:
                add_log_file(os.path.join(output_dir, args.log_file))
            except OSError as exc:
                raise CliError(write_error(args.log_file, exc, 'pick a writable --log-file')) from None
        amp = 'off' if run.autocast_dtype is None else f'on, {args.amp_dtype} on {device.type}' + (
            ' with loss scaling' if run.loss_scaler is not None else '')
        _logger.info(f'Model {args.model}: {sum(p.numel() for p in model.parameters()):,} params, '
                     f'{"MIMO M=" + str(task.num_members) if task.mimo else "plain"}; {args.world_size} process(es), '
                     f'global batch {global_batch} ({global_batch // args.batch_repeat} unique x '
                     f'b={args.batch_repeat}), {sampler.steps_per_epoch} steps/epoch, {num_epochs} epochs, {lr_text}; '
                     f'AMP {amp}; output {output_dir}')
        if task.mimo:
            _logger.info(f'{task.mixer}  {task.criterion}  input_repeat={task.input_repeat}  '
                         f'pixel_mix={task.pixel_mix}')
        if fused_for_amp(args, device):
            _logger.info(f'{type(optimizer).__name__} runs fused: float16 AMP reads no inf / NaN flag back to the '
                         'host')
        if plan[2] == 'new':
            _logger.info(f'Continuing the run of {os.path.dirname(os.path.abspath(args.resume))} from epoch '
                         f'{start_epoch} in a new run folder, {output_dir}')
        if args.log_wandb:
            import wandb
            wandb.init(project=args.wandb_project, config=recorded_args(args), tags=args.wandb_tags,
                       id=args.wandb_resume_id or None, resume='must' if args.wandb_resume_id else None)

    eval_metrics: Dict[str, float] = {}
    set_cuda_backends(device)
    for epoch in range(start_epoch, num_epochs):
        sampler.set_epoch(epoch)
        seed_epoch(args, epoch)
        train_metrics = run.train_one_epoch(epoch, train_loader)
        if args.distributed and args.dist_bn in ('broadcast', 'reduce'):
            distribute_bn(model, args.world_size, args.dist_bn == 'reduce')
        bad = non_finite_tensor(model)
        if bad is not None:
            raise CliError(f'the run diverged at epoch {epoch}: {bad} is not finite (NaN or inf); start again with a '
                           f'lower --lr (now {args.lr:g}), or add --clip-grad (also on --resume of an earlier '
                           'checkpoint). No checkpoint of this epoch was written')
        if eval_loader is not None:
            eval_metrics = run.evaluate(model, eval_loader, num_eval, f'Eval: {epoch}')
            if task.has_ema():
                ema_metrics = run.evaluate(task.get_trainable_module(ema=True).module, eval_loader, num_eval,
                                           f'Eval (EMA): {epoch}')
                eval_metrics.update((f'ema_{k}', v) for k, v in ema_metrics.items())
        epoch_lrs = [group['lr'] for group in optimizer.param_groups]  # the lr this epoch trained at (timm's row)
        if scheduler is not None:
            scheduler.step(epoch + 1, eval_metrics.get(args.eval_metric))
        if args.rank == 0:
            metric = eval_metrics.get(args.eval_metric)
            is_best = metric is not None and (best_metric is None or (
                metric < best_metric if args.eval_metric in DECREASING_METRICS else metric > best_metric))
            best_metric = metric if is_best else best_metric
            if eval_metrics:
                _logger.info(f'Eval: {epoch}  {format_metrics(eval_metrics)}')
            row = OrderedDict((f'train_{k}', v) for k, v in train_metrics.items())
            row.update((f'eval_{k}', v) for k, v in eval_metrics.items())
            row['lr'] = sum(epoch_lrs) / len(epoch_lrs)
            row = rounded_summary(row)
            state = run.state(epoch, eval_metrics, best_metric)
            state.update(class_names=class_names, world_size=args.world_size, schedule_segment=segment,
                         summary_row=dict(row))
            try:
                with guard.deferred():  # the checkpoint and its summary row land together or not at all
                    save_epoch(output_dir, epoch, state, is_best, args.checkpoint_hist)
                    write_summary(os.path.join(output_dir, 'summary.csv'), epoch, row)
                    prune_epoch_checkpoints(output_dir, args.checkpoint_hist)
            except Exception as exc:  # noqa: BLE001 - torch.save / safetensors on a full disk raise more than OSError
                raise CliError(f'cannot write the epoch {epoch} checkpoint / summary in {output_dir!r} '
                               f'({one_line(exc)}); free space or fix the folder, then resume with --resume '
                               f'{os.path.join(output_dir, CHECKPOINT_LAST)}') from None
            if args.log_wandb:
                import wandb
                wandb.log(dict(epoch=epoch, **row))
        guard.check()  # a signal swallowed during the epoch (e.g. by a loader's worker shutdown) ends the run here
    if args.rank == 0 and eval_metrics:
        _logger.info(f'*** Final ({args.model}, epoch {num_epochs - 1}): {format_metrics(eval_metrics)}')
        if best_metric is not None:
            _logger.info(f'*** Best {args.eval_metric}: {best_metric:.4f}')
    return eval_metrics


def _dump_yaml(values: Dict[str, Any], path: str) -> None:
    with open(path, 'w') as f:
        yaml.safe_dump(values, f, sort_keys=False)
