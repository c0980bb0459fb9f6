"""``python -m timm_mimo run SCRIPT [ARGS ...]``: timm's own scripts on timm_mimo models.

timm's ``train.py``, ``validate.py``, ``benchmark.py`` and ``inference.py`` (in timm's GitHub repository, not in its
package) find models in timm's registry, which holds the timm_mimo models only once ``timm_mimo`` is imported. This
command imports it, then runs the script exactly as ``python SCRIPT ARGS ...`` would (``__name__ == '__main__'``, its
folder first on ``sys.path``, ``sys.argv = [SCRIPT, *ARGS]``, its exit status)::

    python -m timm_mimo run validate.py --model mixvit_deit_small_patch16_224 --pretrained --data-dir /data/imagenet
    python -m timm_mimo run benchmark.py --model cut_mixmo_wrn28_10 --bench inference
    torchrun --nproc_per_node 2 -m timm_mimo run train.py --model cut_mixmo --model-kwargs backbone=resnet50 ...

timm's ``train.py`` trains a MIMO model as one single-input network (every member sees the same image, no mixing,
no member loss; the model warns once); MIMO training is ``timm-mimo-train``. Its checkpoints (with their
``argparse.Namespace``) load in every timm_mimo command.
"""
import os
import runpy
import sys
from typing import Sequence

__all__ = ['run_script', 'run_script_command']

USAGE = 'usage: python -m timm_mimo run SCRIPT [ARGS ...]   (SCRIPT: a timm script such as train.py or validate.py)'


def run_script(script: str, argv: Sequence[str] = ()) -> None:
    """Run ``script`` as ``__main__`` with ``argv`` after ``import timm_mimo``; a ``SystemExit`` of the script
    propagates as it is."""
    import timm_mimo  # noqa: F401  (registers the MIMO models in timm's registry)
    path = os.path.abspath(script)
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    sys.argv = [script, *argv]
    sys.path.insert(0, os.path.dirname(path))
    try:
        runpy.run_path(path, run_name='__main__')
    finally:
        sys.argv = saved_argv
        sys.path[:] = saved_path


def run_script_command(argv: Sequence[str]) -> int:
    """``python -m timm_mimo run SCRIPT [ARGS ...]``; a missing script is one ``error:`` line and status 2."""
    argv = list(argv)
    if not argv:
        print(f'error: {USAGE}', file=sys.stderr)
        return 2
    if argv[0] in ('-h', '--help'):
        print(f'{USAGE}\n\n{__doc__}')
        return 0
    script = argv[0]
    if not os.path.isfile(script):
        print(f'error: run: script {script!r} does not exist (give the path of a timm script, e.g. validate.py from '
              "a checkout of timm's repository)", file=sys.stderr)
        return 2
    try:
        with open(script, 'rb') as f:
            compile(f.read(), script, 'exec')  # only to refuse a file that is no Python script; the run compiles again
    except (SyntaxError, ValueError, OSError) as exc:
        print(f'error: run: {script!r} is not a Python script ({type(exc).__name__}: {exc}); give the path of a timm '
              'script, e.g. validate.py', file=sys.stderr)
        return 2
    try:
        run_script(script, argv[1:])
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    return 0
