"""M dense heads ``d_m`` in one module: MIMO's M classifiers (Havasi et al., arXiv:2010.06610; MixMo arXiv:2103.06132
Fig. 2), one per member, on the shared features."""
from typing import Any, Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['MemberHeads']


class MemberHeads(nn.Module):
    """M linear classifiers, one per member, stored as ``weight: (M, K, F)`` and ``bias: (M, K)``.

    A ``(B, F)`` input (every member sees the same feature) runs as one ``F -> M·K`` matmul; a ``(B, M, F)`` input
    (a feature per member: MixViT's class tokens, unmixed features) runs member-wise. Output is ``(B, M, K)``.
    ``num_classes=0`` makes the heads the identity on features (timm's ``reset_classifier(0)``): a ``(B, F)`` input
    comes out as M views ``(B, M, F)``, anything else (member features, unpooled maps) unchanged; such heads hold no
    parameters (like timm's ``nn.Identity`` classifier).

    Deployable temperature scaling (Guo et al., ICML 2017): in eval mode every logit is divided by the buffer
    ``temperature`` (a scalar, 1 by default, where the division is exact), so a model calibrated with
    :func:`timm_mimo.calibration.set_temperature` predicts calibrated member and ensemble logits wherever it goes
    (state dict, safetensors, ``local-dir:``, ``torch.export``). Training (train mode) reads the raw logits: the
    temperature is fitted after training, and the training step does no extra work. A state dict without the buffer
    (written before it existed, or a backbone checkpoint) loads and leaves it unchanged.
    """

    def __init__(self, in_features: int, num_classes: int, num_members: int, bias: bool = True,
                 device: Any = None, dtype: Any = None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.in_features = in_features
        self.num_classes = num_classes
        self.num_members = num_members
        self.weight: Optional[nn.Parameter] = None
        self.bias: Optional[nn.Parameter] = None
        if num_classes > 0:
            self.weight = nn.Parameter(torch.empty(num_members, num_classes, in_features, **dd))
            self.bias = nn.Parameter(torch.empty(num_members, num_classes, **dd)) if bias else None
            self.register_buffer('temperature', torch.ones((), **dd))
        self.reset_parameters()

    def _load_from_state_dict(self, state_dict: Dict[str, Any], prefix: str, *args: Any) -> None:
        """A state dict without ``temperature`` (older checkpoints, backbone weights) is not a missing key."""
        key = prefix + 'temperature'
        had_temperature = key in state_dict
        super()._load_from_state_dict(state_dict, prefix, *args)
        missing_keys = args[2]  # (local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        if not had_temperature and key in missing_keys:
            missing_keys.remove(key)

    def reset_parameters(self) -> None:
        """Each head initialised like a fresh ``nn.Linear``."""
        if self.num_classes == 0:
            return
        for m in range(self.num_members):
            linear = nn.Linear(self.in_features, self.num_classes, bias=self.bias is not None,
                               device=self.weight.device, dtype=self.weight.dtype)
            with torch.no_grad():
                self.weight[m].copy_(linear.weight)
                if self.bias is not None:
                    self.bias[m].copy_(linear.bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear, num_members: int) -> 'MemberHeads':
        """M heads that each equal ``linear`` (a pretrained classifier copied into every member)."""
        heads = cls(linear.in_features, linear.out_features, num_members, bias=linear.bias is not None,
                    device=linear.weight.device, dtype=linear.weight.dtype)
        with torch.no_grad():
            heads.weight.copy_(linear.weight.detach().unsqueeze(0).expand_as(heads.weight))
            if linear.bias is not None:
                heads.bias.copy_(linear.bias.detach().unsqueeze(0).expand_as(heads.bias))
        return heads

    def scaled(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits / temperature`` in eval mode; the raw logits in train mode."""
        return logits if self.training else logits / self.temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.num_classes == 0:
            return x.unsqueeze(1).expand(-1, self.num_members, -1) if x.ndim == 2 else x
        if x.ndim == 2:
            bias: Optional[torch.Tensor] = None if self.bias is None else self.bias.reshape(-1)
            out = F.linear(x, self.weight.reshape(-1, self.in_features), bias)
            return self.scaled(out.view(x.shape[0], self.num_members, self.num_classes))
        if x.ndim == 3 and x.shape[1] == self.num_members:
            out = torch.einsum('bmf,mkf->bmk', x, self.weight)
            return self.scaled(out if self.bias is None else out + self.bias)
        raise ValueError(f'expected features of shape (B, {self.in_features}) or (B, M={self.num_members}, '
                         f'{self.in_features}), got {tuple(x.shape)}')

    def extra_repr(self) -> str:
        return f'in_features={self.in_features}, num_classes={self.num_classes}, num_members={self.num_members}'
