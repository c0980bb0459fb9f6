"""The run's evaluation preprocessing in an export's ``config.json``, so ``local-dir:`` reproduces the checkpoint.

timm's ``pretrained_cfg`` carries ``input_size``, ``mean``, ``std``, ``crop_pct`` and ``interpolation``; a run trained
with ``--crop-pad`` (the CIFAR recipe) is evaluated without timm's resize and centre crop, which timm's config cannot
say (its ``PretrainedCfg`` refuses unknown keys). The export records it beside, under :data:`KEY`, and
``timm-mimo-validate --model local-dir:<folder>`` (or ``hf-hub:<repo>``) applies it unless ``--crop-pad`` is given.
"""
import json
import os
from typing import Any, Dict, Optional

__all__ = ['KEY', 'EVAL_SETTINGS', 'record_eval_transform', 'exported_eval_transform', 'exported_crop_pad']

KEY = 'timm_mimo_eval_transform'
EVAL_SETTINGS = ('crop_pad',)  # the run's flags that shape its evaluation transform beyond timm's data config


def record_eval_transform(folder: str, train_args: Dict[str, Any]) -> None:
    """Add the run's :data:`EVAL_SETTINGS` that are set to ``folder/config.json`` (atomically)."""
    from timm_mimo.outputs import write_atomically
    settings = {key: train_args[key] for key in EVAL_SETTINGS if train_args.get(key) is not None}
    if not settings:
        return
    path = os.path.join(folder, 'config.json')
    with open(path) as f:
        config = json.load(f)
    config[KEY] = settings

    def write(tmp_path: str) -> None:
        with open(tmp_path, 'w') as f:
            json.dump(config, f, indent=2)
    write_atomically(path, write)


def _config_path(model_name: str) -> Optional[str]:
    """``config.json`` of a ``local-dir:<folder>`` export, or of an ``hf-hub:<repo>[@revision]`` one (from the Hub's
    cache, where timm keeps it once the model was created; ``None`` when it cannot be had)."""
    if model_name.startswith('local-dir:'):
        return os.path.join(model_name.split(':', 1)[1], 'config.json')
    if model_name.startswith('hf-hub:'):
        from huggingface_hub import hf_hub_download
        repo_id, _, revision = model_name.split(':', 1)[1].partition('@')
        try:
            return hf_hub_download(repo_id, 'config.json', revision=revision or None)
        except Exception:  # offline without a cached copy, no such repository: the model's own loading says why
            return None
    return None


def exported_eval_transform(model_name: str) -> Dict[str, Any]:
    """The :data:`KEY` settings of a ``local-dir:`` / ``hf-hub:`` export (``{}`` for other models or none recorded)."""
    path = _config_path(model_name)
    if path is None:
        return {}
    try:
        with open(path) as f:
            settings = json.load(f).get(KEY)
    except (OSError, ValueError, AttributeError):
        return {}
    return {key: value for key, value in settings.items() if key in EVAL_SETTINGS} if isinstance(settings, dict) \
        else {}


def exported_crop_pad(model_name: str, crop_pad: Optional[int]) -> Optional[int]:
    """``crop_pad`` when given, else the export's recorded one."""
    return crop_pad if crop_pad is not None else exported_eval_transform(model_name).get('crop_pad')
