"""Progress as timm's scripts report it: Python ``logging`` set up by timm's ``setup_default_logging``, step and data
time, image rates, ETAs, evaluation lines with a running top-1, and summary values rounded.

The console handler writes to stdout (where the commands' results go); ``--log-file`` adds timm's rotating file
handler (time, logger and level on every line).
"""
import datetime
import itertools
import logging
import logging.handlers
import math
import os
import sys
import time
from typing import Any, Callable, Dict, Iterable, Iterator, Optional, Tuple

import torch

from timm_mimo.metrics import collect_member_logits

__all__ = ['setup_console_logging', 'add_log_file', 'close_logging', 'StepTimes', 'format_duration', 'collect_logged',
           'rounded_summary']

_OURS = '_timm_mimo_handler'


def _remove_our_handlers(kind: type) -> None:
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, _OURS, False) and type(h) is kind]:
        root.removeHandler(handler)
        handler.close()


_saved_level: Optional[int] = None


def setup_console_logging(level: int = logging.INFO) -> None:
    """timm's ``setup_default_logging`` (INFO lines bare, others ``LEVEL: message``), its console handler on stdout;
    calling it again replaces the handler it added (a command run twice in one process logs each line once);
    :func:`close_logging` undoes it."""
    global _saved_level
    from timm.utils import setup_default_logging
    _remove_our_handlers(logging.StreamHandler)
    root = logging.getLogger()
    if _saved_level is None:
        _saved_level = root.level
    before = set(root.handlers)
    setup_default_logging(default_level=level)
    for handler in set(root.handlers) - before:
        setattr(handler, _OURS, True)
        handler.setStream(sys.stdout)


def add_log_file(path: str) -> None:
    """Also log to ``path`` with timm's rotating file handler (its folder is created)."""
    _remove_our_handlers(logging.handlers.RotatingFileHandler)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=1024 ** 2 * 2, backupCount=3)
    handler.setFormatter(logging.Formatter('%(asctime)s - %(name)20s: [%(levelname)8s] - %(message)s'))
    setattr(handler, _OURS, True)
    logging.getLogger().addHandler(handler)


def close_logging() -> None:
    """At the end of a command: detach and close the handlers :func:`setup_console_logging` and :func:`add_log_file`
    added (a console handler must not outlive the stdout it writes to) and restore the root logger's level."""
    global _saved_level
    _remove_our_handlers(logging.handlers.RotatingFileHandler)
    _remove_our_handlers(logging.StreamHandler)
    if _saved_level is not None:
        logging.getLogger().setLevel(_saved_level)
        _saved_level = None


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` (``D days, H:MM:SS`` beyond a day), as ``datetime.timedelta`` prints it; ``?`` when unknown."""
    if not math.isfinite(seconds):
        return '?'
    return str(datetime.timedelta(seconds=max(0, round(seconds))))


class TimedBatches:
    """An iterator over a loader's batches that adds the time spent waiting for each to ``times.data``."""

    def __init__(self, batches: Iterable[Any], times: 'StepTimes'):
        self.batches = iter(batches)
        self.times = times

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        start = time.perf_counter()
        try:
            return next(self.batches)
        finally:
            self.times.data_seconds += time.perf_counter() - start


class StepTimes:
    """Step and data time of an epoch's steps (timm's ``batch_time`` / ``data_time`` meters), image rates over the
    log interval and the epoch, and the ETAs of the epoch and the run. Host clocks only: no device read."""

    def __init__(self, steps_per_epoch: int, remaining_epochs: int, eval_seconds: float = 0.0):
        self.steps_per_epoch = steps_per_epoch
        self.remaining_epochs = remaining_epochs  # after this one
        self.eval_seconds = eval_seconds  # one evaluation's duration (0 until one ran)
        self.start = self.window_start = self.step_start = time.perf_counter()
        self.steps = 0
        self.data_seconds = 0.0  # added by TimedBatches
        self.epoch_images = self.window_images = 0
        self.last_step = self.last_data = 0.0
        self._data_at_step = 0.0

    def wrap(self, batches: Iterable[Any]) -> TimedBatches:
        return TimedBatches(batches, self)

    def step_done(self, images: int) -> None:
        now = time.perf_counter()
        self.last_step, self.step_start = now - self.step_start, now
        self.last_data, self._data_at_step = self.data_seconds - self._data_at_step, self.data_seconds
        self.steps += 1
        self.epoch_images += images
        self.window_images += images

    def line(self, world_size: int = 1) -> str:
        """``time`` (last step, average) ``data`` (last, average) ``img/s`` (interval, epoch) and the ETAs; starts a
        new log interval."""
        now = time.perf_counter()
        elapsed = max(now - self.start, 1e-9)
        avg_step = elapsed / max(self.steps, 1)
        window = max(now - self.window_start, 1e-9)
        epoch_left = (self.steps_per_epoch - self.steps) * avg_step
        run_left = epoch_left + self.remaining_epochs * (self.steps_per_epoch * avg_step + self.eval_seconds)
        text = (f'time {self.last_step:.3f}s ({avg_step:.3f}s avg)  data {self.last_data:.3f}s '
                f'({self.data_seconds / max(self.steps, 1):.3f}s avg)  '
                f'{self.window_images * world_size / window:,.0f} img/s '
                f'({self.epoch_images * world_size / elapsed:,.0f} epoch)  '
                f'ETA epoch {format_duration(epoch_left)}, run {format_duration(run_left)}')
        self.window_start, self.window_images = now, 0
        return text


def collect_logged(model: torch.nn.Module, loader: Iterable[Tuple[torch.Tensor, torch.Tensor]],
                   device: torch.device, autocast_dtype: Optional[torch.dtype] = None, channels_last: bool = False,
                   log_every: int = 10, prefix: str = 'Test:', log: Callable[[str], None] = print
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`timm_mimo.metrics.collect_member_logits` in slices of ``log_every`` batches, logging after each the
    batches done, the running top-1 of the ensemble and the time (the logits come back to the host once per slice).

    Returns:
        Member logits ``(N, M, K)`` and targets ``(N,)``, as :func:`~timm_mimo.metrics.collect_member_logits`.
    """
    total = len(loader) if hasattr(loader, '__len__') else None
    done = 0

    def counted(batches: Iterable[Any]) -> Iterator[Any]:
        nonlocal done
        for batch in batches:
            done += 1
            yield batch

    batches = counted(loader)
    logits_parts, target_parts = [], []
    correct, seen, start = 0, 0, time.perf_counter()
    while True:
        logits, targets = collect_member_logits(model, itertools.islice(batches, log_every), device, autocast_dtype,
                                                channels_last)
        if not len(targets):
            break
        logits_parts.append(logits)
        target_parts.append(targets)
        correct += int((logits.mean(dim=1).argmax(dim=-1) == targets).sum())
        seen += len(targets)
        of = f'/{total}' if total is not None else ''
        log(f'{prefix} [{done:>4d}{of}]  top-1 {100.0 * correct / seen:.2f} % (running, {seen} images)  '
            f'{time.perf_counter() - start:.1f}s')
    if not logits_parts:
        return torch.empty(0), torch.empty(0, dtype=torch.long)
    return torch.cat(logits_parts), torch.cat(target_parts)


def rounded_summary(row: Dict[str, Any]) -> Dict[str, Any]:
    """summary.csv values rounded as timm's results are: metrics to 4 decimals (``55.00000000000001`` -> ``55.0``),
    the learning rate to 6 significant digits (a small rate keeps its value)."""
    def rounded(key: str, value: Any) -> Any:
        if not isinstance(value, float) or not math.isfinite(value):
            return value
        return float(f'{value:.6g}') if key == 'lr' else round(value, 4)
    return {key: rounded(key, value) for key, value in row.items()}
