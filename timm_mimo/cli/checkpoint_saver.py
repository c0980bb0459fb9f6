"""A training run's epoch files: its checkpoints and ``summary.csv``.

Written here rather than by timm's ``CheckpointSaver`` / ``update_summary`` (the reasons: ``docs/decisions.md``):
a checkpoint also holds the scheduler state (exact resume of every ``--sched``) and the epoch's summary row, holds no
pickled objects (``torch.load(weights_only=True)``), and every file is written atomically, ``last.pth.tar`` last as the
epoch's commit point (:func:`save_epoch`). ``checkpoint-<epoch>`` files rotate by age (:func:`prune_epoch_checkpoints`);
``summary.csv`` is rewritten, not appended, so a resumed epoch replaces its row (:func:`write_summary`).
"""
import os
import shutil
from collections import OrderedDict
from typing import Any, Dict, List

import torch

from timm_mimo.cli.run_folder import CHECKPOINT_BEST, CHECKPOINT_LAST, EPOCH_CHECKPOINT, same_path, write_atomically

__all__ = ['save_checkpoint', 'copy_checkpoint', 'save_epoch', 'prune_epoch_checkpoints', 'write_summary',
           'restore_summary']


def save_checkpoint(path: str, state: Dict[str, Any]) -> None:
    """Write to a temporary file, then rename: a checkpoint is complete or absent, never half-written; a failed
    write leaves no ``.tmp`` file behind."""
    write_atomically(path, lambda tmp_path: torch.save(state, tmp_path))


def copy_checkpoint(source: str, path: str) -> None:
    """``source``'s bytes to ``path``, atomically (one serialization per epoch, the other files are copies)."""
    def copy(tmp_path: str) -> None:
        with open(source, 'rb') as src, open(tmp_path, 'wb') as dst:
            shutil.copyfileobj(src, dst, 1 << 24)
    write_atomically(path, copy)


def save_epoch(output_dir: str, epoch: int, state: Dict[str, Any], is_best: bool, hist: int) -> None:
    """The files of one finished epoch, ``last.pth.tar`` last: it is the commit point of the epoch.

    ``checkpoint-<epoch>`` (with ``hist``) and ``model_best`` (when ``is_best``) are written before ``last``, so a
    failure (a full disk, a signal) before ``last`` is replaced leaves the previous epoch's complete state, from which
    ``--resume`` re-runs this epoch and writes every file again. The summary row is in the state too
    (``summary_row``): a row lost after ``last`` is restored by ``--resume``."""
    last = os.path.join(output_dir, CHECKPOINT_LAST)
    targets = ([os.path.join(output_dir, f'checkpoint-{epoch}.pth.tar')] if hist > 0 else []) + \
        ([os.path.join(output_dir, CHECKPOINT_BEST)] if is_best else []) + [last]
    save_checkpoint(targets[0], state)
    for target in targets[1:]:
        copy_checkpoint(targets[0], target)


def prune_epoch_checkpoints(output_dir: str, hist: int) -> None:
    """Keep only the newest ``hist`` of the ``checkpoint-<epoch>.pth.tar`` files.

    Only files named ``checkpoint-<integer>.pth.tar`` take part in the rotation (a user's ``checkpoint-final``
    is left alone)."""
    if hist <= 0:
        return
    kept = sorted((int(match.group(1)), name) for name in os.listdir(output_dir)
                  if (match := EPOCH_CHECKPOINT.match(name)))
    for _, name in kept[:-hist]:
        os.remove(os.path.join(output_dir, name))


def write_summary(path: str, epoch: int, row: Dict[str, Any]) -> None:
    """Put the row of ``epoch`` into ``summary.csv``, dropping rows of this epoch or later (a resumed run re-writes
    them, never duplicates them); the file is replaced atomically."""
    import csv
    rows: List[Dict[str, Any]] = []
    if os.path.exists(path):
        with open(path, newline='') as f:
            rows = [r for r in csv.DictReader(f) if r.get('epoch', '').isdigit() and int(r['epoch']) < epoch]
    rows.append(OrderedDict(epoch=epoch, **row))
    fields: List[str] = []
    for r in rows:
        fields += [key for key in r if key not in fields]

    def write(tmp_path: str) -> None:
        with open(tmp_path, 'w', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
    write_atomically(path, write)


def restore_summary(output_dir: str, state: Dict[str, Any], source_dir: str) -> None:
    """The summary rows up to the resumed epoch: the resumed epoch's row from the checkpoint (it may have been lost
    after the checkpoint was written), earlier rows from the resumed run's ``summary.csv`` when the run continues in
    a new folder."""
    row = state.get('summary_row')
    if not isinstance(row, dict):
        return
    epoch = int(state['epoch'])
    path = os.path.join(output_dir, 'summary.csv')
    source = os.path.join(source_dir, 'summary.csv')
    if not same_path(path, source) and os.path.isfile(source):
        import csv
        with open(source, newline='') as f:
            for earlier in csv.DictReader(f):
                if earlier.get('epoch', '').isdigit() and int(earlier['epoch']) < epoch:
                    write_summary(path, int(earlier['epoch']), {k: v for k, v in earlier.items() if k != 'epoch'})
    write_summary(path, epoch, row)
