"""What keeps runs and outputs apart, and how every console script ends on a fault.

* A run folder belongs to one run: a new one is claimed with an atomic ``mkdir`` (two runs started at the same
  instant never share one), :func:`claim_run_folder`.
* No output path of a command is one of its inputs (:func:`check_outputs_are_not_inputs`).
* Every file is written to a temporary file and renamed (:func:`write_atomically`): complete or absent, never
  half-written, and no temporary file is left behind, whatever stops the write (a full disk, SIGINT, SIGTERM).
* Where a run writes is planned before anything is built (:func:`plan_run_folder`: a new folder, the resumed run's
  own, or a copy of it) and claimed once every check has passed (:func:`prepare_output`).
* SIGINT and SIGTERM become :class:`Interrupted` in the main thread (:class:`SignalGuard`), so ``finally`` blocks and
  the atomic writes clean up and the command ends with one ``error:`` line and status 130 / 143. A signal that lands
  where Python cannot raise (a destructor, e.g. a data loader shutting its workers down at an epoch's end) is
  remembered and raised at the command's next :meth:`SignalGuard.check`.
"""
import argparse
import contextlib
import os
import re
import signal
import sys
import threading
import time
from typing import Any, Callable, Dict, Iterator, Optional, Sequence, Tuple, Union

import torch

from timm_mimo.cli.args import CliError, one_line, quiet_warnings

__all__ = ['Interrupted', 'SignalGuard', 'write_atomically', 'write_error', 'claim_run_folder', 'same_path',
           'is_inside', 'check_outputs_are_not_inputs', 'plan_run_folder', 'prepare_output', 'CHECKPOINT_LAST',
           'CHECKPOINT_BEST', 'EPOCH_CHECKPOINT']

SIGNALS = (signal.SIGINT, signal.SIGTERM)
# the files of a run folder
CHECKPOINT_LAST = 'last.pth.tar'
CHECKPOINT_BEST = 'model_best.pth.tar'
EPOCH_CHECKPOINT = re.compile(r'^checkpoint-(\d+)\.pth\.tar$')


class Interrupted(BaseException):
    """SIGINT or SIGTERM received: a ``BaseException`` (like ``KeyboardInterrupt``), so only the command's top level
    catches it."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signum)
        self.signum = int(signum)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """The shell's status for a command ended by this signal: 128 + its number (130 for SIGINT, 143 for
        SIGTERM)."""
        return 128 + self.signum


class SignalGuard:
    """Within ``with SignalGuard() as guard:``, SIGINT and SIGTERM raise :class:`Interrupted`.

    An :class:`Interrupted` raised inside a destructor cannot propagate (Python reports it as "Exception ignored"); the
    guard silences that report and :meth:`check` raises it again at the next safe point of the command. Outside the
    main thread (signals are only delivered there) the guard does nothing.
    """

    def __init__(self):
        self.received: Optional[int] = None
        self._previous: Dict[int, object] = {}
        self._unraisable_hook = None
        self._deferring = False

    def _handler(self, signum: int, frame: object) -> None:
        self.received = signum
        if not self._deferring:
            raise Interrupted(signum)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """A block that a signal does not cut in two (an epoch's checkpoint and its summary row): a signal received
        inside is raised when the block ends."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
        self.check()

    def _unraisable(self, unraisable: 'sys.UnraisableHookArgs') -> None:
        if isinstance(unraisable.exc_value, Interrupted):
            return  # remembered in self.received; check() raises it where it can propagate
        self._unraisable_hook(unraisable)

    def check(self) -> None:
        """Raise the :class:`Interrupted` of a signal received so far (one a destructor swallowed)."""
        if self.received is not None:
            raise Interrupted(self.received)

    def __enter__(self) -> 'SignalGuard':
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._handler) for signum in SIGNALS}
            self._unraisable_hook = sys.unraisablehook
            sys.unraisablehook = self._unraisable
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        if self._unraisable_hook is not None:
            sys.unraisablehook = self._unraisable_hook
        self._previous, self._unraisable_hook = {}, None


def write_atomically(path: Union[str, os.PathLike], write: Callable[[str], None], keep_suffix: bool = False) -> None:
    """``write(temporary_path)``, then rename onto ``path``: the file is complete or absent, never half-written
    (:func:`timm_mimo.outputs.write_atomically`, the one implementation)."""
    from timm_mimo.outputs import write_atomically as write_file
    write_file(path, write, keep_suffix)


def write_error(path: Union[str, os.PathLike], exc: OSError, way_out: str = 'free space or pick another path') -> str:
    """The one line for a file that could not be written (a full disk, no permission, ...)."""
    return f'cannot write {os.fspath(path)!r} ({one_line(exc)}); {way_out}'


def claim_run_folder(root: str, name: str, next_free: bool = True) -> str:
    """Create ``root/name`` with an atomic ``mkdir`` and return it.

    When it exists, ``next_free`` tries ``name-1``, ``name-2``, ... (each an atomic ``mkdir``, so two runs started at
    the same instant get two folders); otherwise an existing folder is a :class:`CliError`.
    """
    os.makedirs(root, exist_ok=True)
    base = os.path.join(root, name)
    candidate, index = base, 0
    while True:
        try:
            os.mkdir(candidate)
            return candidate
        except FileExistsError:
            if not next_free:
                raise CliError(f'run folder {candidate!r} exists: it belongs to another run; pick another '
                               '--experiment') from None
            index += 1
            candidate = f'{base}-{index}'


def same_path(a: Union[str, os.PathLike], b: Union[str, os.PathLike]) -> bool:
    """``a`` and ``b`` name the same file (links and relative paths resolved; neither has to exist)."""
    return os.path.realpath(a) == os.path.realpath(b)


def is_inside(path: Union[str, os.PathLike], folder: Union[str, os.PathLike]) -> bool:
    """``path`` is ``folder`` or lies below it (links resolved)."""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_outputs_are_not_inputs(outputs: Dict[str, Optional[str]],
                                 inputs: Dict[str, Union[None, str, Sequence[str]]]) -> None:
    """One :class:`CliError` when an output file of a command is one of its input files, another of its outputs, a
    file of the run folder of an input or an existing checkpoint (:func:`timm_mimo.outputs.check_outputs`).

    Args:
        outputs: ``{flag: path}`` of the files the command writes (unset ones ``None`` / ``''``).
        inputs: ``{flag: path or paths}`` of the files it reads.
    """
    from timm_mimo.outputs import check_outputs
    check_outputs(outputs, inputs)


def _resumed_epoch_of(path: str) -> Optional[int]:
    """The epoch of a checkpoint file (read lazily), ``None`` when it cannot be read."""
    try:
        with quiet_warnings():
            state = torch.load(path, map_location='cpu', weights_only=True, mmap=True)
        return int(state['epoch'])
    except Exception:  # noqa: BLE001 - an unreadable file is one a resume may replace
        return None


def plan_run_folder(args: argparse.Namespace, state: Optional[Dict[str, Any]]) -> Tuple[str, Optional[str], str]:
    """Where the run will write, decided before anything is built or written: ``(root, name, how)``.

    ``how`` is ``'continue'`` (a resumed run in its checkpoint's folder), ``'new'`` (a resumed run continued in a new
    folder ``root/name``, claimed as is) or ``'next_free'`` (a new run: ``--experiment`` or a date-model-size name,
    with a ``-1``, ``-2`` ... suffix when taken; ``name`` ``None`` until the data config is known). A run folder
    belongs to one run: ``--experiment`` naming another existing folder while resuming is refused, as is continuing in
    the checkpoint's folder from an epoch older than its ``last.pth.tar`` (that would replace the later epochs)."""
    root = args.output or './output/train'
    name: Optional[str] = args.experiment or None
    how = 'next_free'
    if state is not None:
        source = os.path.dirname(os.path.abspath(args.resume))
        target = os.path.join(root, args.experiment) if args.experiment else source
        if same_path(target, source):
            root, name, how = os.path.dirname(source), os.path.basename(source), 'continue'
            last = os.path.join(source, CHECKPOINT_LAST)
            last_epoch = _resumed_epoch_of(last) if os.path.isfile(last) and not same_path(last, args.resume) else None
            if last_epoch is not None and last_epoch > int(state['epoch']):
                raise CliError(f'--resume {args.resume!r} is epoch {state["epoch"]} but the run\'s {last!r} is epoch '
                               f'{last_epoch}: continuing in {source!r} would replace the later epochs; give a new '
                               f'--experiment to continue from epoch {state["epoch"]} in a copy, or resume {last}')
        elif os.path.exists(target):
            raise CliError(f'--resume {args.resume!r} continues the run in {source!r}, but --experiment '
                           f'{args.experiment!r} names another run\'s folder {target!r}: drop --experiment to continue '
                           'in the checkpoint\'s folder, or give a new --experiment to continue a copy of the run')
        else:
            how = 'new'
    folder = os.path.join(root, name) if name else root
    if args.data_dir and os.path.isdir(args.data_dir) and is_inside(folder, args.data_dir):
        raise CliError(f'--output {root!r} lies inside --data-dir {args.data_dir!r}: the run folder would become part '
                       'of the data (another class folder); pick an --output outside it')
    if how == 'continue':
        run_files = ('args.yaml', 'summary.csv', CHECKPOINT_LAST, CHECKPOINT_BEST)
        inputs = (('--initial-checkpoint', args.initial_checkpoint), ('--pretrained-path', args.pretrained_path),
                  ('--class-map', args.class_map))
        for flag, path in inputs:
            if path and is_inside(path, folder) and (os.path.basename(path) in run_files or
                                                    EPOCH_CHECKPOINT.match(os.path.basename(path))):
                raise CliError(f'{flag} {path!r} is a file of the run folder {folder!r}, which the resumed run '
                               'rewrites; copy it elsewhere first')
    return root, name, how


def prepare_output(args: argparse.Namespace, data_config: Dict[str, Any],
                   plan: Tuple[str, Optional[str], str]) -> str:
    """The run folder (claimed here, after every check passed; :func:`plan_run_folder`); a file in the way or no
    permission is one line."""
    root, name, how = plan
    if name is None:
        name = '-'.join([time.strftime('%Y%m%d-%H%M%S'), args.model.replace('/', '_'),
                         str(data_config['input_size'][-1])])
    output_dir = os.path.join(root, name)
    for path in (root, output_dir):
        if os.path.exists(path) and not os.path.isdir(path):
            raise CliError(f'--output: {path!r} is a file, not a folder; pick another --output / --experiment')
    try:
        if how != 'continue':
            output_dir = claim_run_folder(root, name, next_free=how == 'next_free')
        from timm_mimo.outputs import lock_run_folder
        lock_run_folder(output_dir)  # held until the process ends: another process writing into it is refused
        probe = os.path.join(output_dir, '.write-probe')
        with open(probe, 'w') as f:
            f.write('ok')
        os.remove(probe)
    except OSError as exc:
        raise CliError(f'--output: cannot write to {output_dir!r} ({one_line(exc)}); pick a writable --output') \
            from None
    return output_dir
