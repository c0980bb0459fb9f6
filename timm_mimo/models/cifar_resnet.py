"""The MixMo papers' CIFAR-style CNNs as ordinary single-input timm models (MixMo arXiv:2103.06132 Sec. 4; thesis
(HAL tel-03952815) Sec. 3.3 and App. A.1.3).

* WRN-28-w (Zagoruyko & Komodakis): pre-activation wide basic blocks, stem conv3x3 with 16 filters, three groups of
  ``(depth - 4) / 6`` blocks at widths 16w / 32w / 64w (the first block of groups 2 and 3 strided), final BN-ReLU,
  global pooling, linear classifier. Registered ``wrn28_{2,3,4,5,7,10,14}``; ``depth`` / ``widen_factor`` kwargs give
  any WRN-d-w (e.g. ``timm.create_model('wrn28_2', depth=10, widen_factor=1)`` is a tiny WRN-10-1).
* PreActResNet-18-w (He et al., the Tiny ImageNet protocol of Puzzle-Mix used by MixMo): stem conv3x3 with 64 filters
  (not widened), four stages of two pre-activation basic blocks at widths 64w / 128w / 256w / 512w, strides 1/2/2/2,
  final BN-ReLU, global pooling, linear classifier. Registered ``preact_resnet18``, ``preact_resnet18_2``,
  ``preact_resnet18_3``.

Both use a 1x1 projection shortcut (on the pre-activated input) only where the shape changes. No conv has a bias.
Decisions (the papers are silent on these details):

* Strided 3x3 convs use symmetric padding 1 (timm's convention), not the official code's TF-"SAME" right/bottom
  padding: output sizes and parameter counts are identical, only the sampling phase differs.
* PreActResNet stem stride is 2 by default (``stem_stride``): the official MixMo code and Puzzle-Mix's Tiny ImageNet
  models use a stride-2 stem at 64 px, so the MixMo mixing space is 64x32x32. Stride does not change the counts.
* ``drop_rate`` is timm's classifier dropout (before the fc), not WRN's in-block dropout (the papers use none).

Parameter counts against the papers (thesis Table A.17 for 100 classes, Table 3.5 for 200 classes) are checked in
``tests/test_cifar_resnet.py``.
"""
from typing import Any, Dict, List, Optional, Tuple, Type

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import create_classifier, get_device_dtype
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model

__all__ = ['CifarResNet', 'WideBasicBlock', 'PreActBasicBlock']

# CIFAR-100 train-set statistics; Tiny ImageNet uses the ImageNet statistics (as in Puzzle-Mix / the MixMo code).
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


def conv3x3(in_chs: int, out_chs: int, stride: int = 1, **dd: Any) -> nn.Conv2d:
    """3x3 convolution, padding 1, no bias (``dd``: ``device`` / ``dtype``)."""
    return nn.Conv2d(in_chs, out_chs, kernel_size=3, stride=stride, padding=1, bias=False, **dd)


class PreActBasicBlock(nn.Module):
    """Pre-activation basic block: BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus a shortcut.

    The shortcut is the identity when shapes match, else a 1x1 strided conv applied to the pre-activated input (so the
    first BN-ReLU is shared by both branches, as in the pre-activation ResNet and WRN papers).
    A WRN "wide basic" block is this block with wider channels, hence :class:`WideBasicBlock` is an alias.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, device: Any = None, dtype: Any = None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.bn1 = nn.BatchNorm2d(in_chs, **dd)
        self.act1 = nn.ReLU(inplace=True)
        self.conv1 = conv3x3(in_chs, out_chs, stride, **dd)
        self.bn2 = nn.BatchNorm2d(out_chs, **dd)
        self.act2 = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(out_chs, out_chs, **dd)
        self.shortcut: Optional[nn.Conv2d] = None
        if stride != 1 or in_chs != out_chs:
            self.shortcut = nn.Conv2d(in_chs, out_chs, kernel_size=1, stride=stride, bias=False, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.act1(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = self.conv2(self.act2(self.bn2(out)))
        return out + shortcut


WideBasicBlock = PreActBasicBlock


def make_stage(block: Type[nn.Module], in_chs: int, out_chs: int, num_blocks: int, stride: int,
               **dd: Any) -> nn.Sequential:
    """``num_blocks`` blocks, the first one strided and changing the width."""
    blocks = [block(in_chs if i == 0 else out_chs, out_chs, stride if i == 0 else 1, **dd) for i in range(num_blocks)]
    return nn.Sequential(*blocks)


class CifarResNet(nn.Module):
    """Pre-activation ResNet for small images: WRN-d-w (``arch='wrn'``) or PreActResNet-18-w (``arch='preact18'``).

    Args:
        arch: ``'wrn'`` or ``'preact18'``.
        depth: WRN depth d, with ``(d - 4) % 6 == 0`` (ignored for ``'preact18'``).
        widen_factor: Width multiplier w.
        num_classes: Classifier outputs (0: no classifier, ``forward`` returns pooled features).
        in_chans: Input channels.
        stem_stride: Stride of the stem conv (default 1 for WRN, 2 for PreActResNet, see module docstring).
        drop_rate: Dropout before the classifier.
        global_pool: timm pooling type (``'avg'``, ``'max'``, ``'avgmax'``, ``''`` for none).
        device: Device of the parameters (timm's factory passes it, e.g. ``'meta'``).
        dtype: Dtype of the parameters.
    """

    def __init__(
            self,
            arch: str = 'wrn',
            depth: int = 28,
            widen_factor: int = 10,
            num_classes: int = 100,
            in_chans: int = 3,
            stem_stride: Optional[int] = None,
            drop_rate: float = 0.0,
            global_pool: str = 'avg',
            device: Any = None,
            dtype: Any = None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if arch == 'wrn':
            if depth < 4 or (depth - 4) % 6:
                raise ValueError(f'WRN depth must be 6n + 4 (e.g. 10, 16, 28), got {depth}')
            stem_chs = 16
            widths = [16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
            blocks_per_stage = [(depth - 4) // 6] * 3
            strides = [1, 2, 2]
            stem_stride = 1 if stem_stride is None else stem_stride
        elif arch == 'preact18':
            stem_chs = 64
            widths = [64 * widen_factor, 128 * widen_factor, 256 * widen_factor, 512 * widen_factor]
            blocks_per_stage = [2, 2, 2, 2]
            strides = [1, 2, 2, 2]
            stem_stride = 2 if stem_stride is None else stem_stride
        else:
            raise ValueError(f"arch must be 'wrn' or 'preact18', got {arch!r}")
        self.arch = arch
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False

        self.conv_stem = nn.Conv2d(in_chans, stem_chs, kernel_size=3, stride=stem_stride, padding=1, bias=False, **dd)
        stages: List[nn.Module] = []
        self.feature_info: List[Dict[str, Any]] = [dict(num_chs=stem_chs, reduction=stem_stride, module='conv_stem')]
        in_chs, reduction = stem_chs, stem_stride
        for i, (width, num_blocks, stride) in enumerate(zip(widths, blocks_per_stage, strides)):
            stages.append(make_stage(PreActBasicBlock, in_chs, width, num_blocks, stride, **dd))
            in_chs, reduction = width, reduction * stride
            self.feature_info.append(dict(num_chs=width, reduction=reduction, module=f'stages.{i}'))
        self.stages = nn.Sequential(*stages)
        # pre-activation nets end with the BN-ReLU that the last block did not apply
        self.norm = nn.BatchNorm2d(in_chs, **dd)
        self.act = nn.ReLU(inplace=True)
        self.num_features = self.head_hidden_size = in_chs
        self.global_pool, self.head_drop, self.fc = self._make_head(num_classes, global_pool, **dd)
        self.init_weights()

    def _make_head(self, num_classes: int, global_pool: str, **dd: Any) -> Tuple[nn.Module, nn.Module, nn.Module]:
        global_pool_module, fc = create_classifier(self.num_features, num_classes, pool_type=global_pool, **dd)
        self.head_hidden_size = self.num_features * global_pool_module.feat_mult()
        return global_pool_module, nn.Dropout(self.drop_rate), fc

    def init_weights(self) -> None:
        """He-normal (fan-in) convs, BN γ=1 β=0, zero classifier bias.

        Decision: the official MixMo code's init (papers silent on the init).
        """
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode='fan_in', nonlinearity='relu')
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r'^conv_stem', blocks=r'^stages\.(\d+)' if coarse else r'^stages\.(\d+)\.(\d+)')

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        pool_type = self.global_pool.pool_type if global_pool is None else global_pool
        self.global_pool, self.head_drop, self.fc = self._make_head(num_classes, pool_type, **get_device_dtype(self))
        for module in (self.global_pool, self.head_drop, self.fc):
            module.train(self.training)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_stem(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.stages, x)
        else:
            x = self.stages(x)
        return self.act(self.norm(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.global_pool(x))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: CifarResNet) -> Dict[str, torch.Tensor]:
    """Accept timm-style checkpoints saved by ``CheckpointSaver`` (``state_dict`` / ``model`` / ``module.`` wraps)."""
    for key in ('state_dict', 'model'):
        if key in state_dict and isinstance(state_dict[key], dict):
            state_dict = state_dict[key]
    return {k.removeprefix('module.'): v for k, v in state_dict.items()}


def _create_cifar_resnet(variant: str, pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    return build_model_with_cfg(
        CifarResNet,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(flatten_sequential=True, out_indices=(0, 1, 2, 3)),
        **kwargs,
    )


def _wrn_cfg(url: str = '', **kwargs: Any) -> Dict[str, Any]:
    return {
        'url': url, 'num_classes': 100, 'input_size': (3, 32, 32), 'pool_size': (8, 8), 'crop_pct': 1.0,
        'interpolation': 'bilinear', 'mean': CIFAR100_MEAN, 'std': CIFAR100_STD,
        'first_conv': 'conv_stem', 'classifier': 'fc', 'license': 'mit',
        'paper_ids': 'arXiv:1605.07146', 'paper_name': 'Wide Residual Networks', **kwargs,
    }


def _preact_cfg(url: str = '', **kwargs: Any) -> Dict[str, Any]:
    return {
        'url': url, 'num_classes': 200, 'input_size': (3, 64, 64), 'pool_size': (4, 4), 'crop_pct': 1.0,
        'interpolation': 'bilinear', 'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'conv_stem', 'classifier': 'fc', 'license': 'mit',
        'paper_ids': 'arXiv:1603.05027', 'paper_name': 'Identity Mappings in Deep Residual Networks', **kwargs,
    }


WRN_WIDTHS = (2, 3, 4, 5, 7, 10, 14)
PREACT_WIDTHS = (1, 2, 3)


def preact_name(width: int) -> str:
    """Registered name of PreActResNet-18-w."""
    return 'preact_resnet18' if width == 1 else f'preact_resnet18_{width}'


default_cfgs = generate_default_cfgs({
    **{f'wrn28_{w}': _wrn_cfg() for w in WRN_WIDTHS},
    **{preact_name(w): _preact_cfg() for w in PREACT_WIDTHS},
})


def _wrn(variant: str, widen_factor: int, pretrained: bool, kwargs: Dict[str, Any]) -> CifarResNet:
    model_args = dict(arch='wrn', depth=28, widen_factor=widen_factor)
    return _create_cifar_resnet(variant, pretrained, **dict(model_args, **kwargs))


def _preact(variant: str, widen_factor: int, pretrained: bool, kwargs: Dict[str, Any]) -> CifarResNet:
    model_args = dict(arch='preact18', widen_factor=widen_factor)
    return _create_cifar_resnet(variant, pretrained, **dict(model_args, **kwargs))


@register_model
def wrn28_2(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """WRN-28-2 (CIFAR, 32 px)."""
    return _wrn('wrn28_2', 2, pretrained, kwargs)


@register_model
def wrn28_3(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """WRN-28-3 (CIFAR, 32 px)."""
    return _wrn('wrn28_3', 3, pretrained, kwargs)


@register_model
def wrn28_4(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """WRN-28-4 (CIFAR, 32 px)."""
    return _wrn('wrn28_4', 4, pretrained, kwargs)


@register_model
def wrn28_5(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """WRN-28-5 (CIFAR, 32 px)."""
    return _wrn('wrn28_5', 5, pretrained, kwargs)


@register_model
def wrn28_7(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """WRN-28-7 (CIFAR, 32 px)."""
    return _wrn('wrn28_7', 7, pretrained, kwargs)


@register_model
def wrn28_10(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """WRN-28-10 (CIFAR, 32 px)."""
    return _wrn('wrn28_10', 10, pretrained, kwargs)


@register_model
def wrn28_14(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """WRN-28-14 (CIFAR, 32 px)."""
    return _wrn('wrn28_14', 14, pretrained, kwargs)


@register_model
def preact_resnet18(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """PreActResNet-18 (Tiny ImageNet, 64 px, stride-2 stem)."""
    return _preact('preact_resnet18', 1, pretrained, kwargs)


@register_model
def preact_resnet18_2(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """PreActResNet-18-2 (Tiny ImageNet, 64 px, stride-2 stem)."""
    return _preact('preact_resnet18_2', 2, pretrained, kwargs)


@register_model
def preact_resnet18_3(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """PreActResNet-18-3 (Tiny ImageNet, 64 px, stride-2 stem)."""
    return _preact('preact_resnet18_3', 3, pretrained, kwargs)

