"""The one output guard of every command: what a command may write, how it writes it, and who writes into a run folder.

* :func:`write_atomically`: a file is written to a temporary file in its own folder, flushed to the disk
  (``fsync``) and renamed onto its path; on any failure (a full disk inside ``torch.save`` or safetensors, whatever
  exception it raises, a signal) the temporary file is removed and the previous file is untouched.
* :func:`check_outputs`: no output of a command is one of its inputs, another of its outputs, a file of a run folder
  the command touches (the folder of a checkpoint it reads: its checkpoints, ``args.yaml``, ``summary.csv``) or an
  existing checkpoint anywhere (a torch / safetensors file: ``--results-file model_best.pth.tar`` would replace it).
* :func:`lock_run_folder`: an OS file lock (``fcntl.flock`` on :data:`LOCK_FILE` inside the folder) held for the life
  of the process (or until :func:`release_run_folders`); the lock file records the holder's process id and command
  line, so a second process that would write into the folder is refused with the holder's command.
* :func:`check_start_epoch`: ``--start-epoch`` on a resume that continues in the checkpoint's own folder is refused
  (it would retrain and rewrite the run's epochs).
"""
import contextlib
import os
import re
import secrets
import shlex
import sys
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from timm_mimo.cli.args import CliError

__all__ = ['LOCK_FILE', 'RUN_FILES', 'write_atomically', 'write_csv', 'is_checkpoint_file', 'run_folder_of',
           'run_folder_files', 'check_outputs', 'lock_run_folder', 'release_run_folders', 'remove_empty_run_folder',
           'check_start_epoch']

PathLike = Union[str, os.PathLike]

LOCK_FILE = '.lock'
# the files train.py writes into a run folder (besides checkpoint-<epoch>.pth.tar)
RUN_FILES = ('args.yaml', 'summary.csv', 'last.pth.tar', 'model_best.pth.tar', LOCK_FILE)
EPOCH_CHECKPOINT = re.compile(r'^checkpoint-\d+\.pth\.tar$')
CHECKPOINT_SUFFIXES = ('.pth.tar', '.pth', '.pt', '.ckpt', '.bin', '.safetensors')


def write_atomically(path: PathLike, write: Callable[[str], None], keep_suffix: bool = False) -> None:
    """``write(temporary_path)``, ``fsync``, then rename onto ``path``: the file is complete or absent.

    The temporary file lies in ``path``'s folder (so the rename is atomic) under a unique name; ``keep_suffix`` keeps
    ``path``'s extension last (``.x.tmp1234.png``) for writers that choose the format from it. On any exception
    (``OSError`` of a full disk, a ``RuntimeError`` torch.save raises for it, a signal's ``Interrupted``) the
    temporary file is removed, ``path`` keeps its previous content and the exception is re-raised.
    """
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    suffix = _suffix(name) if keep_suffix else ''
    tmp_path = os.path.join(folder, f'.{name}.{os.getpid()}-{secrets.token_hex(4)}.tmp{suffix}')
    os.close(os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # the umask's mode, like open(path, 'w')
    try:
        write(tmp_path)
        with open(tmp_path, 'rb+') as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp_path)
        raise
    with contextlib.suppress(OSError):  # the rename itself reaches the disk with the folder's entry
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def write_csv(path: PathLike, rows: Sequence[Dict[str, object]]) -> None:
    """``rows`` as a CSV file (the union of their columns, in first-seen order), written atomically."""
    import csv
    columns = list(dict.fromkeys(key for row in rows for key in row))

    def write(tmp_path: str) -> None:
        with open(tmp_path, 'w', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=columns, restval='')
            writer.writeheader()
            writer.writerows(rows)
    write_atomically(path, write)


def _suffix(name: str) -> str:
    for suffix in CHECKPOINT_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return os.path.splitext(name)[1]


def is_checkpoint_file(path: PathLike) -> bool:
    """``path`` is an existing torch checkpoint (zip or pickle format) or safetensors file, by content or name."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        return False
    if path.endswith(CHECKPOINT_SUFFIXES):
        return True
    try:
        with open(path, 'rb') as f:
            head = f.read(9)
    except OSError:
        return False
    if head.startswith(b'PK\x03\x04') or head[:1] == b'\x80':  # torch.save's zip container, a pickle
        return True
    return len(head) == 9 and head[8:9] == b'{' and int.from_bytes(head[:8], 'little') < (1 << 27)  # safetensors


def run_folder_of(path: PathLike) -> Optional[str]:
    """The run folder ``path`` (a file in it, or the folder itself) belongs to: a folder with ``args.yaml``,
    ``last.pth.tar`` or :data:`LOCK_FILE`; ``None`` otherwise."""
    path = os.path.realpath(os.fspath(path))
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    if any(os.path.exists(os.path.join(folder, name)) for name in ('args.yaml', 'last.pth.tar', LOCK_FILE)):
        return folder
    return None


def run_folder_files(folder: PathLike) -> List[str]:
    """The files of a run folder a command must never replace: those train.py writes (:data:`RUN_FILES`,
    ``checkpoint-<epoch>.pth.tar``) and every checkpoint in it."""
    folder = os.fspath(folder)
    found = [os.path.join(folder, name) for name in RUN_FILES]
    with contextlib.suppress(OSError):
        for name in os.listdir(folder):
            if EPOCH_CHECKPOINT.match(name) or name.endswith(CHECKPOINT_SUFFIXES):
                found.append(os.path.join(folder, name))
    return found


def _flat(items: Dict[str, Union[None, PathLike, Sequence[PathLike]]]) -> Iterable[Tuple[str, str]]:
    for flag, paths in items.items():
        for path in ([paths] if isinstance(paths, (str, os.PathLike)) else paths or []):
            if path:
                yield flag, os.fspath(path)


def _same(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def check_outputs(outputs: Dict[str, Union[None, PathLike, Sequence[PathLike]]],
                  inputs: Optional[Dict[str, Union[None, PathLike, Sequence[PathLike]]]] = None,
                  run_folders: Sequence[PathLike] = ()) -> None:
    """One :class:`CliError` when an output file would replace a file the command must keep.

    Refused: an output that is one of ``inputs``, another output, a file of a run folder the command touches (the
    run folders of its inputs and outputs and ``run_folders``: :func:`run_folder_files`) or an existing checkpoint
    anywhere (:func:`is_checkpoint_file`).

    Args:
        outputs: ``{flag: path or paths}`` of the files the command writes (unset ones ``None`` / ``''``).
        inputs: ``{flag: path or paths}`` of the files it reads.
        run_folders: further run folders the command reads or writes (e.g. a resumed run's folder).
    """
    given, read = list(_flat(outputs)), list(_flat(inputs or {}))
    folders = {os.path.realpath(os.fspath(folder)) for folder in run_folders}
    folders.update(folder for _, path in read + given if (folder := run_folder_of(path)) is not None)
    for index, (flag, path) in enumerate(given):
        for other_flag, other in read + given[:index]:
            if _same(path, other):
                what = 'output' if (other_flag, other) in given[:index] else 'input'
                raise CliError(f'{flag} {path!r} is also the {what} {other_flag} {other!r}: writing it would replace '
                               f'that file; pick another {flag}')
        for folder in sorted(folders):
            if any(_same(path, kept) for kept in run_folder_files(folder)):
                raise CliError(f'{flag} {path!r} is a file of the run folder {folder!r} (its checkpoints, args.yaml, '
                               f'summary.csv): writing it would replace that file; pick another {flag}')
        if is_checkpoint_file(path):
            raise CliError(f'{flag} {path!r} is an existing checkpoint (a torch / safetensors file): writing it would '
                           f'replace it; pick another {flag}')


# ---------------------------------------------------------------------------------------------------------------------
# Run folder locks
# ---------------------------------------------------------------------------------------------------------------------

_HELD: Dict[str, int] = {}  # realpath of a locked folder -> the open lock file's descriptor


def _command_line(argv: Optional[Sequence[str]] = None) -> str:
    return shlex.join([os.path.basename(sys.executable), *(sys.argv if argv is None else argv)])


def lock_run_folder(folder: PathLike, argv: Optional[Sequence[str]] = None) -> None:
    """Hold an exclusive OS lock on the run folder ``folder`` until :func:`release_run_folders` or the process ends.

    The lock is ``fcntl.flock`` on ``folder/.lock``, which records the holder's process id and command line (``argv``,
    default ``sys.argv``). A folder another process (or another open of the lock in this process) holds is a
    :class:`CliError` naming that command. Holding it again in the same call chain is a no-op. On systems without
    ``fcntl`` nothing is locked.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return
    key = os.path.realpath(os.fspath(folder))
    if key in _HELD:
        return
    path = os.path.join(key, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = 'another process'
        with contextlib.suppress(OSError):
            holder = os.pread(fd, 4096, 0).decode('utf-8', 'replace').strip() or 'another process'
        os.close(fd)
        raise CliError(f'the run folder {key!r} is in use by {holder}: two processes writing into one run folder '
                       'would interleave its checkpoints; wait for it to end (or stop it), or pick another '
                       '--experiment') from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f'process {os.getpid()}: {_command_line(argv)}\n'.encode(), 0)
    _HELD[key] = fd


def release_run_folders() -> None:
    """Release every run folder lock this process holds (the lock files stay; an unheld one locks nothing)."""
    while _HELD:
        _, fd = _HELD.popitem()
        with contextlib.suppress(OSError):
            os.close(fd)


def remove_empty_run_folder(folder: PathLike) -> None:
    """Remove a run folder claimed for nothing (it holds only its lock file): release the lock, remove both.
    ``OSError`` when it holds anything else."""
    key = os.path.realpath(os.fspath(folder))
    fd = _HELD.pop(key, None)
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)
    if os.listdir(key) == [LOCK_FILE]:
        os.remove(os.path.join(key, LOCK_FILE))
    os.rmdir(key)


def check_start_epoch(start_epoch: Optional[int], how: str, resume: Optional[str]) -> None:
    """Refuse ``--start-epoch`` on a resume that continues in its own run folder (``how == 'continue'``): it would
    retrain the run's epochs from there and rewrite their checkpoints and summary rows."""
    if start_epoch is not None and how == 'continue':
        raise CliError(f'--start-epoch {start_epoch} with --resume {resume!r} in its own run folder would retrain and '
                       'rewrite the run\'s epochs from there; drop --start-epoch (a resume continues after the '
                       'checkpoint\'s epoch), or give a new --experiment to continue a copy of the run')
