"""Measurement helpers shared by the benchmark families (``python benchmark.py <family>``).

Every figure a family prints comes from two things measured side by side in the same process, alternating runs so
that slow drift of the machine hits both equally; ratios are what the targets are stated in.
"""
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ['count_params', 'count_flops', 'interleaved_throughput', 'device_synchronizer', 'print_table']


def count_params(model: nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in model.parameters())


def count_flops(fn: Callable[[], object]) -> int:
    """Forward FLOPs of one call of ``fn`` as counted by ``torch.utils.flop_counter``.

    Runs with autograd on: under ``no_grad`` the flop counter's module tracker rejects the expanded class tokens of
    CaiT-like models; a forward without ``backward`` counts the same FLOPs.
    """
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def interleaved_throughput(fns: Dict[str, Callable[[], object]], items_per_call: int, warmup: int = 2,
                           rounds: int = 5, min_seconds: float = 0.5,
                           synchronize: Optional[Callable[[], None]] = None) -> Dict[str, float]:
    """Items per second of each callable, measured in alternating rounds; the best round of each is kept.

    Args:
        fns: Name -> zero-argument callable doing one unit of work (a forward, a train step).
        items_per_call: Items (images) processed by one call, the same for every callable.
        warmup: Untimed calls of each callable first.
        rounds: Alternating timed rounds; each round calls every callable for at least ``min_seconds``.
        min_seconds: Minimum duration of one timed round of one callable.
        synchronize: Waits for the device (``torch.cuda.synchronize``): called before a round starts and before it is
            timed, so a round counts the work the device finished, not the work queued (GPUs run asynchronously).
    """
    sync = synchronize or (lambda: None)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    best = {name: 0.0 for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            sync()
            calls, start = 0, time.perf_counter()
            while True:
                fn()
                calls += 1
                if time.perf_counter() - start >= min_seconds:
                    sync()
                    elapsed = time.perf_counter() - start
                    break
            best[name] = max(best[name], calls * items_per_call / elapsed)
    return best


def device_synchronizer(device: torch.device) -> Optional[Callable[[], None]]:
    """``torch.cuda.synchronize`` for a CUDA device, ``None`` for the CPU (nothing runs asynchronously there)."""
    if device.type == 'cuda':
        return lambda: torch.cuda.synchronize(device)
    return None


def print_table(rows: List[Dict[str, object]], columns: Sequence[str]) -> None:
    """Print rows as a Markdown table with the given column order."""
    def fmt(v: object) -> str:
        if isinstance(v, float):
            return f'{v:.3f}' if abs(v) < 100 else f'{v:,.1f}'
        if isinstance(v, int):
            return f'{v:,}'
        return str(v)
    print('| ' + ' | '.join(columns) + ' |')
    print('|' + '|'.join('---' for _ in columns) + '|')
    for row in rows:
        print('| ' + ' | '.join(fmt(row.get(c, '')) for c in columns) + ' |')
