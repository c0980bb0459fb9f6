"""The papers' training recipes shipped with the package (``timm_mimo/configs/*.yaml``), usable by name.

``timm-mimo-train --config cut_mixmo_wrn28_10_cifar10_b4`` and ``--config path/to/file.yaml`` both work: a value that
names an existing file is that file, anything else is looked up among the shipped recipes (with or without ``.yaml``).
"""
import difflib
import os
from typing import List

__all__ = ['CONFIG_DIR', 'list_configs', 'config_path']

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configs')


def list_configs() -> List[str]:
    """Names of the shipped recipes, sorted (file names without ``.yaml``)."""
    if not os.path.isdir(CONFIG_DIR):
        return []
    return sorted(name[:-len('.yaml')] for name in os.listdir(CONFIG_DIR) if name.endswith('.yaml'))


def config_path(name: str) -> str:
    """The file a ``--config`` value means: an existing path as given, else the shipped recipe of that name.

    Raises:
        FileNotFoundError: Neither a file nor a shipped recipe; the message lists close recipe names.
    """
    if os.path.isfile(name):
        return name
    base = os.path.basename(name)
    stem = base[:-len('.yaml')] if base.endswith('.yaml') else base
    shipped = os.path.join(CONFIG_DIR, f'{stem}.yaml')
    if os.path.isfile(shipped) and (os.sep not in name or os.path.dirname(name) in ('configs', 'timm_mimo/configs')):
        return shipped
    names = list_configs()
    close = difflib.get_close_matches(stem, names, n=5, cutoff=0.6)
    hint = f'; shipped recipes like it: {", ".join(close)}' if close else \
        f'; {len(names)} recipes ship with timm_mimo (python -m timm_mimo configs lists them)'
    raise FileNotFoundError(f'{name!r} is neither a file nor a shipped recipe{hint}')
