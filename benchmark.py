#!/usr/bin/env python3
"""Side-by-side benchmarks: a MIMO model against its plain backbone, the multi-input loader against timm's.

Usage::

    python benchmark.py cnn      # MIMO / MixMo CNN vs backbone: params, FLOPs, eval and train-step throughput
    python benchmark.py mixvit   # MixViT vs backbone: inference FLOPs and latency, train step
    python benchmark.py loader   # multi-input loader with batch repetition vs timm's plain loader

Each family prints a Markdown table of figures measured in one process, and their ratios. ``--help`` after a family
lists its options.
"""
import argparse
import importlib
import sys

FAMILIES = {
    'cnn': 'benchmarks.cnn',
    'mixvit': 'benchmarks.mixvit',
    'loader': 'benchmarks.loader',
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    subparsers = parser.add_subparsers(dest='family', required=True)
    chosen = next((arg for arg in sys.argv[1:] if arg in FAMILIES), None)
    module = None
    for family, module_name in FAMILIES.items():
        sub = subparsers.add_parser(family)
        if family == chosen:  # import only the family that runs: each one pulls in its own models
            module = importlib.import_module(module_name)
            sub.description = module.__doc__
            module.add_arguments(sub)
    args = parser.parse_args()
    module.run(args)


if __name__ == '__main__':
    main()
