"""Mixing plans for MIMO training: masks, mixing ratios and their schedules.

Randomness lives here, outside the models: a :class:`Mixer` samples a :class:`MixPlan` from the batch size,
the number of members M, the model's mixing grid and the training progress in [0, 1]. The model is deterministic given
``(xs, plan)``, so tests build plans by hand (``MixPlan.from_masks``) and check the arithmetic exactly.
"""
import math
from dataclasses import dataclass, field, replace
from typing import Callable, Optional, Tuple, Union

import torch
import torch.nn.functional as F

__all__ = [
    'MixPlan', 'Mixer', 'MASK_KINDS', 'progress', 'mix_probability', 'single_source_probability', 'sample_gamma',
    'sample_mixing_ratios', 'cutmix_box_masks', 'concat_masks', 'patchup_masks', 'fmix_masks', 'cowmask_masks',
    'majority_vote_tokens', 'majority_cutmix_masks', 'cut_in_mix_masks', 'swap_member_roles', 'cutmix_box_bounds',
    'random_cutmix_masks', 'patchup_block_size', 'fadeout_relax', 'members_channels_last', 'members_elementwise',
    'channels_last_members',
]

MASK_KINDS = ('linear', 'cutmix', 'hconcat', 'vconcat', 'patchup', 'fmix', 'cowmask', 'cutmix_majority')


@dataclass
class MixPlan:
    """How the M inputs of one batch are mixed.

    Attributes:
        masks: ``(B, M, H, W)`` float masks on the model's mixing grid; they sum to 1 over members at every position.
            Linear mixing (MIMO summing, Linear-MixMo) is a constant mask per sample, cut-like kinds are 0/1.
        kappas: ``(B, M)`` mixing ratios: each member's mask mean (re-measured from the masks), summing to 1.
        binary: True when every mask value is 0 or 1 (cut-like batch), False for a linear batch.
        unmix_relax: MixShare fadeout strength r in [0, 1], a 0-d float32 tensor that travels with the masks (it
            changes every step: as a tensor it is a graph input of a compiled step on the plan's device, not a
            Python constant that recompiles the step, nor a CPU scalar that keeps CUDA graphs off). A model that
            unmixes its final features uses the mask ``mask + r (1 - mask)`` instead of ``mask`` (0: full unmixing,
            1: none). Models without unmixing ignore it (it is 0 unless the Mixer has ``fadeout_epochs``).
        unmixes: ``r < 1``, known where the plan is drawn: whether unmixing still does anything (a host bool, so a
            model checks it without reading ``unmix_relax`` back).
    """
    masks: torch.Tensor
    kappas: torch.Tensor
    binary: bool
    unmix_relax: torch.Tensor = field(default_factory=lambda: torch.zeros(()))
    unmixes: bool = True

    def __post_init__(self):
        if isinstance(self.unmix_relax, (int, float)):  # a hand-set number: checked and held as a tensor
            relax = float(self.unmix_relax)
            if not 0.0 <= relax <= 1.0:
                raise ValueError(f'MixPlan unmix_relax (fadeout r) must lie in [0, 1], got {relax!r}')
            self.unmix_relax = torch.tensor(relax, dtype=torch.float32)
            self.unmixes = relax < 1.0

    def with_relax(self, relax: float) -> 'MixPlan':
        """This plan with fadeout strength ``relax`` (r in [0, 1], a host float where plans are drawn)."""
        return replace(self, unmix_relax=float(relax))

    @classmethod
    def from_masks(cls, masks: torch.Tensor) -> 'MixPlan':
        """Build a plan from ``(B, M, H, W)`` masks; κ is the mask mean, ``binary`` is read off the values.

        The values are checked here (non-negative, summing to 1 over members), where plans are made (on the CPU, in
        the training loader's workers), so that the models and the loss never read a tensor back to the host.
        """
        if masks.ndim != 4:
            raise ValueError(f'expected masks of shape (B, M, H, W), got {tuple(masks.shape)}')
        masks = masks.float()
        _check_member_shares(masks, 'masks', 'at every position')
        binary = bool(((masks == 0) | (masks == 1)).all())
        return cls(masks=masks, kappas=masks.mean(dim=(2, 3)), binary=binary)

    @classmethod
    def linear(cls, kappas: torch.Tensor, grid: Tuple[int, int]) -> 'MixPlan':
        """A linear plan: member m of sample b weighs ``kappas[b, m]`` everywhere on ``grid``."""
        if kappas.ndim != 2:
            raise ValueError(f'expected kappas of shape (B, M), got {tuple(kappas.shape)}')
        kappas = kappas.float()
        _check_member_shares(kappas, 'kappas', 'for every sample')
        masks = kappas[:, :, None, None].expand(-1, -1, *grid)
        return cls(masks=masks, kappas=kappas, binary=bool(((kappas == 0) | (kappas == 1)).all()))

    @property
    def batch_size(self) -> int:
        return self.masks.shape[0]

    @property
    def num_members(self) -> int:
        return self.masks.shape[1]

    @property
    def grid(self) -> Tuple[int, int]:
        return tuple(self.masks.shape[2:])

    def to(self, device: torch.device, non_blocking: bool = False) -> 'MixPlan':
        """The plan on ``device`` (the same object when it is there already: no copy, no host work)."""
        device = torch.device(device)
        if all(t.device == device for t in (self.masks, self.kappas, self.unmix_relax)):
            return self
        return MixPlan(masks=self.masks.to(device, non_blocking=non_blocking),
                       kappas=self.kappas.to(device, non_blocking=non_blocking), binary=self.binary,
                       unmix_relax=self.unmix_relax.to(device, non_blocking=non_blocking), unmixes=self.unmixes)

    def pin_memory(self) -> 'MixPlan':
        """Page-locked, contiguous copies of the masks, ratios and fadeout strength (asynchronous copies to a GPU)."""
        return MixPlan(masks=self.masks.contiguous().pin_memory(), kappas=self.kappas.contiguous().pin_memory(),
                       binary=self.binary, unmix_relax=self.unmix_relax.pin_memory(), unmixes=self.unmixes)

    def check(self, batch_size: int, num_members: int, grid: Tuple[int, int]) -> None:
        """Raise ``ValueError`` naming the expected shape unless this plan fits the batch and the model's grid."""
        expected = (batch_size, num_members, *grid)
        if tuple(self.masks.shape) != expected:
            raise ValueError(
                f'MixPlan masks have shape {tuple(self.masks.shape)}, expected (B, M, H, W) = {expected} '
                f'for a batch of {batch_size} with {num_members} members on a {grid[0]}x{grid[1]} mixing grid')
        if tuple(self.kappas.shape) != (batch_size, num_members):
            raise ValueError(f'MixPlan kappas have shape {tuple(self.kappas.shape)}, expected (B, M) = '
                             f'{(batch_size, num_members)}')

    def upsample(self, size: Tuple[int, int]) -> torch.Tensor:
        """The masks resized to ``size`` by nearest neighbour (``(B, M, *size)``), e.g. to pixel resolution."""
        if tuple(size) == self.grid:
            return self.masks
        return torch.nn.functional.interpolate(self.masks, size=tuple(size), mode='nearest')



def _check_member_shares(shares: torch.Tensor, name: str, where: str) -> None:
    """``ValueError`` unless ``shares`` (members on dim 1) are non-negative and sum to 1 over members."""
    if (shares < 0).any():
        raise ValueError(f'MixPlan {name} must be non-negative (mixing shares), got a minimum of {shares.min():g}')
    if not torch.allclose(shares.sum(dim=1), torch.ones((), dtype=shares.dtype, device=shares.device), atol=1e-5):
        raise ValueError(f'MixPlan {name} must sum to 1 over members {where}')


# --------------------------------------------------------------------------------------------------------------------
# Memory layout of member batches: a (B, M, C, H, W) batch whose packed (B, M·C, H, W) view is channels-last
# --------------------------------------------------------------------------------------------------------------------

# (B, M, C, H, W) <-> (B, H, W, M, C): the permutation is its own inverse
_MEMBERS_LAST = (0, 3, 4, 1, 2)


def members_channels_last(xs: torch.Tensor) -> bool:
    """Whether the ``(B, M, C, H, W)`` batch ``xs`` is stored as ``(B, H, W, M, C)``, so that its packed
    ``(B, M·C, H, W)`` view (what the MIMO encoders read) is a channels-last tensor."""
    return xs.ndim == 5 and not xs.is_contiguous() and xs.permute(_MEMBERS_LAST).is_contiguous()


def channels_last_members(images: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``images[index]`` as a ``(B, M, C, H, W)`` batch stored ``(B, H, W, M, C)`` (:func:`members_channels_last`).

    One gather reads the channels-last ``(N, C, H, W)`` images through the ``(B, M)`` index straight into the
    member-interleaved layout, so the packed batch stays channels-last without a layout conversion.
    """
    height, width = images.shape[-2:]
    rows = torch.arange(height, device=images.device)[None, :, None, None]
    cols = torch.arange(width, device=images.device)[None, None, :, None]
    gathered = images.permute(0, 2, 3, 1)[index[:, None, None, :], rows, cols]  # (B, H, W, M, C), contiguous
    return gathered.permute(_MEMBERS_LAST)


def members_elementwise(fn: Callable[..., torch.Tensor], xs: torch.Tensor, *others: torch.Tensor) -> torch.Tensor:
    """``fn(xs, *others)`` for elementwise ``fn`` on ``(B, M, C|1, H, W)`` tensors, in the layout of ``xs``.

    A channels-last member batch (:func:`members_channels_last`) is computed in its storage order ``(B, H, W, M, C)``,
    where every operand is contiguous or broadcast, so the result keeps the layout (torch would otherwise pick an
    output layout from its operands' strides).
    """
    if not members_channels_last(xs):
        return fn(xs, *others)
    return fn(xs.permute(_MEMBERS_LAST), *(t.permute(_MEMBERS_LAST) for t in others)).permute(_MEMBERS_LAST)


# --------------------------------------------------------------------------------------------------------------------
# Schedules (thesis Sec. 3.3.2.1 and Alg. A.6; MixViT: thesis Sec. 4.3.2)
# --------------------------------------------------------------------------------------------------------------------

# The last twelfth of training is where the MixMo p schedule decays and the MixViT single-source schedule grows.
SCHEDULE_START = 11.0 / 12.0


def progress(epoch: int, step: int, steps_per_epoch: int, epochs: int) -> float:
    """Fraction of training done: the fractional epoch ``epoch + step / steps_per_epoch`` over ``epochs``.

    Args:
        epoch: Current epoch, counted from 0.
        step: Optimizer step inside the epoch, counted from 0.
        steps_per_epoch: Steps in one epoch.
        epochs: Total number of epochs E.
    """
    if steps_per_epoch <= 0 or epochs <= 0:
        raise ValueError(f'steps_per_epoch and epochs must be > 0, got {steps_per_epoch} and {epochs}')
    return (epoch + step / steps_per_epoch) / epochs


def mix_probability(p: float, progress: float, decay: bool = True) -> float:
    """The probability ``p_e`` that a batch uses the binary mask (thesis (HAL tel-03952815) Alg. A.6).

    ``p_e = p`` until 11/12 of training, then linear descent to 0 at the end (fractional epochs, as the official code).
    """
    if not decay or progress <= SCHEDULE_START:
        return p
    # thesis Alg. A.6: p_e = p · (E − epoch) / (E / 12), in fractions of training
    return p * max(0.0, (1.0 - progress) / (1.0 - SCHEDULE_START))


def single_source_probability(progress: float) -> float:
    """MixViT end-of-training probability that a batch takes all tokens from one input (thesis Sec. 4.3.2).

    ``q = clip((progress − 11/12) · 12, 0, 1)``: 0 until 11/12 of training, 1 at the end (Decision, papers
    silent: ends at 1).
    """
    return min(1.0, max(0.0, (progress - SCHEDULE_START) / (1.0 - SCHEDULE_START)))


def fadeout_relax(epoch: float, fadeout_epochs: float) -> float:
    """MixShare fadeout unmixing strength ``r = min(1, epoch / E_fade)`` (MixShare arXiv:2205.10139 Sec. 3.3).

    The unmixing mask becomes ``mask + r (1 - mask)``: full unmixing at epoch 0, none from ``E_fade`` on.

    Decision: ``epoch`` is the fractional epoch (``epoch + step / steps_per_epoch``), so r grows every step (papers
    silent on integer vs fractional epochs).

    Args:
        epoch: Fractional epoch counted from 0.
        fadeout_epochs: E_fade > 0 (the papers: 100 of 300 epochs).
    """
    if not fadeout_epochs > 0:
        raise ValueError(f'fadeout_epochs (E_fade) must be > 0, got {fadeout_epochs!r}')
    if epoch < 0:
        raise ValueError(f'epoch must be >= 0 (fractional epoch counted from 0), got {epoch!r}')
    return min(1.0, epoch / fadeout_epochs)


# --------------------------------------------------------------------------------------------------------------------
# Mixing ratios: Beta(α, α) for M = 2 is Dirichlet_2(α), both from generator-driven Gamma variates
# (arXiv:2103.06132 Sec. 3)
# --------------------------------------------------------------------------------------------------------------------

def sample_gamma(concentration: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Gamma(concentration, 1) variates drawn with ``generator`` (Marsaglia–Tsang squeeze-free rejection).

    torch's ``_standard_gamma`` / ``Dirichlet`` take no generator, so the sampler is written here: for a ≥ 1,
    ``d = a − 1/3``, ``c = 1/√(9d)``, ``x ~ N(0, 1)``, ``v = (1 + c x)³``, accept ``d v`` when
    ``log u < x²/2 + d − d v + d log v``; for a < 1, ``Gamma(a) = Gamma(a + 1) · U^{1/a}``. Acceptance is > 95 %, so a
    few vectorised rounds suffice.

    Args:
        concentration: Shape parameters a > 0 (any shape).
        generator: Source of all randomness (``None``: torch's global RNG).

    Returns:
        Variates of the same shape, float64, clamped to the smallest positive normal number.
    """
    shape = concentration.double().flatten()
    device = concentration.device
    boosted = shape < 1
    shifted = torch.where(boosted, shape + 1, shape)
    d = shifted - 1.0 / 3.0
    c = 1.0 / torch.sqrt(9.0 * d)
    out = torch.empty_like(shape)
    pending = torch.arange(shape.numel(), device=device)
    while pending.numel() > 0:
        x = torch.randn(pending.numel(), generator=generator, dtype=torch.float64, device=device)
        u = torch.rand(pending.numel(), generator=generator, dtype=torch.float64, device=device)
        dp, cp = d[pending], c[pending]
        v = (1 + cp * x) ** 3
        log_v = torch.log(v.clamp_min(1e-300))
        accept = (v > 0) & (torch.log(u) < 0.5 * x * x + dp - dp * v + dp * log_v)
        out[pending[accept]] = (dp * v)[accept]
        pending = pending[~accept]
    boost_u = torch.rand(shape.numel(), generator=generator, dtype=torch.float64, device=device)
    out = torch.where(boosted, out * boost_u.pow(1.0 / shape), out)
    return out.clamp_min(torch.finfo(torch.float64).tiny).view(concentration.shape)


def sample_mixing_ratios(batch_size: int, num_members: int, alpha: Optional[float],
                         generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Per-sample mixing ratios κ ``(B, M)`` summing to 1 (arXiv:2103.06132 Sec. 3; per sample, thesis Alg. A.6).

    ``Dirichlet_M(α)`` as normalised Gamma(α) variates, which for M = 2 is ``κ ~ Beta(α, α)``, ``1 − κ``.
    ``alpha=None`` fixes κ = 1/M for every member (MIMO summing, arXiv:2010.06610).
    """
    if alpha is None:
        return torch.full((batch_size, num_members), 1.0 / num_members)
    gammas = sample_gamma(torch.full((batch_size, num_members), float(alpha)), generator)
    return (gammas / gammas.sum(dim=1, keepdim=True)).float()


# --------------------------------------------------------------------------------------------------------------------
# Binary masks: (B, H, W) 0/1, value 1 where the "box" member is taken; area ≈ κ, re-measured later (thesis App. A.5.1)
# --------------------------------------------------------------------------------------------------------------------

def _uniform(shape: Tuple[int, ...], generator: Optional[torch.Generator], low: float = 0.0,
             high: float = 1.0) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator)


def _rank_top_fraction(scores: torch.Tensor, fractions: torch.Tensor) -> torch.Tensor:
    """1 on the ``round(fraction · H · W)`` highest scores of each sample of ``(B, H, W)``, else 0."""
    batch_size, height, width = scores.shape
    flat = scores.reshape(batch_size, -1)
    order = flat.argsort(dim=1, descending=True)
    ranks = torch.empty_like(order).scatter_(1, order, torch.arange(flat.shape[1]).expand_as(order).contiguous())
    counts = torch.round(fractions.double() * flat.shape[1]).long()
    return (ranks < counts[:, None]).float().view(batch_size, height, width)


def cutmix_box_masks(kappas: torch.Tensor, centers: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
    """CutMix boxes of area ratio κ around given centres, clipped at the borders (thesis eq. 3.2, App. A.5.1).

    The box is ``round(H √κ) × round(W √κ)`` cells (edge R·√κ on a square map) covering rows
    ``[cy − h // 2, cy − h // 2 + h)`` and likewise columns, then clipped to the grid, so the unclipped area is
    ``h · w`` and a box at a border is a smaller rectangle (κ is re-measured from the mask).

    Args:
        kappas: ``(B,)`` area ratios in [0, 1].
        centers: ``(B, 2)`` integer (row, column) centres.
        grid: (H, W).

    Returns:
        ``(B, H, W)`` float masks, 1 inside the box.
    """
    height, width = grid
    top, bottom, left, right = cutmix_box_bounds(kappas, centers, grid)
    rows = torch.arange(height)
    cols = torch.arange(width)
    in_rows = (rows >= top[:, None]) & (rows < bottom[:, None])
    in_cols = (cols >= left[:, None]) & (cols < right[:, None])
    return (in_rows[:, :, None] & in_cols[:, None, :]).float()


def cutmix_box_bounds(kappas: torch.Tensor, centers: torch.Tensor,
                      grid: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clipped half-open CutMix box bounds ``(top, bottom, left, right)``, each ``(B,)`` (:func:`cutmix_box_masks`)."""
    height, width = grid
    # thesis Sec. 3.3.2.1: square of edge R·√κ, centre given, clipped at the borders
    root = kappas.double().clamp(0, 1).sqrt()
    box_h = torch.round(height * root).long()
    box_w = torch.round(width * root).long()
    top = centers[:, 0].long() - box_h // 2
    left = centers[:, 1].long() - box_w // 2
    return top.clamp(0, height), (top + box_h).clamp(0, height), left.clamp(0, width), (left + box_w).clamp(0, width)


def _random_centers(batch_size: int, grid: Tuple[int, int], generator: Optional[torch.Generator]) -> torch.Tensor:
    return torch.stack([
        torch.randint(grid[0], (batch_size,), generator=generator),
        torch.randint(grid[1], (batch_size,), generator=generator),
    ], dim=1)


def random_cutmix_masks(kappas: torch.Tensor, grid: Tuple[int, int],
                        generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """CutMix boxes with centres uniform over the grid cells (thesis Sec. 3.3.2.1)."""
    return cutmix_box_masks(kappas, _random_centers(kappas.shape[0], grid, generator), grid)


def concat_masks(kappas: torch.Tensor, grid: Tuple[int, int], split: str) -> torch.Tensor:
    """Concatenation masks of area ratio κ (thesis Table 3.3, App. A.5.1).

    ``split='hconcat'``: a vertical line splits the map, the left ``round(κ W)`` columns are 1 (horizontal
    concatenation, Summers & Dinneen). ``split='vconcat'``: a horizontal line, the top ``round(κ H)`` rows are 1.
    Which side goes to which input is decided by the member roles (cut-in-mix k and the outside swap).
    """
    height, width = grid
    if split == 'hconcat':
        cut = torch.round(kappas.double() * width).long()
        return (torch.arange(width) < cut[:, None]).float()[:, None, :].expand(-1, height, -1).contiguous()
    if split == 'vconcat':
        cut = torch.round(kappas.double() * height).long()
        return (torch.arange(height) < cut[:, None]).float()[:, :, None].expand(-1, -1, width).contiguous()
    raise ValueError(f"split must be 'hconcat' or 'vconcat', got {split!r}")


def patchup_block_size(grid: Tuple[int, int]) -> int:
    """PatchUp block size: 7 (the official MixMo code, on MixMo's 32×32 mixing maps) scaled to the grid.

    ``min(7, 2 · ⌊7 · min(H, W) / 64⌋ + 1)`` keeps an odd block of about 7/32 of the map edge: 7 at ≥ 32, 3 at 16,
    1 at 8 (token grids), so a single block never covers most of a small map.
    """
    return min(7, 2 * int(7 * min(grid) / 64) + 1)


def patchup_masks(kappas: torch.Tensor, grid: Tuple[int, int], generator: Optional[torch.Generator] = None,
                  block_size: Optional[int] = None) -> torch.Tensor:
    """PatchUp-2D masks (thesis App. A.5.1): a Bernoulli(γ) canvas, each 1 grows into a block of ``block_size``.

    ``γ = κ · H W / (bs² (H − bs + 1)(W − bs + 1))`` (the official code's ``κ W² / (bs² (W − bs + 1)²)`` on non-square
    grids), blocks by ``max_pool2d(canvas, bs, stride 1, pad bs // 2)``. One 2-D mask shared by all channels.
    """
    height, width = grid
    block = patchup_block_size(grid) if block_size is None else block_size
    if block % 2 != 1 or block < 1:
        raise ValueError(f'PatchUp block size must be a positive odd integer, got {block}')
    block = min(block, 2 * ((min(height, width) - 1) // 2) + 1)
    # Decision (thesis App. A.5.1 gives no γ): γ recalibrated from κ so that the expected covered area is about κ
    gamma = kappas.double() * height * width / (block ** 2 * (height - block + 1) * (width - block + 1))
    canvas = (torch.rand(kappas.shape[0], 1, height, width, generator=generator, dtype=torch.float64)
              < gamma.clamp(0, 1)[:, None, None, None]).float()
    return F.max_pool2d(canvas, block, stride=1, padding=block // 2)[:, 0]


FMIX_DECAY_POWER = 3.0  # FMix's default δ (Harris et al., arXiv:2002.12047)


def fmix_masks(kappas: torch.Tensor, grid: Tuple[int, int], generator: Optional[torch.Generator] = None,
               decay_power: float = FMIX_DECAY_POWER) -> torch.Tensor:
    """FMix masks (thesis App. A.5.1): the top-κ fraction of low-pass filtered Gaussian noise.

    Complex Gaussian spectrum scaled by ``1 / max(f, 1 / max(H, W))^δ`` (f the radial frequency in cycles per
    cell), back to space with ``torch.fft.irfft2``; the ``round(κ H W)`` largest values are 1.
    """
    height, width = grid
    batch_size = kappas.shape[0]
    freq_rows = torch.fft.fftfreq(height, dtype=torch.float64)
    freq_cols = torch.fft.rfftfreq(width, dtype=torch.float64)
    radial = torch.sqrt(freq_rows[:, None] ** 2 + freq_cols[None, :] ** 2)
    scale = radial.clamp_min(1.0 / max(height, width)).pow(-decay_power)
    shape = (batch_size, height, width // 2 + 1)
    real = torch.randn(shape, generator=generator, dtype=torch.float64)
    imag = torch.randn(shape, generator=generator, dtype=torch.float64)
    noise = torch.fft.irfft2(torch.complex(real, imag) * scale, s=(height, width))
    return _rank_top_fraction(noise, kappas)


COWMASK_PROPORTION_RANGE = (0.2, 0.8)  # CowMask's proportion p ~ U(0.2, 0.8), overrides κ
COWMASK_SIGMA_RANGE = (4.0, 16.0)  # CowMask's σ log-uniform in [4, 16] on a 32-cell map


def cowmask_masks(batch_size: int, grid: Tuple[int, int], generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """CowMask masks (thesis App. A.5.1): Gaussian-filtered noise thresholded at the proportion p.

    p ~ U(0.2, 0.8) per sample overrides κ; σ is log-uniform in [4, 16] times ``min(H, W) / 32`` (the range is
    given for 32×32 maps; scaling keeps the spot size relative to the map). The filter is applied in Fourier space
    (periodic borders, one σ per sample, vectorised); the filtered noise is standardised per sample and thresholded
    at ``√2 · erfinv(2p − 1)`` so that about a fraction p is 1. κ is then re-measured from the mask.
    """
    height, width = grid
    proportions = _uniform((batch_size,), generator, *COWMASK_PROPORTION_RANGE).double()
    log_low, log_high = math.log(COWMASK_SIGMA_RANGE[0]), math.log(COWMASK_SIGMA_RANGE[1])
    sigmas = torch.exp(_uniform((batch_size,), generator, log_low, log_high).double()) * min(height, width) / 32.0
    noise = torch.randn(batch_size, height, width, generator=generator, dtype=torch.float64)
    freq_sq = (torch.fft.fftfreq(height, dtype=torch.float64)[:, None] ** 2
               + torch.fft.rfftfreq(width, dtype=torch.float64)[None, :] ** 2)
    # Fourier transform of a unit Gaussian kernel of std σ: exp(−2 π² σ² f²)
    transfer = torch.exp(-2.0 * math.pi ** 2 * sigmas[:, None, None] ** 2 * freq_sq)
    smooth = torch.fft.irfft2(torch.fft.rfft2(noise) * transfer, s=(height, width))
    flat = smooth.reshape(batch_size, -1)
    standard = (flat - flat.mean(dim=1, keepdim=True)) / flat.std(dim=1, keepdim=True).clamp_min(1e-12)
    threshold = math.sqrt(2.0) * torch.erfinv(2.0 * proportions - 1.0)
    return (standard <= threshold[:, None]).float().view(batch_size, height, width)


def _pair(value: Union[int, Tuple[int, int]]) -> Tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def majority_vote_tokens(pixel_masks: torch.Tensor, patch_size: Union[int, Tuple[int, int]],
                         tie_break: torch.Tensor) -> torch.Tensor:
    """MixViT "Corrected CutMix": binarise a pixel mask per P×P patch by majority vote (thesis App. A.1.5).

    A patch goes to input 0 (value 1) when more than half its pixels are 1, to input 1 (value 0) when fewer; ties
    (exactly half) follow one coin per sample: ``tie_break[b]`` True gives all tied patches of sample b to input 0.

    Args:
        pixel_masks: ``(B, H·P, W·P)`` 0/1 pixel masks.
        patch_size: P or (P_h, P_w).
        tie_break: ``(B,)`` booleans.

    Returns:
        ``(B, H, W)`` 0/1 token masks.
    """
    patch_h, patch_w = _pair(patch_size)
    batch_size, pixel_h, pixel_w = pixel_masks.shape
    if pixel_h % patch_h or pixel_w % patch_w:
        raise ValueError(f'pixel mask {pixel_h}x{pixel_w} is not a whole number of {patch_h}x{patch_w} patches')
    grid_h, grid_w = pixel_h // patch_h, pixel_w // patch_w
    counts = pixel_masks.reshape(batch_size, grid_h, patch_h, grid_w, patch_w).round().long().sum(dim=(2, 4))
    return _majority(counts, patch_h * patch_w, tie_break)


def _majority(counts: torch.Tensor, patch_area: int, tie_break: torch.Tensor) -> torch.Tensor:
    """1 where ``counts > area / 2``, and where ``counts == area / 2`` for samples whose ``tie_break`` is True."""
    twice = 2 * counts
    ties = (twice == patch_area) & tie_break.bool()[:, None, None]
    return ((twice > patch_area) | ties).float()


def _interval_overlaps(start: torch.Tensor, stop: torch.Tensor, num_cells: int, cell: int) -> torch.Tensor:
    """``(B, num_cells)`` lengths of ``[start, stop)`` inside each cell ``[i·cell, (i+1)·cell)``."""
    cell_start = torch.arange(num_cells) * cell
    low = torch.maximum(start[:, None], cell_start)
    high = torch.minimum(stop[:, None], cell_start + cell)
    return (high - low).clamp_min(0)


def majority_cutmix_masks(kappas: torch.Tensor, grid: Tuple[int, int], patch_size: Union[int, Tuple[int, int]],
                          generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Pixel CutMix box on the ``grid × patch_size`` pixel grid, binarised per patch (thesis App. A.1.5).

    Same result as :func:`majority_vote_tokens` on :func:`cutmix_box_masks`, without building the pixel mask: the
    box is a rectangle, so the masked pixels of patch (i, j) are (row overlap of i) × (column overlap of j).
    """
    patch_h, patch_w = _pair(patch_size)
    pixel_grid = (grid[0] * patch_h, grid[1] * patch_w)
    top, bottom, left, right = cutmix_box_bounds(kappas, _random_centers(kappas.shape[0], pixel_grid, generator),
                                                 pixel_grid)
    counts = (_interval_overlaps(top, bottom, grid[0], patch_h)[:, :, None]
              * _interval_overlaps(left, right, grid[1], patch_w)[:, None, :])
    # thesis App. A.1.5: one coin flip per input pair (sample) decides all its tied patches
    tie_break = torch.rand(kappas.shape[0], generator=generator) < 0.5
    return _majority(counts, patch_h * patch_w, tie_break)


# --------------------------------------------------------------------------------------------------------------------
# Member roles: cut-in-mix for M > 2 and the outside swap (thesis Sec. 3.3.2.3, App. A.5.2)
# --------------------------------------------------------------------------------------------------------------------

def cut_in_mix_masks(box_masks: torch.Tensor, kappas: torch.Tensor, box_member: torch.Tensor) -> torch.Tensor:
    """Member masks from one binary mask per sample (thesis eq. A.4; M = 2 is eq. 3.2).

    Member ``k = box_member[b]`` takes the box; the others share its complement linearly with
    ``κ_i / (1 − κ_k)`` (computed as ``κ_i / Σ_{j≠k} κ_j``; equal shares when that sum is 0). Sums to 1 over members.

    Args:
        box_masks: ``(B, H, W)`` 0/1 masks.
        kappas: ``(B, M)`` mixing ratios (members with κ = 0 get nothing outside the box).
        box_member: ``(B,)`` index k of the member that takes the box.

    Returns:
        ``(B, M, H, W)`` masks.
    """
    num_members = kappas.shape[1]
    is_box = F.one_hot(box_member.long(), num_members).to(kappas.dtype)
    rest = kappas * (1 - is_box)
    rest_total = rest.sum(dim=1, keepdim=True)
    equal_share = (1 - is_box) / (num_members - 1)
    shares = torch.where(rest_total > 0, rest / rest_total.clamp_min(1e-30), equal_share)
    box = box_masks[:, None]
    return is_box[:, :, None, None] * box + shares[:, :, None, None] * (1 - box)


def swap_member_roles(masks: torch.Tensor, permutation: torch.Tensor) -> torch.Tensor:
    """Batch-level role permutation: member m gets the mask of ``permutation[m]`` (the MixMo code's "outside" swap).

    For M = 2 the permutation (1, 0) is the flip ``1_M ← 1 − 1_M``, κ ← 1 − κ.
    """
    return masks[:, permutation]


class Mixer:
    """Samples a :class:`MixPlan` per training batch (thesis Sec. 3.3.2, App. A.5; MixViT Sec. 4.3.2).

    MixMo (Cut-MixMo): ``Mixer(2, 'cutmix', alpha=2, prob=0.5)``; Linear-MixMo: ``kind='linear'``; MIMO:
    ``kind='linear', alpha=None``; MixShare: ``prob=1``; MixViT: ``kind='cutmix_majority', alpha=0.5, prob=1,
    prob_decay=False, single_source_end=True, patch_size=P`` (+ ``pair_only=True`` for M > 2).

    Args:
        num_members: M.
        kind: Mask kind for binary batches, one of ``MASK_KINDS``; ``'linear'`` never cuts.
        alpha: κ ~ Beta(α, α) for M = 2, Dirichlet_M(α) for M > 2. ``None`` fixes κ = 1/M (MIMO summing).
        prob: p, the probability that a batch uses the binary ``kind`` instead of linear mixing (MixMo: 0.5,
            MixShare / MixViT: 1.0).
        prob_decay: Linear descent of p to 0 over the last twelfth of training (thesis Alg. A.6).
        outside_swap: Batch-level random role permutation of the members (for M = 2 the "outside" flip
            ``1_M <- 1 - 1_M``, the MixMo code).
        pair_only: M > 2 MixViT scheme: cut-mix two of the M inputs, the others get κ = 0 (Decision, papers
            silent); the pair's κ
            is Beta(α, α). No effect for M = 2.
        single_source_end: MixViT end-of-training schedule: with a probability growing 0 -> 1 over the last twelfth,
            a batch takes all tokens from one random input (thesis 4.3.2). Independent of ``prob_decay``: MixViT sets
            ``prob_decay=False`` so that its batches stay binary.
        patch_size: Pixels per grid cell for ``'cutmix_majority'`` (majority vote inside each patch).
        input_repeat: ρ, the share of batch positions where the training loop feeds the same image to all M inputs
            (MIMO arXiv:2010.06610 input repetition; MixShare: 0.1). The Mixer only carries it: the loop pairs the
            inputs (``timm_mimo.data.pair_inputs``) before asking for a plan.
        fadeout_epochs: MixShare fadeout unmixing: plans carry ``unmix_relax = min(1, epoch / fadeout_epochs)``
            (needs the fractional ``epoch`` in every call); ``None``: ``unmix_relax = 0`` (constant unmixing).
        generator: Optional CPU ``torch.Generator`` that drives ALL randomness (same seed ⇒ same plans); plans are
            sampled on the CPU and moved to ``device``.
    """

    def __init__(
            self,
            num_members: int = 2,
            kind: str = 'cutmix',
            alpha: Optional[float] = 2.0,
            prob: float = 0.5,
            prob_decay: bool = True,
            outside_swap: bool = True,
            pair_only: bool = False,
            single_source_end: bool = False,
            patch_size: Optional[Union[int, Tuple[int, int]]] = None,
            input_repeat: float = 0.0,
            fadeout_epochs: Optional[float] = None,
            generator: Optional[torch.Generator] = None,
    ):
        if not isinstance(num_members, int) or num_members < 2:
            raise ValueError(f'num_members (M) must be an integer >= 2, got {num_members!r}')
        if kind not in MASK_KINDS:
            raise ValueError(f'unknown mask kind {kind!r}; expected one of {MASK_KINDS}')
        if alpha is not None and not alpha > 0:
            raise ValueError(f'alpha must be > 0 (or None for κ = 1/M), got {alpha!r}')
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f'prob (p) must lie in [0, 1], got {prob!r}')
        if kind == 'cutmix_majority':
            if patch_size is None:
                raise ValueError("kind='cutmix_majority' needs patch_size (pixels per token, e.g. 16)")
        if patch_size is not None:
            patch_size = _pair(patch_size)
            if len(patch_size) != 2 or any(not isinstance(p, int) or p < 1 for p in patch_size):
                raise ValueError(f'patch_size must be a positive int or a pair of them, got {patch_size!r}')
        if not 0.0 <= input_repeat <= 1.0:
            raise ValueError(f'input_repeat (share of positions with identical inputs) must lie in [0, 1], '
                             f'got {input_repeat!r}')
        if fadeout_epochs is not None and not fadeout_epochs > 0:
            raise ValueError(f'fadeout_epochs (E_fade of MixShare fadeout unmixing) must be > 0 or None, '
                             f'got {fadeout_epochs!r}')
        self.num_members = num_members
        self.kind = kind
        self.input_repeat = input_repeat
        self.fadeout_epochs = fadeout_epochs
        self.alpha = alpha
        self.prob = prob
        self.prob_decay = prob_decay
        self.outside_swap = outside_swap
        self.pair_only = pair_only
        self.single_source_end = single_source_end
        self.patch_size = patch_size
        self.generator = generator

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(num_members={self.num_members}, kind={self.kind!r}, alpha={self.alpha}, '
                f'prob={self.prob}, prob_decay={self.prob_decay}, outside_swap={self.outside_swap}, '
                f'pair_only={self.pair_only}, single_source_end={self.single_source_end}, '
                f'patch_size={self.patch_size}, input_repeat={self.input_repeat}, '
                f'fadeout_epochs={self.fadeout_epochs})')

    def binary_probability(self, progress: float) -> float:
        """``p_e`` at this progress (0 for ``kind='linear'``)."""
        if self.kind == 'linear':
            return 0.0
        return mix_probability(self.prob, progress, self.prob_decay)

    def _coin(self, probability: float) -> bool:
        # one uniform drawn every time, so the random stream does not depend on the probability's value
        return bool(torch.rand((), generator=self.generator) < probability)

    def sample_kappas(self, batch_size: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample κ ``(B, M)``, the member k that takes the binary mask ``(B,)``, and the ``(B, M)`` weights by
        which the other members share the mask's complement (thesis eq. 3.2, eq. A.4)."""
        num_members, gen = self.num_members, self.generator
        if self.pair_only and num_members > 2:
            # Decision (papers silent) MixViT M > 2: two random members per sample share Beta(α, α) ratios, the
            # others κ = 0; the partner
            # takes the whole complement of the box
            pair = torch.rand(batch_size, num_members, generator=gen).argsort(dim=1)[:, :2]
            pair_kappas = sample_mixing_ratios(batch_size, 2, self.alpha, gen)
            kappas = torch.zeros(batch_size, num_members).scatter_(1, pair, pair_kappas)
            return kappas, pair[:, 0], F.one_hot(pair[:, 1], num_members).float()
        kappas = sample_mixing_ratios(batch_size, num_members, self.alpha, gen)
        if num_members == 2:
            # thesis eq. 3.2: the box is input 0's (κ = share of input 0); the outside swap randomises roles per batch
            return kappas, torch.zeros(batch_size, dtype=torch.long), kappas
        # thesis eq. A.4: k ~ U{0..M−1} per sample, the others share the rest as κ_i / (1 − κ_k)
        return kappas, torch.randint(num_members, (batch_size,), generator=gen), kappas

    def binary_masks(self, kappas: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        """``(B, H, W)`` 0/1 masks of area ≈ ``kappas`` ``(B,)`` for this mixer's kind (thesis App. A.5.1, A.1.5)."""
        gen = self.generator
        if self.kind == 'cutmix':
            return random_cutmix_masks(kappas, grid, gen)
        if self.kind in ('hconcat', 'vconcat'):
            return concat_masks(kappas, grid, self.kind)
        if self.kind == 'patchup':
            return patchup_masks(kappas, grid, gen)
        if self.kind == 'fmix':
            return fmix_masks(kappas, grid, gen)
        if self.kind == 'cowmask':
            return cowmask_masks(kappas.shape[0], grid, gen)
        if self.kind == 'cutmix_majority':
            return majority_cutmix_masks(kappas, grid, self.patch_size, gen)
        raise ValueError(f'mask kind {self.kind!r} has no binary mask')

    def __call__(self, batch_size: int, grid: Tuple[int, int], progress: float = 0.0,
                 device: Optional[torch.device] = None, epoch: Optional[float] = None) -> MixPlan:
        """Sample the plan of one batch.

        Args:
            batch_size: B.
            grid: The model's mixing grid (``model.mix_grid(img_size)``).
            progress: Fraction of training done, in [0, 1] (fractional epoch / total epochs).
            device: Where the plan's tensors go.
            epoch: Fractional epoch ``epoch + step / steps_per_epoch``, the clock of fadeout unmixing (counted in
                epochs, as in the papers); required when ``fadeout_epochs`` is set. Training loops pass it always.
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f'batch_size must be a positive integer, got {batch_size!r}')
        grid = tuple(int(g) for g in grid)
        if len(grid) != 2 or min(grid) < 1:
            raise ValueError(f'grid must be (H, W) with H, W >= 1, got {grid!r}')
        if not 0.0 <= progress <= 1.0:
            raise ValueError(f'progress must lie in [0, 1] (fractional epoch / epochs), got {progress!r}')
        if epoch is not None and not epoch >= 0:
            raise ValueError(f'epoch must be the fractional epoch counted from 0, got {epoch!r}')
        relax = 0.0
        if self.fadeout_epochs is not None:
            if epoch is None:
                raise ValueError(f'this Mixer fades unmixing out over {self.fadeout_epochs} epochs and needs the '
                                 'fractional epoch: call mixer(..., epoch=epoch + step / steps_per_epoch)')
            relax = fadeout_relax(epoch, self.fadeout_epochs)
        plan = self._sample(batch_size, grid, progress).with_relax(relax)
        return plan if device is None else plan.to(device)

    def _sample(self, batch_size: int, grid: Tuple[int, int], progress: float) -> MixPlan:
        gen, num_members = self.generator, self.num_members
        if self.single_source_end and self._coin(single_source_probability(progress)):
            # thesis Sec. 4.3.2 end of training, Decision (papers silent): per BATCH (like MixMo's batch-level
            # 1_binary switch), the
            # source drawn uniformly PER SAMPLE; κ ∈ {0, 1}, so only that member's head gets a loss. With pair_only
            # the source is drawn among all M inputs.
            source = torch.randint(num_members, (batch_size,), generator=gen)
            return MixPlan.linear(F.one_hot(source, num_members).float(), grid)
        kappas, box_member, rest_weights = self.sample_kappas(batch_size)
        binary = self._coin(self.binary_probability(progress))  # thesis Alg. A.6: 1_binary ~ Ber(p_e) per batch
        if binary:
            box_kappas = kappas.gather(1, box_member[:, None])[:, 0]
            masks = cut_in_mix_masks(self.binary_masks(box_kappas, grid), rest_weights, box_member)
        else:
            masks = None  # linear batch: same κ, constant masks (thesis Alg. A.6)
        if self.outside_swap:
            # the MixMo code's "outside" swap: a batch-level random permutation of member roles (the code shuffles
            # the (mask, λ) pairs); for M = 2 it is the flip 1_M <- 1 - 1_M with probability 1/2. Decision: MixViT
            # mentions no flip; kept on by default (papers silent) so input 0 is not always the box.
            permutation = torch.randperm(num_members, generator=gen)
            kappas = kappas[:, permutation]
            masks = None if masks is None else swap_member_roles(masks, permutation)
        if masks is None:
            return MixPlan.linear(kappas, grid)
        return MixPlan.from_masks(masks)  # thesis App. A.5.1: κ re-measured as the mask mean
