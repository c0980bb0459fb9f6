"""MIMO training as a :class:`timm.task.TrainingTask`: pairing, mixing plan, pixel MSDA and the member loss.

``task(images, targets)`` on a ``(B, C, H, W)`` image batch does the whole MIMO training step of MixMo
(arXiv:2103.06132 Sec. 3, thesis (HAL tel-03952815) Alg. A.6), MIMO (arXiv:2010.06610) and MixViT
(openreview.net/forum?id=pOq1HuMI8Dz): pair the batch into M inputs (with input repetition ρ), sample a
:class:`~timm_mimo.mixing.MixPlan` at the current training progress, optionally pixel-mix every member input with
partners from the whole dataset, forward ``model(xs, plan)`` and weigh the member cross-entropies by the mixing ratios.
On a plain (single-input) timm model it is timm's classification step.

Your own loop::

    task = MimoTask.from_model(model, seed=0)
    for epoch in range(epochs):
        for step, (images, targets) in enumerate(loader):
            task.set_step(epoch, step, len(loader), epochs)
            result = task(images, targets)
            result['loss'].backward()
            optimizer.step()
            optimizer.zero_grad()
"""
import logging
from typing import Any, Callable, Dict, Optional, Tuple, Union

import torch
import torch.nn as nn
from timm.loss import LabelSmoothingCrossEntropy
from timm.task import TrainingTask
from timm.utils import unwrap_model

from timm_mimo.data import PixelMix, pair_inputs, shard_seed, soft_targets
from timm_mimo.loss import MimoLoss
from timm_mimo.metrics import is_mimo
from timm_mimo.mixing import Mixer, progress

__all__ = ['MimoTask', 'MIXER_OVERRIDES', 'LOSS_OVERRIDES']

_logger = logging.getLogger(__name__)

# MimoTask.from_model keyword -> Mixer / MimoLoss argument; unset (None) ones keep the model's mix_cfg / loss_cfg
MIXER_OVERRIDES = dict(mix='kind', mix_prob='prob', mix_prob_decay='prob_decay', mix_alpha='alpha',
                       single_source_end='single_source_end')
LOSS_OVERRIDES = dict(loss_root='root', smoothing='label_smoothing')


class MimoTask(TrainingTask):
    """The MIMO training step (any MIMO timm_mimo model) or timm's classification step (a plain model).

    The task owns a CPU generator that drives pairing, the plan and pixel mixing. :meth:`set_step` re-seeds it from
    (seed, epoch, step, shard), so a shard gets the same pairs and plan on whichever process computes it (DDP and
    gradient accumulation give the same result), and sets the training progress of the mixing schedules.

    Args:
        model: A MIMO model (``num_members`` + ``forward_members``) or any timm classifier.
        mixer: Samples the plans (MIMO only); its ``generator`` is replaced by the task's.
        criterion: :class:`~timm_mimo.loss.MimoLoss` for MIMO models, a classification loss for plain ones.
        input_repeat: ρ, share of batch positions where all M inputs are the same image.
        pixel_mix: Optional :class:`~timm_mimo.data.PixelMix` applied to every member input.
        num_classes: K, for the soft targets of pixel mixing (default ``model.num_classes``).
        seed: Seed of the per-shard generator.
        device: Device for task tensors.
        dtype: Dtype for task tensors.
        verbose: Log the configuration.
    """

    def __init__(
            self,
            model: nn.Module,
            mixer: Optional[Mixer] = None,
            criterion: Optional[Union[nn.Module, Callable]] = None,
            input_repeat: float = 0.0,
            pixel_mix: Optional[PixelMix] = None,
            num_classes: Optional[int] = None,
            seed: int = 0,
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
            verbose: bool = True,
    ):
        super().__init__(device=device, dtype=dtype, verbose=verbose)
        self.trainable_module = model
        self.mimo = is_mimo(model)
        self.num_members = model.num_members if self.mimo else 1
        self.num_classes = num_classes if num_classes is not None else getattr(model, 'num_classes', None)
        self.seed = seed
        self.generator = torch.Generator()
        self.generator.manual_seed(seed)
        self.progress = 0.0
        self.epoch_float = 0.0
        if self.mimo:
            if not 0.0 <= input_repeat <= 1.0:
                raise ValueError(f'input_repeat (ρ) must lie in [0, 1], got {input_repeat!r}')
            self.mixer = mixer if mixer is not None else Mixer(self.num_members)
            if self.mixer.num_members != self.num_members:
                raise ValueError(f'the Mixer has {self.mixer.num_members} members, the model {self.num_members}')
            self.mixer.generator = self.generator
            self.criterion = criterion if criterion is not None else MimoLoss()
            if pixel_mix is not None and self.num_classes is None:
                raise ValueError('pixel mixing needs num_classes (the model has no num_classes attribute)')
        else:
            if mixer is not None or pixel_mix is not None or input_repeat:
                raise ValueError(f'{type(model).__name__} is not a MIMO model (no num_members / forward_members): '
                                 'mixer, pixel_mix and input_repeat apply to MIMO models only')
            self.mixer = None
            self.criterion = criterion if criterion is not None else nn.CrossEntropyLoss()
        self.input_repeat = input_repeat
        self.pixel_mix = pixel_mix
        if verbose:
            _logger.info(f'{type(self).__name__}: mixer={self.mixer}, criterion={self.criterion}, '
                         f'input_repeat={input_repeat}, pixel_mix={pixel_mix}')

    @classmethod
    def from_model(
            cls,
            model: nn.Module,
            mix: Optional[str] = None,
            mix_prob: Optional[float] = None,
            mix_prob_decay: Optional[bool] = None,
            mix_alpha: Union[float, str, None] = None,
            single_source_end: Optional[bool] = None,
            loss_root: Optional[float] = None,
            smoothing: Optional[float] = None,
            input_repeat: Optional[float] = None,
            mimo_cutmix: Optional[float] = None,
            mimo_mixup: Optional[float] = None,
            mimo_mix_prob: float = 0.5,
            **kwargs: Any,
    ) -> 'MimoTask':
        """The task with the model's own recipe (``model.mix_cfg`` / ``model.loss_cfg``) and the given overrides.

        Overrides left ``None`` keep the model's value. ``mix_alpha='none'`` (or ``None`` in ``mix_cfg``) is MIMO's
        fixed κ = 1/M. On a plain model only ``smoothing`` applies (default 0.1, timm's train.py default); any MIMO
        override is a ``ValueError``.

        Args:
            model: The model to train.
            mix: Mask kind of binary batches (``timm_mimo.MASK_KINDS``).
            mix_prob: p, probability of a binary batch.
            mix_prob_decay: p descends to 0 over the last twelfth of training.
            mix_alpha: α of κ ~ Beta(α, α) / Dirichlet(α); ``'none'`` for κ = 1/M.
            single_source_end: MixViT's end-of-training single-source schedule.
            loss_root: r of the loss weights ``w_r(κ)``.
            smoothing: Label smoothing.
            input_repeat: ρ.
            mimo_cutmix: Pixel CutMix α on every member input (0 / None: off).
            mimo_mixup: Pixel Mixup α on every member input (0 / None: off).
            mimo_mix_prob: Probability that one member input is pixel-mixed.
            **kwargs: ``seed``, ``device``, ``dtype``, ``verbose``, ``num_classes``.
        """
        overrides = dict(mix=mix, mix_prob=mix_prob, mix_prob_decay=mix_prob_decay, mix_alpha=mix_alpha,
                         single_source_end=single_source_end, loss_root=loss_root, input_repeat=input_repeat,
                         mimo_cutmix=mimo_cutmix, mimo_mixup=mimo_mixup)
        if not is_mimo(model):
            given = sorted(name for name, value in overrides.items() if value is not None)
            if given:
                raise ValueError(f'{", ".join(given)} given but {type(model).__name__} is not a MIMO model '
                                 '(no num_members / forward_members)')
            criterion = nn.CrossEntropyLoss() if smoothing == 0 else LabelSmoothingCrossEntropy(
                0.1 if smoothing is None else smoothing)
            return cls(model, criterion=criterion, **kwargs)
        mixer_kwargs = dict(getattr(model, 'mix_cfg', None) or {})
        for name, key in MIXER_OVERRIDES.items():
            if overrides[name] is not None:
                mixer_kwargs[key] = None if overrides[name] == 'none' else overrides[name]
        if input_repeat is not None:
            mixer_kwargs['input_repeat'] = input_repeat
        mixer_kwargs['num_members'] = model.num_members
        loss_kwargs = dict(getattr(model, 'loss_cfg', None) or {})
        for name, key in LOSS_OVERRIDES.items():
            value = smoothing if name == 'smoothing' else overrides[name]
            if value is not None:
                loss_kwargs[key] = value
        pixel_mix = None
        if mimo_cutmix or mimo_mixup:
            pixel_mix = PixelMix(mimo_cutmix or 0.0, mimo_mixup or 0.0, mimo_mix_prob)
        mixer = Mixer(**mixer_kwargs)  # ρ lives in the model's mix_cfg (MixShare: 10 %) unless overridden
        task = cls(model, mixer=mixer, criterion=MimoLoss(**loss_kwargs), input_repeat=mixer.input_repeat,
                   pixel_mix=pixel_mix, **kwargs)
        task.mixer_kwargs, task.loss_kwargs = mixer_kwargs, loss_kwargs
        return task

    def set_step(self, epoch: int, step: int, steps_per_epoch: int, num_epochs: int, shard: int = 0) -> None:
        """Set the training progress and re-seed the generator for one shard of one optimizer step.

        Args:
            epoch: Epoch, from 0.
            step: Optimizer step inside the epoch, from 0.
            steps_per_epoch: Optimizer steps per epoch.
            num_epochs: Total epochs of the run (the schedules' horizon).
            shard: Which shard of the global batch this forward computes (``rank · grad_accum_steps + micro_step``).
        """
        self.progress = progress(epoch, step, steps_per_epoch, num_epochs)
        self.epoch_float = epoch + step / steps_per_epoch  # fractional epoch, for epoch-based schedules
        self.generator.manual_seed(shard_seed(self.seed, epoch, step, shard))

    def prepare_distributed(self, device_ids: Optional[list] = None, **ddp_kwargs: Any) -> 'MimoTask':
        """Wrap the model in DistributedDataParallel (after :meth:`compile` and :meth:`setup_ema`)."""
        from torch.nn.parallel import DistributedDataParallel
        self.trainable_module = DistributedDataParallel(self.trainable_module, device_ids=device_ids, **ddp_kwargs)
        return self

    def compile(self, backend: str = 'inductor', mode: Optional[str] = None, **compile_kwargs: Any) -> nn.Module:
        """``torch.compile`` the model (before DDP); the same compiled module serves training and evaluation."""
        self.trainable_module = torch.compile(self.trainable_module, backend=backend, mode=mode, **compile_kwargs)
        self.eval_model = self.trainable_module
        return self.trainable_module

    def mix_inputs(self, images: torch.Tensor, targets: torch.Tensor, partner_images: Optional[torch.Tensor] = None,
                   partner_targets: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor, Any]:
        """The multi-input batch of one shard: ``(B, M, C, H, W)`` inputs, their targets and the plan."""
        grid_model = unwrap_model(self.trainable_module)
        xs, ys = pair_inputs(images, targets, self.num_members, self.input_repeat, self.generator)
        plan = self.mixer(xs.shape[0], grid_model.mix_grid(tuple(images.shape[-2:])), self.progress,
                          device=images.device, epoch=self.epoch_float)
        if self.pixel_mix is not None:
            if partner_images is None:
                partner_images, partner_targets = images, targets  # a loop without dataset partners: the batch
            smoothing = getattr(self.criterion, 'label_smoothing', 0.0)
            ys = soft_targets(ys, self.num_classes, smoothing)
            partner_y = partner_targets if partner_targets.ndim == 2 else soft_targets(
                partner_targets, self.num_classes, smoothing)
            xs, ys = self.pixel_mix(xs, ys, plan, partner_images, partner_y, self.generator)
        elif partner_images is not None:
            raise ValueError('partner images given but this task does no pixel mixing (mimo_cutmix / mimo_mixup)')
        return xs, ys, plan

    def forward(self, input: torch.Tensor, target: torch.Tensor, partner_input: Optional[torch.Tensor] = None,
                partner_target: Optional[torch.Tensor] = None) -> Dict[str, Any]:
        """One training forward.

        Args:
            input: ``(B, C, H, W)`` images of this shard.
            target: ``(B,)`` class indices.
            partner_input: ``(P, C, H, W)`` pixel-MSDA partners from the whole dataset (MIMO with pixel mixing); when
                absent the batch itself is the partner pool.
            partner_target: ``(P,)`` their labels.

        Returns:
            ``loss``; ``output`` (``(B, M, K)`` member logits for MIMO models, ``(B, K)`` logits otherwise);
            for MIMO models also ``target`` (the paired, possibly soft targets), ``kappas`` ``(B, M)`` and ``binary``
            (whether the batch used a binary mask, as a 0-d bool tensor).
        """
        if not self.mimo:
            output = self.trainable_module(input)
            return {'loss': self.criterion(output, target), 'output': output}
        xs, ys, plan = self.mix_inputs(input, target, partner_input, partner_target)
        output = self.trainable_module(xs, plan)
        loss = self.criterion(output, ys, plan.kappas)
        return {'loss': loss, 'output': output, 'target': ys, 'kappas': plan.kappas,
                'binary': torch.tensor(plan.binary)}
