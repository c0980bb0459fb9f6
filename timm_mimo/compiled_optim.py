"""The optimizer update as one compiled function: gradient clipping and ``optimizer.step`` in a graph.

Eager, an optimizer update launches a few kernels per parameter tensor group from the host (timm's foreach SGD: a
handful per step, more with clipping); compiled, it is one graph that CUDA graphs can replay. A learning rate that a
scheduler changes every update would be a new Python constant each step (one recompilation per value): here every
parameter group's rate is a 0-d tensor on the parameters' device while the update runs, refreshed from the float the
scheduler wrote (one ``fill_``, no host read), and the float is back in the group afterwards, so schedulers, logging
and checkpoints see what they always see.
"""
import functools
import inspect
from typing import Callable, Iterable, List, Optional, Union

import torch
from timm.utils import dispatch_clip_grad

__all__ = ['CompiledOptimizerStep']


class CompiledOptimizerStep:
    """``clip (optional) + optimizer.step()`` compiled once; call it where ``optimizer.step()`` was called.

    Args:
        optimizer: The optimizer (its parameter groups keep float learning rates outside the call).
        parameters: What ``clip_grad`` clips (default: every parameter of the optimizer).
        clip_grad: timm's ``--clip-grad`` value (``None``: no clipping).
        clip_mode: timm's ``--clip-mode``.
        backend: ``torch.compile`` backend.
        mode: ``torch.compile`` mode (inductor).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, parameters: Optional[Iterable[torch.Tensor]] = None,
                 clip_grad: Optional[float] = None, clip_mode: str = 'norm',
                 backend: Union[str, Callable] = 'inductor', mode: Optional[str] = None):
        self.optimizer = optimizer
        self.parameters: List[torch.Tensor] = list(parameters) if parameters is not None else [
            p for group in optimizer.param_groups for p in group['params']]
        self.clip_grad = clip_grad
        self.clip_mode = clip_mode
        self.lr_tensors: List[torch.Tensor] = []
        self.lr_values: List[Optional[float]] = []
        for group in optimizer.param_groups:
            device = group['params'][0].device if group['params'] else torch.device('cpu')
            self.lr_tensors.append(torch.zeros((), dtype=torch.float32, device=device))
            self.lr_values.append(None)
        # torch's optimizers wrap step() in a function that turns gradients off between two graph breaks (so that a
        # compiled step is an inference graph); the update here runs under no_grad itself and calls the unwrapped
        # step, so clipping and the update are one graph
        raw_step = inspect.unwrap(type(optimizer).step)
        differentiable = optimizer.defaults.get('differentiable', False)
        self._step = optimizer.step if differentiable else functools.partial(raw_step, optimizer)
        self._compiled = torch.compile(self._update, backend=backend, mode=mode, dynamic=False)

    def _update(self) -> None:
        with torch.no_grad():
            if self.clip_grad is not None:
                dispatch_clip_grad(self.parameters, value=self.clip_grad, mode=self.clip_mode)
            self._step()

    def __call__(self) -> None:
        groups = self.optimizer.param_groups
        values = [group['lr'] for group in groups]
        for i, (value, tensor) in enumerate(zip(values, self.lr_tensors)):
            if value != self.lr_values[i]:  # host floats compared: refresh the device rate only when it changed
                tensor.fill_(value)
                self.lr_values[i] = value
        for group, tensor in zip(groups, self.lr_tensors):
            group['lr'] = tensor
        try:
            self._compiled()
        finally:
            for group, value in zip(groups, values):
                group['lr'] = value

    def __repr__(self) -> str:
        return f'{type(self).__name__}({type(self.optimizer).__name__}, clip_grad={self.clip_grad})'
