"""timm-mimo-train: train timm and timm_mimo models with timm's flags, on one process or many (torchrun).

The training step is :class:`timm_mimo.task.MimoTask` (a ``timm.task.TrainingTask``): for a MIMO model (one with
``num_members`` and ``forward_members``) it pairs the batch, samples the mixing plan, optionally pixel-mixes every
member input with partners from the whole dataset and weighs the member losses; any other timm model trains as in
timm (cross-entropy, label smoothing, timm's Mixup/CutMix). Global-batch semantics and batch repetition:
:mod:`timm_mimo.data`.

    timm-mimo-train --config cut_mixmo_wrn28_10_cifar100_b4 --data-dir /data/cifar100
    torchrun --nproc_per_node 2 train.py --model cut_mixmo --model-kwargs backbone=wrn28_2 ...

What is timm's and what is ours: the model, optimizer (``optimizer_kwargs``), scheduler (``scheduler_kwargs``),
Mixup, EMA, AMP scaler, distributed set-up, datasets and transforms are timm's; the loader
(:mod:`timm_mimo.cli.data_path`) and the checkpoints (:mod:`timm_mimo.cli.checkpoint_saver`) are ours.

This module is the command: ``main`` parses the flags (:mod:`timm_mimo.cli.train_args`), runs ``--dry-run``
(:mod:`timm_mimo.cli.dry_run`) or the run (:func:`timm_mimo.cli.run_loop.train`), and ends every fault with one line.
The run's pieces: :mod:`~timm_mimo.cli.train_model` (model, task, checks), :mod:`~timm_mimo.cli.optim_factory`
(optimizer, schedule), :mod:`~timm_mimo.cli.resume` (``--resume``), :mod:`~timm_mimo.cli.run_folder` (where a run
writes).
"""
import argparse
import os
import sys
from typing import Optional, Sequence

import torch.distributed as dist

from timm_mimo.cli.args import CliError
from timm_mimo.cli.dry_run import train_dry_run
from timm_mimo.cli.errors import report_unexpected, split_debug
from timm_mimo.cli.optim_factory import create_optimizer  # noqa: F401  (documented as timm_mimo.cli.train.create_optimizer)
from timm_mimo.cli.progress import close_logging, setup_console_logging
from timm_mimo.cli.run_folder import CHECKPOINT_LAST, Interrupted, SignalGuard
from timm_mimo.cli.run_loop import train
from timm_mimo.cli.train_args import build_parser, parse_args
from timm_mimo.data import DataError
from timm_mimo.outputs import release_run_folders

__all__ = ['build_parser', 'parse_args', 'train', 'main']


def _interrupted_line(exc: BaseException, args: Optional[argparse.Namespace]) -> str:
    """The one line of a run stopped by SIGINT / SIGTERM: how to go on from what was saved."""
    name = exc.name if isinstance(exc, Interrupted) else 'SIGINT'
    output_dir = getattr(args, 'output_dir', '') if args is not None else ''
    last = os.path.join(output_dir, CHECKPOINT_LAST) if output_dir else ''
    if last and os.path.isfile(last):
        return f'error: interrupted ({name}); resume with --resume {last}'
    return f'error: interrupted ({name}) before the first epoch was saved; run the command again'


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point: bad input ends with one line on stderr and exit status 2; SIGINT / SIGTERM with one line and
    status 130 / 143, after the files being written are complete or removed."""
    argv, debug = split_debug(argv)
    args = None
    with SignalGuard() as guard:
        try:
            args = parse_args(argv)
            if args.dry_run:
                return train_dry_run(args)
            setup_console_logging()  # timm's setup_default_logging, on stdout
            train(args, guard)
        except (CliError, DataError) as exc:
            print(f'error: {exc}', file=sys.stderr)
            return 2
        except (KeyboardInterrupt, Interrupted) as exc:
            print(_interrupted_line(exc, args), file=sys.stderr)
            return exc.exit_code if isinstance(exc, Interrupted) else 130
        except Exception as exc:  # noqa: BLE001 - the one line of anything else (timm_mimo.cli.errors)
            return report_unexpected(exc, debug)
        finally:
            release_run_folders()
            close_logging()
            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()
    return 0


if __name__ == '__main__':
    sys.exit(main())
