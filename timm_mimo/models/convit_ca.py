"""The MixViT papers' ConViT: 5 GPSA blocks + 2 class-attention blocks (thesis (HAL tel-03952815) Sec. 4.4 and
App. A.1.5; MixViT openreview.net/forum?id=pOq1HuMI8Dz Sec. 4).

A single-input timm model, the backbone of MixViT on CIFAR / Tiny ImageNet / ImageNet-100 and its baseline. It is
composed from timm's blocks: ConViT's gated positional self-attention ``Block`` (``use_gpsa=True``) for the feature
extraction and CaiT's ``LayerScaleBlockClassAttn`` for the two class-attention blocks, the class token joining after
the GPSA blocks. The attribute names follow timm's ``Cait`` (``patch_embed``, ``pos_embed``, ``blocks``,
``cls_token``, ``blocks_token_only``, ``norm``, ``head``), so MixViT splits both models the same way.

Decisions where the papers are silent or contradictory:
    * second stage: CaiT-style class-attention blocks ("2 CA", thesis Sec. 4.3.1 / 4.4 and Alg. A.8), not the
      "2 SA blocks" of thesis App. A.1.5 (the majority of the sources and the pseudo-code say CA);
    * LayerScale in the CA blocks: ``ca_init_values=1.0`` (a learnable per-channel scale starting at 1, i.e. a plain
      pre-norm block at init, as the ConViT/DyTox blocks the papers build on have no LayerScale);
    * no stochastic depth by default (``drop_path_rate=0``), MLP ratio 4, no qkv bias (ConViT's defaults);
    * 12 heads: timm's GPSA ``local_init`` sets ``int(sqrt(12))**2 = 9`` heads as a 3x3 kernel, the others keep the
      default init (as the papers note, thesis App. A.1.5).
"""
from functools import partial
from typing import Any, Dict, Optional, Set, Tuple, Union

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import (
    PatchEmbed,
    calculate_drop_path_rates,
    get_device_dtype,
    resample_abs_pos_embed,
    to_2tuple,
    trunc_normal_,
)
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model
from timm.models.cait import LayerScaleBlockClassAttn
from timm.models.convit import Block as GpsaBlock

__all__ = ['ConVitCA', 'CIFAR100_MEAN', 'CIFAR100_STD', 'TINY_IMAGENET_MEAN', 'TINY_IMAGENET_STD']

CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
TINY_IMAGENET_MEAN = (0.4802, 0.4481, 0.3975)
TINY_IMAGENET_STD = (0.2302, 0.2265, 0.2262)


class ConVitCA(nn.Module):
    """ConViT with GPSA feature blocks followed by class-attention blocks (the MixViT papers' backbone).

    Args:
        img_size: Input image size.
        patch_size: Patch size of the linear patch embedding.
        in_chans: Input channels.
        num_classes: Classes of the head (0: no head).
        global_pool: ``'token'`` (class token, the papers' head) or ``'avg'`` (mean of the patch tokens) or ``''``.
        embed_dim: Token width d.
        depth: Number of GPSA blocks L.
        depth_token_only: Number of class-attention blocks.
        num_heads: Attention heads of every block.
        mlp_ratio: MLP hidden width / d.
        qkv_bias: Bias on the query/key/value projections.
        locality_strength: GPSA locality strength at init.
        ca_init_values: LayerScale init of the class-attention blocks.
        drop_rate: Dropout before the head.
        pos_drop_rate: Dropout after adding the positional embedding.
        proj_drop_rate: Dropout after attention / MLP projections.
        attn_drop_rate: Attention dropout.
        drop_path_rate: Stochastic depth, increasing linearly over the GPSA blocks (none on the CA blocks, as CaiT).
        device: Device of the parameters (timm's factory passes it, e.g. ``'meta'``).
        dtype: Dtype of the parameters.
    """

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 32,
            patch_size: Union[int, Tuple[int, int]] = 4,
            in_chans: int = 3,
            num_classes: int = 100,
            global_pool: str = 'token',
            embed_dim: int = 384,
            depth: int = 5,
            depth_token_only: int = 2,
            num_heads: int = 12,
            mlp_ratio: float = 4.,
            qkv_bias: bool = False,
            locality_strength: float = 1.,
            ca_init_values: float = 1.,
            drop_rate: float = 0.,
            pos_drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            attn_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            device: Any = None,
            dtype: Any = None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if global_pool not in ('', 'token', 'avg'):
            raise ValueError(f"global_pool must be '', 'token' or 'avg', got {global_pool!r}")
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1
        self.grad_checkpointing = False

        self.patch_embed = PatchEmbed(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim, **dd)
        grid = self.patch_embed.grid_size
        if grid[0] != grid[1]:
            # GPSA's relative positions (timm ``GPSA.get_rel_indices``) assume a square token grid
            raise ValueError(f'GPSA needs a square token grid, got {grid[0]}x{grid[1]} for img_size={img_size}, '
                             f'patch_size={patch_size}')
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches, embed_dim, **dd))
        self.pos_drop = nn.Dropout(pos_drop_rate)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim, **dd))

        dpr = calculate_drop_path_rates(drop_path_rate, depth)  # linear in depth (timm's rule)
        self.blocks = nn.Sequential(*[
            GpsaBlock(
                dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, proj_drop=proj_drop_rate,
                attn_drop=attn_drop_rate, drop_path=dpr[i], norm_layer=norm_layer, use_gpsa=True,
                locality_strength=locality_strength, **dd)
            for i in range(depth)])
        self.blocks_token_only = nn.ModuleList([
            LayerScaleBlockClassAttn(
                dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                norm_layer=norm_layer, init_values=ca_init_values, **dd)
            for _ in range(depth_token_only)])
        self.norm = norm_layer(embed_dim, **dd)
        reduction = self.patch_embed.feat_ratio()
        self.feature_info = [dict(num_chs=embed_dim, reduction=reduction, module=f'blocks.{i}') for i in range(depth)]
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()

        trunc_normal_(self.pos_embed, std=.02)
        trunc_normal_(self.cls_token, std=.02)
        self.apply(self._init_weights)
        for module in self.modules():
            if hasattr(module, 'local_init'):
                module.local_init()

    def _init_weights(self, m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        return {'pos_embed', 'cls_token'}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r'^cls_token|pos_embed|patch_embed',
            blocks=[(r'^blocks\.(\d+)', None), (r'^blocks_token_only\.(\d+)', (10000,)), (r'^norm', (99999,))],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            if global_pool not in ('', 'token', 'avg'):
                raise ValueError(f"global_pool must be '', 'token' or 'avg', got {global_pool!r}")
            self.global_pool = global_pool
        dd = get_device_dtype(self)
        self.head = nn.Linear(self.embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.head.train(self.training)

    def forward_patch_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Patch embedding, positional embedding and the GPSA blocks: ``(B, C, H, W)`` -> ``(B, N, D)``."""
        x = self.pos_drop(self.patch_embed(x) + self.pos_embed)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)

    def forward_cls(self, x: torch.Tensor) -> torch.Tensor:
        """The class token through the class-attention blocks, prepended to the patch tokens: ``(B, 1 + N, D)``."""
        cls_token = self.cls_token.expand(x.shape[0], -1, -1)
        for blk in self.blocks_token_only:
            cls_token = blk(x, cls_token)
        return torch.cat((cls_token, x), dim=1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.forward_cls(self.forward_patch_tokens(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool:
            x = x[:, self.num_prefix_tokens:].mean(dim=1) if self.global_pool == 'avg' else x[:, 0]
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: ConVitCA) -> Dict[str, torch.Tensor]:
    """Strip wrappers (``model`` / ``module.``) and resample the positional embedding to the model's token grid."""
    if 'model' in state_dict:
        state_dict = state_dict['model']
    out = {}
    for k, v in state_dict.items():
        k = k.replace('module.', '')
        if k == 'pos_embed' and v.shape != model.pos_embed.shape:
            v = resample_abs_pos_embed(v, new_size=model.patch_embed.grid_size, num_prefix_tokens=0, verbose=True)
        out[k] = v
    return out


def _create_convit_ca(variant: str, pretrained: bool = False, **kwargs: Any) -> ConVitCA:
    out_indices = kwargs.pop('out_indices', 3)
    return build_model_with_cfg(
        ConVitCA, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs,
    )


def _cfg(url: str = '', **kwargs: Any) -> Dict[str, Any]:
    return {
        'url': url,
        'num_classes': 100, 'input_size': (3, 32, 32), 'pool_size': None,
        'crop_pct': 1.0, 'interpolation': 'bicubic', 'fixed_input_size': True,
        'mean': CIFAR100_MEAN, 'std': CIFAR100_STD,
        'first_conv': 'patch_embed.proj', 'classifier': 'head',
        'license': 'apache-2.0', 'paper_ids': 'arXiv:2103.10697',  # ConViT; the MixViT papers' configuration
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'convit_gpsa5_ca2': _cfg(),
    'convit_gpsa5_ca2_64': _cfg(
        num_classes=200, input_size=(3, 64, 64), mean=TINY_IMAGENET_MEAN, std=TINY_IMAGENET_STD),
    # the papers' 224 px setting is ImageNet-100 (100 classes)
    'convit_gpsa5_ca2_224': _cfg(
        num_classes=100, input_size=(3, 224, 224), crop_pct=0.875, mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD),
})


def _model_args(img_size: int, patch_size: int, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    args = dict(img_size=img_size, patch_size=patch_size, embed_dim=384, depth=5, depth_token_only=2, num_heads=12)
    args.update(kwargs)
    args['img_size'], args['patch_size'] = to_2tuple(args['img_size']), to_2tuple(args['patch_size'])
    return args


@register_model
def convit_gpsa5_ca2(pretrained: bool = False, **kwargs: Any) -> ConVitCA:
    """The papers' ConViT on CIFAR: 32 px, patch 4 (8x8 tokens), d 384, 12 heads, 5 GPSA + 2 CA blocks."""
    return _create_convit_ca('convit_gpsa5_ca2', pretrained, **_model_args(32, 4, kwargs))


@register_model
def convit_gpsa5_ca2_64(pretrained: bool = False, **kwargs: Any) -> ConVitCA:
    """The papers' ConViT on Tiny ImageNet: 64 px, patch 8 (8x8 tokens)."""
    return _create_convit_ca('convit_gpsa5_ca2_64', pretrained, **_model_args(64, 8, kwargs))


@register_model
def convit_gpsa5_ca2_224(pretrained: bool = False, **kwargs: Any) -> ConVitCA:
    """The papers' ConViT on ImageNet-100: 224 px, patch 16 (14x14 tokens)."""
    return _create_convit_ca('convit_gpsa5_ca2_224', pretrained, **_model_args(224, 16, kwargs))
