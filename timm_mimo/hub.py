"""Save, push and load timm_mimo models through timm's Hugging Face Hub functions.

A folder written by :func:`save_pretrained` holds ``model.safetensors`` and a timm ``config.json`` (architecture,
model args such as ``backbone`` / ``num_members``, pretrained cfg), so both of these rebuild the model offline::

    timm.create_model('local-dir:/path/to/folder', pretrained=True)
    timm_mimo.hub.load_pretrained('/path/to/folder')

and the same folder pushed to the Hub loads with ``timm.create_model('hf-hub:<user>/<repo>', pretrained=True)``.
"""
import contextlib
import os
from pathlib import Path
from typing import Any, Iterator, Union

import torch.nn as nn
from timm.models import create_model, push_to_hf_hub, save_for_hf

__all__ = ['save_pretrained', 'push_to_hub', 'load_pretrained', 'offline_hint', 'hub_errors_with_offline_hint']


def offline_hint(name: str) -> str:
    """How to load ``name``'s weights without network access."""
    return (f'could not download pretrained weights for {name!r} (no network access, or HF_HUB_OFFLINE is set). '
            f'Load them from a local file instead: timm.create_model({name!r}, pretrained=True, '
            f"pretrained_cfg_overlay=dict(file='/path/to/model.safetensors')), or from a folder written by "
            f"timm_mimo.hub.save_pretrained: timm.create_model('local-dir:/path/to/folder', pretrained=True)")


def _is_download_failure(exc: BaseException) -> bool:
    """True for the exceptions the Hub client and urllib raise when a download cannot happen."""
    import urllib.error

    from huggingface_hub import errors as hf_errors
    download_errors = (hf_errors.LocalEntryNotFoundError, hf_errors.OfflineModeIsEnabled, urllib.error.URLError,
                       ConnectionError, TimeoutError)
    try:
        import requests
        download_errors += (requests.exceptions.ConnectionError,)
    except ImportError:  # pragma: no cover - requests is optional for huggingface_hub
        pass
    try:
        import httpx
        download_errors += (httpx.TransportError,)
    except ImportError:  # pragma: no cover
        pass
    return isinstance(exc, download_errors)


@contextlib.contextmanager
def hub_errors_with_offline_hint(name: str) -> Iterator[None]:
    """Re-raise a failed pretrained download as a ``RuntimeError`` that says how to load offline."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - only download failures are translated, the rest re-raised as is
        if _is_download_failure(exc) or _is_download_failure(exc.__cause__ or exc):
            raise RuntimeError(offline_hint(name)) from exc
        raise


def save_pretrained(model: nn.Module, save_directory: Union[str, os.PathLike], **model_args: Any) -> Path:
    """Write ``model.safetensors`` and ``config.json`` for ``local-dir:`` / ``hf-hub:`` loading.

    Args:
        model: A model made by ``timm.create_model`` (its construction arguments are recorded in config.json).
        save_directory: Folder to write (created if needed).
        **model_args: Extra or replacement construction arguments to record.
    """
    save_for_hf(model, str(save_directory), model_args=model_args or None, safe_serialization=True)
    return Path(save_directory)


def push_to_hub(model: nn.Module, repo_id: str, **kwargs: Any) -> str:
    """Push ``model`` to the Hugging Face Hub with safetensors weights (timm's ``push_to_hf_hub``)."""
    kwargs.setdefault('safe_serialization', True)
    return push_to_hf_hub(model, repo_id, **kwargs)


def load_pretrained(name_or_path: Union[str, os.PathLike], pretrained: bool = True,
                    **kwargs: Any) -> nn.Module:
    """Create a model from a folder (``local-dir:``), a Hub repo (``hf-hub:``) or a registered name.

    Args:
        name_or_path: An existing folder written by :func:`save_pretrained`, ``'hf-hub:<repo>'``,
            ``'local-dir:<folder>'`` or a registered model name.
        pretrained: Load the weights (default) or only the architecture.
        **kwargs: Passed to ``timm.create_model``.
    """
    name = str(name_or_path)
    if ':' not in name and Path(name).is_dir():
        if not (Path(name) / 'config.json').is_file():
            raise FileNotFoundError(f'{name} has no config.json: write the folder with timm_mimo.hub.save_pretrained')
        name = f'local-dir:{name}'
    with hub_errors_with_offline_hint(name):
        return create_model(name, pretrained=pretrained, **kwargs)

