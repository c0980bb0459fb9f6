"""``--resume``: the flags a resumed run must keep, its checkpoint read and checked before anything is built
(:func:`read_resume`) and restored into the run (:func:`load_resume`), the scheduler state, and the fresh schedule of a
run's added epochs (``--extend-lr``, :class:`ShiftedScheduler`).
"""
import argparse
import os
from typing import Any, Dict, Optional, Tuple

import torch
from timm.models import clean_state_dict
from timm.scheduler.plateau_lr import PlateauLRScheduler
from timm.utils import NativeScaler

from timm_mimo.cli.args import CliError, one_line
from timm_mimo.cli.checkpoint import check_checkpoint_model, checkpoint_class_names, read_checkpoint
from timm_mimo.cli.optim_factory import create_scheduler
from timm_mimo.cli.train_args import flag_names, recorded_args
from timm_mimo.task import MimoTask

__all__ = ['read_resume', 'load_resume', 'ShiftedScheduler', 'scheduler_state', 'load_scheduler_state',
           'create_segment_scheduler', 'RESUME_LOCKED', 'RESUME_OPTIMIZER', 'RESUME_QUIET']


# flags a resumed run must keep: a change makes it another run, refused with both values named
RESUME_LOCKED = (
    # the model, its input and its classes
    'model', 'model_kwargs', 'num_classes', 'in_chans', 'input_size', 'img_size', 'num_members', 'gp', 'drop',
    'drop_path', 'drop_block', 'bn_momentum', 'bn_eps', 'class_names', 'mean', 'std', 'crop_pad', 'model_ema',
    'model_ema_decay', 'model_ema_warmup',
    # the batch and the sampling
    'batch_size', 'grad_accum_steps', 'batch_repeat', 'seed',
    # the MIMO recipe (and timm's batch mixing of plain models)
    'input_repeat', 'mix', 'mix_prob', 'mix_prob_decay', 'mix_alpha', 'loss_root', 'single_source_end', 'mimo_cutmix',
    'mimo_mixup', 'mimo_mix_prob', 'smoothing', 'mixup', 'cutmix', 'cutmix_minmax', 'mixup_prob', 'mixup_switch_prob',
    'mixup_mode', 'mixup_off_epoch', 'eval_metric',
)


# the optimizer and its schedule: locked too, unless --no-resume-opt starts them afresh
RESUME_OPTIMIZER = (
    'opt', 'opt_eps', 'opt_betas', 'momentum', 'weight_decay', 'l2', 'layer_decay', 'layer_decay_min_scale',
    'layer_decay_no_opt_scale', 'opt_kwargs', 'lr', 'sched', 'sched_on_updates', 'lr_noise', 'lr_noise_pct',
    'lr_noise_std', 'lr_cycle_mul', 'lr_cycle_decay', 'lr_cycle_limit', 'lr_k_decay', 'lr_decay_fn',
    'lr_stable_timescale', 'warmup_lr', 'min_lr', 'decay_milestones', 'decay_epochs', 'warmup_epochs', 'warmup_prefix',
    'cooldown_epochs', 'patience_epochs', 'decay_rate',
)


# flags that say where and how to run, not what: a change is not reported
RESUME_QUIET = (
    'output', 'experiment', 'resume', 'no_resume_opt', 'start_epoch', 'initial_checkpoint', 'pretrained',
    'pretrained_path', 'data_dir', 'workers', 'pin_mem', 'no_prefetcher', 'log_interval', 'local_rank',
    'checkpoint_hist', 'log_wandb', 'wandb_project', 'wandb_tags', 'wandb_resume_id', 'device_modules',
    'synchronize_step', 'validation_batch_size', 'class_map_partial', 'class_descriptions', 'dry_run', 'log_file',
)


def _shown(value: Any) -> str:
    if value is None:
        return '(unset)'
    if isinstance(value, float):
        return f'{value:g}'
    if isinstance(value, (list, tuple)):
        return ' '.join(_shown(v) for v in value)
    if isinstance(value, dict):
        return ' '.join(f'{k}={v}' for k, v in value.items()) or '(none)'
    return repr(value) if isinstance(value, str) else str(value)


def read_resume(args: argparse.Namespace) -> Dict[str, Any]:
    """``--resume``'s checkpoint, checked against the flags before anything is built: the same kind of model
    (``arch``, constructor arguments), the flags that make the run (:data:`RESUME_LOCKED`, and
    :data:`RESUME_OPTIMIZER` unless ``--no-resume-opt``) and the number of processes. A larger ``--epochs`` needs
    ``--extend-lr``: it sets ``args.schedule_segment`` (the added epochs' schedule, ``args.schedule_segment_new``); a
    run extended before keeps its segment. Other changed flags are applied, and printed."""
    path = args.resume
    args.schedule_segment_new = False
    state = read_checkpoint(path, '--resume')
    if not isinstance(state, dict) or 'state_dict' not in state or 'epoch' not in state:
        raise CliError(f'--resume {path!r} is not a training checkpoint (no state_dict / epoch); use '
                       '--initial-checkpoint to start from its weights')
    if isinstance(state.get('args'), argparse.Namespace):
        raise CliError(f"--resume {path!r} was written by timm's train.py (its args are an argparse Namespace): a "
                       'timm-mimo-train run continues only its own runs (batch-repetition sampler, plans, schedule '
                       f'state); start a run from its weights with --initial-checkpoint {path}, or continue it with '
                       "timm's train.py (python -m timm_mimo run train.py ...)")
    check_checkpoint_model(state, path, args.model, args.model_kwargs, '--resume')
    recorded = state.get('args') if isinstance(state.get('args'), dict) else {}
    current = recorded_args(args)
    flags = flag_names()
    run_dir = os.path.dirname(os.path.abspath(path))
    start = int(state['epoch']) + 1
    way_out = (f"give the run's value (--config {os.path.join(run_dir, 'args.yaml')} repeats its flags), or start a "
               f'new run from these weights with --initial-checkpoint {path}')
    locked = RESUME_LOCKED + (() if args.no_resume_opt else RESUME_OPTIMIZER)
    segment = state.get('schedule_segment')
    old_epochs = recorded.get('epochs')
    extending = old_epochs is not None and args.epochs != old_epochs
    if extending and args.epochs < old_epochs:
        raise CliError(f'--resume {path!r} continues a run of --epochs {old_epochs}; --epochs {args.epochs} would '
                       f'shorten its schedule; {way_out}')
    if extending and not args.no_resume_opt and args.sched != 'none':
        if args.extend_lr is None:
            raise CliError(f'--resume {path!r}: --epochs {args.epochs} adds epochs to a run whose --sched '
                           f'{args.sched} schedule ends at epoch {old_epochs}, so they would train at its final lr; '
                           f'give --extend-lr LR (a fresh {args.sched} schedule from LR over epochs {start} to '
                           f'{args.epochs - 1}), or keep --epochs {old_epochs}')
        if args.epochs <= start:
            raise CliError(f'--resume {path!r} continues at epoch {start}: --epochs {args.epochs} adds no epoch after '
                           'it; raise --epochs')
        segment = dict(start=start, lr=float(args.extend_lr))
        args.schedule_segment_new = True
    elif 'extend_lr' in recorded:
        locked = locked + ('extend_lr',)
    for dest in locked:
        if dest in recorded and dest in current and current[dest] != recorded[dest] and not (
                dest in ('class_names', 'num_classes') and current[dest] is None):
            flag = flags.get(dest, dest)
            raise CliError(f'--resume {path!r} continues a run trained with {flag} {_shown(recorded[dest])}; '
                           f'{flag} {_shown(current[dest])} would make it another run: {way_out}')
    if state.get('world_size') is not None and state['world_size'] != args.world_size:
        raise CliError(f'--resume {path!r} continues a run of {state["world_size"]} process(es), now '
                       f'{args.world_size}: the global batch and its shards would change; resume with '
                       f'{state["world_size"]} process(es)')
    applied = [dest for dest in current if dest in recorded and dest not in locked + RESUME_QUIET + ('epochs',)
               and current[dest] != recorded[dest]]
    if applied and args.rank == 0:
        print('Resumed with changed flags (applied from now on): ' + ', '.join(
            f'{flags.get(dest, dest)} {_shown(current[dest])} (was {_shown(recorded[dest])})' for dest in applied),
            flush=True)
    args.schedule_segment = dict(segment) if isinstance(segment, dict) else None
    if args.class_names is None:
        args.class_names = checkpoint_class_names(state)
    if args.num_classes is None:  # the run's head (a run records the class count it took from its data)
        args.num_classes = recorded.get('num_classes')
    return state


def load_resume(path: str, state: Dict[str, Any], task: MimoTask, optimizer: Optional[torch.optim.Optimizer],
                scheduler: Any, loss_scaler: Optional[NativeScaler]) -> Tuple[int, Optional[float]]:
    """Restore a :func:`read_resume` state into the run; returns (next epoch, best metric). ``scheduler`` ``None``
    keeps the one just built (a new ``--extend-lr`` schedule)."""
    try:
        task.load_checkpoint_state(clean_state_dict(state['state_dict']))
        if optimizer is not None and 'optimizer' in state:
            optimizer.load_state_dict(state['optimizer'])
        if optimizer is not None and scheduler is not None and 'scheduler' in state:
            load_scheduler_state(scheduler, state['scheduler'])
        if task.has_ema() and 'state_dict_ema' in state:
            task.load_checkpoint_state(clean_state_dict(state['state_dict_ema']), ema=True)
        if loss_scaler is not None and 'scaler' in state:
            loss_scaler.load_state_dict(state['scaler'])
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise CliError(f'--resume {path!r} does not fit this run (model {state.get("arch")!r}, flags given now): '
                       f'{one_line(exc, 240)}') from None
    return int(state['epoch']) + 1, state.get('best_metric')


class ShiftedScheduler:
    """A timm scheduler whose epoch 0 is epoch ``start`` of the run: the schedule of a resumed run's added epochs
    (``--extend-lr``). The loop calls it as the run's scheduler, with the run's epoch and update counts."""

    def __init__(self, scheduler: Any, start: int, updates_per_epoch: int):
        self.scheduler = scheduler
        self.start = start
        self.updates_per_epoch = updates_per_epoch

    def step(self, epoch: int, metric: Optional[float] = None) -> None:
        self.scheduler.step(epoch - self.start, metric)

    def step_update(self, num_updates: int, metric: Optional[float] = None) -> None:
        self.scheduler.step_update(num_updates - self.start * self.updates_per_epoch, metric)


def scheduler_state(scheduler: Any) -> Optional[Dict[str, Any]]:
    """Everything a scheduler needs to resume exactly (timm's plateau state lacks torch's patience counters)."""
    if isinstance(scheduler, ShiftedScheduler):
        scheduler = scheduler.scheduler
    if scheduler is None:  # --sched none
        return None
    if isinstance(scheduler, PlateauLRScheduler):
        return dict(timm=scheduler.state_dict(), torch=scheduler.lr_scheduler.state_dict())
    return scheduler.state_dict()


def load_scheduler_state(scheduler: Any, state: Optional[Dict[str, Any]]) -> None:
    if isinstance(scheduler, ShiftedScheduler):
        scheduler = scheduler.scheduler
    if scheduler is None or state is None:
        return
    if isinstance(scheduler, PlateauLRScheduler):
        scheduler.load_state_dict(state['timm'])
        scheduler.lr_scheduler.load_state_dict(state['torch'])
    else:
        scheduler.load_state_dict(state)


def create_segment_scheduler(args: argparse.Namespace, optimizer: torch.optim.Optimizer, steps_per_epoch: int,
                             segment: Dict[str, Any]) -> Tuple[ShiftedScheduler, int]:
    """The schedule of a resumed run's added epochs (``--extend-lr``): ``--sched`` from ``segment['lr']`` over epochs
    ``segment['start']`` to ``--epochs`` (its cooldown after), no warm-up; returns it and the run's epoch count."""
    start, lr = int(segment['start']), float(segment['lr'])
    segment_args = argparse.Namespace(**vars(args))
    segment_args.epochs, segment_args.warmup_epochs, segment_args.lr = args.epochs - start, 0, lr
    for group in optimizer.param_groups:
        group['initial_lr'] = lr
    scheduler, num_epochs = create_scheduler(segment_args, optimizer, steps_per_epoch)
    return ShiftedScheduler(scheduler, start, steps_per_epoch), start + num_epochs
