"""The papers' naive MIMO / MixMo vision transformers (thesis (HAL tel-03952815) Sec. 4.3.1, Table 4.1, Table A.18;
MixViT openreview.net/forum?id=pOq1HuMI8Dz Table 6).

M patch embeddings ``e_m`` play the role of MixMo's encoders ``c_m``: the tokens of the M inputs are mixed position by
position (MIMO: summed; MixMo: a CutMix square on the token grid or linear mixing), then the whole backbone and M heads
on the class token. This is :class:`~timm_mimo.models.mimo_cnn.MimoCNN` unchanged: a timm ViT's
``pretrained_cfg['first_conv']`` is its patch-embedding conv (``patch_embed.proj``) and its classifier is ``head``, so
the same M-encoder module mixes tokens instead of stem features (the mixing grid is the token grid).

Inference (``inference=``): ``'sum'`` (default for MIMO / MixMo) embeds the image with every ``e_m`` and runs ONE pass
on ``Σ_m e_m(x)``; ``'separate'`` runs M passes, member m on its own tokens only (``M · e_m(x)``, see
``MemberEncoders.forward_separate`` for the scale decision), at M times the FLOPs.

Methods (``method=``), Table 4.1 rows 2–5:

* ``'mimo_vit'``: linear mixing at κ = 1/M (summing), sum inference.
* ``'mixmo_vit'``: Cut-MixMo mixing (CutMix square on tokens with p = 0.5, else linear), sum inference; row 4 is the
  same model with ``inference='separate'``.
* ``'cutmix_only_mixmo_vit'``: always CutMix (p = 1) and separate inference.
* "MixMo + same init." (Table A.18) is ``encoder_init='same'`` on any of them.

Decision (papers silent: the ViT transposition does not restate MixMo's factor M, p schedule, r and α): MixMo's
defaults throughout (factor M on the mixed tokens, α = 2, p = 0.5 with the last-twelfth descent, r = 3, MixMo
arXiv:2103.06132 Sec. 3); CutMix-only fixes p = 1 without descent (the thesis' "never sum during training").
"""
from typing import Any, Dict, Optional, Union

import torch.nn as nn
from timm.models import generate_default_cfgs, register_model

from timm_mimo.models import mimo_cnn
from timm_mimo.models.cifar_resnet import CIFAR100_MEAN, CIFAR100_STD
from timm_mimo.models.mimo_cnn import MimoCNN, _create_mimo_cnn
from timm_mimo.models.mixvit import init_gpsa_positions

__all__ = ['MimoViT', 'VIT_METHODS']

# method -> (MimoCNN method, i.e. the Mixer kwargs, and the default inference) (thesis Table 4.1)
VIT_METHODS: Dict[str, Dict[str, str]] = {
    'mimo_vit': dict(mixing='mimo', inference='sum'),
    'mixmo_vit': dict(mixing='cut_mixmo', inference='sum'),
    'cutmix_only_mixmo_vit': dict(mixing='cutmix_only_mixmo', inference='separate'),
}


class MimoViT(MimoCNN):
    """Naive MIMO / MixMo transformer: M patch embeddings mixed on tokens, shared blocks, M heads.

    Args:
        backbone: timm ViT name or model whose ``first_conv`` is its patch-embedding conv (e.g. ``convit_gpsa5_ca2``,
            ``convit_tiny``, ``cait_xxs24_224``).
        num_members: M.
        method: ``'mimo_vit'``, ``'mixmo_vit'`` or ``'cutmix_only_mixmo_vit'`` (see module docstring).
        inference: ``'sum'`` or ``'separate'``; ``None`` takes the method's default.
        **kwargs: As :class:`MimoCNN` (``encoder_init``, ``mix_cfg``, ``loss_cfg``, pretrained backbone loading,
            backbone kwargs such as ``img_size`` / ``patch_size`` / ``num_classes``).
    """

    def __init__(self, backbone: Union[str, nn.Module] = 'convit_gpsa5_ca2', num_members: int = 2,
                 method: str = 'mixmo_vit', inference: Optional[str] = None, **kwargs: Any):
        if method not in VIT_METHODS:
            raise ValueError(f'method must be one of {tuple(VIT_METHODS)}, got {method!r}')
        spec = VIT_METHODS[method]
        super().__init__(backbone, num_members, method=spec['mixing'], inference=inference or spec['inference'],
                         **kwargs)
        self.method = method
        self.pretrained_cfg = self.default_cfg = dict(self.pretrained_cfg, architecture=method)
        patch_embed = getattr(self.backbone, 'patch_embed', None)
        if patch_embed is not None and getattr(patch_embed, 'num_patches', None):
            init_gpsa_positions(self.backbone, patch_embed.num_patches)


def _create_generic(method: str, pretrained: bool, kwargs: Dict[str, Any]) -> MimoViT:
    """Any timm ViT (default: the papers' ConViT); ``pretrained`` as for the generic CNN names (backbone checkpoint,
    or a saved MIMO model)."""
    kwargs.setdefault('backbone', PAPER_BACKBONE)
    return mimo_cnn._create_generic(method, pretrained, kwargs, model_cls=MimoViT)


def _paper_model(method: str, backbone: str, pretrained: bool, kwargs: Dict[str, Any]) -> MimoViT:
    model_args = dict(backbone=backbone, method=method)
    return _create_mimo_cnn(f'{method}_{backbone}', pretrained, model_cls=MimoViT, **dict(model_args, **kwargs))


def _paper_ids() -> Dict[str, str]:
    return dict(paper_name='Reconciling feature sharing and multiple predictions with MIMO vision transformers '
                           '(naive MIMO / MixMo baselines, Table 6)')


def _generic_cfg(**kwargs: Any) -> Dict[str, Any]:
    """Cfg of a generic name: its default backbone's (the papers' ConViT); an instance takes its backbone's cfg."""
    return {
        'num_classes': 100, 'input_size': (3, 32, 32), 'crop_pct': 1.0, 'interpolation': 'bicubic',
        'mean': CIFAR100_MEAN, 'std': CIFAR100_STD, 'first_conv': 'backbone.patch_embed.proj',
        'classifier': 'backbone.head', 'license': 'apache-2.0', **_paper_ids(), **kwargs,
    }


def _convit_cfg(**kwargs: Any) -> Dict[str, Any]:
    """The papers' ConViT on CIFAR-100 (32 px, patch 4, 8x8 tokens), as ``convit_gpsa5_ca2``; no published weights."""
    return {
        'num_classes': 100, 'input_size': (3, 32, 32), 'fixed_input_size': True,
        'crop_pct': 1.0, 'interpolation': 'bicubic', 'mean': CIFAR100_MEAN, 'std': CIFAR100_STD,
        'first_conv': 'backbone.patch_embed.proj', 'classifier': 'backbone.head', 'license': 'apache-2.0',
        **_paper_ids(), **kwargs,
    }


PAPER_BACKBONE = 'convit_gpsa5_ca2'

default_cfgs = generate_default_cfgs({
    **{method: _generic_cfg() for method in VIT_METHODS},
    **{f'{method}_{PAPER_BACKBONE}': _convit_cfg() for method in VIT_METHODS},
})


@register_model
def mimo_vit(pretrained: bool = False, **kwargs: Any) -> MimoViT:
    """Naive MIMO transformer on any timm ViT: ``timm.create_model('mimo_vit', backbone='convit_tiny')``."""
    return _create_generic('mimo_vit', pretrained, kwargs)


@register_model
def mixmo_vit(pretrained: bool = False, **kwargs: Any) -> MimoViT:
    """Naive MixMo transformer on any timm ViT: ``timm.create_model('mixmo_vit', backbone='convit_tiny')``."""
    return _create_generic('mixmo_vit', pretrained, kwargs)


@register_model
def cutmix_only_mixmo_vit(pretrained: bool = False, **kwargs: Any) -> MimoViT:
    """CutMix-only MixMo transformer (separate inference) on any timm ViT."""
    return _create_generic('cutmix_only_mixmo_vit', pretrained, kwargs)


@register_model
def mimo_vit_convit_gpsa5_ca2(pretrained: bool = False, **kwargs: Any) -> MimoViT:
    """Table 4.1 row 2: MIMO on the papers' ConViT (CIFAR-100, 32 px, patch 4), sum inference."""
    return _paper_model('mimo_vit', PAPER_BACKBONE, pretrained, kwargs)


@register_model
def mixmo_vit_convit_gpsa5_ca2(pretrained: bool = False, **kwargs: Any) -> MimoViT:
    """Table 4.1 row 3 (row 4 with ``inference='separate'``): MixMo on the papers' ConViT."""
    return _paper_model('mixmo_vit', PAPER_BACKBONE, pretrained, kwargs)


@register_model
def cutmix_only_mixmo_vit_convit_gpsa5_ca2(pretrained: bool = False, **kwargs: Any) -> MimoViT:
    """Table 4.1 row 5: CutMix-only MixMo on the papers' ConViT, separate inference."""
    return _paper_model('cutmix_only_mixmo_vit', PAPER_BACKBONE, pretrained, kwargs)
