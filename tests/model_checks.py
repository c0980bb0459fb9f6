"""Checks every MIMO model must pass (DESIGN.md contract), shared by the parametrized model tests."""
from typing import List

import torch

from timm_mimo import Mixer


def parameters_without_gradient(model: torch.nn.Module) -> List[str]:
    """Names of the parameters whose gradient is missing or all zero after a backward."""
    return [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]


def check_mimo_contract(model: torch.nn.Module, x: torch.Tensor) -> None:
    """Train-mode forward/backward on a plain batch reaches every parameter; eval logits are the member mean; a
    Mixer plan gives (B, M, K); ``reset_classifier`` to 7 classes and to 0 (features) resets every head."""
    batch_size, num_members, num_classes = x.shape[0], model.num_members, model.num_classes
    model.train()
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
