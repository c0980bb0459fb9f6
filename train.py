#!/usr/bin/env python3
"""Train timm and timm_mimo models from a checkout (the installed console script is ``timm-mimo-train``).

    python train.py --config cut_mixmo_wrn28_10_cifar100_b4 --data-dir /data/cifar100
    torchrun --nproc_per_node 2 train.py --model cut_mixmo --model-kwargs backbone=wrn28_2 ...

All options: ``python train.py --help``; the code is :mod:`timm_mimo.cli.train`.
"""
import sys

from timm_mimo.cli.train import main

if __name__ == '__main__':
    sys.exit(main())
