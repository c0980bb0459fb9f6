#!/usr/bin/env python3
"""Evaluate timm and timm_mimo models from a checkout (the installed console script is ``timm-mimo-validate``).

    python validate.py --config output/train/run/args.yaml --checkpoint output/train/run/model_best.pth.tar

All options: ``python validate.py --help``; the code is :mod:`timm_mimo.cli.validate`.
"""
import sys

from timm_mimo.cli.validate import main

if __name__ == '__main__':
    sys.exit(main())
