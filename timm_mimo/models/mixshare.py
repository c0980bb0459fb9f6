"""MixShare on any timm CNN: MIMO subnetworks that share features (Sun et al., CVPR-W 2022, arXiv:2205.10139).

:class:`MixShareCNN` is a Cut-MixMo :class:`~timm_mimo.models.mimo_cnn.MimoCNN` (M encoders, shared core, M heads)
that *unmixes* at training time: the plan's binary masks, which decided which input owns each position of the mixed
encoding, are applied again to the last feature map before pooling, so that head m pools only the features of input
m (thesis, HAL tel-03952815, Alg. A.7):

    f'_m = GAP(mask_m ⊙ C(l)),  ŷ_m = d_m(f'_m)

and the encoders start aligned (identical, or co-linear). Variants (MixShare Sec. 3.3, thesis Table 3.6):

* ``unmixing='full'``: every channel unmixed during the whole training;
* ``unmixing='partial'``: only a fixed share of the channels (``unmix_share``, 25 % by default) is unmixed, the
  other channels are pooled whole for every head;
* ``unmixing='fadeout'``: the mask ``mask + r (1 - mask)`` with ``r = min(1, epoch / fadeout_epochs)`` (100 by
  default): full unmixing at the start, none from ``fadeout_epochs`` on. The Mixer computes r from the fractional
  epoch and hands it over in ``MixPlan.unmix_relax``;
* ``unmixing='none'``: no unmixing (MixMo with MixShare's other settings).

MixShare's training adjustments (MixShare App. B) are the model's ``mix_cfg`` / ``loss_cfg`` defaults: always cut
(``prob=1``, no decay), input repetition ρ = 0.1, no loss rebalancing (``root=1``). Inference is MixMo's: the sum of
the encodings, one pass, no unmixing (no mask exists), the heads averaged; so it costs exactly what MixMo costs.

Decisions (papers silent):

* Mask resolution: the Mixer draws the masks on the *final feature grid* (``mix_grid`` returns it, e.g. 8x8 for a
  WRN at 32 px) and the encoders receive them nearest-upsampled to their own grid (32x32), so a position belongs to
  one input at both scales and κ is the same at both. Where the encoder grid is not a whole multiple of the feature
  grid, nearest upsampling still assigns every encoder cell to one feature cell; κ is measured on the feature grid.
* Pooling: ``unmix_pool='mean'`` is the papers' literal ``GAP(mask ⊙ f)`` (the mean over the whole map, so the
  pooled feature scales with the mask area); ``'masked_mean'`` divides by the mask area instead (for timm's average
  pooling this is exactly the mean over the masked positions).
* Partial unmixing takes the first ``ceil(share · C)`` channels (the papers: "a fixed subset").
"""
import math
from typing import Any, Dict, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import generate_default_cfgs, register_model

from timm_mimo.mixing import MixPlan
from timm_mimo.models.cifar_resnet import CIFAR100_MEAN, CIFAR100_STD
from timm_mimo.models.mimo_cnn import (
    GENERIC_BACKBONE,
    MIXMO_LOSS_CFG,
    MimoCNN,
    _create_generic,
    _create_mimo_cnn,
    _EncoderCall,
    _generic_cfg,
)

__all__ = ['MixShareCNN', 'MIXSHARE_MIX_CFG', 'MIXSHARE_LOSS_CFG', 'UNMIXINGS', 'unmix_features', 'unmix_channels']

# MixShare App. B: always CutMix (Alg. A.7 has no linear branch), 10 % input repetition; α = 2 as MixMo
MIXSHARE_MIX_CFG: Dict[str, Any] = dict(kind='cutmix', alpha=2.0, prob=1.0, prob_decay=False, input_repeat=0.1)
# MixShare App. B: "keep the original mixing ratios", i.e. w = 2κ (root r = 1)
MIXSHARE_LOSS_CFG: Dict[str, Any] = dict(MIXMO_LOSS_CFG, root=1.0)
UNMIXINGS = ('full', 'partial', 'fadeout', 'none')
UNMIX_POOLS = ('mean', 'masked_mean')
DEFAULT_UNMIX_SHARE = 0.25  # MixShare Sec. 3.3: "a fixed subset of the final feature maps (e.g. 25%)"
DEFAULT_FADEOUT_EPOCHS = 100.0  # MixShare Sec. 3.3: "stop unmixing by epoch 100" (of 300)


def unmix_channels(num_channels: int, share: float) -> int:
    """Number of unmixed channels: the first ``ceil(share · C)`` (at least one for a positive share)."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f'unmix share must lie in [0, 1], got {share!r}')
    return min(num_channels, math.ceil(share * num_channels - 1e-9))


def unmix_features(features: torch.Tensor, masks: torch.Tensor, channels: Optional[int] = None,
                   relax: Union[float, torch.Tensor] = 0.0, pool: str = 'mean') -> torch.Tensor:
    """One masked copy of the final feature map per member (thesis Alg. A.7; MixShare Sec. 3.1 and 3.3).

    Args:
        features: ``(B, C, h, w)`` last feature map of the core network.
        masks: ``(B, M, h, w)`` the plan's masks on the same grid.
        channels: Unmix channels ``[0, channels)`` only (partial unmixing); the others are copied unchanged to every
            member. ``None``: all channels.
        relax: Fadeout r in [0, 1]: the mask used is ``mask + r (1 - mask)``. A tensor (the plan's, 0-d, on the
            features' device) is used as it is, unchecked and without a branch on its value (no host read, one
            compiled graph for every r).
        pool: ``'mean'``: masks as they are (a following average pool gives the papers' ``GAP(mask ⊙ f)``);
            ``'masked_mean'``: masks rescaled by ``h w / Σ mask`` so that average pooling gives the mean over the
            masked positions (0 where a member's mask is empty).

    Returns:
        ``(B, M, C, h, w)``: member m's features.
    """
    if features.ndim != 4 or masks.ndim != 4 or masks.shape[0] != features.shape[0]:
        raise ValueError(f'expected features (B, C, h, w) and masks (B, M, h, w), got {tuple(features.shape)} and '
                         f'{tuple(masks.shape)}')
    if tuple(masks.shape[-2:]) != tuple(features.shape[-2:]):
        raise ValueError(f'unmixing masks live on a {tuple(masks.shape[-2:])} grid but the final feature map is '
                         f'{tuple(features.shape[-2:])}: sample the plan on model.mix_grid(img_size)')
    if pool not in UNMIX_POOLS:
        raise ValueError(f'unmix pool must be one of {UNMIX_POOLS}, got {pool!r}')
    if not isinstance(relax, torch.Tensor) and not 0.0 <= relax <= 1.0:
        raise ValueError(f'fadeout relax r must lie in [0, 1], got {relax!r}')
    num_members, num_channels = masks.shape[1], features.shape[1]
    channels = num_channels if channels is None else channels
    if not 0 <= channels <= num_channels:
        raise ValueError(f'cannot unmix {channels} of {num_channels} channels')
    masks = masks.to(features.dtype)
    if isinstance(relax, torch.Tensor):
        masks = masks + relax.to(masks.dtype) * (1 - masks)
    elif relax:
        masks = masks + relax * (1 - masks)
    if pool == 'masked_mean':
        area = masks.sum(dim=(2, 3), keepdim=True)
        masks = masks * (masks.shape[2] * masks.shape[3]) / area.clamp_min(torch.finfo(masks.dtype).tiny)
    unmixed = features[:, None, :channels] * masks[:, :, None]
    if channels == num_channels:
        return unmixed
    shared = features[:, None, channels:].expand(-1, num_members, -1, -1, -1)
    return torch.cat([unmixed, shared], dim=2)


class MixShareCNN(MimoCNN):
    """A timm CNN as an M-member MixShare ensemble (Cut-MixMo + unmixing + aligned encoders).

    Args:
        backbone: timm model name or module (see :class:`MimoCNN`).
        num_members: M.
        unmixing: ``'full'``, ``'partial'``, ``'fadeout'`` (default, the papers' best) or ``'none'``.
        unmix_share: Share of the final channels unmixed by ``'partial'`` (default 0.25); only for ``'partial'``.
        fadeout_epochs: Epoch at which ``'fadeout'`` stops unmixing (default 100); only for ``'fadeout'``.
        unmix_pool: ``'mean'`` (papers' literal GAP of the masked map) or ``'masked_mean'``.
        encoder_init: ``'same'`` (default, MixShare's kernel alignment), ``'colinear'``, ``'colinear_filter'`` or
            ``'independent'`` (the table's "MixMo + Unmix" row).
        mix_cfg: Overrides merged into :data:`MIXSHARE_MIX_CFG` (p = 1, ρ = 0.1, + ``fadeout_epochs``).
        loss_cfg: ``MimoLoss`` kwargs (default :data:`MIXSHARE_LOSS_CFG`, r = 1).
        **kwargs: :class:`MimoCNN` arguments (``inference``, the ablation switches, backbone kwargs...).
    """
    METHOD_MIX_CFGS = {'mixshare': MIXSHARE_MIX_CFG}

    def __init__(
            self,
            backbone: Union[str, nn.Module] = 'wrn28_2',
            num_members: int = 2,
            unmixing: str = 'fadeout',
            unmix_share: Optional[float] = None,
            fadeout_epochs: Optional[float] = None,
            unmix_pool: str = 'mean',
            encoder_init: str = 'same',
            method: str = 'mixshare',
            mix_cfg: Optional[Dict[str, Any]] = None,
            loss_cfg: Optional[Dict[str, Any]] = None,
            **kwargs: Any,
    ):
        if unmixing not in UNMIXINGS:
            raise ValueError(f'unmixing must be one of {UNMIXINGS}, got {unmixing!r}')
        if unmix_share is not None and unmixing != 'partial':
            raise ValueError(f"unmix_share is the channel share of unmixing='partial'; got unmixing={unmixing!r}")
        if fadeout_epochs is not None and unmixing != 'fadeout':
            raise ValueError(f"fadeout_epochs belongs to unmixing='fadeout'; got unmixing={unmixing!r}")
        if unmix_pool not in UNMIX_POOLS:
            raise ValueError(f'unmix_pool must be one of {UNMIX_POOLS}, got {unmix_pool!r}')
        share = {'full': 1.0, 'fadeout': 1.0, 'none': 0.0}.get(unmixing, unmix_share)
        share = DEFAULT_UNMIX_SHARE if share is None else share
        if not 0.0 < share <= 1.0 and unmixing == 'partial':
            raise ValueError(f'unmix_share must lie in (0, 1], got {unmix_share!r}')
        mix_cfg = dict(mix_cfg or {})
        if num_members > 2:
            # Decision (the papers train M = 2 only): unmixing needs one owner per position, so for M > 2 each sample
            # cut-mixes two of its M inputs (the others get κ = 0), MixViT's M > 2 scheme, instead of cut-in-mix
            # (whose complement is shared linearly by M - 1 inputs).
            mix_cfg.setdefault('pair_only', True)
        if unmixing == 'fadeout':
            epochs = DEFAULT_FADEOUT_EPOCHS if fadeout_epochs is None else fadeout_epochs
            if not epochs > 0:
                raise ValueError(f'fadeout_epochs must be > 0, got {fadeout_epochs!r}')
            mix_cfg.setdefault('fadeout_epochs', float(epochs))
        elif mix_cfg.get('fadeout_epochs') is not None:
            raise ValueError(f"mix_cfg fadeout_epochs needs unmixing='fadeout', got unmixing={unmixing!r}")
        super().__init__(backbone, num_members, method=method, mix_cfg=mix_cfg,
                         loss_cfg=MIXSHARE_LOSS_CFG if loss_cfg is None else loss_cfg, encoder_init=encoder_init,
                         **kwargs)
        self.unmixing = unmixing
        self.unmix_share = share
        self.unmix_pool = unmix_pool
        self._feature_grids: Dict[Tuple[int, int], Tuple[int, int]] = {}

    @property
    def unmixed_channels(self) -> int:
        """How many of the final feature channels are unmixed (the first ones)."""
        return unmix_channels(self.num_features, self.unmix_share)

    def mix_grid(self, img_size: Union[int, Tuple[int, int]]) -> Tuple[int, int]:
        """The final feature grid for inputs of ``img_size``: where the masks are drawn (and unmixing happens)."""
        size = (img_size, img_size) if isinstance(img_size, int) else tuple(int(s) for s in tuple(img_size)[-2:])
        grid = self._feature_grids.get(size)
        if grid is None:
            grid = self._feature_grids[size] = self._measure_feature_grid(size)
        return grid

    def _measure_feature_grid(self, size: Tuple[int, int]) -> Tuple[int, int]:
        """Spatial size of ``forward_features`` on one blank image, in eval mode (BN statistics untouched)."""
        param = next(self.parameters())
        blank = torch.zeros(1, self.in_chans, *size, device=param.device, dtype=param.dtype)
        modes = [(module, module.training) for module in self.modules()]
        self.eval()
        try:
            with torch.no_grad():
                features = self._run(blank, _EncoderCall('plain'), self.backbone.forward_features)
        finally:
            for module, training in modes:  # every module's own mode back (a frozen BN stays in eval)
                module.training = training
        if features.ndim != 4:
            raise ValueError(f'MixShare unmixes a (B, C, h, w) feature map; {self.backbone_name} returns '
                             f'{tuple(features.shape)} from forward_features')
        return tuple(features.shape[-2:])

    def _mixed_call(self, plan: MixPlan, xs: torch.Tensor) -> _EncoderCall:
        """Masks drawn on the feature grid, nearest-upsampled to the encoder grid."""
        encoder_grid = super().mix_grid(tuple(xs.shape[-2:]))
        masks = plan.masks.to(device=xs.device)
        if tuple(masks.shape[-2:]) != encoder_grid:
            masks = F.interpolate(masks, size=encoder_grid, mode='nearest')
        return _EncoderCall('mixed', masks=masks)

    def forward_mixed(self, xs: torch.Tensor, plan: MixPlan) -> torch.Tensor:
        batch_size = xs.shape[0]
        channels = self.unmixed_channels
        if channels and not plan.binary and plan.unmixes:  # host flags: the binary plans of training read one
            raise ValueError('MixShare unmixing needs binary (0/1) masks, got a plan with fractional masks (a linear '
                             "batch, or M > 2 cut-in-mix): keep the model's mix_cfg (prob=1, pair_only for M > 2) or "
                             "use unmixing='none'")
        features = self._run(self._packed(xs), self._mixed_call(plan, xs), self.backbone.forward_features)
        masks = plan.masks.to(device=features.device)
        relax = plan.unmix_relax.to(device=features.device)
        member_maps = unmix_features(features, masks, channels, relax, self.unmix_pool)
        pooled = self.backbone.forward_head(member_maps.flatten(0, 1), pre_logits=True)
        return self.member_logits(pooled.view(batch_size, self.num_members, -1), plan)


# --------------------------------------------------------------------------------------------------------------------
# Pretrained cfgs and entrypoints (no published weights: no hf_hub_id / url)
# --------------------------------------------------------------------------------------------------------------------

def _mixshare_ids() -> Dict[str, str]:
    return dict(paper_ids='arXiv:2205.10139', paper_name='Towards efficient feature sharing in MIMO architectures')


def _mixshare_wrn_cfg(**kwargs: Any) -> Dict[str, Any]:
    return {
        'num_classes': 100, 'input_size': (3, 32, 32), 'pool_size': (8, 8), 'crop_pct': 1.0,
        'interpolation': 'bilinear', 'mean': CIFAR100_MEAN, 'std': CIFAR100_STD, 'first_conv': 'backbone.conv_stem',
        'classifier': 'backbone.fc', 'license': 'apache-2.0', **_mixshare_ids(), **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'mixshare': _generic_cfg(**_mixshare_ids()),
    'mixshare_wrn28_2': _mixshare_wrn_cfg(),
    'mixshare_wrn28_5': _mixshare_wrn_cfg(),
})


@register_model
def mixshare(pretrained: bool = False, **kwargs: Any) -> MixShareCNN:
    """MixShare on any timm CNN (default resnet18).

    ``timm.create_model('mixshare', backbone='resnet50', unmixing='partial')``.
    """
    kwargs.setdefault('backbone', GENERIC_BACKBONE)
    return _create_generic('mixshare', pretrained, kwargs, model_cls=MixShareCNN)


def _paper_model(backbone: str, pretrained: bool, kwargs: Dict[str, Any]) -> MixShareCNN:
    return _create_mimo_cnn(f'mixshare_{backbone}', pretrained, model_cls=MixShareCNN,
                            **dict(dict(backbone=backbone, method='mixshare'), **kwargs))


@register_model
def mixshare_wrn28_2(pretrained: bool = False, **kwargs: Any) -> MixShareCNN:
    """MixShare on WRN-28-2 (CIFAR), fadeout unmixing by default."""
    return _paper_model('wrn28_2', pretrained, kwargs)


@register_model
def mixshare_wrn28_5(pretrained: bool = False, **kwargs: Any) -> MixShareCNN:
    """MixShare on WRN-28-5 (CIFAR), fadeout unmixing by default."""
    return _paper_model('wrn28_5', pretrained, kwargs)
