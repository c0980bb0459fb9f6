"""Pretrained weights for timm_mimo models: where they come from, and the one message when they cannot be fetched.

What a model needs to be built with ``pretrained=True``: whether a pretrained cfg has a source, the backbone weights a
MIMO model maps into its members (:func:`pretrained_weights`) and, for every failed download (a registered name, a
generic name's backbone, ``hf-hub:``), :func:`offline_message`: the repository and file the weights live in, how to
load a local copy and the command that fetches it once the network is back. Export, cards and push live in
:mod:`timm_mimo.hub`, which builds on this module (never the other way round).
"""
import contextlib
import os
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Union

from timm.models._pretrained import PretrainedCfg

__all__ = ['offline_message', 'no_weights_message', 'pretrained_weights', 'has_pretrained_source',
           'hub_errors_with_offline_hint', 'download_command', 'PretrainedDownloadError']

WEIGHTS_FILE = 'model.safetensors'
_SOURCE_KEYS = ('file', 'state_dict', 'url', 'hf_hub_id')

def _cfg_get(cfg: Any, key: str) -> Any:
    if cfg is None:
        return None
    return cfg.get(key) if isinstance(cfg, dict) else getattr(cfg, key, None)


def has_pretrained_source(cfg: Union[PretrainedCfg, Dict[str, Any], None]) -> bool:
    """True when a pretrained cfg names somewhere its weights come from (file, state dict, URL or Hub repo)."""
    return any(_cfg_get(cfg, key) is not None and _cfg_get(cfg, key) != '' for key in _SOURCE_KEYS)


def download_command(repo_id: str, filename: Optional[str] = None, local_dir: str = '<folder>') -> str:
    """The shell command that fetches ``filename`` (or the whole repository) with the installed Hub client."""
    from importlib.metadata import entry_points
    cli = 'hf' if any(ep.name == 'hf' for ep in entry_points(group='console_scripts')) else 'huggingface-cli'
    file_part = f' {filename}' if filename else ''
    return f'{cli} download {repo_id}{file_part} --local-dir {local_dir}'


def offline_message(name: str, cfg: Union[PretrainedCfg, Dict[str, Any], None] = None,
                    create_call: Optional[str] = None) -> str:
    """Why a pretrained download failed and both ways out: a local file now, the download command later.

    Args:
        name: The name the user asked for (a registered name, ``'hf-hub:<repo>'`` ...).
        cfg: Its resolved pretrained cfg (where the weights live); not needed for ``hf-hub:`` names.
        create_call: The ``timm.create_model(...)`` call to show with ``pretrained_cfg_overlay`` (default: ``name``).
    """
    if name.startswith('hf-hub:'):
        repo_id = name.split(':', 1)[1].split('@', 1)[0]
        return (f'could not download {name!r}: the Hugging Face Hub repository {repo_id} (config.json and '
                f'{WEIGHTS_FILE}) cannot be reached (no network access, or HF_HUB_OFFLINE=1). Once the network is '
                f"back: {download_command(repo_id)}, then timm.create_model('local-dir:<folder>', pretrained=True)")
    call = create_call or f'timm.create_model({name!r}, pretrained=True'
    hf_hub_id, url = _cfg_get(cfg, 'hf_hub_id'), _cfg_get(cfg, 'url')
    if hf_hub_id:
        filename = _cfg_get(cfg, 'hf_hub_filename') or WEIGHTS_FILE
        where = f'the Hugging Face Hub repository {hf_hub_id}, file {filename}'
        fetch = download_command(hf_hub_id, filename)
        local = f'<folder>/{filename}'
    else:
        filename = Path(str(url or 'model.pth')).name
        where = f'{url}'
        fetch = f'curl -L -o {filename} {url}'
        local = f'/path/to/{filename}'
    return (f'could not download the pretrained weights of {name!r} from {where} (no network access, or '
            f"HF_HUB_OFFLINE=1). Load a local copy: {call}, pretrained_cfg_overlay=dict(file='{local}')); "
            f'fetch it once the network is back: {fetch}')


class PretrainedDownloadError(RuntimeError):
    """A pretrained download failed; the message is :func:`offline_message`, ``cli_way_out`` the command-line flag
    that loads a local copy instead (``--pretrained-path <file>``, or ``--model local-dir:<folder>``)."""

    def __init__(self, message: str, cli_way_out: str):
        super().__init__(message)
        self.cli_way_out = cli_way_out


def _local_copy(cfg: Union[PretrainedCfg, Dict[str, Any], None]) -> str:
    """Where :func:`offline_message` suggests keeping a local copy of the cfg's checkpoint."""
    if _cfg_get(cfg, 'hf_hub_id'):
        return f'<folder>/{_cfg_get(cfg, "hf_hub_filename") or WEIGHTS_FILE}'
    return f'/path/to/{Path(str(_cfg_get(cfg, "url") or "model.pth")).name}'


def _check_local_file(name: str, cfg: Union[PretrainedCfg, Dict[str, Any], None]) -> None:
    """A cfg ``file`` (``pretrained_cfg_overlay=dict(file=...)``, ``--pretrained-path``) that does not exist is an
    error naming it (timm raises an empty ``FileNotFoundError``)."""
    file = _cfg_get(cfg, 'file')
    if file and not os.path.exists(str(file)):
        source = _cfg_get(cfg, 'hf_hub_id') or _cfg_get(cfg, 'url')
        where = f' (the checkpoint is published as {source})' if source else ''
        raise FileNotFoundError(f'the pretrained weights file {str(file)!r} given for {name!r} does not exist{where}: '
                                'check the path (pretrained_cfg_overlay=dict(file=...) or --pretrained-path)')


def no_weights_message(name: str) -> str:
    """``pretrained=True`` on a name whose weights nobody publishes."""
    return (f'no pretrained weights exist for {name!r}: train it (timm-mimo-train --model {name} ...) or load a '
            f"file you have: timm.create_model({name!r}, pretrained=True, "
            "pretrained_cfg_overlay=dict(file='/path/to/model.safetensors'))")


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


def _caused_by_download_failure(exc: BaseException) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        if _is_download_failure(exc):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


@contextlib.contextmanager
def pretrained_weights(name: str, cfg: Union[PretrainedCfg, Dict[str, Any], None], pretrained: bool = True,
                       create_call: Optional[str] = None) -> Iterator[None]:
    """Guard a pretrained build: refuse a cfg with no weight source, explain a failed download.

    Raises:
        ValueError: ``pretrained`` and ``cfg`` names no source (:func:`no_weights_message`).
        FileNotFoundError: The cfg's ``file`` does not exist.
        PretrainedDownloadError: The download failed (a ``RuntimeError`` with :func:`offline_message`), chained to
            the Hub client's error.
    """
    if not pretrained:
        yield
        return
    if not has_pretrained_source(cfg):
        raise ValueError(no_weights_message(name))
    _check_local_file(name, cfg)
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - only download failures are translated, the rest re-raised as is
        if _caused_by_download_failure(exc) and not isinstance(exc, PretrainedDownloadError):
            raise PretrainedDownloadError(offline_message(name, cfg, create_call),
                                          f'--pretrained-path {_local_copy(cfg)}') from exc
        raise


@contextlib.contextmanager
def hub_errors_with_offline_hint(name: str) -> Iterator[None]:
    """Re-raise a failed download while creating ``name`` (e.g. ``'hf-hub:...'``) with :func:`offline_message`."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - only download failures are translated
        if _caused_by_download_failure(exc) and not isinstance(exc, PretrainedDownloadError):
            raise PretrainedDownloadError(offline_message(name), '--model local-dir:<folder>') from exc
        raise
