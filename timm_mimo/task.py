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
import contextlib
import logging
import warnings
from typing import Any, Callable, Dict, Optional, Tuple, Union

import torch
import torch.nn as nn
from timm.loss import LabelSmoothingCrossEntropy
from timm.task import TrainingTask
from timm.utils import unwrap_model

from timm_mimo.data import PixelMix, gather_pairs, shard_seed, soft_targets
from timm_mimo.loss import MimoLoss
from timm_mimo.metrics import is_mimo
from timm_mimo.mixing import Mixer, MixPlan, progress
from timm_mimo.shard_plan import PlanSampler, ShardPlan

__all__ = ['MimoTask', 'TrainStep', 'MIXER_OVERRIDES', 'LOSS_OVERRIDES']

_logger = logging.getLogger(__name__)
BATCH_PARTNERS_WARNING = (
    'pixel mixing (mimo_cutmix / mimo_mixup) got no partner images: partners are taken from the batch itself, not '
    'from the whole dataset (thesis App. A.1.3.1), and with batch repetition a partner can be a copy of the same '
    'image; pass partner_images / partner_targets (BatchRepeatSampler(num_partners=B)) to mix with the dataset')

# the step's 'binary' flags, made once: a step creates no host tensor for them (treat them as read-only)
_BINARY = {flag: torch.tensor(flag) for flag in (False, True)}

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

    _batch_partners_warned = False  # set on the task once it warned that pixel-mixing partners come from the batch

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
        self._plan_samplers: Dict[Tuple[int, int], PlanSampler] = {}
        # the step's module, its compiled form and its DDP wrapper: kept out of the task's submodules (the model is
        # the task's trainable module; its parameters and state are reached through it alone)
        self.__dict__['train_step'] = TrainStep(self)
        self.__dict__['_compiled_step'] = None
        self.__dict__['_ddp_step'] = None
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

    def plan_sampler(self, image_size: Tuple[int, int]) -> PlanSampler:
        """A picklable sampler of this task's shard plans for training images of ``image_size`` (loader workers)."""
        image_size = tuple(int(v) for v in image_size[-2:])
        sampler = self._plan_samplers.get(image_size)
        if sampler is None:
            if not self.mimo:
                raise ValueError(f'{type(unwrap_model(self.trainable_module)).__name__} is not a MIMO model: '
                                 'its training step has no plan')
            grid = unwrap_model(self.trainable_module).mix_grid(image_size)
            sampler = self._plan_samplers[image_size] = PlanSampler(
                self.num_members, self.mixer, self.input_repeat, self.pixel_mix, grid, image_size, self.seed)
        return sampler

    def sample_plan(self, batch_size: int, image_size: Tuple[int, int], num_partners: int = 0) -> ShardPlan:
        """The plan of the step set by :meth:`set_step`, drawn now from the task's generator (CPU)."""
        return self.plan_sampler(image_size).sample_with(self.generator, batch_size, self.progress, self.epoch_float,
                                                         num_partners)

    def prepare_distributed(self, device_ids: Optional[list] = None, static_graph: bool = True,
                            **ddp_kwargs: Any) -> 'MimoTask':
        """Wrap the training step in DistributedDataParallel (after :meth:`compile` and :meth:`setup_ema`).

        DDP wraps the step module (:class:`TrainStep`, compiled when :meth:`compile` ran first), not the model: its
        hooks run eagerly around the compiled step, which stays ONE dynamo frame (split only at DDP's gradient bucket
        boundaries, by design). ``gradient_as_bucket_view`` (gradients are views of the all-reduce buckets: no copy)
        is on; ``static_graph`` (the same parameters take part in every step, in the same graph: true for every
        family's training step) lets DDP skip searching the autograd graph each step.
        """
        from torch.nn.parallel import DistributedDataParallel
        ddp_kwargs.setdefault('gradient_as_bucket_view', True)
        step = self._compiled_step if self._compiled_step is not None else self.train_step
        self.__dict__['_ddp_step'] = DistributedDataParallel(step, device_ids=device_ids, static_graph=static_graph,
                                                             **ddp_kwargs)
        return self

    def no_sync(self) -> Any:
        """No gradient all-reduce in the block (accumulation micro-steps); a no-op without DDP."""
        if self._ddp_step is None:
            return contextlib.nullcontext()
        return self._ddp_step.no_sync()

    def compile(self, backend: Union[str, Callable] = 'inductor', mode: Optional[str] = None,
                **compile_kwargs: Any) -> nn.Module:
        """``torch.compile`` the training step's tensor work and the evaluation model (call before DDP).

        The whole step given its plan (pairing gather, pixel mixing, the model's mixed forward, the member loss) is one
        compiled module (:class:`TrainStep`), so its backward is compiled too; a compiled copy of the model's forward
        serves evaluation (returned, as timm's tasks do).
        """
        self.__dict__['_compiled_step'] = torch.compile(self.train_step, backend=backend, mode=mode,
                                                        **compile_kwargs)
        self.eval_model = torch.compile(self.trainable_module, backend=backend, mode=mode, **compile_kwargs)
        return self.eval_model

    def mix_inputs(self, images: torch.Tensor, targets: torch.Tensor, partner_images: Optional[torch.Tensor] = None,
                   partner_targets: Optional[torch.Tensor] = None, plan: Optional[ShardPlan] = None
                   ) -> Tuple[torch.Tensor, torch.Tensor, MixPlan]:
        """The multi-input batch of one shard: ``(B, M, C, H, W)`` inputs, their targets and the mixing plan.

        Args:
            images: ``(B, C, H, W)`` images of this shard.
            targets: ``(B,)`` class indices.
            partner_images: ``(P, C, H, W)`` pixel-mixing partners (pixel mixing only). Absent, the partners come
                from this batch itself; the papers draw them from the whole dataset (thesis App. A.1.3.1: "randomly
                chosen in the whole dataset, and not only inside the current batch"), which the training loader does
                (``BatchRepeatSampler(num_partners=B)``).
            partner_targets: ``(P,)`` their labels.
            plan: The shard's plan, drawn ahead (the training loader's workers); ``None`` draws it now from the
                task's generator (:meth:`set_step`).
        """
        partner_images, partner_targets, plan = self._complete(images, targets, partner_images, partner_targets, plan)
        return self._apply_plan(images, targets, partner_images, partner_targets, plan)

    def _complete(self, images: torch.Tensor, targets: torch.Tensor, partner_images: Optional[torch.Tensor],
                  partner_targets: Optional[torch.Tensor], plan: Optional[ShardPlan]
                  ) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor], ShardPlan]:
        """The partners (the batch itself when pixel mixing has none) and the plan (drawn now when not given)."""
        if partner_images is not None and self.pixel_mix is None:
            raise ValueError('partner images given but this task does no pixel mixing (mimo_cutmix / mimo_mixup)')
        if self.pixel_mix is not None and partner_images is None:
            partner_images, partner_targets = images, targets  # a loop without dataset partners: the batch
            if not self._batch_partners_warned:
                self._batch_partners_warned = True  # once per task (per run); outside the (compiled) step
                warnings.warn(BATCH_PARTNERS_WARNING, stacklevel=3)
        if plan is None:
            num_partners = 0 if partner_images is None else partner_images.shape[0]
            plan = self.sample_plan(images.shape[0], tuple(images.shape[-2:]), num_partners)
        return partner_images, partner_targets, plan

    def _apply_plan(self, images: torch.Tensor, targets: torch.Tensor, partner_images: Optional[torch.Tensor],
                    partner_targets: Optional[torch.Tensor], plan: ShardPlan
                    ) -> Tuple[torch.Tensor, torch.Tensor, MixPlan]:
        """Pairs gathered and pixel mixing applied on the images' device: no host work, no host reads."""
        xs, ys = gather_pairs(images, targets, plan.pair_index)
        mix = plan.mix.to(images.device, non_blocking=True)
        if self.pixel_mix is not None:
            smoothing = getattr(self.criterion, 'label_smoothing', 0.0)
            ys = soft_targets(ys, self.num_classes, smoothing)
            partner_y = partner_targets if partner_targets.ndim == 2 else soft_targets(
                partner_targets, self.num_classes, smoothing)
            xs, ys = self.pixel_mix.apply(xs, ys, mix, partner_images, partner_y, plan.pixel_pick,
                                          plan.pixel_keep)
        return xs, ys, mix

    def _step(self, images: torch.Tensor, targets: torch.Tensor, partner_images: Optional[torch.Tensor],
              partner_targets: Optional[torch.Tensor], plan: Optional[ShardPlan]) -> Dict[str, Any]:
        """The tensor work of one training forward given its plan (:class:`TrainStep`, uncompiled)."""
        return self.train_step(images, targets, partner_images, partner_targets, plan)

    def forward(self, input: torch.Tensor, target: torch.Tensor, partner_input: Optional[torch.Tensor] = None,
                partner_target: Optional[torch.Tensor] = None, plan: Optional[ShardPlan] = None) -> Dict[str, Any]:
        """One training forward.

        Args:
            input: ``(B, C, H, W)`` images of this shard.
            target: ``(B,)`` class indices.
            partner_input: ``(P, C, H, W)`` pixel-MSDA partners from the whole dataset (MIMO with pixel mixing), as the
                papers draw them (thesis App. A.1.3.1) and the training loader loads them; absent, pixel mixing takes
                its partners from this batch itself.
            partner_target: ``(P,)`` their labels.
            plan: The shard's :class:`~timm_mimo.shard_plan.ShardPlan`, drawn ahead by the loader (its tensors on
                the images' device for a step without host work); ``None``: drawn now (:meth:`set_step`).

        Returns:
            ``loss``; ``output`` (``(B, M, K)`` member logits for MIMO models, ``(B, K)`` logits otherwise);
            for MIMO models also ``target`` (the paired, possibly soft targets), ``kappas`` ``(B, M)`` and ``binary``
            (whether the batch used a binary mask, as a 0-d bool tensor on the CPU).
        """
        step = next(s for s in (self._ddp_step, self._compiled_step, self.train_step) if s is not None)
        if not self.mimo:
            if plan is not None or partner_input is not None:
                raise ValueError(f'{type(unwrap_model(self.trainable_module)).__name__} is not a MIMO model: '
                                 'its training step takes no plan or partners')
            return step(input, target, None, None, None)
        partner_input, partner_target, plan = self._complete(input, target, partner_input, partner_target, plan)
        result = step(input, target, partner_input, partner_target, plan)
        result['binary'] = _BINARY[plan.mix.binary]
        return result


class TrainStep(nn.Module):
    """One training forward given its plan, as a module: what :meth:`MimoTask.compile` compiles whole and
    :meth:`MimoTask.prepare_distributed` wraps in DDP.

    MIMO models: pairing gather, pixel mixing, the model's mixed forward and the member loss; plain models: the
    model and its classification loss. The model is this module's only submodule (DDP's parameters); the task, which
    holds the step's settings, is not one.
    """

    def __init__(self, task: MimoTask):
        super().__init__()
        self.model = task.trainable_module
        self.__dict__['task'] = task

    def forward(self, images: torch.Tensor, targets: torch.Tensor, partner_images: Optional[torch.Tensor],
                partner_targets: Optional[torch.Tensor], plan: Optional[ShardPlan]) -> Dict[str, Any]:
        task = self.task
        if not task.mimo:
            output = self.model(images)
            return {'loss': task.criterion(output, targets), 'output': output}
        xs, ys, mix = task._apply_plan(images, targets, partner_images, partner_targets, plan)
        output = self.model(xs, mix)
        loss = task.criterion(output, ys, mix.kappas)
        return {'loss': loss, 'output': output, 'target': ys, 'kappas': mix.kappas}
