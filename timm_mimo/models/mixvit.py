"""MixViT: MIMO vision transformers with source attribution (SPEC §1.10, §2.4–2.6; Alg. A.8 / A.9, T:2685–2690).

A MixViT wraps a timm transformer whose class token joins late and splits it in two:

* shared part: the single patch embedding ``e``, the positional embedding and the L feature blocks (CaiT's
  ``blocks``; ConViT's ``blocks[:local_up_to_layer]``; the papers' ConViT's 5 GPSA ``blocks``);
* member part: source attribution ``s_m``, the class token and the blocks after it (CaiT / papers' ConViT:
  the class-attention ``blocks_token_only``; timm's ConViT: the self-attention ``blocks[local_up_to_layer:]``),
  the final norm and M dense heads ``d_m``.

Training (Alg. A.8): the M inputs are mixed patch by patch as the plan's token masks say, embedded once, run through
the shared blocks once, attributed to their sources ``t* = t + Σ_m M_m ⊙ s_m(t)`` (eq. 4.5 / 4.6), and ONE class
token pass reads the mixed token set; every head ``d_m`` reads that class token. Inference (Alg. A.9, ``'parallel'``):
the shared blocks run once on the B images, the attribution is tiled into M token sets (set m: every token attributed
to member m) and the member blocks run on the M·B sets as one batch; head m reads class token m.

Decisions on SPEC §1.10 [AMBIG] items (each tested in tests/test_mixvit.py):
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
"""
from typing import Any, Dict, Optional, Set, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import resample_abs_pos_embed, trunc_normal_
from timm.models import (
    build_model_with_cfg,
    checkpoint_seq,
    create_model,
    generate_default_cfgs,
    register_model,
    resolve_pretrained_cfg,
)
from timm.models._registry import get_pretrained_cfg
from timm.models.cait import Cait
from timm.models.convit import GPSA

from timm_mimo.hub import has_pretrained_source, pretrained_weights
from timm_mimo.mixing import MixPlan
from timm_mimo.models._contract import MimoContract, check_image_batch, check_num_members
from timm_mimo.models._heads import MemberHeads
from timm_mimo.models.convit_ca import CIFAR100_MEAN, CIFAR100_STD, TINY_IMAGENET_MEAN, TINY_IMAGENET_STD

__all__ = ['MixViT', 'SourceAttribution', 'create_backbone', 'SOURCE_KINDS', 'INFERENCE_MODES', 'MIXING_MODES']

SOURCE_KINDS = ('embedding', 'encoding', 'none', 'early_embedding', 'early_encoding')
INFERENCE_MODES = ('parallel', 'sum', 'alternating', 'single')
MIXING_MODES = ('tokens', 'all_tokens')

# CaiT-M-24 is not registered in timm (it has M-36 / M-48): the M width and heads at depth 24. LayerScale init follows
# CaiT's depth rule as timm applies it (1e-5 for every 24-block CaiT, 1e-6 from 36 blocks on).
_EXTRA_BACKBONES: Dict[str, Dict[str, Any]] = {
    'cait_m24': dict(img_size=224, patch_size=16, embed_dim=768, depth=24, num_heads=16, init_values=1e-5),
}


class SourceAttribution(nn.Module):
    """Source attribution ``t* = t + Σ_m M_m ⊙ s_m(t)`` (SPEC §1.10 eq. 4.5 / 4.6).

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
            return tokens + torch.einsum('bmn,md->bnd', masks.to(tokens.dtype), self.bias)  # SPEC §1.10 eq. 4.6
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


class MixViT(MimoContract, nn.Module):
    """MixViT on a timm CaiT, ConViT or the papers' ConViT (``convit_gpsa5_ca2``).

    Args:
        backbone: timm model name of the wrapped transformer (``cait_*``, ``convit_*``, ``convit_gpsa5_ca2*``) or
            ``'cait_m24'``.
        num_members: M.
        source: ``'embedding'`` (default), ``'encoding'``, ``'none'``, ``'early_embedding'``, ``'early_encoding'``.
        inference: ``'parallel'`` (default), ``'sum'``, ``'alternating'``, ``'single'``; settable later.
        mixing: ``'tokens'`` (binarized CutMix token selection) or ``'all_tokens'`` (the ablation).
        source_init: ``'trunc_normal'`` or ``'zeros'`` (see the module docstring).
        single_member: The member used by ``'single'`` inference.
        alternating_seed: Seed of the random token attribution of ``'alternating'`` inference.
        num_classes: Classes per head.
        global_pool: Only ``'token'`` (the heads read the class token).
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
            global_pool: str = 'token',
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
        if global_pool not in ('token', ''):
            raise ValueError(f"MixViT heads read the class token: global_pool must be 'token', got {global_pool!r}")
        net = create_backbone(backbone, num_classes=0, **backbone_kwargs)
        if hasattr(net, 'blocks_token_only'):  # CaiT, convit_gpsa5_ca2: class-attention blocks after `blocks`
            self.blocks_token_only = net.blocks_token_only
            self.num_shared_blocks = len(net.blocks)
        elif hasattr(net, 'local_up_to_layer'):  # timm ConViT: the class token joins at `local_up_to_layer`
            self.blocks_token_only = None
            self.num_shared_blocks = net.local_up_to_layer
        else:
            raise ValueError(f'backbone {backbone!r} is neither a CaiT-like nor a ConViT-like timm transformer')
        self.backbone_name = backbone
        self.num_members = num_members
        self.num_classes = num_classes
        self.global_pool = 'token'
        self.source = source
        self.mixing = mixing
        self.single_member = single_member
        self.alternating_seed = alternating_seed
        # forward_features is (B, S, 1 + N, D): the feature axis is the last (timm's tests read ``feature_dim``)
        self.num_features = self.head_hidden_size = self.embed_dim = net.embed_dim
        self.feature_dim = -1
        self.num_prefix_tokens = 1
        self.in_chans = net.patch_embed.proj.in_channels
        self.grad_checkpointing = False

        self.patch_embed = net.patch_embed
        self.pos_embed = getattr(net, 'pos_embed', None)
        self.pos_drop = net.pos_drop
        self.blocks = net.blocks
        self.cls_token = net.cls_token
        self.norm = net.norm
        dd = dict(device=net.cls_token.device, dtype=net.cls_token.dtype)  # timm's factory may pass device / dtype
        self.source_attribution = None if source == 'none' else SourceAttribution(
            net.embed_dim, num_members, encoding=source.endswith('encoding'), init=source_init, **dd)
        self.head_drop = net.head_drop
        self.head = MemberHeads(net.embed_dim, num_classes, num_members, **dd)
        self._init_heads()
        self.inference = inference

    def _init_heads(self) -> None:
        if self.num_classes > 0:
            trunc_normal_(self.head.weight, std=.02)  # as the timm backbones initialise their head
            nn.init.zeros_(self.head.bias)

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
        """Keyword arguments of the ``Mixer`` that trains this model (SPEC §1.10, §3.4)."""
        if self.mixing == 'all_tokens':
            return dict(kind='linear', alpha=None, prob=1.0, prob_decay=False)  # κ = 1/M, masks unused
        cfg = dict(kind='cutmix_majority', alpha=0.5, prob=1.0, prob_decay=False, single_source_end=True,
                   patch_size=self.patch_size,
                   outside_swap=True)  # SPEC §1.10 [AMBIG] role flip: MixMo's batch-level swap, input 0 not always box
        if self.num_members > 2:
            cfg['pair_only'] = True  # SPEC §1.10 M > 2: two of the M inputs cut-mixed, the others κ = 0
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
        return {'pos_embed', 'cls_token', 'source_attribution.bias'}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r'^cls_token|pos_embed|patch_embed',
            blocks=[(r'^blocks\.(\d+)', None), (r'^blocks_token_only\.(\d+)', (10000,)),
                    (r'^source_attribution', (20000,)), (r'^norm', (99999,))],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """New M heads with ``num_classes`` outputs (0: the heads return the class-token features)."""
        if global_pool not in (None, 'token', ''):
            raise ValueError(f"MixViT heads read the class token: global_pool must be 'token', got {global_pool!r}")
        self.num_classes = num_classes
        self.head = MemberHeads(self.embed_dim, num_classes, self.num_members, device=self.cls_token.device,
                                dtype=self.cls_token.dtype).train(self.training)
        self._init_heads()

    # ---- building blocks ------------------------------------------------------------------------------------------
    def _check_image_size(self, size: Tuple[int, ...]) -> None:
        expected = (self.in_chans, *self.patch_embed.img_size)
        if tuple(size) != expected:
            raise ValueError(f'expected images of shape (C, H, W) = {expected}, got {tuple(size)}')

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.patch_embed(x)

    def _add_pos(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.pos_drop(tokens if self.pos_embed is None else tokens + self.pos_embed)

    def _shared_blocks(self, tokens: torch.Tensor) -> torch.Tensor:
        shared = self.blocks[:self.num_shared_blocks]
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(shared, tokens)
        for blk in shared:
            tokens = blk(tokens)
        return tokens

    def _member_blocks(self, tokens: torch.Tensor) -> torch.Tensor:
        """Class token and the blocks after it, final norm: ``(B', N', D)`` -> ``(B', 1 + N', D)``."""
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
            # SPEC §1.10 [AMBIG] sum inference: mean of the M attributed versions = uniform masks 1/M
            return torch.full((batch_size, num_members, num_tokens), 1.0 / num_members, device=device)
        if self.inference == 'alternating':
            generator = torch.Generator().manual_seed(self.alternating_seed)
            owner = torch.randint(num_members, (batch_size, num_tokens), generator=generator).to(device)
        else:  # 'single'
            owner = torch.full((batch_size, num_tokens), self.single_member, device=device, dtype=torch.long)
        return F.one_hot(owner, num_members).permute(0, 2, 1).float()

    def _attribute_inference(self, tokens: torch.Tensor) -> torch.Tensor:
        """Attribution of one token set per image for the inference mode: ``(B, N, D)`` -> ``(B·S, N, D)``."""
        if self.source_attribution is None:
            return tokens
        if self.inference == 'parallel':
            return self.source_attribution.tiled(tokens).flatten(0, 1)  # S = M token sets per image (Alg. A.9)
        masks = self._inference_masks(tokens.shape[0], tokens.shape[1], tokens.device)
        return self.source_attribution(tokens, masks)

    def _gpsa_tiled(self, tokens: torch.Tensor, num_sets: int) -> Dict[GPSA, torch.Tensor]:
        """Give the shared GPSA layers the token grid's relative positions tiled over ``num_sets`` inputs."""
        saved = {}
        num_tokens = tokens.shape[1] // num_sets
        for module in self.blocks[:self.num_shared_blocks].modules():
            if isinstance(module, GPSA):
                saved[module] = module.rel_indices
                module.rel_indices = module.get_rel_indices(num_tokens).repeat(1, num_sets, num_sets, 1)
        return saved

    def _forward_all_tokens(self, xs: torch.Tensor) -> torch.Tensor:
        """The all-tokens ablation on ``(B, M, C, H, W)``: class-token features ``(B, 1, 1 + M·N, D)``."""
        batch_size, num_members = xs.shape[:2]
        tokens = self._embed(xs.flatten(0, 1)).unflatten(0, (batch_size, num_members))  # (B, M, N, D)
        if self.early_source:
            tokens = self.source_attribution.per_member(tokens)
        tokens = self._add_pos(tokens.flatten(0, 1)).unflatten(0, (batch_size, num_members))
        tokens = tokens.flatten(1, 2)  # (B, M·N, D)
        saved = self._gpsa_tiled(tokens, num_members)
        try:
            tokens = self._shared_blocks(tokens)
        finally:
            for module, rel_indices in saved.items():
                module.rel_indices = rel_indices
        if self.source_attribution is not None and not self.early_source:
            tokens = self.source_attribution.per_member(tokens.unflatten(1, (num_members, -1))).flatten(1, 2)
        return self._member_blocks(tokens).unsqueeze(1)

    # ---- forwards -------------------------------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Inference features: ``(B, C, H, W)`` -> ``(B, S, 1 + N, D)``, S token sets per image (S = M for
        ``'parallel'`` with source attribution, else 1), class token first, after the final norm."""
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
            tokens = self._attribute_inference(tokens)
        return self._member_blocks(tokens).unflatten(0, (batch_size, -1))

    def member_logits(self, features: torch.Tensor) -> torch.Tensor:
        """Member logits from ``forward_features`` output: ``(B, S, 1 + N, D)`` -> ``(B, M, K)``."""
        cls_tokens = self.head_drop(features[:, :, 0])
        if cls_tokens.shape[1] == 1:
            cls_tokens = cls_tokens[:, 0]  # one class token read by every head (training, sum, alternating)
        if self.inference == 'single' and self.mixing == 'tokens':
            logits = self.head(cls_tokens)[:, self.single_member]
            return logits.unsqueeze(1).expand(-1, self.num_members, -1)
        return self.head(cls_tokens)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """The ensemble logits ``(B, K)``, or with ``pre_logits`` the class-token features ``(B, D)``.

        Decision: pre-logits are the MEAN of the S class tokens (S = M member tokens for parallel inference), as
        timm's DeiT averages its class and distillation tokens, so ``head_hidden_size`` = D whatever M is.
        ``member_pre_logits`` gives the ``(B, S, D)`` tokens themselves.
        """
        if pre_logits or self.num_classes == 0:
            return self.member_pre_logits(x).mean(dim=1)
        return self.member_logits(x).mean(dim=1)

    def member_pre_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The class tokens of ``forward_features`` output: ``(B, S, 1 + N, D)`` -> ``(B, S, D)``."""
        return self.head_drop(x[:, :, 0])

    def forward_members(self, x: torch.Tensor) -> torch.Tensor:
        """Every member's logits on the same images: ``(B, C, H, W)`` -> ``(B, M, K)``."""
        return self.member_logits(self.forward_features(x))

    def mix_inputs(self, xs: torch.Tensor, plan: MixPlan) -> torch.Tensor:
        """Mixed patch tokens ``Σ_m M_m ⊙ e(x_m)`` (SPEC §1.10 step 2): ``(B, M, C, H, W)`` -> ``(B, N, D)``.

        The embedding is linear and the masks are constant inside a patch and sum to 1 over members, so
        ``Σ_m M_m ⊙ e(x_m) = e(Σ_m M_m ⊙ x_m)``: the patches are mixed in pixel space (selected, for binary plans)
        and embedded once, exactly, for binary and non-binary masks alike. A patch embedding with a norm is not linear:
        then every input is embedded and the tokens are mixed.
        """
        masks = plan.masks.to(xs.dtype)
        if not torch.allclose(masks.sum(dim=1), torch.ones_like(masks[:, 0])):
            raise ValueError('MixPlan masks must sum to 1 over members at every token')
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
            tokens = self.source_attribution(tokens, token_masks)  # SPEC §1.10 t* = t + Σ_m M_m ⊙ s_m(t)
        cls_token = self.head_drop(self._member_blocks(tokens)[:, 0])
        return self.head(cls_token)  # every head d_m reads the one class token


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: MixViT) -> Dict[str, torch.Tensor]:
    """Load a timm CaiT / ConViT / ConVitCA checkpoint (or a MixViT one) into ``model``.

    The backbone's head is copied into every member head, the positional embedding resampled to the model's token
    grid, and missing source parameters set to zero so that the MixViT computes exactly the backbone's logits.
    """
    if 'model' in state_dict:
        state_dict = state_dict['model']
    out = {}
    for k, v in state_dict.items():
        k = k.replace('module.', '')
        if k == 'pos_embed' and model.pos_embed is not None and v.shape != model.pos_embed.shape:
            v = resample_abs_pos_embed(v, new_size=model.patch_embed.grid_size, num_prefix_tokens=0, verbose=True)
        elif k in ('head.weight', 'head.bias') and model.num_classes > 0 and \
                v.ndim == getattr(model.head, k.split('.')[1]).ndim - 1:
            v = v.unsqueeze(0).repeat(model.num_members, *([1] * v.ndim))
        out[k] = v
    if model.source_attribution is not None:
        for k, p in model.source_attribution.state_dict().items():
            out.setdefault(f'source_attribution.{k}', torch.zeros_like(p))
    return out


def _create_mixvit(variant: str, pretrained: bool = False, **kwargs: Any) -> MixViT:
    """Build a MixViT; ``pretrained=True`` loads its cfg's checkpoint (a timm backbone's, or a saved MixViT).

    A cfg without weights refuses ``pretrained=True`` and a failed download says where the checkpoint lives
    (:func:`timm_mimo.hub.pretrained_weights`).
    """
    if kwargs.get('features_only', False):
        raise RuntimeError(f'{variant}: features_only is not supported by MixViT (its features are M token sets); '
                           'use forward_features / forward_head(pre_logits=True)')
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
    return {**cfg.to_dict(), 'architecture': 'mixvit', 'tag': tag, 'first_conv': 'patch_embed.proj',
            'classifier': 'head'}


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
