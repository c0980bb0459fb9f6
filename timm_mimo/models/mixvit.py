"""MixViT: MIMO vision transformers with source attribution.

Sun et al., "Reconciling feature sharing and multiple predictions with MIMO vision transformers" (ICLR 2023
submission, openreview.net/forum?id=pOq1HuMI8Dz), Sec. 2; thesis (HAL tel-03952815) Sec. 4.3.3, Alg. A.8 / A.9.

A MixViT wraps a timm transformer and splits it in two:

* shared part: the single patch embedding ``e``, the positional embedding and the first blocks (CaiT's ``blocks``;
  ConViT's ``blocks[:local_up_to_layer]``; the papers' ConViT's 5 GPSA ``blocks``; a ``VisionTransformer``'s
  ``blocks[:L - n]``, its class / register / distillation tokens included);
* member part: source attribution ``s_m``, the class token and the blocks after it (CaiT / papers' ConViT:
  the class-attention ``blocks_token_only``; timm's ConViT: the self-attention ``blocks[local_up_to_layer:]``;
  a ``VisionTransformer``: its last ``member_blocks = n`` blocks), the final norm / pooling and M dense heads ``d_m``.

Training (Alg. A.8): the M inputs are mixed patch by patch as the plan's token masks say, embedded once, run through
the shared blocks once, attributed to their sources ``t* = t + Σ_m M_m ⊙ s_m(t)`` (eq. 4.5 / 4.6), and ONE class
token pass reads the mixed token set; every head ``d_m`` reads that class token. Inference (Alg. A.9, ``'parallel'``):
the shared blocks run once on the B images, the attribution is tiled into M token sets (set m: every token attributed
to member m) and the member blocks run on the M·B sets as one batch; head m reads class token m.

Decisions where the papers are silent (each tested in tests/test_mixvit.py):
    * source parameters at random init: ``source_init='trunc_normal'`` (std .02, like timm's positional embeddings;
      encoder biases zero), ``'zeros'`` available; ``pretrained=True`` sets them to zero so that the MixViT computes
      exactly the backbone's logits;
    * ``'sum'`` inference: the MEAN of the M attributed versions, ``t + (1/M) Σ_m s_m(t)`` = the training formula with
      uniform masks ``M_m = 1/M`` (a literal sum would scale tokens by M, never seen in training); one class-token pass,
      all heads on it, logits averaged;
    * ``'alternating'``: every token attributed to a member drawn uniformly at random, from a generator seeded with
      ``alternating_seed`` at every call (the model stays deterministic); one pass, all heads, averaged;
    * ``'single'``: member ``single_member`` (default 0) only: its attribution, one pass, its head; its logits fill all
      M slots of ``forward_members`` so the ``(B, M, K)`` contract holds and ``model(x)`` is that member's prediction;
    * role swap / λ re-measurement / end-of-training schedule / M > 2 pairs live in the ``Mixer`` (``mix_cfg``);
    * ``source='none'``: the member sets would be identical, so the member blocks run once (B samples, not M·B);
    * early attribution is applied to the patch embedding output ``e(x)``, before the positional embedding (where the
      mixing happens in Alg. A.8); inference then runs M full passes;
    * ``mixing='all_tokens'``: the M·N tokens (each input's with the positional embedding) go through the backbone
      together, every token attributed to its input; GPSA blocks see the relative positions of the token grid tiled
      across inputs. Inference feeds the image as every input (×2 FLOPs as in Table 4.6). The plan's masks are not
      used (only its κ, for the loss); its ``mix_cfg`` asks for constant κ = 1/M;
    * a plain ``(B, C, H, W)`` call in train mode runs the inference mode (the model contract), so every parameter,
      including every member's source parameters, gets a gradient there.

Timm ``VisionTransformer`` family (``vit_*``, ``deit_*`` incl. distilled, ``deit3_*``, register / no-class-token /
average- or attention-pooled variants). The papers place the split where the class token joins ("MixViT easily
generalizes to other architectures", thesis Sec. 4.3.2, without details); a ViT carries its class token from the start.
Decisions (papers silent):
    * the last ``member_blocks`` blocks (default 2, the papers' two class-attention blocks) are the member part;
    * member class tokens: the class token (and register / distillation tokens) leaving the shared blocks is copied
      unchanged into every member's token set; source attribution touches the patch tokens only (as in the papers,
      where ``s_m`` acts on the patch tokens and the class token ``c_0`` is shared). With zero source parameters every
      member set is the backbone's own token set, so ``pretrained=True`` reproduces the backbone's logits exactly;
      during training the one class token has attended to the mixed tokens in the shared blocks, as every patch token;
    * pooling is the backbone's (``global_pool`` token / avg / avgmax / max / map, ``fc_norm``), applied to each
      member's token set; a distilled DeiT keeps both heads per member and averages them (timm's inference rule, also
      during MixViT training: there is no teacher);
    * refused with a one-line error: hybrid (CNN-stem) patch embeddings, ``dynamic_img_size``, ``patch_drop_rate``
      (it would drop tokens the masks refer to), other transformer classes (Eva, BEiT, relative-position ViTs, ...).
Cost of parallel inference on a ViT of L blocks: at most ``(L - n + n·M) / L`` of the backbone's FLOPs with source
embedding (the papers' rule of thumb, MixViT paper Sec. 2.4); source encoding adds its M d x d products per patch token,
which the papers' finer count includes (measured: 1.178 for DeiT-S, M = 2, against 1.167).
"""
from typing import Any, Dict, List, Optional, Set, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import PatchEmbed, resample_abs_pos_embed, trunc_normal_
from timm.models import (
    build_model_with_cfg,
    checkpoint_seq,
    create_model,
    generate_default_cfgs,
    register_model,
    resolve_pretrained_cfg,
)
from timm.models._registry import get_pretrained_cfg, is_model_in_modules, list_pretrained
from timm.models.cait import Cait
from timm.models.convit import GPSA
from timm.models.vision_transformer import VisionTransformer, global_pool_nlc

from timm_mimo.mixing import MixPlan
from timm_mimo.models._contract import MimoContract, check_image_batch, check_num_members, refuse_features_only
from timm_mimo.models._heads import MemberHeads
from timm_mimo.models.convit_ca import CIFAR100_MEAN, CIFAR100_STD, TINY_IMAGENET_MEAN, TINY_IMAGENET_STD
from timm_mimo.pretrained import has_pretrained_source, pretrained_weights

__all__ = ['MixViT', 'SourceAttribution', 'create_backbone', 'SOURCE_KINDS', 'INFERENCE_MODES', 'MIXING_MODES',
           'init_gpsa_positions']

SOURCE_KINDS = ('embedding', 'encoding', 'none', 'early_embedding', 'early_encoding')
INFERENCE_MODES = ('parallel', 'sum', 'alternating', 'single')
MIXING_MODES = ('tokens', 'all_tokens')

# CaiT-M-24 is not registered in timm (it has M-36 / M-48): the M width and heads at depth 24. LayerScale init follows
# CaiT's depth rule as timm applies it (1e-5 for every 24-block CaiT, 1e-6 from 36 blocks on).
_EXTRA_BACKBONES: Dict[str, Dict[str, Any]] = {
    'cait_m24': dict(img_size=224, patch_size=16, embed_dim=768, depth=24, num_heads=16, init_values=1e-5),
}
# timm modules whose entrypoints build ``VisionTransformer`` (or its distilled subclass)
_VIT_MODULES = ('vision_transformer', 'deit', 'vision_transformer_hybrid')
_CLASS_ATTENTION_MODULES = ('cait', 'convit', 'convit_ca')  # the class token joins after the shared blocks


class SourceAttribution(nn.Module):
    """Source attribution ``t* = t + Σ_m M_m ⊙ s_m(t)`` (thesis eq. 4.5 / 4.6; MixViT paper eq. 2 / 3).

    Embedding (eq. 4.6): ``s_m(t) = b_m``, M learnable d-vectors. Encoding (eq. 4.5): ``s_m(t) = t W_m^T + b_m``,
    M d -> d linear maps.

    Args:
        dim: Token width d.
        num_members: M.
        encoding: Linear encoders instead of vectors.
        init: ``'trunc_normal'`` (std .02, biases of encoders zero) or ``'zeros'``.
    """

    def __init__(self, dim: int, num_members: int, encoding: bool = False, init: str = 'trunc_normal',
                 device: Any = None, dtype: Any = None):
        super().__init__()
        if init not in ('trunc_normal', 'zeros'):
            raise ValueError(f"source_init must be 'trunc_normal' or 'zeros', got {init!r}")
        dd = dict(device=device, dtype=dtype)
        self.dim = dim
        self.num_members = num_members
        self.bias = nn.Parameter(torch.zeros(num_members, dim, **dd))
        self.weight = nn.Parameter(torch.zeros(num_members, dim, dim, **dd)) if encoding else None
        if init == 'trunc_normal':
            trunc_normal_(self.weight if encoding else self.bias, std=.02)

    def member_terms(self, tokens: torch.Tensor) -> torch.Tensor:
        """``s_m(t)`` for every member: ``(B, N, D)`` -> ``(B, N, M, D)``."""
        if self.weight is None:
            return self.bias.expand(*tokens.shape[:2], -1, -1)
        out = F.linear(tokens, self.weight.reshape(-1, self.dim), self.bias.reshape(-1))
        return out.view(*tokens.shape[:2], self.num_members, self.dim)

    def forward(self, tokens: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Attribute ``tokens: (B, N, D)`` with token masks ``masks: (B, M, N)`` -> ``(B, N, D)``."""
        if self.weight is None:
            return tokens + torch.einsum('bmn,md->bnd', masks.to(tokens.dtype), self.bias)  # thesis eq. 4.6
        return tokens + torch.einsum('bmn,bnmd->bnd', masks.to(tokens.dtype), self.member_terms(tokens))  # eq. 4.5

    def per_member(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token set m attributed to member m: ``(B, M, N, D)`` -> ``(B, M, N, D)`` (SourceAttributionTiled)."""
        if self.weight is None:
            return tokens + self.bias[None, :, None, :]
        return tokens + torch.einsum('bmnd,med->bmne', tokens, self.weight) + self.bias[None, :, None, :]

    def tiled(self, tokens: torch.Tensor) -> torch.Tensor:
        """M attributed copies of one token set: ``(B, N, D)`` -> ``(B, M, N, D)`` (Alg. A.9)."""
        if self.weight is None:
            return tokens.unsqueeze(1) + self.bias[None, :, None, :]
        return tokens.unsqueeze(1) + self.member_terms(tokens).transpose(1, 2)

    def extra_repr(self) -> str:
        return f'dim={self.dim}, num_members={self.num_members}, encoding={self.weight is not None}'


def create_backbone(name: str, **kwargs: Any) -> nn.Module:
    """A randomly initialised backbone by timm name, ``'cait_m24'`` included (the single-input baseline of a MixViT)."""
    if name in _EXTRA_BACKBONES:
        return Cait(**{**_EXTRA_BACKBONES[name], **kwargs})
    return create_model(name, pretrained=False, **kwargs)


def _unsupported_backbone(backbone: str, class_name: str = '') -> str:
    """The one message for a backbone MixViT cannot wrap (``class_name``: what it built, when it was built)."""
    built = f' ({class_name})' if class_name else ''
    return (f'backbone {backbone!r}{built} is not supported: MixViT wraps CaiT (cait_*), ConViT (convit_*, '
            'convit_gpsa5_ca2*) and timm VisionTransformer models (vit_*, deit_*, deit3_*, ...)')


def _is_vision_transformer(backbone: str) -> bool:
    """Whether ``backbone`` is registered by a timm module that builds ``VisionTransformer`` models."""
    return backbone not in _EXTRA_BACKBONES and is_model_in_modules(backbone.split('.')[0], _VIT_MODULES)


def init_gpsa_positions(model: nn.Module, num_patches: int) -> None:
    """Build every GPSA layer's relative positions for a grid of ``num_patches`` tokens now, not in a forward.

    timm's GPSA builds them lazily when a forward first sees its token count; under ``torch.compile`` that first step
    traces a buffer the step itself replaces, and the step compiles a second time.
    """
    for module in model.modules():
        if isinstance(module, GPSA):
            module.rel_indices = module.get_rel_indices(num_patches)


class MixViT(MimoContract, nn.Module):
    """MixViT on a timm CaiT, ConViT, the papers' ConViT (``convit_gpsa5_ca2``) or a timm ``VisionTransformer``.

    Args:
        backbone: timm model name of the wrapped transformer (``cait_*``, ``convit_*``, ``convit_gpsa5_ca2*``,
            ``'cait_m24'``, or any ``VisionTransformer``: ``vit_*``, ``deit_*``, ``deit3_*``, ...).
        num_members: M.
        source: ``'embedding'`` (default), ``'encoding'``, ``'none'``, ``'early_embedding'``, ``'early_encoding'``.
        inference: ``'parallel'`` (default), ``'sum'``, ``'alternating'``, ``'single'``; settable later.
        mixing: ``'tokens'`` (binarized CutMix token selection) or ``'all_tokens'`` (the ablation).
        source_init: ``'trunc_normal'`` or ``'zeros'`` (see the module docstring).
        single_member: The member used by ``'single'`` inference.
        alternating_seed: Seed of the random token attribution of ``'alternating'`` inference.
        num_classes: Classes per head.
        member_blocks: Blocks run once per member (n). ``VisionTransformer``: the last n blocks, default 2. CaiT /
            ConViT: fixed by the architecture (the blocks after the class token joins); ``None`` or that number.
        global_pool: CaiT / ConViT: ``'token'`` only (the heads read the class token). ``VisionTransformer``: passed to
            the backbone (``'token'``, ``'avg'``, ``'map'``, ...; ``None``: the backbone's default).
        **backbone_kwargs: Passed to the backbone (``img_size``, ``patch_size``, ``drop_path_rate``, ``depth``, ...).
    """

    def __init__(
            self,
            backbone: str = 'convit_gpsa5_ca2',
            num_members: int = 2,
            source: str = 'embedding',
            inference: str = 'parallel',
            mixing: str = 'tokens',
            source_init: str = 'trunc_normal',
            single_member: int = 0,
            alternating_seed: int = 0,
            num_classes: int = 1000,
            member_blocks: Optional[int] = None,
            global_pool: Optional[str] = None,
            **backbone_kwargs: Any,
    ):
        super().__init__()
        if source not in SOURCE_KINDS:
            raise ValueError(f'source must be one of {SOURCE_KINDS}, got {source!r}')
        if mixing not in MIXING_MODES:
            raise ValueError(f'mixing must be one of {MIXING_MODES}, got {mixing!r}')
        num_members = check_num_members(num_members)
        if not 0 <= single_member < num_members:
            raise ValueError(f'single_member must be in [0, {num_members}), got {single_member}')
        if member_blocks is not None and (isinstance(member_blocks, bool) or not isinstance(member_blocks, int)
                                          or member_blocks < 1):
            raise ValueError(f'member_blocks must be a positive int, got {member_blocks!r}')
        vit = _is_vision_transformer(backbone)
        if not vit and backbone not in _EXTRA_BACKBONES and not is_model_in_modules(
                backbone.split('.')[0], _CLASS_ATTENTION_MODULES):
            raise ValueError(_unsupported_backbone(backbone))
        if vit:
            if global_pool == '':
                raise ValueError("MixViT heads need pooled features: global_pool='' is not supported; use None (the "
                                 "backbone's pooling), 'token', 'avg', 'avgmax', 'max' or 'map'")
            if global_pool is not None:
                backbone_kwargs['global_pool'] = global_pool
        elif global_pool not in (None, 'token', ''):
            raise ValueError(f"MixViT heads read the class token: global_pool must be 'token', got {global_pool!r}")
        net = create_backbone(backbone, num_classes=0, **backbone_kwargs)
        self.reg_token = self.dist_token = self.head_dist = None
        self.norm_pre = self.fc_norm = nn.Identity()
        self.attn_pool = None
        self.global_pool, self.pool_include_prefix = 'token', False
        self.num_shared_prefix_tokens = 0  # prefix tokens (class, registers, ...) in the shared blocks' token sets
        self.late_class_token = not isinstance(net, VisionTransformer)  # CaiT / ConViT: class token joins the members
        if hasattr(net, 'blocks_token_only'):  # CaiT, convit_gpsa5_ca2: class-attention blocks after `blocks`
            self.blocks_token_only = net.blocks_token_only
            self.num_shared_blocks = len(net.blocks)
            self._check_fixed_member_blocks(backbone, member_blocks, len(net.blocks_token_only), 'depth_token_only')
        elif hasattr(net, 'local_up_to_layer'):  # timm ConViT: the class token joins at `local_up_to_layer`
            self.blocks_token_only = None
            self.num_shared_blocks = net.local_up_to_layer
            self._check_fixed_member_blocks(
                backbone, member_blocks, len(net.blocks) - net.local_up_to_layer, 'local_up_to_layer')
        elif isinstance(net, VisionTransformer):
            self.blocks_token_only = None
            self.num_shared_blocks = len(net.blocks) - self._check_vit(backbone, net, member_blocks)
            self.num_shared_prefix_tokens = net.num_prefix_tokens
            self.reg_token = net.reg_token
            self.dist_token = getattr(net, 'dist_token', None)
            self.norm_pre, self.fc_norm, self.attn_pool = net.norm_pre, net.fc_norm, net.attn_pool
            self.global_pool, self.pool_include_prefix = net.global_pool, net.pool_include_prefix
        else:
            raise ValueError(_unsupported_backbone(backbone, type(net).__name__))
        self.num_member_blocks = (len(self.blocks_token_only) if self.blocks_token_only is not None
                                  else len(net.blocks) - self.num_shared_blocks)
        self.backbone_name = backbone
        self.num_members = num_members
        self.num_classes = num_classes
        self.source = source
        self.mixing = mixing
        self.single_member = single_member
        self.alternating_seed = alternating_seed
        # forward_features is (B, S, 1 + N, D): the feature axis is the last (timm's tests read ``feature_dim``)
        self.num_features = self.head_hidden_size = self.embed_dim = net.embed_dim
        self.feature_dim = -1  # forward_features is channel-last: (B, S, T, D)
        # tokens before the patch tokens in forward_features: CaiT / ConViT's class token, a ViT's prefix tokens
        self.num_prefix_tokens = 1 if self.late_class_token else self.num_shared_prefix_tokens
        self.in_chans = net.patch_embed.proj.in_channels
        self.grad_checkpointing = False

        self.patch_embed = net.patch_embed
        self.pos_embed = getattr(net, 'pos_embed', None)
        self.pos_drop = net.pos_drop
        self.blocks = net.blocks
        self.cls_token = net.cls_token
        self.norm = net.norm
        like = net.patch_embed.proj.weight  # timm's factory may pass device / dtype (a ViT may have no class token)
        dd = dict(device=like.device, dtype=like.dtype)
        self.source_attribution = None if source == 'none' else SourceAttribution(
            net.embed_dim, num_members, encoding=source.endswith('encoding'), init=source_init, **dd)
        self.head_drop = net.head_drop
        self.head = MemberHeads(net.embed_dim, num_classes, num_members, **dd)
        if self.dist_token is not None:  # distilled DeiT: a class-token head and a distillation-token head per member
            self.head_dist = MemberHeads(net.embed_dim, num_classes, num_members, **dd)
        self._init_heads()
        init_gpsa_positions(self, self.patch_embed.num_patches)
        self.inference = inference

    @staticmethod
    def _check_fixed_member_blocks(backbone: str, member_blocks: Optional[int], fixed: int, setting: str) -> None:
        if member_blocks is not None and member_blocks != fixed:
            raise ValueError(f'member_blocks={member_blocks} does not apply to {backbone!r}: its member part is the '
                             f'{fixed} blocks after the class token joins; change the backbone\'s {setting} instead')

    @staticmethod
    def _check_vit(backbone: str, net: VisionTransformer, member_blocks: Optional[int]) -> int:
        """Refuse the ``VisionTransformer`` settings MixViT cannot split; returns the number of member blocks."""
        if net.dynamic_img_size:
            raise ValueError(f'backbone {backbone!r}: dynamic_img_size=True is not supported (fixed token grid)')
        if not isinstance(net.patch_embed, PatchEmbed) or not net.patch_embed.flatten:
            raise ValueError(f'backbone {backbone!r}: MixViT mixes pixel patches and needs a plain PatchEmbed, got '
                             f'{type(net.patch_embed).__name__} (hybrid CNN-stem embeddings are not supported)')
        if not isinstance(net.patch_drop, nn.Identity):
            raise ValueError(f'backbone {backbone!r}: patch_drop_rate > 0 is not supported (it drops tokens the '
                             'mixing masks refer to); use patch_drop_rate=0')
        member_blocks = 2 if member_blocks is None else member_blocks
        if member_blocks > len(net.blocks):
            raise ValueError(f'member_blocks={member_blocks} exceeds the {len(net.blocks)} blocks of {backbone!r}')
        return member_blocks

    def _init_heads(self) -> None:
        if self.num_classes > 0:
            for head in (self.head, self.head_dist):
                if head is not None:
                    trunc_normal_(head.weight, std=.02)  # as the timm backbones initialise their head
                    nn.init.zeros_(head.bias)

    # ---- settings -------------------------------------------------------------------------------------------------
    @property
    def inference(self) -> str:
        """The inference mode of plain ``(B, C, H, W)`` calls."""
        return self._inference

    @inference.setter
    def inference(self, mode: str) -> None:
        if mode not in INFERENCE_MODES:
            raise ValueError(f'inference must be one of {INFERENCE_MODES}, got {mode!r}')
        if self.mixing == 'all_tokens' and mode != 'parallel':
            raise ValueError("mixing='all_tokens' has its own inference (the image as every input): use 'parallel'")
        self._inference = mode

    @property
    def early_source(self) -> bool:
        return self.source.startswith('early_')

    @property
    def patch_size(self) -> Tuple[int, int]:
        return tuple(self.patch_embed.patch_size)

    @property
    def mix_cfg(self) -> Dict[str, Any]:
        """Keyword arguments of the ``Mixer`` that trains this model (binarized CutMix, α = 0.5: thesis A.1.5)."""
        if self.mixing == 'all_tokens':
            return dict(kind='linear', alpha=None, prob=1.0, prob_decay=False)  # κ = 1/M, masks unused
        cfg = dict(kind='cutmix_majority', alpha=0.5, prob=1.0, prob_decay=False, single_source_end=True,
                   patch_size=self.patch_size,
                   # Decision (papers silent on a role flip): MixMo's batch-level swap, input 0 not always the box
                   outside_swap=True)
        if self.num_members > 2:
            cfg['pair_only'] = True  # M > 2 (MixViT paper Fig. 7): two of the M inputs cut-mixed, the others κ = 0
        return cfg

    @property
    def loss_cfg(self) -> Dict[str, Any]:
        """Keyword arguments of ``MimoLoss``: eq. 4.4, ``λ CE_0 + (1 - λ) CE_1`` (r = 1, weights sum to 1)."""
        return dict(root=1.0, weight_sum=1.0)

    def mix_grid(self, img_size: Tuple[int, int]) -> Tuple[int, int]:
        """The token grid for inputs of ``img_size``."""
        (h, w), (ph, pw) = tuple(img_size), self.patch_size
        if h % ph or w % pw:
            raise ValueError(f'image size {(h, w)} is not a multiple of the patch size {(ph, pw)}')
        return h // ph, w // pw

    # ---- timm API -------------------------------------------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        # the source vectors are learnable embeddings like pos_embed: no weight decay (encoders keep it on W)
        return {'pos_embed', 'cls_token', 'reg_token', 'dist_token', 'source_attribution.bias'}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r'^cls_token|reg_token|dist_token|pos_embed|patch_embed|norm_pre',
            blocks=[(r'^blocks\.(\d+)', None), (r'^blocks_token_only\.(\d+)', (10000,)),
                    (r'^source_attribution', (20000,)), (r'^norm|^fc_norm|^attn_pool', (99999,))],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> Union[nn.Module, Tuple[nn.Module, nn.Module]]:
        return self.head if self.head_dist is None else (self.head, self.head_dist)

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """New M heads with ``num_classes`` outputs (0: the heads return the class-token features)."""
        if global_pool not in (None, 'token', ''):
            raise ValueError(f"MixViT heads read the class token: global_pool must be 'token', got {global_pool!r}")
        self.num_classes = num_classes
        like = self.patch_embed.proj.weight  # device / dtype of the model (a ViT may have no class token)
        dd = dict(device=like.device, dtype=like.dtype)
        self.head = MemberHeads(self.embed_dim, num_classes, self.num_members, **dd)
        if self.head_dist is not None:
            self.head_dist = MemberHeads(self.embed_dim, num_classes, self.num_members, **dd)
        self._init_heads()
        for head in (self.head, self.head_dist):
            if head is not None:
                head.train(self.training)

    # ---- building blocks ------------------------------------------------------------------------------------------
    def _check_image_size(self, size: Tuple[int, ...]) -> None:
        expected = (self.in_chans, *self.patch_embed.img_size)
        if tuple(size) != expected:
            raise ValueError(f'expected images of shape (C, H, W) = {expected}, got {tuple(size)}')

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.patch_embed(x)

    def _prefix_tokens(self, batch_size: int) -> List[torch.Tensor]:
        """The tokens a ``VisionTransformer`` puts before the patch tokens, in its order (class, register or
        distillation); empty for CaiT / ConViT, whose class token joins in the member part."""
        if not self.num_shared_prefix_tokens:
            return []
        params = (self.cls_token, self.dist_token if self.dist_token is not None else self.reg_token)
        return [p.expand(batch_size, -1, -1) for p in params if p is not None]

    def _add_pos(self, tokens: torch.Tensor) -> torch.Tensor:
        """Positional embedding and shared prefix tokens: patch tokens ``(B, N, D)`` -> ``(B, P + N, D)``."""
        prefix = self._prefix_tokens(tokens.shape[0])
        if self.pos_embed is not None and self.pos_embed.shape[1] == tokens.shape[1]:
            tokens = tokens + self.pos_embed  # positions of the patch tokens only (CaiT, ConViT, ``no_embed_class``)
            prefix_then_pos = torch.cat(prefix + [tokens], dim=1) if prefix else tokens
        else:
            prefix_then_pos = torch.cat(prefix + [tokens], dim=1)
            if self.pos_embed is not None:  # the positional embedding covers the prefix tokens too (ViT, DeiT)
                prefix_then_pos = prefix_then_pos + self.pos_embed
        return self.norm_pre(self.pos_drop(prefix_then_pos))

    def _shared_blocks(self, tokens: torch.Tensor) -> torch.Tensor:
        shared = self.blocks[:self.num_shared_blocks]
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(shared, tokens)
        for blk in shared:
            tokens = blk(tokens)
        return tokens

    def _member_blocks(self, tokens: torch.Tensor) -> torch.Tensor:
        """Class token and the blocks after it, final norm: ``(B', P + N', D)`` -> ``(B', max(P, 1) + N', D)``."""
        if not self.late_class_token:  # ViT: the prefix tokens (if any) came through the shared blocks
            x = tokens
        else:
            cls_token = self.cls_token.expand(tokens.shape[0], -1, -1)
            if self.blocks_token_only is not None:
                for blk in self.blocks_token_only:
                    cls_token = blk(tokens, cls_token)
                return self.norm(torch.cat((cls_token, tokens), dim=1))
            x = torch.cat((cls_token, tokens), dim=1)
        for blk in self.blocks[self.num_shared_blocks:]:
            x = blk(x)
        return self.norm(x)

    def _inference_masks(self, batch_size: int, num_tokens: int, device: torch.device) -> torch.Tensor:
        """Token masks ``(B, M, N)`` of the single-pass inference modes."""
        num_members = self.num_members
        if self.inference == 'sum':
            # Decision (papers: 'summing', thesis Table 4.6): mean of the M attributed versions = uniform masks 1/M
            return torch.full((batch_size, num_members, num_tokens), 1.0 / num_members, device=device)
        if self.inference == 'alternating':
            generator = torch.Generator().manual_seed(self.alternating_seed)
            owner = torch.randint(num_members, (batch_size, num_tokens), generator=generator).to(device)
        else:  # 'single'
            owner = torch.full((batch_size, num_tokens), self.single_member, device=device, dtype=torch.long)
        members = torch.arange(num_members, device=device)
        return (owner.unsqueeze(1) == members[None, :, None]).float()  # (B, M, N) one-hot; F.one_hot reads to host

    def _attribute_inference(self, tokens: torch.Tensor, num_prefix: int = 0) -> torch.Tensor:
        """Attribution of one token set per image for the inference mode: ``(B, P + N, D)`` -> ``(B·S, P + N, D)``.

        The first ``num_prefix`` tokens (a ViT's class / register / distillation tokens) are not attributed: every
        member's set gets them unchanged.
        """
        if self.source_attribution is None:
            return tokens
        prefix, patches = tokens[:, :num_prefix], tokens[:, num_prefix:]
        if self.inference == 'parallel':
            patches = self.source_attribution.tiled(patches).flatten(0, 1)  # S = M token sets per image (Alg. A.9)
            prefix = prefix.repeat_interleave(self.num_members, dim=0)
        else:
            patches = self.source_attribution(
                patches, self._inference_masks(patches.shape[0], patches.shape[1], patches.device))
        return torch.cat((prefix, patches), dim=1) if num_prefix else patches

    def _attribute_mixed(self, tokens: torch.Tensor, token_masks: torch.Tensor, num_prefix: int = 0) -> torch.Tensor:
        """Training attribution ``t* = t + Σ_m M_m ⊙ s_m(t)`` of the patch tokens after ``num_prefix`` tokens."""
        patches = self.source_attribution(tokens[:, num_prefix:], token_masks)  # thesis eq. 4.5 / 4.6
        return torch.cat((tokens[:, :num_prefix], patches), dim=1) if num_prefix else patches

    def _gpsa_tiled(self, num_tokens: int, num_sets: int) -> Dict[GPSA, torch.Tensor]:
        """Give the shared GPSA layers the token grid's relative positions tiled over ``num_sets`` inputs."""
        saved = {}
        for module in self.blocks[:self.num_shared_blocks].modules():
            if isinstance(module, GPSA):
                saved[module] = module.rel_indices
                module.rel_indices = module.get_rel_indices(num_tokens).repeat(1, num_sets, num_sets, 1)
        return saved

    def _forward_all_tokens(self, xs: torch.Tensor) -> torch.Tensor:
        """The all-tokens ablation on ``(B, M, C, H, W)``: features ``(B, 1, max(P, 1) + M·N, D)``.

        A ViT's prefix tokens join once, before the M·N patch tokens (each input's with its positional embedding).
        """
        batch_size, num_members = xs.shape[:2]
        num_prefix = self.num_shared_prefix_tokens
        tokens = self._embed(xs.flatten(0, 1)).unflatten(0, (batch_size, num_members))  # (B, M, N, D)
        num_patches = tokens.shape[2]
        if self.early_source:
            tokens = self.source_attribution.per_member(tokens)
        tokens = self._add_pos(tokens.flatten(0, 1)).unflatten(0, (batch_size, num_members))  # (B, M, P + N, D)
        tokens = torch.cat((tokens[:, 0, :num_prefix], tokens[:, :, num_prefix:].flatten(1, 2)), dim=1)
        saved = self._gpsa_tiled(num_patches, num_members)
        try:
            tokens = self._shared_blocks(tokens)
        finally:
            for module, rel_indices in saved.items():
                module.rel_indices = rel_indices
        if self.source_attribution is not None and not self.early_source:
            patches = tokens[:, num_prefix:].unflatten(1, (num_members, -1))
            tokens = torch.cat((tokens[:, :num_prefix], self.source_attribution.per_member(patches).flatten(1, 2)), 1)
        return self._member_blocks(tokens).unsqueeze(1)

    def _pooled(self, features: torch.Tensor) -> torch.Tensor:
        """Pre-logit features of every token set: ``(B, S, T, D)`` -> ``(B, S, D)``.

        The class token for CaiT / ConViT; the backbone's pooling (then ``fc_norm``) for a ``VisionTransformer``;
        the mean of the class and distillation tokens for a distilled DeiT (timm's ``pre_logits``).
        """
        if self.head_dist is not None:
            return self.head_drop((features[:, :, 0] + features[:, :, 1]) / 2)
        tokens = features.flatten(0, 1)
        if self.attn_pool is not None:
            pooled = self.attn_pool(tokens if self.pool_include_prefix else tokens[:, self.num_shared_prefix_tokens:])
        else:
            pooled = global_pool_nlc(tokens, pool_type=self.global_pool, num_prefix_tokens=self.num_prefix_tokens,
                                     reduce_include_prefix=self.pool_include_prefix)
        return self.head_drop(self.fc_norm(pooled)).unflatten(0, features.shape[:2])

    def _heads(self, features: torch.Tensor) -> torch.Tensor:
        """All M heads on features ``(B, S, T, D)``: one token set (S = 1) is read by every head, S = M sets by one
        head each -> ``(B, M, K)``."""
        def apply(head: MemberHeads, pooled: torch.Tensor) -> torch.Tensor:
            return head(pooled[:, 0] if pooled.shape[1] == 1 else pooled)

        if self.head_dist is not None:  # distilled DeiT: both heads per member, averaged (timm's inference rule)
            cls_tokens, dist_tokens = self.head_drop(features[:, :, 0]), self.head_drop(features[:, :, 1])
            return (apply(self.head, cls_tokens) + apply(self.head_dist, dist_tokens)) / 2
        return apply(self.head, self._pooled(features))

    # ---- forwards -------------------------------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Inference features: ``(B, C, H, W)`` -> ``(B, S, P + N, D)``, S token sets per image (S = M for
        ``'parallel'`` with source attribution, else 1), after the final norm. CaiT / ConViT: P = 1, the class token
        first; ``VisionTransformer``: its P prefix tokens (class, registers / distillation) first."""
        check_image_batch(x)
        self._check_image_size(x.shape[1:])
        batch_size = x.shape[0]
        if self.mixing == 'all_tokens':
            return self._forward_all_tokens(x.unsqueeze(1).expand(-1, self.num_members, -1, -1, -1))
        tokens = self._embed(x)
        if self.early_source:
            tokens = self._attribute_inference(tokens)
        tokens = self._shared_blocks(self._add_pos(tokens))
        if not self.early_source:
            tokens = self._attribute_inference(tokens, self.num_shared_prefix_tokens)
        return self._member_blocks(tokens).unflatten(0, (batch_size, -1))

    def member_logits(self, features: torch.Tensor) -> torch.Tensor:
        """Member logits from ``forward_features`` output: ``(B, S, P + N, D)`` -> ``(B, M, K)``."""
        logits = self._heads(features)
        if self.inference == 'single' and self.mixing == 'tokens':
            return logits[:, self.single_member:self.single_member + 1].expand(-1, self.num_members, -1)
        return logits

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """The ensemble logits ``(B, K)``, or with ``pre_logits`` the pooled features ``(B, D)``.

        Decision: pre-logits are the MEAN of the S pooled token sets (S = M member sets for parallel inference), as
        timm's DeiT averages its class and distillation tokens, so ``head_hidden_size`` = D whatever M is.
        ``member_pre_logits`` gives the ``(B, S, D)`` features themselves.
        """
        if pre_logits or self.num_classes == 0:
            return self.member_pre_logits(x).mean(dim=1)
        return self.member_logits(x).mean(dim=1)

    def member_pre_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled features of every token set of ``forward_features`` output: ``(B, S, T, D)`` -> ``(B, S, D)``."""
        return self._pooled(x)

    def forward_members(self, x: torch.Tensor) -> torch.Tensor:
        """Every member's logits on the same images: ``(B, C, H, W)`` -> ``(B, M, K)``."""
        return self.member_logits(self.forward_features(x))

    def mix_inputs(self, xs: torch.Tensor, plan: MixPlan) -> torch.Tensor:
        """Mixed patch tokens ``Σ_m M_m ⊙ e(x_m)`` (thesis Alg. A.8, mixing step): ``(B, M, C, H, W)`` -> ``(B, N, D)``.

        The embedding is linear and the masks are constant inside a patch and sum to 1 over members, so
        ``Σ_m M_m ⊙ e(x_m) = e(Σ_m M_m ⊙ x_m)``: the patches are mixed in pixel space (selected, for binary plans)
        and embedded once, exactly, for binary and non-binary masks alike. A patch embedding with a norm is not linear:
        then every input is embedded and the tokens are mixed.
        """
        masks = plan.masks.to(xs.dtype)  # summing to 1 over members: checked where the plan was made (MixPlan)
        if not isinstance(self.patch_embed.norm, nn.Identity):
            batch_size, num_members = xs.shape[:2]
            tokens = self._embed(xs.flatten(0, 1)).unflatten(0, (batch_size, num_members))
            return torch.einsum('bmn,bmnd->bnd', masks.flatten(2), tokens)
        (ph, pw) = self.patch_size
        if plan.binary:
            # the member owning each token, spread over its patch's pixels: (B, 1, C, H, W) indices into the M inputs
            owner = masks.argmax(dim=1).repeat_interleave(ph, dim=1).repeat_interleave(pw, dim=2)
            owner = owner[:, None, None].expand(-1, -1, xs.shape[2], -1, -1)
            mixed = xs.gather(1, owner).squeeze(1)
        else:
            pixel_masks = masks.repeat_interleave(ph, dim=2).repeat_interleave(pw, dim=3)  # (B, M, H, W)
            mixed = torch.einsum('bmhw,bmchw->bchw', pixel_masks, xs)
        return self._embed(mixed)

    def forward_mixed(self, xs: torch.Tensor, plan: MixPlan) -> torch.Tensor:
        """Training forward (Alg. A.8): ``(B, M, C, H, W)`` mixed as ``plan`` says -> ``(B, M, K)``."""
        self._check_image_size(xs.shape[2:])
        plan = plan.to(xs.device)
        if self.mixing == 'all_tokens':
            return self.member_logits(self._forward_all_tokens(xs))
        token_masks = plan.masks.flatten(2)  # (B, M, N)
        tokens = self.mix_inputs(xs, plan)
        if self.early_source:
            tokens = self.source_attribution(tokens, token_masks)
        tokens = self._shared_blocks(self._add_pos(tokens))
        if self.source_attribution is not None and not self.early_source:
            tokens = self._attribute_mixed(tokens, token_masks, self.num_shared_prefix_tokens)
        return self._heads(self._member_blocks(tokens).unsqueeze(1))  # every head d_m reads the one token set


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: MixViT) -> Dict[str, torch.Tensor]:
    """Load a timm CaiT / ConViT / ConVitCA / VisionTransformer checkpoint (or a MixViT one) into ``model``.

    The backbone's head (and a distilled DeiT's ``head_dist``) is copied into every member head, the positional
    embedding resampled to the model's token grid, and missing source parameters set to zero so that the MixViT
    computes exactly the backbone's logits.
    """
    if 'model' in state_dict:
        state_dict = state_dict['model']
    out = {}
    for k, v in state_dict.items():
        k = k.replace('module.', '')
        if k == 'pos_embed' and model.pos_embed is not None and v.shape != model.pos_embed.shape:
            num_prefix = model.pos_embed.shape[1] - model.patch_embed.num_patches  # a ViT's pos_embed covers them
            v = resample_abs_pos_embed(
                v, new_size=model.patch_embed.grid_size, num_prefix_tokens=num_prefix, verbose=True)
        elif k.split('.')[0] in ('head', 'head_dist') and getattr(model, k.split('.')[0]) is not None \
                and model.num_classes > 0:
            member_param = getattr(getattr(model, k.split('.')[0]), k.split('.')[1])
            if v.ndim == member_param.ndim - 1:
                v = v.unsqueeze(0).repeat(model.num_members, *([1] * v.ndim))
        out[k] = v
    if model.source_attribution is not None:
        for k, p in model.source_attribution.state_dict().items():
            out.setdefault(f'source_attribution.{k}', torch.zeros_like(p))
    return out


def _create_mixvit(variant: str, pretrained: bool = False, **kwargs: Any) -> MixViT:
    """Build a MixViT; ``pretrained=True`` loads its cfg's checkpoint (a timm backbone's, or a saved MixViT).

    A cfg without weights refuses ``pretrained=True`` and a failed download says where the checkpoint lives
    (:func:`timm_mimo.pretrained.pretrained_weights`).
    """
    refuse_features_only(variant, kwargs, 'MixViT features are M token sets',
                         'forward_features / forward_head(pre_logits=True)')
    cfg = resolve_pretrained_cfg(variant, kwargs.get('pretrained_cfg'), kwargs.get('pretrained_cfg_overlay'))
    with pretrained_weights(variant, cfg, pretrained):
        return build_model_with_cfg(MixViT, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn, **kwargs)


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    return {
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': None,
        'crop_pct': 1.0, 'interpolation': 'bicubic', 'fixed_input_size': True,
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'patch_embed.proj', 'classifier': 'head', 'license': 'apache-2.0',
        **kwargs,
    }


_CAIT_PAPER = 'arXiv:2103.17239'
_CONVIT_PAPER = 'arXiv:2103.10697'
BACKBONE_TAG_PREFIX = 'backbone_'


def backbone_tag(timm_tag: str) -> str:
    """The tag of a MixViT initialised from a timm backbone checkpoint: ``backbone_<timm tag>`` (e.g.
    ``mixvit_cait_xxs24.backbone_fb_dist_in1k``), so the name says it is the backbone's init, not a trained
    ensemble."""
    return BACKBONE_TAG_PREFIX + timm_tag


def _backbone_entries(variant: str, timm_name: str, **kwargs: Any) -> Dict[str, Dict[str, Any]]:
    """The cfg entry of ``variant`` whose weights are the timm checkpoint ``timm_name`` (``<arch>.<tag>``)."""
    tag = backbone_tag(timm_name.split('.', 1)[1])
    return {f'{variant}.{tag}': _cfg(hf_hub_id=f'timm/{timm_name}', **kwargs)}


# Tags: only where weights exist (timm's backbone checkpoints, tagged backbone_<timm tag>); the papers' ConViT,
# CaiT-M-24 and the generic name have no published weights and so no weight source (not in timm.list_pretrained()).
default_cfgs = generate_default_cfgs({
    # the generic entry takes its backbone's cfg; this one is its default backbone's (convit_gpsa5_ca2)
    'mixvit': _cfg(
        num_classes=100, input_size=(3, 32, 32), mean=CIFAR100_MEAN, std=CIFAR100_STD, paper_ids=_CONVIT_PAPER),
    **_backbone_entries('mixvit_convit_tiny', 'convit_tiny.fb_in1k', crop_pct=0.875, paper_ids=_CONVIT_PAPER),
    **_backbone_entries('mixvit_convit_small', 'convit_small.fb_in1k', crop_pct=0.875, paper_ids=_CONVIT_PAPER),
    **_backbone_entries('mixvit_convit_base', 'convit_base.fb_in1k', crop_pct=0.875, paper_ids=_CONVIT_PAPER),
    **_backbone_entries('mixvit_cait_xxs24', 'cait_xxs24_224.fb_dist_in1k', paper_ids=_CAIT_PAPER),
    **_backbone_entries('mixvit_cait_xs24', 'cait_xs24_384.fb_dist_in1k', input_size=(3, 384, 384),
                        paper_ids=_CAIT_PAPER),
    **_backbone_entries('mixvit_cait_s24', 'cait_s24_224.fb_dist_in1k', paper_ids=_CAIT_PAPER),
    'mixvit_cait_m24': _cfg(paper_ids=_CAIT_PAPER),
    'mixvit_convit_gpsa5_ca2': _cfg(
        num_classes=100, input_size=(3, 32, 32), mean=CIFAR100_MEAN, std=CIFAR100_STD, paper_ids=_CONVIT_PAPER),
    'mixvit_convit_gpsa5_ca2_64': _cfg(
        num_classes=200, input_size=(3, 64, 64), mean=TINY_IMAGENET_MEAN, std=TINY_IMAGENET_STD,
        paper_ids=_CONVIT_PAPER),
    'mixvit_convit_gpsa5_ca2_224': _cfg(num_classes=100, crop_pct=0.875, paper_ids=_CONVIT_PAPER),
})


def _backbone_cfg(backbone: str) -> Optional[Dict[str, Any]]:
    """The pretrained cfg of a timm backbone, as the generic MixViT's cfg (same weights, input size, normalisation).

    ``architecture`` is ``'mixvit'`` (what config.json must name to rebuild this model), the tag says the weights
    are the backbone's (``backbone_<timm tag>``).
    """
    if backbone in _EXTRA_BACKBONES:
        return _cfg(architecture='mixvit', paper_ids=_CAIT_PAPER)
    cfg = get_pretrained_cfg(backbone)
    if cfg is None:
        return None
    tag = backbone_tag(cfg.tag) if cfg.tag and has_pretrained_source(cfg) else None
    # the architecture is the generic entry (a saved model's config.json rebuilds a MixViT, not the bare backbone)
    return {**cfg.to_dict(), 'architecture': 'mixvit', 'tag': tag, 'first_conv': 'patch_embed.proj',
            'classifier': _classifier_keys(cfg.classifier)}


def _classifier_keys(backbone_classifier: Any) -> Any:
    """MixViT's classifier key(s): ``head``, plus ``head_dist`` for a distilled DeiT backbone."""
    return ('head', 'head_dist') if isinstance(backbone_classifier, (tuple, list)) else 'head'


@register_model
def mixvit(pretrained: bool = False, backbone: str = 'convit_gpsa5_ca2', **kwargs: Any) -> MixViT:
    """MixViT on any supported timm backbone: ``timm.create_model('mixvit', backbone='cait_xxs24_224', ...)``.

    Input size, normalisation and pretrained weights come from the backbone's pretrained cfg.
    """
    if kwargs.get('pretrained_cfg') is None:
        kwargs['pretrained_cfg'] = _backbone_cfg(backbone)
    return _create_mixvit('mixvit', pretrained, backbone=backbone, **kwargs)


def _named(variant: str, backbone: str, pretrained: bool, kwargs: Dict[str, Any]) -> MixViT:
    return _create_mixvit(variant, pretrained, **dict(dict(backbone=backbone), **kwargs))  # config.json may name it


@register_model
def mixvit_convit_tiny(pretrained: bool = False, **kwargs: Any) -> MixViT:
    """MixViT on timm's ConViT-Ti (224 px): the 2 blocks after ``local_up_to_layer=10`` run per member."""
    return _named('mixvit_convit_tiny', 'convit_tiny', pretrained, kwargs)


@register_model
def mixvit_convit_small(pretrained: bool = False, **kwargs: Any) -> MixViT:
    """MixViT on timm's ConViT-S (224 px)."""
    return _named('mixvit_convit_small', 'convit_small', pretrained, kwargs)


@register_model
def mixvit_convit_base(pretrained: bool = False, **kwargs: Any) -> MixViT:
    """MixViT on timm's ConViT-B (224 px)."""
    return _named('mixvit_convit_base', 'convit_base', pretrained, kwargs)


@register_model
def mixvit_cait_xxs24(pretrained: bool = False, **kwargs: Any) -> MixViT:
    """MixViT on CaiT-XXS-24 (``cait_xxs24_224``)."""
    return _named('mixvit_cait_xxs24', 'cait_xxs24_224', pretrained, kwargs)


@register_model
def mixvit_cait_xs24(pretrained: bool = False, **kwargs: Any) -> MixViT:
    """MixViT on CaiT-XS-24 (``cait_xs24_384``, 384 px)."""
    return _named('mixvit_cait_xs24', 'cait_xs24_384', pretrained, kwargs)


@register_model
def mixvit_cait_s24(pretrained: bool = False, **kwargs: Any) -> MixViT:
    """MixViT on CaiT-S-24 (``cait_s24_224``)."""
    return _named('mixvit_cait_s24', 'cait_s24_224', pretrained, kwargs)


@register_model
def mixvit_cait_m24(pretrained: bool = False, **kwargs: Any) -> MixViT:
    """MixViT on CaiT-M-24 (d 768, 16 heads, 24 + 2 blocks, 224 px; no timm checkpoint exists)."""
    return _named('mixvit_cait_m24', 'cait_m24', pretrained, kwargs)


@register_model
def mixvit_convit_gpsa5_ca2(pretrained: bool = False, **kwargs: Any) -> MixViT:
    """MixViT on the papers' ConViT, CIFAR setting (32 px, patch 4)."""
    return _named('mixvit_convit_gpsa5_ca2', 'convit_gpsa5_ca2', pretrained, kwargs)


@register_model
def mixvit_convit_gpsa5_ca2_64(pretrained: bool = False, **kwargs: Any) -> MixViT:
    """MixViT on the papers' ConViT, Tiny ImageNet setting (64 px, patch 8)."""
    return _named('mixvit_convit_gpsa5_ca2_64', 'convit_gpsa5_ca2_64', pretrained, kwargs)


@register_model
def mixvit_convit_gpsa5_ca2_224(pretrained: bool = False, **kwargs: Any) -> MixViT:
    """MixViT on the papers' ConViT, ImageNet-100 setting (224 px, patch 16)."""
    return _named('mixvit_convit_gpsa5_ca2_224', 'convit_gpsa5_ca2_224', pretrained, kwargs)


# ---- MixViT on timm VisionTransformer backbones --------------------------------------------------------------------
# Named MixViTs on common ViT / DeiT checkpoints: the last ``member_blocks`` (default 2) of the backbone's blocks
# run per member. Tags follow ``backbone_<timm tag>``: every ImageNet-1k classifier checkpoint of the backbone (same
# hub file, input size and normalisation); ``pretrained=True`` copies the backbone's head into every member head and
# zeroes the source parameters, so each member starts as the backbone.
_VIT_BACKBONES: Dict[str, str] = {
    'mixvit_deit_tiny_patch16_224': 'deit_tiny_patch16_224',
    'mixvit_deit_small_patch16_224': 'deit_small_patch16_224',
    'mixvit_deit3_small_patch16_224': 'deit3_small_patch16_224',
    'mixvit_vit_base_patch16_224': 'vit_base_patch16_224',
    'mixvit_vit_medium_patch16_reg4_gap_256': 'vit_medium_patch16_reg4_gap_256',
}


def _backbone_checkpoint_cfgs(variant: str, backbone: str) -> Dict[str, Dict[str, Any]]:
    """``{variant}.backbone_{tag}`` cfgs for the backbone's 1000-class checkpoints, its default tag first."""
    default_tag = get_pretrained_cfg(backbone).tag
    tags = sorted((name.split('.', 1)[1] for name in list_pretrained(f'{backbone}.*')), key=lambda t: t != default_tag)
    cfgs = {}
    for tag in tags:
        cfg = get_pretrained_cfg(f'{backbone}.{tag}')
        if cfg.num_classes == 1000 and cfg.hf_hub_id:
            cfg = {k: v for k, v in cfg.to_dict().items() if k not in ('url', 'architecture', 'tag')}
            cfgs[f'{variant}.backbone_{tag}'] = {**cfg, 'classifier': _classifier_keys(cfg['classifier'])}
    return cfgs


default_cfgs.update(generate_default_cfgs({
    name: cfg for variant, backbone in _VIT_BACKBONES.items()
    for name, cfg in _backbone_checkpoint_cfgs(variant, backbone).items()
}))


@register_model
def mixvit_deit_tiny_patch16_224(pretrained: bool = False, **kwargs: Any) -> MixViT:
    """MixViT on DeiT-Ti/16 (224 px): 10 shared blocks, the last 2 per member (``member_blocks``)."""
    return _named('mixvit_deit_tiny_patch16_224', 'deit_tiny_patch16_224', pretrained, kwargs)


@register_model
def mixvit_deit_small_patch16_224(pretrained: bool = False, **kwargs: Any) -> MixViT:
    """MixViT on DeiT-S/16 (224 px): 10 shared blocks, the last 2 per member (``member_blocks``)."""
    return _named('mixvit_deit_small_patch16_224', 'deit_small_patch16_224', pretrained, kwargs)


@register_model
def mixvit_deit3_small_patch16_224(pretrained: bool = False, **kwargs: Any) -> MixViT:
    """MixViT on DeiT III-S/16 (224 px; LayerScale, positions on patch tokens only)."""
    return _named('mixvit_deit3_small_patch16_224', 'deit3_small_patch16_224', pretrained, kwargs)


@register_model
def mixvit_vit_base_patch16_224(pretrained: bool = False, **kwargs: Any) -> MixViT:
    """MixViT on ViT-B/16 (224 px): 10 shared blocks, the last 2 per member (``member_blocks``)."""
    return _named('mixvit_vit_base_patch16_224', 'vit_base_patch16_224', pretrained, kwargs)


@register_model
def mixvit_vit_medium_patch16_reg4_gap_256(pretrained: bool = False, **kwargs: Any) -> MixViT:
    """MixViT on ViT-M/16 with 4 registers, no class token, average pooling (256 px)."""
    return _named('mixvit_vit_medium_patch16_reg4_gap_256', 'vit_medium_patch16_reg4_gap_256', pretrained, kwargs)
