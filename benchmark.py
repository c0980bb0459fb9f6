#!/usr/bin/env python3
"""Benchmark timm and timm_mimo models in timm's style: every MIMO model side by side with its backbone.

Usage::

    python benchmark.py --model cut_mixmo_wrn28_2 mixvit_convit_gpsa5_ca2 --results-file bench.csv
    python benchmark.py --model-list models.txt --bench train -b 128 --amp --channels-last --torchcompile

For each model: ``param_count``, forward FLOPs (``infer_gmacs``), inference and train-step throughput
(``*_samples_per_sec``, ``*_step_time``), peak memory (``*_peak_mem_mb``) and, for a MIMO model, the same figures of
its backbone measured in the same run, the ``ratio_*`` columns and the cost targets (MixMo CNN inference >= 0.97x
the backbone's throughput and <= 1.01x its FLOPs; MixViT FLOPs <= 1.10x on the papers' ConViT, <= 1.04x on CaiT-24;
train step >= 0.95x; peak training memory <= 1.05x). The train step is set up as training runs (its optimizer,
GradScaler under float16, cudnn.benchmark and TF32 on CUDA); every row says what was in effect. ``--explain`` adds the
graph breaks of the MIMO training forward under ``torch._dynamo.explain``.

The earlier family tables are still there::

    python benchmark.py cnn      # MIMO / MixMo CNN vs backbone table (noise control included)
    python benchmark.py mixvit   # MixViT vs backbone: FLOPs against the papers' bound, latency, train step
    python benchmark.py loader   # multi-input loader with batch repetition vs timm's plain loader
    python benchmark.py loop --model cut_mixmo_wrn28_2 --batch-repeat 2 -- --data-dir DIR --crop-pad 4 -b 128
                                 # the real training loop (loader, workers, plans, prefetcher) vs the isolated step
                                 # and the loader alone, in steady state, MIMO model and backbone side by side;
                                 # --data-delay-ms / --loader-share: a slow data path, which the loop must show
    python benchmark.py ops      # ATen ops (GPU kernel launches) a MIMO train step adds to its backbone's; host reads
"""
import argparse
import importlib
import sys
from typing import Optional, Sequence

FAMILIES = {
    'cnn': 'benchmarks.cnn',
    'mixvit': 'benchmarks.mixvit',
    'loader': 'benchmarks.loader',
    'loop': 'benchmarks.loop',
    'ops': 'benchmarks.ops',
}


def run_family(family: str, argv: Sequence[str]) -> int:
    """``python benchmark.py <family> ...``: one of the family tables; bad input is one ``error:`` line, status 2."""
    from timm_mimo.cli.args import CliError, one_line
    module = importlib.import_module(FAMILIES[family])  # import only the family that runs
    parser = argparse.ArgumentParser(prog=f'benchmark.py {family}', description=module.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        module.run(args)
    except (CliError, ValueError) as exc:  # timm_mimo's DataError is a ValueError
        print(f'error: {one_line(exc)}', file=sys.stderr)
        return 2
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; bad input ends with one line on stderr and exit status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in FAMILIES:
        return run_family(argv[0], argv[1:])
    from benchmarks import models
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    models.add_arguments(parser)
    args = parser.parse_args(argv)
    from timm_mimo.cli.args import CliError, one_line
    try:
        models.run(args)
    except (CliError, ValueError) as exc:
        print(f'error: {one_line(exc)}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
