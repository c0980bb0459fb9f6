"""``torch.hub`` entrypoints: every timm_mimo model, e.g.

    torch.hub.load('<owner>/timm_mimo', 'cut_mixmo_wrn28_10', num_classes=100)
    torch.hub.load('/path/to/timm_mimo', 'mixvit_convit_tiny', source='local', pretrained=True,
                   pretrained_cfg_overlay=dict(file='/path/to/convit_tiny.safetensors'))

Each entrypoint is ``timm.create_model(name, **kwargs)``; ``pretrained=True`` loads through timm's usual routes.
"""
import functools
import pkgutil

import timm

import timm_mimo

dependencies = ['torch', 'timm', 'safetensors', 'huggingface_hub']


def _entrypoint(model_name: str, **kwargs):
    return timm.create_model(model_name, **kwargs)


def _export_entrypoints() -> list:
    """One entrypoint per model registered by any ``timm_mimo.models`` module."""
    from timm.models._registry import _model_to_module
    modules = {info.name for info in pkgutil.iter_modules(timm_mimo.models.__path__) if not info.name.startswith('_')}
    names = []
    for name in timm.list_models():
        if _model_to_module.get(name) in modules:
            fn = functools.partial(_entrypoint, name)
            fn.__doc__ = f'timm.create_model({name!r}, **kwargs)'
            globals()[name] = fn
            names.append(name)
    return names


__all__ = _export_entrypoints()
