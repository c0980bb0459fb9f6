"""Checks every MIMO model must pass (the model contract of timm_mimo.models._contract), shared by the model tests."""
import pkgutil
import warnings
from typing import List

import timm
import torch
from timm.models._registry import _model_to_module

import timm_mimo
from timm_mimo import Mixer

# every module of timm_mimo.models that registers models (new model files are picked up without a list here)
TIMM_MIMO_MODULES = frozenset(info.name for info in pkgutil.iter_modules(timm_mimo.models.__path__)
                              if not info.name.startswith('_'))


def timm_mimo_module(name: str) -> str:
    """The timm_mimo module that registered ``name`` (tag allowed), '' for any other model."""
    module = _model_to_module.get(name.split('.', 1)[0], '')
    return module if module in TIMM_MIMO_MODULES else ''


def timm_mimo_names(include_tags: bool = False, pretrained: bool = False) -> List[str]:
    """Every model name timm_mimo registers (with pretrained tags if asked; only tagged weights for ``pretrained``)."""
    names = timm.list_pretrained() if pretrained else timm.list_models(include_tags=include_tags)
    return [n for n in names if timm_mimo_module(n)]


def parameters_without_gradient(model: torch.nn.Module) -> List[str]:
    """Names of the parameters whose gradient is missing or all zero after a backward."""
    return [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]


def check_mimo_contract(model: torch.nn.Module, x: torch.Tensor) -> None:
    """Train-mode forward/backward on a plain batch reaches every parameter; eval logits are the member mean; a
    Mixer plan gives (B, M, K); ``reset_classifier`` to 7 classes and to 0 (features) resets every head."""
    batch_size, num_members, num_classes = x.shape[0], model.num_members, model.num_classes
    model.train()
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', 'single-input|.*not MIMO training', UserWarning)
        out = model(x)
    assert out.shape == (batch_size, num_classes)
    out.square().mean().backward()
    assert not parameters_without_gradient(model)

    model.eval()
    with torch.no_grad():
        logits = model(x)
        members = model.forward_members(x)
        assert members.shape == (batch_size, num_members, num_classes)
        torch.testing.assert_close(logits, members.mean(dim=1))
        torch.testing.assert_close(model.forward_head(model.forward_features(x)), logits)

        size = tuple(x.shape[-2:])
        plan = Mixer(num_members=num_members, **model.mix_cfg)(batch_size, model.mix_grid(size), progress=0.0)
        xs = torch.randn(batch_size, num_members, *x.shape[1:])
        assert model(xs, plan).shape == (batch_size, num_members, num_classes)

        model.reset_classifier(7)
        assert model(x).shape == (batch_size, 7) and model.forward_members(x).shape == (batch_size, num_members, 7)
        assert model.num_classes == 7
        model.reset_classifier(0)
        assert model(x).shape == (batch_size, model.num_features)


def encoder_output(model: torch.nn.Module, *args: object) -> torch.Tensor:
    """What ``model.encoders`` (a MimoCNN / MimoViT M-encoder module) hands to the core during ``model(*args)``."""
    captured = []
    handle = model.encoders.register_forward_hook(lambda mod, inp, out: captured.append(out))
    try:
        with torch.no_grad():
            model(*args)
    finally:
        handle.remove()
    assert len(captured) == 1
    return captured[0]
