"""MIMO / Linear-MixMo / Cut-MixMo on any timm CNN (MixMo, Ramé, Sun & Cord, ICCV 2021, arXiv:2103.06132).

:class:`MimoCNN` creates a timm backbone, finds its stem conv through ``pretrained_cfg['first_conv']`` and its
classifier through ``pretrained_cfg['classifier']``, and replaces them in place:

* the stem conv by :class:`MemberEncoders`, M convs ``c_m`` of the stem's shape stored as one weight tensor;
* the classifier by :class:`~timm_mimo.models._heads.MemberHeads`, M dense heads ``d_m``.

The backbone's own ``forward`` then does the rest, so any timm CNN (or a ViT whose first conv is its patch embedding,
see ``mimo_vit.py``) works. How the encoders compute depends on the call:

* plain ``(B, C, H, W)`` input: ``Σ_m c_m(x)`` as ONE conv with the summed weights (MIMO / MixMo inference);
* ``model(xs, plan)``: ``xs (B, M, C, H, W)`` is viewed as ``(B, M·C, H, W)`` and the encoders return
  ``M · Σ_m mask_m ⊙ c_m(x_m)`` (thesis eq. 3.2 / A.3, factor M), accumulated member by member;
* ``inference='separate'``: member m runs the whole network on its own encoding ``M · c_m(x)`` (the
  thesis' "separate" inference of Table 4.1).

The plan reaches the encoders through a per-thread stack of call records pushed by :class:`MimoCNN` around the
backbone call and always popped (``try/finally``); nested calls (a hook calling the model again) push their own
record, and a mixed call whose backbone never ran the encoders raises instead of silently training unmixed.
"""
import math
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import Conv2dSame, get_device_dtype, pad_same
from timm.models import (
    build_model_with_cfg,
    generate_default_cfgs,
    load_pretrained,
    register_model,
    resolve_pretrained_cfg,
)

from timm_mimo.mixing import MixPlan, members_channels_last
from timm_mimo.models._contract import MimoContract, check_image_batch, check_num_members, refuse_features_only
from timm_mimo.models._heads import MemberHeads
from timm_mimo.models.cifar_resnet import CIFAR100_MEAN, CIFAR100_STD, PREACT_WIDTHS, preact_name
from timm_mimo.pretrained import pretrained_weights

__all__ = ['MimoCNN', 'MemberEncoders', 'SharedHead', 'METHOD_MIX_CFGS', 'GENERIC_BACKBONE']

# Mixer kwargs (timm_mimo.mixing.Mixer) of each method; train.py builds Mixer(num_members=M, **model.mix_cfg).
METHOD_MIX_CFGS: Dict[str, Dict[str, Any]] = {
    'mimo': dict(kind='linear', alpha=None),  # MIMO arXiv:2010.06610: κ = 1/M, i.e. summing
    'linear_mixmo': dict(kind='linear', alpha=2.0),  # thesis eq. A.3
    'cut_mixmo': dict(kind='cutmix', alpha=2.0, prob=0.5, prob_decay=True),  # thesis Alg. A.6 defaults
    'cutmix_only_mixmo': dict(kind='cutmix', alpha=2.0, prob=1.0, prob_decay=False),  # thesis Table 4.1 "CutMix-only"
}
MIXMO_LOSS_CFG: Dict[str, Any] = dict(root=3.0)  # thesis eq. 3.3: r = 3 (MIMO has κ = 1/M, so every w_r = 1 anyway)
ENCODER_INITS = ('independent', 'same', 'colinear', 'colinear_filter')
# Decision: co-linear encoders c_m = a_m c_0 with positive factors log-uniform in [1/2, 2] (MixShare arXiv:2205.10139
# App. C: "co-linear" kernels share features as well as identical ones; the papers give neither the factors nor
# whether one factor per encoder or per filter, so both exist: 'colinear' one a_m per encoder, 'colinear_filter' one
# per output filter). Positive, so every filter keeps the "type" of feature of encoder 0.
COLINEAR_FACTOR_RANGE = (0.5, 2.0)
HEAD_ASSIGNMENTS = ('input', 'predominant')
INFERENCE_MODES = ('sum', 'separate')
GENERIC_BACKBONE = 'resnet18'  # the backbone of the generic names (mimo, linear_mixmo, cut_mixmo) when none is given


# --------------------------------------------------------------------------------------------------------------------
# Handing the call mode (and the plan's masks) from MimoCNN to the encoders inside the backbone's forward
# --------------------------------------------------------------------------------------------------------------------

@dataclass
class _EncoderCall:
    """What the encoders must compute during one backbone call."""
    mode: str  # 'plain' (Σ_m c_m(x)), 'mixed' (M Σ_m mask_m ⊙ c_m(x_m)), 'separate' (M c_m(x) per member)
    masks: Optional[torch.Tensor] = None  # (B, M, h, w) for 'mixed'
    consumed: bool = False


_CALLS = threading.local()


def _call_stack(encoders: nn.Module) -> List[_EncoderCall]:
    stacks: Dict[int, List[_EncoderCall]] = _CALLS.__dict__.setdefault('stacks', {})
    return stacks.setdefault(id(encoders), [])


def _current_call(encoders: nn.Module) -> Optional[_EncoderCall]:
    """The innermost active call of ``encoders`` in this thread, if any."""
    stack = getattr(_CALLS, 'stacks', {}).get(id(encoders))
    return stack[-1] if stack else None


@contextmanager
def _encoder_call(encoders: nn.Module, call: _EncoderCall) -> Iterator[_EncoderCall]:
    """Make ``call`` the current call of ``encoders`` (this thread) for the duration of the block."""
    stack = _call_stack(encoders)
    stack.append(call)
    try:
        yield call
    finally:
        stack.pop()
        if not stack:
            del _CALLS.stacks[id(encoders)]


# --------------------------------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------------------------------

def _channels_last(x: torch.Tensor) -> bool:
    """A ``(B, C, H, W)`` tensor stored channels-last (and not also contiguous, as a one-channel one is)."""
    return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _permuted_like(tensor: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """The entries of ``tensor`` in a random order: a fresh draw from the empirical distribution of its init."""
    flat = tensor.detach().reshape(-1)
    return flat[torch.randperm(flat.numel(), generator=generator, device='cpu').to(flat.device)].view_as(tensor)


def _colinear_factors(shape: Tuple[int, ...]) -> torch.Tensor:
    """Positive factors log-uniform in ``COLINEAR_FACTOR_RANGE`` (torch's global RNG, like every init)."""
    low, high = (math.log(v) for v in COLINEAR_FACTOR_RANGE)
    return torch.exp(low + (high - low) * torch.rand(shape))


class MemberEncoders(nn.Module):
    """M encoders ``c_m``: copies of a stem conv's geometry held as one weight ``(M·O, C/g, kh, kw)``.

    Rows ``[m·O, (m+1)·O)`` are encoder m (the layout of the equivalent grouped conv), so that
    ``pretrained_cfg['first_conv'] + '.weight'`` stays a 4-D conv weight (timm's ``in_chans`` adaptation works on it).

    Args:
        conv: The backbone's stem conv (``nn.Conv2d``, incl. timm's ``Conv2dSame``).
        num_members: M.
        encoder_init: ``'independent'``: encoder 0 keeps ``conv``'s initial weights and every other encoder gets a
            random permutation of them (an independent draw from the same init distribution, whatever the backbone's
            init scheme is); ``'same'``: M identical copies (MixShare's kernel alignment, thesis Alg. A.7);
            ``'colinear'``: ``c_m = a_m c_0`` with one positive factor per encoder, ``'colinear_filter'``: one per
            output filter (MixShare arXiv:2205.10139 App. C), ``a_0 = 1``.
        pretrained: Every encoder is ``conv / M`` so that ``Σ_m c_m = conv`` (a pretrained stem is reproduced).
        tied: One encoder shared by all members (the MixMo Table 3.4 "1 encoder" ablation): ``c_m = c`` for every m,
            one weight ``(O, C/g, kh, kw)``; ``encoder_init`` is then irrelevant and must stay ``'independent'``.
    """

    def __init__(self, conv: nn.Conv2d, num_members: int, encoder_init: str = 'independent', pretrained: bool = False,
                 tied: bool = False):
        super().__init__()
        if encoder_init not in ENCODER_INITS:
            raise ValueError(f'encoder_init must be one of {ENCODER_INITS}, got {encoder_init!r}')
        if tied and encoder_init != 'independent':
            raise ValueError(f'a tied (shared) encoder has no per-member init; got encoder_init={encoder_init!r} '
                             "(leave it 'independent' or untie the encoders)")
        self.tied = tied
        self.num_members = num_members
        self.in_channels = conv.in_channels
        self.out_channels = conv.out_channels
        self.kernel_size = conv.kernel_size
        self.stride = conv.stride
        self.dilation = conv.dilation
        self.groups = conv.groups
        self.same_pad = isinstance(conv, Conv2dSame)  # timm's dynamic TF-"SAME" padding
        self.padding = 0 if self.same_pad else conv.padding
        self.padding_mode = conv.padding_mode
        self._reversed_padding = getattr(conv, '_reversed_padding_repeated_twice', None)
        # None: one grouped conv on GPUs, M plain convs on the CPU (oneDNN's grouped conv with few channels per group
        # is slow); True / False force one of them (both compute the same encodings)
        self.grouped_conv: Optional[bool] = None

        factors = None
        if encoder_init in ('colinear', 'colinear_filter') and not pretrained:
            # one factor per encoder (or per output filter), shared by the filter's weight and bias
            size = conv.out_channels if encoder_init == 'colinear_filter' else 1
            factors = torch.cat([torch.ones(1, size), _colinear_factors((num_members - 1, size))]).expand(
                num_members, conv.out_channels)
        weights = self._member_copies(conv.weight, encoder_init, pretrained, factors)
        self.weight = nn.Parameter(torch.cat(weights, dim=0))
        self.bias: Optional[nn.Parameter] = None
        if conv.bias is not None:
            self.bias = nn.Parameter(torch.cat(self._member_copies(conv.bias, encoder_init, pretrained, factors),
                                               dim=0))

    def _member_copies(self, tensor: torch.Tensor, encoder_init: str, pretrained: bool,
                       factors: Optional[torch.Tensor]) -> List[torch.Tensor]:
        tensor = tensor.detach()
        copies = 1 if self.tied else self.num_members
        if pretrained:
            return [tensor / self.num_members] * copies
        if factors is not None:
            return [tensor * factors[m].view(-1, *([1] * (tensor.ndim - 1))) for m in range(copies)]
        if encoder_init == 'same' or self.tied:
            return [tensor.clone() for _ in range(copies)]
        return [tensor.clone()] + [_permuted_like(tensor) for _ in range(copies - 1)]

    @property
    def member_weight(self) -> torch.Tensor:
        """``(M, O, C/g, kh, kw)`` view of the encoders' weights (M views of one weight when tied)."""
        if self.tied:
            return self.weight.unsqueeze(0).expand(self.num_members, *self.weight.shape)
        return self.weight.view(self.num_members, self.out_channels, *self.weight.shape[1:])

    @property
    def member_bias(self) -> Optional[torch.Tensor]:
        """``(M, O)`` view of the encoders' biases (``None`` without bias)."""
        if self.bias is None:
            return None
        if self.tied:
            return self.bias.unsqueeze(0).expand(self.num_members, self.out_channels)
        return self.bias.view(self.num_members, self.out_channels)

    def output_size(self, size: Tuple[int, int]) -> Tuple[int, int]:
        """Spatial output size of the stem conv for an input of spatial ``size`` (the mixing grid)."""
        out = []
        for i, length in enumerate(size):
            if self.same_pad or self.padding == 'same':
                out.append(math.ceil(length / self.stride[i]))
                continue
            padding = 0 if self.padding == 'valid' else self.padding[i]
            span = self.dilation[i] * (self.kernel_size[i] - 1) + 1
            out.append((length + 2 * padding - span) // self.stride[i] + 1)
        return tuple(out)

    def _conv(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], groups: int) -> torch.Tensor:
        padding = self.padding
        if self.same_pad:
            x = pad_same(x, self.kernel_size, self.stride, self.dilation)
        elif self.padding_mode != 'zeros':
            x = F.pad(x, self._reversed_padding, mode=self.padding_mode)
            padding = 0
        return F.conv2d(x, weight, bias, self.stride, padding, self.dilation, groups)

    def _check_channels(self, x: torch.Tensor, channels: int, expected: str) -> None:
        if x.ndim != 4 or x.shape[1] != channels:
            raise ValueError(f'MIMO encoders expected an input of shape {expected} = (B, {channels}, H, W), '
                             f'got {tuple(x.shape)}')

    def forward_sum(self, x: torch.Tensor) -> torch.Tensor:
        """``Σ_m c_m(x)`` as one conv with the summed weights (MIMO / MixMo inference)."""
        self._check_channels(x, self.in_channels, '(B, C, H, W)')
        bias = None if self.bias is None else self.member_bias.sum(0)
        return self._conv(x, self.member_weight.sum(0), bias, self.groups)

    def _member_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """Packed ``(B, M·C, H, W)`` -> member-major ``(M, B, C, H, W)``, contiguous.

        One copy of the input so that every member's conv reads a contiguous batch (oneDNN reorders strided inputs
        itself, which cost more: resnet18's stem, B=64 at 64 px, M=2: 54 ms -> 46 ms forward + backward).
        """
        self._check_channels(x, self.num_members * self.in_channels, '(B, M·C, H, W)')
        batch_size, height, width = x.shape[0], *x.shape[-2:]
        if _channels_last(x):
            # (B, H, W, M·C) storage -> (M, B, H, W, C) contiguous: every member's input channels-last
            members = x.permute(0, 2, 3, 1).reshape(batch_size, height, width, self.num_members, self.in_channels)
            return members.permute(3, 0, 1, 2, 4).contiguous().permute(0, 1, 4, 2, 3)
        return x.view(batch_size, self.num_members, self.in_channels, height, width).transpose(0, 1).contiguous()

    def _member_conv(self, member_inputs: torch.Tensor, member: int) -> torch.Tensor:
        """``c_m(x_m)`` from the member-major inputs."""
        bias = None if self.bias is None else self.member_bias[member]
        return self._conv(member_inputs[member], self.member_weight[member], bias, self.groups)

    def forward_members(self, x: torch.Tensor) -> torch.Tensor:
        """All M encodings: ``(B, M·C, H, W)`` -> ``(B, M, O, h, w)``, member m reading input channels m.

        On GPUs one grouped conv (:meth:`_grouped_members`); on the CPU M plain convs, since there oneDNN's grouped
        conv with few input channels per group is slow (resnet18's 7x7 stem, M=2, B=64 at 64 px, one thread: forward +
        backward 128 ms grouped vs 54 ms as two convs, 24 ms for the single conv of the backbone).
        """
        if self._use_grouped_conv(x):
            self._check_channels(x, self.num_members * self.in_channels, '(B, M·C, H, W)')
            return self._grouped_members(x)
        member_inputs = self._member_inputs(x)
        return torch.stack([self._member_conv(member_inputs, m) for m in range(self.num_members)], dim=1)

    def _use_grouped_conv(self, x: torch.Tensor) -> bool:
        """One grouped conv for the M encoders (GPU), or M plain convs (CPU, see :meth:`forward_members`)."""
        return x.device.type != 'cpu' if self.grouped_conv is None else self.grouped_conv

    def _grouped_members(self, x: torch.Tensor) -> torch.Tensor:
        """All M encodings as ONE conv with ``groups = M·g`` on the packed input: ``(B, M, O, h, w)``.

        The weight ``(M·O, C/g, kh, kw)`` is already the grouped conv's (a tied encoder is repeated M times), the
        packed ``(B, M·C, H, W)`` batch is its input as it is: one kernel forward, one backward, no copy of the inputs
        and no per-member slices of the weight (whose gradients would each be a full-size zero tensor).
        """
        weight, bias = self.weight, self.bias
        if self.tied:
            weight = weight.repeat(self.num_members, *([1] * (weight.ndim - 1)))
            bias = None if bias is None else bias.repeat(self.num_members)
        encoded = self._conv(x, weight, bias, self.groups * self.num_members)
        return encoded.view(x.shape[0], self.num_members, self.out_channels, *encoded.shape[-2:])

    def forward_mixed(self, x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """``M · Σ_m mask_m ⊙ c_m(x_m)`` (thesis eq. 3.2, A.3, A.4) on a packed ``(B, M·C, H, W)`` input."""
        self._check_channels(x, self.num_members * self.in_channels, '(B, M·C, H, W)')
        expected = (x.shape[0], self.num_members, *self.output_size(tuple(x.shape[-2:])))
        if tuple(masks.shape) != expected:
            raise ValueError(f'MixPlan masks have shape {tuple(masks.shape)}, expected (B, M, H, W) = {expected} '
                             '(the encoder output grid)')
        # thesis eq. 3.2 / A.3: the factor M keeps the train-time scale equal to the inference-time sum Σ_m c_m(x)
        if self._use_grouped_conv(x):
            encoded = self._grouped_members(x)
            scaled_masks = (masks * self.num_members).to(encoded.dtype).unsqueeze(2)
            if members_channels_last(encoded):
                # summed over members in the storage order (B, h, w, M, O): the output stays channels-last
                mixed = (encoded.permute(0, 3, 4, 1, 2) * scaled_masks.permute(0, 3, 4, 1, 2)).sum(dim=3)
                return mixed.permute(0, 3, 1, 2)
            return (encoded * scaled_masks).sum(dim=1)
        member_inputs = self._member_inputs(x)
        scaled_masks = masks.unsqueeze(2) * self.num_members
        mixed = None
        for m in range(self.num_members):
            encoded = self._member_conv(member_inputs, m)
            term = encoded * scaled_masks[:, m].to(encoded.dtype)
            mixed = term if mixed is None else mixed.add_(term)
        return mixed

    def forward_separate(self, x: torch.Tensor) -> torch.Tensor:
        """``(B·M, C, H, W)`` rows ordered (sample, member), the image repeated per member -> ``M · c_m(x)`` each.

        Decision ("separate" inference, thesis Table 4.1; papers silent on the scale): member m sees only its own
        encoding, scaled by M, which is exactly what a binary (cut) training batch feeds the network where member m
        owns a position (``M · 1 · c_m(x_m)``), so separate inference matches the scale the core network was
        trained on.
        """
        self._check_channels(x, self.in_channels, '(B·M, C, H, W)')
        if x.shape[0] % self.num_members:
            raise ValueError(f'separate inference expects a batch of B·M rows (M={self.num_members}), '
                             f'got {x.shape[0]}')
        packed = x.reshape(x.shape[0] // self.num_members, self.num_members * self.in_channels, *x.shape[-2:])
        encoded = self.forward_members(packed)
        return encoded.reshape(x.shape[0], self.out_channels, *encoded.shape[-2:]) * self.num_members

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        call = _current_call(self)
        if call is None or call.mode == 'plain':
            return self.forward_sum(x)
        if call.consumed:
            raise RuntimeError('the MIMO encoders ran twice within one backbone call; a backbone must apply its '
                               "pretrained_cfg['first_conv'] once per forward")
        call.consumed = True
        if call.mode == 'mixed':
            return self.forward_mixed(x, call.masks)
        return self.forward_separate(x)

    def extra_repr(self) -> str:
        return (f'num_members={self.num_members}, in_channels={self.in_channels}, out_channels={self.out_channels}, '
                f'kernel_size={self.kernel_size}, stride={self.stride}, groups={self.groups}, '
                f'bias={self.bias is not None}' + (', tied=True' if self.tied else ''))


# --------------------------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------------------------

def _module_path(backbone: nn.Module, key: str) -> str:
    path = backbone.pretrained_cfg.get(key) if getattr(backbone, 'pretrained_cfg', None) else None
    if isinstance(path, (list, tuple)) and len(path) == 1:
        path = path[0]
    if not isinstance(path, str) or not path:
        raise ValueError(f"backbone {type(backbone).__name__} has pretrained_cfg[{key!r}] = {path!r}; MimoCNN needs "
                         f'the dotted path of exactly one module there')
    return path


def _get_module(backbone: nn.Module, path: str, key: str, expected: Union[type, Tuple[type, ...]]) -> nn.Module:
    try:
        module = backbone.get_submodule(path)
    except AttributeError as e:
        raise ValueError(f"pretrained_cfg[{key!r}] = {path!r} is not a submodule of {type(backbone).__name__}") from e
    if not isinstance(module, expected):
        names = ' or '.join(t.__name__ for t in (expected if isinstance(expected, tuple) else (expected,)))
        raise ValueError(f"pretrained_cfg[{key!r}] = {path!r} is a {type(module).__name__}, MimoCNN needs a "
                         f'{names} there')
    return module


def _set_module(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition('.')
    setattr(root.get_submodule(parent_path) if parent_path else root, name, module)


_WEIGHT_SOURCES = ('url', 'file', 'state_dict', 'hf_hub_id', 'hf_hub_filename', 'source', 'tag')


class MimoCNN(MimoContract, nn.Module):
    """A timm backbone turned into an M-member MIMO ensemble (M encoders, shared core, M heads).

    Args:
        backbone: timm model name (created with ``timm.create_model(backbone, **backbone_kwargs)``) or a timm model.
        num_members: M.
        method: Sets ``mix_cfg``: ``'mimo'``, ``'linear_mixmo'``, ``'cut_mixmo'`` or ``'cutmix_only_mixmo'``.
        mix_cfg: Overrides merged into the method's Mixer kwargs.
        loss_cfg: ``MimoLoss`` kwargs (default ``dict(root=3.0)``, thesis eq. 3.3).
        encoder_init: ``'independent'``, ``'same'``, ``'colinear'`` or ``'colinear_filter'`` (see
            :class:`MemberEncoders`); the heads are independent draws in every case (thesis Alg. A.7).
        inference: ``'sum'``: one pass on ``Σ_m c_m(x)`` (MIMO / MixMo); ``'separate'``: M passes, member m on
            ``M · c_m(x)`` (thesis Table 4.1).
        tied_encoder: One encoder for all inputs (MixMo arXiv:2103.06132 Table 3.4 of the thesis, "1 encoder").
            With ``head_assignment='input'`` the inputs are then exchangeable (same encoder, symmetric κ, random
            roles), which is the table's random input-to-head association (⊖).
        tied_heads: One dense head for all members ("1 classifier"): every member slot holds its logits, so the
            MixMo loss with ``root=1`` (the default ``loss_cfg`` then) is the cross-entropy on interpolated labels
            ``Σ_m κ_m y_m`` (times M).
        head_assignment: ``'input'``: head m predicts input m; ``'predominant'``: head 0 predicts the input with the
            largest κ, head 1 the next one, ... (Table 3.4's ⊗). Training only; inference averages all heads.
        pretrained_backbone: Load the backbone's timm checkpoint, then copy its stem into every encoder scaled by 1/M
            and its classifier into every head, so that at init the model computes exactly the backbone's logits.
        pretrained_cfg_overlay: Passed to the backbone's ``timm.create_model`` (e.g. ``dict(file=...)`` offline).
        cache_dir: Passed to the backbone's ``timm.create_model``.
        **backbone_kwargs: For ``timm.create_model`` of the backbone (``num_classes``, ``in_chans``, ``drop_rate``...).
    """
    METHOD_MIX_CFGS = METHOD_MIX_CFGS  # the methods this class implements (a subclass brings its own)

    def __init__(
            self,
            backbone: Union[str, nn.Module] = 'resnet18',
            num_members: int = 2,
            method: str = 'cut_mixmo',
            mix_cfg: Optional[Dict[str, Any]] = None,
            loss_cfg: Optional[Dict[str, Any]] = None,
            encoder_init: str = 'independent',
            inference: str = 'sum',
            tied_encoder: bool = False,
            tied_heads: bool = False,
            head_assignment: str = 'input',
            pretrained_backbone: bool = False,
            pretrained_cfg_overlay: Optional[Dict[str, Any]] = None,
            cache_dir: Optional[str] = None,
            **backbone_kwargs: Any,
    ):
        super().__init__()
        num_members = check_num_members(num_members)
        if method not in self.METHOD_MIX_CFGS:
            raise ValueError(f'method must be one of {tuple(self.METHOD_MIX_CFGS)}, got {method!r}')
        if inference not in INFERENCE_MODES:
            raise ValueError(f'inference must be one of {INFERENCE_MODES}, got {inference!r}')
        if head_assignment not in HEAD_ASSIGNMENTS:
            raise ValueError(f'head_assignment must be one of {HEAD_ASSIGNMENTS}, got {head_assignment!r}')
        if tied_heads and head_assignment != 'input':
            raise ValueError(f'head_assignment={head_assignment!r} needs one head per member; got tied_heads=True '
                             "(keep head_assignment='input' with a single head)")
        if isinstance(backbone, str):
            backbone = create_backbone(backbone, pretrained_backbone, pretrained_cfg_overlay, cache_dir,
                                       **backbone_kwargs)
        elif backbone_kwargs or pretrained_backbone:
            raise ValueError('backbone kwargs and pretrained_backbone need a backbone name, not a module')
        self.num_members = num_members
        self.method = method
        self.inference = inference
        self.head_assignment = head_assignment
        self.encoder_init = encoder_init
        self.mix_cfg = dict(self.METHOD_MIX_CFGS[method], **(mix_cfg or {}))
        if loss_cfg is None:
            # a single head trained with w = M κ (root 1) is the cross-entropy on interpolated labels
            loss_cfg = dict(MIXMO_LOSS_CFG, root=1.0) if tied_heads else MIXMO_LOSS_CFG
        self.loss_cfg = dict(loss_cfg)

        self.encoder_path = _module_path(backbone, 'first_conv')
        self.classifier_path = _module_path(backbone, 'classifier')
        conv = _get_module(backbone, self.encoder_path, 'first_conv', nn.Conv2d)
        classifier = _get_module(backbone, self.classifier_path, 'classifier', (nn.Linear, nn.Identity))
        _set_module(backbone, self.encoder_path, MemberEncoders(conv, num_members, encoder_init, pretrained_backbone,
                                                                tied=tied_encoder))
        if isinstance(classifier, nn.Identity):  # num_classes=0: no heads, the features are the output (timm's rule)
            num_features = getattr(backbone, 'head_hidden_size', backbone.num_features)
            heads = (SharedHead if tied_heads else MemberHeads)(
                num_features, 0, num_members, device=conv.weight.device, dtype=conv.weight.dtype)
        elif tied_heads:
            heads = SharedHead.from_linear(classifier, num_members)
        elif pretrained_backbone:
            heads = MemberHeads.from_linear(classifier, num_members)
        else:
            heads = _independent_heads(classifier, num_members)
        _set_module(backbone, self.classifier_path, heads)
        self.backbone = backbone
        self.backbone_name = backbone.pretrained_cfg.get('architecture')
        self.in_chans = conv.in_channels
        self.num_features = backbone.num_features
        self.head_hidden_size = getattr(backbone, 'head_hidden_size', self.num_features)
        self.pretrained_cfg = self.default_cfg = self._cfg_from_backbone(backbone)

    def _cfg_from_backbone(self, backbone: nn.Module) -> Dict[str, Any]:
        """The backbone's cfg (input size, mean/std...) with our module paths and without its weight sources."""
        cfg = {k: v for k, v in dict(backbone.pretrained_cfg).items() if k not in _WEIGHT_SOURCES}
        cfg.update(architecture=self.method, first_conv=f'backbone.{self.encoder_path}',
                   classifier=f'backbone.{self.classifier_path}', num_classes=self.num_classes)
        return cfg

    # --- timm model API ---------------------------------------------------------------------------------------------

    @property
    def encoders(self) -> MemberEncoders:
        """The M encoders ``c_m`` (in place of the backbone's stem conv)."""
        return self.backbone.get_submodule(self.encoder_path)

    @property
    def heads(self) -> MemberHeads:
        """The M heads ``d_m`` (in place of the backbone's classifier)."""
        return self.backbone.get_submodule(self.classifier_path)

    @property
    def num_classes(self) -> int:
        return self.heads.num_classes

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        matcher = getattr(self.backbone, 'group_matcher', None)
        if matcher is None:
            return dict(stem=r'^backbone\.' + self.encoder_path.replace('.', r'\.'), blocks=r'^backbone\.(\w+)')
        groups = matcher(coarse=coarse)
        return {k: _prefix_matcher(v) for k, v in groups.items()}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.set_grad_checkpointing(enable)

    @torch.jit.ignore
    def get_classifier(self) -> MemberHeads:
        return self.heads

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """New M heads with ``num_classes`` outputs (0: no heads, ``model(x)`` gives the pre-logits features);
        ``global_pool`` as the backbone takes it (``None`` keeps the current pooling, ``''`` none)."""
        dd = get_device_dtype(self)
        in_features = self.heads.in_features
        if global_pool is None:
            self.backbone.reset_classifier(num_classes)
        else:
            self.backbone.reset_classifier(num_classes, global_pool)
        new = self.backbone.get_submodule(self.classifier_path)
        if isinstance(new, nn.Linear):
            in_features = new.in_features
        head_cls = SharedHead if isinstance(self.heads, SharedHead) else MemberHeads  # a tied head stays tied
        heads = head_cls(in_features, num_classes, self.num_members, **dd)
        _set_module(self.backbone, self.classifier_path, heads.train(self.training))
        self.head_hidden_size = getattr(self.backbone, 'head_hidden_size', self.num_features)

    def mix_grid(self, img_size: Union[int, Tuple[int, int]]) -> Tuple[int, int]:
        """The encoder output grid for inputs of ``img_size`` (the stem conv's geometry)."""
        size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)[-2:]
        return self.encoders.output_size(size)

    def _run(self, x: torch.Tensor, call: _EncoderCall, fn: Any) -> torch.Tensor:
        with _encoder_call(self.encoders, call):
            out = fn(x)
        if call.mode != 'plain' and not call.consumed:
            raise RuntimeError(f"the backbone never ran its pretrained_cfg['first_conv'] ({self.encoder_path}); "
                               'the MIMO encoders were bypassed')
        return out

    def _separate_input(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B·M, C, H, W)``, every image repeated once per member (rows: sample, member)."""
        return x.unsqueeze(1).expand(-1, self.num_members, -1, -1, -1).reshape(-1, *x.shape[1:])

    def _member_diagonal(self, out: torch.Tensor) -> torch.Tensor:
        """``(B·M, M, ...)`` outputs of the separate passes -> ``(B, M, ...)``: pass m read through head m."""
        out = out.reshape(-1, self.num_members, *out.shape[1:])
        return torch.diagonal(out, dim1=1, dim2=2).movedim(-1, 1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features; with ``inference='separate'`` the M passes stacked as ``(B·M, ...)``."""
        check_image_batch(x)
        if self.inference == 'separate':
            return self._run(self._separate_input(x), _EncoderCall('separate'), self.backbone.forward_features)
        return self._run(x, _EncoderCall('plain'), self.backbone.forward_features)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """The ``(B, K)`` ensemble logits, or with ``pre_logits`` the pooled features ``(B, head_hidden_size)``.

        Decision: pre-logits are the MEAN of the member features (timm's DeiT averages its two tokens the same way),
        so ``head_hidden_size`` is the backbone's whatever M is. With ``inference='sum'`` all members read one feature
        vector, so the mean is that vector; with ``'separate'`` it averages the M passes.
        """
        pre_logits = pre_logits or self.num_classes == 0  # no heads: the features are the output, as in timm
        out = self.backbone.forward_head(x, pre_logits=pre_logits)
        if self.inference == 'separate':
            if pre_logits:
                return out.view(-1, self.num_members, *out.shape[1:]).mean(dim=1)
            return self._member_diagonal(out).mean(dim=1)
        return out if pre_logits else out.mean(dim=1)

    def forward_features_multi(self, xs: torch.Tensor) -> torch.Tensor:
        """Core features of M *different* inputs combined as at inference: ``C(Σ_m c_m(x_m))``.

        ``xs``: ``(B, M, C, H, W)``. Used by the feature-variance analysis (MixShare arXiv:2205.10139 App. D); no
        mask and no unmixing (the encoders get ``M · Σ_m (1/M) c_m(x_m)``).
        """
        if not isinstance(xs, torch.Tensor) or xs.ndim != 5 or xs.shape[1] != self.num_members:
            shape = tuple(xs.shape) if isinstance(xs, torch.Tensor) else type(xs).__name__
            raise ValueError(f'expected inputs of shape (B, M={self.num_members}, C, H, W), got {shape}')
        grid = MimoCNN.mix_grid(self, tuple(xs.shape[-2:]))
        masks = torch.full((xs.shape[0], self.num_members, *grid), 1.0 / self.num_members, device=xs.device)
        return self._run(self._packed(xs), _EncoderCall('mixed', masks=masks), self.backbone.forward_features)

    def forward_members(self, x: torch.Tensor) -> torch.Tensor:
        check_image_batch(x)
        if self.inference == 'separate':
            out = self._run(self._separate_input(x), _EncoderCall('separate'), self.backbone)
            return self._member_diagonal(self._check_member_logits(out, x.shape[0] * self.num_members))
        return self._check_member_logits(self._run(x, _EncoderCall('plain'), self.backbone), x.shape[0])

    def forward_mixed(self, xs: torch.Tensor, plan: MixPlan) -> torch.Tensor:
        batch_size = xs.shape[0]
        if self.head_assignment == 'input':
            out = self._run(self._packed(xs), self._mixed_call(plan, xs), self.backbone)
            return self._check_member_logits(out, batch_size)
        features = self._run(self._packed(xs), self._mixed_call(plan, xs), self.backbone.forward_features)
        pooled = self.backbone.forward_head(features, pre_logits=True)
        return self.member_logits(pooled.unsqueeze(1).expand(-1, self.num_members, -1), plan)

    @staticmethod
    def _packed(xs: torch.Tensor) -> torch.Tensor:
        """``(B, M, C, H, W)`` -> ``(B, M·C, H, W)``: a view of a contiguous batch."""
        return xs.reshape(xs.shape[0], -1, *xs.shape[-2:])

    def _mixed_call(self, plan: MixPlan, xs: torch.Tensor) -> _EncoderCall:
        """The encoders' call for the mixed batch ``xs``: the plan's masks on the encoder grid."""
        return _EncoderCall('mixed', masks=plan.masks.to(device=xs.device))

    def head_index(self, plan: MixPlan) -> Optional[torch.Tensor]:
        """``(B, M)`` index of the head that predicts input m (``None``: head m, the default assignment)."""
        if self.head_assignment == 'input':
            return None
        # 'predominant': the head of input m is the rank of κ_m, largest first (ties by input index)
        order = plan.kappas.argsort(dim=1, descending=True, stable=True)
        ranks = torch.empty_like(order).scatter_(1, order, torch.arange(self.num_members).expand_as(order).contiguous())
        return ranks

    def member_logits(self, features: torch.Tensor, plan: MixPlan) -> torch.Tensor:
        """``(B, M, F)`` pooled features of the M inputs -> ``(B, M, K)`` logits, input m read by its head."""
        head_index = self.head_index(plan)
        if head_index is None:
            return self.heads(features)
        heads = self.heads
        every_head = torch.einsum('bmf,hkf->bmhk', features, heads.weight)
        if heads.bias is not None:
            every_head = every_head + heads.bias
        every_head = heads.scaled(every_head)
        index = head_index.to(features.device)[:, :, None, None].expand(-1, -1, 1, every_head.shape[-1])
        return every_head.gather(2, index).squeeze(2)

    def _check_member_logits(self, out: torch.Tensor, batch_size: int) -> torch.Tensor:
        if out.ndim != 3 or out.shape[:2] != (batch_size, self.num_members):
            raise RuntimeError(f'the backbone returned {tuple(out.shape)}, expected member logits (B, M, K) = '
                               f'({batch_size}, {self.num_members}, K): its classifier must be its last op')
        return out


def _prefix_matcher(matcher: Any) -> Any:
    """A backbone's group_matcher entry re-rooted under ``backbone.``."""
    if isinstance(matcher, str):
        return r'^backbone\.' + matcher.removeprefix('^')
    return [(r'^backbone\.' + pattern.removeprefix('^'), *rest) for pattern, *rest in matcher]


def _independent_heads(classifier: nn.Linear, num_members: int) -> MemberHeads:
    """Heads for training from scratch: head 0 is the backbone's initial classifier, the others random permutations
    of it (the same init distribution as the backbone's own), whatever the encoders' init: thesis Alg. A.7 aligns
    only the encoders, the dense layers are "randomly initialized"."""
    heads = MemberHeads.from_linear(classifier, num_members)
    with torch.no_grad():
        for m in range(1, num_members):
            heads.weight[m].copy_(_permuted_like(classifier.weight))
            if heads.bias is not None:
                heads.bias[m].copy_(_permuted_like(classifier.bias))
    return heads


class SharedHead(MemberHeads):
    """One dense head whose logits fill all M member slots (the "1 classifier" rows of the thesis' Table 3.4).

    Stored as a one-member :class:`MemberHeads` (``weight: (1, K, F)``); ``(B, F)`` or ``(B, M, F)`` features give
    ``(B, M, K)``, every member slot read through the same weights.
    """

    def __init__(self, in_features: int, num_classes: int, num_members: int, bias: bool = True,
                 device: Any = None, dtype: Any = None):
        super().__init__(in_features, num_classes, 1, bias, device=device, dtype=dtype)
        self.num_outputs = num_members

    @classmethod
    def from_linear(cls, linear: nn.Linear, num_members: int) -> 'SharedHead':
        head = cls(linear.in_features, linear.out_features, num_members, bias=linear.bias is not None)
        with torch.no_grad():
            head.weight[0].copy_(linear.weight)
            if linear.bias is not None:
                head.bias[0].copy_(linear.bias)
        return head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 2:
            x = x.unsqueeze(1).expand(-1, self.num_outputs, -1)
        if x.ndim != 3 or x.shape[1] != self.num_outputs or x.shape[2] != self.in_features:
            raise ValueError(f'expected features of shape (B, {self.in_features}) or (B, M={self.num_outputs}, '
                             f'{self.in_features}), got {tuple(x.shape)}')
        if self.num_classes == 0:
            return x
        return self.scaled(F.linear(x, self.weight[0], None if self.bias is None else self.bias[0]))

    def extra_repr(self) -> str:
        return f'in_features={self.in_features}, num_classes={self.num_classes}, shared by {self.num_outputs} members'


def create_backbone(name: str, pretrained: bool = False, pretrained_cfg_overlay: Optional[Dict[str, Any]] = None,
                    cache_dir: Optional[str] = None, **kwargs: Any) -> nn.Module:
    """``timm.create_model`` with timm's own pretrained loading.

    ``pretrained=True`` on a backbone without weights is refused (timm would fall back to a random init), and a failed
    download says where the checkpoint lives and how to load it from a file
    (:func:`timm_mimo.pretrained.offline_message`).
    """
    cfg = None
    if pretrained:
        base, _, tag = name.partition('.')
        cfg = resolve_pretrained_cfg(base, pretrained_cfg=tag or None, pretrained_cfg_overlay=pretrained_cfg_overlay)
    call = f"timm.create_model(<mimo name>, backbone={name!r}, pretrained=True"
    with pretrained_weights(name, cfg, pretrained, create_call=call):
        return timm.create_model(name, pretrained=pretrained, pretrained_cfg_overlay=pretrained_cfg_overlay,
                                 cache_dir=cache_dir, **kwargs)


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: MimoCNN) -> Dict[str, torch.Tensor]:
    """Accept a saved MimoCNN state dict, or convert a checkpoint of its single-input backbone.

    A backbone checkpoint (keys without the ``backbone.`` prefix) becomes the MIMO model that computes the same logits:
    the stem copied into every encoder scaled by 1/M, the classifier into every head. Anything else raises a
    ``ValueError`` listing the keys or shapes that do not fit.
    """
    for key in ('state_dict', 'model'):
        if key in state_dict and isinstance(state_dict[key], dict):
            state_dict = state_dict[key]
    state_dict = {k.removeprefix('module.'): v for k, v in state_dict.items()}
    if not any(k.startswith('backbone.') for k in state_dict):
        state_dict = _backbone_to_mimo(state_dict, model)
    for name, buffer in model.named_buffers():  # heads' temperature: absent from backbone and older checkpoints
        if name.endswith('.temperature') and name not in state_dict:
            state_dict[name] = buffer.detach().clone()
    _check_matches(state_dict, model)
    return state_dict


def _backbone_to_mimo(state_dict: Dict[str, torch.Tensor], model: MimoCNN) -> Dict[str, torch.Tensor]:
    num_members = model.num_members
    out = {f'backbone.{k}': v for k, v in state_dict.items()}
    for suffix in ('weight', 'bias'):
        key = f'backbone.{model.encoder_path}.{suffix}'
        if key in out:  # MixMo arXiv:2103.06132 Sec. 3: Σ_m c_m = c when every c_m = c / M
            copies = 1 if model.encoders.tied else num_members
            out[key] = out[key].repeat(copies, *([1] * (out[key].ndim - 1))) / num_members
        key = f'backbone.{model.classifier_path}.{suffix}'
        if key in out:
            out[key] = out[key].unsqueeze(0).repeat(model.heads.weight.shape[0], *([1] * out[key].ndim))
    return out


def _check_matches(state_dict: Dict[str, torch.Tensor], model: MimoCNN) -> None:
    expected = model.state_dict()
    adapted = {f'backbone.{model.encoder_path}.weight', f'backbone.{model.classifier_path}.weight',
               f'backbone.{model.classifier_path}.bias'}  # in_chans / num_classes adapted later by timm
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = sorted(f'{k}: {tuple(v.shape)} vs {tuple(expected[k].shape)}' for k, v in state_dict.items()
                   if k in expected and k not in adapted and v.shape != expected[k].shape)
    if missing or unexpected or wrong:
        arch = model.pretrained_cfg.get('architecture', type(model).__name__)
        raise ValueError(
            f'checkpoint does not fit {arch} (M={model.num_members}, backbone '
            f"{model.backbone_name}): {len(missing)} missing keys {missing[:3]}, "
            f'{len(unexpected)} unexpected keys {unexpected[:3]}, {len(wrong)} shape mismatches {wrong[:3]}')


_FEATURES_ONLY_WAY_OUT = ('the shared core sees the mixed inputs',
                          "forward_features (the core's last feature map) / forward_head(pre_logits=True)")


def _create_mimo_cnn(variant: str, pretrained: bool = False, model_cls: Optional[type] = None,
                     **kwargs: Any) -> MimoCNN:
    """A registered paper model: ``pretrained=True`` loads a MIMO (or single-input backbone) checkpoint; a name
    without published weights refuses it (unless ``pretrained_cfg_overlay`` gives a file)."""
    refuse_features_only(variant, kwargs, *_FEATURES_ONLY_WAY_OUT)
    cfg = resolve_pretrained_cfg(variant, kwargs.get('pretrained_cfg'), kwargs.get('pretrained_cfg_overlay'))
    with pretrained_weights(variant, cfg, pretrained):
        return build_model_with_cfg(model_cls or MimoCNN, variant, pretrained,
                                    pretrained_filter_fn=checkpoint_filter_fn, **kwargs)


def _create_generic(method: str, pretrained: bool, kwargs: Dict[str, Any], model_cls: Optional[type] = None) -> MimoCNN:
    """A generic MIMO model around any timm backbone.

    ``pretrained=True`` alone loads the backbone's timm checkpoint (``pretrained_cfg_overlay`` goes to the backbone).
    With a ``pretrained_cfg`` (what timm passes for ``hf-hub:`` / ``local-dir:`` sources, i.e. a saved MIMO model),
    the weights are this MIMO model's own, loaded through timm's ``load_pretrained`` and :func:`checkpoint_filter_fn`.
    """
    model_cls = model_cls or MimoCNN
    refuse_features_only(method, kwargs, *_FEATURES_ONLY_WAY_OUT)
    pretrained_cfg = kwargs.pop('pretrained_cfg', None)
    if pretrained_cfg is None:
        return model_cls(method=method, pretrained_backbone=pretrained, **kwargs)
    overlay, cache_dir = kwargs.pop('pretrained_cfg_overlay', None), kwargs.pop('cache_dir', None)
    model = model_cls(method=method, **kwargs)
    cfg = resolve_pretrained_cfg(method, pretrained_cfg=pretrained_cfg, pretrained_cfg_overlay=overlay).to_dict()
    model.pretrained_cfg = model.default_cfg = dict(model.pretrained_cfg, **{k: v for k, v in cfg.items()
                                                                            if v is not None})
    if pretrained:
        with pretrained_weights(method, cfg):
            load_pretrained(model, cfg, num_classes=model.num_classes, in_chans=model.in_chans,
                            filter_fn=checkpoint_filter_fn, cache_dir=cache_dir)
    return model


# --------------------------------------------------------------------------------------------------------------------
# Pretrained cfgs and entrypoints
# --------------------------------------------------------------------------------------------------------------------

def _generic_cfg(**kwargs: Any) -> Dict[str, Any]:
    """Cfg of a generic name: its default backbone's (resnet18); an instance takes its own backbone's cfg.

    No weight source: ``pretrained=True`` on a generic name loads the backbone's timm checkpoint instead.
    """
    return {
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7), 'crop_pct': 0.875,
        'interpolation': 'bilinear', 'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'backbone.conv1', 'classifier': 'backbone.fc', 'license': 'apache-2.0', **_paper_ids(), **kwargs,
    }


def _paper_ids() -> Dict[str, str]:
    return dict(paper_ids='arXiv:2103.06132',
                paper_name='MixMo: Mixing Multiple Inputs for Multiple Outputs via Deep Subnetworks')


def _wrn_cfg(**kwargs: Any) -> Dict[str, Any]:
    """CIFAR-100 WRN-28-w (no published MIMO weights: no weight source, nothing in ``timm.list_pretrained()``)."""
    return {
        'num_classes': 100, 'input_size': (3, 32, 32), 'pool_size': (8, 8),
        'crop_pct': 1.0, 'interpolation': 'bilinear', 'mean': CIFAR100_MEAN, 'std': CIFAR100_STD,
        'first_conv': 'backbone.conv_stem', 'classifier': 'backbone.fc', 'license': 'apache-2.0', **_paper_ids(),
        **kwargs,
    }


def _preact_cfg(**kwargs: Any) -> Dict[str, Any]:
    """Tiny ImageNet PreActResNet-18-w (no published MIMO weights: no weight source)."""
    return {
        'num_classes': 200, 'input_size': (3, 64, 64), 'pool_size': (4, 4),
        'crop_pct': 1.0, 'interpolation': 'bilinear', 'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'backbone.conv_stem', 'classifier': 'backbone.fc', 'license': 'apache-2.0', **_paper_ids(),
        **kwargs,
    }


PAPER_METHODS = ('mimo', 'linear_mixmo', 'cut_mixmo')
PAPER_WRN_WIDTHS = (2, 3, 4, 5, 7, 10, 14)

default_cfgs = generate_default_cfgs({
    **{method: _generic_cfg() for method in PAPER_METHODS},
    **{f'{method}_wrn28_{w}': _wrn_cfg() for method in PAPER_METHODS for w in PAPER_WRN_WIDTHS},
    **{f'{method}_{preact_name(w)}': _preact_cfg() for method in PAPER_METHODS for w in PREACT_WIDTHS},
})


@register_model
def mimo(pretrained: bool = False, **kwargs: Any) -> MimoCNN:
    """MIMO (Havasi et al., arXiv:2010.06610) on any timm CNN (default resnet18):
    ``timm.create_model('mimo', backbone='resnet50')``."""
    kwargs.setdefault('backbone', GENERIC_BACKBONE)
    return _create_generic('mimo', pretrained, kwargs)


@register_model
def linear_mixmo(pretrained: bool = False, **kwargs: Any) -> MimoCNN:
    """Linear-MixMo (arXiv:2103.06132) on any timm CNN (default resnet18):
    ``timm.create_model('linear_mixmo', backbone='resnet50')``."""
    kwargs.setdefault('backbone', GENERIC_BACKBONE)
    return _create_generic('linear_mixmo', pretrained, kwargs)


@register_model
def cut_mixmo(pretrained: bool = False, **kwargs: Any) -> MimoCNN:
    """Cut-MixMo (arXiv:2103.06132) on any timm CNN (default resnet18):
    ``timm.create_model('cut_mixmo', backbone='resnet50', num_members=3)``."""
    kwargs.setdefault('backbone', GENERIC_BACKBONE)
    return _create_generic('cut_mixmo', pretrained, kwargs)


def _paper_model(method: str, backbone: str, pretrained: bool, kwargs: Dict[str, Any]) -> MimoCNN:
    return _create_mimo_cnn(f'{method}_{backbone}', pretrained, **dict(dict(backbone=backbone, method=method),
                                                                       **kwargs))


@register_model
def mimo_wrn28_2(pretrained: bool = False, **kwargs: Any) -> MimoCNN:
    """MIMO on WRN-28-2 (CIFAR)."""
    return _paper_model('mimo', 'wrn28_2', pretrained, kwargs)


@register_model
def mimo_wrn28_3(pretrained: bool = False, **kwargs: Any) -> MimoCNN:
    """MIMO on WRN-28-3 (CIFAR)."""
    return _paper_model('mimo', 'wrn28_3', pretrained, kwargs)


@register_model
def mimo_wrn28_4(pretrained: bool = False, **kwargs: Any) -> MimoCNN:
    """MIMO on WRN-28-4 (CIFAR)."""
    return _paper_model('mimo', 'wrn28_4', pretrained, kwargs)


@register_model
def mimo_wrn28_5(pretrained: bool = False, **kwargs: Any) -> MimoCNN:
    """MIMO on WRN-28-5 (CIFAR)."""
    return _paper_model('mimo', 'wrn28_5', pretrained, kwargs)


@register_model
def mimo_wrn28_7(pretrained: bool = False, **kwargs: Any) -> MimoCNN:
    """MIMO on WRN-28-7 (CIFAR)."""
    return _paper_model('mimo', 'wrn28_7', pretrained, kwargs)


@register_model
def mimo_wrn28_10(pretrained: bool = False, **kwargs: Any) -> MimoCNN:
    """MIMO on WRN-28-10 (CIFAR)."""
    return _paper_model('mimo', 'wrn28_10', pretrained, kwargs)


@register_model
def mimo_wrn28_14(pretrained: bool = False, **kwargs: Any) -> MimoCNN:
    """MIMO on WRN-28-14 (CIFAR)."""
    return _paper_model('mimo', 'wrn28_14', pretrained, kwargs)


@register_model
def linear_mixmo_wrn28_2(pretrained: bool = False, **kwargs: Any) -> MimoCNN:
    """Linear-MixMo on WRN-28-2 (CIFAR)."""
    return _paper_model('linear_mixmo', 'wrn28_2', pretrained, kwargs)


@register_model
def linear_mixmo_wrn28_3(pretrained: bool = False, **kwargs: Any) -> MimoCNN:
    """Linear-MixMo on WRN-28-3 (CIFAR)."""
    return _paper_model('linear_mixmo', 'wrn28_3', pretrained, kwargs)


@register_model
def linear_mixmo_wrn28_4(pretrained: bool = False, **kwargs: Any) -> MimoCNN:
    """Linear-MixMo on WRN-28-4 (CIFAR)."""
    return _paper_model('linear_mixmo', 'wrn28_4', pretrained, kwargs)


@register_model
def linear_mixmo_wrn28_5(pretrained: bool = False, **kwargs: Any) -> MimoCNN:
    """Linear-MixMo on WRN-28-5 (CIFAR)."""
    return _paper_model('linear_mixmo', 'wrn28_5', pretrained, kwargs)


@register_model
def linear_mixmo_wrn28_7(pretrained: bool = False, **kwargs: Any) -> MimoCNN:
    """Linear-MixMo on WRN-28-7 (CIFAR)."""
    return _paper_model('linear_mixmo', 'wrn28_7', pretrained, kwargs)


@register_model
def linear_mixmo_wrn28_10(pretrained: bool = False, **kwargs: Any) -> MimoCNN:
    """Linear-MixMo on WRN-28-10 (CIFAR)."""
    return _paper_model('linear_mixmo', 'wrn28_10', pretrained, kwargs)


@register_model
def linear_mixmo_wrn28_14(pretrained: bool = False, **kwargs: Any) -> MimoCNN:
    """Linear-MixMo on WRN-28-14 (CIFAR)."""
    return _paper_model('linear_mixmo', 'wrn28_14', pretrained, kwargs)


@register_model
def cut_mixmo_wrn28_2(pretrained: bool = False, **kwargs: Any) -> MimoCNN:
    """Cut-MixMo on WRN-28-2 (CIFAR)."""
    return _paper_model('cut_mixmo', 'wrn28_2', pretrained, kwargs)


@register_model
def cut_mixmo_wrn28_3(pretrained: bool = False, **kwargs: Any) -> MimoCNN:
    """Cut-MixMo on WRN-28-3 (CIFAR)."""
    return _paper_model('cut_mixmo', 'wrn28_3', pretrained, kwargs)


@register_model
def cut_mixmo_wrn28_4(pretrained: bool = False, **kwargs: Any) -> MimoCNN:
    """Cut-MixMo on WRN-28-4 (CIFAR)."""
    return _paper_model('cut_mixmo', 'wrn28_4', pretrained, kwargs)


@register_model
def cut_mixmo_wrn28_5(pretrained: bool = False, **kwargs: Any) -> MimoCNN:
    """Cut-MixMo on WRN-28-5 (CIFAR)."""
    return _paper_model('cut_mixmo', 'wrn28_5', pretrained, kwargs)


@register_model
def cut_mixmo_wrn28_7(pretrained: bool = False, **kwargs: Any) -> MimoCNN:
    """Cut-MixMo on WRN-28-7 (CIFAR)."""
    return _paper_model('cut_mixmo', 'wrn28_7', pretrained, kwargs)


@register_model
def cut_mixmo_wrn28_10(pretrained: bool = False, **kwargs: Any) -> MimoCNN:
    """Cut-MixMo on WRN-28-10 (CIFAR)."""
    return _paper_model('cut_mixmo', 'wrn28_10', pretrained, kwargs)


@register_model
def cut_mixmo_wrn28_14(pretrained: bool = False, **kwargs: Any) -> MimoCNN:
    """Cut-MixMo on WRN-28-14 (CIFAR)."""
    return _paper_model('cut_mixmo', 'wrn28_14', pretrained, kwargs)


@register_model
def mimo_preact_resnet18(pretrained: bool = False, **kwargs: Any) -> MimoCNN:
    """MIMO on PreActResNet-18 (Tiny ImageNet)."""
    return _paper_model('mimo', 'preact_resnet18', pretrained, kwargs)


@register_model
def mimo_preact_resnet18_2(pretrained: bool = False, **kwargs: Any) -> MimoCNN:
    """MIMO on PreActResNet-18-2 (Tiny ImageNet)."""
    return _paper_model('mimo', 'preact_resnet18_2', pretrained, kwargs)


@register_model
def mimo_preact_resnet18_3(pretrained: bool = False, **kwargs: Any) -> MimoCNN:
    """MIMO on PreActResNet-18-3 (Tiny ImageNet)."""
    return _paper_model('mimo', 'preact_resnet18_3', pretrained, kwargs)


@register_model
def linear_mixmo_preact_resnet18(pretrained: bool = False, **kwargs: Any) -> MimoCNN:
    """Linear-MixMo on PreActResNet-18 (Tiny ImageNet)."""
    return _paper_model('linear_mixmo', 'preact_resnet18', pretrained, kwargs)


@register_model
def linear_mixmo_preact_resnet18_2(pretrained: bool = False, **kwargs: Any) -> MimoCNN:
    """Linear-MixMo on PreActResNet-18-2 (Tiny ImageNet)."""
    return _paper_model('linear_mixmo', 'preact_resnet18_2', pretrained, kwargs)


@register_model
def linear_mixmo_preact_resnet18_3(pretrained: bool = False, **kwargs: Any) -> MimoCNN:
    """Linear-MixMo on PreActResNet-18-3 (Tiny ImageNet)."""
    return _paper_model('linear_mixmo', 'preact_resnet18_3', pretrained, kwargs)


@register_model
def cut_mixmo_preact_resnet18(pretrained: bool = False, **kwargs: Any) -> MimoCNN:
    """Cut-MixMo on PreActResNet-18 (Tiny ImageNet)."""
    return _paper_model('cut_mixmo', 'preact_resnet18', pretrained, kwargs)


@register_model
def cut_mixmo_preact_resnet18_2(pretrained: bool = False, **kwargs: Any) -> MimoCNN:
    """Cut-MixMo on PreActResNet-18-2 (Tiny ImageNet)."""
    return _paper_model('cut_mixmo', 'preact_resnet18_2', pretrained, kwargs)


@register_model
def cut_mixmo_preact_resnet18_3(pretrained: bool = False, **kwargs: Any) -> MimoCNN:
    """Cut-MixMo on PreActResNet-18-3 (Tiny ImageNet)."""
    return _paper_model('cut_mixmo', 'preact_resnet18_3', pretrained, kwargs)
