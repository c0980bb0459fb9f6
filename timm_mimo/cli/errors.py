"""The top-level handler every command's ``main`` ends in: one ``error:`` line, an exit status, a traceback only with
``--debug``.

The commands raise :class:`~timm_mimo.cli.args.CliError` (and ``DataError``) for the bad input they recognise, and
their ``main`` prints those as they are (status 2). Whatever else escapes — a full disk inside ``torch.save``, a file
that cannot be read, a library's exception on input no check foresaw — reaches :func:`report_unexpected`, which names
the cause and the way out in one line:

* the environment (``OSError``: a full disk, no permission, a missing file; a ``RuntimeError`` of torch's writer on a
  full disk; out of memory): status 2;
* anything else is an internal error: status 1, with the way to get the traceback (``--debug``).

``--debug`` (anywhere on the command line, or ``TIMM_MIMO_DEBUG=1``) prints the traceback after the line;
:func:`split_debug` takes it out of ``argv`` before the command's parser sees it.
"""
import errno
import functools
import os
import sys
import traceback
from typing import Callable, List, Optional, Sequence, Tuple

from timm_mimo.cli.args import CliError, one_line

__all__ = ['DEBUG_FLAG', 'split_debug', 'unexpected_error_line', 'report_unexpected', 'handle_errors']

DEBUG_FLAG = '--debug'
WAY_OUT = {
    errno.ENOSPC: 'free space on that disk or pick another path',
    errno.EDQUOT: 'free space (quota) or pick another path',
    errno.EACCES: 'fix its permissions or pick another path',
    errno.EPERM: 'fix its permissions or pick another path',
    errno.EROFS: 'pick a path on a writable file system',
    errno.ENOENT: 'check the path',
    errno.EISDIR: 'give a file, not a folder',
    errno.ENOTDIR: 'a part of the path is a file, not a folder; check the path',
    errno.EIO: 'check the disk',
}


def split_debug(argv: Optional[Sequence[str]]) -> Tuple[Optional[List[str]], bool]:
    """``argv`` without ``--debug`` (``None``, i.e. ``sys.argv[1:]``, is read here) and whether the traceback is
    wanted (``--debug`` given or ``TIMM_MIMO_DEBUG=1``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in argv or os.environ.get('TIMM_MIMO_DEBUG', '') not in ('', '0')
    return [arg for arg in argv if arg != DEBUG_FLAG], debug


def _disk_full(exc: BaseException) -> bool:
    text = str(exc).lower()
    return 'no space left' in text or 'file write failed' in text or 'disk quota' in text


def unexpected_error_line(exc: BaseException) -> Tuple[int, str]:
    """``(exit status, line)`` for an exception no check of the command turned into a :class:`CliError`."""
    if isinstance(exc, OSError):
        where = f' {exc.filename!r}' if getattr(exc, 'filename', None) else ''
        cause = exc.strerror or one_line(exc)
        way_out = WAY_OUT.get(exc.errno, 'check the path and the disk, then run the command again')
        return 2, f'cannot read or write{where} ({cause}); {way_out}'
    if isinstance(exc, MemoryError) or 'out of memory' in str(exc).lower():
        return 2, f'out of memory ({type(exc).__name__}: {one_line(exc, 200)}); lower --batch-size (or the model size)'
    if isinstance(exc, RuntimeError) and str(exc).startswith('Unknown model'):  # timm.create_model's
        return 2, (f'{one_line(exc, 200)}: --model names no registered model; see timm.list_models() (after import '
                   'timm_mimo)')
    if isinstance(exc, RuntimeError) and _disk_full(exc):
        return 2, (f'a file could not be written ({one_line(exc, 200)}): the disk is probably full; free space or pick '
                   'another output path, then run the command again (a training run resumes from its last.pth.tar)')
    return 1, (f'internal error ({type(exc).__name__}: {one_line(exc, 300)}); run the command again with --debug for '
               'the traceback, and report it')


def report_unexpected(exc: BaseException, debug: bool) -> int:
    """Print the one line of :func:`unexpected_error_line` (and, with ``debug``, the traceback) to stderr; return the
    exit status."""
    code, line = unexpected_error_line(exc)
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    print(f'error: {line}', file=sys.stderr)
    return code


def handle_errors(main: Callable[[Optional[List[str]]], int], passthrough: Callable[[List[str]], bool] = lambda a: False
                  ) -> Callable[[Optional[Sequence[str]]], int]:
    """Wrap a command's ``main(argv)`` in the top-level handler: ``--debug`` taken out of ``argv``; a
    :class:`CliError` / ``DataError`` escaping it is one ``error:`` line and status 2, anything else
    :func:`report_unexpected`. ``passthrough(argv)`` true leaves ``argv`` untouched (``python -m timm_mimo run``
    hands its flags to a script)."""
    @functools.wraps(main)
    def wrapped(argv: Optional[Sequence[str]] = None) -> int:
        from timm_mimo.data import DataError
        argv = list(sys.argv[1:] if argv is None else argv)
        debug = False
        if not passthrough(argv):
            argv, debug = split_debug(argv)
        try:
            return main(argv)
        except (CliError, DataError) as exc:
            print(f'error: {one_line(exc, None)}', file=sys.stderr)
            return 2
        except Exception as exc:  # noqa: BLE001 - the one line of anything else
            return report_unexpected(exc, debug)
    return wrapped
